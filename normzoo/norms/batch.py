"""Batch Normalization."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import _native, functional
from normzoo._native import kernels as _kernels
from normzoo.functional._stats import compute_dtype, reduce_dims
from normzoo.norms import _triton
from normzoo.norms.base import Norm, check_momentum

#: Dispatch of the training forward and backward (measured with ``scripts/bench.py`` on a
#: 2-core Xeon, torch 2.13): torch's CPU batch-norm kernels pass over the whole tensor several
#: times; the native kernels (``normzoo/_native/batch_norm.c``) finish one channel while it is
#: in cache, 1.3-2x faster fwd+bwd on every conv shape measured, down to ``(8, 256, 14, 14)``.
#: Below ``NATIVE_MIN_NUMEL`` elements the fixed cost of a call (ctypes, autograd.Function,
#: running-stat update) is not worth it; below ``NATIVE_MIN_SPATIAL`` positions per channel
#: row the per-row SIMD loops are too short. float32, and bfloat16 on the kernels' bfloat16
#: builds (the same thresholds: ``BATCH_NORM_DTYPES``); float16 keeps torch's kernel.
#: Channels_last (4-d and 5-d) inputs take the kernels' channels_last variants (rows of C
#: channels, SIMD over C; output channels_last, no copy): fwd+bwd 0.55-0.95x
#: ``nn.BatchNorm2d`` on the bench's channels_last shapes. Below ``NATIVE_MIN_NUMEL_CL``
#: elements a call's fixed cost wins (1.0-1.6x torch's at 32k-128k elements with 16 to 256
#: channels; 0.75-1.2x at 256k-512k), except with at most ``NATIVE_FEW_CHANNELS_CL``
#: channels, where torch's channels_last kernel is slow (native 0.2-0.6x torch's at 32k-512k
#: elements with 4 channels, 0.4-1.0x with 8). Those costs were the Python
#: ``autograd.Function``'s (Batch Renorm and Ghost BN now run C++ operators too, under the
#: same thresholds); the module's one-call
#: operator (:func:`fast_batch_norm`, ninth session) costs less, so it serves channels_last
#: from ``ONE_CALL_MIN_NUMEL_CL``: it measured 0.90-0.99x torch's at 64k elements (7 shapes,
#: 16 to 256 channels), 0.71-0.88x at 128k and 0.95-1.10x at 32k.
NATIVE_MIN_NUMEL = 1 << 15
NATIVE_MIN_SPATIAL = 8
NATIVE_MIN_NUMEL_CL = 1 << 18
ONE_CALL_MIN_NUMEL_CL = 1 << 16
NATIVE_FEW_CHANNELS_CL = 8
#: ``(N, C)`` tokens (BatchNorm1d's 2-d input) run the channels_last kernels on their rows
#: from ``NATIVE_MIN_NUMEL`` up to this many elements: kernels' fwd+bwd 0.36-0.73x torch's
#: from (256, 64) to (1024, 256) and 0.52-0.56x at 512k elements, but 0.59-1.07x at 1M and
#: 0.54-1.47x at 4M (2 threads, AMD EPYC; twenty-eighth session); the module's 0.75-1.17x
#: ``nn.BatchNorm1d``'s up to 512k, where torch's kernel behind it gave 1.05-1.26x.
NATIVE_MAX_NUMEL_TOKENS = 1 << 19
NATIVE_DTYPES: tuple[torch.dtype, ...] = (torch.float32,)
#: BatchNorm's own path also takes bfloat16 input (float32 or bfloat16 parameters): read and
#: written as bfloat16, the math in float32 (``kernels.batch_norm_forward_bf16``). Batch
#: Renorm and Ghost BN keep ``NATIVE_DTYPES`` for their own kernels.
BATCH_NORM_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)


def kernel_float32(t: Tensor | None) -> Tensor | None:
    """A per-channel tensor (parameter, running statistic) as the native kernels read it:
    detached, contiguous float32 (a copy only where it is not already)."""
    return None if t is None else t.detach().float().contiguous()


def native_batch_norm_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    want_var: bool,
    out: Tensor | None = None,
    relu: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The native training forward for ``x`` as laid out (contiguous ``(N, C, *spatial)``,
    else channels_last or ``(N, C)`` tokens: rows of ``C`` channels): ``(y, stats, var)``,
    ``y`` laid out as ``x``, written into ``out`` when given (see
    ``batch_norm_forward_unchecked``); ``relu``: ``y`` after a ReLU, in the kernel's map.
    bfloat16 ``x``: no ``out``; ``stats`` and ``var`` float32."""
    if x.dtype == torch.bfloat16:
        w, b = kernel_float32(weight), kernel_float32(bias)
        return _kernels.batch_norm_forward_bf16(x, w, b, eps, want_var, relu)
    if x.is_contiguous() and x.dim() > 2:
        return _kernels.batch_norm_forward_unchecked(x, weight, bias, eps, want_var, out, relu)
    return _kernels.batch_norm_forward_cl_unchecked(x, weight, bias, eps, want_var, out, relu)


