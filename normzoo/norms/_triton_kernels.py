"""Triton kernels for the batch, group, layer and instance norms on CUDA, through flags of the
group kernels RMSNorm, FRN + TLU and EvoNorm-S0, EvoNorm-B0's map and backward (``_b0_*``),
and the zoo's per-channel coefficient kernels (``*_coef``) (imported lazily by
:mod:`normzoo.norms._triton`, only where ``triton`` is installed).

An ``(N, C, *spatial)`` input is addressed as ``(n, c, s)`` with strides ``(sn, sc, ss)``, so
one kernel serves contiguous (``sc = S``, ``ss = 1``) and channels_last (``sc = 1``,
``ss = C``) tensors, and token tensors ``(R, C)`` (``S = 1``). Statistics are taken per *set*:
per channel for batch norm (``set = c``), per (sample, group) for the row norms
(``set = n * G + c // CPG``). Arithmetic is float32 whatever the input dtype.

Two schemes:

* one pass (``_group_*``, ``_token_*``): a whole set in one program's registers, so the
  forward reads ``x`` once and writes ``y`` once, the backward reads ``x`` and ``dy`` once and
  writes ``dx`` once: the minimal traffic. Used where a set has at most ``ONE_PASS_MAX``
  elements and is contiguous (group and instance norm on contiguous conv inputs, layer norm
  on tokens).
* two phases (``_partial_*``, ``_finalize``, ``_apply*``): per (sample, channel block,
  position chunk) partial statistics (count, mean, M2: Chan et al.'s pairwise merge), one
  small kernel that merges each set's partials, and a map over the tensor. The map runs its
  programs in reverse order, so it starts on the chunks the statistics pass read last, which
  are still in L2.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _chunk(kk, cb, n, C, S, sn, sc, SPP, CB: tl.constexpr):
    """A two-phase program's chunk: channels ``cb*CB ...`` of sample ``n`` (the channels, their
    mask, their offsets) and positions ``[kk*SPP, min((kk+1)*SPP, S))`` (start, end)."""
    cs = cb * CB + tl.arange(0, CB)
    cmask = cs < C
    off = n.to(tl.int64) * sn + cs[:, None].to(tl.int64) * sc
    s0 = kk * SPP
    return cs, cmask, off, s0, tl.minimum(s0 + SPP, S)


@triton.jit
def _positions(off, s, s_end, ss, cmask, SB: tl.constexpr):
    """Offsets and mask of the chunk's tile at positions ``s ... min(s + SB, s_end)``."""
    pos = s + tl.arange(0, SB)
    m = cmask[:, None] & (pos < s_end)[None, :]
    return off + pos[None, :].to(tl.int64) * ss, m


@triton.jit
def _chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.'s merge of two (count, mean, M2) (either count may be 0)."""
    n = n_a + n_b
    share = tl.where(n > 0.0, n_b / tl.maximum(n, 1.0), 0.0)
    delta = mean_b - mean_a
    return n, mean_a + delta * share, m2_a + m2_b + delta * delta * n_a * share


