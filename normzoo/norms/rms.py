"""Root Mean Square Layer Normalization."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import functional
from normzoo._native import kernels as _kernels
from normzoo._native import zoo_kernels
from normzoo.functional._stats import affine as _affine
from normzoo.functional._stats import compute_dtype
from normzoo.norms import _triton
from normzoo.norms._kernels import RowAffine, RowMeanSquare, restore_format, row_view
from normzoo.norms._row_map import RowNormSpec, row_input, row_map, use_row_map, use_zoo_op
from normzoo.norms._tokens import float32_params, use_token_kernels
from normzoo.norms.base import Norm, capturing


class _RMSSpec(RowNormSpec):
    """Channels-first RMSNorm as a per-row affine map: ``a = w / RMS(x_n)``, ``b`` per row,
    ``RMS(x_n)^2 = mean_c (var + mean^2) + eps`` from the rows' statistics. Inputs:
    ``weight``, ``bias``."""

    op = zoo_kernels.AFFINE

    def __init__(self, eps: float) -> None:
        self.eps = eps

    def params(  # type: ignore[override]
        self, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> Tensor:
        a = torch.rsqrt((var + mean * mean).mean(1, keepdim=True) + self.eps).expand_as(mean)
        if weight is not None:
            a = a * weight.to(a.dtype).view(1, -1)
        b = bias.to(a.dtype).view(1, -1).expand_as(a) if bias is not None else torch.zeros_like(a)
        return torch.stack([a, b], dim=2)

    def forward(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        y, self.mean, self.var, self.p = zoo_kernels.rms_forward(x, weight, bias, self.eps)
        return y

    def backward(
        self, dy: Tensor, x: Tensor, inputs: tuple[Tensor | None, ...], needs: tuple[bool, ...]
    ) -> list[Tensor | None]:
        return zoo_kernels.rms_backward(
            dy, x, self.p, self.mean, self.var, inputs[0], self.eps, needs
        )


class _RMSTokens(torch.autograd.Function):
    """RMSNorm over the last dim plus a per-channel bias, on ``zoo.c``'s fused token kernels:
    one read of ``x`` for the mean squares and one write of ``y``; the backward reads ``x``
    and ``dy`` once for ``dx`` and the parameters' column sums. Double backward
    (``create_graph=True``) differentiates torch's ``rms_norm`` instead."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> Tensor:
        y, rrms = zoo_kernels.rms_tokens_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, rrms)
        ctx.has_bias, ctx.eps = bias is not None, eps
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, weight, rrms = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        if torch.is_grad_enabled():  # create_graph=True: torch's math, with a graph
            leaves = [t for t, need in zip((x, weight), needs[:2], strict=True) if need]
            grads = iter(())
            if leaves:
                y = F.rms_norm(x.to(compute_dtype(x)), (x.shape[-1],), weight, ctx.eps)
                grads = iter(torch.autograd.grad(y, leaves, dy.to(y.dtype), create_graph=True))
            dx = next(grads) if needs[0] else None
            dw = next(grads) if needs[1] else None
            db = dy.reshape(-1, x.shape[-1]).sum(0) if needs[2] else None
            return dx, dw, db, None
        dx, dw, db = zoo_kernels.rms_tokens_backward(dy, x, weight, rrms, needs)
        return dx, dw, db, None


