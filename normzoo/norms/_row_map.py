"""A per-row norm on the native zoo kernels: statistics, a small graph, one elementwise map.

SwitchableNorm and EvoNorm-B0/S0 are each ``y = f(x; p[n, c])``: the mean and biased variance
of every ``(n, c)`` row (over the positions), then a few per-row parameters ``p`` computed from
them by a small graph on ``(N, C)`` tensors (mixtures over the batch or the channels, the
learned parameters), then an elementwise map ``f`` (``normzoo/_native/zoo.c``). The full-size
passes are native and take contiguous or channels_last inputs as they are (no copies; the
output keeps the layout):

* forward: statistics (read ``x``), then the map (read ``x``, write ``y``);
* backward: the per-row sums ``dL/dp`` (read ``dy``, ``x``); autograd through the small graph
  gives ``dL/dmean``, ``dL/dvar`` and the learned parameters' gradients; then
  ``dx = dy df/dx + dL/dvar 2 (x - mean) / L + dL/dmean / L`` in one pass (read ``dy``, ``x``,
  write ``dx``). Autograd on two separate functions would add a full-size gradient and its sum.

Under ``create_graph=True`` the backward recomputes the same math with differentiable torch
ops and differentiates that, so double backward is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from normzoo import _native
from normzoo._native import zoo_kernels

__all__ = ["ParamsFn", "row_map", "use_row_map"]

#: ``(mean, var, *inputs) -> params``: ``(N, C)`` statistics to ``(N, C, P)`` parameters.
ParamsFn = Callable[..., Tensor]


def use_row_map(x: Tensor) -> bool:
    """Whether :func:`row_map` runs natively on ``x`` ``(N, C, *spatial)``: float32 on CPU,
    contiguous or channels_last, native kernels available, not under ``torch.compile``."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() >= 2
        and x.numel() > 0
        and zoo_kernels.layout(rows(x)) is not None
        and not torch.compiler.is_compiling()
        and _native.available("zoo")
    )


def rows(x: Tensor) -> Tensor:
    """``x`` ``(N, C, *spatial)`` as ``(N, C, L)``: a view for contiguous and channels_last
    inputs (a copy otherwise)."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def torch_map(op: int, x: Tensor, p: Tensor) -> Tensor:
    """The maps of ``zoo.c`` in differentiable torch ops (``x`` ``(N, C, L)``, ``p``
    ``(N, C, P)``)."""
    q = [p[..., i : i + 1] for i in range(p.shape[2])]
    if op == zoo_kernels.AFFINE:
        return x * q[0] + q[1]
    if op == zoo_kernels.B0:
        return x / torch.maximum(q[2], q[0] * x + q[1]) * q[3] + q[4]
    return x * torch.sigmoid(q[0] * x) * q[1] + q[2]


class _RowMap(torch.autograd.Function):
    """``(y, mean, var)`` of a per-row norm (see the module docstring); ``mean``, ``var``
    ``(N, C)`` are returned detached for running statistics."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, op: int, fn: ParamsFn, *inputs: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        mean, var = zoo_kernels.row_stats(x)
        if any(ctx.needs_input_grad):
            # Keep the small graph from (mean, var, inputs) to params for the backward.
            with torch.enable_grad():
                leaves = [mean.clone().requires_grad_(), var.clone().requires_grad_()]
                leaves += [
                    t.detach().requires_grad_() if t is not None and t.requires_grad else t
                    for t in inputs
                ]
                graph = fn(*leaves)
            ctx.small = (graph, leaves)
            params = graph.detach()
        else:
            params = fn(mean, var, *inputs)
        params = params.contiguous()
        y = zoo_kernels.map_forward(op, x, params)
        ctx.save_for_backward(x, params, mean, *inputs)
        ctx.op, ctx.fn = op, fn
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx: Any, dy: Tensor, _dmean: Tensor, _dvar: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, params, mean, *inputs = ctx.saved_tensors
        wanted = [i for i, t in enumerate(inputs) if ctx.needs_input_grad[3 + i]]
        if torch.is_grad_enabled():  # create_graph=True: differentiate the torch math
            return _RowMap._differentiable_backward(ctx, dy, x, inputs, wanted)
        graph, leaves = ctx.small
        sums = zoo_kernels.map_sums(ctx.op, dy, x, params)
        targets = [leaves[0], leaves[1]] + [leaves[2 + i] for i in wanted]
        with torch.enable_grad():
            grads = torch.autograd.grad(graph, targets, sums, retain_graph=True, allow_unused=True)
        dmean, dvar = (torch.zeros_like(mean) if g is None else g for g in grads[:2])
        out: list[Tensor | None] = [None] * len(inputs)
        for i, g in zip(wanted, grads[2:], strict=True):
            out[i] = g
        dx = None
        if ctx.needs_input_grad[0]:
            length = x.shape[2]
            k1 = (dvar * (2.0 / length)).contiguous()
            k0 = (dmean / length).contiguous()
            dx = zoo_kernels.map_dx(ctx.op, dy, x, params, mean, k1, k0)
        return (dx, None, None, *out)

    @staticmethod
    def _differentiable_backward(
        ctx: Any, dy: Tensor, x: Tensor, inputs: list[Tensor | None], wanted: list[int]
    ) -> tuple[Any, ...]:
        var, mean = torch.var_mean(x, dim=2, unbiased=False)
        y = torch_map(ctx.op, x, ctx.fn(mean, var, *inputs))
        targets = ([x] if ctx.needs_input_grad[0] else []) + [inputs[i] for i in wanted]
        grads = torch.autograd.grad(y, targets, dy, create_graph=True, allow_unused=True)
        dx = grads[0] if ctx.needs_input_grad[0] else None
        out: list[Tensor | None] = [None] * len(inputs)
        for i, g in zip(wanted, grads[len(grads) - len(wanted) :], strict=True):
            out[i] = g
        return (dx, None, None, *out)


def row_map(
    x: Tensor, op: int, fn: ParamsFn, *inputs: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, var)``: ``y = f_op(x; fn(mean, var, *inputs))`` with ``mean``, ``var`` the
    ``(N, C)`` row statistics of ``x`` ``(N, C, *spatial)`` (returned detached); ``y`` has
    ``x``'s shape and layout. Only for inputs where :func:`use_row_map` holds."""
    y, mean, var = _RowMap.apply(rows(x), op, fn, *inputs)
    return y.view(x.shape), mean, var