@triton.jit
def _partial_stats(
    X,
    PCNT,
    PMEAN,
    PM2,
    C,
    S,
    sn,
    sc,
    ss,
    PN,
    PC,
    SPP,
    CB: tl.constexpr,
    SB: tl.constexpr,
    LANE_ACC: tl.constexpr = False,
):
    """Partial (count, mean, M2) of channels ``cb*CB ...`` of sample ``n`` over positions
    ``[kk*SPP, (kk+1)*SPP)``, stored at ``n*PN + c*PC + kk``. Each tile's statistics merge
    into the chunk's in every iteration; ``LANE_ACC``: each lane of the tile keeps its own
    (Welford: every lane past the channel mask sees the same count until the last, partial
    tile), merged once after the loop (:func:`_chan_merge` as the reduction), so the loop
    holds no reduction across the tile's warps. The lanes see ``x`` shifted by the chunk's
    first value of each channel (exact, and close to the mean): a lane's mean of a few values
    near 1e4, rounded to float32, would carry 5e-4 into every merge's ``delta^2`` term.
    ``LANE_ACC == 2``: each lane keeps the shifted sum and sum of squares instead (two float
    operations a value against Welford's five and a division), summed over the lanes after
    the loop into the chunk's ``M2 = s2 - s1^2 / n``: the shift (the channel's first value in
    the chunk) keeps that cancellation to the values' spread around it."""
    kk = tl.program_id(0)
    n = tl.program_id(2).to(tl.int64)
    cs, cmask, off, s0, s_end = _chunk(kk, tl.program_id(1), n, C, S, sn, sc, SPP, CB)
    cnt = tl.zeros([CB], dtype=tl.float32)
    mean = tl.zeros([CB], dtype=tl.float32)
    m2 = tl.zeros([CB], dtype=tl.float32)
    lane_n = tl.zeros([CB, SB], dtype=tl.float32)
    lane_mean = tl.zeros([CB, SB], dtype=tl.float32)
    lane_m2 = tl.zeros([CB, SB], dtype=tl.float32)
    if LANE_ACC:
        first = n * sn + cs.to(tl.int64) * sc + s0.to(tl.int64) * ss
        raw = tl.load(X + first, mask=cmask & (s0 < s_end), other=0.0)
        shift = raw.to(tl.float32)
    for s in range(s0, s_end, SB):
        o, m = _positions(off, s, s_end, ss, cmask, SB)
        if LANE_ACC == 2:  # masked values read as the shift: d = 0 there, no select
            d = tl.load(X + o, mask=m, other=raw[:, None]).to(tl.float32) - shift[:, None]
            lane_mean += d  # (the lane's shifted sum until after the loop)
            lane_m2 += d * d  # (its shifted sum of squares)
        elif LANE_ACC:
            x = tl.load(X + o, mask=m, other=0.0).to(tl.float32) - shift[:, None]
            inv = 1.0 / ((s - s0) // SB + 1).to(tl.float32)  # 1 / this tile's number
            d = x - lane_mean
            lane_mean = tl.where(m, lane_mean + d * inv, lane_mean)
            lane_m2 = tl.where(m, lane_m2 + d * (x - lane_mean), lane_m2)
            lane_n += tl.where(m, 1.0, 0.0)
        else:
            x = tl.load(X + o, mask=m, other=0.0).to(tl.float32)
            tc = tl.minimum(s_end - s, SB).to(tl.float32)
            tmean = tl.sum(x, axis=1) / tc
            d = tl.where(m, x - tmean[:, None], 0.0)
            tm2 = tl.sum(d * d, axis=1)
            tot = cnt + tc
            delta = tmean - mean
            mean += delta * (tc / tot)
            m2 += tm2 + delta * delta * (cnt * tc / tot)
            cnt = tot
    if LANE_ACC == 2:  # the chunk's shifted sums: plain sums over the lanes
        cnt = tl.where(cmask, tl.maximum(s_end - s0, 0).to(tl.float32), 0.0)
        s1 = tl.sum(lane_mean, axis=1)
        mean = s1 / tl.maximum(cnt, 1.0)
        m2 = tl.maximum(tl.sum(lane_m2, axis=1) - s1 * mean, 0.0)
        mean += tl.where(cnt > 0.0, shift, 0.0)
    elif LANE_ACC:
        cnt, mean, m2 = tl.reduce((lane_n, lane_mean, lane_m2), 1, _chan_merge)
        mean += tl.where(cnt > 0.0, shift, 0.0)
    idx = n * PN + cs.to(tl.int64) * PC + kk
    tl.store(PCNT + idx, cnt, mask=cmask)
    tl.store(PMEAN + idx, mean, mask=cmask)
    tl.store(PM2 + idx, m2, mask=cmask)


@triton.jit
def _finalize(
    PCNT,
    PMEAN,
    PM2,
    MEAN,
    RSTD,
    VAR,
    RMEAN,
    RVAR,
    K,
    eps,
    factor,
    unbias,
    HAS_RUNNING: tl.constexpr,
    KB: tl.constexpr,
    RMS: tl.constexpr = False,
):
    """Merge the ``K`` partials of set ``i`` (at ``i*K ...``): its mean, 1/std and biased
    variance; with ``HAS_RUNNING``, blend them into the running statistics as ``Tensor.lerp_``
    does (``unbias``: ``count / (count - 1)``). ``RMS`` (RMSNorm): the mean stored is 0 and
    the variance's place holds the mean square ``var + mean^2``."""
    i = tl.program_id(0).to(tl.int64)
    base = i * K
    acc_n = tl.zeros([KB], dtype=tl.float32)
    acc_s = tl.zeros([KB], dtype=tl.float32)
    for k0 in range(0, K, KB):
        ks = k0 + tl.arange(0, KB)
        m = ks < K
        c = tl.load(PCNT + base + ks, mask=m, other=0.0)
        mu = tl.load(PMEAN + base + ks, mask=m, other=0.0)
        acc_n += c
        acc_s += c * mu
    total = tl.sum(acc_n, axis=0)
    mean = tl.sum(acc_s, axis=0) / total
    acc = tl.zeros([KB], dtype=tl.float32)
    for k0 in range(0, K, KB):
        ks = k0 + tl.arange(0, KB)
        m = ks < K
        c = tl.load(PCNT + base + ks, mask=m, other=0.0)
        mu = tl.load(PMEAN + base + ks, mask=m, other=0.0)
        q = tl.load(PM2 + base + ks, mask=m, other=0.0)
        acc += q + c * (mu - mean) * (mu - mean)
    var = tl.sum(acc, axis=0) / total
    if RMS:
        var += mean * mean
        mean = mean * 0.0
    tl.store(MEAN + i, mean)
    tl.store(RSTD + i, 1.0 / tl.sqrt(var + eps))
    tl.store(VAR + i, var)
    if HAS_RUNNING:
        rm = tl.load(RMEAN + i).to(tl.float32)
        rv = tl.load(RVAR + i).to(tl.float32)
        uv = var * unbias
        # lerp: start + w (end - start) below w = 0.5, end - (end - start)(1 - w) from it
        if factor < 0.5:
            rm = rm + factor * (mean - rm)
            rv = rv + factor * (uv - rv)
        else:
            rm = mean - (mean - rm) * (1.0 - factor)
            rv = uv - (uv - rv) * (1.0 - factor)
        tl.store(RMEAN + i, rm.to(RMEAN.dtype.element_ty))
        tl.store(RVAR + i, rv.to(RVAR.dtype.element_ty))


@triton.jit
def _tlu_mask(y, tau, dy):
    """``dy`` through FRN's ``max(y, tau)`` to ``y`` (``tau`` broadcast to ``y``'s tile): all
    of it where ``y`` is the larger, half at a tie (``torch.maximum``), none where ``tau``
    is."""
    return tl.where(y > tau, dy, tl.where(y == tau, 0.5 * dy, 0.0))


@triton.jit
def _apply(
    X,
    Y,
    MEAN,
    RSTD,
    W,
    B,
    TAU,
    N,
    C,
    S,
    sn,
    sc,
    ss,
    SET_N,
    CPG,
    SPP,
    NK,
    NCB,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RELU: tl.constexpr,
    CB: tl.constexpr,
    SB: tl.constexpr,
    TLU: tl.constexpr = False,
    SWISH: tl.constexpr = False,
):
    """``y = (x - mean[set]) * rstd[set] * w[c] + b[c]`` (ReLU'd; ``TLU``: ``max(y, tau[c])``,
    FRN's, ``tau`` at ``TAU``; ``SWISH``: EvoNorm-S0's ``y = x sigmoid(v[c] x) rstd w + b``,
    ``v`` at ``TAU``), over the same chunks as :func:`_partial_stats`, the last chunk
    first."""
    kk = NK - 1 - tl.program_id(0)
    cb = NCB - 1 - tl.program_id(1)
    n = N - 1 - tl.program_id(2)
    cs, cmask, off, s0, s_end = _chunk(kk, cb, n, C, S, sn, sc, SPP, CB)
    sets = n * SET_N + cs // CPG
    mean = tl.load(MEAN + sets, mask=cmask, other=0.0)
    rstd = tl.load(RSTD + sets, mask=cmask, other=0.0)
    scale = rstd
    if HAS_W:
        scale = rstd * tl.load(W + cs, mask=cmask, other=0.0).to(tl.float32)
    shift = -mean * scale
    if SWISH:  # the numerator is not centered
        shift = tl.zeros([CB], dtype=tl.float32)
    if HAS_B:
        shift += tl.load(B + cs, mask=cmask, other=0.0).to(tl.float32)
    if TLU or SWISH:
        tau = tl.load(TAU + cs, mask=cmask, other=0.0).to(tl.float32)
    for s in range(s0, s_end, SB):
        o, m = _positions(off, s, s_end, ss, cmask, SB)
        x = tl.load(X + o, mask=m, other=0.0).to(tl.float32)
        if SWISH:
            x = x * tl.sigmoid(tau[:, None] * x)
        y = x * scale[:, None] + shift[:, None]
        if RELU:
            y = tl.maximum(y, 0.0)
        if TLU:
            y = tl.maximum(y, tau[:, None])
        tl.store(Y + o, y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _partial_grad(
    X,
    DY,
    MEAN,
    RSTD,
    W,
    B,
    TAU,
    PSY,
    PSXY,
    PST,
    PSD,
    C,
    S,
    sn,
    sc,
    ss,
    SET_N,
    CPG,
    SPP,
    NK,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RELU: tl.constexpr,
    CB: tl.constexpr,
    SB: tl.constexpr,
    TLU: tl.constexpr = False,
    SWISH: tl.constexpr = False,
    LANE_ACC: tl.constexpr = False,
):
    """Per (sample, channel, chunk): ``sum(dy)`` and ``sum(dy * xhat)``, with ``dy`` masked by
    the forward's ReLU where it had one (``TLU``: by FRN's ``max(y, tau)``, half at ties as
    ``torch.maximum``, and tau's share ``sum(dy - masked)`` at ``PST``; ``SWISH``: with
    ``s = sigmoid(v x)`` and ``f = x s rstd`` in ``x_hat``'s place, ``sum(dy f)``, at
    ``PST`` v's ``sum(dy f x (1 - s))``, to be scaled by ``w``, and at ``PSD`` ``sum(x -
    mean)``: the float32 mean's error, against which the variance's gradient is corrected);
    stored at ``(n*C + c)*NK + kk``. ``LANE_ACC``: the sums kept per lane of the tile and
    summed once after the loop (no reduction across the tile's warps in the loop)."""
    kk = tl.program_id(0)
    cb = tl.program_id(1)
    n = tl.program_id(2)
    cs, cmask, off, s0, s_end = _chunk(kk, cb, n, C, S, sn, sc, SPP, CB)
    sets = n * SET_N + cs // CPG
    mean = tl.load(MEAN + sets, mask=cmask, other=0.0)
    rstd = tl.load(RSTD + sets, mask=cmask, other=0.0)
    if RELU or TLU:
        scale = rstd
        if HAS_W:
            scale = rstd * tl.load(W + cs, mask=cmask, other=0.0).to(tl.float32)
        shift = -mean * scale
        if HAS_B:
            shift += tl.load(B + cs, mask=cmask, other=0.0).to(tl.float32)
    if TLU or SWISH:
        tau = tl.load(TAU + cs, mask=cmask, other=0.0).to(tl.float32)
        st = tl.zeros([CB], dtype=tl.float32)
        lane_st = tl.zeros([CB, SB], dtype=tl.float32)
    if SWISH:
        sd = tl.zeros([CB], dtype=tl.float32)
        lane_sd = tl.zeros([CB, SB], dtype=tl.float32)
    sy = tl.zeros([CB], dtype=tl.float32)
    sxy = tl.zeros([CB], dtype=tl.float32)
    lane_sy = tl.zeros([CB, SB], dtype=tl.float32)
    lane_sxy = tl.zeros([CB, SB], dtype=tl.float32)
    for s in range(s0, s_end, SB):
        o, m = _positions(off, s, s_end, ss, cmask, SB)
        x = tl.load(X + o, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + o, mask=m, other=0.0).to(tl.float32)
        if RELU:
            dy = tl.where(x * scale[:, None] + shift[:, None] > 0.0, dy, 0.0)
        if TLU:
            masked = _tlu_mask(x * scale[:, None] + shift[:, None], tau[:, None], dy)
            if LANE_ACC:
                lane_st += dy - masked
            else:
                st += tl.sum(dy - masked, axis=1)
            dy = masked
        if SWISH:
            sg = tl.sigmoid(tau[:, None] * x)
            xhat = x * sg * rstd[:, None]  # f = x sigmoid(v x) rstd in x_hat's place
            if LANE_ACC:
                lane_st += dy * xhat * x * (1.0 - sg)
                lane_sd += tl.where(m, x - mean[:, None], 0.0)
            else:
                st += tl.sum(dy * xhat * x * (1.0 - sg), axis=1)
                sd += tl.sum(tl.where(m, x - mean[:, None], 0.0), axis=1)
        else:
            xhat = (x - mean[:, None]) * rstd[:, None]
        if LANE_ACC:
            lane_sy += dy
            lane_sxy += dy * xhat
        else:
            sy += tl.sum(dy, axis=1)
            sxy += tl.sum(dy * xhat, axis=1)
    if LANE_ACC:
        sy = tl.sum(lane_sy, axis=1)
        sxy = tl.sum(lane_sxy, axis=1)
        if TLU or SWISH:
            st = tl.sum(lane_st, axis=1)
        if SWISH:
            sd = tl.sum(lane_sd, axis=1)
    idx = (n.to(tl.int64) * C + cs) * NK + kk
    tl.store(PSY + idx, sy, mask=cmask)
    tl.store(PSXY + idx, sxy, mask=cmask)
    if TLU or SWISH:
        tl.store(PST + idx, st, mask=cmask)
    if SWISH:
        tl.store(PSD + idx, sd, mask=cmask)


@triton.jit
def _channel_sums(P, row, c, N, C, NK, EXTRA: tl.constexpr, KB: tl.constexpr):
    """Channel ``c``'s sums over the samples and chunks of the gradient kernel's partials
    ``P`` ``(rows, N, C, NK)`` (``row = N C NK`` apart): of ``dy``, of ``dy x_hat`` and,
    with ``EXTRA``, of the extra parameter's (else 0)."""
    total = N * NK
    acc_dy = tl.zeros([KB], dtype=tl.float32)
    acc_dyx = tl.zeros([KB], dtype=tl.float32)
    acc_p = tl.zeros([KB], dtype=tl.float32)
    for j0 in range(0, total, KB):
        js = j0 + tl.arange(0, KB)
        m = js < total
        off = (js // NK).to(tl.int64) * C * NK + c * NK + js % NK
        acc_dy += tl.load(P + off, mask=m, other=0.0)
        acc_dyx += tl.load(P + row + off, mask=m, other=0.0)
        if EXTRA:
            acc_p += tl.load(P + 2 * row + off, mask=m, other=0.0)
    return tl.sum(acc_dy, axis=0), tl.sum(acc_dyx, axis=0), tl.sum(acc_p, axis=0)


@triton.jit
def _bn_grad_coef(
    P,
    W,
    R,
    D,
    DB,
    DW,
    A,
    B,
    N,
    C,
    NK,
    inv_count,
    HAS_W: tl.constexpr,
    RENORM: tl.constexpr,
    KB: tl.constexpr,
):
    """Batch norm's backward coefficients of channel ``c = program_id(0)``, from the
    gradient kernel's partial sums ``P`` ``(2, N, C, NK)`` of ``dy`` and ``dy x_hat``: the
    parameter gradients ``db = sum(dy)`` and ``dw = sum(dy x_hat)`` (``RENORM``, Batch
    Renorm's weight ``w r``: ``dw = r sum(dy x_hat) + d sum(dy)``), and the map-gradient
    kernel's ``b = w sum(dy) / m``, ``a = w sum(dy x_hat) / m`` (``inv_count = 1 / m``). One
    launch where torch took three ops (the sum over the partials, a division and a
    product)."""
    c = tl.program_id(0)
    s_dy, s_dyx, _ = _channel_sums(P, N * C * NK, c, N, C, NK, False, KB)
    scale = inv_count
    if HAS_W:
        scale = scale * tl.load(W + c).to(tl.float32)
    tl.store(B + c, s_dy * scale)
    tl.store(A + c, s_dyx * scale)
    tl.store(DB + c, s_dy)
    if RENORM:
        s_dyx = tl.load(R + c) * s_dyx + tl.load(D + c) * s_dy
    tl.store(DW + c, s_dyx)


@triton.jit
def _group_grad_coef(
    P,
    W,
    RSTD,
    DB,
    DW,
    DP,
    A,
    B,
    N,
    C,
    NK,
    CPG,
    inv_count,
    HAS_W: tl.constexpr,
    EXTRA: tl.constexpr,
    NO_MEAN: tl.constexpr,
    SWISH: tl.constexpr,
    KB: tl.constexpr,
):
    """The backward coefficients of the (sample, group) sets of the two-phase kernels, from
    the gradient kernel's partial sums ``P`` ``(rows, N, C, NK)``: ``sum(dy)``,
    ``sum(dy x_hat)``, with ``EXTRA`` the extra parameter's (FRN's ``tau``, EvoNorm-S0's
    ``v``), with ``SWISH`` ``sum(x - mean)``. Programs below ``N * C / CPG`` take set ``i``:
    ``b = sum_S(w dy) / m``, ``a = sum_S(w dy x_hat) / m`` (``inv_count = 1 / m``; ``b = 0``
    with ``NO_MEAN``, RMSNorm and FRN; ``SWISH``: ``b = -delta r a``, ``delta`` the set's mean
    of ``x - mean``, so that ``x_hat a`` uses the exact mean). The rest take channel
    ``c``: the parameter gradients ``db = sum(dy)``, ``dw = sum(dy x_hat)`` and the extra's
    (``SWISH``: times ``w``). One launch where torch took five to fifteen ops."""
    pid = tl.program_id(0)
    sets = N * (C // CPG)
    row = N * C * NK  # one partial's (N, C, NK)
    if pid < sets:
        base = pid.to(tl.int64) * CPG * NK  # the set's channels' partials, contiguous
        first = (pid % (C // CPG)) * CPG  # its first channel
        total = CPG * NK
        acc_b = tl.zeros([KB], dtype=tl.float32)
        acc_a = tl.zeros([KB], dtype=tl.float32)
        acc_d = tl.zeros([KB], dtype=tl.float32)
        for j0 in range(0, total, KB):
            js = j0 + tl.arange(0, KB)
            m = js < total
            p_dy = tl.load(P + base + js, mask=m, other=0.0)
            p_dyx = tl.load(P + row + base + js, mask=m, other=0.0)
            if HAS_W:
                w = tl.load(W + first + js // NK, mask=m, other=0.0).to(tl.float32)
                p_dy *= w
                p_dyx *= w
            acc_b += p_dy
            acc_a += p_dyx
            if SWISH:
                acc_d += tl.load(P + 3 * row + base + js, mask=m, other=0.0)
        a = tl.sum(acc_a, axis=0) * inv_count
        b = tl.sum(acc_b, axis=0) * inv_count
        if NO_MEAN:
            b = b * 0.0
        if SWISH:
            # EvoNorm-S0's output does not subtract the mean, so float32 gives its gradient
            # to ~1e-6 while the float32 mean is ~5e-4 off at mean 1e4: x_hat a must use the
            # exact mean, mean + delta (delta: the set's mean of x - mean)
            b = -(tl.sum(acc_d, axis=0) * inv_count) * tl.load(RSTD + pid) * a
        tl.store(A + pid, a)
        tl.store(B + pid, b)
    else:
        c = pid - sets
        s_dy, s_dyx, dp = _channel_sums(P, row, c, N, C, NK, EXTRA, KB)
        tl.store(DB + c, s_dy)
        tl.store(DW + c, s_dyx)
        if EXTRA:
            if SWISH and HAS_W:
                dp = dp * tl.load(W + c).to(tl.float32)
            tl.store(DP + c, dp)


@triton.jit
def _apply_grad(
    X,
    DY,
    DX,
    MEAN,
    RSTD,
    W,
    B,
    TAU,
    CA,
    CB_,
    N,
    C,
    S,
    sn,
    sc,
    ss,
    SET_N,
    CPG,
    SPP,
    NK,
    NCB,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RELU: tl.constexpr,
    CB: tl.constexpr,
    SB: tl.constexpr,
    TLU: tl.constexpr = False,
    SWISH: tl.constexpr = False,
):
    """``dx = rstd * (w * dy - xhat * a[set] - b[set])`` (``dy`` masked as in
    :func:`_partial_grad`; ``SWISH``: ``dy`` times the swish's derivative
    ``s + v x s (1 - s)``), the last chunk first."""
    kk = NK - 1 - tl.program_id(0)
    cb = NCB - 1 - tl.program_id(1)
    n = N - 1 - tl.program_id(2)
    cs, cmask, off, s0, s_end = _chunk(kk, cb, n, C, S, sn, sc, SPP, CB)
    sets = n * SET_N + cs // CPG
    mean = tl.load(MEAN + sets, mask=cmask, other=0.0)
    rstd = tl.load(RSTD + sets, mask=cmask, other=0.0)
    ca = tl.load(CA + sets, mask=cmask, other=0.0)
    cb_ = tl.load(CB_ + sets, mask=cmask, other=0.0)
    w = tl.full([CB], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + cs, mask=cmask, other=0.0).to(tl.float32)
    scale = rstd * w
    if RELU or TLU:  # the forward's y, computed as it was
        shift = -mean * scale
        if HAS_B:
            shift += tl.load(B + cs, mask=cmask, other=0.0).to(tl.float32)
    if TLU or SWISH:
        tau = tl.load(TAU + cs, mask=cmask, other=0.0).to(tl.float32)
    for s in range(s0, s_end, SB):
        o, m = _positions(off, s, s_end, ss, cmask, SB)
        x = tl.load(X + o, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + o, mask=m, other=0.0).to(tl.float32)
        if RELU:
            dy = tl.where(x * scale[:, None] + shift[:, None] > 0.0, dy, 0.0)
        if TLU:
            dy = _tlu_mask(x * scale[:, None] + shift[:, None], tau[:, None], dy)
        if SWISH:
            sg = tl.sigmoid(tau[:, None] * x)
            dy = dy * (sg + tau[:, None] * x * sg * (1.0 - sg))
        xhat = (x - mean[:, None]) * rstd[:, None]
        dx = rstd[:, None] * (w[:, None] * dy - xhat * ca[:, None] - cb_[:, None])
        tl.store(DX + o, dx.to(DX.dtype.element_ty), mask=m)


@triton.jit
def _group_fwd(
    X,
    Y,
    W,
    B,
    P,
    MEAN,
    RSTD,
    VAR,
    C,
    S,
    G,
    CPG,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RELU: tl.constexpr,
    CB: tl.constexpr,
    SB: tl.constexpr,
    RMS: tl.constexpr = False,
    TLU: tl.constexpr = False,
    SWISH: tl.constexpr = False,
):
    """One pass over set ``(n, g)`` of a contiguous input: its ``CPG x S`` block in registers.

    Group norm ``y = (x - mean) * rstd * w + b``; ``RMS``: no centering (the mean stored is
    0, the variance's place holds the mean square); ``TLU``: then ``max(y, P[c])`` (FRN's
    threshold); ``SWISH``: ``x * sigmoid(P[c] * x)`` in place of ``x - mean`` (EvoNorm-S0)."""
    g = tl.program_id(0)
    n = tl.program_id(1)
    ci = tl.arange(0, CB)
    pos = tl.arange(0, SB)
    cmask = ci < CPG
    m = cmask[:, None] & (pos < S)[None, :]
    cs = g * CPG + ci
    off = (cs[:, None].to(tl.int64) + n * C) * S + pos[None, :]
    x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
    count = CPG * S * 1.0
    if RMS:
        mean = tl.sum(tl.zeros([CB], dtype=tl.float32), axis=0)
        d = x
    else:
        mean = tl.sum(tl.sum(x, axis=1), axis=0) / count
        d = tl.where(m, x - mean, 0.0)
    var = tl.sum(tl.sum(d * d, axis=1), axis=0) / count
    rstd = 1.0 / tl.sqrt(var + eps)
    scale = tl.full([CB], 1.0, tl.float32) * rstd
    if HAS_W:
        scale = rstd * tl.load(W + cs, mask=cmask, other=0.0).to(tl.float32)
    if SWISH:
        v = tl.load(P + cs, mask=cmask, other=0.0).to(tl.float32)
        y = x * tl.sigmoid(v[:, None] * x) * scale[:, None]
    else:
        y = d * scale[:, None]
    if HAS_B:
        y += tl.load(B + cs, mask=cmask, other=0.0).to(tl.float32)[:, None]
    if RELU:
        y = tl.maximum(y, 0.0)
    if TLU:
        y = tl.maximum(y, tl.load(P + cs, mask=cmask, other=0.0).to(tl.float32)[:, None])
    tl.store(Y + off, y.to(Y.dtype.element_ty), mask=m)
    tl.store(MEAN + n * G + g, mean)
    tl.store(RSTD + n * G + g, rstd)
    tl.store(VAR + n * G + g, var)


@triton.jit
def _group_bwd(
    X,
    DY,
    DX,
    W,
    B,
    P,
    MEAN,
    RSTD,
    PDW,
    PDB,
    PDP,
    N,
    C,
    S,
    G,
    CPG,
    NPP,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RELU: tl.constexpr,
    CB: tl.constexpr,
    SB: tl.constexpr,
    RMS: tl.constexpr = False,
    TLU: tl.constexpr = False,
    SWISH: tl.constexpr = False,
):
    """One pass per set ``(n, g)`` for samples ``p*NPP ...``: ``dx``, and this program's
    per-channel ``sum(dy * xhat)`` and ``sum(dy)`` at ``PDW/PDB[p, c]`` (with ``TLU`` or
    ``SWISH``, ``P``'s gradient at ``PDP[p, c]``); the flags as in :func:`_group_fwd`.

    ``TLU``: ``dy`` reaches ``y`` where ``y > tau``, half of it at a tie (``torch.maximum``),
    the rest reaches ``tau``. ``SWISH`` (``f = x sigmoid(v x)``, ``y = w f rstd + b``):
    ``dx = rstd (w dy f' - xhat mean(w dy f rstd))``, ``dv = w sum(dy rstd x^2 s (1 - s))``."""
    g = tl.program_id(0)
    p = tl.program_id(1)
    ci = tl.arange(0, CB)
    pos = tl.arange(0, SB)
    cmask = ci < CPG
    m = cmask[:, None] & (pos < S)[None, :]
    cs = g * CPG + ci
    w = tl.full([CB], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + cs, mask=cmask, other=0.0).to(tl.float32)
    bias = tl.zeros([CB], dtype=tl.float32)
    if HAS_B:
        bias = tl.load(B + cs, mask=cmask, other=0.0).to(tl.float32)
    prm = tl.zeros([CB], dtype=tl.float32)
    if TLU:
        prm = tl.load(P + cs, mask=cmask, other=0.0).to(tl.float32)
    if SWISH:
        prm = tl.load(P + cs, mask=cmask, other=0.0).to(tl.float32)
    count = CPG * S * 1.0
    dw = tl.zeros([CB], dtype=tl.float32)
    db = tl.zeros([CB], dtype=tl.float32)
    dp = tl.zeros([CB], dtype=tl.float32)
    n_end = tl.minimum(p * NPP + NPP, N)
    for n in range(p * NPP, n_end):
        off = (cs[:, None].to(tl.int64) + n * C) * S + pos[None, :]
        mean = tl.load(MEAN + n * G + g)
        rstd = tl.load(RSTD + n * G + g)
        x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + off, mask=m, other=0.0).to(tl.float32)
        if RMS:  # noqa: SIM108 (a constexpr branch, as the forward's)
            d = x
        else:
            d = tl.where(m, x - mean, 0.0)
        xhat = d * rstd
        if RELU:  # the forward's y, computed as it was
            dy = tl.where(d * (rstd * w)[:, None] + bias[:, None] > 0.0, dy, 0.0)
        if TLU:  # the forward's y, computed as it was
            y = d * (rstd * w)[:, None] + bias[:, None]
            h = _tlu_mask(y, prm[:, None], dy)
            dp += tl.sum(dy - h, axis=1)
            dy = h
        if SWISH:
            sg = tl.sigmoid(prm[:, None] * x)
            fr = x * sg * rstd  # f rstd, 0 where masked
            cdy = tl.sum(dy, axis=1)
            cdyx = tl.sum(dy * fr, axis=1)
            dp += w * tl.sum(dy * fr * x * (1.0 - sg), axis=1)
            a = tl.sum(cdyx * w, axis=0) / count
            fp = sg + prm[:, None] * x * sg * (1.0 - sg)
            # the variance's share against the exact mean: the output does not subtract the
            # mean, so its float32 error (~5e-4 at mean 1e4) would be all of dx's error
            dm = tl.sum(tl.sum(d, axis=1), axis=0) / count
            dx = rstd * (w[:, None] * dy * fp - (xhat - dm * rstd) * a)
        else:
            cdy = tl.sum(dy, axis=1)
            cdyx = tl.sum(dy * xhat, axis=1)
            a = tl.sum(cdyx * w, axis=0) / count
            if RMS:
                dx = rstd * (w[:, None] * dy - xhat * a)
            else:
                b = tl.sum(cdy * w, axis=0) / count
                dx = rstd * (w[:, None] * dy - xhat * a - b)
        dw += cdyx
        db += cdy
        tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=m)
    tl.store(PDW + p * C + cs, dw, mask=cmask)
    tl.store(PDB + p * C + cs, db, mask=cmask)
    if TLU:
        tl.store(PDP + p * C + cs, dp, mask=cmask)
    if SWISH:
        tl.store(PDP + p * C + cs, dp, mask=cmask)


@triton.jit
def _token_fwd(
    X,
    Y,
    W,
    B,
    MEAN,
    RSTD,
    R,
    D,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RELU: tl.constexpr,
    RB: tl.constexpr,
    DB: tl.constexpr,
    RMS: tl.constexpr = False,
):
    """Layer norm (``RMS``: RMSNorm, no centering: the mean stored is 0 and ``var`` is the
    mean square) of ``RB`` rows of a contiguous ``(R, D)`` tensor, each in registers."""
    rows = tl.program_id(0) * RB + tl.arange(0, RB)
    cols = tl.arange(0, DB)
    rmask = rows < R
    cmask = cols < D
    m = rmask[:, None] & cmask[None, :]
    off = rows[:, None].to(tl.int64) * D + cols[None, :]
    x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
    if RMS:
        mean = tl.zeros([RB], dtype=tl.float32)
        d = x
    else:
        mean = tl.sum(x, axis=1) / D
        d = tl.where(m, x - mean[:, None], 0.0)
    var = tl.sum(d * d, axis=1) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    y = d * rstd[:, None]
    if HAS_W:
        y *= tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if RELU:
        y = tl.maximum(y, 0.0)
    tl.store(Y + off, y.to(Y.dtype.element_ty), mask=m)
    tl.store(MEAN + rows, mean, mask=rmask)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _token_bwd(
    X,
    DY,
    DX,
    W,
    B,
    MEAN,
    RSTD,
    PDW,
    PDB,
    R,
    D,
    RPP,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RELU: tl.constexpr,
    RB: tl.constexpr,
    DB: tl.constexpr,
    RMS: tl.constexpr = False,
    ACC_ROWS: tl.constexpr = True,
):
    """``dx`` of rows ``p*RPP ...`` (``RB`` at a time), and this program's column sums of
    ``dy * xhat`` and ``dy`` at ``PDW/PDB[p, :]`` (``RMS``: no centering, so no ``mean(w dy)``
    term in ``dx``). ``ACC_ROWS``: the column sums kept per row of the tile and summed over
    its rows once, after the loop, where the tile's rows span warps (bfloat16 tiles: a
    cross-warp reduction through shared memory in every iteration otherwise)."""
    p = tl.program_id(0)
    cols = tl.arange(0, DB)
    cmask = cols < D
    w = tl.full([DB], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    bias = tl.zeros([DB], dtype=tl.float32)
    if HAS_B:
        bias = tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([DB], dtype=tl.float32)
    db = tl.zeros([DB], dtype=tl.float32)
    dw_rows = tl.zeros([RB, DB], dtype=tl.float32)
    db_rows = tl.zeros([RB, DB], dtype=tl.float32)
    r_end = tl.minimum(p * RPP + RPP, R)
    for r0 in range(p * RPP, r_end, RB):
        rows = r0 + tl.arange(0, RB)
        rmask = rows < r_end
        m = rmask[:, None] & cmask[None, :]
        off = rows[:, None].to(tl.int64) * D + cols[None, :]
        mean = tl.load(MEAN + rows, mask=rmask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + off, mask=m, other=0.0).to(tl.float32)
        xhat = tl.where(m, (x - mean[:, None]) * rstd[:, None], 0.0)
        if RELU:
            dy = tl.where(xhat * w[None, :] + bias[None, :] > 0.0, dy, 0.0)
        if ACC_ROWS:
            dw_rows += dy * xhat
            db_rows += dy
        else:
            dw += tl.sum(dy * xhat, axis=0)
            db += tl.sum(dy, axis=0)
        wdy = dy * w[None, :]
        a = tl.sum(wdy * xhat, axis=1) / D
        if RMS:
            dx = rstd[:, None] * (wdy - xhat * a[:, None])
        else:
            b = tl.sum(wdy, axis=1) / D
            dx = rstd[:, None] * (wdy - xhat * a[:, None] - b[:, None])
        tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=m)
    if ACC_ROWS:
        dw = tl.sum(dw_rows, axis=0)
        db = tl.sum(db_rows, axis=0)
    tl.store(PDW + p * D + cols, dw, mask=cmask)
    tl.store(PDB + p * D + cols, db, mask=cmask)


@triton.jit
def _group_cells(G, K, GB: tl.constexpr, KB: tl.constexpr):
    """A row's ``G`` groups of ``K`` consecutive channels as a ``(GB, KB)`` tile: the groups'
    indices and mask, the channels' indices and mask."""
    gs = tl.arange(0, GB)
    ks = tl.arange(0, KB)
    cs = gs[:, None] * K + ks[None, :]
    return gs, gs < G, cs, (gs < G)[:, None] & (ks < K)[None, :]


@triton.jit
def _token_group_fwd(
    X,
    Y,
    W,
    B,
    P,
    MEAN,
    RSTD,
    VAR,
    R,
    D,
    G,
    K,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RELU: tl.constexpr,
    RB: tl.constexpr,
    GB: tl.constexpr,
    KB: tl.constexpr,
    RMS: tl.constexpr = False,
    TLU: tl.constexpr = False,
    SWISH: tl.constexpr = False,
):
    """Group norm of ``RB`` rows of a contiguous ``(R, D)`` tensor, each row's ``G`` groups of
    ``K = D / G`` consecutive channels in registers as an ``(RB, GB, KB)`` tile; the
    statistics of (row ``r``, group ``g``) at ``MEAN/RSTD/VAR[r * G + g]``. The flags as
    :func:`_group_fwd`'s, per (row, group): FRN + TLU over tokens is ``RMS`` and ``TLU`` with
    one channel a group (``K = 1``: each value its own mean square), EvoNorm-S0 ``SWISH``."""
    rows = tl.program_id(0) * RB + tl.arange(0, RB)
    gs, gmask, cs, cmask = _group_cells(G, K, GB, KB)
    rmask = rows < R
    m = rmask[:, None, None] & cmask[None, :, :]
    off = rows[:, None, None].to(tl.int64) * D + cs[None, :, :]
    x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
    if RMS:
        mean = tl.zeros([RB, GB], dtype=tl.float32)
        d = x
    else:
        mean = tl.sum(x, axis=2) / K
        d = tl.where(m, x - mean[:, :, None], 0.0)
    var = tl.sum(d * d, axis=2) / K
    rstd = 1.0 / tl.sqrt(var + eps)
    if SWISH:  # the numerator is not centered
        v = tl.load(P + cs, mask=cmask, other=0.0).to(tl.float32)[None, :, :]
        y = x * tl.sigmoid(v * x) * rstd[:, :, None]
    else:
        y = d * rstd[:, :, None]
    if HAS_W:
        y *= tl.load(W + cs, mask=cmask, other=0.0).to(tl.float32)[None, :, :]
    if HAS_B:
        y += tl.load(B + cs, mask=cmask, other=0.0).to(tl.float32)[None, :, :]
    if RELU:
        y = tl.maximum(y, 0.0)
    if TLU:
        y = tl.maximum(y, tl.load(P + cs, mask=cmask, other=0.0).to(tl.float32)[None, :, :])
    tl.store(Y + off, y.to(Y.dtype.element_ty), mask=m)
    sets = rows[:, None].to(tl.int64) * G + gs[None, :]
    smask = rmask[:, None] & gmask[None, :]
    tl.store(MEAN + sets, mean, mask=smask)
    tl.store(RSTD + sets, rstd, mask=smask)
    tl.store(VAR + sets, var, mask=smask)


@triton.jit
def _token_group_bwd(
    X,
    DY,
    DX,
    W,
    B,
    P,
    MEAN,
    RSTD,
    PDW,
    PDB,
    PDP,
    R,
    D,
    G,
    K,
    RPP,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RELU: tl.constexpr,
    RB: tl.constexpr,
    GB: tl.constexpr,
    KB: tl.constexpr,
    ACC_ROWS: tl.constexpr = True,
    RMS: tl.constexpr = False,
    TLU: tl.constexpr = False,
    SWISH: tl.constexpr = False,
):
    """``dx`` of rows ``p*RPP ...`` (``RB`` at a time) of :func:`_token_group_fwd`, and this
    program's per-channel sums of ``dy * xhat`` and ``dy`` at ``PDW/PDB[p, :]`` (with ``TLU``
    or ``SWISH``, ``P``'s gradient at ``PDP[p, :]``):
    ``dx = rstd (w dy - mean_g(w dy) - xhat mean_g(w dy xhat))`` per (row, group) (``RMS``:
    no ``mean_g(w dy)`` term); ``TLU`` and ``SWISH`` as in :func:`_group_bwd`.
    ``ACC_ROWS``: as :func:`_token_bwd`'s."""
    p = tl.program_id(0)
    gs, gmask, cs, cmask = _group_cells(G, K, GB, KB)
    w = tl.full([GB, KB], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + cs, mask=cmask, other=0.0).to(tl.float32)
    bias = tl.zeros([GB, KB], dtype=tl.float32)
    if HAS_B:
        bias = tl.load(B + cs, mask=cmask, other=0.0).to(tl.float32)
    prm = tl.zeros([GB, KB], dtype=tl.float32)
    if TLU or SWISH:
        prm = tl.load(P + cs, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([GB, KB], dtype=tl.float32)
    db = tl.zeros([GB, KB], dtype=tl.float32)
    dp = tl.zeros([GB, KB], dtype=tl.float32)
    dw_rows = tl.zeros([RB, GB, KB], dtype=tl.float32)
    db_rows = tl.zeros([RB, GB, KB], dtype=tl.float32)
    dp_rows = tl.zeros([RB, GB, KB], dtype=tl.float32)
    r_end = tl.minimum(p * RPP + RPP, R)
    for r0 in range(p * RPP, r_end, RB):
        rows = r0 + tl.arange(0, RB)
        rmask = rows < r_end
        m = rmask[:, None, None] & cmask[None, :, :]
        off = rows[:, None, None].to(tl.int64) * D + cs[None, :, :]
        sets = rows[:, None].to(tl.int64) * G + gs[None, :]
        smask = rmask[:, None] & gmask[None, :]
        mean = tl.load(MEAN + sets, mask=smask, other=0.0)
        rstd = tl.load(RSTD + sets, mask=smask, other=0.0)
        x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + off, mask=m, other=0.0).to(tl.float32)
        d = tl.where(m, x - mean[:, :, None], 0.0)
        xhat = d * rstd[:, :, None]
        if RELU:  # the forward's y, computed as it was
            dy = tl.where(xhat * w[None, :, :] + bias[None, :, :] > 0.0, dy, 0.0)
        if TLU:  # the forward's y, computed as it was
            h = _tlu_mask(xhat * w[None, :, :] + bias[None, :, :], prm[None, :, :], dy)
            if ACC_ROWS:
                dp_rows += dy - h
            else:
                dp += tl.sum(dy - h, axis=0)
            dy = h
        wdy = dy * w[None, :, :]
        if SWISH:  # f = x sigmoid(v x), y = w f rstd + b
            sg = tl.sigmoid(prm[None, :, :] * x)
            fr = x * sg * rstd[:, :, None]  # f rstd, 0 where masked
            gv = dy * fr * x * (1.0 - sg)  # v's gradient over w
            a = tl.sum(wdy * fr, axis=2) / K
            fp = sg + prm[None, :, :] * x * sg * (1.0 - sg)
            # the variance's share against the exact mean, as in _group_bwd
            dm = tl.sum(d, axis=2) / K
            xc = xhat - (dm * rstd)[:, :, None]
            dx = rstd[:, :, None] * (wdy * fp - xc * a[:, :, None])
            if ACC_ROWS:
                dw_rows += dy * fr
                dp_rows += gv
            else:
                dw += tl.sum(dy * fr, axis=0)
                dp += tl.sum(gv, axis=0)
        else:
            if ACC_ROWS:
                dw_rows += dy * xhat
            else:
                dw += tl.sum(dy * xhat, axis=0)
            a = tl.sum(wdy * xhat, axis=2) / K
            if RMS:
                dx = rstd[:, :, None] * (wdy - xhat * a[:, :, None])
            else:
                b = tl.sum(wdy, axis=2) / K
                dx = rstd[:, :, None] * (wdy - xhat * a[:, :, None] - b[:, :, None])
        if ACC_ROWS:
            db_rows += dy
        else:
            db += tl.sum(dy, axis=0)
        tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=m)
    if ACC_ROWS:
        dw = tl.sum(dw_rows, axis=0)
        db = tl.sum(db_rows, axis=0)
        if TLU or SWISH:
            dp = tl.sum(dp_rows, axis=0)
    tl.store(PDW + p * D + cs, dw, mask=cmask)
    tl.store(PDB + p * D + cs, db, mask=cmask)
    if TLU:
        tl.store(PDP + p * D + cs, dp, mask=cmask)
    if SWISH:
        tl.store(PDP + p * D + cs, dp * w, mask=cmask)


@triton.jit
def _b0_params(BSTD, ISTD, V, W, n, C, cs, cmask, HAS_W: tl.constexpr, CB: tl.constexpr):
    """EvoNorm-B0's per-channel batch std, the sample's instance std, ``v`` and ``w``."""
    bstd = tl.load(BSTD + cs, mask=cmask, other=1.0)
    istd = tl.load(ISTD + n * C + cs, mask=cmask, other=1.0)
    v = tl.load(V + cs, mask=cmask, other=0.0).to(tl.float32)
    w = tl.full([CB], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + cs, mask=cmask, other=0.0).to(tl.float32)
    return bstd, istd, v, w


@triton.jit
def _b0_den(x, bstd, istd, v):
    """``den = max(bstd, v x + istd)`` and ``a``, the share of ``den``'s gradient that goes to
    ``bstd``: 1 where it is the larger, 1/2 at a tie (``torch.maximum``), else 0."""
    inst = v[:, None] * x + istd[:, None]
    den = tl.maximum(bstd[:, None], inst)
    a = tl.where(bstd[:, None] > inst, 1.0, tl.where(bstd[:, None] == inst, 0.5, 0.0))
    return den, a


@triton.jit
def _b0_apply(
    X,
    Y,
    BSTD,
    ISTD,
    V,
    W,
    B,
    N,
    C,
    S,
    sn,
    sc,
    ss,
    SPP,
    NK,
    NCB,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    CB: tl.constexpr,
    SB: tl.constexpr,
):
    """EvoNorm-B0's map ``y = x / max(bstd[c], v[c] x + istd[n, c]) * w[c] + b[c]`` over the
    chunks of :func:`_partial_stats` (per (sample, channel) sets), the last chunk first."""
    n = N - 1 - tl.program_id(2)
    cs, cmask, off, s0, s_end = _chunk(
        NK - 1 - tl.program_id(0), NCB - 1 - tl.program_id(1), n, C, S, sn, sc, SPP, CB
    )
    bstd, istd, v, w = _b0_params(BSTD, ISTD, V, W, n, C, cs, cmask, HAS_W, CB)
    b = tl.zeros([CB], dtype=tl.float32)
    if HAS_B:
        b = tl.load(B + cs, mask=cmask, other=0.0).to(tl.float32)
    for s in range(s0, s_end, SB):
        o, m = _positions(off, s, s_end, ss, cmask, SB)
        x = tl.load(X + o, mask=m, other=0.0).to(tl.float32)
        den, _ = _b0_den(x, bstd, istd, v)
        y = x / den * w[:, None] + b[:, None]
        tl.store(Y + o, y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _b0_partial_grad(
    X,
    DY,
    BSTD,
    ISTD,
    V,
    W,
    P,
    C,
    S,
    sn,
    sc,
    ss,
    PSTRIDE,
    SPP,
    NK,
    HAS_W: tl.constexpr,
    CB: tl.constexpr,
    SB: tl.constexpr,
):
    """Per (sample, channel, chunk), with ``den`` and ``a`` as in :func:`_b0_den`,
    ``g = w dy`` and ``q = g x / den^2``: ``sum(a q)``, ``sum((1 - a) q)``,
    ``sum(dy x / den)``, ``sum(dy)``, ``sum((1 - a) q x)``, stored at
    ``P + k * PSTRIDE + (n*C + c)*NK + kk`` for ``k = 0..4``."""
    kk = tl.program_id(0)
    n = tl.program_id(2)
    cs, cmask, off, s0, s_end = _chunk(kk, tl.program_id(1), n, C, S, sn, sc, SPP, CB)
    bstd, istd, v, w = _b0_params(BSTD, ISTD, V, W, n, C, cs, cmask, HAS_W, CB)
    p_a = tl.zeros([CB], dtype=tl.float32)
    p_b = tl.zeros([CB], dtype=tl.float32)
    p_w = tl.zeros([CB], dtype=tl.float32)
    p_dy = tl.zeros([CB], dtype=tl.float32)
    p_v = tl.zeros([CB], dtype=tl.float32)
    for s in range(s0, s_end, SB):
        o, m = _positions(off, s, s_end, ss, cmask, SB)
        x = tl.load(X + o, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + o, mask=m, other=0.0).to(tl.float32)
        den, a = _b0_den(x, bstd, istd, v)
        q = w[:, None] * dy * x / (den * den)
        p_a += tl.sum(a * q, axis=1)
        p_b += tl.sum((1.0 - a) * q, axis=1)
        p_w += tl.sum(dy * x / den, axis=1)
        p_dy += tl.sum(dy, axis=1)
        p_v += tl.sum((1.0 - a) * q * x, axis=1)
    idx = (n.to(tl.int64) * C + cs) * NK + kk
    tl.store(P + idx, p_a, mask=cmask)
    tl.store(P + PSTRIDE + idx, p_b, mask=cmask)
    tl.store(P + 2 * PSTRIDE + idx, p_w, mask=cmask)
    tl.store(P + 3 * PSTRIDE + idx, p_dy, mask=cmask)
    tl.store(P + 4 * PSTRIDE + idx, p_v, mask=cmask)


@triton.jit
def _b0_apply_grad(
    X,
    DY,
    DX,
    BSTD,
    ISTD,
    V,
    W,
    K1,
    K0,
    N,
    C,
    S,
    sn,
    sc,
    ss,
    SPP,
    NK,
    NCB,
    HAS_W: tl.constexpr,
    CB: tl.constexpr,
    SB: tl.constexpr,
):
    """EvoNorm-B0's ``dx = g / den - v (1 - a) g x / den^2 - x k1[n, c] + k0[n, c]`` (names as
    in :func:`_b0_partial_grad`; ``k1``, ``k0`` carry the statistics' share), the last chunk
    first."""
    n = N - 1 - tl.program_id(2)
    cs, cmask, off, s0, s_end = _chunk(
        NK - 1 - tl.program_id(0), NCB - 1 - tl.program_id(1), n, C, S, sn, sc, SPP, CB
    )
    bstd, istd, v, w = _b0_params(BSTD, ISTD, V, W, n, C, cs, cmask, HAS_W, CB)
    k1 = tl.load(K1 + n * C + cs, mask=cmask, other=0.0)
    k0 = tl.load(K0 + n * C + cs, mask=cmask, other=0.0)
    for s in range(s0, s_end, SB):
        o, m = _positions(off, s, s_end, ss, cmask, SB)
        x = tl.load(X + o, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + o, mask=m, other=0.0).to(tl.float32)
        den, a = _b0_den(x, bstd, istd, v)
        g = w[:, None] * dy
        dx = g / den - v[:, None] * (1.0 - a) * g * x / (den * den) - x * k1[:, None] + k0[:, None]
        tl.store(DX + o, dx.to(DX.dtype.element_ty), mask=m)


# -- the zoo's small kernels: per-channel coefficients on (N, C) statistics -----------------
# One launch each in place of the tens of small torch ops (a CUDA launch each) that the
# two-phase zoo norms spent between their tensor-sized kernels; tiles of (NB samples, CB
# channels), so a program's loop over the samples is a few wide loads.


@triton.jit
def _lerp(start, end, weight):
    """``Tensor.lerp_``: ``start + w (end - start)`` below ``w = 0.5``, else
    ``end - (end - start)(1 - w)``."""
    low = start + weight * (end - start)
    high = end - (end - start) * (1.0 - weight)
    return tl.where(weight < 0.5, low, high)


@triton.jit
def _renorm_coef(
    MEAN,
    RSTD,
    VAR,
    RMEAN,
    RVAR,
    W,
    B,
    SCALE,
    SHIFT,
    R,
    D,
    C,
    eps,
    r_min,
    r_max,
    d_max,
    factor,
    unbias,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    CB: tl.constexpr,
):
    """Batch Renorm's per-channel ``r = clip(sigma_B / sigma, r_min, r_max)``,
    ``d = clip((mu_B - mu) / sigma, -d_max, d_max)`` (``sigma = sqrt(running_var + eps)``),
    the map's weight ``w r`` and bias ``w d + b``; then the running statistics blended with
    the batch's (``Tensor.lerp_``, the variance unbiased)."""
    cs = tl.program_id(0) * CB + tl.arange(0, CB)
    m = cs < C
    mean = tl.load(MEAN + cs, mask=m, other=0.0)
    rstd = tl.load(RSTD + cs, mask=m, other=1.0)
    var = tl.load(VAR + cs, mask=m, other=1.0)
    rm = tl.load(RMEAN + cs, mask=m, other=0.0).to(tl.float32)
    rv = tl.load(RVAR + cs, mask=m, other=1.0).to(tl.float32)
    sigma = tl.sqrt(rv + eps)
    r = tl.minimum(tl.maximum(1.0 / rstd / sigma, r_min), r_max)
    d = tl.minimum(tl.maximum((mean - rm) / sigma, -d_max), d_max)
    w = tl.full([CB], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + cs, mask=m, other=0.0).to(tl.float32)
    shift = w * d
    if HAS_B:
        shift += tl.load(B + cs, mask=m, other=0.0).to(tl.float32)
    tl.store(SCALE + cs, w * r, mask=m)
    tl.store(SHIFT + cs, shift, mask=m)
    tl.store(R + cs, r, mask=m)
    tl.store(D + cs, d, mask=m)
    tl.store(RMEAN + cs, _lerp(rm, mean, factor).to(RMEAN.dtype.element_ty), mask=m)
    tl.store(RVAR + cs, _lerp(rv, var * unbias, factor).to(RVAR.dtype.element_ty), mask=m)


@triton.jit
def _tile(n, n_end, cs, cmask, C, NB: tl.constexpr):
    """Offsets and mask of the ``(NB, CB)`` tile of an ``(N, C)`` array at samples
    ``n ... min(n + NB, n_end)`` and channels ``cs``."""
    ns = n + tl.arange(0, NB)
    m = (ns < n_end)[:, None] & cmask[None, :]
    return ns[:, None].to(tl.int64) * C + cs[None, :], m


@triton.jit
def _merge_samples(MEAN_I, VAR_I, n0, n1, C, cs, cmask, CB: tl.constexpr, NB: tl.constexpr):
    """The mean and biased variance per channel ``cs`` of samples ``n0 ... n1`` (equal counts)
    from their ``(N, C)`` means and biased variances: ``mu = mean(mu_i)``,
    ``var = mean(var_i + (mu_i - mu)^2)`` (Chan et al.'s merge, stable in float32)."""
    count = (n1 - n0).to(tl.float32)
    acc = tl.zeros([NB, CB], dtype=tl.float32)
    for n in range(n0, n1, NB):
        off, m = _tile(n, n1, cs, cmask, C, NB)
        acc += tl.load(MEAN_I + off, mask=m, other=0.0)
    mu = tl.sum(acc, axis=0) / count
    acc = tl.zeros([NB, CB], dtype=tl.float32)
    for n in range(n0, n1, NB):
        off, m = _tile(n, n1, cs, cmask, C, NB)
        mi = tl.load(MEAN_I + off, mask=m, other=0.0)
        vi = tl.load(VAR_I + off, mask=m, other=0.0)
        acc += tl.where(m, vi + (mi - mu[None, :]) * (mi - mu[None, :]), 0.0)
    return mu, tl.sum(acc, axis=0) / count


@triton.jit
def _virtual_batch(N, C, size, CB: tl.constexpr):
    """A Ghost BN coefficient program's channels (``program_id(0)``'s block: ``cs``, mask)
    and virtual batch ``k = program_id(1)``: its samples ``n0 ... n1``."""
    cs = tl.program_id(0) * CB + tl.arange(0, CB)
    n0 = tl.program_id(1) * size
    return cs, cs < C, n0, tl.minimum(n0 + size, N)


@triton.jit
def _store_per_sample(P, Q, p, q, n0, n1, cs, cmask, C, CB: tl.constexpr, NB: tl.constexpr):
    """The channels' values ``p`` and ``q`` ``(CB,)`` stored for each sample ``n0 ... n1`` of
    ``P`` and ``Q`` ``(N, C)``."""
    for n in range(n0, n1, NB):
        off, m = _tile(n, n1, cs, cmask, C, NB)
        tl.store(P + off, tl.zeros([NB, CB], dtype=tl.float32) + p[None, :], mask=m)
        tl.store(Q + off, tl.zeros([NB, CB], dtype=tl.float32) + q[None, :], mask=m)


@triton.jit
def _ghost_coef(
    MEAN_I,
    VAR_I,
    MEANS,
    VARS,
    MEAN,
    RSTD,
    N,
    C,
    size,
    eps,
    CB: tl.constexpr,
    NB: tl.constexpr,
):
    """Ghost BN's statistics of virtual batch ``k = program_id(1)`` (samples
    ``k*size ... min((k+1)*size, N)``), merged from its samples' ``(N, C)`` means and biased
    variances: ``mu_k = mean(mu_i)``, ``var_k = mean(var_i + (mu_i - mu_k)^2)`` (equal
    counts), stored at ``MEANS``/``VARS`` ``(K, C)``, and each of its samples' ``MEAN`` and
    ``RSTD = 1/sqrt(var_k + eps)`` ``(N, C)`` for the map."""
    cs, cmask, n0, n1 = _virtual_batch(N, C, size, CB)
    k = tl.program_id(1)
    mu, var = _merge_samples(MEAN_I, VAR_I, n0, n1, C, cs, cmask, CB, NB)
    tl.store(MEANS + k * C + cs, mu, mask=cmask)
    tl.store(VARS + k * C + cs, var, mask=cmask)
    rstd = 1.0 / tl.sqrt(var + eps)
    _store_per_sample(MEAN, RSTD, mu, rstd, n0, n1, cs, cmask, C, CB, NB)


@triton.jit
def _ghost_grad_coef(
    SDY,
    SDYX,
    W,
    A,
    B,
    N,
    C,
    size,
    inv_s,
    HAS_W: tl.constexpr,
    CB: tl.constexpr,
    NB: tl.constexpr,
):
    """Batch norm's backward coefficients of virtual batch ``k = program_id(1)`` from its
    samples' ``sum(dy)``, ``sum(dy x_hat)`` ``(N, C)``: ``b = w mean_k(dy)``,
    ``a = w mean_k(dy x_hat)`` (``inv_s = 1/S``), stored for each of its samples ``(N, C)``
    for the map-gradient kernel."""
    cs, cmask, n0, n1 = _virtual_batch(N, C, size, CB)
    acc_dy = tl.zeros([NB, CB], dtype=tl.float32)
    acc_dyx = tl.zeros([NB, CB], dtype=tl.float32)
    for n in range(n0, n1, NB):
        off, m = _tile(n, n1, cs, cmask, C, NB)
        acc_dy += tl.load(SDY + off, mask=m, other=0.0)
        acc_dyx += tl.load(SDYX + off, mask=m, other=0.0)
    scale = inv_s / (n1 - n0).to(tl.float32) + tl.zeros([CB], dtype=tl.float32)
    if HAS_W:
        scale *= tl.load(W + cs, mask=cmask, other=0.0).to(tl.float32)
    b = tl.sum(acc_dy, axis=0) * scale
    a = tl.sum(acc_dyx, axis=0) * scale
    _store_per_sample(A, B, a, b, n0, n1, cs, cmask, C, CB, NB)


@triton.jit
def _b0_coef(
    MEAN_I,
    VAR_I,
    RVAR,
    BSTD,
    ISTD,
    MEAN_B,
    N,
    C,
    eps,
    keep,
    factor,
    unbias,
    BATCH: tl.constexpr,
    UPDATE: tl.constexpr,
    CB: tl.constexpr,
    NB: tl.constexpr,
):
    """EvoNorm-B0's stds from the instance statistics ``(N, C)``: ``ISTD = sqrt(var_i + eps)``
    ``(N, C)``; ``BSTD = sqrt(var_B + eps)`` ``(C,)`` with, under ``BATCH``, the batch
    variance merged from the samples' (equal counts: ``mean_n var_i + mean_n (mu_i -
    mu_B)^2``; ``mu_B`` stored at ``MEAN_B``), else the running one; ``UPDATE``: the running
    variance becomes ``keep * rv + factor * var_B * unbias`` (``functional.evonorm_b0``'s)."""
    cs = tl.program_id(0) * CB + tl.arange(0, CB)
    cmask = cs < C
    if BATCH:
        mu, var_b = _merge_samples(MEAN_I, VAR_I, 0, N, C, cs, cmask, CB, NB)
        tl.store(MEAN_B + cs, mu, mask=cmask)
    else:
        var_b = tl.load(RVAR + cs, mask=cmask, other=1.0).to(tl.float32)
    tl.store(BSTD + cs, tl.sqrt(var_b + eps), mask=cmask)
    for n in range(0, N, NB):
        off, m = _tile(n, N, cs, cmask, C, NB)
        vi = tl.load(VAR_I + off, mask=m, other=0.0)
        tl.store(ISTD + off, tl.sqrt(vi + eps), mask=m)
    if UPDATE:
        rv = tl.load(RVAR + cs, mask=cmask, other=1.0).to(tl.float32)
        new = keep * rv + factor * (var_b * unbias)
        tl.store(RVAR + cs, new.to(RVAR.dtype.element_ty), mask=cmask)


@triton.jit
def _b0_grad_coef(
    P,
    ISTD,
    BSTD,
    MEAN_I,
    MEAN_B,
    K1,
    K0,
    G,
    N,
    C,
    PSTRIDE,
    inv_s,
    BATCH: tl.constexpr,
    CB: tl.constexpr,
    NB: tl.constexpr,
):
    """EvoNorm-B0's backward coefficients from :func:`_b0_partial_grad`'s sums per (sample,
    channel) (``P + k * PSTRIDE + n*C + c``, ``k = 0..4``: ``p_a, p_b, p_w, p_dy, p_v``):
    ``k1 = p_b / (S s_i)``, ``k0 = k1 mu_i``, under ``BATCH`` plus ``q = sum_n p_a / (N S s_b)``
    and ``q mu_B``, stored ``(N, C)``; the parameter gradients ``dv = -sum_n p_v``,
    ``dw = sum_n p_w``, ``db = sum_n p_dy`` at ``G + {0, 1, 2} * C + c``."""
    cs = tl.program_id(0) * CB + tl.arange(0, CB)
    cmask = cs < C
    acc_a = tl.zeros([NB, CB], dtype=tl.float32)
    acc_w = tl.zeros([NB, CB], dtype=tl.float32)
    acc_dy = tl.zeros([NB, CB], dtype=tl.float32)
    acc_v = tl.zeros([NB, CB], dtype=tl.float32)
    for n in range(0, N, NB):
        off, m = _tile(n, N, cs, cmask, C, NB)
        acc_a += tl.load(P + off, mask=m, other=0.0)
        acc_w += tl.load(P + 2 * PSTRIDE + off, mask=m, other=0.0)
        acc_dy += tl.load(P + 3 * PSTRIDE + off, mask=m, other=0.0)
        acc_v += tl.load(P + 4 * PSTRIDE + off, mask=m, other=0.0)
    tl.store(G + cs, -tl.sum(acc_v, axis=0), mask=cmask)
    tl.store(G + C + cs, tl.sum(acc_w, axis=0), mask=cmask)
    tl.store(G + 2 * C + cs, tl.sum(acc_dy, axis=0), mask=cmask)
    q = tl.zeros([CB], dtype=tl.float32)
    q0 = tl.zeros([CB], dtype=tl.float32)
    if BATCH:
        bstd = tl.load(BSTD + cs, mask=cmask, other=1.0)
        q = tl.sum(acc_a, axis=0) * inv_s / N / bstd
        q0 = q * tl.load(MEAN_B + cs, mask=cmask, other=0.0)
    for n in range(0, N, NB):
        off, m = _tile(n, N, cs, cmask, C, NB)
        p_b = tl.load(P + PSTRIDE + off, mask=m, other=0.0)
        istd = tl.load(ISTD + off, mask=m, other=1.0)
        mi = tl.load(MEAN_I + off, mask=m, other=0.0)
        k1 = p_b * inv_s / istd
        tl.store(K1 + off, k1 + q[None, :], mask=m)
        tl.store(K0 + off, k1 * mi + q0[None, :], mask=m)


@triton.jit
def _softmax3(P):
    """The softmax of the three logits at ``P`` (SwitchableNorm's IN, LN, BN weights)."""
    a0 = tl.load(P).to(tl.float32)
    a1 = tl.load(P + 1).to(tl.float32)
    a2 = tl.load(P + 2).to(tl.float32)
    top = tl.maximum(tl.maximum(a0, a1), a2)
    e0, e1, e2 = tl.exp(a0 - top), tl.exp(a1 - top), tl.exp(a2 - top)
    total = e0 + e1 + e2
    return e0 / total, e1 / total, e2 / total


@triton.jit
def _switch_bn(
    MEAN_I,
    VAR_I,
    RMEAN,
    RVAR,
    MEAN_BN,
    VAR_BN,
    N,
    C,
    keep,
    factor,
    unbias,
    BATCH: tl.constexpr,
    UPDATE: tl.constexpr,
    CB: tl.constexpr,
    NB: tl.constexpr,
):
    """SwitchableNorm's BN statistics per channel from the IN ones ``(N, C)``: under
    ``BATCH`` ``mu_bn = mean_n mu_i``, ``var_bn = mean_n (var_i + (mu_i - mu_bn)^2)`` (with
    ``UPDATE`` the running ones become ``keep * running + factor * batch``, the variance
    unbiased), else the running ones; stored at ``MEAN_BN``, ``VAR_BN`` ``(C,)``."""
    cs = tl.program_id(0) * CB + tl.arange(0, CB)
    cmask = cs < C
    if BATCH:
        mean, var = _merge_samples(MEAN_I, VAR_I, 0, N, C, cs, cmask, CB, NB)
        if UPDATE:
            rm = tl.load(RMEAN + cs, mask=cmask, other=0.0).to(tl.float32)
            rv = tl.load(RVAR + cs, mask=cmask, other=1.0).to(tl.float32)
            tl.store(RMEAN + cs, (keep * rm + factor * mean).to(RMEAN.dtype.element_ty), mask=cmask)
            new_var = keep * rv + factor * (var * unbias)
            tl.store(RVAR + cs, new_var.to(RVAR.dtype.element_ty), mask=cmask)
    else:
        mean = tl.load(RMEAN + cs, mask=cmask, other=0.0).to(tl.float32)
        var = tl.load(RVAR + cs, mask=cmask, other=1.0).to(tl.float32)
    tl.store(MEAN_BN + cs, mean, mask=cmask)
    tl.store(VAR_BN + cs, var, mask=cmask)


@triton.jit
def _sample_tile(c, n0, N, C, RB: tl.constexpr, CB: tl.constexpr):
    """Offsets and masks of the ``(RB, CB)`` tile of an ``(N, C)`` array at samples
    ``n0 ...`` and channels ``c ...``; the channels and their mask."""
    ns = n0 + tl.arange(0, RB)
    cs = c + tl.arange(0, CB)
    m = (ns < N)[:, None] & (cs < C)[None, :]
    return ns[:, None].to(tl.int64) * C + cs[None, :], m, cs, cs < C


@triton.jit
def _switch_mix(
    MEAN_I,
    VAR_I,
    MEAN_BN,
    VAR_BN,
    MW,
    VW,
    MEAN,
    RSTD,
    MEAN_LN,
    VAR_LN,
    N,
    C,
    eps,
    RB: tl.constexpr,
    CB: tl.constexpr,
):
    """SwitchableNorm's mixture for samples ``program_id(0) * RB ...``: the LN statistics
    (``mu_ln = mean_c mu_i``, ``var_ln = mean_c (var_i + (mu_i - mu_ln)^2)``, stored at
    ``MEAN_LN``, ``VAR_LN`` ``(N,)``), then per (sample, channel) ``mean = sum_k wm_k mu_k``,
    ``var = sum_k wv_k var_k`` (softmax weights of the logits ``MW``, ``VW``) and
    ``RSTD = 1/sqrt(var + eps)``, stored ``(N, C)``."""
    n0 = tl.program_id(0) * RB
    ns = n0 + tl.arange(0, RB)
    acc = tl.zeros([RB, CB], dtype=tl.float32)
    for c in range(0, C, CB):
        off, m, _, _ = _sample_tile(c, n0, N, C, RB, CB)
        acc += tl.load(MEAN_I + off, mask=m, other=0.0)
    mean_ln = tl.sum(acc, axis=1) / C
    acc = tl.zeros([RB, CB], dtype=tl.float32)
    for c in range(0, C, CB):  # the merge's stable form, as _merge_samples's
        off, m, _, _ = _sample_tile(c, n0, N, C, RB, CB)
        d = tl.load(MEAN_I + off, mask=m, other=0.0) - mean_ln[:, None]
        acc += tl.where(m, tl.load(VAR_I + off, mask=m, other=0.0) + d * d, 0.0)
    var_ln = tl.sum(acc, axis=1) / C
    tl.store(MEAN_LN + ns, mean_ln, mask=ns < N)
    tl.store(VAR_LN + ns, var_ln, mask=ns < N)
    wm0, wm1, wm2 = _softmax3(MW)
    wv0, wv1, wv2 = _softmax3(VW)
    for c in range(0, C, CB):
        off, m, cs, cmask = _sample_tile(c, n0, N, C, RB, CB)
        mi = tl.load(MEAN_I + off, mask=m, other=0.0)
        vi = tl.load(VAR_I + off, mask=m, other=0.0)
        mean_bn = tl.load(MEAN_BN + cs, mask=cmask, other=0.0)
        var_bn = tl.load(VAR_BN + cs, mask=cmask, other=0.0)
        mean = wm0 * mi + wm1 * mean_ln[:, None] + wm2 * mean_bn[None, :]
        var = wv0 * vi + wv1 * var_ln[:, None] + wv2 * var_bn[None, :]
        tl.store(MEAN + off, mean, mask=m)
        tl.store(RSTD + off, 1.0 / tl.sqrt(var + eps), mask=m)


@triton.jit
def _switch_grad_bn(
    SDY,
    SDYX,
    RSTD,
    W,
    MEAN_I,
    VAR_I,
    MEAN_BN,
    VAR_BN,
    SUMS,
    N,
    C,
    HAS_W: tl.constexpr,
    CB: tl.constexpr,
    NB: tl.constexpr,
):
    """SwitchableNorm's backward, per channel: with ``dL/dmean = -w r sum(dy)`` and
    ``dL/dvar = -w r^2 sum(dy x_hat) / 2`` per (sample, channel) (``r`` the 1/std), their
    sums over the samples ``A_bn``, ``B_bn``, the parameter gradients ``dw = sum(dy x_hat)``,
    ``db = sum(dy)`` and the logits' per-channel terms ``sum_n dL/dmean mu_i``,
    ``sum_n dL/dvar var_i``, ``A_bn mu_bn``, ``B_bn var_bn``: rows 0-7 of ``SUMS`` ``(8, C)``."""
    cs = tl.program_id(0) * CB + tl.arange(0, CB)
    cmask = cs < C
    w = tl.full([CB], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + cs, mask=cmask, other=0.0).to(tl.float32)
    a_bn = tl.zeros([NB, CB], dtype=tl.float32)
    b_bn = tl.zeros([NB, CB], dtype=tl.float32)
    dw = tl.zeros([NB, CB], dtype=tl.float32)
    db = tl.zeros([NB, CB], dtype=tl.float32)
    g_m = tl.zeros([NB, CB], dtype=tl.float32)
    g_v = tl.zeros([NB, CB], dtype=tl.float32)
    for n in range(0, N, NB):
        off, m = _tile(n, N, cs, cmask, C, NB)
        s_dy = tl.load(SDY + off, mask=m, other=0.0)
        s_dyx = tl.load(SDYX + off, mask=m, other=0.0)
        r = tl.load(RSTD + off, mask=m, other=0.0)
        d_mean = -(w[None, :] * r) * s_dy
        d_var = -0.5 * (w[None, :] * r * r) * s_dyx
        a_bn += d_mean
        b_bn += d_var
        dw += s_dyx
        db += s_dy
        g_m += d_mean * tl.load(MEAN_I + off, mask=m, other=0.0)
        g_v += d_var * tl.load(VAR_I + off, mask=m, other=0.0)
    a = tl.sum(a_bn, axis=0)
    b = tl.sum(b_bn, axis=0)
    tl.store(SUMS + cs, a, mask=cmask)
    tl.store(SUMS + C + cs, b, mask=cmask)
    tl.store(SUMS + 2 * C + cs, tl.sum(dw, axis=0), mask=cmask)
    tl.store(SUMS + 3 * C + cs, tl.sum(db, axis=0), mask=cmask)
    tl.store(SUMS + 4 * C + cs, tl.sum(g_m, axis=0), mask=cmask)
    tl.store(SUMS + 5 * C + cs, tl.sum(g_v, axis=0), mask=cmask)
    tl.store(SUMS + 6 * C + cs, a * tl.load(MEAN_BN + cs, mask=cmask, other=0.0), mask=cmask)
    tl.store(SUMS + 7 * C + cs, b * tl.load(VAR_BN + cs, mask=cmask, other=0.0), mask=cmask)


@triton.jit
def _switch_grad_ln(
    SDY,
    SDYX,
    RSTD,
    W,
    MEAN_I,
    MEAN,
    MEAN_LN,
    VAR_LN,
    MEAN_BN,
    SUMS,
    MW,
    VW,
    A,
    B,
    LN_TERMS,
    N,
    C,
    S,
    BATCH: tl.constexpr,
    HAS_W: tl.constexpr,
    RB: tl.constexpr,
    CB: tl.constexpr,
):
    r"""SwitchableNorm's backward for samples ``program_id(0) * RB ...``: ``A_ln``, ``B_ln``
    (the sums of ``dL/dmean``, ``dL/dvar`` over the channels; the logits' terms
    ``A_ln mu_ln``, ``B_ln var_ln`` at ``LN_TERMS`` ``(2, N)``), then the IN statistics'
    gradients ``G_mu``, ``G_var`` (``_switch_mix_backward``'s closed form; the BN terms,
    from ``SUMS``, under ``BATCH``) and the map-gradient kernel's coefficients per (sample,
    channel): ``q = 2 G_var / S``, ``a = -q / r^2``, ``b = -(q mean + G_mu / S - q mu_i) / r``
    at ``A``, ``B``."""
    n0 = tl.program_id(0) * RB
    ns = n0 + tl.arange(0, RB)
    a_ln = tl.zeros([RB, CB], dtype=tl.float32)
    b_ln = tl.zeros([RB, CB], dtype=tl.float32)
    for c in range(0, C, CB):
        off, m, cs, cmask = _sample_tile(c, n0, N, C, RB, CB)
        w = tl.full([CB], 1.0, tl.float32)
        if HAS_W:
            w = tl.load(W + cs, mask=cmask, other=0.0).to(tl.float32)
        r = tl.load(RSTD + off, mask=m, other=0.0)
        a_ln += -(w[None, :] * r) * tl.load(SDY + off, mask=m, other=0.0)
        b_ln += -0.5 * (w[None, :] * r * r) * tl.load(SDYX + off, mask=m, other=0.0)
    a_n = tl.sum(a_ln, axis=1)
    b_n = tl.sum(b_ln, axis=1)
    mean_ln = tl.load(MEAN_LN + ns, mask=ns < N, other=0.0)
    var_ln = tl.load(VAR_LN + ns, mask=ns < N, other=0.0)
    tl.store(LN_TERMS + ns, a_n * mean_ln, mask=ns < N)
    tl.store(LN_TERMS + N + ns, b_n * var_ln, mask=ns < N)
    wm0, wm1, wm2 = _softmax3(MW)
    wv0, wv1, wv2 = _softmax3(VW)
    for c in range(0, C, CB):
        off, m, cs, cmask = _sample_tile(c, n0, N, C, RB, CB)
        w = tl.full([CB], 1.0, tl.float32)
        if HAS_W:
            w = tl.load(W + cs, mask=cmask, other=0.0).to(tl.float32)
        r = tl.load(RSTD + off, mask=m, other=1.0)
        mi = tl.load(MEAN_I + off, mask=m, other=0.0)
        d_mean = -(w[None, :] * r) * tl.load(SDY + off, mask=m, other=0.0)
        d_var = -0.5 * (w[None, :] * r * r) * tl.load(SDYX + off, mask=m, other=0.0)
        g_mu = wm0 * d_mean + (wm1 / C) * a_n[:, None]
        g_mu += (2.0 * wv1 / C) * b_n[:, None] * (mi - mean_ln[:, None])
        g_var = wv0 * d_var + (wv1 / C) * b_n[:, None]
        if BATCH:
            a_bn = tl.load(SUMS + cs, mask=cmask, other=0.0)
            b_bn = tl.load(SUMS + C + cs, mask=cmask, other=0.0)
            mean_bn = tl.load(MEAN_BN + cs, mask=cmask, other=0.0)
            g_mu += (wm2 / N) * a_bn[None, :]
            g_mu += (2.0 * wv2 / N) * b_bn[None, :] * (mi - mean_bn[None, :])
            g_var += (wv2 / N) * b_bn[None, :]
        q = (2.0 / S) * g_var
        mean = tl.load(MEAN + off, mask=m, other=0.0)
        tl.store(A + off, -q / (r * r), mask=m)
        tl.store(B + off, -(q * mean + g_mu / S - q * mi) / r, mask=m)


@triton.jit
def _switch_grad_logits(SUMS, LN_TERMS, MW, VW, G, N, C, BLOCK: tl.constexpr):
    """SwitchableNorm's logits' gradients (one program): ``g_k`` the sums of the per-channel
    (``SUMS`` rows 4-7) and per-sample (``LN_TERMS``) terms, then the softmax's Jacobian
    ``w_k (g_k - sum_j w_j g_j)``; stored at ``G`` (mean's three, then variance's three)."""
    acc = tl.zeros([4, BLOCK], dtype=tl.float32)
    rows = tl.arange(0, 4)
    for c in range(0, C, BLOCK):
        cs = c + tl.arange(0, BLOCK)
        m = (cs < C)[None, :] & (rows < 4)[:, None]
        acc += tl.load(SUMS + (4 + rows[:, None]) * C + cs[None, :], mask=m, other=0.0)
    per_c = tl.sum(acc, axis=1)  # sum dmean mu_i, sum dvar var_i, A_bn mu_bn, B_bn var_bn
    acc = tl.zeros([2, BLOCK], dtype=tl.float32)
    rows2 = tl.arange(0, 2)
    for n in range(0, N, BLOCK):
        ns = n + tl.arange(0, BLOCK)
        m = (ns < N)[None, :] & (rows2 < 2)[:, None]
        acc += tl.load(LN_TERMS + rows2[:, None] * N + ns[None, :], mask=m, other=0.0)
    per_n = tl.sum(acc, axis=1)  # A_ln mu_ln, B_ln var_ln
    gm0 = tl.sum(tl.where(rows == 0, per_c, 0.0), axis=0)
    gv0 = tl.sum(tl.where(rows == 1, per_c, 0.0), axis=0)
    gm2 = tl.sum(tl.where(rows == 2, per_c, 0.0), axis=0)
    gv2 = tl.sum(tl.where(rows == 3, per_c, 0.0), axis=0)
    gm1 = tl.sum(tl.where(rows2 == 0, per_n, 0.0), axis=0)
    gv1 = tl.sum(tl.where(rows2 == 1, per_n, 0.0), axis=0)
    wm0, wm1, wm2 = _softmax3(MW)
    wv0, wv1, wv2 = _softmax3(VW)
    dot_m = wm0 * gm0 + wm1 * gm1 + wm2 * gm2
    dot_v = wv0 * gv0 + wv1 * gv1 + wv2 * gv2
    tl.store(G, wm0 * (gm0 - dot_m))
    tl.store(G + 1, wm1 * (gm1 - dot_m))
    tl.store(G + 2, wm2 * (gm2 - dot_m))
    tl.store(G + 3, wv0 * (gv0 - dot_v))
    tl.store(G + 4, wv1 * (gv1 - dot_v))
    tl.store(G + 5, wv2 * (gv2 - dot_v))


@triton.jit
def _ghost_blend(
    MEANS,
    VARS,
    RMEAN,
    RVAR,
    N,
    C,
    K,
    size,
    S,
    factor,
    tracked,
    CUMULATIVE: tl.constexpr,
    CB: tl.constexpr,
):
    """Ghost BN's running statistics after one batch-norm update per virtual batch, in order
    (as torch's ``F.batch_norm`` per virtual batch): ``running = f mu_k + (1 - f) running``,
    the variance unbiased over the ``min(size, N - k size) S`` values of virtual batch ``k``;
    ``f`` is ``factor``, or under ``CUMULATIVE`` ``1 / (tracked + k + 1)`` (``momentum=None``)."""
    cs = tl.program_id(0) * CB + tl.arange(0, CB)
    cmask = cs < C
    rm = tl.load(RMEAN + cs, mask=cmask, other=0.0).to(tl.float32)
    rv = tl.load(RVAR + cs, mask=cmask, other=1.0).to(tl.float32)
    for k in range(0, K):
        mean = tl.load(MEANS + k * C + cs, mask=cmask, other=0.0)
        var = tl.load(VARS + k * C + cs, mask=cmask, other=0.0)
        count = (tl.minimum(size, N - k * size) * S).to(tl.float32)
        f = factor
        if CUMULATIVE:
            f = 1.0 / (tracked + k + 1).to(tl.float32)
        rm = f * mean + (1.0 - f) * rm
        rv = f * (var * (count / tl.maximum(count - 1.0, 1.0))) + (1.0 - f) * rv
    tl.store(RMEAN + cs, rm.to(RMEAN.dtype.element_ty), mask=cmask)
    tl.store(RVAR + cs, rv.to(RVAR.dtype.element_ty), mask=cmask)
