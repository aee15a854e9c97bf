"""The Triton kernels' contracts in plain torch, for CPU tests without triton.

Each function takes a kernel's launch grid and arguments as ``normzoo.norms._triton`` passes
them (pointers as CPU tensors or views, ints, floats, constexpr flags as keywords) and writes
what the kernel writes, computed with torch ops: the chunk statistics at their partial
indices, the merges, the maps, the per-program partial sums. Patched in for
``_triton._kernels()``, they let any CPU environment (with triton or without) run the Python
orchestration (plans, partial layouts, coefficient math, running statistics, autograd) end
to end in seconds. The Triton code itself is checked by ``tests/triton_interpreter_check.py``
(where triton is installed: CI too) and on a GPU by ``tests/test_triton_gpu.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class _Kernel:
    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        return lambda *args, **kwargs: self.fn(grid, *args, **kwargs)


def _view(t: Tensor, n: int, c: int, s: int, sn: int, sc: int, ss: int) -> Tensor:
    """``t``'s memory as ``(n, c, s)`` with those strides (``t`` holds the first element)."""
    return torch.as_strided(t, (n, c, s), (sn, sc, ss), t.storage_offset())


def _chunks(v: Tensor, spp: int, nk: int) -> Tensor:
    """``(n, c, s)`` -> ``(n, c, nk, spp)`` in float32, padded with NaN."""
    pad = nk * spp - v.shape[2]
    v = v.float()
    if pad:
        v = torch.cat([v, v.new_full((*v.shape[:2], pad), float("nan"))], 2)
    return v.view(*v.shape[:2], nk, spp)


def _affine(w: Tensor | None, b: Tensor | None, c: int, **flags: Any) -> tuple[Tensor, Tensor]:
    one, zero = torch.ones(c), torch.zeros(c)
    w = w.float() if flags["HAS_W"] else one
    b = b.float() if flags["HAS_B"] else zero
    return w, b


def _sets(n: int, c: int, set_n: int, cpg: int) -> Tensor:
    return torch.arange(n)[:, None] * set_n + torch.arange(c)[None, :] // cpg


def partial_stats(grid, X, PCNT, PMEAN, PM2, C, S, sn, sc, ss, PN, PC, SPP, **_):
    nk, _, n = grid
    x = _chunks(_view(X, n, C, S, sn, sc, ss), SPP, nk)
    cnt = (~x.isnan()).sum(-1).float()
    mean = x.nansum(-1) / cnt
    m2 = ((x - mean[..., None]) ** 2).nansum(-1)
    idx = (
        torch.arange(n)[:, None, None] * PN
        + torch.arange(C)[None, :, None] * PC
        + torch.arange(nk)[None, None, :]
    )
    for dst, val in ((PCNT, cnt), (PMEAN, mean), (PM2, m2)):
        dst[idx.flatten()] = val.flatten()


def finalize(grid, PCNT, PMEAN, PM2, MEAN, RSTD, VAR, RMEAN, RVAR, K, eps, factor, unbias, **kw):
    sets = grid[0]
    cnt, mu, m2 = (t[: sets * K].view(sets, K) for t in (PCNT, PMEAN, PM2))
    total = cnt.sum(1)
    mean = (cnt * mu).sum(1) / total
    var = (m2 + cnt * (mu - mean[:, None]) ** 2).sum(1) / total
    if kw.get("RMS"):  # the mean square in var's place, the mean 0
        var, mean = var + mean**2, torch.zeros_like(mean)
    MEAN.copy_(mean)
    RSTD.copy_(1 / torch.sqrt(var + eps))
    VAR.copy_(var)
    if kw["HAS_RUNNING"]:
        RMEAN.lerp_(mean.to(RMEAN.dtype), factor)
        RVAR.lerp_((var * unbias).to(RVAR.dtype), factor)


