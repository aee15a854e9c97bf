"""Python entry points of the zoo's native per-row kernels (``zoo.c``): layout checks, outputs
allocated with torch, pointers handed to C.

Every per-row function takes an ``(N, C, L)`` float32 or bfloat16 CPU tensor in one of two
layouts: contiguous (rows of ``L``), or channels_last, strides ``(L C, 1, C)`` (the
``(N, C, L)`` view of a channels_last ``(N, C, H, W)`` or channels_last_3d tensor). Per-row
tensors (statistics, parameters) are contiguous float32 ``(N, C)`` or ``(N, C, P)`` whatever
the input's dtype. Outputs take the input's layout and dtype; bfloat16 values are computed in
float32 and rounded once (the same bits as the float32 kernels followed by ``.to(bfloat16)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo._native import load, threads

__all__ = [
    "AFFINE",
    "B0",
    "NPARAMS",
    "S0",
    "TLU",
    "frozen_backward",
    "frozen_forward",
    "fused_width",
    "layout",
    "map_dx",
    "map_forward",
    "map_sums",
    "relayout",
]

#: The elementwise maps of ``zoo.c`` (``op``) and their parameter counts per row.
AFFINE, B0, S0, TLU = 0, 1, 2, 3
NPARAMS = {AFFINE: 2, B0: 5, S0: 3, TLU: 3}


def layout(x: Tensor) -> int | None:
    """0 for a contiguous ``(N, C, L)`` tensor, 1 for a channels_last one (strides
    ``(L C, 1, C)``), ``None`` for anything else (the kernels do not take it)."""
    if x.dim() != 3:
        return None
    if x.is_contiguous():
        return 0
    _, c, length = x.shape
    return 1 if x.stride() == (length * c, 1, c) else None


def _lib():
    lib = load("zoo")
    if lib is None:
        raise RuntimeError("the native zoo kernels are unavailable")
    return lib


#: dtypes of the full-size tensors that the per-row kernels take.
ROW_DTYPES = (torch.float32, torch.bfloat16)


def _check(x: Tensor, *small: Tensor | None, dtypes: tuple[torch.dtype, ...] = ROW_DTYPES) -> int:
    if x.device.type != "cpu" or x.dtype not in dtypes or layout(x) is None:
        names = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(
            f"native zoo kernels take {names} CPU (N, C, L) tensors, contiguous or "
            f"channels_last, got {x.dtype} on {x.device} with shape {tuple(x.shape)} and "
            f"strides {x.stride()}"
        )
    for t in small:
        if t is not None and (t.dtype != torch.float32 or not t.is_contiguous()):
            raise ValueError(f"native zoo kernels take contiguous float32 rows, got {t.dtype}")
    return int(layout(x))  # type: ignore[arg-type]


def _like(x: Tensor, t: Tensor) -> Tensor:
    """``t`` with ``x``'s strides and dtype (a copy only where they differ; between the
    contiguous and channels_last layouts of the same dtype, :func:`relayout`)."""
    if t.stride() == x.stride() and t.dtype == x.dtype:
        return t
    if t.dtype == x.dtype and t.shape == x.shape and layout(t) is not None:
        return relayout(t)
    return torch.empty_like(x).copy_(t)


def relayout(t: Tensor) -> Tensor:
    """A contiguous ``(N, C, L)`` float32 or bfloat16 tensor copied to channels_last (strides
    ``(L C, 1, C)``), or a channels_last one to contiguous: one native pass by tiles (torch's
    ``copy_`` between these layouts moved 7.6 GB/s on a 2-core EPYC)."""
    cl = layout(t)
    if cl is None or t.dtype not in ROW_DTYPES or t.device.type != "cpu":
        raise ValueError(
            f"relayout takes a contiguous or channels_last float32 or bfloat16 CPU (N, C, L) "
            f"tensor, got {t.dtype} on {t.device} with strides {t.stride()}"
        )
    n, c, length = t.shape
    if cl:
        out = torch.empty((n, c, length), dtype=t.dtype)
    else:
        out = torch.empty((n, length, c), dtype=t.dtype).transpose(1, 2)
    if t.numel():
        _fn(t, "nz_transpose_layout")(t.data_ptr(), out.data_ptr(), n, c, length, 1 - cl,
                                      threads())  # fmt: skip
    return out


def _fn(x: Tensor, name: str):
    """Kernel ``name`` of the zoo library for ``x``'s dtype (``name_bf16`` for bfloat16)."""
    return getattr(_lib(), name if x.dtype == torch.float32 else f"{name}_bf16")


