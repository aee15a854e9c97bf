"""Group norm (and so InstanceNorm and channels-first LayerNorm) on the native row kernels.

``normzoo/_native/row_norm.c`` normalizes each (sample, group) row while it is in the core's
cache: forward reads ``x`` once and writes ``y``; backward reads ``x`` and ``dy`` once and
writes ``dx``. torch's CPU group-norm kernels make more passes (measured with
``scripts/bench.py``). channels_last inputs run on the same file's kernels for that layout,
through the C++ operator (``torch.ops.normzoo.group_norm``), with the output in that layout.
Only float32 CPU inputs are dispatched here (:func:`use_native_row_norm`); the callers keep
torch's kernels for everything else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import _native
from normzoo._native import kernels as _kernels
from normzoo._native import zoo_kernels
from normzoo.norms._kernels import channels_last_format
from normzoo.norms._row_map import RowNormSpec, use_row_map

if TYPE_CHECKING:
    from normzoo.norms.base import Norm

__all__ = [
    "NATIVE_MIN_NUMEL",
    "GroupSpec",
    "channels_last_rows",
    "fast_group_norm",
    "native_group_norm",
    "params_like",
    "torch_group_norm",
    "use_native_row_norm",
]

#: Dispatch (measured with ``scripts/bench.py``, 2 threads, fwd+bwd): with one channel per
#: group (InstanceNorm) the kernels beat torch's InstanceNorm (a reshaped batch norm) from
#: small sizes on, so ``NATIVE_MIN_NUMEL`` only keeps tiny inputs, where a call's fixed cost
#: decides, on torch's kernel. With several channels per group (GroupNorm, LayerNorm) torch's
#: group-norm kernel is close to ours, and the Python ``autograd.Function`` around our kernels
#: (about 0.1 ms per fwd+bwd) made them 1.1-1.2x slower below 1M elements (0.83-0.91x on
#: (32, 64, 32, 32)): without the C++ operator library ``NATIVE_MIN_NUMEL_GROUPED`` keeps
#: torch's kernel there. With it (no Python in the autograd path) GroupNorm measured 0.92-1.02x
#: and LayerNorm 0.97-1.04x torch on the mid-sized shapes (both at minimal memory traffic in
#: L3), 0.85x and 0.93x on (32, 64, 32, 32), so the operator serves them from
#: ``NATIVE_MIN_NUMEL``. channels_last inputs take the operator at every size: torch's
#: channels_last kernel is numerically unstable (see :func:`torch_group_norm`), and below
#: ``NATIVE_MIN_NUMEL`` the operator measured 0.75-1.2x the time of torch's unstable kernel
#: for GroupNorm and LayerNorm, 0.35-0.65x for InstanceNorm, and 0.55-0.9x the stable
#: fallback's (fwd+bwd, 2 threads, (2, 64, 8, 8) to (16, 32, 8, 8)).
NATIVE_MIN_NUMEL = 1 << 15
NATIVE_MIN_NUMEL_GROUPED = 1 << 20

#: The fused ReLU's backward on contiguous input masks ``dy`` one (sample, group) row at a time
#: into a scratch row per thread; rows longer than this (4 MB of float32) run the ReLU after
#: the kernels instead, so the scratch stays small (channels_last masks blocks of positions).
FUSED_RELU_MAX_ROW = 1 << 20


def use_native_row_norm(x: Tensor, weight: Tensor | None = None, groups: int | None = None) -> bool:
    """Whether :func:`native_group_norm` serves ``x`` with ``groups`` groups (default: one
    channel per group): float32 ``(N, C, *)`` on the CPU, outside ``torch.compile``;
    contiguous with at least ``NATIVE_MIN_NUMEL`` elements, or channels_last of any size
    where the C++ operator library is available (its kernels read that layout in place).
    Without the operator library, several channels per group need
    ``NATIVE_MIN_NUMEL_GROUPED`` elements."""
    if not (
        x.is_cpu
        and x.dtype == torch.float32
        and (weight is None or weight.dtype == torch.float32)
        and x.dim() >= 3
        and x.numel() > 0
        and not _native.capturing()
        and _native.available("row_norm")
    ):
        return False
    if not x.is_contiguous():  # channels_last: every size (the operator's kernels)
        return channels_last_format(x) is not None and _native.ops_available()
    if x.numel() < NATIVE_MIN_NUMEL:
        return False
    grouped = groups is not None and groups < x.shape[1]
    # Below NATIVE_MIN_NUMEL_GROUPED, GroupNorm/LayerNorm gain only without Python in the
    # autograd path: with the C++ operator library.
    return not grouped or x.numel() >= NATIVE_MIN_NUMEL_GROUPED or _native.ops_available()


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no argument (and answers for CUDA)
        return torch.is_autocast_enabled()
    except RuntimeError:  # a device without autocast (e.g. "meta")
        return False


def params_like(
    x: Tensor, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """``weight`` and ``bias`` in ``x``'s dtype off the CPU, where torch's group-norm and
    layer-norm kernels (CUDA) refuse float32 parameters with half-precision input; the
    gradients reach the float32 parameters through the cast. Unchanged on the CPU (its kernels
    take mixed dtypes) and under autocast (which runs these norms in float32)."""
    if x.is_cpu or _autocast_on(x.device.type):
        return weight, bias
    weight = weight if weight is None or weight.dtype == x.dtype else weight.to(x.dtype)
    bias = bias if bias is None or bias.dtype == x.dtype else bias.to(x.dtype)
    return weight, bias


def torch_group_norm(
    x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """torch's group-norm kernel, the modules' fallback (``x`` already validated, so
    ``torch.group_norm`` is called without ``F.group_norm``'s checks).

    Off the CPU (CUDA) torch's kernel needs ``weight`` and ``bias`` in ``x``'s dtype, and it
    returns NCHW for a channels_last ``x`` (it copies ``x`` to NCHW first). So there the
    parameters are cast for the call (their gradients reach the float32 parameters through
    the cast; not under autocast, which runs group norm in float32) and the output is given
    ``x``'s layout back: a channels_last model stays channels_last, at the cost of one copy
    (torch's own copy of ``x`` cannot be avoided with its kernel).

    On the CPU, torch's channels_last kernel takes the variance as ``E[x^2] - E[x]^2`` and
    cancels catastrophically once the mean is large against the spread (relative errors of
    0.1-1 in ``y`` at mean 1000 and std 1, and 1e6 in ``dx`` with one channel per group; its
    contiguous kernel: 2e-5, torch 2.13). A channels_last ``x`` runs the contiguous kernel on
    a contiguous copy instead, with the output copied back to channels_last: measured
    0.9-1.4x the channels_last kernel's fwd+bwd time in float32, and 0.2-0.6x in bfloat16
    with several channels per group (2 threads, ``(8, 16, 12, 12)`` to ``(32, 64, 32, 32)``).
    One group (channels-first LayerNorm) in half precision keeps torch's channels_last
    kernel: there it is 2-4.5x faster than the copy, and half precision cannot hold the means
    that break it (bfloat16: its error equals the contiguous kernel's up to mean/std 30,
    2e-2 against 3e-3 at 100). Float32 channels_last inputs take the native kernels instead
    where the C++ operator library is built (any size; they read that layout in place, and
    are stable), and bfloat16 ones with several channels per group ``zoo.c``'s bfloat16 row
    kernels (``GroupSpec``, from ``GroupNorm``), so the copy serves machines without native
    kernels, float16, and float32 without the operator library."""
    fmt = channels_last_format(x)
    if x.is_cpu:  # mixed dtypes are native here
        if fmt is None or (groups == 1 and x.dtype in (torch.float16, torch.bfloat16)):
            return torch.group_norm(x, groups, weight, bias, eps, False)
        y = torch.group_norm(x.contiguous(), groups, weight, bias, eps, False)
        return y.contiguous(memory_format=fmt)
    weight, bias = params_like(x, weight, bias)
    y = torch.group_norm(x, groups, weight, bias, eps, False)
    return y if fmt is None else y.contiguous(memory_format=fmt)


class _NativeGroupNorm(torch.autograd.Function):
    """Group norm through the native kernels. Returns ``(y, stats, var)``: ``stats``
    ``(2, N, G)`` is the mean and rstd, ``var`` the biased variance ``(N, G)`` when
    ``want_var``, else ``None``; neither is differentiable. Saves ``x``, ``weight`` and
    ``stats``, as torch's group norm does. Under ``create_graph=True`` the backward
    differentiates torch's group norm with a graph instead, so double backward works."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        groups: int,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        want_var: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        # grad mode is off in here: the kernels read the tensors' memory directly
        y, stats, var = _kernels.row_norm_forward_unchecked(x, groups, weight, bias, eps, want_var)
        ctx.save_for_backward(x, weight, stats)
        ctx.groups = groups
        ctx.eps = eps
        ctx.mark_non_differentiable(stats, *(() if var is None else (var,)))
        return y, stats, var

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor, *_: Any
    ) -> tuple[Tensor | None, None, Tensor | None, Tensor | None, None, None]:
        x, weight, stats = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3])
        if torch.is_grad_enabled():
            # create_graph=True: torch's group norm again, differentiated with a graph (its
            # own double backward, as torch.nn.GroupNorm gives). The bias only shifts y.
            inputs = [t for t, need in zip((x, weight), needs[:2], strict=True) if need]
            grads = iter(())
            if inputs:
                y = F.group_norm(x, ctx.groups, weight, None, ctx.eps)
                grads = iter(torch.autograd.grad(y, inputs, dy, create_graph=True))
            dx, dw = (next(grads) if need else None for need in needs[:2])
            db = dy.sum([0, *range(2, dy.dim())]) if needs[2] else None
            return dx, None, dw, db, None, None
        dx, dw, db = _kernels.row_norm_backward_unchecked(
            dy.contiguous(), x, ctx.groups, weight, stats, needs
        )
        return dx, None, dw, db, None, None