def rms_tokens(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    r"""``F.rms_norm(x, (C,), weight, eps) + bias`` for contiguous CPU ``x`` ``(..., C)`` on
    the fused native kernels (see :func:`use_token_kernels`; half precision computed in
    float32: bfloat16 read and written by the kernels, float16 on a float32 copy).

    .. math:: y = \frac{x}{\sqrt{\mathrm{mean}_c\, x^2 + \epsilon}} \, w + b
    """
    if x.dtype != torch.float32:  # half precision: computed in float32
        weight, bias = float32_params(weight, bias)
        if x.dtype not in zoo_kernels.ROW_DTYPES:  # float16: on a float32 copy
            return rms_tokens(x.float(), weight, bias, eps).to(x.dtype)
    if torch.is_grad_enabled() and _kernels.needs_grad(x, weight, bias):
        return _RMSTokens.apply(x, weight, bias, eps)
    return zoo_kernels.rms_tokens_forward(x, weight, bias, eps)[0]


class RMSNorm(Norm):
    r"""RMSNorm: each sample rescaled by the root mean square of its features, no centering.

    .. math::
        y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \odot \gamma + \beta

    With the default ``channels_last=False`` the input is ``(N, C, *spatial)`` and the mean
    square is taken per sample over ``C`` and every position (as normzoo's channels-first
    LayerNorm). With ``channels_last=True`` the input is a token tensor ``(..., C)``
    rescaled over its last dim: with ``bias`` at 0 this is exactly
    ``torch.nn.RMSNorm(C, eps=eps)``. Unlike torch, there is a per-channel ``bias`` (the
    paper's ``b``; the shared interface of normzoo), initialised to 0.

    Args:
        num_features: the channel count ``C``.
        eps: added to the mean square inside the root. Default ``1e-5``.
        affine: learn per-channel ``weight`` and ``bias``. Default ``True``.
        channels_last: token input ``(..., C)``. Default ``False``.
        impl: ``"fast"`` (native kernels with hand-written backwards, tokens included;
            torch's ``rms_norm`` where they do not apply) or ``"reference"``.

    Reference: B. Zhang, R. Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
    """

    statistics_per = ("batch",)
    reduces_over = ("channel", "spatial")
    uses_batch_stats = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        channels_last: bool = False,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features,
            eps=eps,
            affine=affine,
            impl=impl,
            channels_last=channels_last,
            device=device,
            dtype=dtype,
        )
        if self.channels_last:
            self.statistics_per = ("batch", "spatial")
            self.reduces_over = ("channel",)
        self.reset_parameters()

    def _forward(self, x: Tensor) -> Tensor:
        if self.impl == "reference" or capturing():  # captured: the reference math
            return functional.rms_norm(
                x, self.weight, self.bias, eps=self.eps, channels_last=self.channels_last
            )
        if not self.channels_last and x.dim() >= 3:
            if _triton.serves_group(x, 1, self.weight, self.bias, kind="rms"):
                # CUDA, measured (_triton.ZOO_MEASURED): one pass per sample, or two phases
                return _triton.rms_norm(x, self.weight, self.bias, self.eps)
            xf = row_input(x)  # bfloat16 read and written natively, other halves in float32
            if use_zoo_op(xf, self.weight, self.bias):  # the kernels below, C++ autograd
                return torch.ops.normzoo.rms_norm_rows(xf, self.weight, self.bias, self.eps).to(
                    x.dtype
                )
            if use_row_map(xf):  # native, any layout kept
                y = row_map(xf, _RMSSpec(self.eps), self.weight, self.bias)
                return y.to(x.dtype)
            return self._rows_forward(xf).to(x.dtype)
        if self.channels_last:
            if _triton.serves_tokens(x, self.weight, self.bias, rms=True):  # CUDA: bfloat16
                return _triton.rms_norm_tokens(x, self.weight, self.bias, self.eps)
            if use_token_kernels(x, self.weight, any_rank=True):
                return rms_tokens(x, self.weight, self.bias, self.eps)
        # (after the kernels, which read half inputs as they are: made before them, this unused
        # float32 copy cost the H200's bfloat16 token rows part of their time, 0.25 of the
        # copy ceiling against 0.96 in float32)
        xf = x.to(compute_dtype(x))  # half inputs: statistics and affine in float32
        if self.channels_last:
            y = F.rms_norm(xf, (self.num_features,), self.weight, self.eps)
            y = y if self.bias is None else y + self.bias
        else:
            y = _affine(F.rms_norm(xf, tuple(x.shape[1:]), None, self.eps), self.weight, self.bias)
        return y.to(x.dtype)

    def _rows_forward(self, xf: Tensor) -> Tensor:
        """Channels-first ``(N, C, *spatial)``: ``y = A x + B`` per sample and channel with
        ``A = w / RMS(x_n)``, the mean square in one pass (``RowMeanSquare``) and the map in
        one (``RowAffine``); torch's ``rms_norm`` plus a broadcast affine measured ~2x BN."""
        flat, channels_last = row_view(xf)
        n, c, _ = flat.shape
        rinv = torch.rsqrt(RowMeanSquare.apply(flat.view(n, 1, -1)) + self.eps)  # (N, 1)
        a = rinv.unsqueeze(2).expand(n, c, 1)
        b = torch.zeros_like(a)
        if self.weight is not None:
            a = a * self.weight.to(a.dtype).view(1, -1, 1)
        if self.bias is not None:
            b = b + self.bias.to(b.dtype).view(1, -1, 1)
        y = RowAffine.apply(flat, a, b)
        return restore_format(y, xf.shape, channels_last)