def _f32(*size: int) -> Tensor:
    """A float32 CPU tensor for per-row values (statistics, parameters, their gradients)."""
    return torch.empty(size, dtype=torch.float32)


def row_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of every ``(n, c)`` row: two ``(N, C)`` tensors."""
    cl = _check(x)
    n, c, length = x.shape
    stats = _f32(2, n, c)
    _fn(x, "nz_row_stats")(x.data_ptr(), stats[0].data_ptr(), stats[1].data_ptr(), n, c,
                           length, cl, threads())  # fmt: skip
    return stats[0], stats[1]


def map_forward(op: int, x: Tensor, params: Tensor) -> Tensor:
    """``y = f_op(x; params[n, c])`` (see ``zoo.c``), in ``x``'s layout."""
    cl = _check(x, params)
    n, c, length = x.shape
    y = torch.empty_like(x)
    _fn(x, "nz_map_forward")(op, x.data_ptr(), params.data_ptr(), y.data_ptr(), n, c,
                             length, cl, threads())  # fmt: skip
    return y


def map_sums(op: int, dy: Tensor, x: Tensor, params: Tensor) -> Tensor:
    """``dL/dparams`` ``(N, C, P)``: the per-row sums of ``dy df_op/dp``."""
    cl = _check(x, params)
    dy = _like(x, dy)
    n, c, length = x.shape
    grads = _f32(n, c, NPARAMS[op])
    _fn(x, "nz_map_sums")(op, dy.data_ptr(), x.data_ptr(), params.data_ptr(),
                          grads.data_ptr(), n, c, length, cl, threads())  # fmt: skip
    return grads


def map_dx(
    op: int,
    dy: Tensor,
    x: Tensor,
    params: Tensor,
    mean: Tensor | None = None,
    k1: Tensor | None = None,
    k0: Tensor | None = None,
) -> Tensor:
    """``dx = dy df_op/dx + k1 (x - mean) + k0`` (per-row ``k1``, ``k0``, ``mean``; the last
    two terms are left out where ``k1`` is ``None``), in ``x``'s layout."""
    cl = _check(x, params, mean, k1, k0)
    if k1 is not None and (mean is None or k0 is None):
        raise ValueError("map_dx needs mean, k1 and k0 together")
    dy = _like(x, dy)
    n, c, length = x.shape
    dx = torch.empty_like(x)
    ptr = [None if t is None else t.data_ptr() for t in (mean, k1, k0)]
    _fn(x, "nz_map_dx")(op, dy.data_ptr(), x.data_ptr(), params.data_ptr(), *ptr,
                        dx.data_ptr(), n, c, length, cl, threads())  # fmt: skip
    return dx


def _frozen_status(status: int) -> None:
    """The frozen kernels return -1, having written nothing, without memory for their C
    coefficients."""
    if status:
        raise MemoryError("normzoo: no memory for FrozenBatchNorm's coefficients")


def frozen_forward(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    relu: bool = False,
) -> Tensor:
    """FrozenBatchNorm, ``y = a_c x + b_c`` with ``a = weight / sqrt(var + eps)`` and
    ``b = bias - mean a`` (``relu``: ``max(a_c x + b_c, 0)``, NaN kept), in ``x``'s layout."""
    cl = _check(x, mean, var, weight, bias, dtypes=(torch.float32,))
    n, c, length = x.shape
    y = torch.empty_like(x)
    _frozen_status(_lib().nz_frozen_forward(*_args(x, mean, var, weight, bias), eps,
                                            y.data_ptr(), n, c, length, cl, int(relu),
                                            threads()))  # fmt: skip
    return y


