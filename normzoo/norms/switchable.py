"""Switchable Normalization."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from normzoo import functional
from normzoo.functional._stats import compute_dtype
from normzoo.functional.switchable import SWITCHABLE_STATISTICS, switchable_statistics
from normzoo._native import zoo_kernels
from normzoo.norms._kernels import RowAffine, RowStats, restore_format, row_view
from normzoo.norms._row_map import row_map, use_row_map
from normzoo.norms.batch import BatchNorm


def _switchable_params(
    mean_in: Tensor,
    var_in: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    *,
    eps: float,
) -> Tensor:
    """``(N, C, 2)``: ``a``, ``b`` of ``y = a x + b`` from the IN statistics ``(N, C)``; the
    BN term from the batch, or from ``running_mean``/``running_var`` where given (eval)."""
    mean, var, _, _ = switchable_statistics(
        mean_in.unsqueeze(2),
        var_in.unsqueeze(2),
        mean_weight,
        var_weight,
        running_mean,
        running_var,
        training=running_mean is None,
        momentum=0.0,
        positions=1,  # unused: no running statistics are updated here
    )
    a = torch.rsqrt(var + eps)
    b = -mean * a
    if weight is not None:
        w = weight.to(a.dtype).view(1, -1, 1)
        a, b = a * w, b * w
    if bias is not None:
        b = b + bias.to(b.dtype).view(1, -1, 1)
    return torch.cat([a, b], dim=2)


class SwitchableNorm(BatchNorm):
    r"""Switchable Normalization: learned softmax weights over IN, LN and BN statistics.

    .. math::
        y = \gamma \, \frac{x - \sum_k w_k \mu_k}{\sqrt{\sum_k w'_k \sigma_k^2 + \epsilon}}
            + \beta, \quad k \in \{\mathrm{IN}, \mathrm{LN}, \mathrm{BN}\}

    ``w = softmax(mean_weight)`` and ``w' = softmax(var_weight)`` are learned, initialised
    uniform; in the order of ``SWITCHABLE_STATISTICS`` (``"in", "ln", "bn"``). BN's term
    keeps running statistics like ``BatchNorm`` (used in eval); IN's and LN's are always the
    sample's own. With the weights one-hot it is exactly InstanceNorm, LayerNorm
    (channels-first) or BatchNorm. See ``normzoo.functional.switchable_norm``.

    Args:
        num_features: the channel count ``C``.
        eps, momentum, affine, track_running_stats: as ``BatchNorm`` (for the BN term).
        impl: ``"fast"`` (native statistics and affine kernels, hand-written backwards) or
            ``"reference"``.

    Reference: P. Luo, J. Ren, Z. Peng, R. Zhang, J. Li, "Differentiable Learning-to-Normalize
    via Switchable Normalization", ICLR 2019 (arXiv:1806.10779).
    """

    statistics_per = ("batch", "channel")
    reduces_over = ("batch", "channel", "spatial")
    uses_batch_stats = True
    min_spatial_dims = 1

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        n = len(SWITCHABLE_STATISTICS)
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            impl=impl,
            device=device,
            dtype=dtype,
        )
        self.mean_weight = nn.Parameter(torch.ones(n, **factory))
        self.var_weight = nn.Parameter(torch.ones(n, **factory))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "mean_weight"):
            nn.init.ones_(self.mean_weight)
            nn.init.ones_(self.var_weight)

    def _forward(self, x: Tensor) -> Tensor:
        update = self.training and self.track_running_stats
        factor = self._update_factor() if update else 0.0
        if self.impl == "fast":
            return self._fast_forward(x, update, factor)
        y, mean, var = functional.switchable_norm(
            x,
            self.mean_weight,
            self.var_weight,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=self.training,
            momentum=factor,
            eps=self.eps,
        )
        if update:
            with torch.no_grad():
                self.running_mean.copy_(mean)
                self.running_var.copy_(var)
        return y

    def _fast_forward(self, x: Tensor, update: bool, factor: float) -> Tensor:
        xf = x.to(compute_dtype(x))
        if use_row_map(xf):
            return self._native_forward(x, xf, update, factor)
        return self._eager_forward(x, xf, update, factor)

    def _native_forward(self, x: Tensor, xf: Tensor, update: bool, factor: float) -> Tensor:
        """``y = A x + B`` on the native per-row kernels (``row_map``): IN statistics, the
        mixture on ``(N, C)`` tensors, one affine pass; any layout kept, no copies."""
        batch = self.training or self.running_mean is None
        fn = partial(_switchable_params, eps=self.eps)
        y, mean_in, var_in = row_map(
            xf,
            zoo_kernels.AFFINE,
            fn,
            self.mean_weight,
            self.var_weight,
            self.weight,
            self.bias,
            None if batch else self.running_mean,
            None if batch else self.running_var,
        )
        if update:
            _, _, new_mean, new_var = switchable_statistics(
                mean_in.unsqueeze(2),
                var_in.unsqueeze(2),
                self.mean_weight.detach(),
                self.var_weight.detach(),
                self.running_mean,
                self.running_var,
                training=True,
                momentum=factor,
                positions=xf[0, 0].numel(),
            )
            with torch.no_grad():
                self.running_mean.copy_(new_mean)
                self.running_var.copy_(new_var)
        return y.to(x.dtype)

    def _eager_forward(self, x: Tensor, xf: Tensor, update: bool, factor: float) -> Tensor:
        """The reference math as ``y = A x + B`` per sample and channel: IN statistics in one
        native pass (``RowStats``), the mixture on ``(N, C)`` tensors, one affine pass."""
        flat, channels_last = row_view(xf)
        mean_in, var_in = RowStats.apply(flat)
        mean, var, new_mean, new_var = switchable_statistics(
            mean_in.unsqueeze(2),
            var_in.unsqueeze(2),
            self.mean_weight,
            self.var_weight,
            self.running_mean,
            self.running_var,
            training=self.training,
            momentum=factor,
            positions=flat.shape[2],
        )
        a = torch.rsqrt(var + self.eps)
        b = -mean * a
        if self.weight is not None:
            w = self.weight.to(a.dtype).view(1, -1, 1)
            a, b = a * w, b * w
        if self.bias is not None:
            b = b + self.bias.to(b.dtype).view(1, -1, 1)
        y = RowAffine.apply(flat, a, b)
        if update:
            with torch.no_grad():
                self.running_mean.copy_(new_mean)
                self.running_var.copy_(new_var)
        return restore_format(y, xf.shape, channels_last).to(x.dtype)
