"""Token input ``(N, C)`` (no spatial positions) on ``zoo.c``'s fused token kernels: GroupNorm
and EvoNorm-S0 (statistics over groups of contiguous channels of a row, one read of the row),
EvoNorm-B0 (batch statistics per column, then an elementwise map).

With one value per ``(sample, channel)`` the per-row kernels pay their fixed cost per value;
torch's GroupNorm and the zoo's reference math measured 5-13x BatchNorm1d's fwd+bwd at
``(4096, 1024)`` and ``(2048, 4096)`` on a 2-core Xeon (``docs/performance.md``). Double
backward (``create_graph=True``) differentiates the reference math instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import _native, functional
from normzoo._native import kernels as _kernels
from normzoo._native import zoo_kernels as zk
from normzoo.functional._stats import compute_dtype

__all__ = ["TOKEN_DTYPES", "TOKEN_MIN_NUMEL", "b0_tokens", "group_tokens", "use_token_kernels"]

#: The token kernels run from this many elements; below, a call's fixed cost decides (torch's
#: kernels, or the reference math, measured 3-15x BatchNorm1d's fwd+bwd at (4096, 1024) and
#: (2048, 4096) on a 2-core Xeon: RMSNorm, FRN, GroupNorm, EvoNorm).
TOKEN_MIN_NUMEL = 1 << 15
#: Input dtypes the token kernels take: float32, and half precision computed in float32
#: (bfloat16 read and written by the kernels; float16 converted once, the output converted
#: back), as the conv paths compute it.
TOKEN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def use_token_kernels(x: Tensor, *params: Tensor | None, any_rank: bool = False) -> bool:
    """Contiguous CPU ``(N, C)`` input (``any_rank``: ``(..., C)``, RMSNorm's tokens) of a
    ``TOKEN_DTYPES`` dtype and at least ``TOKEN_MIN_NUMEL`` elements, parameters in float32 or
    in ``x``'s dtype (a model cast with ``.to(torch.bfloat16)``: the kernels take them in
    float32, see :func:`float32_params`), outside ``torch.compile``, with the native kernels
    available."""
    return (
        (x.dim() >= 1 if any_rank else x.dim() == 2)
        and x.is_cpu
        and x.dtype in TOKEN_DTYPES
        and x.numel() >= TOKEN_MIN_NUMEL
        and x.is_contiguous()
        and all(p is None or p.dtype in (torch.float32, x.dtype) for p in params)
        and not _native.capturing()
        and _native.available("zoo")
    )


def float32_params(*params: Tensor | None) -> tuple[Tensor | None, ...]:
    """``params`` in float32, for the kernels of a half-precision call (``None`` kept; float32
    ones returned as they are). A differentiable cast: their gradients come back cast to the
    parameters' own dtype. Without it a model cast to bfloat16 ran the reference math in
    bfloat16, eager: fwd+bwd on (2048, 4096) tokens, 2 threads, FRN 286 ms against 44 ms here,
    EvoNorm-S0 241 against 38, RMSNorm 131 against 52 (as with float32 parameters)."""
    return tuple(None if p is None else p.float() for p in params)


def _graph_grads(ctx: Any, out: Tensor, leaves: tuple[Tensor | None, ...], dy: Tensor) -> list:
    """The gradients of ``out`` (built under ``enable_grad``) for the ``leaves`` that
    ``ctx.needs_input_grad`` asks for, with a graph (double backward); ``None`` elsewhere."""
    needs = ctx.needs_input_grad[: len(leaves)]
    wanted = [t for t, need in zip(leaves, needs, strict=True) if need]
    dy = dy.to(out.dtype)  # bfloat16 input: out is the float32 math
    grads = iter(torch.autograd.grad(out, wanted, dy, create_graph=True, allow_unused=True))
    result = []
    for t, need in zip(leaves, needs, strict=True):
        g = next(grads) if need else None
        result.append(torch.zeros_like(t) if need and g is None else g)
    return result


def _reference_group(
    op: int, x: Tensor, v: Tensor | None, w: Tensor | None, b: Tensor | None, g: int, eps: float
) -> Tensor:
    x = x.to(compute_dtype(x))  # bfloat16: the kernels' float32 math
    if op == zk.TOKENS_GN:
        return F.group_norm(x.unsqueeze(-1), g, w, b, eps).squeeze(-1)
    assert v is not None
    return functional.evonorm_s0(x, v, g, w, b, eps=eps)


class _GroupTokens(torch.autograd.Function):
    """GroupNorm or EvoNorm-S0 (``op``) of ``(N, C)`` input on the fused token kernels: one
    read of ``x`` forward; the backward reads ``x`` and ``dy`` once for ``dx`` and the
    parameters' column sums. Saves ``x`` and the ``(N, G)`` statistics."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        v: Tensor | None,
        weight: Tensor | None,
        bias: Tensor | None,
        op: int,
        groups: int,
        eps: float,
    ) -> Tensor:
        y, mean, rstd = zk.group_tokens_forward(op, x, v, weight, bias, groups, eps)
        ctx.save_for_backward(x, v, weight, bias, mean, rstd)
        ctx.op, ctx.groups, ctx.eps = op, groups, eps
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, v, weight, bias, mean, rstd = ctx.saved_tensors
        tail = (None, None, None)
        if torch.is_grad_enabled():  # create_graph=True: the reference math, with a graph
            leaves = (x, v, weight, bias)
            with torch.enable_grad():
                y = _reference_group(ctx.op, x, v, weight, bias, ctx.groups, ctx.eps)
            return (*_graph_grads(ctx, y, leaves, dy), *tail)
        needs = tuple(ctx.needs_input_grad[:4])
        dx, dv, dw, db = zk.group_tokens_backward(ctx.op, dy, x, v, weight, mean, rstd, needs)
        return dx, dv, dw, db, *tail