def frozen_backward(
    dy: Tensor, y: Tensor, var: Tensor, weight: Tensor | None, eps: float, relu: bool = False
) -> Tensor:
    """``dx = a_c dy`` for :func:`frozen_forward`'s output ``y``; ``relu``: 0 where
    ``y <= 0`` (the ReLU's mask from its output, as torch's relu backward takes it)."""
    cl = _check(y, var, weight, dtypes=(torch.float32,))
    dy = _like(y, dy)
    n, c, length = y.shape
    dx = torch.empty_like(y)
    _frozen_status(_lib().nz_frozen_backward(*_args(dy, y, var, weight), eps, dx.data_ptr(), n,
                                             c, length, cl, int(relu), threads()))  # fmt: skip
    return dx


# -- the norms: one native call per forward and per backward ---------------------------------
def _args(*args: object) -> list[object]:
    return [a.data_ptr() if isinstance(a, Tensor) else a for a in args]


def _small(*ts: Tensor | None) -> list[Tensor | None]:
    """Per-channel inputs as contiguous float32: as they are when they already are (only
    their memory is read), else converted copies."""
    return [
        t
        if t is None or (t.dtype == torch.float32 and t.is_contiguous())
        else t.detach().to(torch.float32).contiguous()
        for t in ts
    ]


def _grads(x: Tensor, needs: tuple[bool, ...], *sizes: int) -> list[Tensor | None]:
    """``dx`` (like ``x``) and the small gradients, each ``None`` where not needed."""
    out: list[Tensor | None] = [torch.empty_like(x) if needs[0] else None]
    for need, size in zip(needs[1:], sizes, strict=True):
        out.append(_f32(size) if need else None)
    return out


