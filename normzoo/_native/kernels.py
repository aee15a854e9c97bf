"""Python entry points of the native kernels: shape, dtype and layout checks, outputs
allocated with torch, pointers handed to C. Callers dispatch only tensors these accept."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo._native import load, threads


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(x: Tensor, *params: Tensor | None) -> None:
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
        raise ValueError(
            f"native kernels take contiguous float32 CPU tensors, got {x.dtype} on {x.device}"
            f"{'' if x.is_contiguous() else ' (not contiguous)'}"
        )
    for p in params:
        if p is not None and (p.dtype != torch.float32 or not p.is_contiguous()):
            raise ValueError(f"native kernels take contiguous float32 parameters, got {p.dtype}")


def batch_norm_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training batch norm of ``x`` ``(N, C, *)``: ``(y, mean, invstd, var)``, biased var."""
    lib = load("batch_norm")
    if lib is None:
        raise RuntimeError("the native batch_norm kernels are unavailable")
    _check(x, weight, bias)
    n, c = x.shape[0], x.shape[1]
    length = x.numel() // max(n * c, 1)
    y = torch.empty_like(x)
    stats = x.new_empty(3, c)
    mean, invstd, var = stats[0], stats[1], stats[2]
    lib.nz_bn_forward(
        _ptr(x), _ptr(weight), _ptr(bias), _ptr(y), _ptr(mean), _ptr(invstd), _ptr(var),
        n, c, length, float(eps), threads(),
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
    lib = load("batch_norm")
    if lib is None:
        raise RuntimeError("the native batch_norm kernels are unavailable")
    dy = dy.contiguous()
    _check(dy, weight, mean, invstd)
    _check(x)
    n, c = x.shape[0], x.shape[1]
    length = x.numel() // max(n * c, 1)
    dx = torch.empty_like(x) if needs[0] else None
    dw = x.new_empty(c) if needs[1] else None
    db = x.new_empty(c) if needs[2] else None
    lib.nz_bn_backward(
        _ptr(dy), _ptr(x), _ptr(weight), _ptr(mean), _ptr(invstd), _ptr(dx), _ptr(dw), _ptr(db),
        n, c, length, threads(),
    )  # fmt: skip
    return dx, dw, db
