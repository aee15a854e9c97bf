"""Instance Normalization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import functional
from normzoo.functional._stats import stable_var_mean
from normzoo.norms import _triton
from normzoo.norms._row_map import row_map
from normzoo.norms._rownorm import (
    GroupSpec,
    channels_last_rows,
    native_group_norm,
    torch_group_norm,
    use_native_row_norm,
)
from normzoo.norms.base import Norm, check_momentum

_HALF = (torch.float16, torch.bfloat16)


def _channels_last(x: Tensor) -> bool:
    """A channels_last (4-D) or channels_last_3d (5-D) input that is not also contiguous."""
    if x.is_contiguous():
        return False
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    return x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)


class InstanceNorm(Norm):
    r"""Instance Normalization: each channel of each sample normalized over its positions.

    .. math::
        y = \gamma \, \frac{x - \mathrm{E}_{HW}[x]}{\sqrt{\mathrm{Var}_{HW}[x] + \epsilon}}
            + \beta

    Takes ``(N, C, *spatial)`` with 1 to 3 spatial dims and equals
    ``torch.nn.InstanceNorm1d/2d/3d(C, affine=..., track_running_stats=...)``. Unlike torch,
    ``affine`` defaults to ``True`` (the shared interface of normzoo). With
    ``track_running_stats=True`` the running statistics are the batch averages of the
    instance means and unbiased variances, and eval mode normalizes with them; and
    ``momentum=None`` gives a true cumulative average (torch silently skips the update).

    Args:
        num_features: the channel count ``C``.
        eps: added to the variance. Default ``1e-5``.
        momentum: running-average factor or ``None`` (cumulative). Default ``0.1``.
        affine: learn per-channel ``weight`` and ``bias``. Default ``True``.
        track_running_stats: keep running statistics for eval mode. Default ``False``.
        impl: ``"fast"`` (a group-norm kernel with one channel per group) or ``"reference"``.

    Reference: D. Ulyanov, A. Vedaldi, V. Lempitsky, "Instance Normalization: The Missing
    Ingredient for Fast Stylization", arXiv:1607.08022.
    """

    statistics_per = ("batch", "channel")
    reduces_over = ("spatial",)
    uses_batch_stats = False
    fuses_activation = True
    min_spatial_dims = 1

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = False,
        *,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps=eps, affine=affine, impl=impl, device=device, dtype=dtype
        )
        if track_running_stats:
            self._init_running_stats(momentum, device, dtype)
        else:
            self.momentum = check_momentum(momentum)
        self.reset_parameters()

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if self._uses_input_stats() and x.shape[2:].numel() <= 1 and x.numel() > 0:
            raise ValueError(
                f"{type(self).__name__} needs more than 1 spatial position per channel, got "
                f"input of shape {tuple(x.shape)}"
            )

    def _uses_input_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def _forward(self, x: Tensor, relu: bool = False) -> Tensor:
        y, fused = self._normalize(x, relu)
        return torch.relu(y) if relu and not fused else y

    def _normalize(self, x: Tensor, relu: bool) -> tuple[Tensor, bool]:
        """The norm's output, and whether the ReLU is applied already (where ``relu`` asks
        for it and the native kernels fuse it)."""
        use_input_stats = self._uses_input_stats()
        update = self.training and self.track_running_stats
        factor = self._update_factor() if update else 0.0
        if self.impl == "reference" or isinstance(factor, Tensor):  # momentum=None, captured
            y, mean, var = functional.instance_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                use_input_stats=use_input_stats,
                momentum=factor,
                eps=self.eps,
            )
            if update:
                with torch.no_grad():
                    self.running_mean.copy_(mean)
                    self.running_var.copy_(var)
            return y, False
        if not use_input_stats:
            y = F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
            return y, False
        if _triton.serves_group(x, self.num_features, self.weight, self.bias):
            # CUDA: the Triton group-norm kernels with one channel per group, ReLU fused
            c, w, b = self.num_features, self.weight, self.bias
            y, mean, var = _triton.group_norm(x, c, w, b, self.eps, relu)
            if update:
                n = x.shape[0]
                self._update_running_stats(mean.view(n, c), var.view(n, c), x[0, 0].numel(), factor)
            return y, relu
        if use_native_row_norm(x, self.weight):
            # The native group-norm kernel with one channel per group; its per (n, c)
            # statistics feed the running averages (no second pass over x).
            y, mean, var = native_group_norm(
                x, self.num_features, self.weight, self.bias, self.eps, update, relu
            )
            if update:
                assert mean is not None and var is not None
                self._update_running_stats(mean, var, x[0, 0].numel(), factor)
            return y, relu
        if channels_last_rows(x):
            # channels_last without the C++ operator library: per-row statistics and the
            # affine map of zoo.c read x in place
            spec = GroupSpec(self.num_features, self.eps)
            y = row_map(x, spec, self.weight, self.bias)
            if update:
                self._update_running_stats(spec.mean, spec.var, x[0, 0].numel(), factor)
            return y, False
        if update:
            with torch.no_grad():
                xs = x.detach().float() if x.dtype in (torch.float16, torch.bfloat16) else x
                var, mean = stable_var_mean(xs.detach(), list(range(2, x.dim())))
            self._update_running_stats(mean, var, x[0, 0].numel(), factor)
        if x.dtype in _HALF and _channels_last(x):
            # torch's CPU group-norm kernel is ~5x slower than its instance norm on half
            # channels_last inputs (measured); instance_norm returns NCHW, so restore the layout.
            y = F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
            fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
            return y.contiguous(memory_format=fmt), False
        # A group-norm kernel with one channel per group computes exactly instance norm,
        # about twice as fast on CPU as torch's InstanceNorm (a reshaped batch_norm).
        return torch_group_norm(x, self.num_features, self.weight, self.bias, self.eps), False

    def _update_running_stats(self, mean: Tensor, var: Tensor, m: int, factor: float) -> None:
        """Running averages from per (sample, channel) statistics ``(N, C)``: the mean over
        the batch of the means and of the unbiased variances (``m`` values per instance)."""
        n = mean.shape[0]
        self._blend_running_stats(
            mean.reshape(n, -1).mean(0), var.reshape(n, -1).mean(0), factor, m
        )
