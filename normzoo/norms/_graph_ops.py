"""The zoo's native CPU kernels as torch custom operators, for graphs that ``torch.compile``
captures.

Eager calls reach the kernels through the C++ operators (``torch.ops.normzoo.*``, with C++
autograd nodes) or :func:`normzoo.norms._row_map.row_map`; neither can be traced (the kernels
take raw pointers), so under capture the norms compute through their reference math, which
inductor compiles. For EvoNorm-S0 and SwitchableNorm that compiled math was slower than the
eager kernels (a training step of the default model 0.70-0.73x and 0.86-0.9x eager, measured
on a 2-core Xeon and an AMD EPYC). Here each norm's forward and backward are each one custom
operator (``torch.library.custom_op``) with a
fake implementation for tracing, tied by ``register_autograd``: dynamo puts them into the
graph as they are, AOTAutograd traces the backward through the second one, and inductor calls
them as extern kernels (no fusion with the operators around them, which the norms' own
kernels do not need).

Only ``torch.compile`` on the CPU takes them (:func:`serves`): ``torch.export`` keeps the
reference math (an exported program with these operators would need normzoo to run), and so
do ``torch.func`` transforms and forward-mode AD (the operators have no batching rule and no
forward derivative).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from normzoo import _native
from normzoo._native import zoo_kernels
from normzoo.norms._kernels import channels_last_format
from normzoo.norms._row_map import kernels_take

__all__ = ["evonorm_s0", "serves", "switchable_norm"]

_F32 = torch.float32
_custom_op = getattr(torch.library, "custom_op", None)  # torch >= 2.4
_is_exporting = getattr(torch.compiler, "is_exporting", None)
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def _kernels_ready() -> bool:
    """Whether the native zoo library is usable (built on first call); under ``torch.compile``
    a constant of the graph (``assume_constant_result``: read once, when dynamo traces)."""
    return _native.available("zoo")


# What ``torch.compiler.assume_constant_result(_kernels_ready)`` does, without importing
# ``torch._dynamo`` (and, with it, triton and inductor) with ``import normzoo``: the mark that
# dynamo reads. ``test_compiled_zoo_runs_the_native_kernels_on_the_cpu`` fails loudly
# (``fullgraph=True``) where a torch reads it no more.
_kernels_ready._dynamo_marked_constant = True  # type: ignore[attr-defined]


def serves(x: Tensor, *params: Tensor | None) -> bool:
    """Whether the custom operators below serve ``x`` ``(N, C, *spatial)`` inside a graph that
    ``torch.compile`` traces: float32 or bfloat16 on the CPU, contiguous or channels_last, its
    per-channel ``params`` contiguous float32 (or ``None``), the native kernels built; not
    ``torch.export``, a ``torch.func`` transform or forward-mode AD."""
    if _custom_op is None or not torch.compiler.is_compiling():
        return False
    if _is_exporting is not None and _is_exporting():
        return False
    if _transforms_active is not None and _transforms_active():
        return False
    if torch.autograd.forward_ad._current_level >= 0:
        return False
    return kernels_take(x, *params) and _kernels_ready()


def _rows(x: Tensor) -> Tensor:
    """``x`` ``(N, C, *spatial)`` as the ``(N, C, L)`` tensor the kernels take: a view of a
    contiguous or channels_last ``x``, else a contiguous copy. The operators take any layout
    (``torch.Tag.flexible_layout``): inductor makes a CPU model's convolutions channels_last
    where it measures that faster, and an operator held to the traced (contiguous) strides
    cost a copy on each side of every norm (a compiled EvoNorm-S0 model's step 89 ms against
    77 ms eager, measured on the EPYC)."""
    if not (x.is_contiguous() or channels_last_format(x) is not None):
        x = x.contiguous()
    return x.view(x.shape[0], x.shape[1], -1)


def _like_rows(x: Tensor) -> Tensor:
    """An empty tensor laid out as the kernels' output for ``x`` (:func:`_rows`), in ``x``'s
    shape: the fake implementations' outputs."""
    if x.is_contiguous() or channels_last_format(x) is not None:
        return torch.empty_like(x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _op(name: str) -> Any:
    """``torch.library.custom_op`` for a CPU operator that takes any layout (where this torch
    has operator tags)."""
    kwargs: dict[str, Any] = {"mutates_args": (), "device_types": "cpu"}
    if "tags" in inspect.signature(_custom_op).parameters:
        kwargs["tags"] = (torch.Tag.flexible_layout,)
    return _custom_op(f"normzoo_graph::{name}", **kwargs)


def _define() -> Any:
    if _custom_op is None:
        return None

    @_op("evonorm_s0")
    def s0_forward(
        x: Tensor, v: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, stats, params = zoo_kernels.s0_forward(_rows(x), v, weight, bias, groups, eps)
        return y.view(x.shape), stats, params

    @s0_forward.register_fake
    def _(x, v, weight, bias, groups, eps):  # type: ignore[no-untyped-def]
        n, c = x.shape[:2]
        return _like_rows(x), x.new_empty((3, n, c), dtype=_F32), x.new_empty((n, c, 3), dtype=_F32)

    @_op("evonorm_s0_backward")
    def s0_backward(
        dy: Tensor,
        x: Tensor,
        params: Tensor,
        stats: Tensor,
        weight: Tensor | None,
        groups: int,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        rows = _rows(x)  # dy: a copy in x's layout where it differs (zoo_kernels)
        dy_rows = dy.reshape(rows.shape)
        grads = zoo_kernels.s0_backward(
            dy_rows, rows, params, stats, weight, groups, eps, (True,) * 4
        )
        return (grads[0].view(x.shape), *grads[1:])  # type: ignore[return-value,union-attr]

    @s0_backward.register_fake
    def _(dy, x, params, stats, weight, groups, eps):  # type: ignore[no-untyped-def]
        c = x.shape[1]
        return (_like_rows(x), *(x.new_empty((c,), dtype=_F32) for _ in range(3)))

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, _, weight, bias, groups, eps = inputs
        _, stats, params = output
        ctx.save_for_backward(x, params, stats, weight)
        ctx.groups, ctx.eps, ctx.has_bias = groups, eps, bias is not None

    def backward(ctx: Any, dy: Tensor, _dstats: Tensor, _dparams: Tensor) -> tuple[Any, ...]:
        x, params, stats, weight = ctx.saved_tensors
        dx, dv, dw, db = s0_backward(dy, x, params, stats, weight, ctx.groups, ctx.eps)
        return (
            dx,
            dv,
            dw if weight is not None else None,
            db if ctx.has_bias else None,
            None,
            None,
        )

    s0_forward.register_autograd(backward, setup_context=setup_context)
    return s0_forward


def _define_switchable() -> Any:
    if _custom_op is None:
        return None

    @_op("switchable_norm")
    def sw_forward(
        x: Tensor,
        mean_weight: Tensor,
        var_weight: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        y, mean, var, stats_bn, params = zoo_kernels.switchable_forward(
            _rows(x), mean_weight, var_weight, weight, bias, running_mean, running_var, eps
        )
        # the IN statistics as one (2, N, C) tensor: mean and var are views of one, and an
        # operator's outputs may not alias each other
        return y.view(x.shape), torch.stack([mean, var]), stats_bn, params

    @sw_forward.register_fake
    def _(x, mean_weight, var_weight, weight, bias, running_mean, running_var, eps):  # type: ignore[no-untyped-def]
        n, c = x.shape[:2]
        small = [x.new_empty(size, dtype=_F32) for size in ((2, n, c), (2, c), (n, c, 2))]
        return (_like_rows(x), *small)

    @_op("switchable_norm_backward")
    def sw_backward(
        dy: Tensor,
        x: Tensor,
        params: Tensor,
        stats: Tensor,
        mean_weight: Tensor,
        var_weight: Tensor,
        weight: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        rows = _rows(x)
        grads = zoo_kernels.switchable_backward(
            dy.reshape(rows.shape), rows, params, stats[0], stats[1], mean_weight, var_weight,
            weight, running_mean, running_var, eps, (True,) * 5,
        )  # fmt: skip
        return (grads[0].view(x.shape), *grads[1:])  # type: ignore[return-value,union-attr]

    @sw_backward.register_fake
    def _(dy, x, params, stats, mean_weight, var_weight, weight, running_mean, running_var, eps):  # type: ignore[no-untyped-def]
        c = x.shape[1]
        sizes = ((3,), (3,), (c,), (c,))
        return (_like_rows(x), *(x.new_empty(size, dtype=_F32) for size in sizes))

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, mean_weight, var_weight, weight, bias, running_mean, running_var, eps = inputs
        _, stats, _, params = output
        ctx.save_for_backward(
            x, params, stats, mean_weight, var_weight, weight, running_mean, running_var
        )
        ctx.eps, ctx.has_bias = eps, bias is not None

    def backward(ctx: Any, dy: Tensor, *_: Tensor) -> tuple[Any, ...]:
        x, params, stats, mw, vw, weight, running_mean, running_var = ctx.saved_tensors
        dx, dmw, dvw, dw, db = sw_backward(
            dy, x, params, stats, mw, vw, weight, running_mean, running_var, ctx.eps
        )
        dw = dw if weight is not None else None
        return dx, dmw, dvw, dw, db if ctx.has_bias else None, None, None, None

    sw_forward.register_autograd(backward, setup_context=setup_context)
    return sw_forward


_s0_op = _define()
_switchable_op = _define_switchable()


def evonorm_s0(
    x: Tensor, v: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """EvoNorm-S0's ``y`` on the native kernels as one custom operator (its backward another),
    for inputs where :func:`serves` holds."""
    return _s0_op(x, v, weight, bias, groups, eps)[0]


def switchable_norm(
    x: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """SwitchableNorm's ``y`` on the native kernels as one custom operator (its backward
    another), with BN's batch mean and biased variance (``(C,)`` each; unset where
    ``running_mean`` and ``running_var`` are given and used instead), for inputs where
    :func:`serves` holds."""
    y, _, stats_bn, _ = _switchable_op(
        x, mean_weight, var_weight, weight, bias, running_mean, running_var, eps
    )
    return y, stats_bn[0], stats_bn[1]