def apply(grid, X, Y, MEAN, RSTD, W, B, TAU, N, C, S, sn, sc, ss, SET_N, CPG, SPP, NK, NCB, **kw):
    sets = _sets(N, C, SET_N, CPG)
    w, b = _affine(W, B, C, **kw)
    scale = RSTD[sets] * w
    shift = -MEAN[sets] * scale + b
    x = _view(X, N, C, S, sn, sc, ss).float()
    if kw.get("SWISH"):  # the numerator x sigmoid(v x), not centered
        x, shift = x * torch.sigmoid(TAU.float()[:, None] * x), b.expand_as(shift)
    y = x * scale[..., None] + shift[..., None]
    y = y.clamp_min(0) if kw["RELU"] else y
    if kw.get("TLU"):
        y = torch.maximum(y, TAU.float()[:, None])
    _view(Y, N, C, S, sn, sc, ss).copy_(y)


def _dy_xhat(X, DY, MEAN, RSTD, W, B, TAU, N, C, S, strides, SET_N, CPG, **kw):
    """``dy`` through the ReLU or TLU, ``x_hat`` (``SWISH``: the swish over the std), ``w``, the
    sets, the extra parameter's share of ``dy``; and for the map gradient ``dy`` through the
    swish's derivative and the centered ``x_hat``."""
    sets = _sets(N, C, SET_N, CPG)
    w, b = _affine(W, B, C, **kw)
    x = _view(X, N, C, S, *strides).float()
    dy = _view(DY, N, C, S, *strides).float()
    mean, rstd = MEAN[sets][..., None], RSTD[sets][..., None]
    scale = (RSTD[sets] * w)[..., None]
    y = x * scale + (-MEAN[sets][..., None] * scale + b[:, None])
    if kw["RELU"]:
        dy = torch.where(y > 0, dy, 0)
    rest = None
    xhat = (x - mean) * rstd
    if kw.get("TLU"):
        tau = TAU.float()[:, None]
        masked = torch.where(y > tau, dy, torch.where(y == tau, 0.5 * dy, 0))
        dy, rest = masked, dy - masked
    if kw.get("SWISH"):  # f = x sigmoid(v x) rstd in x_hat's place; v's share (times w later)
        sg = torch.sigmoid(TAU.float()[:, None] * x)
        f = x * sg * rstd
        rest = dy * f * x * (1 - sg)
        return dy, f, w, sets, rest, dy * (sg + TAU.float()[:, None] * x * sg * (1 - sg)), xhat
    return dy, xhat, w, sets, rest, dy, xhat


def partial_grad(
    grid, X, DY, MEAN, RSTD, W, B, TAU, PSY, PSXY, PST, PSD, C, S, sn, sc, ss, SET_N, CPG, SPP,
    NK, **kw,
):  # fmt: skip
    n = grid[2]
    strides = (sn, sc, ss)
    dy, xhat, _, _, rest, _, _ = _dy_xhat(
        X, DY, MEAN, RSTD, W, B, TAU, n, C, S, strides, SET_N, CPG, **kw
    )
    PSY.view(n, C, NK).copy_(_chunks(dy, SPP, NK).nansum(-1))
    PSXY.view(n, C, NK).copy_(_chunks(dy * xhat, SPP, NK).nansum(-1))
    if rest is not None:
        PST.view(n, C, NK).copy_(_chunks(rest, SPP, NK).nansum(-1))
    if kw.get("SWISH"):  # sum(x - mean): the float32 mean's error
        x = _view(X, n, C, S, *strides).float()
        deviation = x - MEAN[_sets(n, C, SET_N, CPG)][..., None]
        PSD.view(n, C, NK).copy_(_chunks(deviation, SPP, NK).nansum(-1))


def apply_grad(
    grid, X, DY, DX, MEAN, RSTD, W, B, TAU, CA, CB_, N, C, S, sn, sc, ss, SET_N, CPG, SPP, NK,
    NCB, **kw,
):  # fmt: skip
    strides = (sn, sc, ss)
    _, _, w, sets, _, dy, xhat = _dy_xhat(
        X, DY, MEAN, RSTD, W, B, TAU, N, C, S, strides, SET_N, CPG, **kw
    )
    rstd = RSTD[sets][..., None]
    dx = rstd * (w[:, None] * dy - xhat * CA[sets][..., None] - CB_[sets][..., None])
    _view(DX, N, C, S, *strides).copy_(dx)


