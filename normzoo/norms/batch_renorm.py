"""Batch Renormalization."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from normzoo import functional
from normzoo._native import kernels as _kernels
from normzoo._native import zoo_kernels
from normzoo.functional._stats import compute_dtype
from normzoo.norms import _triton, _triton_zoo
from normzoo.norms._row_map import use_zoo_op
from normzoo.norms._tokens import use_token_kernels
from normzoo.norms.base import capturing, snapshot
from normzoo.norms.batch import (
    BATCH_NORM_DTYPES,
    BatchNorm,
    kernel_float32,
    native_batch_norm_backward,
    use_native_batch_stats,
)


class _BatchRenormTrain(torch.autograd.Function):
    """Training-mode Batch Renorm on torch's BN kernels, with ``r`` and ``d`` constants.

    ``y = w (r x_hat + d) + b`` is BN with the weight ``w r`` and the bias ``w d + b``: the
    forward normalizes with torch's training kernel (which also gives the batch statistics,
    from which ``r`` and ``d`` follow) and applies that affine map with the inference kernel;
    the backward is torch's BN backward with the weight ``w r``, whose weight and bias
    gradients give ``dw = r dw' + d db'`` and ``db = db'``. Saves ``x``, the mean and the
    inverse std, as BN does. Where BatchNorm would use its native kernels they replace torch's
    training kernel and backward: one call of ``batch_norm.c`` runs BatchNorm's forward with
    ``r`` and ``d`` computed per channel from its moments (``kernels.renorm_forward_unchecked``:
    one pass over ``x`` for the moments, one for ``y``, as BatchNorm; the ~15 small torch ops
    on ``(C,)`` values it replaces cost about as much as the kernels on (8, 256, 14, 14)). Float32
    tokens ``(N, C)`` take the same two passes, their statistics from ``zoo.c``'s column
    kernel. bfloat16 conv input where BatchNorm's would runs the same call's bfloat16 build
    (the twenty-first session). Other half-precision CPU input as well, on torch's kernels for it
    (``batch_norm_update_stats``, then BN's inference kernel with the float32 statistics):
    no float32 copy of ``x``, ``y``, ``dy`` or ``dx``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor,
        running_var: Tensor,
        r_max: float,
        d_max: float,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        c = x.shape[1]
        dt = compute_dtype(x)  # of the per-channel values: float32 for half inputs
        ctx.native = use_native_batch_stats(x, None, BATCH_NORM_DTYPES)
        ctx.eps = eps
        half = x.dtype != dt
        if ctx.native:  # one native call, BatchNorm's passes with r and d per channel
            rm, rv, w32, b32 = (
                kernel_float32(t) for t in (running_mean, running_var, weight, bias)
            )
            y, stats, out = _kernels.renorm_forward_unchecked(
                x, w32, b32, rm, rv, r_max, d_max, eps
            )
            ctx.save_for_backward(x, stats, out, weight, bias)
            batch_mean, batch_var = stats[0].clone(), out[4].clone()
            ctx.mark_non_differentiable(batch_mean, batch_var)
            return y, batch_mean, batch_var
        x_hat = None
        if half:  # CPU half precision (see _fast_forward): torch's statistics-only kernel
            # (float32 sums, one pass over x), then y from x in one pass below
            mean, var = torch.batch_norm_update_stats(
                x, torch.zeros(c, dtype=dt), torch.ones(c, dtype=dt), 0.0
            )
            invstd = torch.rsqrt(var + eps)
            m = x.numel() // c
            batch_mean, batch_var = mean.clone(), var * (m / max(m - 1, 1))
        elif x.dtype == torch.float32 and use_token_kernels(x, weight):
            # tokens (N, C): the column moments in one sweep (zoo.c), then y from x in one
            # pass below; torch's kernel would write x_hat and map it again
            mean, var = zoo_kernels.column_stats(x)
            invstd = torch.rsqrt(var + eps)
            m = x.shape[0]
            batch_mean, batch_var = mean.clone(), var * (m / max(m - 1, 1))
        else:
            batch_mean = torch.zeros(c, dtype=x.dtype, device=x.device)
            batch_var = torch.ones(c, dtype=x.dtype, device=x.device)  # the unbiased var
            x_hat, mean, invstd = torch.native_batch_norm(
                x, None, None, batch_mean, batch_var, True, 1.0, eps
            )
        sigma = torch.sqrt(running_var.to(dt) + eps)
        r = (1.0 / invstd / sigma).clamp(1.0 / r_max, r_max)
        d = ((mean - running_mean.to(dt)) / sigma).clamp(-d_max, d_max)
        w = r if weight is None else weight.to(dt) * r
        shift = d if weight is None else weight.to(dt) * d
        if bias is not None:
            shift = shift + bias.to(dt)
        if half:  # torch's inference kernel: (x - mean) / sqrt(var + eps) w + shift, rounded once
            y = torch.native_batch_norm(x, w, shift, mean, var, False, 0.0, eps)[0]
        elif x_hat is None:  # tokens: y = x (w invstd) + (shift - mean w invstd)
            scale = w * invstd
            view = (1, c) + (1,) * (x.dim() - 2)
            y = torch.empty_like(x)
            torch.addcmul((shift - mean * scale).view(view), x, scale.view(view), out=y)
        else:
            zeros, ones = torch.zeros_like(r), torch.ones_like(r)
            y = torch.native_batch_norm(x_hat, w, shift, zeros, ones, False, 0.0, 0.0)[0]
        ctx.save_for_backward(x, w, mean, invstd, r, d, weight, bias)
        ctx.mark_non_differentiable(batch_mean, batch_var)
        return y, batch_mean, batch_var

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor, _dmean: Tensor, _dvar: Tensor
    ) -> tuple[Tensor | None, ...]:
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        mask = (need_x, need_w, need_b or need_w)
        if ctx.native:  # the native forward's (x, stats, out)
            x, stats, out, weight, bias = ctx.saved_tensors
            mean, invstd, r, d, w = stats[0], stats[1], out[0], out[1], out[2]
        else:
            x, w, mean, invstd, r, d, weight, bias = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the math differentiated again
            grads = _renorm_grads(x, weight, bias, r, d, ctx.eps, dy, (need_x, need_w, need_b))
            return (*grads, None, None, None, None, None)
        if ctx.native:
            dx, dw, db = native_batch_norm_backward(dy, x, w, stats, mask)
        else:
            dx, dw, db = torch.ops.aten.native_batch_norm_backward(
                dy, x, w, None, None, mean, invstd, True, ctx.eps, list(mask)
            )
        dweight = r * dw + d * db if need_w else None
        return dx, dweight, db if need_b else None, None, None, None, None, None


