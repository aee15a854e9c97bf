"""Python entry points of the native kernels: outputs allocated with torch, pointers handed
to C.

The public functions check what the C code assumes (contiguous float32 CPU tensors) and raise
a ``ValueError`` otherwise; the norms' dispatch functions check the same before calling, so
their autograd Functions call the ``_unchecked`` variants (a call's fixed cost matters at
small sizes).
"""

from __future__ import annotations

import ctypes
import threading
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


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether any of ``tensors`` requires a gradient (then the kernels run inside an
    ``autograd.Function``; otherwise they are called directly, without its fixed cost)."""
    return any(t is not None and t.requires_grad for t in tensors)


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


# The forward kernels write mean and inverse std into one buffer (pointer offsets instead of
# separate tensors): at small sizes a call's fixed cost is mostly allocations and views.
_F32 = 4  # bytes per float32


def _grads(
    x: Tensor, c: int, needs: tuple[bool, bool, bool], out: Tensor | None = None
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Uninitialized ``dx`` (``out`` when given), ``dweight``, ``dbias`` where needed."""
    return (
        (torch.empty_like(x) if out is None else out) if needs[0] else None,
        x.new_empty(c) if needs[1] else None,
        x.new_empty(c) if needs[2] else None,
    )


# -- batch norm: statistics per channel over (N, L) -------------------------------------------
def batch_norm_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training batch norm of ``x`` ``(N, C, *)``: ``(y, mean, invstd, var)``, biased var."""
    _check(x, weight, bias)
    y, stats, var = batch_norm_forward_unchecked(x, weight, bias, eps, True)
    assert var is not None
    return y, stats[0], stats[1], var


def batch_norm_forward_unchecked(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    want_var: bool,
    out: Tensor | None = None,
    relu: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(y, stats, var)``: ``stats`` ``(2, C)`` mean and inverse std, ``var`` the biased
    variance ``(C,)`` if ``want_var``, else ``None``; ``y`` is written into ``out`` (laid out
    as ``x``) when given."""
    n, c, length = _sizes(x)
    y = torch.empty_like(x) if out is None else out
    stats = x.new_empty(2, c)
    var = x.new_empty(c) if want_var else None
    p = stats.data_ptr()
    _fn("batch_norm", "nz_bn_relu_forward" if relu else "nz_bn_forward")(
        x.data_ptr(), _ptr(weight), _ptr(bias), y.data_ptr(), p, p + c * _F32, _ptr(var),
        n, c, length, eps, threads(),
    )  # fmt: skip
    return y, stats, var


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
    return batch_norm_backward_unchecked(dy, x, weight, torch.stack([mean, invstd]), needs)