def group_fwd(grid, X, Y, W, B, P, MEAN, RSTD, VAR, C, S, G, CPG, eps, **kw):
    n = grid[1]
    x = X.reshape(n, G, CPG * S).float()
    if kw.get("RMS"):
        var, mean = x.square().mean(2), torch.zeros(n, G)
    else:
        var, mean = torch.var_mean(x, 2, correction=0)
    rstd = 1 / torch.sqrt(var + eps)
    w, b = _affine(W, B, C, **kw)
    num = x - mean[..., None]
    if kw.get("SWISH"):
        xc = x.view(n, C, S)
        num = (xc * torch.sigmoid(P.float()[:, None] * xc)).view_as(x)
    y = (num * rstd[..., None]).view(n, C, S) * w[:, None] + b[:, None]
    y = y.clamp_min(0) if kw["RELU"] else y
    if kw.get("TLU"):
        y = torch.maximum(y, P.float()[:, None])
    Y.copy_(y.view_as(Y))
    MEAN.copy_(mean.flatten())
    RSTD.copy_(rstd.flatten())
    VAR.copy_(var.flatten())


def group_bwd(grid, X, DY, DX, W, B, P, MEAN, RSTD, PDW, PDB, PDP, N, C, S, G, CPG, NPP, **kw):
    strides = (C * S, S, 1)
    plain = {**kw, "TLU": False, "SWISH": False}  # (both below, as the one-pass kernel does)
    dy, xhat, w, sets, _, _, _ = _dy_xhat(
        X, DY, MEAN, RSTD, W, B, None, N, C, S, strides, G, CPG, **plain
    )
    x = _view(X, N, C, S, *strides).float()
    rstd_c = RSTD[sets][..., None]
    dp = None
    if kw.get("TLU"):  # torch.maximum's split: all of dy above tau, half at a tie
        _, b = _affine(W, B, C, **kw)
        y = xhat * w[:, None] + b[:, None]
        tau = P.float()[:, None]
        h = torch.where(y > tau, dy, torch.where(y == tau, dy * 0.5, 0))
        dp, dy = dy - h, h
    if kw.get("SWISH"):
        sg = torch.sigmoid(P.float()[:, None] * x)
        fr = x * sg * rstd_c
        dp = dy * fr * x * (1 - sg) * w[:, None]
        a = (dy * w[:, None] * fr).view(N, G, CPG * S).mean(2)[:, :, None]
        fp = sg + P.float()[:, None] * x * sg * (1 - sg)
        xg = xhat.reshape(N, G, CPG * S)
        xg = xg - xg.mean(2, keepdim=True)  # against the exact mean, as the kernel
        dx = rstd_c * (w[:, None] * dy * fp) - (RSTD.view(N, G, 1) * xg * a).view(N, C, S)
        prod = dy * fr
    else:
        wdy = (dy * w[:, None]).view(N, G, CPG * S)
        xg = xhat.reshape(N, G, CPG * S)
        a = (wdy * xg).mean(2, keepdim=True)
        b = 0 if kw.get("RMS") else wdy.mean(2, keepdim=True)
        dx = (RSTD.view(N, G, 1) * (wdy - xg * a - b)).view(N, C, S)
        prod = dy * xhat
    DX.copy_(dx.reshape(DX.shape))
    for p in range(grid[1]):
        rows = slice(p * NPP, min(p * NPP + NPP, N))
        PDW.view(-1, C)[p] = prod[rows].sum((0, 2))
        PDB.view(-1, C)[p] = dy[rows].sum((0, 2))
        if dp is not None:
            PDP.view(-1, C)[p] = dp[rows].sum((0, 2))


def token_fwd(grid, X, Y, W, B, MEAN, RSTD, R, D, eps, **kw):
    x = X.reshape(R, D).float()
    if kw.get("RMS"):
        var, mean = x.square().mean(1), torch.zeros(R)
    else:
        var, mean = torch.var_mean(x, 1, correction=0)
    rstd = 1 / torch.sqrt(var + eps)
    w, b = _affine(W, B, D, **kw)
    y = (x - mean[:, None]) * rstd[:, None] * w + b
    Y.copy_((y.clamp_min(0) if kw["RELU"] else y).view_as(Y))
    MEAN.copy_(mean)
    RSTD.copy_(rstd)


