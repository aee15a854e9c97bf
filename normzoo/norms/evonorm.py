"""EvoNorm-B0 (batch-dependent) and EvoNorm-S0 (sample-based)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from normzoo import functional
from normzoo._native import zoo_kernels
from normzoo._native.zoo_kernels import TOKENS_S0
from normzoo.functional._stats import merge_statistics
from normzoo.norms import _gpu, _graph_ops, _triton, _triton_zoo
from normzoo.norms._kernels import RowAffine, RowStats, restore_format, row_view, scale_shift
from normzoo.norms._row_map import RowNormSpec, row_input, row_map, use_row_map, use_zoo_op
from normzoo.norms._tokens import b0_tokens, group_tokens, use_token_kernels
from normzoo.norms.base import Norm, capturing
from normzoo.norms.batch import BatchNorm
from normzoo.norms.group import resolve_groups


def _s0_fused(x: Tensor) -> bool:
    """EvoNorm-S0's fused CUDA path: tokens, or conv inputs below ``S0_CONV_MAX_NUMEL``."""
    return x.dim() == 2 or x.numel() < _gpu.S0_CONV_MAX_NUMEL


def _one_per_row(x: Tensor) -> bool:
    """One value per (sample, channel) row (``(N, C)`` input, or spatial size 1): the row
    kernels' fixed cost per row then dominates, and the reference math measured 4-6x faster
    (``(4096, 1024)``: B0 1233 vs 187 ms, S0 401 vs 109 ms fwd+bwd on the CPU; 58 vs 10 ms
    and 12 vs 9 ms on an H100)."""
    return math.prod(x.shape[2:]) == 1


