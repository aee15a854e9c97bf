"""Group norm (and so InstanceNorm and channels-first LayerNorm) on the native row kernels.

``normzoo/_native/row_norm.c`` normalizes each (sample, group) row while it is in the core's
cache: forward reads ``x`` once and writes ``y``; backward reads ``x`` and ``dy`` once and
writes ``dx``. torch's CPU group-norm kernels make more passes (measured with
``scripts/bench.py``). Only contiguous float32 CPU inputs are dispatched here
(:func:`use_native_row_norm`); the callers keep torch's kernels for everything else.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import _native
from normzoo._native import kernels as _kernels

__all__ = ["NATIVE_MIN_NUMEL", "native_group_norm", "use_native_row_norm"]

#: Below this many elements torch's kernel and ours take about the same time, and the fixed
#: cost of a call (ctypes, autograd.Function) decides: torch's kernel is kept.
NATIVE_MIN_NUMEL = 1 << 15


def use_native_row_norm(x: Tensor, weight: Tensor | None = None) -> bool:
    """Whether :func:`native_group_norm` serves ``x``: contiguous float32 ``(N, C, *)`` on
    the CPU, at least ``NATIVE_MIN_NUMEL`` elements, outside ``torch.compile``."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and (weight is None or weight.dtype == torch.float32)
        and x.dim() >= 3
        and x.numel() >= max(NATIVE_MIN_NUMEL, 1)
        and x.is_contiguous()
        and not torch.compiler.is_compiling()
        and _native.available("row_norm")
    )


class _NativeGroupNorm(torch.autograd.Function):
    """Group norm through the native kernels; saves ``x``, ``weight``, mean and rstd, as
    torch's group norm does. Under ``create_graph=True`` the backward differentiates torch's
    group norm with a graph instead, so double backward works."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        w = None if weight is None else weight.detach()
        b = None if bias is None else bias.detach()
        y, mean, rstd, var = _kernels.row_norm_forward_unchecked(x.detach(), groups, w, b, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor, _dmean: Tensor, _dvar: Tensor
    ) -> tuple[Tensor | None, None, Tensor | None, Tensor | None, None]:
        x, weight, mean, rstd = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3])
        if torch.is_grad_enabled():
            # create_graph=True: torch's group norm again, differentiated with a graph (its
            # own double backward, as torch.nn.GroupNorm gives). The bias only shifts y.
            inputs = [t for t, need in zip((x, weight), needs[:2], strict=True) if need]
            grads = iter(())
            if inputs:
                y = F.group_norm(x, ctx.groups, weight, None, ctx.eps)
                grads = iter(torch.autograd.grad(y, inputs, dy, create_graph=True))
            dx, dw = (next(grads) if need else None for need in needs[:2])
            db = dy.sum([0, *range(2, dy.dim())]) if needs[2] else None
            return dx, None, dw, db, None
        w = None if weight is None else weight.detach()
        dx, dw, db = _kernels.row_norm_backward_unchecked(
            dy.contiguous(), x.detach(), ctx.groups, w, mean, rstd, needs
        )
        return dx, None, dw, db, None


def native_group_norm(
    x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    r"""``torch.nn.functional.group_norm`` on the native kernels (see
    :func:`use_native_row_norm`), returning ``(y, mean, var)``: the per (sample, group)
    statistics ``(N, groups)``, ``var`` biased, without gradient.

    .. math:: y = \gamma_c \frac{x - \mathrm{E}_{n,g}[x]}{\sqrt{\mathrm{Var}_{n,g}[x] + \epsilon}}
              + \beta_c
    """
    return _NativeGroupNorm.apply(x, groups, weight, bias, eps)
