"""A per-row norm on the native zoo kernels: statistics, a small graph, one elementwise map.

SwitchableNorm and EvoNorm-B0/S0 are each ``y = f(x; p[n, c])``: the mean and biased variance
of every ``(n, c)`` row (over the positions), then a few per-row parameters ``p`` computed from
them by a small graph on ``(N, C)`` tensors (mixtures over the batch or the channels, the
learned parameters), then an elementwise map ``f`` (``normzoo/_native/zoo.c``). The full-size
passes are native and take contiguous or channels_last inputs as they are (no copies; the
output keeps the layout):

* forward: statistics (read ``x``), then the map (read ``x``, write ``y``);
* backward: the per-row sums ``dL/dp`` (read ``dy``, ``x``); the small graph's hand-written
  backward (:class:`RowNormSpec`) gives ``dL/dmean``, ``dL/dvar`` and the learned
  parameters' gradients; then
  ``dx = dy df/dx + dL/dvar 2 (x - mean) / L + dL/dmean / L`` in one pass (read ``dy``, ``x``,
  write ``dx``). Autograd on two separate functions would add a full-size gradient and its sum.

Under ``create_graph=True`` the backward recomputes the same math with differentiable torch
ops and differentiates that, so double backward is exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normzoo import _native
from normzoo._native import zoo_kernels

__all__ = ["RowNormSpec", "row_map", "use_row_map"]


class RowNormSpec:
    """The small graph of one per-row norm, for one call: statistics to parameters, and its
    hand-written backward (a few ops on ``(N, C)`` tensors; autograd's engine on such a graph
    costs more than the full-size native passes at conv sizes).

    Subclasses set ``op`` (a map of ``zoo_kernels``) and write :meth:`params` in
    differentiable torch ops (used as is, with autograd, under ``create_graph=True``) and
    :meth:`backward`. :meth:`params` may keep small tensors on ``self`` for :meth:`backward`
    and for the caller (running statistics).
    """

    op: int

    def params(self, mean: Tensor, var: Tensor, *inputs: Tensor | None) -> Tensor:
        """``(N, C, P)`` parameters of the map from the ``(N, C)`` row statistics."""
        raise NotImplementedError

    def backward(
        self,
        sums: Tensor,
        mean: Tensor,
        var: Tensor,
        inputs: tuple[Tensor | None, ...],
        needs: tuple[bool, ...],
    ) -> tuple[Tensor | None, Tensor | None, list[Tensor | None]]:
        """``(dmean, dvar, dinputs)`` from ``sums`` = dL/dparams ``(N, C, P)``; ``needs``
        says which inputs want a gradient (``None`` where not). ``dmean``/``dvar`` may be
        ``None`` (zero)."""
        raise NotImplementedError


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
        ctx: Any, x: Tensor, spec: RowNormSpec, *inputs: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        mean, var = zoo_kernels.row_stats(x)
        params = spec.params(mean, var, *inputs).contiguous()
        y = zoo_kernels.map_forward(spec.op, x, params)
        ctx.save_for_backward(x, params, mean, var, *inputs)
        ctx.spec = spec
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx: Any, dy: Tensor, _dmean: Tensor, _dvar: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, params, mean, var, *inputs = ctx.saved_tensors
        spec: RowNormSpec = ctx.spec
        needs = tuple(ctx.needs_input_grad[2:])
        if torch.is_grad_enabled():  # create_graph=True: differentiate the torch math
            return _RowMap._differentiable_backward(ctx, dy, x, inputs, needs)
        sums = zoo_kernels.map_sums(spec.op, dy, x, params)
        dmean, dvar, dinputs = spec.backward(sums, mean, var, tuple(inputs), needs)
        dx = None
        if ctx.needs_input_grad[0]:
            length = x.shape[2]
            if dvar is None and dmean is None:
                dx = zoo_kernels.map_dx(spec.op, dy, x, params)
            else:
                k1 = torch.zeros_like(mean) if dvar is None else dvar * (2.0 / length)
                k0 = torch.zeros_like(mean) if dmean is None else dmean / length
                dx = zoo_kernels.map_dx(
                    spec.op, dy, x, params, mean, k1.contiguous(), k0.contiguous()
                )
        return (dx, None, *dinputs)

    @staticmethod
    def _differentiable_backward(
        ctx: Any, dy: Tensor, x: Tensor, inputs: list[Tensor | None], needs: tuple[bool, ...]
    ) -> tuple[Any, ...]:
        var, mean = torch.var_mean(x, dim=2, unbiased=False)
        y = torch_map(ctx.spec.op, x, ctx.spec.params(mean, var, *inputs))
        wanted = [i for i, need in enumerate(needs) if need]
        targets = ([x] if ctx.needs_input_grad[0] else []) + [inputs[i] for i in wanted]
        grads = torch.autograd.grad(y, targets, dy, create_graph=True, allow_unused=True)
        dx = grads[0] if ctx.needs_input_grad[0] else None
        out: list[Tensor | None] = [None] * len(inputs)
        for i, g in zip(wanted, grads[len(grads) - len(wanted) :], strict=True):
            out[i] = g
        return (dx, None, *out)


def row_map(x: Tensor, spec: RowNormSpec, *inputs: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, var)``: ``y = f(x; spec.params(mean, var, *inputs))`` with ``mean``,
    ``var`` the ``(N, C)`` row statistics of ``x`` ``(N, C, *spatial)`` (returned detached);
    ``y`` has ``x``'s shape and layout. Only for inputs where :func:`use_row_map` holds."""
    y, mean, var = _RowMap.apply(rows(x), spec, *inputs)
    return y.view(x.shape), mean, var
