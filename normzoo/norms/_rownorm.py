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
        x.is_cpu
        and x.dtype == torch.float32
        and (weight is None or weight.dtype == torch.float32)
        and x.dim() >= 3
        and x.numel() >= max(NATIVE_MIN_NUMEL, 1)
        and x.is_contiguous()
        and not torch.compiler.is_compiling()
        and _native.available("row_norm")
    )


class _NativeGroupNorm(torch.autograd.Function):
    """Group norm through the native kernels. Returns ``(y, stats, var)``: ``stats``
    ``(2, N, G)`` is the mean and rstd, ``var`` the biased variance ``(N, G)`` when
    ``want_var``, else ``None``; neither is differentiable. Saves ``x``, ``weight`` and
    ``stats``, as torch's group norm does. Under ``create_graph=True`` the backward
    differentiates torch's group norm with a graph instead, so double backward works."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        groups: int,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        want_var: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        # grad mode is off in here: the kernels read the tensors' memory directly
        y, stats, var = _kernels.row_norm_forward_unchecked(x, groups, weight, bias, eps, want_var)
        ctx.save_for_backward(x, weight, stats)
        ctx.groups = groups
        ctx.eps = eps
        ctx.mark_non_differentiable(stats, *(() if var is None else (var,)))
        return y, stats, var

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor, *_: Any
    ) -> tuple[Tensor | None, None, Tensor | None, Tensor | None, None, None]:
        x, weight, stats = ctx.saved_tensors
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
            return dx, None, dw, db, None, None
        dx, dw, db = _kernels.row_norm_backward_unchecked(
            dy.contiguous(), x, ctx.groups, weight, stats, needs
        )
        return dx, None, dw, db, None, None


def native_group_norm(
    x: Tensor,
    groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    want_stats: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    r"""``torch.nn.functional.group_norm`` on the native kernels (see
    :func:`use_native_row_norm`), returning ``(y, mean, var)``: with ``want_stats`` the per
    (sample, group) mean and biased variance ``(N, groups)``, without gradient; else ``None``.

    .. math:: y = \gamma_c \frac{x - \mathrm{E}_{n,g}[x]}{\sqrt{\mathrm{Var}_{n,g}[x]
              + \epsilon}} + \beta_c
    """
    if torch.is_grad_enabled() and _needs_grad(x, weight, bias):
        y, stats, var = _NativeGroupNorm.apply(x, groups, weight, bias, eps, want_stats)
    else:  # nothing to differentiate: skip autograd.Function's fixed cost
        y, stats, var = _kernels.row_norm_forward_unchecked(
            x, groups, weight, bias, eps, want_stats
        )
    return y, (stats[0] if want_stats else None), var


def _needs_grad(*tensors: Tensor | None) -> bool:
    return any(t is not None and t.requires_grad for t in tensors)
