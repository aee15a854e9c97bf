"""Python entry points of the native kernels: outputs allocated with torch, pointers handed
to C.

The public functions check what the C code assumes (contiguous float32 CPU tensors) and raise
a ``ValueError`` otherwise; the norms' dispatch functions check the same before calling, so
their autograd Functions call the ``_unchecked`` variants (a call's fixed cost matters at
small sizes).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch
from torch import Tensor

from normzoo._native import load, threads

_functions: dict[tuple[str, str], Callable[..., None]] = {}


def _fn(lib: str, name: str) -> Callable[..., None]:
    """The C function ``name`` of library ``lib`` (loaded once)."""
    fn = _functions.get((lib, name))
    if fn is None:
        handle: ctypes.CDLL | None = load(lib)
        if handle is None:
            raise RuntimeError(f"the native {lib} kernels are unavailable")
        fn = _functions[(lib, name)] = getattr(handle, name)
    return fn


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(*tensors: Tensor | None) -> None:
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(
                f"native kernels take contiguous float32 CPU tensors, got {t.dtype} on "
                f"{t.device}{'' if t.is_contiguous() else ' (not contiguous)'}"
            )


def _sizes(x: Tensor) -> tuple[int, int, int]:
    n, c = x.shape[0], x.shape[1]
    return n, c, x.numel() // max(n * c, 1)


# -- batch norm: statistics per channel over (N, L) -------------------------------------------
def batch_norm_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training batch norm of ``x`` ``(N, C, *)``: ``(y, mean, invstd, var)``, biased var."""
    _check(x, weight, bias)
    return batch_norm_forward_unchecked(x, weight, bias, eps)


def batch_norm_forward_unchecked(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n, c, length = _sizes(x)
    y = torch.empty_like(x)
    mean, invstd, var = x.new_empty(3, c).unbind(0)
    _fn("batch_norm", "nz_bn_forward")(
        x.data_ptr(), _ptr(weight), _ptr(bias), y.data_ptr(), mean.data_ptr(),
        invstd.data_ptr(), var.data_ptr(), n, c, length, eps, threads(),
    )  # fmt: skip
    return y, mean, invstd, var


def batch_norm_backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients ``(dx, dweight, dbias)`` of training batch norm (``None`` where not needed)."""
    dy = dy.contiguous()
    _check(dy, x, weight, mean, invstd)
    return batch_norm_backward_unchecked(dy, x, weight, mean, invstd, needs)


def batch_norm_backward_unchecked(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    n, c, length = _sizes(x)
    dx = torch.empty_like(x) if needs[0] else None
    dw = x.new_empty(c) if needs[1] else None
    db = x.new_empty(c) if needs[2] else None
    _fn("batch_norm", "nz_bn_backward")(
        dy.data_ptr(), x.data_ptr(), _ptr(weight), mean.data_ptr(), invstd.data_ptr(),
        _ptr(dx), _ptr(dw), _ptr(db), n, c, length, threads(),
    )  # fmt: skip
    return dx, dw, db


# -- row norm: statistics per (sample, group) ---------------------------------------------------
def row_norm_forward(
    x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Group norm of ``x`` ``(N, C, *)`` over ``groups`` rows per sample:
    ``(y, mean, rstd, var)``, the statistics ``(N, groups)``, ``var`` biased."""
    _check(x, weight, bias)
    if x.dim() < 2 or x.shape[1] % groups:
        raise ValueError(f"groups={groups} must divide the channels of x {tuple(x.shape)}")
    return row_norm_forward_unchecked(x, groups, weight, bias, eps)


def row_norm_forward_unchecked(
    x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n, c, length = _sizes(x)
    y = torch.empty_like(x)
    mean, rstd, var = x.new_empty(3, n, groups).unbind(0)
    _fn("row_norm", "nz_row_forward")(
        x.data_ptr(), _ptr(weight), _ptr(bias), y.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
        var.data_ptr(), n, groups, c // groups, length, eps, threads(),
    )  # fmt: skip
    return y, mean, rstd, var


def row_norm_backward(
    dy: Tensor,
    x: Tensor,
    groups: int,
    weight: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`row_norm_forward` (``None`` where not
    needed)."""
    dy = dy.contiguous()
    _check(dy, x, weight, mean, rstd)
    return row_norm_backward_unchecked(dy, x, groups, weight, mean, rstd, needs)


def row_norm_backward_unchecked(
    dy: Tensor,
    x: Tensor,
    groups: int,
    weight: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    n, c, length = _sizes(x)
    dx = torch.empty_like(x) if needs[0] else None
    dw = x.new_empty(c) if needs[1] else None
    db = x.new_empty(c) if needs[2] else None
    partial = x.new_empty(2, n, c)
    _fn("row_norm", "nz_row_backward")(
        dy.data_ptr(), x.data_ptr(), _ptr(weight), mean.data_ptr(), rstd.data_ptr(), _ptr(dx),
        _ptr(dw), _ptr(db), partial.data_ptr(), n, groups, c // groups, length, threads(),
    )  # fmt: skip
    return dx, dw, db
