"""Eager building blocks for the zoo's fast paths: per-row statistics and per-row affine maps
on torch's native normalization kernels, with hand-written backwards.

A norm whose statistics are per sample and channel (or group) is ``y = A x + B`` with ``A``,
``B`` small ``(N, R)`` tensors computed from those statistics. Composing :class:`RowStats`
(statistics, one pass) and :class:`RowAffine` (the map, one pass) lets autograd handle the
small tensors in between while every full-size pass runs in a native, vectorized kernel:
``torch.native_group_norm`` for the statistics, the inference kernel of batch norm on the
``(1, N R, L)`` view for ``A x + B`` (a broadcasting ``mul``/``addcmul`` measured up to 2x
slower on CPU), and its backward for ``A dy``, ``sum dy x`` and ``sum dy`` in one pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "RowAffine",
    "RowMeanSquare",
    "RowStats",
    "channels_last_format",
    "row_view",
    "scale_shift",
]

_CL_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def channels_last_format(x: Tensor) -> torch.memory_format | None:
    """``torch.channels_last`` (4-d) or ``channels_last_3d`` (5-d) where ``x`` is laid out so
    and is not also plain contiguous; else ``None``."""
    fmt = _CL_FORMATS.get(x.dim())
    if fmt is not None and not x.is_contiguous() and x.is_contiguous(memory_format=fmt):
        return fmt
    return None


def row_view(x: Tensor) -> tuple[Tensor, bool]:
    """``x`` ``(N, C, *spatial)`` as a contiguous ``(N, C, L)`` tensor, and whether ``x`` was
    channels_last (copied; the caller restores the format of the output)."""
    channels_last = (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )
    return x.contiguous().view(x.shape[0], x.shape[1], -1), channels_last


def restore_format(y: Tensor, shape: torch.Size, channels_last: bool) -> Tensor:
    """``y`` viewed as ``shape``, in channels_last again where the input was."""
    y = y.view(shape)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y


def _row_bn_args(scale: Tensor, shift: Tensor | None, n: int, r: int) -> tuple[Tensor, ...]:
    w = scale.expand(n, r, 1).reshape(-1)
    b = torch.zeros_like(w) if shift is None else shift.expand(n, r, 1).reshape(-1)
    return w, b, torch.zeros_like(w), torch.ones_like(w)


def scale_shift(x: Tensor, scale: Tensor, shift: Tensor | None = None) -> Tensor:
    """``x * scale + shift`` for a contiguous ``(N, R, L)`` ``x`` and ``(N, R, 1)`` (or
    broadcastable) ``scale``/``shift``, in one pass (no autograd)."""
    n, r, length = x.shape
    w, b, zeros, ones = _row_bn_args(scale, shift, n, r)
    y = torch.native_batch_norm(x.view(1, n * r, length), w, b, zeros, ones, False, 0.0, 0.0)
    return y[0].view(n, r, length)


#: ``RowStats``' backward folds ``dvar 2 (x - mean) / M`` into ``k1 x + k0``, which loses
#: about ``|mean| / std`` ulps; rows with a larger ratio (or no spread) subtract first.
_FOLD_MAX_RATIO = 8.0


class RowStats(torch.autograd.Function):
    """Mean and biased variance of each row of a contiguous ``(N, R, M)`` tensor: ``(N, R)``
    each. Backward: ``dx = dmean / M + dvar 2 (x - mean) / M`` in one pass (two where a row's
    mean is large against its spread, see ``_FOLD_MAX_RATIO``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        n, r, m = x.shape
        _, mean, rstd = torch.native_group_norm(x, None, None, n, r, m, r, 0.0)
        var = rstd.square().reciprocal_()  # eps 0: rstd = 1 / sqrt(var)
        ctx.save_for_backward(x, mean, rstd)
        return mean, var

    @staticmethod
    def backward(ctx: Any, dmean: Tensor, dvar: Tensor) -> Tensor:  # type: ignore[override]
        x, mean, rstd = ctx.saved_tensors
        m = x.shape[2]
        k1 = dvar * (2.0 / m)
        if bool((mean.abs() * rstd).max() <= _FOLD_MAX_RATIO):
            k0 = dmean / m - k1 * mean
            return scale_shift(x, k1.unsqueeze(2), k0.unsqueeze(2))
        centered = scale_shift(x, torch.ones_like(mean).unsqueeze(2), -mean.unsqueeze(2))
        return scale_shift(centered, k1.unsqueeze(2), (dmean / m).unsqueeze(2))


class RowMeanSquare(torch.autograd.Function):
    """Mean square of each row of a contiguous ``(N, R, M)`` tensor, ``(N, R)``, in one pass.
    Backward: ``dx = dms 2 x / M`` in one pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.linalg.vector_norm(x, dim=2).square_().div_(x.shape[2])

    @staticmethod
    def backward(ctx: Any, dms: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return scale_shift(x, (dms * (2.0 / x.shape[2])).unsqueeze(2))


class RowAffine(torch.autograd.Function):
    """``x * a + b`` for a contiguous ``(N, R, L)`` ``x`` and ``(N, R, 1)`` ``a``, ``b``.
    Backward: ``a dy``, ``sum_L dy x`` and ``sum_L dy`` in one pass; saves ``x`` and ``a``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, a)
        return scale_shift(x, a, b)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, a = ctx.saved_tensors
        n, r, length = x.shape
        w, _, zeros, ones = _row_bn_args(a, None, n, r)
        need_x, need_a, need_b = ctx.needs_input_grad
        dx, da, db = torch.ops.aten.native_batch_norm_backward(
            dy.contiguous().view(1, n * r, length),
            x.view(1, n * r, length),
            w,
            zeros,
            ones,
            zeros,  # CUDA's kernel needs saved statistics even in inference mode
            ones,
            False,
            0.0,
            [need_x, need_a, need_b],
        )
        return (
            dx.view(n, r, length) if need_x else None,
            da.view(n, r, 1) if need_a else None,
            db.view(n, r, 1) if need_b else None,
        )
