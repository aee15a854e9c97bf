r"""Batch Renorm, SwitchableNorm, EvoNorm-B0, Ghost BN and FrozenBatchNorm on CUDA through the
Triton kernels of :mod:`normzoo.norms._triton` (FRN, EvoNorm-S0 and channels-first RMSNorm
are flags of the group kernels there).

Each norm here is a :class:`_Norm`: its forward on the kernels (the output and what the
backward needs), its backward on the kernels, its reference math (which the backward
differentiates under ``create_graph=True`` and where its first kernel call fails) and a
forward fallback on torch's kernels; one autograd Function (:class:`_ZooFunction`) and one
call path (:func:`_call`, with :func:`_triton._guarded`'s first-call fallback) serve them all.

* **Batch Renorm** ``y = w (r x_hat + d) + b`` is batch norm with the weight ``w r`` and the
  bias ``w d + b``, ``r`` and ``d`` constants to backprop: the batch-norm kernels, ``r``,
  ``d`` and the running statistics' blend in one small kernel (``_renorm_coef``),
  ``dw = r sum(dy x_hat) + d sum(dy)``.
* **SwitchableNorm**: per-(sample, channel) statistics (IN's), their mixture with LN's and BN's
  (``_switch_bn`` per channel, ``_switch_mix`` per sample), the map kernel; backward through
  the mixture in closed form (``_switch_grad_bn``, ``_switch_grad_ln``,
  ``_switch_grad_logits``).
* **EvoNorm-B0**: the same statistics (the batch variance merged from them by ``_b0_coef``),
  its own map and backward kernels (``_b0_*``, the backward's coefficients by
  ``_b0_grad_coef``).
* **Ghost BN**: the same statistics, each virtual batch's merged from its samples'
  (``_ghost_coef``; backward ``_ghost_grad_coef``).
* **FrozenBatchNorm**: the map kernels alone, one pass each way, the ReLU fused.

Written in the eleventh session, when no GPU was lent: checked under Triton's interpreter and
with the kernels emulated in torch (``tests/triton_interpreter_check.py``, in CI through
``tests/test_triton.py``). The coefficient kernels (twelfth session, likewise checked) replace
the tens of small torch ops per call that these paths spent on ``(N, C)`` and ``(C,)``
tensors, each a CUDA launch (counted by ``scripts/triton_launches.py``). The twentieth session
ran the GPU tests (``tests/test_triton_gpu.py``) on an H200, every kernel here forced on every
input it supports: all passed. Served where ``scripts/gpu_triton_ab.py`` measured them faster
per call than each norm's CUDA path without them (``_triton.ZOO_MEASURED``): FrozenBatchNorm's
eager path, whose host time per call was shorter, keeps its place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from normzoo import functional
from normzoo.norms import _triton as T

__all__ = [
    "B0State",
    "SwitchableState",
    "batch_renorm",
    "evonorm_b0",
    "frozen_batch_norm",
    "ghost_batch_norm",
    "switchable_norm",
]

_Params = tuple[Any, ...]  # (x, parameters...): Tensors or None
_Saved = tuple[Any, ...]  # what a forward leaves its backward: Tensors or None


class _Norm(NamedTuple):
    """A zoo norm on the kernels: ``forward(params, state) -> (out, saved)``,
    ``backward(dy, params, saved, state, needs) -> grads`` (``dy`` in ``x``'s layout, on its
    device), ``reference(params, saved, state) -> y`` (differentiable),
    ``fallback(params, state) -> out`` on torch's kernels, and ``running(state)``: the
    running statistics that the forward's kernels update (restored before the fallback
    where a later kernel of a first call fails)."""

    kind: str
    forward: Callable[[_Params, Any], tuple[Any, _Saved]]
    backward: Callable[[Tensor, _Params, _Saved, Any, tuple[bool, ...]], tuple[Any, ...]]
    reference: Callable[[_Params, _Saved, Any], Tensor]
    fallback: Callable[[_Params, Any], Any]
    running: Callable[[Any], tuple[Tensor, ...]] = lambda state: ()


def _zoo_forward(norm: _Norm, params: _Params, state: Any) -> tuple[Any, _Saved]:
    """``norm.forward`` on ``x``'s GPU: every forward here launches its kernels through this."""
    with T._device_of(params[0]):
        return norm.forward(params, state)


def _state_key(state: Any) -> tuple[Any, ...]:
    """The options of a state that select code (flags, sizes), not its floats (a cumulative
    momentum changes every step) or tensors."""
    return tuple(v for v in state if isinstance(v, bool | int))


