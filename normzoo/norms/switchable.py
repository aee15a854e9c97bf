"""Switchable Normalization."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normzoo import functional
from normzoo._native import zoo_kernels
from normzoo.functional._stats import merge_statistics
from normzoo.functional.switchable import SWITCHABLE_STATISTICS, switchable_statistics
from normzoo.norms import _gpu, _graph_ops, _triton, _triton_zoo
from normzoo.norms._kernels import RowAffine, RowStats, restore_format, row_view
from normzoo.norms._row_map import RowNormSpec, row_input, row_map, use_row_map, use_zoo_op
from normzoo.norms.base import capturing
from normzoo.norms.batch import BatchNorm


class _SwitchableSpec(RowNormSpec):
    """``y = a x + b`` per row with ``a = w / sqrt(var + eps)``, ``b = bias - mean a`` and
    ``mean``, ``var`` the softmax-weighted IN, LN, BN statistics of
    ``normzoo.functional.switchable_statistics`` (the same formulas), from the IN ones; the BN
    term from the batch, or (``batch=False``) from the running statistics.

    Inputs: ``mean_weight``, ``var_weight``, ``weight``, ``bias``, ``running_mean``,
    ``running_var``. After :meth:`forward`, ``mean_bn``/``var_bn`` hold BN's batch statistics
    (biased variance; unset where the running ones were used).
    """

    op = zoo_kernels.AFFINE

    def __init__(self, eps: float, batch: bool) -> None:
        self.eps, self.batch = eps, batch

    def params(  # type: ignore[override]
        self,
        mean_in: Tensor,
        var_in: Tensor,
        mean_weight: Tensor,
        var_weight: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
    ) -> Tensor:
        c = mean_in.shape[1]
        mean_ln, var_ln = merge_statistics(mean_in, var_in, 1)
        if self.batch:
            mean_bn, var_bn = merge_statistics(mean_in, var_in, 0)
        else:
            assert running_mean is not None and running_var is not None
            mean_bn = running_mean.to(mean_in.dtype).view(1, c)
            var_bn = running_var.to(mean_in.dtype).view(1, c)
        wm = torch.softmax(mean_weight.to(mean_in.dtype), 0)
        wv = torch.softmax(var_weight.to(mean_in.dtype), 0)
        mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
        var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
        a0 = torch.rsqrt(var + self.eps)
        a = a0 * weight.to(a0.dtype).view(1, c) if weight is not None else a0
        b = -mean * a
        if bias is not None:
            b = b + bias.to(b.dtype).view(1, c)
        return torch.stack([a, b], dim=2)

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        mean_weight: Tensor,
        var_weight: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
    ) -> Tensor:
        y, self.mean, self.var, stats_bn, self.p = zoo_kernels.switchable_forward(
            x, mean_weight, var_weight, weight, bias, running_mean, running_var, self.eps
        )
        self.mean_bn, self.var_bn = stats_bn[0], stats_bn[1]
        return y

    def backward(
        self, dy: Tensor, x: Tensor, inputs: tuple[Tensor | None, ...], needs: tuple[bool, ...]
    ) -> list[Tensor | None]:
        mean_weight, var_weight, weight, _, running_mean, running_var = inputs
        dx, dmw, dvw, dw, db = zoo_kernels.switchable_backward(
            dy, x, self.p, self.mean, self.var, mean_weight, var_weight, weight,  # type: ignore[arg-type]
            running_mean, running_var, self.eps, needs[:5],
        )  # fmt: skip
        return [dx, dmw, dvw, dw, db, None, None]


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
        impl: ``"fast"`` (native statistics and affine kernels with hand-written backwards,
            on float32 CPU input behind the C++ operator ``torch.ops.normzoo.switchable_norm``;
            on CUDA the reference math fused by ``torch.compile``) or ``"reference"``.

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
        fast = self.impl == "fast" and not capturing()  # captured: the reference math
        params = (self.mean_weight, self.var_weight, self.weight, self.bias)
        if fast and _triton.serves_batch(x, *params, kind="switchable"):
            # CUDA, measured (_triton.ZOO_MEASURED): the two-phase kernels, per (sample, channel)
            state = _triton_zoo.SwitchableState(
                self.running_mean, self.running_var, self.training, factor, self.eps, update
            )
            return _triton_zoo.switchable_norm(x, *params, state)
        if fast and _gpu.use_fused_math(x):
            running = (self.running_mean, self.running_var)
            if update:  # the compiled backward may save its inputs: no in-place on them
                running = (self.running_mean.clone(), self.running_var.clone())
            y, mean, var = _gpu.switchable_norm(
                x,
                self.mean_weight,
                self.var_weight,
                *running,
                self.weight,
                self.bias,
                self.training,
                factor,
                self.eps,
            )
        elif fast:
            return self._fast_forward(x, update, factor)
        elif self.impl == "fast" and _graph_ops.serves(
            x, *params, self.running_mean, self.running_var
        ):
            # torch.compile on the CPU: the kernels as custom operators (inductor's code for
            # the reference math measured slower than them)
            batch = self.training or self.running_mean is None
            running = (None, None) if batch else (self.running_mean, self.running_var)
            y, mean_bn, var_bn = _graph_ops.switchable_norm(x, *params, *running, self.eps)
            if update:
                self._blend_running_stats(mean_bn, var_bn, factor, x.numel() // x.shape[1])
            return y
        else:
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
        xf = row_input(x)  # bfloat16 read and written natively (row_map)
        running = (self.running_mean, self.running_var)
        if use_zoo_op(xf, self.mean_weight, self.var_weight, self.weight, self.bias, *running):
            # the kernels below with a C++ autograd node; running statistics blended there
            batch = self.training or self.running_mean is None
            y = torch.ops.normzoo.switchable_norm(
                xf, self.mean_weight, self.var_weight, self.weight, self.bias, *running,
                batch, factor, self.eps,
            )  # fmt: skip
            return y.to(x.dtype)
        if use_row_map(xf):
            return self._native_forward(x, xf, update, factor)
        return self._eager_forward(x, xf, update, factor)

    def _native_forward(self, x: Tensor, xf: Tensor, update: bool, factor: float) -> Tensor:
        """``y = A x + B`` on the native per-row kernels (``row_map``): IN statistics, the
        mixture on ``(N, C)`` tensors, one affine pass; any layout kept, no copies."""
        batch = self.training or self.running_mean is None
        spec = _SwitchableSpec(self.eps, batch)
        running = (None, None) if batch else (self.running_mean, self.running_var)
        y = row_map(xf, spec, self.mean_weight, self.var_weight, self.weight, self.bias, *running)
        if update:  # as switchable_statistics: BN's, unbiased variance
            self._blend_running_stats(
                spec.mean_bn.view(-1), spec.var_bn.view(-1), factor, xf.numel() // xf.shape[1]
            )
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