class _B0Quotient(torch.autograd.Function):
    """``q = x / max(s_b, v x + s_i)`` for a contiguous ``(N, C, L)`` ``x``, per-channel
    ``v`` ``(1, C, 1)`` and ``s_b`` ``(1, C, 1)``, per-row ``s_i`` ``(N, C, 1)``: the core
    of EvoNorm-B0 in three passes, with a backward that saves only ``x`` (and the small
    tensors) and splits ties of the maximum equally, as ``torch.maximum``.

    With ``D = max(s_b, d)``, ``d = v x + s_i``, ``r = dq / D``, ``t = r x / D`` and
    ``u = t (1 + sign(d - s_b))``: ``dx = r - v u / 2``, ``dv = -sum u x / 2``,
    ``ds_i = -sum_L u / 2`` and ``ds_b = -sum (t - u / 2)``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, v: Tensor, s_i: Tensor, s_b: Tensor
    ) -> Tensor:
        n, c, _ = x.shape
        denom = scale_shift(x, v.expand(n, c, 1), s_i)
        denom = torch.maximum(denom, s_b, out=denom)
        ctx.save_for_backward(x, v, s_i, s_b)
        return torch.div(x, denom)

    @staticmethod
    def backward(ctx: Any, dq: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        x, v, s_i, s_b = ctx.saved_tensors
        n, c, length = x.shape
        dq = dq.contiguous()
        d = scale_shift(x, v.expand(n, c, 1), s_i)
        sign = torch.sub(d, s_b).sign_()
        denom = torch.maximum(d, s_b, out=d)
        r = torch.div(dq, denom)
        t = torch.mul(r, x).div_(denom)
        u = torch.addcmul(t, t, sign, out=sign)
        half_v = (v * -0.5).expand(n, c, 1).reshape(-1)
        zeros, ones = torch.zeros_like(half_v), torch.ones_like(half_v)
        # One pass: -v u / 2, sum_L u x and sum_L u (the inference BN backward, x_hat = x).
        dx, ux, sum_u = torch.ops.aten.native_batch_norm_backward(
            u.view(1, n * c, length),
            x.view(1, n * c, length),
            half_v,
            zeros,
            ones,
            zeros,  # CUDA's kernel needs saved statistics even in inference mode
            ones,
            False,
            0.0,
            [True, True, True],
        )
        dx = dx.view(n, c, length).add_(r)
        dv = (ux.view(n, c).sum(0) * -0.5).view_as(v)
        ds_i = (sum_u * -0.5).view(n, c, 1)
        ds_b = (sum_u.view(n, c).sum(0) * 0.5 - t.sum(dim=(0, 2))).view_as(s_b)
        return dx, dv, ds_i, ds_b


def _per_channel(p: Tensor | None, like: Tensor, fill: float) -> Tensor:
    """A per-channel ``(C,)`` parameter (``fill`` where ``None``) as ``(N, C)`` like ``like``."""
    if p is None:
        return torch.full((1, 1), fill, dtype=like.dtype).expand_as(like)
    return p.to(like.dtype).view(1, -1).expand_as(like)


class _B0Spec(RowNormSpec):
    """EvoNorm-B0's ``v``, ``s_i = sqrt(s^2_{w,h} + eps)``, ``s_b = sqrt(s^2_{b,w,h} + eps)``,
    ``w``, ``b`` per row (``zoo_kernels.B0``) from the instance statistics; the batch variance
    combined from them (Chan et al.'s exact pairwise formula), or (``batch=False``) the running
    one. Inputs: ``v``, ``running_var``, ``weight``, ``bias``. After :meth:`forward`, ``var_b``
    holds the batch variance ``(C,)`` (biased; unset where the running one was used)."""

    op = zoo_kernels.B0

    def __init__(self, eps: float, batch: bool) -> None:
        self.eps, self.batch = eps, batch

    def params(  # type: ignore[override]
        self,
        mean_i: Tensor,
        var_i: Tensor,
        v: Tensor,
        running_var: Tensor | None,
        weight: Tensor | None,
        bias: Tensor | None,
    ) -> Tensor:
        if self.batch:
            var_b = merge_statistics(mean_i, var_i, 0)[1].view(-1)
        else:
            assert running_var is not None
            var_b = running_var.to(mean_i.dtype)
        rows = [
            _per_channel(v, mean_i, 1.0),
            torch.sqrt(var_i + self.eps),
            _per_channel(torch.sqrt(var_b + self.eps), mean_i, 1.0),
            _per_channel(weight, mean_i, 1.0),
            _per_channel(bias, mean_i, 0.0),
        ]
        return torch.stack(rows, dim=2)

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        v: Tensor,
        running_var: Tensor | None,
        weight: Tensor | None,
        bias: Tensor | None,
    ) -> Tensor:
        running = None if self.batch else running_var
        y, self.stats, self.var_b, self.p = zoo_kernels.b0_forward(
            x, v, weight, bias, running, self.eps
        )
        return y

    def backward(
        self, dy: Tensor, x: Tensor, inputs: tuple[Tensor | None, ...], needs: tuple[bool, ...]
    ) -> list[Tensor | None]:
        want = (needs[0], needs[1], needs[3], needs[4])
        dx, dv, dw, db = zoo_kernels.b0_backward(dy, x, self.p, self.stats, self.batch, want)
        return [dx, dv, None, dw, db]


class _S0Spec(RowNormSpec):
    """EvoNorm-S0's ``v``, ``a = w / sqrt(s^2_{w,h,c/g} + eps)``, ``b`` per row
    (``zoo_kernels.S0``) from the per-channel row statistics, the group variance combined from
    them (exact: equal counts). Inputs: ``v``, ``weight``, ``bias``."""

    op = zoo_kernels.S0

    def __init__(self, groups: int, eps: float) -> None:
        self.groups, self.eps = groups, eps

    def params(  # type: ignore[override]
        self, mean_c: Tensor, var_c: Tensor, v: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> Tensor:
        n, c = mean_c.shape
        _, var_g = merge_statistics(
            mean_c.view(n, self.groups, -1), var_c.view(n, self.groups, -1), 2
        )
        r = torch.rsqrt(var_g + self.eps)  # (N, G, 1)
        a = r.expand(n, self.groups, c // self.groups).reshape(n, c)
        a = a * weight.to(a.dtype).view(1, c) if weight is not None else a
        rows = [_per_channel(v, mean_c, 1.0), a, _per_channel(bias, mean_c, 0.0)]
        return torch.stack(rows, dim=2)

    def forward(  # type: ignore[override]
        self, x: Tensor, v: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> Tensor:
        y, self.stats, self.p = zoo_kernels.s0_forward(x, v, weight, bias, self.groups, self.eps)
        return y

    def backward(
        self, dy: Tensor, x: Tensor, inputs: tuple[Tensor | None, ...], needs: tuple[bool, ...]
    ) -> list[Tensor | None]:
        weight = inputs[1]
        return zoo_kernels.s0_backward(
            dy, x, self.p, self.stats, weight, self.groups, self.eps, needs
        )


class EvoNormB0(BatchNorm):
    r"""EvoNorm-B0: a normalization-activation layer found by evolution, using the batch.

    .. math::
        y = \frac{x}{\max\left(\sqrt{s^2_{b,w,h}(x) + \epsilon},\;
                     v_1 x + \sqrt{s^2_{w,h}(x) + \epsilon}\right)} \gamma + \beta

    ``s^2_{b,w,h}`` is the per-channel batch variance (its running average in eval),
    ``s^2_{w,h}`` the per-sample instance variance, ``v_1`` a learned per-channel vector
    (init 1). It replaces both the norm and the activation. Only ``running_var`` is kept (no
    mean is used). See ``normzoo.functional.evonorm_b0``.

    Args:
        num_features, eps, momentum, affine, track_running_stats: as ``BatchNorm``.
        impl: ``"fast"`` (native kernels with hand-written backwards: on float32 CPU input
            behind the C++ operator ``torch.ops.normzoo.evonorm_b0``, tokens on their own
            kernels; on CUDA the reference math fused by ``torch.compile``) or
            ``"reference"``.

    Reference: H. Liu, A. Brock, K. Simonyan, Q. V. Le, "Evolving Normalization-Activation
    Layers", NeurIPS 2020 (arXiv:2004.02967).
    """

    statistics_per = ("channel",)
    reduces_over = ("batch", "spatial")
    uses_batch_stats = True
    batchnorm_statistics = False

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
        self.running_mean = None  # B0 uses the batch variance only
        self.v = nn.Parameter(torch.ones(self.num_features, device=device, dtype=dtype))

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "v"):
            nn.init.ones_(self.v)

    def _forward(self, x: Tensor) -> Tensor:
        update = self.training and self.track_running_stats
        factor = self._update_factor() if update else 0.0
        fast = self.impl == "fast" and not capturing()  # captured: the reference math
        params = (self.v, self.weight, self.bias)
        if fast and _triton.serves_batch(x, *params, kind="b0"):
            # CUDA, measured (_triton.ZOO_MEASURED): the two-phase kernels, per (sample, channel)
            state = _triton_zoo.B0State(self.running_var, self.training, factor, self.eps, update)
            return _triton_zoo.evonorm_b0(x, *params, state)
        if fast and _gpu.use_fused_math(x):
            running = self.running_var.clone() if update else self.running_var
            y, var = _gpu.evonorm_b0(
                x, self.v, running, self.weight, self.bias, self.training, factor, self.eps
            )
            if update:
                with torch.no_grad():
                    self.running_var.copy_(var)
            return y
        if fast and use_token_kernels(x, self.v, self.weight):
            batch = self.training or self.running_var is None
            running = None if batch else self.running_var
            y, var_b = b0_tokens(x, self.v, self.weight, self.bias, running, self.eps)
            if update:
                self._blend_running_stats(None, var_b, factor, x.shape[0])
            return y
        if fast and not _one_per_row(x):
            return self._fast_forward(x, update, factor)
        y, var = functional.evonorm_b0(
            x,
            self.v,
            self.running_var,
            self.weight,
            self.bias,
            training=self.training,
            momentum=factor,
            eps=self.eps,
        )
        if update:
            with torch.no_grad():
                self.running_var.copy_(var)
        return y

    def _fast_forward(self, x: Tensor, update: bool, factor: float) -> Tensor:
        xf = row_input(x)  # bfloat16 read and written natively (row_map)
        if use_zoo_op(xf, self.v, self.weight, self.bias, self.running_var):
            # the kernels below with a C++ autograd node; running_var blended in place there
            batch = self.training or self.running_var is None
            y = torch.ops.normzoo.evonorm_b0(
                xf, self.v, self.weight, self.bias, self.running_var, batch, factor, self.eps
            )
            return y.to(x.dtype)
        if use_row_map(xf):
            return self._native_forward(x, xf, update, factor)
        return self._eager_forward(x, xf, update, factor)

    def _native_forward(self, x: Tensor, xf: Tensor, update: bool, factor: float) -> Tensor:
        """On the native per-row kernels (``row_map``, ``zoo_kernels.B0``): instance
        statistics, the small per-row parameters, one elementwise pass; any layout kept."""
        batch = self.training or self.running_var is None
        spec = _B0Spec(self.eps, batch)
        running = None if batch else self.running_var
        y = row_map(xf, spec, self.v, running, self.weight, self.bias)
        if update:
            self._blend_running_stats(None, spec.var_b, factor, xf.numel() // xf.shape[1])
        return y.to(x.dtype)

    def _eager_forward(self, x: Tensor, xf: Tensor, update: bool, factor: float) -> Tensor:
        """The reference math on torch's kernels: instance statistics in one pass
        (``RowStats``), the batch variance combined from them (Chan et al.'s exact, stable
        pairwise formula), ``v x + sqrt(s^2_{w,h} + eps)`` and the affine in one pass each."""
        flat, channels_last = row_view(xf)
        n, c, length = flat.shape
        mean_i, var_i = RowStats.apply(flat)  # (N, C)
        if self.training or self.running_var is None:
            var_b = merge_statistics(mean_i, var_i, 0)[1].view(-1)
            if update:
                self._blend_running_stats(None, var_b, factor, n * length)
        else:
            var_b = self.running_var.to(xf.dtype)
        if length > 1:
            s_i = torch.sqrt(var_i + self.eps).unsqueeze(2)
        else:  # the reference's instance variance of one position is 0
            s_i = torch.full((n, c, 1), self.eps**0.5, dtype=xf.dtype, device=xf.device)
        s_b = torch.sqrt(var_b + self.eps).view(1, -1, 1)
        y = _B0Quotient.apply(flat, self.v.to(xf.dtype).view(1, -1, 1), s_i, s_b)
        if self.weight is not None or self.bias is not None:
            w = self.weight if self.weight is not None else torch.ones_like(self.v)
            b = self.bias if self.bias is not None else torch.zeros_like(self.v)
            w, b = (p.to(xf.dtype).view(1, -1, 1).expand(n, c, 1) for p in (w, b))
            y = RowAffine.apply(y.contiguous(), w, b)
        return restore_format(y, xf.shape, channels_last).to(x.dtype)


class EvoNormS0(Norm):
    r"""EvoNorm-S0: a normalization-activation layer found by evolution, batch-independent.

    .. math::
        y = \frac{x \cdot \sigma(v_1 x)}{\sqrt{s^2_{w,h,c/g}(x) + \epsilon}} \gamma + \beta

    with ``sigma`` the sigmoid, ``v_1`` a learned per-channel vector (init 1) and
    ``s^2_{w,h,c/g}`` the per-sample variance of a group of ``C / G`` channels, as in
    GroupNorm. The numerator is *divided* by the group standard deviation, as the paper
    defines it. ``num_groups``/``group_size`` follow ``groupnorm``'s rules and defaults.

    Args:
        num_features: the channel count ``C``.
        num_groups: ``G``, a divisor of ``C``. Default: 32, or the largest divisor of ``C``
            not above 32.
        group_size: channels per group, instead of ``num_groups``.
        eps: added to the variance. Default ``1e-5``.
        affine: learn per-channel ``weight`` and ``bias``. Default ``True``.
        impl: ``"fast"`` (native kernels with hand-written backwards: on float32 CPU input
            behind the C++ operator ``torch.ops.normzoo.evonorm_s0``, tokens on their own
            kernels; on CUDA the reference math fused by ``torch.compile``) or
            ``"reference"``.

    Reference: H. Liu, A. Brock, K. Simonyan, Q. V. Le, "Evolving Normalization-Activation
    Layers", NeurIPS 2020 (arXiv:2004.02967).
    """

    statistics_per = ("batch", "group")
    reduces_over = ("channel", "spatial")
    uses_batch_stats = False

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = None,
        *,
        group_size: int | None = None,
        eps: float = 1e-5,
        affine: bool = True,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps=eps, affine=affine, impl=impl, device=device, dtype=dtype
        )
        self.num_groups = resolve_groups(self.num_features, num_groups, group_size)
        self.v = nn.Parameter(torch.ones(self.num_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "v"):
            nn.init.ones_(self.v)

    def _forward(self, x: Tensor) -> Tensor:
        groups = self.num_groups
        fast = self.impl == "fast" and not capturing()  # captured: the reference math
        params = (self.v, self.weight, self.bias)
        if fast and _triton.serves_group(x, groups, *params, kind="s0"):
            # CUDA, measured (_triton.ZOO_MEASURED): one pass per (sample, group)
            return _triton.evonorm_s0(x, self.v, groups, self.weight, self.bias, self.eps)
        if fast and _gpu.use_fused_math(x) and _s0_fused(x):
            return _gpu.evonorm_s0(x, self.v, self.num_groups, self.weight, self.bias, self.eps)
        if fast and use_token_kernels(x, self.v, self.weight):
            return group_tokens(
                TOKENS_S0, x, self.v, self.weight, self.bias, self.num_groups, self.eps
            )
        if fast and not _one_per_row(x):
            return self._fast_forward(x)
        if self.impl == "fast" and not _one_per_row(x) and _graph_ops.serves(x, *params):
            # torch.compile on the CPU: the kernels as custom operators (inductor's code for
            # the reference math measured slower than them)
            return _graph_ops.evonorm_s0(x, self.v, groups, self.weight, self.bias, self.eps)
        return functional.evonorm_s0(
            x, self.v, self.num_groups, self.weight, self.bias, eps=self.eps
        )

    def _fast_forward(self, x: Tensor) -> Tensor:
        xf = row_input(x)  # bfloat16 read and written natively (row_map)
        if use_zoo_op(xf, self.v, self.weight, self.bias):  # the kernels below, C++ autograd
            y = torch.ops.normzoo.evonorm_s0(
                xf, self.v, self.weight, self.bias, self.num_groups, self.eps
            )
            return y.to(x.dtype)
        if use_row_map(xf):
            spec = _S0Spec(self.num_groups, self.eps)
            y = row_map(xf, spec, self.v, self.weight, self.bias)
            return y.to(x.dtype)
        return self._eager_forward(x, xf)

    def _eager_forward(self, x: Tensor, xf: Tensor) -> Tensor:
        """The reference math on torch's kernels: group statistics in one pass
        (``RowStats``), ``v x`` and ``num / std * w + b`` as one-pass per-row affine maps."""
        flat, channels_last = row_view(xf)
        n, c, _ = flat.shape
        g = self.num_groups
        _, var_g = RowStats.apply(flat.view(n, g, -1))
        v = self.v.to(xf.dtype).view(1, -1, 1).expand(n, c, 1)
        num = flat * torch.sigmoid(RowAffine.apply(flat, v, torch.zeros_like(v)))
        a = torch.rsqrt(var_g + self.eps).repeat_interleave(c // g, dim=1).unsqueeze(2)
        b = torch.zeros_like(a)
        if self.weight is not None:
            a = a * self.weight.to(xf.dtype).view(1, -1, 1)
        if self.bias is not None:
            b = b + self.bias.to(xf.dtype).view(1, -1, 1)
        y = RowAffine.apply(num, a, b)
        return restore_format(y, xf.shape, channels_last).to(x.dtype)

    def _repr_structure(self) -> list[str]:
        return [f"num_groups={self.num_groups}"]
