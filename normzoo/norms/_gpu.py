"""EvoNorm, FRN and SwitchableNorm on CUDA: the reference math fused by ``torch.compile``.

On the GPU the zoo's default paths are eager chains of torch kernels (the native kernels are
CPU-only): each pass over the tensor is a kernel that reads and writes it. Compiling the
reference math (``normzoo.functional``) fuses the statistics into one or two reduction
kernels and the normalization into one elementwise kernel (Triton), forward and backward.

Measured on an H200 (``scripts/gpu_fused_ab.py``, data in
``docs/data/gpu_fused_ab_h200.json``: each module's default path with compiling on and off,
interleaved in one process, fwd+bwd, float32, medians of 25), the fused path was faster than
the eager one for

* EvoNorm-B0: 1.1-3.0x on every shape tried ((32, 64, 32, 32) to (256, 64, 64, 64), both
  layouts, tokens (4096, 1024) and (65536, 1024)); 1.7x in bfloat16;
* FRN: 1.2-3.4x, except tokens (4096, 1024) (0.84x);
* SwitchableNorm: 1.1-1.6x;
* EvoNorm-S0: 1.5-1.8x on conv shapes up to 2M elements and on (65536, 1024) tokens, but
  3x *slower* on (256, 64, 64, 64) (cause not found; a static-shape compile of the module
  measured 1.9 ms there against the dynamic kernel's 11.7), so conv inputs from
  ``S0_CONV_MAX_NUMEL`` elements keep the eager path.

RMSNorm (0.9-1.2x) and Batch Renorm (0.5-1.05x: its eager path is torch's BN kernels plus a
hand-written backward) measured no gain and keep their eager paths. The first call of each
kind of call compiles: 2-53 s on that machine with a cold cache (SwitchableNorm the longest);
inductor's on-disk cache shortens later processes. ``NORMZOO_COMPILE=0`` turns it off.

The functions here are the reference functions plus one rule: a channels_last input gives a
channels_last output (the compiled kernel writes that layout directly; inductor otherwise picks
the contiguous layout for some of them, e.g. EvoNorm-S0's group reshape). They are wrapped by
:func:`normzoo.norms._fused.fuse`: compiled lazily, per kind of call, with dynamic shapes, and
falling back to the eager reference math with one warning where compiling fails.

Dispatch (:func:`use_fused_math`): CUDA tensors of at least ``_fused.DEFAULT_MIN_NUMEL``
elements with compiling enabled (``NORMZOO_COMPILE``), outside an enclosing
``torch.compile`` (which fuses the module's own path with its neighbours). Everything else
keeps the module's eager paths.
"""

from __future__ import annotations

from torch import Tensor

from normzoo import functional
from normzoo.norms import _fused
from normzoo.norms._kernels import channels_last_format

__all__ = [
    "S0_CONV_MAX_NUMEL",
    "evonorm_b0",
    "evonorm_s0",
    "filter_response_norm",
    "switchable_norm",
    "use_fused_math",
]

#: EvoNorm-S0 conv inputs of this many elements or more keep the eager path (see above).
S0_CONV_MAX_NUMEL = 1 << 24


def use_fused_math(x: Tensor) -> bool:
    """Whether a zoo module runs its fused reference math on ``x``: a CUDA tensor of at least
    ``DEFAULT_MIN_NUMEL`` elements, compiling enabled, and no enclosing compile."""
    return (
        x.is_cuda
        and x.numel() >= _fused.DEFAULT_MIN_NUMEL
        and _fused.compile_enabled()
        and not _fused._is_compiling()
    )


def _like(y: Tensor, x: Tensor) -> Tensor:
    """``y`` in ``x``'s memory format where ``x`` is channels_last (and not contiguous)."""
    fmt = channels_last_format(x)
    return y if fmt is None else y.contiguous(memory_format=fmt)


def _evonorm_b0(
    x: Tensor,
    v: Tensor,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> tuple[Tensor, Tensor | None]:
    y, var = functional.evonorm_b0(
        x, v, running_var, weight, bias, training=training, momentum=momentum, eps=eps
    )
    return _like(y, x), var


def _evonorm_s0(
    x: Tensor, v: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    return _like(functional.evonorm_s0(x, v, num_groups, weight, bias, eps=eps), x)


def _filter_response_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    tau: Tensor | None,
    eps: float | Tensor,
) -> Tensor:
    return _like(functional.filter_response_norm(x, weight, bias, tau, eps=eps), x)


def _switchable_norm(
    x: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    y, mean, var = functional.switchable_norm(
        x,
        mean_weight,
        var_weight,
        running_mean,
        running_var,
        weight,
        bias,
        training=training,
        momentum=momentum,
        eps=eps,
    )
    return _like(y, x), mean, var


# Positional arguments only: the kind of call (and so the kernel) is keyed on each argument.
evonorm_b0 = _fused.fuse(_evonorm_b0)
evonorm_s0 = _fused.fuse(_evonorm_s0)
filter_response_norm = _fused.fuse(_filter_response_norm)
switchable_norm = _fused.fuse(_switchable_norm)