def batch_norm_backward_unchecked(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    stats: Tensor,
    needs: tuple[bool, bool, bool],
    out: Tensor | None = None,
    relu: bool = False,
    bias: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``stats``: the forward's, mean and inverse std in its first two rows; ``dx`` is written
    into ``out`` (laid out as ``x``) when given. ``relu``: the backward of the forward with
    ``relu`` (``bias``: that forward's)."""
    n, c, length = _sizes(x)
    dx, dw, db = _grads(x, c, needs, out)
    p = stats.data_ptr()
    # the fused ReLU's backward takes the forward's bias after the weight (its mask)
    name, fused = ("nz_bn_relu_backward", (_ptr(bias),)) if relu else ("nz_bn_backward", ())
    _fn("batch_norm", name)(
        dy.data_ptr(), x.data_ptr(), _ptr(weight), *fused, p, p + c * _F32, _ptr(dx), _ptr(dw),
        _ptr(db), n, c, length, threads(),
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
    y, stats, var = row_norm_forward_unchecked(x, groups, weight, bias, eps, True)
    assert var is not None
    return y, stats[0], stats[1], var


def row_norm_forward_unchecked(
    x: Tensor,
    groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    want_var: bool,
    relu: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(y, stats, var)``: ``stats`` ``(2, N, groups)`` mean and rstd, ``var`` the biased
    variance ``(N, groups)`` if ``want_var``, else ``None``; ``relu``: ``y`` is the norm's
    output after a ReLU, applied by the kernel's map."""
    n, c, length = _sizes(x)
    y = torch.empty_like(x)
    stats = x.new_empty(2, n, groups)
    var = x.new_empty(n, groups) if want_var else None
    p = stats.data_ptr()
    _fn("row_norm", "nz_row_relu_forward" if relu else "nz_row_forward")(
        x.data_ptr(), _ptr(weight), _ptr(bias), y.data_ptr(), p, p + n * groups * _F32,
        _ptr(var), n, groups, c // groups, length, eps, threads(),
    )  # fmt: skip
    return y, stats, var


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
    return row_norm_backward_unchecked(dy, x, groups, weight, torch.stack([mean, rstd]), needs)


def row_norm_backward_unchecked(
    dy: Tensor,
    x: Tensor,
    groups: int,
    weight: Tensor | None,
    stats: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``stats``: the forward's, mean and rstd in its first two rows."""
    n, c, length = _sizes(x)
    dx, dw, db = _grads(x, c, needs)
    partial = x.new_empty(2, n, c)
    p = stats.data_ptr()
    _fn("row_norm", "nz_row_backward")(
        dy.data_ptr(), x.data_ptr(), _ptr(weight), p, p + n * groups * _F32, _ptr(dx),
        _ptr(dw), _ptr(db), partial.data_ptr(), n, groups, c // groups, length, threads(),
    )  # fmt: skip
    return dx, dw, db


# -- batch norm on channels_last: N * spatial rows of C channels -----------------------------
#: Most row blocks of the channels_last kernels: their partial sums fill a float64 workspace of
#: ``2 * CL_MAX_BLOCKS * C``. The partition depends on the shape and this number only, never on
#: the thread count, so the results are the same for any thread count.
CL_MAX_BLOCKS = 64


def channels_last_format(x: Tensor) -> torch.memory_format | None:
    """``torch.channels_last`` (4-d) or ``torch.channels_last_3d`` (5-d) where ``x`` is stored
    so and not also contiguous (size-1 dims can make it both), else ``None``."""
    if x.dim() == 4:
        fmt = torch.channels_last
    elif x.dim() == 5:
        fmt = torch.channels_last_3d
    else:
        return None
    return fmt if x.is_contiguous(memory_format=fmt) and not x.is_contiguous() else None


def _check_cl(x: Tensor, *small: Tensor | None) -> None:
    """``x`` a channels_last float32 CPU tensor, ``small`` contiguous float32 CPU tensors."""
    _check(*small)
    if x.device.type != "cpu" or x.dtype != torch.float32 or channels_last_format(x) is None:
        raise ValueError(
            f"native channels_last kernels take float32 CPU tensors in channels_last (4-d) or "
            f"channels_last_3d (5-d) memory, got a {x.dim()}-d {x.dtype} tensor on {x.device} "
            f"with strides {x.stride()}"
        )


_cl_local = threading.local()


def _cl_work(c: int) -> Tensor:
    """The kernels' float64 workspace for ``c`` channels: one per thread (the kernels release
    the GIL), kept and grown to the largest ``c`` seen. A fresh one per call cost page faults
    (glibc returns freed memory to the system) that doubled small calls' time in a training
    loop. The kernels write every value they read: no initialization."""
    need = 2 * CL_MAX_BLOCKS * c
    work = getattr(_cl_local, "work", None)
    if work is None or work.numel() < need:
        work = _cl_local.work = torch.empty(need, dtype=torch.float64)
    return work


def batch_norm_forward_cl(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training batch norm of a channels_last ``x`` ``(N, C, *)``: ``(y, mean, invstd, var)``,
    ``y`` channels_last, ``var`` biased."""
    _check_cl(x, weight, bias)
    y, stats, var = batch_norm_forward_cl_unchecked(x, weight, bias, eps, True)
    assert var is not None
    return y, stats[0], stats[1], var


def batch_norm_forward_cl_unchecked(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    want_var: bool,
    out: Tensor | None = None,
    relu: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(y, stats, var)`` as :func:`batch_norm_forward_unchecked`; ``y`` is written into
    ``out`` (laid out as ``x``) when given."""
    c = x.shape[1]
    y = torch.empty_like(x) if out is None else out
    stats = x.new_empty(2, c)
    var = x.new_empty(c) if want_var else None
    work = _cl_work(c)
    p = stats.data_ptr()
    _fn("batch_norm", "nz_bn_relu_forward_cl" if relu else "nz_bn_forward_cl")(
        x.data_ptr(), _ptr(weight), _ptr(bias), y.data_ptr(), p, p + c * _F32, _ptr(var),
        work.data_ptr(), CL_MAX_BLOCKS, x.numel() // max(c, 1), c, eps, threads(),
    )  # fmt: skip
    return y, stats, var


def renorm_forward_unchecked(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    r_max: float,
    d_max: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode Batch Renorm of a contiguous or channels_last float32 or bfloat16 ``x``
    in BatchNorm's forward passes: ``(y, stats, out)``, ``stats`` ``(2, C)`` the batch mean
    and inverse std, ``out`` ``(5, C)``: ``r``, ``d``, the map's weight ``w r`` and bias
    ``w d + b``, the unbiased batch variance (``batch_norm.c``; float32); the running
    statistics (float32, contiguous) are read, not updated. bfloat16: the kernels' bfloat16
    builds (``y`` bfloat16, each value rounded once)."""
    c = x.shape[1]
    suffix = "_bf16" if x.dtype == torch.bfloat16 else ""
    y = torch.empty_like(x)
    stats, out = torch.empty(2, c), torch.empty(5, c)
    p = stats.data_ptr()
    args = (x.data_ptr(), _ptr(weight), _ptr(bias), running_mean.data_ptr(),
            running_var.data_ptr(), float(r_max), float(d_max), y.data_ptr(), p, p + c * _F32,
            out.data_ptr())  # fmt: skip
    if x.is_contiguous():
        n, _, length = _sizes(x)
        _fn("batch_norm", "nz_renorm_forward" + suffix)(*args, n, c, length, eps, threads())
    else:
        work = _cl_work(c)
        _fn("batch_norm", "nz_renorm_forward_cl" + suffix)(
            *args, work.data_ptr(), CL_MAX_BLOCKS, x.numel() // max(c, 1), c, eps, threads()
        )
    return y, stats, out


def batch_norm_backward_cl(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`batch_norm_forward_cl` (``None`` where not
    needed); ``dx`` channels_last."""
    fmt = channels_last_format(x)
    dy = dy.contiguous(memory_format=fmt) if fmt is not None else dy
    _check_cl(x, weight, mean, invstd)
    _check_cl(dy)
    return batch_norm_backward_cl_unchecked(dy, x, weight, torch.stack([mean, invstd]), needs)


def batch_norm_backward_cl_unchecked(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    stats: Tensor,
    needs: tuple[bool, bool, bool],
    out: Tensor | None = None,
    relu: bool = False,
    bias: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``dy`` laid out as ``x``; ``stats``: the forward's. ``dx`` is written into ``out`` (laid
    out as ``x``) when given. ``relu``: the backward of the forward with ``relu`` (``bias``:
    that forward's)."""
    c = x.shape[1]
    dx, dw, db = _grads(x, c, needs, out)
    work = _cl_work(c)
    p = stats.data_ptr()
    name, fused = ("nz_bn_relu_backward_cl", (_ptr(bias),)) if relu else ("nz_bn_backward_cl", ())
    _fn("batch_norm", name)(
        dy.data_ptr(), x.data_ptr(), _ptr(weight), *fused, p, p + c * _F32, _ptr(dx), _ptr(dw),
        _ptr(db), work.data_ptr(), CL_MAX_BLOCKS, x.numel() // max(c, 1), c, threads(),
    )  # fmt: skip
    return dx, dw, db


# -- batch norm of a bfloat16 tensor -------------------------------------------------------------
def batch_norm_forward_bf16(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    want_var: bool,
    relu: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Training batch norm of a bfloat16 ``x`` ``(N, C, *)``, contiguous or channels_last (as
    :func:`channels_last_format`), on the kernels' bfloat16 builds (``bn_block.h``,
    ``bn_cl.h``): ``x`` read and ``y`` written as bfloat16, the float32 kernels' math on the
    widened values, each output rounded once. ``(y, stats, var)`` as
    :func:`batch_norm_forward_unchecked`, ``stats`` and ``var`` float32; ``weight`` and
    ``bias`` float32; ``relu``: ``y`` after a ReLU, in the kernel's map."""
    _check_bf16(x, weight, bias)
    c = x.shape[1]
    y = torch.empty_like(x)
    stats = torch.empty(2, c)
    var = torch.empty(c) if want_var else None
    p = stats.data_ptr()
    args = (x.data_ptr(), _ptr(weight), _ptr(bias), y.data_ptr(), p, p + c * _F32, _ptr(var))
    name = "nz_bn_relu_forward" if relu else "nz_bn_forward"
    if x.is_contiguous() and x.dim() > 2:  # else rows: channels_last, or (N, C) tokens
        n, _, length = _sizes(x)
        _fn("batch_norm", f"{name}_bf16")(*args, n, c, length, eps, threads())
    else:
        _fn("batch_norm", f"{name}_cl_bf16")(
            *args, _cl_work(c).data_ptr(), CL_MAX_BLOCKS, x.numel() // max(c, 1), c, eps,
            threads(),
        )  # fmt: skip
    return y, stats, var


def batch_norm_backward_bf16(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    stats: Tensor,
    needs: tuple[bool, bool, bool],
    relu: bool = False,
    bias: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`batch_norm_forward_bf16` (``None`` where not
    needed): ``dx`` bfloat16 laid out as ``x`` (``dy`` made so: a copy only where it is not),
    the parameters' float32. ``relu``: of the forward with ``relu`` and ``bias``."""
    fmt = channels_last_format(x)
    dy = dy.contiguous(memory_format=fmt) if fmt is not None else dy.contiguous()
    _check_bf16(x, weight, stats, bias)
    _check_bf16(dy)
    c = x.shape[1]
    dx = torch.empty_like(x) if needs[0] else None
    dw, db = (torch.empty(c) if need else None for need in needs[1:])
    p = stats.data_ptr()
    # the fused ReLU's backward takes the forward's bias after the weight (its mask)
    name, fused = ("nz_bn_relu_backward", (_ptr(bias),)) if relu else ("nz_bn_backward", ())
    args = (dy.data_ptr(), x.data_ptr(), _ptr(weight), *fused, p, p + c * _F32, _ptr(dx),
            _ptr(dw), _ptr(db))  # fmt: skip
    if x.is_contiguous() and x.dim() > 2:  # else rows: channels_last, or (N, C) tokens
        n, _, length = _sizes(x)
        _fn("batch_norm", f"{name}_bf16")(*args, n, c, length, threads())
    else:
        _fn("batch_norm", f"{name}_cl_bf16")(
            *args, _cl_work(c).data_ptr(), CL_MAX_BLOCKS, x.numel() // max(c, 1), c, threads()
        )
    return dx, dw, db


def _check_bf16(x: Tensor, *small: Tensor | None) -> None:
    """``x`` a bfloat16 CPU tensor, contiguous or channels_last; ``small`` contiguous float32
    CPU tensors."""
    _check(*small)
    if (
        x.device.type != "cpu"
        or x.dtype != torch.bfloat16
        or not (x.is_contiguous() or channels_last_format(x) is not None)
    ):
        raise ValueError(
            f"native bfloat16 kernels take bfloat16 CPU tensors, contiguous or in channels_last "
            f"(4-d) or channels_last_3d (5-d) memory, got a {x.dim()}-d {x.dtype} tensor on "
            f"{x.device} with strides {x.stride()}"
        )


# -- ghost batch norm of a contiguous (N, C, *) tensor: every virtual batch in one call --------
#: Element types of Ghost BN's x, y, dy and dx (float32; bfloat16 on the ``_bf16`` builds), on
#: the contiguous kernels and the rows (``ghost_rows.h``); every other tensor is float32.
GHOST_ROW_DTYPES = (torch.float32, torch.bfloat16)


def _check_ghost(
    x: Tensor, *small: Tensor | None, like: Tensor | None = None, rows: bool = False
) -> str:
    """Check Ghost BN's contiguous ``x`` (token rows ``(N, C)`` where ``rows``, else
    ``(N, C, *)``) and ``like`` (of ``x``'s dtype and shape: the output gradient), and the
    float32 ``small`` tensors; the kernels' name suffix for ``x``'s dtype."""
    _check(*small)
    for t in (x, like):
        if t is None:
            continue
        if t.device.type != "cpu" or t.dtype not in GHOST_ROW_DTYPES or not t.is_contiguous():
            raise ValueError(
                f"native ghost batch norm takes contiguous float32 or bfloat16 CPU tensors, got "
                f"{t.dtype} on {t.device}{'' if t.is_contiguous() else ' (not contiguous)'}"
            )
        if t.dtype != x.dtype or t.shape != x.shape:
            raise ValueError(
                f"native ghost batch norm: the output gradient must match x ({x.dtype}, "
                f"{tuple(x.shape)}), got {t.dtype}, {tuple(t.shape)}"
            )
    if rows and x.dim() != 2:
        raise ValueError(f"native ghost batch norm takes (N, C) tokens, got shape {tuple(x.shape)}")
    if x.dim() < 2:
        raise ValueError(f"native ghost batch norm takes (N, C, *) input, got {tuple(x.shape)}")
    return "" if x.dtype == torch.float32 else "_bf16"


def ghost_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    virtual_batch_size: int,
    want_var: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Ghost batch norm of contiguous float32 or bfloat16 ``x`` ``(N, C, *)`` in virtual
    batches of ``virtual_batch_size`` samples (the last one smaller where ``N`` is not a
    multiple): ``(y, stats, var)``, ``stats`` ``(V, 2, C)`` each virtual batch's mean and
    invstd, ``var`` ``(V, C)`` their biased variances (``None`` unless ``want_var``), float32.
    In float32 each virtual batch is normalized as :func:`batch_norm_forward` normalizes it,
    to the bit; bfloat16 ``x`` is read and ``y`` written as bfloat16, the math in float32."""
    suffix = _check_ghost(x, weight, bias)
    n, c, length = _sizes(x)
    batches = -(-n // virtual_batch_size)
    y = torch.empty_like(x)
    stats = torch.empty(batches, 2, c)
    var = torch.empty(batches, c) if want_var else None
    _fn("batch_norm", "nz_ghost_forward" + suffix)(
        x.data_ptr(), _ptr(weight), _ptr(bias), y.data_ptr(), stats.data_ptr(), _ptr(var), n, c,
        length, virtual_batch_size, eps, threads(),
    )  # fmt: skip
    return y, stats, var


def ghost_backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    stats: Tensor,
    virtual_batch_size: int,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`ghost_forward` (``None`` where not
    needed): each virtual batch's as :func:`batch_norm_backward`'s, the parameters' summed
    over the virtual batches in order."""
    dy = dy.contiguous()
    suffix = _check_ghost(x, weight, stats, like=dy)
    n, c, length = _sizes(x)
    dx = torch.empty_like(x) if needs[0] else None
    dw, db = (torch.empty(c) if need else None for need in needs[1:])  # float32, as weight
    part = torch.empty(stats.shape[0], 2, c)
    _fn("batch_norm", "nz_ghost_backward" + suffix)(
        dy.data_ptr(), x.data_ptr(), _ptr(weight), stats.data_ptr(), _ptr(dx), _ptr(dw),
        _ptr(db), part.data_ptr(), n, c, length, virtual_batch_size, threads(),
    )  # fmt: skip
    return dx, dw, db


# -- ghost batch norm on tokens: (N, C), N rows of C channels -----------------------------------
def ghost_rows_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    virtual_batch_size: int,
    want_var: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Ghost batch norm of contiguous float32 or bfloat16 ``x`` ``(N, C)`` in virtual batches of
    ``virtual_batch_size`` rows (the last one smaller where ``N`` is not a multiple):
    ``(y, stats, var)``, ``stats`` ``(V, 2, C)`` each virtual batch's
    mean and invstd, ``var`` ``(V, C)`` their biased variances (``None`` unless ``want_var``)."""
    suffix = _check_ghost(x, weight, bias, rows=True)
    n, c = x.shape
    batches = -(-n // virtual_batch_size)
    y = torch.empty_like(x)
    stats = torch.empty(batches, 2, c)
    var = torch.empty(batches, c) if want_var else None
    _fn("batch_norm", "nz_ghost_forward_rows" + suffix)(
        x.data_ptr(), _ptr(weight), _ptr(bias), y.data_ptr(), stats.data_ptr(), _ptr(var), n, c,
        virtual_batch_size, eps, threads(),
    )  # fmt: skip
    return y, stats, var


def ghost_rows_backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    stats: Tensor,
    virtual_batch_size: int,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`ghost_rows_forward` (``None`` where not
    needed), the parameters' sums added over the virtual batches in order."""
    dy = dy.contiguous()
    suffix = _check_ghost(x, weight, stats, like=dy, rows=True)
    n, c = x.shape
    dx = torch.empty_like(x) if needs[0] else None
    dw, db = (torch.empty(c) if need else None for need in needs[1:])  # float32, as weight
    part = torch.empty(stats.shape[0], 2, c)
    _fn("batch_norm", "nz_ghost_backward_rows" + suffix)(
        dy.data_ptr(), x.data_ptr(), _ptr(weight), stats.data_ptr(), _ptr(dx), _ptr(dw),
        _ptr(db), part.data_ptr(), n, c, virtual_batch_size, threads(),
    )  # fmt: skip
    return dx, dw, db