class _ZooFunction(torch.autograd.Function):
    """``norm``'s output from the kernels; gradients of ``params`` (``x`` first) from its
    backward kernels, or under ``create_graph=True`` by differentiating its reference math.
    Outputs after the first (statistics) are not differentiable."""

    @staticmethod
    def forward(ctx: Any, norm: _Norm, state: Any, *params: Tensor | None) -> Any:  # type: ignore[override]
        out, saved = _zoo_forward(norm, params, state)
        ctx.save_for_backward(*params, *saved)
        ctx.norm, ctx.state, ctx.count = norm, state, len(params)
        if isinstance(out, tuple):
            ctx.mark_non_differentiable(*out[1:])
        ctx.set_materialize_grads(False)  # no zero-filled gradients of the statistics: launches
        return out

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if dy is None:  # (the output unused by what was differentiated)
            return (None,) * (2 + ctx.count)
        tensors = ctx.saved_tensors
        params, saved = tuple(tensors[: ctx.count]), tuple(tensors[ctx.count :])
        norm, state, needs = ctx.norm, ctx.state, ctx.needs_input_grad[2:]

        def reference(create_graph: bool) -> tuple[Tensor | None, ...]:
            y = functools.partial(norm.reference, params, saved, state)
            return T._differentiate(y, params, needs, dy, create_graph)

        if torch.is_grad_enabled():  # create_graph=True: the reference math, with a graph
            return (None, None, *reference(True))

        def kernels() -> tuple[Tensor | None, ...]:
            with T._device_of(params[0]):
                return norm.backward(T._in_layout(dy, params[0]), params, saved, state, needs)

        spec = T._Spec(norm.kind, 0, 0.0, False)
        key = T._key("bwd", params, spec, needs, *_state_key(state))
        return (None, None, *T._guarded(key, kernels, lambda: reference(False)))


def _call(norm: _Norm, state: Any, *params: Tensor | None) -> Any:
    """``norm`` of ``params`` through :class:`_ZooFunction` where autograd needs it, else its
    forward alone; its fallback where this kind of call fails the first time."""
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params)

    def run() -> Any:
        if grad:
            return _ZooFunction.apply(norm, state, *params)
        return _zoo_forward(norm, params, state)[0]

    spec = T._Spec(norm.kind, 0, 0.0, False)
    key = T._key("fwd", params, spec, grad, *_state_key(state))
    # a first call: the running statistics as they were, for a fallback after a kernel that
    # updated them (its coefficients kernel) when a later one failed
    kept = [] if key in T._proven else [(t, t.clone()) for t in norm.running(state)]

    def fallback() -> Any:
        for t, copy in kept:
            t.copy_(copy)
        return norm.fallback(params, state)

    return T._guarded(key, run, fallback)


#: The coefficient kernels' tiles: at most ``COEF_CB`` channels and ``COEF_TILE`` values.
COEF_CB, COEF_TILE = 128, 2048