def group_tokens(
    op: int,
    x: Tensor,
    v: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    groups: int,
    eps: float,
) -> Tensor:
    r"""GroupNorm (``op = zoo_kernels.TOKENS_GN``) or EvoNorm-S0 (``TOKENS_S0``) of ``x``
    ``(N, C)`` over ``groups`` groups of ``C / G`` contiguous channels (see
    :func:`use_token_kernels`).

    .. math::
        y_{GN} = \frac{x - \mu_g}{\sqrt{\sigma^2_g + \epsilon}} \gamma + \beta, \qquad
        y_{S0} = \frac{x \, \sigma(v x)}{\sqrt{\sigma^2_g + \epsilon}} \gamma + \beta
    """
    if x.dtype != torch.float32:  # half precision: computed in float32
        v, weight, bias = float32_params(v, weight, bias)
        if x.dtype not in zk.ROW_DTYPES:  # float16: on a float32 copy
            return group_tokens(op, x.float(), v, weight, bias, groups, eps).to(x.dtype)
    if torch.is_grad_enabled() and _kernels.needs_grad(x, v, weight, bias):
        return _GroupTokens.apply(x, v, weight, bias, op, groups, eps)
    return zk.group_tokens_forward(op, x, v, weight, bias, groups, eps)[0]


class _B0Tokens(torch.autograd.Function):
    """EvoNorm-B0 of ``(N, C)`` input: with batch statistics (``batch``), the column means
    and biased variances in one sweep, then ``y`` in one elementwise sweep; the backward takes
    the column sums, then ``dx`` (with the batch variance's share). Returns ``(y, var_b)``,
    ``var_b`` the batch variance (non-differentiable; unset without batch statistics)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        v: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_var: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, Tensor]:
        y, s_b, mean, var_b = _b0_tokens_forward(x, v, weight, bias, running_var, eps)
        ctx.save_for_backward(x, v, weight, bias, s_b, mean, running_var)
        ctx.eps = eps
        ctx.mark_non_differentiable(var_b)
        return y, var_b

    @staticmethod
    def backward(ctx: Any, dy: Tensor, _: Any) -> tuple[Any, ...]:  # type: ignore[override]
        x, v, weight, bias, s_b, mean, running_var = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the reference math, with a graph
            leaves = (x, v, weight, bias)
            with torch.enable_grad():
                y, _ = functional.evonorm_b0(
                    x.to(compute_dtype(x)),  # bfloat16: the kernels' float32 math
                    v,
                    running_var,
                    weight,
                    bias,
                    training=running_var is None,
                    eps=ctx.eps,
                )
            return (*_graph_grads(ctx, y, leaves, dy), None, None)
        needs = tuple(ctx.needs_input_grad[:4])
        dx, dv, dw, db = zk.b0_tokens_backward(dy, x, v, s_b, weight, mean, ctx.eps, needs)
        return dx, dv, dw, db, None, None


def _b0_tokens_forward(
    x: Tensor,
    v: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_var: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """``(y, s_b, mean, var_b)`` of :class:`_B0Tokens` (``mean`` ``None`` and ``var_b``
    empty with ``running_var``)."""
    if running_var is None:
        mean, var_b = zk.column_stats(x)
        s_b = torch.sqrt(var_b + eps)
    else:
        mean, var_b = None, x.new_empty(0)
        s_b = torch.sqrt(running_var.detach().to(torch.float32) + eps)
    return zk.b0_tokens_forward(x, v, s_b, weight, bias, eps), s_b, mean, var_b


def b0_tokens(
    x: Tensor,
    v: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_var: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    r"""EvoNorm-B0 of ``x`` ``(N, C)``: ``(y, var_b)``. With ``running_var`` ``None`` the
    batch's column variance ``var_b`` (biased) is used and returned; else ``running_var`` is
    used and ``var_b`` is empty. One position per value, so the instance variance is 0:

    .. math:: y = \frac{x}{\max\left(\sqrt{s^2_b + \epsilon}, v x + \sqrt{\epsilon}\right)}
              \gamma + \beta
    """
    if x.dtype != torch.float32:  # half precision: computed in float32
        v, weight, bias = float32_params(v, weight, bias)
        if x.dtype not in zk.ROW_DTYPES:  # float16: on a float32 copy
            y, var_b = b0_tokens(x.float(), v, weight, bias, running_var, eps)
            return y.to(x.dtype), var_b
    if torch.is_grad_enabled() and _kernels.needs_grad(x, v, weight, bias):
        return _B0Tokens.apply(x, v, weight, bias, running_var, eps)
    y, _, _, var_b = _b0_tokens_forward(x, v, weight, bias, running_var, eps)
    return y, var_b