def token_bwd(grid, X, DY, DX, W, B, MEAN, RSTD, PDW, PDB, R, D, RPP, **kw):
    w, b = _affine(W, B, D, **kw)
    x, dy = X.reshape(R, D).float(), DY.reshape(R, D).float()
    xhat = (x - MEAN[:, None]) * RSTD[:, None]
    if kw["RELU"]:
        dy = torch.where(xhat * w + b > 0, dy, 0)
    wdy = dy * w
    a = (wdy * xhat).mean(1, keepdim=True)
    bb = 0 if kw.get("RMS") else wdy.mean(1, keepdim=True)
    DX.copy_((RSTD[:, None] * (wdy - xhat * a - bb)).view_as(DX))
    for p in range(grid[0]):
        rows = slice(p * RPP, min(p * RPP + RPP, R))
        PDW.view(-1, D)[p] = (dy * xhat)[rows].sum(0)
        PDB.view(-1, D)[p] = dy[rows].sum(0)


def token_group_fwd(grid, X, Y, W, B, P, MEAN, RSTD, VAR, R, D, G, K, eps, **kw):
    # (R, D) tokens as (R, D, 1): group_fwd's per-(sample, group) sets are (row, group)'s
    group_fwd((G, R), X, Y, W, B, P, MEAN, RSTD, VAR, D, 1, G, K, eps, **kw)


def token_group_bwd(grid, X, DY, DX, W, B, P, MEAN, RSTD, PDW, PDB, PDP, R, D, G, K, RPP, **kw):
    group_bwd((G, grid[0]), X, DY, DX, W, B, P, MEAN, RSTD, PDW, PDB, PDP, R, D, 1, G, K, RPP, **kw)


def _b0_terms(X, BSTD, ISTD, V, W, N, C, S, strides, **kw):
    x = _view(X, N, C, S, *strides).float()
    w = W.float() if kw["HAS_W"] else torch.ones(C)
    bstd = BSTD.float()[None, :, None]
    inst = V.float()[None, :, None] * x + ISTD.view(N, C)[..., None]
    den = torch.maximum(bstd, inst)
    a = torch.where(bstd > inst, 1.0, torch.where(bstd == inst, 0.5, 0.0))
    return x, w[None, :, None], den, a


def b0_apply(grid, X, Y, BSTD, ISTD, V, W, B, N, C, S, sn, sc, ss, SPP, NK, NCB, **kw):
    x, w, den, _ = _b0_terms(X, BSTD, ISTD, V, W, N, C, S, (sn, sc, ss), **kw)
    b = B.float()[None, :, None] if kw["HAS_B"] else 0.0
    _view(Y, N, C, S, sn, sc, ss).copy_(x / den * w + b)


def b0_partial_grad(grid, X, DY, BSTD, ISTD, V, W, P, C, S, sn, sc, ss, PSTRIDE, SPP, NK, **kw):
    n = grid[2]
    x, w, den, a = _b0_terms(X, BSTD, ISTD, V, W, n, C, S, (sn, sc, ss), **kw)
    dy = _view(DY, n, C, S, sn, sc, ss).float()
    q = w * dy * x / den**2
    terms = (a * q, (1 - a) * q, dy * x / den, dy, (1 - a) * q * x)
    for k, t in enumerate(terms):
        P.view(-1)[k * PSTRIDE : (k + 1) * PSTRIDE].view(n, C, NK).copy_(
            _chunks(t, SPP, NK).nansum(-1)
        )


def b0_apply_grad(
    grid, X, DY, DX, BSTD, ISTD, V, W, K1, K0, N, C, S, sn, sc, ss, SPP, NK, NCB, **kw
):
    x, w, den, a = _b0_terms(X, BSTD, ISTD, V, W, N, C, S, (sn, sc, ss), **kw)
    g = w * _view(DY, N, C, S, sn, sc, ss).float()
    v = V.float()[None, :, None]
    k1, k0 = K1.view(N, C, 1), K0.view(N, C, 1)
    _view(DX, N, C, S, sn, sc, ss).copy_(g / den - v * (1 - a) * g * x / den**2 - x * k1 + k0)


