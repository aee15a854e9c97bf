"""A per-row norm on the native zoo kernels: statistics, a small graph, one elementwise map.

SwitchableNorm, EvoNorm-B0/S0, FRN+TLU and channels-first RMSNorm are each
``y = f(x; p[n, c])``: the mean and biased variance of every ``(n, c)`` row (over the
positions), then a few per-row parameters ``p`` computed from them by a small graph on
``(N, C)`` values (mixtures over the batch or the channels, the learned parameters), then an
elementwise map ``f`` (``normzoo/_native/zoo.c``). Each norm's forward and backward is one
native call, which takes contiguous or channels_last inputs as they are (no copies; the output
keeps the layout):

* forward: statistics (read ``x``), the small graph, then the map (read ``x``, write ``y``);
* backward: the per-row sums ``dL/dp`` (read ``dy``, ``x``); the small graph's hand-written
  backward gives ``dL/dmean``, ``dL/dvar`` and the learned parameters' gradients; then
  ``dx = dy df/dx + dL/dvar 2 (x - mean) / L + dL/dmean / L`` in one pass (read ``dy``, ``x``,
  write ``dx``). Autograd on two separate functions would add a full-size gradient and its
  sum, and autograd's engine on the small graph cost more than the full-size passes at conv
  sizes (measured on a 2-core Xeon, torch 2.13).

Under ``create_graph=True`` the backward recomputes the same math with differentiable torch
ops (:meth:`RowNormSpec.params`) and differentiates that, so double backward is exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normzoo import _native
from normzoo._native import zoo_kernels
from normzoo.functional._stats import compute_dtype
from normzoo.norms._kernels import channels_last_format

__all__ = ["RowNormSpec", "kernels_take", "row_input", "row_map", "use_row_map", "use_zoo_op"]


class RowNormSpec:
    """One per-row norm, for one call: its native forward and backward (one ``zoo_kernels``
    call each, the small graph included as serial loops on ``(N, C)`` values), and the same
    math in differentiable torch ops (:meth:`params`, for ``create_graph=True``).

    :meth:`forward` keeps what :meth:`backward` needs (and what the caller needs for running
    statistics) on ``self``.
    """

    op: int

    def params(self, mean: Tensor, var: Tensor, *inputs: Tensor | None) -> Tensor:
        """``(N, C, P)`` parameters of the map from the ``(N, C)`` row statistics, in
        differentiable torch ops."""
        raise NotImplementedError

    def forward(self, x: Tensor, *inputs: Tensor | None) -> Tensor:
        """``y`` for ``x`` ``(N, C, L)`` (contiguous or channels_last), natively."""
        raise NotImplementedError

    def backward(
        self, dy: Tensor, x: Tensor, inputs: tuple[Tensor | None, ...], needs: tuple[bool, ...]
    ) -> list[Tensor | None]:
        """``[dx, *dinputs]`` natively, ``None`` where ``needs`` (``x``, then the inputs) is
        false."""
        raise NotImplementedError


def use_row_map(x: Tensor) -> bool:
    """Whether :func:`row_map` runs natively on ``x`` ``(N, C, *spatial)``: float32 or
    bfloat16 on CPU, contiguous or channels_last, native kernels available, not under
    ``torch.compile``."""
    return (
        x.device.type == "cpu"
        and x.dtype in zoo_kernels.ROW_DTYPES
        and x.dim() >= 2
        and x.numel() > 0
        and zoo_kernels.layout(rows(x)) is not None
        and not _native.capturing()
        and _native.available("zoo")
    )


def row_input(x: Tensor) -> Tensor:
    """What a per-row norm computes on: ``x`` itself where :func:`row_map` takes it as it is
    (float32, and bfloat16, which the kernels read and write in place of float32 copies of
    ``x``, ``y``, ``dy`` and ``dx``: 2.5-3.5x faster fwd+bwd, measured on (32, 64, 32, 32),
    2-core Xeon), else ``x`` in its compute dtype (float32 for half types)."""
    if x.dtype == torch.bfloat16 and use_row_map(x):
        return x
    return x.to(compute_dtype(x))


def use_zoo_op(x: Tensor, *params: Tensor | None) -> bool:
    """Whether the zoo's C++ operators (``torch.ops.normzoo.evonorm_s0``, ``evonorm_b0``,
    ``switchable_norm``, ``filter_response_norm``, ``rms_norm_rows``: the same ``zoo.c``
    kernels with C++ autograd nodes, no Python between them and autograd) serve
    ``x`` ``(N, C, *spatial)``: float32 or bfloat16 (the kernels' bfloat16 builds) on the
    CPU, contiguous or channels_last, its per-channel ``params`` contiguous float32 (or
    ``None``), outside ``torch.compile``, the operator library built. The Python path
    (:func:`row_map`) cost about 0.3 ms more per fwd+bwd (measured on (8, 256, 14, 14),
    2-core Xeon), a fifth of the whole."""
    return kernels_take(x, *params) and not _native.capturing() and _native.ops_available()


def kernels_take(x: Tensor, *params: Tensor | None) -> bool:
    """Whether the zoo's one-call kernels take ``x`` ``(N, C, *spatial)`` as it is: float32
    or bfloat16 on the CPU, not empty, contiguous or channels_last, its per-channel ``params``
    contiguous float32 CPU tensors (or ``None``). What :func:`use_zoo_op` and the compiled
    path's operators (``_graph_ops.serves``) both ask of an input."""
    if not (x.is_cpu and x.dtype in zoo_kernels.ROW_DTYPES and x.dim() >= 3 and x.numel() > 0):
        return False
    if not (x.is_contiguous() or channels_last_format(x) is not None):
        return False
    return all(
        p is None or (p.dtype == torch.float32 and p.is_contiguous() and p.is_cpu) for p in params
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
    if op == zoo_kernels.S0:
        return x * torch.sigmoid(q[0] * x) * q[1] + q[2]
    return torch.maximum(x * q[0] + q[1], q[2])


class _RowMap(torch.autograd.Function):
    """``y`` of a per-row norm through its ``RowNormSpec`` (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, spec: RowNormSpec, *inputs: Tensor | None
    ) -> Tensor:
        y = spec.forward(x, *inputs)
        ctx.save_for_backward(x, *inputs)
        ctx.spec = spec
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, *inputs = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], *ctx.needs_input_grad[2:])
        if torch.is_grad_enabled():  # create_graph=True: differentiate the torch math
            grads = _RowMap._differentiable_backward(ctx.spec, dy, x, inputs, needs)
        else:
            grads = ctx.spec.backward(dy, x, tuple(inputs), needs)
        return (grads[0], None, *grads[1:])

    @staticmethod
    def _differentiable_backward(
        spec: RowNormSpec,
        dy: Tensor,
        x: Tensor,
        inputs: list[Tensor | None],
        needs: tuple[bool, ...],
    ) -> list[Tensor | None]:
        xc = x.to(compute_dtype(x))  # bfloat16: the kernels' float32 math
        var, mean = torch.var_mean(xc, dim=2, unbiased=False)
        y = torch_map(spec.op, xc, spec.params(mean, var, *inputs))
        dy = dy.to(y.dtype)
        leaves = [x, *inputs]
        wanted = [i for i, need in enumerate(needs) if need]
        grads = torch.autograd.grad(
            y, [leaves[i] for i in wanted], dy, create_graph=True, allow_unused=True
        )
        out: list[Tensor | None] = [None] * len(leaves)
        for i, g in zip(wanted, grads, strict=True):
            out[i] = g
        return out


def row_map(x: Tensor, spec: RowNormSpec, *inputs: Tensor | None) -> Tensor:
    """``y = f(x; spec.params(mean, var, *inputs))`` with ``mean``, ``var`` the ``(N, C)``
    row statistics of ``x`` ``(N, C, *spatial)``; ``y`` has ``x``'s shape and layout. Only
    for inputs where :func:`use_row_map` holds."""
    return _RowMap.apply(rows(x), spec, *inputs).view(x.shape)