def native_group_norm(
    x: Tensor,
    groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    want_stats: bool = False,
    relu: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    r"""``torch.nn.functional.group_norm`` on the native kernels (see
    :func:`use_native_row_norm`), returning ``(y, mean, var)``: with ``want_stats`` the per
    (sample, group) mean and biased variance ``(N, groups)``, without gradient; else ``None``.

    .. math:: y = \gamma_c \frac{x - \mathrm{E}_{n,g}[x]}{\sqrt{\mathrm{Var}_{n,g}[x]
              + \epsilon}} + \beta_c

    ``relu``: return ``relu(y)``, fused into the kernels (the C++ operator's forward and
    backward, both layouts; or the forward alone where nothing needs a gradient); without the
    operator library the ReLU runs after them.
    """
    if not x.is_contiguous():  # channels_last: the operator's kernels for that layout
        y, stats, var = torch.ops.normzoo.group_norm(x, groups, weight, bias, eps, want_stats, relu)
        return y, (stats[0] if want_stats else None), (var if want_stats else None)
    if torch.is_grad_enabled() and _kernels.needs_grad(x, weight, bias):
        if _native.ops_available():  # a C++ autograd node: no Python in forward or backward
            fuse = relu and x.numel() // (x.shape[0] * groups) <= FUSED_RELU_MAX_ROW
            y, stats, var = torch.ops.normzoo.group_norm(
                x, groups, weight, bias, eps, want_stats, fuse
            )
            y = torch.relu(y) if relu and not fuse else y
            return y, (stats[0] if want_stats else None), (var if want_stats else None)
        y, stats, var = _NativeGroupNorm.apply(x, groups, weight, bias, eps, want_stats)
        y = torch.relu(y) if relu else y
    else:  # nothing to differentiate: skip autograd.Function's fixed cost
        y, stats, var = _kernels.row_norm_forward_unchecked(
            x, groups, weight, bias, eps, want_stats, relu
        )
    return y, (stats[0] if want_stats else None), var


def fast_group_norm(norm: Norm, x: Tensor, groups: int) -> Tensor | None:
    """``norm(x)`` (a group norm with ``groups`` groups, its ReLU fused where
    ``norm.activation`` asks for it) in one call of the C++ operator, or ``None``: then
    ``norm``'s checked forward runs (input checks and their errors, torch's kernels, the
    Python kernels' path where the operator library is unavailable).

    The operator (``normzoo::group_norm_module``, ``ops.cpp``) checks in C++ that the input is
    one the checked forward sends to the same kernels with the same call (float32 CPU
    ``(N, C, *spatial)`` with ``C = norm.num_features``, contiguous with at least
    ``NATIVE_MIN_NUMEL`` elements or channels_last; float32 parameters) and serves it, or returns
    ``None``; the values are the same either way. ``torch.compile`` and ``torch.jit.trace``
    are checked here (the tracer runs an operator with tracing off). Why: a module
    call's Python runs right after kernels whose traffic has pushed the interpreter out of the
    core's caches, so each of the checked path's dozens of small Python steps costs about a
    microsecond there; this path measured 30-40 us less per forward on mid-sized conv tensors
    (5-10% of a LayerNorm fwd+bwd), which decided the comparison with ``torch.nn.GroupNorm``.
    """
    global _module_op
    if not _native.one_call_ready(x, 1):
        return None
    least = NATIVE_MIN_NUMEL if x.is_contiguous() else 1  # channels_last: every size
    if x.numel() < least:
        return None
    if _module_op is None:  # resolved once: four attribute lookups less per call
        _module_op = torch.ops.normzoo.group_norm_module.default
    return _module_op(
        x,
        groups,
        norm.weight,
        norm.bias,
        norm.eps,
        norm.activation is not None,  # "relu", the one activation (check_activation)
        norm.num_features,
        2 + norm.max_spatial_dims,
        least,
        FUSED_RELU_MAX_ROW,
    )


_module_op: Any = None


# -- channels_last inputs: zoo.c's per-(sample, channel) statistics and map, read in place ----
def channels_last_rows(x: Tensor) -> bool:
    """A float32 or bfloat16 channels_last (or channels_last_3d) input that
    :class:`GroupSpec` serves through ``normzoo.norms._row_map.row_map`` without a copy."""
    if x.dtype not in zoo_kernels.ROW_DTYPES or x.is_contiguous():
        return False
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return fmt is not None and x.is_contiguous(memory_format=fmt) and use_row_map(x)


class GroupSpec(RowNormSpec):
    r"""Group norm (``groups=C``: InstanceNorm; ``groups=1``: channels-first LayerNorm) as a
    per-(sample, channel) affine map, for channels_last inputs.

    InstanceNorm's channels_last path where the C++ operator library is unavailable (with it,
    ``row_norm.c``'s channels_last kernels serve GroupNorm, LayerNorm and InstanceNorm:
    no torch ops between the passes). Against torch, which reshapes InstanceNorm into a batch
    norm, this path measured 0.3-0.9x torch's time; for GroupNorm and LayerNorm it measured
    1.1-2.6x slower than torch's channels-last group-norm kernel (the small graph's torch ops
    between the native passes), so they take torch's contiguous kernel on a copy then
    (:func:`torch_group_norm`; torch's channels_last kernel is not stable).

    The group statistics combine the channels' ones without cancellation (the law of total
    variance): :math:`\mu_g = \overline{\mu_c}`,
    :math:`\sigma_g^2 = \overline{\sigma_c^2} + \overline{(\mu_c - \mu_g)^2}` over the
    group's channels; then ``a = w rstd``, ``b = beta - mu_g a``. The backward
    ``dx = rstd (w dy - mean_g(w dy) - xhat mean_g(w dy xhat))`` is written as
    ``a dy + k1 (x - mu_c) + k0`` for zoo.c's ``map_dx``. Each direction is one native call
    (``zoo_kernels.gn_forward``, ``gn_backward``: the small graph on ``(N, C)`` values in C,
    where ~20 torch ops had cost 0.3-0.5 ms per fwd+bwd on (8, 256, 14, 14) bfloat16). Inputs:
    ``weight``, ``bias``.
    """

    op = zoo_kernels.AFFINE

    def __init__(self, groups: int, eps: float) -> None:
        self.groups = groups
        self.eps = eps

    def _group_stats(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        """Per-channel copies ``(N, C)`` of the group mean and variance."""
        n, c = mean.shape
        m = mean.view(n, self.groups, -1)
        gm = m.mean(2, keepdim=True)
        gv = var.view(n, self.groups, -1).mean(2, keepdim=True) + (m - gm).pow(2).mean(
            2, keepdim=True
        )
        return gm.expand_as(m).reshape(n, c), gv.expand_as(m).reshape(n, c)

    def params(  # type: ignore[override]
        self, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> Tensor:
        gm, gv = self._group_stats(mean, var)
        a = torch.rsqrt(gv + self.eps)
        if weight is not None:
            a = a * weight.to(a.dtype).view(1, -1)
        b = -gm * a
        if bias is not None:
            b = b + bias.to(a.dtype).view(1, -1)
        return torch.stack([a, b], dim=2)

    def forward(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        y, self.mean, self.var, self.gstats, self.p = zoo_kernels.gn_forward(
            x, weight, bias, self.groups, self.eps
        )
        return y

    def backward(
        self, dy: Tensor, x: Tensor, inputs: tuple[Tensor | None, ...], needs: tuple[bool, ...]
    ) -> list[Tensor | None]:
        return zoo_kernels.gn_backward(dy, x, self.p, self.mean, self.gstats, inputs[0], needs)