def _lerp(start: Tensor, end: Tensor, weight: float) -> Tensor:
    return start.lerp(end, weight)


def renorm_coef(grid, MEAN, RSTD, VAR, RMEAN, RVAR, W, B, SCALE, SHIFT, R, D, C, eps, r_min,
                r_max, d_max, factor, unbias, **kw):  # fmt: skip
    rm, rv = RMEAN.float(), RVAR.float()
    sigma = torch.sqrt(rv + eps)
    r = (1 / RSTD / sigma).clamp(r_min, r_max)
    d = ((MEAN - rm) / sigma).clamp(-d_max, d_max)
    w, b = _affine(W, B, C, **kw)
    SCALE.copy_(w * r)
    SHIFT.copy_(w * d + b)
    R.copy_(r)
    D.copy_(d)
    RMEAN.copy_(_lerp(rm, MEAN, factor))
    RVAR.copy_(_lerp(rv, VAR * unbias, factor))


def _segments(n: int, size: int) -> list[slice]:
    return [slice(k, min(k + size, n)) for k in range(0, n, size)]


def ghost_coef(grid, MEAN_I, VAR_I, MEANS, VARS, MEAN, RSTD, N, C, size, eps, **_):
    mean_i, var_i = MEAN_I.reshape(N, C), VAR_I.reshape(N, C)
    mean, rstd = MEAN.view(N, C), RSTD.view(N, C)
    for k, rows in enumerate(_segments(N, size)):
        mu = mean_i[rows].mean(0)
        var = (var_i[rows] + (mean_i[rows] - mu) ** 2).mean(0)
        MEANS.view(-1, C)[k], VARS.view(-1, C)[k] = mu, var
        mean[rows], rstd[rows] = mu, 1 / torch.sqrt(var + eps)


def bn_grad_coef(grid, P, W, R, D, DB, DW, A, B, N, C, NK, inv_count, **kw):
    s_dy, s_dyx = P.reshape(-1, N, C, NK)[:2].sum((1, 3))
    scale = inv_count * (W.float() if kw["HAS_W"] else torch.ones(C))
    B.copy_(s_dy * scale)
    A.copy_(s_dyx * scale)
    DB.copy_(s_dy)
    DW.copy_(R * s_dyx + D * s_dy if kw["RENORM"] else s_dyx)


def group_grad_coef(grid, P, W, RSTD, DB, DW, DP, A, B, N, C, NK, CPG, inv_count, **kw):
    part = P.reshape(-1, N, C, NK)
    w = W.float() if kw["HAS_W"] else torch.ones(C)
    sums = part.sum(3)  # (rows, N, C)
    DB.copy_(sums[0].sum(0))
    DW.copy_(sums[1].sum(0))
    b, a = ((sums[:2] * w).view(2, -1, CPG).sum(2) * inv_count).unbind(0)
    if kw["NO_MEAN"]:
        b = torch.zeros_like(b)
    if kw["SWISH"]:
        b = -(sums[3].reshape(-1, CPG).sum(1) * inv_count) * RSTD.view(-1) * a
    A.copy_(a)
    B.copy_(b)
    if kw["EXTRA"]:
        DP.copy_(sums[2].sum(0) * (w if kw["SWISH"] else 1.0))


def ghost_grad_coef(grid, SDY, SDYX, W, A, B, N, C, size, inv_s, **kw):
    w = W.float() if kw["HAS_W"] else torch.ones(C)
    for rows in _segments(N, size):
        scale = w * inv_s / (rows.stop - rows.start)
        B.view(N, C)[rows] = SDY.reshape(N, C)[rows].sum(0) * scale
        A.view(N, C)[rows] = SDYX.reshape(N, C)[rows].sum(0) * scale


def b0_coef(grid, MEAN_I, VAR_I, RVAR, BSTD, ISTD, MEAN_B, N, C, eps, keep, factor, unbias,
            **kw):  # fmt: skip
    mean_i, var_i = MEAN_I.reshape(N, C), VAR_I.reshape(N, C)
    if kw["BATCH"]:
        mu = mean_i.mean(0)
        var_b = (var_i + (mean_i - mu) ** 2).mean(0)
        MEAN_B.copy_(mu)
    else:
        var_b = RVAR.float()
    BSTD.copy_(torch.sqrt(var_b + eps))
    ISTD.copy_(torch.sqrt(var_i + eps).view(-1))
    if kw["UPDATE"]:
        RVAR.copy_(keep * RVAR.float() + factor * (var_b * unbias))