def _coef_tiles(c: int, rows: int) -> tuple[int, int]:
    """``(CB, NB)``: the channels and samples (of ``rows``) of the coefficient kernels'
    tiles."""
    cb = min(T._pow2(c), COEF_CB)
    return cb, max(1, min(T._pow2(rows), COEF_TILE // cb))


def _map(x: Tensor, plan: T._Plan, mean: Tensor, rstd: Tensor, *affine: Any, **kw: Any) -> Tensor:
    """The map kernel ``y = (x - mean[set]) rstd[set] w[c] + b[c]``: ``affine = (w, b,
    set_n)`` with ``set_n`` 0 per channel, ``C`` per (sample, channel); ``kw``: ``RELU``."""
    weight, bias, set_n = affine
    y = torch.empty_like(x)
    T._launch(T._kernels()._apply, plan.grid,
        x, y, mean, rstd, weight, bias, None, plan.n, plan.c, plan.s, *plan.strides, set_n, 1,
        plan.spp, plan.nk, plan.ncb, HAS_W=weight is not None, HAS_B=bias is not None,
        RELU=kw.get("RELU", False), CB=plan.cb, SB=plan.sb, num_warps=plan.warps,
    )  # fmt: skip
    return y


def _instance_stats(x: Tensor, eps: float) -> tuple[T._Plan, Tensor, Tensor]:
    """The per-(sample, channel) plan, mean and biased variance ``(N, C)`` (the statistics
    kernels with one set per sample and channel)."""
    plan = T._plan(x, fold=False)
    mean, _, var = T._stats(x, plan, (plan.c, 1), eps)
    return plan, mean.view(plan.n, plan.c), var.view(plan.n, plan.c)


def _channel_view(x: Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.dim() - 2)


def _affine(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``y w + b`` per channel, in float32."""
    view = _channel_view(y)
    if weight is not None:
        y = y * weight.float().view(view)
    if bias is not None:
        y = y + bias.float().view(view)
    return y


# -- Batch Renorm -------------------------------------------------------------------------------
class _Renorm(NamedTuple):
    running_mean: Tensor
    running_var: Tensor
    factor: float
    r_max: float
    d_max: float
    eps: float


def _renorm_coefficients(mean: Tensor, rstd: Tensor, st: _Renorm) -> tuple[Tensor, Tensor]:
    """``r = clip(sigma_B / sigma, 1/r_max, r_max)``, ``d = clip((mu_B - mu) / sigma, +-d_max)``
    with ``sigma = sqrt(running_var + eps)``, in float32."""
    sigma = torch.sqrt(st.running_var.float() + st.eps)
    r = (rstd.reciprocal() / sigma).clamp_(1.0 / st.r_max, st.r_max)
    d = ((mean - st.running_mean.float()) / sigma).clamp_(-st.d_max, st.d_max)
    return r, d


def _blend(st: Any, mean: Tensor | None, var: Tensor, m: int) -> None:
    """The running statistics blended as batch norm's: ``lerp_`` with the unbiased variance."""
    if mean is not None:
        st.running_mean.lerp_(mean.to(st.running_mean.dtype), st.factor)
    st.running_var.lerp_((var * (m / max(m - 1, 1))).to(st.running_var.dtype), st.factor)


def _renorm_forward(params: _Params, st: _Renorm) -> tuple[Tensor, _Saved]:
    """The statistics; ``r``, ``d``, the map's weight ``w r`` and bias ``w d + b`` and the
    running statistics' blend in one small kernel (``_renorm_coef``); the map."""
    x, weight, bias = params
    plan = T._plan(x, fold=True)
    mean, rstd, var = T._stats(x, plan, (0, 1), st.eps)
    c, m = plan.c, x.numel() // plan.c
    scale, shift, r, d = torch.empty((4, c), device=x.device, dtype=torch.float32).unbind(0)
    cb = _coef_tiles(c, 1)[0]
    T._launch(T._kernels()._renorm_coef, (T._cdiv(c, cb),),
        mean, rstd, var, st.running_mean, st.running_var, weight, bias, scale, shift, r, d, c,
        st.eps, 1.0 / st.r_max, st.r_max, st.d_max, st.factor, m / max(m - 1, 1),
        HAS_W=weight is not None, HAS_B=bias is not None, CB=cb, num_warps=4,
    )  # fmt: skip
    y = _map(x, plan, mean, rstd, scale, shift, 0)
    return y, (mean, rstd, r, d, scale)


def _renorm_backward(
    dy: Tensor, params: _Params, saved: _Saved, st: _Renorm, needs: tuple[bool, ...]
) -> tuple[Tensor | None, ...]:
    """Batch norm's backward with the weight ``w r``; ``dw = r sum(dy x_hat) + d sum(dy)``."""
    x, weight, bias = params
    mean, rstd, r, d, scale = saved
    dx, dw, db, _ = T._two_phase_backward(
        dy, x, scale, None, mean, rstd, (0, 1), False, renorm=(r, d)
    )
    return (
        dx if needs[0] else None,
        dw.to(weight.dtype) if needs[1] else None,
        db.to(bias.dtype) if needs[2] else None,
    )


def _renorm_reference(params: _Params, saved: _Saved, st: _Renorm) -> Tensor:
    """``w (r x_hat + d) + b`` on torch's kernels with the saved ``r`` and ``d`` (constants)."""
    x, weight, bias = params
    r, d = saved[2], saved[3]
    view = _channel_view(x)
    xhat = F.batch_norm(x.float(), None, None, None, None, True, 0.0, st.eps)
    return _affine(xhat * r.view(view) + d.view(view), weight, bias).to(x.dtype)


def _renorm_fallback(params: _Params, st: _Renorm) -> Tensor:
    x = params[0]
    with torch.no_grad():
        var, mean = torch.var_mean(x.float(), [0, *range(2, x.dim())], correction=0)
        saved = (mean, var, *_renorm_coefficients(mean, torch.rsqrt(var + st.eps), st))
    y = _renorm_reference(params, saved, st)
    with torch.no_grad():
        _blend(st, mean, var, x.numel() // x.shape[1])
    return y


_RENORM = _Norm(
    "renorm", _renorm_forward, _renorm_backward, _renorm_reference, _renorm_fallback,
    lambda st: (st.running_mean, st.running_var),
)  # fmt: skip


def batch_renorm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running: tuple[Tensor, Tensor, float],
    limits: tuple[float, float],
    eps: float,
) -> Tensor:
    r"""Training-mode Batch Renorm of ``x`` ``(N, C, *spatial)`` on the batch-norm kernels:
    ``y = w ((x - mu_B) / sigma_B * r + d) + b`` with ``r = clip(sigma_B / sigma, 1/r_max,
    r_max)`` and ``d = clip((mu_B - mu) / sigma, -d_max, d_max)`` from the running statistics
    ``running = (running_mean, running_var, factor)`` (``sigma = sqrt(running_var + eps)``),
    which are then blended with the batch's as batch norm's; ``limits = (r_max, d_max)``.

    S. Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models", NeurIPS 2017, Algorithm 1."""
    return _call(_RENORM, _Renorm(*running, *limits, eps), x, weight, bias)


# -- SwitchableNorm ----------------------------------------------------------------------------
class SwitchableState(NamedTuple):
    """A SwitchableNorm call's state: the BN running statistics (or ``None``), whether BN's
    term takes the batch's statistics (``training``), the running-average ``factor``, ``eps``
    and whether the running statistics are updated."""

    running_mean: Tensor | None
    running_var: Tensor | None
    training: bool
    factor: float
    eps: float
    update: bool


def _switch_forward(params: _Params, st: SwitchableState) -> tuple[Tensor, _Saved]:
    """The IN statistics; the BN ones per channel (``_switch_bn``: the batch's, the running
    ones updated, or the running ones in eval), the LN ones per sample and the mixture's mean
    and 1/std per (sample, channel) (``_switch_mix``); the map."""
    x, mean_weight, var_weight, weight, bias = params
    plan, mean_in, var_in = _instance_stats(x, st.eps)
    n, c = plan.n, plan.c
    batch = st.training or st.running_mean is None or st.running_var is None
    mean_bn, var_bn = torch.empty((2, c), device=x.device, dtype=torch.float32).unbind(0)
    mean_ln, var_ln = torch.empty((2, n), device=x.device, dtype=torch.float32).unbind(0)
    mean, rstd = torch.empty((2, n * c), device=x.device, dtype=torch.float32).unbind(0)
    m = n * plan.s
    cb, nb = _coef_tiles(c, n)
    T._launch(T._kernels()._switch_bn, (T._cdiv(c, cb),),
        mean_in, var_in, st.running_mean, st.running_var, mean_bn, var_bn, n, c,
        1.0 - st.factor, st.factor, m / max(m - 1, 1), BATCH=batch, UPDATE=st.update, CB=cb,
        NB=nb, num_warps=4,
    )  # fmt: skip
    rb, cb = _sample_tiles(n, c)
    T._launch(T._kernels()._switch_mix, (T._cdiv(n, rb),),
        mean_in, var_in, mean_bn, var_bn, mean_weight, var_weight, mean, rstd, mean_ln, var_ln,
        n, c, st.eps, RB=rb, CB=cb, num_warps=4,
    )  # fmt: skip
    y = _map(x, plan, mean, rstd, weight, bias, plan.c)
    frozen = (None, None) if batch else (mean_bn, var_bn)  # the running statistics as used
    return y, (mean_in, var_in, mean, rstd, *frozen, mean_bn, var_bn, mean_ln, var_ln)


def _sample_tiles(n: int, c: int) -> tuple[int, int]:
    """``(RB, CB)``: the samples and channels of the per-sample coefficient kernels' tiles."""
    cb = min(T._pow2(c), COEF_CB)
    return max(1, min(T._pow2(n), COEF_TILE // cb, 16)), cb


def _switch_backward(
    dy: Tensor, params: _Params, saved: _Saved, st: SwitchableState, needs: tuple[bool, ...]
) -> tuple[Tensor | None, ...]:
    r"""The kernels' per-(sample, channel) ``sum(dy)``, ``sum(dy x_hat)`` give
    ``dL/dmean = -w r sum(dy)``, ``dL/dvar = -w r^2 sum(dy x_hat) / 2``; the mixture carries
    them to the IN statistics (``G_mu``, ``G_var``) and the logits in closed form (with ``A``,
    ``B`` the sums of ``dL/dmean``, ``dL/dvar`` over channels (LN) or samples (BN)):

    .. math::
        G_\mu = w_0 \frac{dL}{dmean} + w_1 \frac{A_{ln}}{C} + w_2 \frac{A_{bn}}{N}
            + w'_1 B_{ln} \frac{2 (\mu_{in} - \mu_{ln})}{C}
            + w'_2 B_{bn} \frac{2 (\mu_{in} - \mu_{bn})}{N},\quad
        G_{\sigma^2} = w'_0 \frac{dL}{dvar} + w'_1 \frac{B_{ln}}{C} + w'_2 \frac{B_{bn}}{N}

    (``sigma^2_ln = mean_c(sigma^2_in + mu_in^2) - mu_ln^2``, likewise BN's; in eval BN's
    statistics are the running ones, constants: no ``w_2``, ``w'_2`` terms), the logits'
    through the softmax, ``w (g - w . g)`` with ``g_k = sum dL/dmean * mu_k``; with
    ``dmean_in/dx = 1/S``, ``dvar_in/dx = 2 (x - mean_in)/S``: ``dx = r w dy + Q x + R``,
    ``Q = 2 G_var / S``, ``R = G_mu / S - Q mean_in``, the map-gradient kernel's
    ``r (w dy - x_hat a - b)`` with ``a = -Q / r^2``, ``b = -(Q mean + R) / r``. Kernels:
    the sums, ``_switch_grad_bn`` (per channel), ``_switch_grad_ln`` (per sample: ``a``,
    ``b``), ``_switch_grad_logits``, the map gradient."""
    x, mw, vw, weight, bias = params
    mean_in, var_in, mean, rstd, frozen_mean, _, mean_bn, var_bn, mean_ln, var_ln = saved
    plan = T._plan(x, fold=False)
    n, c = plan.n, plan.c
    sets = (c, 1)
    s_dy, s_dyx = T._grad_sums(dy, x, weight, None, mean, rstd, sets, False, plan).sum(3)
    k = T._kernels()
    sums = torch.empty((8, c), device=x.device, dtype=torch.float32)
    cb, nb = _coef_tiles(c, n)
    T._launch(k._switch_grad_bn, (T._cdiv(c, cb),),
        s_dy, s_dyx, rstd, weight, mean_in, var_in, mean_bn, var_bn, sums, n, c,
        HAS_W=weight is not None, CB=cb, NB=nb, num_warps=4,
    )  # fmt: skip
    a, b = torch.empty((2, n * c), device=x.device, dtype=torch.float32).unbind(0)
    ln_terms = torch.empty((2, n), device=x.device, dtype=torch.float32)
    rb, cb = _sample_tiles(n, c)
    T._launch(k._switch_grad_ln, (T._cdiv(n, rb),),
        s_dy, s_dyx, rstd, weight, mean_in, mean, mean_ln, var_ln, mean_bn, sums, mw, vw, a, b,
        ln_terms, n, c, plan.s, BATCH=frozen_mean is None, HAS_W=weight is not None, RB=rb,
        CB=cb, num_warps=4,
    )  # fmt: skip
    logits = torch.empty(6, device=x.device, dtype=torch.float32)
    T._launch(
        k._switch_grad_logits,
        (1,),
        sums,
        ln_terms,
        mw,
        vw,
        logits,
        n,
        c,
        BLOCK=min(T._pow2(max(n, c)), 1024),
        num_warps=4,
    )
    dx = T._grad_map(dy, x, weight, None, mean, rstd, a, b, sets, False, plan)
    return (
        dx if needs[0] else None,
        logits[:3].to(mw.dtype) if needs[1] else None,
        logits[3:].to(vw.dtype) if needs[2] else None,
        sums[2].to(weight.dtype) if needs[3] else None,
        sums[3].to(bias.dtype) if needs[4] else None,
    )


def _switch_reference(params: _Params, saved: _Saved, st: SwitchableState) -> Tensor:
    """``functional.switchable_norm`` with BN's term as in the forward (the batch's, or the
    running statistics then)."""
    x, mw, vw, weight, bias = params
    running = saved[4:6]
    batch = running[0] is None
    return functional.switchable_norm(
        x, mw, vw, *running, weight, bias, training=batch, momentum=0.0, eps=st.eps
    )[0]


def _switch_fallback(params: _Params, st: SwitchableState) -> Tensor:
    x, mw, vw, weight, bias = params
    y, new_mean, new_var = functional.switchable_norm(
        x, mw, vw, st.running_mean, st.running_var, weight, bias,
        training=st.training, momentum=st.factor, eps=st.eps,
    )  # fmt: skip
    if st.update:
        with torch.no_grad():
            st.running_mean.copy_(new_mean)  # type: ignore[union-attr]
            st.running_var.copy_(new_var)  # type: ignore[union-attr]
    return y


_SWITCH = _Norm(
    "switchable", _switch_forward, _switch_backward, _switch_reference, _switch_fallback,
    lambda st: (st.running_mean, st.running_var) if st.update else (),
)  # fmt: skip


def switchable_norm(
    x: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    state: SwitchableState,
) -> Tensor:
    r"""SwitchableNorm of ``x`` ``(N, C, *spatial)``: ``y = w (x - mean) / sqrt(var + eps) + b``
    with ``mean``, ``var`` softmax mixtures of the IN, LN and BN statistics
    (``normzoo.functional.switchable_norm``), on the two-phase kernels with one set per
    (sample, channel).

    P. Luo, J. Ren, Z. Peng, R. Zhang, J. Li, "Differentiable Learning-to-Normalize via
    Switchable Normalization", ICLR 2019."""
    return _call(_SWITCH, state, x, mean_weight, var_weight, weight, bias)


# -- EvoNorm-B0 --------------------------------------------------------------------------------
class B0State(NamedTuple):
    """An EvoNorm-B0 call's state: the running variance (or ``None``), whether it is a
    training call, the running-average ``factor``, ``eps`` and whether the running variance
    is updated."""

    running_var: Tensor | None
    training: bool
    factor: float
    eps: float
    update: bool


def _b0_forward(params: _Params, st: B0State) -> tuple[Tensor, _Saved]:
    """The instance statistics; the stds and the running variance's update in one small
    kernel (``_b0_coef``: the batch variance merged from the samples', or the running one in
    eval); ``_b0_apply``."""
    x, v, weight, bias = params
    plan, mean_i, var_i = _instance_stats(x, st.eps)
    n, c, s = plan.n, plan.c, plan.s
    batch = st.training or st.running_var is None
    frozen = None if batch else st.running_var.clone()  # type: ignore[union-attr]
    bstd, mean_b = torch.empty((2, c), device=x.device, dtype=torch.float32).unbind(0)
    istd = torch.empty(n * c, device=x.device, dtype=torch.float32)
    m = n * s
    cb, nb = _coef_tiles(c, n)
    T._launch(T._kernels()._b0_coef, (T._cdiv(c, cb),),
        mean_i, var_i, st.running_var, bstd, istd, mean_b, n, c, st.eps, 1.0 - st.factor,
        st.factor, m / max(m - 1, 1), BATCH=batch, UPDATE=st.update, CB=cb, NB=nb,
        num_warps=4,
    )  # fmt: skip
    y = torch.empty_like(x)
    T._launch(T._kernels()._b0_apply, plan.grid,
        x, y, bstd, istd, v, weight, bias, n, c, s, *plan.strides, plan.spp, plan.nk,
        plan.ncb, HAS_W=weight is not None, HAS_B=bias is not None, CB=plan.cb, SB=plan.sb,
        num_warps=plan.warps,
    )  # fmt: skip
    return y, (mean_i, istd, bstd, mean_b if batch else None, frozen)


def _b0_backward(
    dy: Tensor, params: _Params, saved: _Saved, st: B0State, needs: tuple[bool, ...]
) -> tuple[Tensor | None, ...]:
    r"""With ``den = max(s_b, v x + s_i)``, ``g = w dy``, ``a`` the share of ``den``'s gradient
    that goes to ``s_b`` (``torch.maximum``'s split at ties):

    .. math::
        dx = \frac{g}{den} - v (1 - a) \frac{g x}{den^2}
             - \frac{x - \mu_b}{M s_b} \sum_{N,S} a \frac{g x}{den^2}
             - \frac{x - \mu_i}{S s_i} \sum_{S} (1 - a) \frac{g x}{den^2}

    (``M = N S``; no batch term in eval), ``dv = -sum (1 - a) g x^2 / den^2``,
    ``dw = sum dy x / den``, ``db = sum dy``: one sums kernel, one coefficients kernel
    (``_b0_grad_coef``), one map kernel."""
    x, v, weight, bias = params
    mean_i, istd, bstd, mean_b, _ = saved
    plan = T._plan(x, fold=False)
    n, c, s, nk = plan.n, plan.c, plan.s, plan.nk
    part = torch.empty((5, n, c, nk), device=x.device, dtype=torch.float32)
    T._launch(T._kernels()._b0_partial_grad, plan.grid,
        x, dy, bstd, istd, v, weight, part, c, s, *plan.strides, n * c * nk, plan.spp, nk,
        HAS_W=weight is not None, CB=plan.cb, SB=plan.sb, num_warps=plan.warps,
    )  # fmt: skip
    sums = part.sum(3)  # (5, n, c): p_a, p_b, p_w, p_dy, p_v
    k1, k0 = torch.empty((2, n * c), device=x.device, dtype=torch.float32).unbind(0)
    grads = torch.empty((3, c), device=x.device, dtype=torch.float32)  # dv, dw, db
    cb, nb = _coef_tiles(c, n)
    T._launch(T._kernels()._b0_grad_coef, (T._cdiv(c, cb),),
        sums, istd, bstd, mean_i, mean_b, k1, k0, grads, n, c, n * c, 1.0 / s,
        BATCH=mean_b is not None, CB=cb, NB=nb, num_warps=4,
    )  # fmt: skip
    dx = torch.empty_like(x)
    T._launch(T._kernels()._b0_apply_grad, plan.grid,
        x, dy, dx, bstd, istd, v, weight, k1, k0, n, c, s, *plan.strides, plan.spp, nk,
        plan.ncb, HAS_W=weight is not None, CB=plan.cb, SB=plan.sb, num_warps=plan.warps,
    )  # fmt: skip
    dv, dw, db = grads
    return (
        dx if needs[0] else None,
        dv.to(v.dtype) if needs[1] else None,
        dw.to(weight.dtype) if needs[2] else None,
        db.to(bias.dtype) if needs[3] else None,
    )


def _b0_reference(params: _Params, saved: _Saved, st: B0State) -> Tensor:
    """``functional.evonorm_b0``: the batch variance in training, the running one as used in
    eval."""
    x, v, weight, bias = params
    frozen = saved[4]
    return functional.evonorm_b0(
        x, v, frozen, weight, bias, training=frozen is None, momentum=0.0, eps=st.eps
    )[0]


def _b0_fallback(params: _Params, st: B0State) -> Tensor:
    x, v, weight, bias = params
    y, new_var = functional.evonorm_b0(
        x, v, st.running_var, weight, bias, training=st.training, momentum=st.factor, eps=st.eps
    )
    if st.update:
        with torch.no_grad():
            st.running_var.copy_(new_var)  # type: ignore[union-attr]
    return y


_B0 = _Norm(
    "b0", _b0_forward, _b0_backward, _b0_reference, _b0_fallback,
    lambda st: (st.running_var,) if st.update else (),
)  # fmt: skip


def evonorm_b0(
    x: Tensor, v: Tensor, weight: Tensor | None, bias: Tensor | None, state: B0State
) -> Tensor:
    r"""EvoNorm-B0 of ``x`` ``(N, C, *spatial)``:
    ``y = x / max(sqrt(Var_B(x) + eps), v x + sqrt(Var_I(x) + eps)) * w + b`` with the batch
    variance per channel (the running one in eval) and the instance variance per (sample,
    channel) (``normzoo.functional.evonorm_b0``).

    H. Liu, A. Brock, K. Simonyan, Q. V. Le, "Evolving Normalization-Activation Layers",
    NeurIPS 2020."""
    return _call(_B0, state, x, v, weight, bias)


# -- Ghost Batch Norm --------------------------------------------------------------------------
class _Ghost(NamedTuple):
    size: int
    eps: float
    cumulative: bool  # momentum=None: the factors 1 / (tracked + k + 1)
    #: ``(running_mean, running_var, momentum, tracked)`` to update, or None
    running: tuple[Tensor, Tensor, float | None, int] | None


def _ghost_forward(params: _Params, st: _Ghost) -> tuple[tuple[Tensor, ...], _Saved]:
    """``(y, means, variances)`` with the virtual batches' ``(k, C)`` statistics (biased
    variances, merged from the samples' by ``_ghost_coef``: ``mean_k var_i +
    mean_k (mu_i - mu_B)^2``) for the module's running-statistics update; saves each
    sample's mean and 1/std ``(N * C,)``."""
    x, weight, bias = params
    plan, mean_i, var_i = _instance_stats(x, st.eps)
    n, c = plan.n, plan.c
    k = T._cdiv(n, st.size)
    means, variances = torch.empty((2, k, c), device=x.device, dtype=torch.float32).unbind(0)
    mean, rstd = torch.empty((2, n * c), device=x.device, dtype=torch.float32).unbind(0)
    cb, nb = _coef_tiles(c, min(n, st.size))
    T._launch(T._kernels()._ghost_coef, (T._cdiv(c, cb), k),
        mean_i, var_i, means, variances, mean, rstd, n, c, st.size, st.eps, CB=cb, NB=nb,
        num_warps=4,
    )  # fmt: skip
    if st.running is not None:
        rm, rv, momentum, tracked = st.running
        T._launch(T._kernels()._ghost_blend, (T._cdiv(c, cb),),
            means, variances, rm, rv, n, c, k, st.size, plan.s, momentum or 0.0, tracked,
            CUMULATIVE=st.cumulative, CB=cb, num_warps=4,
        )  # fmt: skip
    return (_map(x, plan, mean, rstd, weight, bias, plan.c), means, variances), (mean, rstd)


def _ghost_backward(
    dy: Tensor, params: _Params, saved: _Saved, st: _Ghost, needs: tuple[bool, ...]
) -> tuple[Tensor | None, ...]:
    """The kernels' per-(sample, channel) sums, merged per virtual batch into batch norm's
    coefficients (``_ghost_grad_coef``); then the map-gradient kernel."""
    x, weight, bias = params
    mean, rstd = saved
    plan = T._plan(x, fold=False)
    n, c = plan.n, plan.c
    sets = (c, 1)
    sums = T._grad_sums(dy, x, weight, None, mean, rstd, sets, False, plan).sum(3)  # (2, n, c)
    a, b = torch.empty((2, n * c), device=x.device, dtype=torch.float32).unbind(0)
    cb, nb = _coef_tiles(c, min(n, st.size))
    T._launch(T._kernels()._ghost_grad_coef, (T._cdiv(c, cb), T._cdiv(n, st.size)),
        sums[0], sums[1], weight, a, b, n, c, st.size, 1.0 / plan.s,
        HAS_W=weight is not None, CB=cb, NB=nb, num_warps=4,
    )  # fmt: skip
    dx = T._grad_map(dy, x, weight, None, mean, rstd, a, b, sets, False, plan)
    db, dw = sums.sum(1) if needs[1] or needs[2] else (None, None)
    return (
        dx if needs[0] else None,
        dw.to(weight.dtype) if needs[1] else None,
        db.to(bias.dtype) if needs[2] else None,
    )


def _ghost_fallback(
    params: _Params, st: _Ghost, update: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Batch norm per virtual batch on torch's kernels (differentiable), the running
    statistics updated once per virtual batch where ``update`` and ``st.running`` ask; and
    the statistics."""
    x, weight, bias = params
    chunks = x.split(st.size)
    with torch.no_grad():
        dims = [0, *range(2, x.dim())]
        stats = [torch.var_mean(t.float(), dims, correction=0) for t in chunks]
    rm = rv = None
    if update and st.running is not None:
        rm, rv, momentum, tracked = st.running
    outputs = []
    for j, t in enumerate(chunks):
        factor = (1.0 / (tracked + j + 1) if st.cumulative else momentum) if rm is not None else 0.0
        outputs.append(F.batch_norm(t, rm, rv, weight, bias, True, factor, st.eps))
    variances, means = (torch.stack(v) for v in zip(*stats, strict=True))
    return torch.cat(outputs), means, variances


_GHOST = _Norm(
    "ghost", _ghost_forward, _ghost_backward,
    lambda p, _, st: _ghost_fallback(p, st, update=False)[0], _ghost_fallback,
    lambda st: st.running[:2] if st.running is not None else (),
)  # fmt: skip


def ghost_batch_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    size: int,
    eps: float,
    running: tuple[Tensor, Tensor, float | None, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Ghost Batch Norm of ``x`` ``(N, C, *spatial)`` in training: batch norm per virtual
    batch of ``size`` samples, in order (the last one smaller where ``N`` is not a multiple).
    Returns ``(y, means, variances)``, the virtual batches' ``(k, C)`` statistics (biased
    variances). ``running = (running_mean, running_var, momentum, tracked)``: updated in
    place as by one ``F.batch_norm`` per virtual batch, in order (``momentum=None``: the
    cumulative factors ``1 / (tracked + k + 1)``), by one small kernel (``_ghost_blend``).

    E. Hoffer, I. Hubara, D. Soudry, "Train longer, generalize better: closing the
    generalization gap in large batch training of neural networks", NeurIPS 2017."""
    cumulative = running is not None and running[2] is None
    return _call(_GHOST, _Ghost(size, eps, cumulative, running), x, weight, bias)


# -- FrozenBatchNorm ---------------------------------------------------------------------------
class _Frozen(NamedTuple):
    running_mean: Tensor
    running_var: Tensor
    weight: Tensor | None
    bias: Tensor | None
    eps: float
    relu: bool


def _frozen_forward(params: _Params, st: _Frozen) -> tuple[Tensor, _Saved]:
    """The map kernel with the fixed statistics; saves them (float32) and the affine."""
    x = params[0]
    mean = st.running_mean.float()
    rstd = torch.rsqrt(st.running_var.float() + st.eps)
    y = _map(x, T._plan(x, fold=True), mean, rstd, st.weight, st.bias, 0, RELU=st.relu)
    return y, (mean, rstd, st.weight, st.bias)


def _frozen_backward(
    dy: Tensor, params: _Params, saved: _Saved, st: _Frozen, needs: tuple[bool, ...]
) -> tuple[Tensor | None, ...]:
    """``dx = w dy / sqrt(running_var + eps)`` (masked by the ReLU, recomputed from ``x``):
    the map-gradient kernel with no statistics term."""
    x = params[0]
    mean, rstd, weight, bias = saved
    zeros = torch.zeros_like(mean)
    plan = T._plan(x, fold=True)
    return (T._grad_map(dy, x, weight, bias, mean, rstd, zeros, zeros, (0, 1), st.relu, plan),)


def _frozen_reference(params: _Params, saved: _Saved, st: _Frozen) -> Tensor:
    """The map in torch ops (float32 math)."""
    x = params[0]
    mean, rstd, weight, bias = saved
    view = _channel_view(x)
    y = _affine((x.float() - mean.view(view)) * rstd.view(view), weight, bias)
    return (torch.relu(y) if st.relu else y).to(x.dtype)


def _frozen_fallback(params: _Params, st: _Frozen) -> Tensor:
    saved = (st.running_mean.float(), torch.rsqrt(st.running_var.float() + st.eps))
    return _frozen_reference(params, (*saved, st.weight, st.bias), st)


_FROZEN = _Norm("frozen", _frozen_forward, _frozen_backward, _frozen_reference, _frozen_fallback)


def frozen_batch_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    relu: bool = False,
) -> Tensor:
    r"""Batch norm of ``x`` ``(N, C, *spatial)`` with fixed statistics and affine (buffers):
    ``y = (x - running_mean) / sqrt(running_var + eps) * w + b``, then a ReLU with ``relu``;
    only ``x`` gets a gradient. One map kernel each way.

    S. Ioffe, C. Szegedy, "Batch Normalization", ICML 2015, Algorithm 2 (inference)."""
    return _call(_FROZEN, _Frozen(running_mean, running_var, weight, bias, eps, relu), x)