def _renorm_grads(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    r: Tensor,
    d: Tensor,
    eps: float,
    dy: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Batch Renorm's gradients with a graph (``create_graph=True``): the training output in
    torch ops, ``y = w ((x - mean_B) / sqrt(var_B + eps) r + d) + b`` with ``r`` and ``d``
    constants and the batch statistics differentiable (as the first backward treats them),
    differentiated with respect to ``x``, ``weight`` and ``bias`` where ``needs`` asks; so
    second derivatives reach the weight too (through ``w r`` they did not). The same
    expressions as ``ops.cpp``'s ``renorm_reference``."""
    xs = x.to(compute_dtype(x))
    dims = [0, *range(2, x.dim())]
    view = (1, -1) + (1,) * (x.dim() - 2)
    centered = xs - xs.mean(dims, keepdim=True)
    var = (centered * centered).mean(dims, keepdim=True)
    y = (xs - xs.mean(dims, keepdim=True)) * torch.rsqrt(var + eps) * r.view(view) + d.view(view)
    if weight is not None:
        y = y * weight.view(view)
    if bias is not None:
        y = y + bias.view(view)
    tensors = (x, weight, bias)
    leaves = [t for t, need in zip(tensors, needs, strict=True) if need and t is not None]
    if not leaves:
        return None, None, None
    got = iter(torch.autograd.grad(y.to(dy.dtype), leaves, dy, create_graph=True))
    return tuple(  # type: ignore[return-value]
        next(got) if need and t is not None else None
        for t, need in zip(tensors, needs, strict=True)
    )


def _check_number(name: str, value: Any, minimum: float, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if not value >= minimum:
        raise ValueError(f"{name} must be {expected}, got {value}")
    return float(value)


def _check_steps(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value}")
    return int(value)


class BatchRenorm(BatchNorm):
    r"""Batch Renormalization: BN whose batch statistics are corrected towards the running ones.

    .. math::
        y = \gamma \left(\frac{x - \mu_\mathcal{B}}{\sigma_\mathcal{B}}\, r + d\right) + \beta,
        \quad r = \mathrm{clip}_{[1/r_{max}, r_{max}]}\frac{\sigma_\mathcal{B}}{\sigma}, \quad
        d = \mathrm{clip}_{[-d_{max}, d_{max}]}\frac{\mu_\mathcal{B} - \mu}{\sigma}

    with ``r`` and ``d`` treated as constants by backprop (see
    ``normzoo.functional.batch_renorm``). In eval it is BN with the running statistics; the
    running statistics, state-dict keys and checkpoints are BN's.

    The clipping limits follow the paper's schedule, counted in training steps
    (``num_batches_tracked``): plain BN (``r = 1``, ``d = 0``) for the first
    ``warmup_steps``, then the limits relax linearly, reaching ``r_max`` at step
    ``r_max_steps`` and ``d_max`` at step ``d_max_steps``. The defaults are the paper's
    ImageNet schedule (5k steps of BN, ``r_max = 3`` at 40k, ``d_max = 5`` at 25k); set the
    step counts to 0 for the full limits from the start. ``current_limits()`` says where the
    schedule is.

    Args:
        num_features: the channel count ``C``.
        eps: added to the variances. Default ``1e-5``.
        momentum: running-average factor, or ``None`` for a cumulative average. Default ``0.1``.
        affine: learn per-channel ``weight`` and ``bias``. Default ``True``.
        r_max: the final limit of ``r``, ``>= 1``. Default ``3.0``.
        d_max: the final limit of ``d``, ``>= 0``. Default ``5.0``.
        warmup_steps: training steps of plain BN. Default ``5000``.
        r_max_steps, d_max_steps: the step at which ``r_max``/``d_max`` are reached
            (``>= warmup_steps``). Defaults ``40000``, ``25000``.
        impl: ``"fast"`` (torch's BN kernels, a hand-written backward) or ``"reference"``.

    Reference: S. Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models", NeurIPS 2017.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        *,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 5000,
        r_max_steps: int = 40000,
        d_max_steps: int = 25000,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.r_max = _check_number(
            "r_max", r_max, 1.0, "a float >= 1 (r is clipped to [1/r_max, r_max])"
        )
        self.d_max = _check_number(
            "d_max", d_max, 0.0, "a float >= 0 (d is clipped to [-d_max, d_max])"
        )
        self.warmup_steps = _check_steps("warmup_steps", warmup_steps)
        for name, value in (("r_max_steps", r_max_steps), ("d_max_steps", d_max_steps)):
            if _check_steps(name, value) < self.warmup_steps:
                raise ValueError(
                    f"{name} must be >= warmup_steps={self.warmup_steps} (the step at which "
                    f"the limit is reached), got {value}"
                )
        self.r_max_steps, self.d_max_steps = int(r_max_steps), int(d_max_steps)
        super().__init__(
            num_features, eps, momentum, affine, True, impl=impl, device=device, dtype=dtype
        )

    def current_limits(self) -> tuple[float, float]:
        """``(r_max, d_max)`` of the next training step under the warm-up schedule."""
        if capturing():  # as float64 0-d tensors computed on the device
            return self._captured_limits()  # type: ignore[return-value]
        step = self._batches_tracked()  # no device read per step (see there)

        def ramp(end: int) -> float:
            if step < self.warmup_steps:
                return 0.0
            if end == self.warmup_steps:
                return 1.0
            return min(1.0, (step - self.warmup_steps) / (end - self.warmup_steps))

        return 1.0 + (self.r_max - 1.0) * ramp(self.r_max_steps), self.d_max * ramp(
            self.d_max_steps
        )

    def _captured_limits(self) -> tuple[Tensor, Tensor]:
        """``current_limits()`` inside a graph capture: the same schedule as device
        tensors, so that ``torch.compile`` neither reads the step count on the host nor
        specializes on it (a recompile every step)."""
        step = self.num_batches_tracked
        if torch.compiler.is_compiling():  # updated below: see snapshot
            step = snapshot(step)
        step = step.to(torch.float64)
        start = self.warmup_steps

        def ramp(end: int) -> Tensor:
            if end == start:
                return (step >= start).to(torch.float64)
            return ((step - start) / (end - start)).clamp(0.0, 1.0)

        return 1.0 + (self.r_max - 1.0) * ramp(self.r_max_steps), self.d_max * ramp(
            self.d_max_steps
        )

    def _forward(self, x: Tensor) -> Tensor:
        r_max, d_max = self.current_limits()
        factor = self._update_factor() if self.training else 0.0
        if self.impl == "fast" and not capturing():  # captured: the reference math
            return self._fast_forward(x, r_max, d_max, factor)
        running = (self.running_mean, self.running_var)
        if self.training and torch.compiler.is_compiling():  # r, d read what the step updates
            running = (snapshot(self.running_mean), snapshot(self.running_var))
        y, mean, var = functional.batch_renorm(
            x,
            *running,
            self.weight,
            self.bias,
            training=self.training,
            r_max=r_max,
            d_max=d_max,
            momentum=factor,
            eps=self.eps,
        )
        if self.training:
            with torch.no_grad():
                self.running_mean.copy_(mean)
                self.running_var.copy_(var)
        return y

    def _fast_forward(self, x: Tensor, r_max: float, d_max: float, factor: float) -> Tensor:
        """The reference math on torch's BN kernels (see ``_BatchRenormTrain``); on CUDA,
        where ``_triton.serves_batch`` takes the input (contiguous, from 67M elements, as
        measured; every input under ``NORMZOO_TRITON=all``), the Triton batch-norm kernels."""
        if self.training and _triton.serves_batch(x, self.weight, self.bias, kind="renorm"):
            running = (self.running_mean, self.running_var, factor)
            return _triton_zoo.batch_renorm(
                x, self.weight, self.bias, running, (r_max, d_max), self.eps
            )
        # half precision on the CPU: torch's kernels take it with float32 statistics and
        # parameters (a float32 copy of x, y, dy and dx measured 3x BatchNorm2d's fwd+bwd)
        xf = x if x.device.type == "cpu" else x.to(compute_dtype(x))
        if not self.training:
            y = torch.nn.functional.batch_norm(
                xf,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                False,
                0.0,
                self.eps,
            )
            return y.to(x.dtype)
        if use_native_batch_stats(xf, self.weight, BATCH_NORM_DTYPES) and use_zoo_op(
            xf, self.weight, self.bias, self.running_mean, self.running_var
        ):  # the same kernels behind a C++ operator: no Python per call, the blend in C++
            return torch.ops.normzoo.batch_renorm_train(
                xf,
                self.weight,
                self.bias,
                self.running_mean,
                self.running_var,
                float(r_max),
                float(d_max),
                self.eps,
                float(factor),
                _kernels.CL_MAX_BLOCKS,
            )
        y, mean, unbiased = _BatchRenormTrain.apply(
            xf,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            r_max,
            d_max,
            self.eps,
        )
        with torch.no_grad():  # after r and d used the old statistics, as the reference
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, r_max={self.r_max:g}, d_max={self.d_max:g}, "
            f"warmup_steps={self.warmup_steps}, r_max_steps={self.r_max_steps}, "
            f"d_max_steps={self.d_max_steps}"
        )