def b0_grad_coef(grid, P, ISTD, BSTD, MEAN_I, MEAN_B, K1, K0, G, N, C, PSTRIDE, inv_s, **kw):
    p_a, p_b, p_w, p_dy, p_v = P.reshape(5, N, C)
    G.copy_(torch.stack([-p_v.sum(0), p_w.sum(0), p_dy.sum(0)]))
    k1 = p_b * inv_s / ISTD.view(N, C)
    k0 = k1 * MEAN_I.reshape(N, C)
    if kw["BATCH"]:
        q = p_a.sum(0) * inv_s / N / BSTD
        k1, k0 = k1 + q, k0 + q * MEAN_B
    K1.copy_(k1.view(-1))
    K0.copy_(k0.view(-1))


def switch_bn(grid, MEAN_I, VAR_I, RMEAN, RVAR, MEAN_BN, VAR_BN, N, C, keep, factor, unbias,
              **kw):  # fmt: skip
    mi, vi = MEAN_I.reshape(N, C), VAR_I.reshape(N, C)
    if kw["BATCH"]:
        mean = mi.mean(0)
        var = (vi + (mi - mean) ** 2).mean(0)
        if kw["UPDATE"]:
            RMEAN.copy_(keep * RMEAN.float() + factor * mean)
            RVAR.copy_(keep * RVAR.float() + factor * (var * unbias))
    else:
        mean, var = RMEAN.float(), RVAR.float()
    MEAN_BN.copy_(mean)
    VAR_BN.copy_(var)


def switch_mix(grid, MEAN_I, VAR_I, MEAN_BN, VAR_BN, MW, VW, MEAN, RSTD, MEAN_LN, VAR_LN, N, C,
               eps, **_):  # fmt: skip
    mi, vi = MEAN_I.reshape(N, C), VAR_I.reshape(N, C)
    mean_ln = mi.mean(1)
    var_ln = (vi + (mi - mean_ln[:, None]) ** 2).mean(1)
    MEAN_LN.copy_(mean_ln)
    VAR_LN.copy_(var_ln)
    wm, wv = torch.softmax(MW.float(), 0), torch.softmax(VW.float(), 0)
    mean = wm[0] * mi + wm[1] * mean_ln[:, None] + wm[2] * MEAN_BN
    var = wv[0] * vi + wv[1] * var_ln[:, None] + wv[2] * VAR_BN
    MEAN.copy_(mean.view(-1))
    RSTD.copy_((1 / torch.sqrt(var + eps)).view(-1))


def _switch_d(SDY, SDYX, RSTD, W, N, C, **kw):
    """``dL/dmean``, ``dL/dvar`` per (sample, channel)."""
    w = W.float() if kw["HAS_W"] else torch.ones(C)
    r = RSTD.view(N, C)
    return -(w * r) * SDY.reshape(N, C), -0.5 * (w * r * r) * SDYX.reshape(N, C)


def switch_grad_bn(grid, SDY, SDYX, RSTD, W, MEAN_I, VAR_I, MEAN_BN, VAR_BN, SUMS, N, C, **kw):
    d_mean, d_var = _switch_d(SDY, SDYX, RSTD, W, N, C, **kw)
    a, b = d_mean.sum(0), d_var.sum(0)
    rows = [a, b, SDYX.reshape(N, C).sum(0), SDY.reshape(N, C).sum(0)]
    rows += [(d_mean * MEAN_I.reshape(N, C)).sum(0), (d_var * VAR_I.reshape(N, C)).sum(0)]
    SUMS.copy_(torch.stack([*rows, a * MEAN_BN, b * VAR_BN]))