def b0_forward(
    x: Tensor,
    v: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_var: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """EvoNorm-B0: ``(y, stats, var_b, params)``; ``stats`` ``(3, N, C)`` the rows' mean,
    variance and the mean's rounding remainder (for the backward), ``var_b`` the batch
    variance (unset where ``running_var`` is given)."""
    cl = _check(x)
    n, c, length = x.shape
    v, weight, bias, running_var = _small(v, weight, bias, running_var)
    y = torch.empty_like(x)
    stats, var_b, params = _f32(3, n, c), _f32(c), _f32(n, c, 5)
    _fn(x, "nz_b0_forward")(*_args(x, v, weight, bias, running_var, float(eps), y,
                                  *stats, var_b, params, n, c, length, cl, threads()))  # fmt: skip
    return y, stats, var_b, params


def b0_backward(
    dy: Tensor, x: Tensor, params: Tensor, stats: Tensor, batch: bool, needs: tuple[bool, ...]
) -> list[Tensor | None]:
    """``[dx, dv, dweight, dbias]`` of EvoNorm-B0 (``None`` where ``needs`` is false);
    ``stats`` the forward's."""
    cl = _check(x, params, stats)
    dy = _like(x, dy)
    n, c, length = x.shape
    out = _grads(x, needs, c, c, c)
    sums, k = _f32(n, c, 5), _f32(2, n, c)
    _fn(x, "nz_b0_backward")(*_args(dy, x, params, stats[0], stats[2], int(batch), sums,
                                   k, *out, n, c, length, cl, threads()))  # fmt: skip
    return out


def fused_width(x: Tensor, groups: int) -> int:
    """Which path EvoNorm-S0, FRN (``groups = C``) and RMSNorm (``groups = 1``) take on
    ``x`` with this process's thread count: 0 for two passes over memory, otherwise the
    fused path's task width (channels_last: the channels of a task; contiguous: 1)."""
    cl = _check(x)
    n, c, length = x.shape
    return int(_fn(x, "nz_fused_width")(cl, n * groups, c // groups, c, length, threads()))


def s0_forward(
    x: Tensor, v: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EvoNorm-S0: ``(y, stats, params)``; ``stats`` ``(3, N, C)`` the rows' mean, variance
    and the mean's rounding remainder (for the backward)."""
    cl = _check(x)
    n, c, length = x.shape
    v, weight, bias = _small(v, weight, bias)
    y = torch.empty_like(x)
    stats, params = _f32(3, n, c), _f32(n, c, 3)
    _fn(x, "nz_s0_forward")(*_args(x, v, weight, bias, groups, float(eps), y, *stats,
                                  params, n, c, length, cl, threads()))  # fmt: skip
    return y, stats, params


def s0_backward(
    dy: Tensor,
    x: Tensor,
    params: Tensor,
    stats: Tensor,
    weight: Tensor | None,
    groups: int,
    eps: float,
    needs: tuple[bool, ...],
) -> list[Tensor | None]:
    """``[dx, dv, dweight, dbias]`` of EvoNorm-S0 (``None`` where ``needs`` is false);
    ``stats`` the forward's."""
    cl = _check(x, params, stats)
    dy = _like(x, dy)
    n, c, length = x.shape
    (weight,) = _small(weight)
    out = _grads(x, needs, c, c, c)
    sums, k = _f32(n, c, 3), _f32(2, n, c)
    _fn(x, "nz_s0_backward")(*_args(dy, x, params, *stats, weight, groups, float(eps),
                                   sums, k, *out, n, c, length, cl, threads()))  # fmt: skip
    return out


def switchable_forward(
    x: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """SwitchableNorm: ``(y, mean, var, stats_bn, params)``; ``stats_bn`` ``(2, C)`` BN's batch
    mean and biased variance (unset where running statistics are given)."""
    cl = _check(x)
    n, c, length = x.shape
    small = _small(mean_weight, var_weight, weight, bias, running_mean, running_var)
    y = torch.empty_like(x)
    stats, stats_bn, params = _f32(2, n, c), _f32(2, c), _f32(n, c, 2)
    scratch = torch.empty(2 * (n + c), dtype=torch.float64)
    _fn(x, "nz_switchable_forward")(*_args(x, *small, float(eps), y, stats[0], stats[1],
                                          stats_bn, params, scratch, n, c, length, cl,
                                          threads()))  # fmt: skip
    return y, stats[0], stats[1], stats_bn, params


def switchable_backward(
    dy: Tensor,
    x: Tensor,
    params: Tensor,
    mean: Tensor,
    var: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    weight: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    eps: float,
    needs: tuple[bool, ...],
) -> list[Tensor | None]:
    """``[dx, dmean_weight, dvar_weight, dweight, dbias]`` of SwitchableNorm (``None`` where
    ``needs`` is false)."""
    cl = _check(x, params, mean, var)
    dy = _like(x, dy)
    n, c, length = x.shape
    small = _small(mean_weight, var_weight, weight, running_mean, running_var)
    out = _grads(x, needs, 3, 3, c, c)
    sums, k = _f32(n, c, 2), _f32(2, n, c)
    scratch = torch.empty(4 * n + 5 * c + 2 * n * c, dtype=torch.float64)
    _fn(x, "nz_switchable_backward")(*_args(dy, x, params, mean, var, *small,
                                           float(eps), sums, k, scratch, *out, n, c,
                                           length, cl, threads()))  # fmt: skip
    return out


def frn_forward(
    x: Tensor, weight: Tensor, bias: Tensor, tau: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """FRN + TLU: ``(y, mean, var, params)``."""
    cl = _check(x)
    n, c, length = x.shape
    weight, bias, tau = _small(weight, bias, tau)
    y = torch.empty_like(x)
    stats, params = _f32(2, n, c), _f32(n, c, 3)
    _fn(x, "nz_frn_forward")(*_args(x, weight, bias, tau, float(eps), y, stats[0],
                                   stats[1], params, n, c, length, cl, threads()))  # fmt: skip
    return y, stats[0], stats[1], params


def frn_backward(
    dy: Tensor,
    x: Tensor,
    params: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor,
    eps: float,
    needs: tuple[bool, ...],
) -> list[Tensor | None]:
    """``[dx, dweight, dbias, dtau]`` of FRN + TLU (``None`` where ``needs`` is false)."""
    cl = _check(x, params, mean, var)
    dy = _like(x, dy)
    n, c, length = x.shape
    (weight,) = _small(weight)
    out = _grads(x, needs, c, c, c)
    sums, k = _f32(n, c, 3), _f32(2, n, c)
    _fn(x, "nz_frn_backward")(*_args(dy, x, params, mean, var, weight, float(eps), sums,
                                    k, *out, n, c, length, cl, threads()))  # fmt: skip
    return out


def rms_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RMSNorm over each sample's channels and positions: ``(y, mean, var, params)``."""
    cl = _check(x)
    n, c, length = x.shape
    weight, bias = _small(weight, bias)
    y = torch.empty_like(x)
    stats, params = _f32(2, n, c), _f32(n, c, 2)
    _fn(x, "nz_rms_forward")(*_args(x, weight, bias, float(eps), y, stats[0], stats[1],
                                   params, n, c, length, cl, threads()))  # fmt: skip
    return y, stats[0], stats[1], params


def rms_backward(
    dy: Tensor,
    x: Tensor,
    params: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    eps: float,
    needs: tuple[bool, ...],
) -> list[Tensor | None]:
    """``[dx, dweight, dbias]`` of RMSNorm (``None`` where ``needs`` is false)."""
    cl = _check(x, params, mean, var)
    dy = _like(x, dy)
    n, c, length = x.shape
    (weight,) = _small(weight)
    out = _grads(x, needs, c, c)
    sums, k = _f32(n, c, 2), _f32(2, n, c)
    _fn(x, "nz_rms_backward")(*_args(dy, x, params, mean, var, weight, float(eps), sums,
                                    k, *out, n, c, length, cl, threads()))  # fmt: skip
    return out


def gn_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """GroupNorm of ``x`` ``(N, C, L)`` over ``groups`` groups of channels:
    ``(y, mean, var, gstats, params)``, ``gstats`` ``(2, N, G)`` each group's mean and
    ``1 / sqrt(var_g + eps)``."""
    cl = _check(x)
    n, c, length = x.shape
    weight, bias = _small(weight, bias)
    y = torch.empty_like(x)
    stats, gstats, params = _f32(2, n, c), _f32(2, n, groups), _f32(n, c, 2)
    _fn(x, "nz_gn_forward")(*_args(x, weight, bias, groups, float(eps), y, stats[0], stats[1],
                                   gstats, params, n, c, length, cl, threads()))  # fmt: skip
    return y, stats[0], stats[1], gstats, params


def gn_backward(
    dy: Tensor,
    x: Tensor,
    params: Tensor,
    mean: Tensor,
    gstats: Tensor,
    weight: Tensor | None,
    needs: tuple[bool, ...],
) -> list[Tensor | None]:
    """``[dx, dweight, dbias]`` of :func:`gn_forward` (``None`` where ``needs`` is false)."""
    cl = _check(x, params, mean, gstats)
    dy = _like(x, dy)
    n, c, length = x.shape
    (weight,) = _small(weight)
    out = _grads(x, needs, c, c)
    sums, k = _f32(n, c, 2), _f32(2, n, c)
    _fn(x, "nz_gn_backward")(*_args(dy, x, params, mean, gstats, weight, gstats.shape[2], sums,
                                    k, *out, n, c, length, cl, threads()))  # fmt: skip
    return out


# -- tokens: R rows of C channels, no spatial positions ---------------------------------------
#: The grouped-token maps of ``zoo.c`` (``op`` of ``group_tokens_*``).
TOKENS_GN, TOKENS_S0 = 0, 1
#: Rows per block of the token kernels' column sums (``NZ_TOK_ROWS``).
TOKEN_ROWS = 64


def _check_tokens(x: Tensor, *small: Tensor | None, like: Tensor | None = None) -> tuple[int, int]:
    """``x`` a contiguous float32 or bfloat16 CPU ``(R, C)`` tensor, ``like`` (the output's
    gradient) contiguous in ``x``'s dtype and shape, ``small`` contiguous float32; returns
    ``(R, C)``."""
    if x.device.type != "cpu" or x.dtype not in ROW_DTYPES or x.dim() != 2 or not x.is_contiguous():
        raise ValueError(
            "native token kernels take contiguous float32 or bfloat16 CPU (R, C) tensors, got "
            f"{x.dtype} on {x.device} with shape {tuple(x.shape)} and strides {x.stride()}"
        )
    if like is not None and (
        like.dtype != x.dtype or like.numel() != x.numel() or not like.is_contiguous()
    ):
        raise ValueError(
            f"native token kernels take a gradient like the input ({x.dtype}, contiguous, "
            f"{x.numel()} values), got {like.dtype} with shape {tuple(like.shape)}"
        )
    for t in small:
        if t is not None and (t.dtype != torch.float32 or not t.is_contiguous()):
            raise ValueError(f"native token kernels take contiguous float32 rows, got {t.dtype}")
    return x.shape[0], x.shape[1]


def group_tokens_forward(
    op: int,
    x: Tensor,
    v: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    groups: int,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """GroupNorm (``TOKENS_GN``) or EvoNorm-S0 (``TOKENS_S0``, needs ``v``) of ``x`` ``(R, C)``
    over ``groups`` groups of contiguous channels: ``(y, mean, rstd)``, the last two ``(R, G)``."""
    r, c = _check_tokens(x)
    if c % groups or (op == TOKENS_S0 and v is None):
        raise ValueError(
            f"group_tokens_forward: groups={groups} must divide C={c} (and S0 needs v)"
        )
    v, weight, bias = _small(v, _filled(weight, x, 1.0), _filled(bias, x, 0.0))
    y = torch.empty_like(x)
    stats = _f32(2, r, groups)
    _fn(x, "nz_group_tokens_forward")(*_args(op, x, v, weight, bias, y, stats[0],
                                            stats[1], r, c, groups, float(eps),
                                            threads()))  # fmt: skip
    return y, stats[0], stats[1]


def group_tokens_backward(
    op: int,
    dy: Tensor,
    x: Tensor,
    v: Tensor | None,
    weight: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    needs: tuple[bool, bool, bool, bool],
) -> list[Tensor | None]:
    """``[dx, dv, dweight, dbias]`` of :func:`group_tokens_forward` (``None`` where ``needs``
    is false; ``dv`` only for S0)."""
    dy = dy.contiguous()
    r, c = _check_tokens(x, mean, rstd, like=dy)
    groups = mean.shape[1]
    v, weight = _small(v, _filled(weight, x, 1.0))
    out = _grads(x, needs, c, c, c)
    partial = _f32(3 * c * -(-r // TOKEN_ROWS))
    _fn(x, "nz_group_tokens_backward")(*_args(op, dy, x, v, weight, mean, rstd, *out,
                                             partial, r, c, groups, threads()))  # fmt: skip
    return out


def _filled(t: Tensor | None, x: Tensor, value: float) -> Tensor:
    """``t``, or ``(C,)`` filled with ``value`` where ``None`` (kernels that take the affine
    parameters as required: no branch in their vector loops)."""
    return torch.full((x.shape[-1],), value) if t is None else t


def column_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of each column of ``x`` ``(R, C)``: two ``(C,)`` tensors."""
    r, c = _check_tokens(x)
    stats = _f32(2, c)
    partial = _f32(2 * c * -(-r // TOKEN_ROWS))
    _fn(x, "nz_column_stats")(*_args(x, stats[0], stats[1], partial, r, c, threads()))
    return stats[0], stats[1]


def b0_tokens_forward(
    x: Tensor, v: Tensor, s_b: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """EvoNorm-B0 of ``x`` ``(R, C)`` given ``s_b = sqrt(var_b + eps)`` ``(C,)``:
    ``x / max(s_b, v x + sqrt(eps)) * w + b``."""
    r, c = _check_tokens(x, s_b)
    v, weight, bias = _small(v, _filled(weight, x, 1.0), _filled(bias, x, 0.0))
    y = torch.empty_like(x)
    _fn(x, "nz_b0_tokens_forward")(*_args(x, v, s_b, weight, bias, y, r, c,
                                         float(eps) ** 0.5, threads()))  # fmt: skip
    return y


def b0_tokens_backward(
    dy: Tensor,
    x: Tensor,
    v: Tensor,
    s_b: Tensor,
    weight: Tensor | None,
    mean: Tensor | None,
    eps: float,
    needs: tuple[bool, bool, bool, bool],
) -> list[Tensor | None]:
    """``[dx, dv, dweight, dbias]`` of :func:`b0_tokens_forward`; with the batch's column
    ``mean`` (``s_b`` from the batch variance) ``dx`` includes the variance's share."""
    dy = dy.contiguous()
    r, c = _check_tokens(x, s_b, mean, like=dy)
    v, weight = _small(v, _filled(weight, x, 1.0))
    out = _grads(x, needs, c, c, c)
    partial, k = _f32(4 * c * -(-r // TOKEN_ROWS)), _f32(c)
    _fn(x, "nz_b0_tokens_backward")(*_args(dy, x, v, s_b, weight, mean, *out, partial,
                                          k, r, c, float(eps) ** 0.5,
                                          int(mean is not None), threads()))  # fmt: skip
    return out


def _token_rows(x: Tensor) -> Tensor:
    """``x`` ``(..., C)`` as ``(R, C)`` where contiguous (a view), else ``x`` (refused by
    :func:`_check_tokens`)."""
    return x.view(-1, x.shape[-1]) if x.dim() >= 1 and x.is_contiguous() else x


def rms_tokens_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    """RMSNorm of contiguous ``x`` ``(..., C)`` over its last dim: ``(y, rrms)``, ``rrms`` the
    inverse root mean square of each row, ``(R,)``."""
    c = x.shape[-1]
    r, _ = _check_tokens(_token_rows(x), weight, bias)
    y = torch.empty_like(x)
    rrms = _f32(r)
    _fn(x, "nz_rms_tokens_forward")(*_args(x, weight, bias, y, rrms, r, c, float(eps), threads()))
    return y, rrms


def rms_tokens_backward(
    dy: Tensor, x: Tensor, weight: Tensor | None, rrms: Tensor, needs: tuple[bool, bool, bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`rms_tokens_forward` (``None`` where not
    needed)."""
    c = x.shape[-1]
    dy = dy.contiguous()
    r, _ = _check_tokens(_token_rows(x), weight, rrms, like=dy)
    dx, dw, db = _grads(x, needs, c, c)
    partial = _f32(2 * c * -(-r // TOKEN_ROWS)) if needs[1] or needs[2] else None
    _fn(x, "nz_rms_tokens_backward")(*_args(dy, x, weight, rrms, dx, dw, db, partial, r,
                                           c, threads()))  # fmt: skip
    return dx, dw, db


def frn_tokens_forward(x: Tensor, weight: Tensor, bias: Tensor, tau: Tensor, eps: float) -> Tensor:
    """FRN + TLU of ``x`` ``(R, C)`` (no spatial positions): ``max(w x / sqrt(x^2 + eps) + b,
    tau)``."""
    r, c = _check_tokens(x, weight, bias, tau)
    z = torch.empty_like(x)
    _fn(x, "nz_frn_tokens_forward")(*_args(x, weight, bias, tau, z, r, c, float(eps), threads()))
    return z


def frn_tokens_backward(
    dz: Tensor, x: Tensor, weight: Tensor, bias: Tensor, tau: Tensor, eps: float, need_x: bool
) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias, dtau)`` of :func:`frn_tokens_forward` (``dx`` ``None`` unless
    ``need_x``)."""
    dz = dz.contiguous()
    r, c = _check_tokens(x, weight, bias, tau, like=dz)
    dx = torch.empty_like(x) if need_x else None
    dw, db, dtau = (_f32(c) for _ in range(3))
    partial = _f32(3 * c * -(-r // TOKEN_ROWS))
    _fn(x, "nz_frn_tokens_backward")(*_args(dz, x, weight, bias, tau, dx, dw, db, dtau,
                                           partial, r, c, float(eps), threads()))  # fmt: skip
    return dx, dw, db, dtau