def native_batch_norm_backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    stats: Tensor,
    needs: tuple[bool, bool, bool],
    out: Tensor | None = None,
    relu: bool = False,
    bias: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The native backward for ``x`` as laid out, ``dx`` written into ``out`` when given;
    ``dy`` is made to match ``x``'s layout (a copy only where it does not). ``relu``: of the
    forward with ``relu`` and ``bias``. bfloat16 ``x``: no ``out``; the parameters' gradients
    float32 (autograd casts them to a bfloat16 parameter's dtype)."""
    if x.dtype == torch.bfloat16:
        w, b = kernel_float32(weight), kernel_float32(bias)
        return _kernels.batch_norm_backward_bf16(dy, x, w, stats, needs, relu, b)
    if x.is_contiguous() and x.dim() > 2:
        dy = dy.contiguous()
        return _kernels.batch_norm_backward_unchecked(dy, x, weight, stats, needs, out, relu, bias)
    fmt = _kernels.channels_last_format(x) or torch.contiguous_format  # (tokens: contiguous)
    dy = dy.contiguous(memory_format=fmt)
    return _kernels.batch_norm_backward_cl_unchecked(dy, x, weight, stats, needs, out, relu, bias)


class _NativeBatchNorm(torch.autograd.Function):
    """Training-mode batch norm through the native kernels (forward and backward), for a
    contiguous or a channels_last ``x`` (``y`` and ``dx`` laid out as ``x``).

    Returns ``(y, stats, var)``: ``stats`` ``(2, C)`` is the batch mean and inverse std, ``var``
    the biased batch variance when ``want_var`` (for the running statistics), else ``None``;
    neither is differentiable. Saves ``x``, ``weight`` and ``stats``, less than torch's kernel
    saves, so the memory of a training step does not grow. Under ``create_graph=True`` the
    backward runs torch's differentiable ``native_batch_norm_backward``, so double backward
    works as with ``torch.nn.BatchNorm``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        want_var: bool,
        relu: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        # grad mode is off in here: the kernels read the tensors' memory directly
        y, stats, var = native_batch_norm_forward(x, weight, bias, eps, want_var, None, relu)
        # with relu (y = relu(batch norm)) the bias too: the backward recomputes the mask
        ctx.save_for_backward(x, weight, stats, bias if relu else None)
        ctx.eps = eps
        ctx.relu = relu
        ctx.mark_non_differentiable(stats, *(() if var is None else (var,)))
        return y, stats, var

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor, *_: Any
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None]:
        x, weight, stats, bias = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            if ctx.relu:  # relu(batch norm) again, differentiated with a graph
                inputs = [t for t, need in zip((x, weight, bias), needs, strict=True) if need]
                y = F.batch_norm(x, None, None, weight, bias, True, 0.0, ctx.eps)
                grads = iter(torch.autograd.grad(torch.relu(y), inputs, dy, create_graph=True))
                dx, dw, db = (next(grads) if need else None for need in needs)
                return dx, dw, db, None, None, None
            dx, dw, db = torch.ops.aten.native_batch_norm_backward(
                dy, x, weight, None, None, stats[0], stats[1], True, ctx.eps, list(needs)
            )
            return dx, dw, db, None, None, None
        dx, dw, db = native_batch_norm_backward(dy, x, weight, stats, needs, None, ctx.relu, bias)
        return dx, dw, db, None, None, None


def _native_layout(x: Tensor) -> bool:
    """Contiguous with rows of at least ``NATIVE_MIN_SPATIAL`` values, or channels_last with
    ``NATIVE_MIN_NUMEL_CL`` elements or ``NATIVE_FEW_CHANNELS_CL`` channels; contiguous
    ``(N, C)`` tokens of at most ``NATIVE_MAX_NUMEL_TOKENS`` elements."""
    if x.dim() == 2:
        return x.is_contiguous() and x.numel() <= NATIVE_MAX_NUMEL_TOKENS
    if x.is_contiguous():
        return x.numel() // (x.shape[0] * x.shape[1]) >= NATIVE_MIN_SPATIAL
    return (
        x.numel() >= NATIVE_MIN_NUMEL_CL or x.shape[1] <= NATIVE_FEW_CHANNELS_CL
    ) and _kernels.channels_last_format(x) is not None


def use_native_batch_stats(
    x: Tensor,
    weight: Tensor | None = None,
    dtypes: tuple[torch.dtype, ...] = NATIVE_DTYPES,
    tokens: bool = False,
) -> bool:
    """Whether the native training kernels are used for ``x`` of one of ``dtypes`` (see
    ``NATIVE_MIN_NUMEL``); ``weight`` of ``x``'s dtype, or float32 for bfloat16 ``x``.
    ``tokens``: ``(N, C)`` input too (BatchNorm's own dispatch; the norms built on its
    kernels take ``(N, C, *spatial)`` only)."""
    return (
        x.is_cpu
        and x.dtype in dtypes
        and (
            weight is None
            or weight.dtype == x.dtype
            or (x.dtype == torch.bfloat16 and weight.dtype == torch.float32)
        )
        and (x.dim() >= 3 or (tokens and x.dim() == 2))
        and x.numel() >= max(NATIVE_MIN_NUMEL, 1)
        and _native_layout(x)
        and not _native.capturing()
        and _native.available("batch_norm")
    )


_module_op: Any = None


def fast_batch_norm(norm: BatchNorm, x: Tensor) -> Tensor | None:
    """``norm(x)`` in training (batch statistics; the running statistics and
    ``num_batches_tracked`` updated where tracked; the ReLU fused where ``norm.activation``
    asks for it) in one call of the C++ operator, or ``None``, having changed nothing: then
    ``norm``'s checked forward runs (input checks and their errors, eval mode, torch's
    kernels, the Python kernels' path where the operator library is unavailable).

    The operator (``normzoo::batch_norm_module``, ``ops.cpp``) checks in C++ that the input is
    one the checked forward sends to the native training kernels (this module's dispatch:
    ``use_native_batch_stats``; channels_last from ``ONE_CALL_MIN_NUMEL_CL`` elements, where
    the checked path keeps torch's kernel below ``NATIVE_MIN_NUMEL_CL``), then runs them and
    updates the running statistics as ``_update_factor`` and ``_blend_running_stats`` do, bit
    for bit; bfloat16 input with float32 parameters too (the bfloat16 kernels; a module cast
    to bfloat16 takes the checked path). Why a path of its own: see
    ``normzoo.norms._rownorm.fast_group_norm`` (the checked path's Python, run with the caches
    cold, plus the Python ``autograd.Function``: 60-100 us of a mid-sized fwd+bwd).
    """
    global _module_op
    # bfloat16 with float32 parameters (autocast's case): the operator checks the parameters
    if not _native.one_call_ready(x, NATIVE_MIN_NUMEL, bfloat16=True):
        return None
    if _module_op is None:  # resolved once: four attribute lookups less per call
        _module_op = torch.ops.normzoo.batch_norm_module.default
    update = norm.training and norm.track_running_stats
    return _module_op(
        x,
        norm.weight,
        norm.bias,
        norm.running_mean if update else None,
        norm.running_var if update else None,
        norm.num_batches_tracked if update else None,
        norm.momentum,
        norm.eps,
        norm.activation is not None,  # "relu", the one activation (check_activation)
        norm.num_features,
        2 + norm.max_spatial_dims,
        NATIVE_MIN_NUMEL,
        NATIVE_MIN_SPATIAL,
        ONE_CALL_MIN_NUMEL_CL,
        NATIVE_FEW_CHANNELS_CL,
        _kernels.CL_MAX_BLOCKS,
        NATIVE_MAX_NUMEL_TOKENS,
    )


class BatchNorm(Norm):
    r"""Batch Normalization over an ``(N, C, *spatial)`` input (0 to 3 spatial dims).

    .. math::
        y = \gamma \, \frac{x - \mathrm{E}_\mathcal{B}[x]}{\sqrt{\mathrm{Var}_\mathcal{B}[x]
            + \epsilon}} + \beta

    Mean and (biased) variance are computed per channel over the batch and every spatial
    position. In training mode (``module.train()``) the batch statistics normalize and the
    running statistics are updated with momentum, using the *unbiased* batch variance; in
    eval mode (``module.eval()``) the running statistics normalize. With
    ``track_running_stats=False`` there are no running statistics and the batch statistics
    are used in both modes. One class serves every rank and equals ``torch.nn.BatchNorm1d``,
    ``BatchNorm2d`` and ``BatchNorm3d`` (outputs, gradients, buffers and state-dict keys).

    Args:
        num_features: the channel count ``C``.
        eps: added to the variance. Default ``1e-5``.
        momentum: running-average factor, or ``None`` for a cumulative average.
            Default ``0.1``.
        affine: learn a per-channel ``weight`` (gamma) and ``bias`` (beta). Default ``True``.
        track_running_stats: keep running statistics for eval mode. Default ``True``.
        impl: ``"fast"`` (the native kernel) or ``"reference"`` (``normzoo.functional``).

    Shape:
        input ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``; output the same.

    Reference: S. Ioffe, C. Szegedy, "Batch Normalization: Accelerating Deep Network Training
    by Reducing Internal Covariate Shift", ICML 2015.
    """

    statistics_per = ("channel",)
    reduces_over = ("batch", "spatial")
    uses_batch_stats = True
    batchnorm_statistics = True
    fuses_activation = True
    one_call = True

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps=eps, affine=affine, impl=impl, device=device, dtype=dtype
        )
        if track_running_stats:
            self._init_running_stats(momentum, device, dtype)
        else:
            self.momentum = check_momentum(momentum)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if self.one_call and self.impl == "fast" and self._uses_batch_statistics():
            y = fast_batch_norm(self, x)  # None: the checked path below
            if y is not None:
                return y
        return super().forward(x)

    def _uses_batch_statistics(self) -> bool:
        return self.training or not self.track_running_stats

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if self._uses_batch_statistics() and x.numel() // x.shape[1] == 1 and x.numel() > 0:
            raise ValueError(
                f"{type(self).__name__} needs more than 1 value per channel to compute batch "
                f"statistics, got input of shape {tuple(x.shape)}; use a batch larger than 1 "
                f"(or spatial size > 1), call .eval() to use running statistics, or use a norm "
                f"that does not depend on the batch (groupnorm, layernorm, instancenorm)"
            )

    def _forward(self, x: Tensor, relu: bool = False) -> Tensor:
        y, fused = self._normalize(x, relu)
        return torch.relu(y) if relu and not fused else y

    def _normalize(self, x: Tensor, relu: bool) -> tuple[Tensor, bool]:
        """The norm's output, and whether the ReLU is applied already (where ``relu`` asks
        for it and the native kernels fuse it)."""
        batch_stats = self._uses_batch_statistics()
        factor = 0.0
        if self.training and self.track_running_stats:
            factor = self._update_factor()
        if (
            self.impl == "fast"
            and batch_stats
            and use_native_batch_stats(x, self.weight, BATCH_NORM_DTYPES, tokens=True)
        ):
            return self._native_forward(x, factor, relu=relu), relu
        if self.impl == "fast" and batch_stats and _triton.serves_batch(x, self.weight, self.bias):
            # CUDA: the Triton kernels (normzoo.norms._triton)
            # (the running statistics blended in its statistics kernel)
            running = None
            if self.training and self.track_running_stats:
                running = (self.running_mean, self.running_var, factor)
            y = _triton.batch_norm(x, self.weight, self.bias, self.eps, relu, running)[0]
            return y, relu
        if self.impl == "fast" and not isinstance(factor, Tensor):
            y = F.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                batch_stats,
                factor,
                self.eps,
            )
            return y, False
        if self.impl == "fast" and batch_stats:
            # momentum=None inside a graph capture: F.batch_norm takes a float momentum and
            # the factor is a device tensor there, so the batch statistics blend below
            # (inductor computes them in the normalization's reduction)
            y = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
            with torch.no_grad():
                xf = x.detach().to(compute_dtype(x))
                dims = reduce_dims(xf, batch=True, channel=False)
                var, mean = torch.var_mean(xf, dim=dims, correction=0)
            self._blend_running_stats(mean, var, factor, x.numel() // x.shape[1])
            return y, False
        y, mean, var = functional.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=batch_stats,
            momentum=factor,
            eps=self.eps,
        )
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(mean)
                self.running_var.copy_(var)
        return y, False

    def _native_forward(self, x: Tensor, factor: float, relu: bool = False) -> Tensor:
        update = self.training and self.track_running_stats
        w, b = self.weight, self.bias
        if torch.is_grad_enabled() and _kernels.needs_grad(x, w, b):
            y, stats, var = _NativeBatchNorm.apply(x, w, b, self.eps, update, relu)
        else:  # nothing to differentiate: skip autograd.Function's fixed cost
            y, stats, var = native_batch_norm_forward(x, w, b, self.eps, update, None, relu)
        if update:
            self._blend_running_stats(stats[0], var, factor, x.numel() // x.shape[1])
        return y