def switch_grad_ln(grid, SDY, SDYX, RSTD, W, MEAN_I, MEAN, MEAN_LN, VAR_LN, MEAN_BN, SUMS, MW,
                   VW, A, B, LN_TERMS, N, C, S, **kw):  # fmt: skip
    d_mean, d_var = _switch_d(SDY, SDYX, RSTD, W, N, C, **kw)
    a_ln, b_ln = d_mean.sum(1, keepdim=True), d_var.sum(1, keepdim=True)
    LN_TERMS.copy_(torch.stack([a_ln[:, 0] * MEAN_LN, b_ln[:, 0] * VAR_LN]))
    wm, wv = torch.softmax(MW.float(), 0), torch.softmax(VW.float(), 0)
    mi = MEAN_I.reshape(N, C)
    g_mu = wm[0] * d_mean + wm[1] / C * a_ln + 2 * wv[1] / C * b_ln * (mi - MEAN_LN[:, None])
    g_var = wv[0] * d_var + wv[1] / C * b_ln
    if kw["BATCH"]:
        a_bn, b_bn = SUMS[0], SUMS[1]
        g_mu = g_mu + wm[2] / N * a_bn + 2 * wv[2] / N * b_bn * (mi - MEAN_BN)
        g_var = g_var + wv[2] / N * b_bn
    q = 2.0 / S * g_var
    r = RSTD.view(N, C)
    A.copy_((-q / (r * r)).view(-1))
    B.copy_((-(q * MEAN.view(N, C) + g_mu / S - q * mi) / r).view(-1))


def switch_grad_logits(grid, SUMS, LN_TERMS, MW, VW, G, N, C, **_):
    per_c, per_n = SUMS[4:].sum(1), LN_TERMS.sum(1)
    g_m = torch.stack([per_c[0], per_n[0], per_c[2]])
    g_v = torch.stack([per_c[1], per_n[1], per_c[3]])
    wm, wv = torch.softmax(MW.float(), 0), torch.softmax(VW.float(), 0)
    G[:3] = wm * (g_m - (wm * g_m).sum())
    G[3:] = wv * (g_v - (wv * g_v).sum())


def ghost_blend(grid, MEANS, VARS, RMEAN, RVAR, N, C, K, size, S, factor, tracked, **kw):
    rm, rv = RMEAN.float(), RVAR.float()
    for k in range(K):
        count = min(size, N - k * size) * S
        f = 1.0 / (tracked + k + 1) if kw["CUMULATIVE"] else factor
        rm = f * MEANS.view(-1, C)[k] + (1 - f) * rm
        rv = f * (VARS.view(-1, C)[k] * (count / max(count - 1, 1))) + (1 - f) * rv
    RMEAN.copy_(rm)
    RVAR.copy_(rv)


class Kernels:
    """A stand-in for ``normzoo.norms._triton_kernels``."""

    _partial_stats = _Kernel(partial_stats)
    _finalize = _Kernel(finalize)
    _apply = _Kernel(apply)
    _partial_grad = _Kernel(partial_grad)
    _apply_grad = _Kernel(apply_grad)
    _group_fwd = _Kernel(group_fwd)
    _group_bwd = _Kernel(group_bwd)
    _token_fwd = _Kernel(token_fwd)
    _token_bwd = _Kernel(token_bwd)
    _token_group_fwd = _Kernel(token_group_fwd)
    _token_group_bwd = _Kernel(token_group_bwd)
    _b0_apply = _Kernel(b0_apply)
    _b0_partial_grad = _Kernel(b0_partial_grad)
    _b0_apply_grad = _Kernel(b0_apply_grad)
    _renorm_coef = _Kernel(renorm_coef)
    _ghost_coef = _Kernel(ghost_coef)
    _ghost_grad_coef = _Kernel(ghost_grad_coef)
    _bn_grad_coef = _Kernel(bn_grad_coef)
    _group_grad_coef = _Kernel(group_grad_coef)
    _b0_coef = _Kernel(b0_coef)
    _b0_grad_coef = _Kernel(b0_grad_coef)
    _switch_bn = _Kernel(switch_bn)
    _ghost_blend = _Kernel(ghost_blend)
    _switch_mix = _Kernel(switch_mix)
    _switch_grad_bn = _Kernel(switch_grad_bn)
    _switch_grad_ln = _Kernel(switch_grad_ln)
    _switch_grad_logits = _Kernel(switch_grad_logits)
