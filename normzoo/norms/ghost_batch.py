"""Ghost Batch Normalization."""

from __future__ import annotations

import functools
import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import _native, functional
from normzoo._native import kernels as _kernels
from normzoo.functional._stats import compute_dtype
from normzoo.norms import _triton, _triton_zoo
from normzoo.norms.base import capturing
from normzoo.norms.batch import (
    BATCH_NORM_DTYPES,
    NATIVE_MIN_NUMEL,
    BatchNorm,
    native_batch_norm_backward,
    native_batch_norm_forward,
    use_native_batch_stats,
)


class _NativeGhostBatchNorm(torch.autograd.Function):
    """Ghost BN through BatchNorm's native kernels where the C++ operator
    (``normzoo::ghost_batch_norm_train``, the same kernels, node and blend in C++) is not
    available or a module's parameters are not float32; every virtual batch in one call: with
    ``rows`` (token input ``(N, C)``, or channels_last input seen as its ``(N * positions,
    C)`` rows) ``kernels.ghost_rows_forward``; contiguous ``(N, C, *)`` input
    ``kernels.ghost_forward`` (float32: BatchNorm's kernels on each virtual batch, to the bit;
    bfloat16: the same formulas on widened values). Other
    channels_last input takes one call of BatchNorm's channels_last kernels per virtual batch,
    each writing its slice of one output (a virtual batch of a channels_last tensor is itself
    channels_last: no ``torch.cat``).

    Returns ``(y, stats, var)``: ``stats`` ``(G, 2, C)`` holds each of the ``G`` virtual
    batches' mean and inverse std, ``var`` ``(G, C)`` their biased variances when ``want_var``
    (for the running statistics), else ``None``; neither is differentiable. The backward
    writes each virtual batch's slice of ``dx`` and sums the weight and bias gradients over the
    virtual batches in order; under ``create_graph=True`` it runs torch's differentiable
    ``native_batch_norm_backward`` per virtual batch instead.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        virtual_batch_size: int,
        want_var: bool,
        rows: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        y, stats, var = _ghost_forward(x, weight, bias, eps, virtual_batch_size, want_var, rows)
        ctx.save_for_backward(x, weight, stats)
        ctx.eps, ctx.virtual_batch_size, ctx.rows = eps, virtual_batch_size, rows
        ctx.mark_non_differentiable(stats, *(() if var is None else (var,)))
        return y, stats, var

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor, *_: Any
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None, None]:
        x, weight, stats = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        vbs = ctx.virtual_batch_size
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            parts = [
                torch.ops.aten.native_batch_norm_backward(
                    g, xs, weight, None, None, s[0], s[1], True, ctx.eps, list(needs)
                )
                for g, xs, s in zip(dy.split(vbs), x.split(vbs), stats, strict=True)
            ]
            dx = torch.cat([p[0] for p in parts]) if needs[0] else None
        elif ctx.rows:  # every virtual batch in one call
            dy = dy.contiguous(
                memory_format=_kernels.channels_last_format(x) or torch.contiguous_format
            )
            dxr, dw, db = _kernels.ghost_rows_backward(
                _as_rows(dy), _as_rows(x), weight, stats, vbs * _positions(x), needs
            )
            return None if dxr is None else _from_rows(dxr, x), dw, db, None, None, None, None
        elif _kernels.channels_last_format(x) is None:  # contiguous: one call
            dx, dw, db = _kernels.ghost_backward(dy, x, weight, stats, vbs, needs)
            return dx, dw, db, None, None, None, None
        else:
            dy = dy.contiguous(memory_format=_kernels.channels_last_format(x))
            dx = torch.empty_like(x) if needs[0] else None
            slices = dx.split(vbs) if dx is not None else [None] * len(stats)
            parts = [
                native_batch_norm_backward(g, xs, weight, s, needs, out=o)
                for g, xs, s, o in zip(dy.split(vbs), x.split(vbs), stats, slices, strict=True)
            ]
        dw, db = (_sum_in_order([p[i] for p in parts]) if needs[i] else None for i in (1, 2))
        return dx, dw, db, None, None, None, None


#: Channels per task of the rows kernel (``NZ_GHOST_BLOCK`` in ``batch_norm.c``).
GHOST_BLOCK = 256


def _positions(x: Tensor) -> int:
    """Spatial positions per sample and channel (1 for tokens)."""
    return x.numel() // max(x.shape[0] * x.shape[1], 1)


def _as_rows(x: Tensor) -> Tensor:
    """Token ``(N, C)`` or channels_last ``(N, C, *spatial)`` input as the ``(N * positions,
    C)`` rows it is laid out as in memory: a view."""
    return x if x.dim() == 2 else x.movedim(1, -1).reshape(-1, x.shape[1])


def _from_rows(rows: Tensor, like: Tensor) -> Tensor:
    """The ``(N * positions, C)`` ``rows`` viewed as ``like``'s shape (channels_last for a
    spatial ``like``): the inverse of :func:`_as_rows`, a view."""
    if like.dim() == 2:
        return rows
    n, c = like.shape[0], like.shape[1]
    return rows.view(n, *like.shape[2:], c).movedim(-1, 1)


def _ghost_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    virtual_batch_size: int,
    want_var: bool,
    rows: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(y, stats, var)`` of :class:`_NativeGhostBatchNorm`, without autograd."""
    if rows:  # every virtual batch in one call, on x's rows
        y, stats, var = _kernels.ghost_rows_forward(
            _as_rows(x), weight, bias, eps, virtual_batch_size * _positions(x), want_var
        )
        return _from_rows(y, x), stats, var
    if _kernels.channels_last_format(x) is None:  # contiguous (N, C, *): one call as well
        return _kernels.ghost_forward(x, weight, bias, eps, virtual_batch_size, want_var)
    y = torch.empty_like(x)
    parts = [
        native_batch_norm_forward(xs, weight, bias, eps, want_var, out=ys)[1:]
        for xs, ys in zip(x.split(virtual_batch_size), y.split(virtual_batch_size), strict=True)
    ]
    stats = torch.stack([p[0] for p in parts])
    var = torch.stack([p[1] for p in parts if p[1] is not None]) if want_var else None
    return y, stats, var


def _sequential_blend(factors: list[float]) -> tuple[float, list[float]]:
    """``r <- (1 - f_j) r + f_j b_j`` for ``j = 0 .. G-1`` as one step:
    ``r <- keep r + sum_j c_j b_j``, ``keep = prod_j (1 - f_j)``,
    ``c_j = f_j prod_{k > j} (1 - f_k)``. Returns ``(keep, [c_0, ..., c_{G-1}])``."""
    keep, coeffs = 1.0, [0.0] * len(factors)
    for j in range(len(factors) - 1, -1, -1):  # from the last update back: O(G)
        coeffs[j] = factors[j] * keep
        keep *= 1.0 - factors[j]
    return keep, coeffs


@functools.lru_cache(maxsize=64)
def _blend_weights(weights: tuple[tuple[float, ...], ...], device: torch.device) -> Tensor:
    """``weights`` as a float64 tensor on ``device``, cached: with a fixed momentum they are
    the same every step, and building them each time is a host-to-device copy, which waits
    for the GPU's queue (a sync per training step)."""
    return torch.tensor(weights, dtype=torch.float64, device=device)


def _sum_in_order(tensors: list[Tensor]) -> Tensor:
    """``t0 + t1 + ...`` left to right (deterministic, unlike a threaded reduction)."""
    total = tensors[0].clone()
    for t in tensors[1:]:
        total += t
    return total


#: Per device type: the number of virtual batches from which a batch is normalized in one set
#: of kernels rather than one torch BN call per virtual batch (``scripts/bench_ghost_dispatch.py``).
#: On an H100 (fwd+bwd) the loop won with 2, 4 and 8 virtual batches (0.5 vs 1.4 ms, 1.1 vs
#: 1.6 ms, 2.9 vs 3.4 ms) and lost with 128 and 2048 (13.6 vs 1.5 ms, 203 vs 3.1 ms). On the
#: CPU the loop measured 2-4x faster than the vectorized math (torch's var_mean and the
#: composite backward) from 4 to 128 virtual batches: no vectorizing there.
VECTOR_MIN_BATCHES: dict[str, int] = {"cuda": 16}

_train_op: Any = None
#: ``normzoo::ghost_batch_norm_train``'s kernels (``GhostKernels`` in ``ops.cpp``): contiguous
#: input on BatchNorm's blocks, rows (tokens, channels_last input), channels_last input on
#: BatchNorm's channels_last kernels per virtual batch; each one call of the operator.
GHOST_BLOCKS, GHOST_ROWS, GHOST_CL_PER_BATCH = 0, 1, 2


class GhostBatchNorm(BatchNorm):
    r"""Ghost Batch Normalization: BN statistics per virtual batch of the batch.

    .. math::
        y_i = \gamma \, \frac{x_i - \mu_{\mathcal{B}_S(i)}}
              {\sqrt{\sigma^2_{\mathcal{B}_S(i)} + \epsilon}} + \beta

    In training the batch is split, in order, into virtual ("ghost") batches of
    ``virtual_batch_size`` samples, each normalized with its own statistics; the last one is
    smaller when ``N`` is not a multiple. A virtual batch larger than a batch that is not a
    multiple of it is an error. The running statistics take one BN update per virtual batch
    (``num_batches_tracked`` counts virtual batches); eval is BN with the running statistics.
    With ``virtual_batch_size`` equal to the batch size it is exactly BN. Checkpoints are BN's.

    Args:
        num_features: the channel count ``C``.
        virtual_batch_size: samples per virtual batch, ``> 0``. Default ``32``.
        eps, momentum, affine, track_running_stats: as ``BatchNorm``.
        impl: ``"fast"`` (on the CPU, one native call for every virtual batch: float32 or
            bfloat16 tokens ``(N, C)`` and channels_last input with a virtual batch per thread,
            as rows; contiguous input, float32 where BatchNorm would use its native kernels
            (on their blocks) and bfloat16; other channels_last input on BatchNorm's kernels
            per virtual batch; with float32 parameters the kernels, their autograd node and
            the running statistics' update are one C++ operator call; else torch's BN kernel
            per virtual batch) or ``"reference"``.

    Reference: E. Hoffer, I. Hubara, D. Soudry, "Train longer, generalize better: closing the
    generalization gap in large batch training of neural networks", NeurIPS 2017.
    """

    def __init__(
        self,
        num_features: int,
        virtual_batch_size: int = 32,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        vbs = virtual_batch_size
        if isinstance(vbs, bool) or not isinstance(vbs, numbers.Integral):
            raise TypeError(
                f"virtual_batch_size must be a positive int (samples per virtual batch), "
                f"got {type(vbs).__name__} {vbs!r}"
            )
        if vbs <= 0:
            raise ValueError(
                f"virtual_batch_size must be a positive int (samples per virtual batch), got {vbs}"
            )
        self.virtual_batch_size = int(vbs)
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            impl=impl,
            device=device,
            dtype=dtype,
        )

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if not self._uses_batch_statistics() or x.numel() == 0:
            return
        n, vbs = x.shape[0], self.virtual_batch_size
        if vbs > n and n % vbs:
            raise ValueError(
                f"{type(self).__name__}: virtual_batch_size={vbs} is larger than the batch "
                f"(N={n}), which is not a multiple of it; use virtual_batch_size <= {n}"
            )
        smallest = n % vbs or vbs
        if smallest * (x.numel() // (n * x.shape[1])) == 1:
            raise ValueError(
                f"{type(self).__name__} needs more than 1 value per channel in every virtual "
                f"batch; a batch of N={n} in virtual batches of {vbs} leaves one of 1 sample "
                f"(input shape {tuple(x.shape)}); choose a virtual_batch_size that divides N"
            )

    def _virtual_batches(self, x: Tensor) -> int:
        """The number of virtual batches of ``x``, in integer arithmetic (a symbolic batch size
        stays symbolic under ``torch.compile(dynamic=True)``; ``math.ceil`` of a division
        specialized it: one graph per batch size)."""
        return (x.shape[0] + self.virtual_batch_size - 1) // self.virtual_batch_size

    def _empty_batches(self, x: Tensor) -> int:
        """An empty input counts its virtual batches: none for a batch of 0 samples."""
        return self._virtual_batches(x)

    def _forward(self, x: Tensor) -> Tensor:
        if not self._uses_batch_statistics():
            return super()._forward(x)
        update = self.training and self.track_running_stats
        captured = capturing()  # compile, export, torch.func, forward AD: torch ops only
        tracked: int | Tensor = 0
        if update and captured:  # momentum=None's factors from the count on the device
            if self.momentum is None:
                tracked = self.num_batches_tracked.to(torch.float64)
            self.num_batches_tracked.add_(self._virtual_batches(x))
        elif update:
            # the count only for momentum=None's factors, known on the host after a first read
            tracked = self._batches_tracked() if self.momentum is None else 0
            self._count_batches(self._virtual_batches(x))
        if captured and self.impl == "fast" and x.shape[0] % self.virtual_batch_size == 0:
            # equal virtual batches: one reduction for all (the loop below: a kernel set each)
            return self._all_virtual_batches_at_once(x, update, tracked)
        if self.impl == "reference" or captured:
            y, mean, var = functional.ghost_batch_norm(
                x,
                self.running_mean if update else None,
                self.running_var if update else None,
                self.weight,
                self.bias,
                virtual_batch_size=self.virtual_batch_size,
                training=True,
                momentum=self.momentum,
                num_batches_tracked=tracked,
                eps=self.eps,
            )
            if update:
                with torch.no_grad():
                    self.running_mean.copy_(mean)
                    self.running_var.copy_(var)
            return y
        if _triton.serves_batch(x, self.weight, self.bias, kind="ghost"):
            # CUDA, measured (_triton.ZOO_MEASURED): the two-phase kernels, per (sample, channel)
            # (the running statistics updated by a kernel: one launch, no host values)
            running = (self.running_mean, self.running_var, self.momentum, tracked)
            return _triton_zoo.ghost_batch_norm(
                x, self.weight, self.bias, self.virtual_batch_size, self.eps,
                running if update else None,
            )[0]  # fmt: skip
        if self._vectorize(x):  # a GPU, many virtual batches
            return self._all_virtual_batches_at_once(x, update, tracked)
        route = self._native_route(x, update)
        if route is not None:  # the CPU's native kernels
            return self._native_forward(x, update, tracked, route == "rows")
        outputs = []
        for j, chunk in enumerate(x.split(self.virtual_batch_size), start=1):
            factor = 1.0 / (tracked + j) if self.momentum is None else self.momentum
            rm, rv = (self.running_mean, self.running_var) if update else (None, None)
            outputs.append(
                F.batch_norm(chunk, rm, rv, self.weight, self.bias, True, factor, self.eps)
            )
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]  # one: no copy

    def _vectorize(self, x: Tensor) -> bool:
        """Whether every virtual batch is normalized in one set of kernels instead of one BN
        call each: equal virtual batches, and enough of them that the calls' fixed cost
        decides (``VECTOR_MIN_BATCHES``)."""
        n, vbs = x.shape[0], self.virtual_batch_size
        least = VECTOR_MIN_BATCHES.get(x.device.type)
        return least is not None and n % vbs == 0 and n // vbs >= max(least, 2)

    def _all_virtual_batches_at_once(
        self, x: Tensor, update: bool, tracked: int | Tensor
    ) -> Tensor:
        r"""Every virtual batch at once: ``x`` viewed as ``(k, |B_S|, C, L)``, the statistics
        of each ``(virtual batch, channel)`` over ``(|B_S|, L)`` in one reduction, one affine
        map, and autograd through them; the ``k`` running-average updates folded into one
        (:meth:`_blend_virtual_batches`)."""
        n, c = x.shape[0], x.shape[1]
        k, vbs = n // self.virtual_batch_size, self.virtual_batch_size
        xf = x.to(compute_dtype(x))
        xs = xf.reshape(k, vbs, c, -1)
        var, mean = torch.var_mean(xs, dim=(1, 3), correction=0, keepdim=True)  # (k, 1, C, 1)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.to(scale.dtype).view(1, 1, c, 1)
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias.to(scale.dtype).view(1, 1, c, 1)
        y = torch.addcmul(shift, xs, scale).view(x.shape).to(x.dtype)
        if update:
            self._blend_virtual_batches(
                x, mean.detach().view(k, c), var.detach().view(k, c), tracked
            )
        if x.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4:
            return y.contiguous(memory_format=torch.channels_last)
        return y

    def _native_route(self, x: Tensor, update: bool = True) -> str | None:
        """BatchNorm's native kernels where BatchNorm would take them for the whole batch (its
        size, not a virtual batch's, sets the threshold: torch's path per virtual batch also
        pays for a ``torch.cat``, 1.25-1.7x BN's time before these kernels), and which:
        ``"rows"`` (:meth:`_use_rows_kernel`), ``"kernels"`` (the others: contiguous input's
        blocks, or BatchNorm's channels_last kernels per virtual batch), or ``None``.
        bfloat16 channels_last input with too few virtual batches for the rows kernel takes
        BatchNorm's bfloat16 channels_last kernels behind the C++ operator (``update``: the
        running statistics are updated too); the Python path has no bfloat16 build of that
        loop."""
        if self._use_rows_kernel(x):
            return "rows"
        if use_native_batch_stats(x, self.weight) or self._use_bf16_blocks(x):
            return "kernels"
        if (
            x.dtype is torch.bfloat16
            and _kernels.channels_last_format(x) is not None
            and use_native_batch_stats(x, self.weight, BATCH_NORM_DTYPES)
            and self._op_serves(update)
        ):
            return "kernels"
        return None

    def _use_bf16_blocks(self, x: Tensor) -> bool:
        """bfloat16 contiguous ``(N, C, *)`` input: every virtual batch in one call of the
        contiguous kernels' bfloat16 build (``kernels.ghost_forward``), where torch's
        bfloat16 BN per virtual batch and a ``torch.cat`` took 1.5-1.7x BatchNorm2d's fwd+bwd
        on (128, 64, 8, 8), 2 threads."""
        return (
            x.is_cpu
            and x.dtype == torch.bfloat16
            and x.dim() >= 3
            and x.is_contiguous()
            and (self.weight is None or self.weight.dtype in (torch.float32, x.dtype))
            and x.numel() >= NATIVE_MIN_NUMEL
            and not _native.capturing()
            and _native.available("batch_norm")
        )

    def _use_rows_kernel(self, x: Tensor) -> bool:
        """The native kernel that normalizes every virtual batch in one call
        (``kernels.ghost_rows_forward``), float32 or bfloat16 (read and written as it is,
        float32 math): on token input ``(N, C)`` (torch's BN per virtual batch measured up to
        3.5x BatchNorm1d's fwd+bwd at ``(4096, 1024)`` on a 2-core Xeon: 128 calls), and on
        channels_last input, its ``(N * positions, C)`` rows, where the virtual batches give
        every thread a task (its tasks are (virtual batch, 256 channels); below that, BN's
        kernels per virtual batch, which split one over the threads). On channels_last
        (128, 64, 8, 8), virtual batches of 32, 2 threads, the kernels' fwd+bwd took 0.30 ms
        (bfloat16 0.22) where the module's path per virtual batch took 1.0 ms (1.05)."""
        if not (
            x.is_cpu
            and x.dtype in _kernels.GHOST_ROW_DTYPES
            and (self.weight is None or self.weight.dtype in (torch.float32, x.dtype))
            and x.numel() >= NATIVE_MIN_NUMEL
            and not _native.capturing()
            and _native.available("batch_norm")
        ):
            return False
        if x.dim() == 2:
            return x.is_contiguous()
        if _kernels.channels_last_format(x) is None:
            return False
        tasks = -(-x.shape[0] // self.virtual_batch_size) * -(-x.shape[1] // GHOST_BLOCK)
        return tasks >= _native.threads()

    def _native_forward(self, x: Tensor, update: bool, tracked: int, rows: bool) -> Tensor:
        vbs = self.virtual_batch_size
        if self._op_serves(update):
            global _train_op
            if _train_op is None:  # resolved once: four attribute lookups less per call
                _train_op = torch.ops.normzoo.ghost_batch_norm_train.default
            if rows:
                kernels = GHOST_ROWS
            elif _kernels.channels_last_format(x) is None:
                kernels = GHOST_BLOCKS
            else:
                kernels = GHOST_CL_PER_BATCH
            return _train_op(
                x,
                self.weight,
                self.bias,
                self.running_mean if update else None,
                self.running_var if update else None,
                vbs,
                self.eps,
                self.momentum,
                tracked,
                kernels,
                _kernels.CL_MAX_BLOCKS,
            )
        # the rows and the bfloat16 kernels take float32 parameters (a bfloat16 model's: cast,
        # autograd casting their gradients back)
        cast = rows or x.dtype != torch.float32
        weight, bias = (
            p.float() if p is not None and cast else p for p in (self.weight, self.bias)
        )
        if torch.is_grad_enabled() and _kernels.needs_grad(x, weight, bias):
            y, stats, var = _NativeGhostBatchNorm.apply(
                x, weight, bias, self.eps, vbs, update, rows
            )
        else:  # nothing to differentiate: skip autograd.Function's fixed cost
            y, stats, var = _ghost_forward(x, weight, bias, self.eps, vbs, update, rows)
        if update:
            assert var is not None
            self._blend_virtual_batches(x, stats[:, 0], var, tracked)
        return y

    def _op_serves(self, update: bool) -> bool:
        """Whether the C++ operator (``normzoo::ghost_batch_norm_train``) may run a batch that
        :meth:`_native_forward` serves: float32 parameters and running statistics (a module
        cast to bfloat16 keeps the Python path, which casts them), the operator library
        loaded. One call then runs the kernels in a C++ autograd node and blends the running
        statistics in C++ (:meth:`_blend_virtual_batches`' fold): the Python path's
        ``autograd.Function`` and blend cost 130-200 us of a (128, 64, 8, 8) forward whose
        kernel takes 60-90."""
        tensors = (self.weight, self.bias) + (
            (self.running_mean, self.running_var) if update else ()
        )
        if any(t is not None and t.dtype is not torch.float32 for t in tensors):
            return False
        return _native.ops_available()

    def _blend_virtual_batches(
        self, x: Tensor, means: Tensor, variances: Tensor, tracked: int | Tensor
    ) -> None:
        """The running statistics after one BN update per virtual batch of ``x``, in order,
        folded into one step (``_sequential_blend``) from the virtual batches' ``(G, C)``
        means and biased variances. Inside a graph capture ``tracked`` (``momentum=None``)
        is the count as a device tensor, and the cumulative average's fold is closed-form:
        ``(t + G) r_G = t r_0 + sum_j b_j``."""
        vbs = self.virtual_batch_size
        spatial = x.numel() // (x.shape[0] * x.shape[1])
        if capturing():
            self._blend_captured(x, means, variances, tracked, spatial)
            return
        starts = range(0, x.shape[0], vbs)
        factors = [
            1.0 / (tracked + j + 1) if self.momentum is None else self.momentum
            for j in range(len(starts))
        ]
        keep, coeffs = _sequential_blend(factors)
        counts = [min(vbs, x.shape[0] - n) * spatial for n in starts]
        unbias = [c * m / max(m - 1, 1) for c, m in zip(coeffs, counts, strict=True)]
        with torch.no_grad():  # the weighted sums in float64: (G,) @ (G, C)
            both = _blend_weights((tuple(coeffs), tuple(unbias)), means.device)
            for buf, w, batch in (
                (self.running_mean, both[0], means),
                (self.running_var, both[1], variances),
            ):
                buf.mul_(keep).add_((w @ batch.double()).to(buf.dtype))

    def _blend_captured(
        self, x: Tensor, means: Tensor, variances: Tensor, tracked: int | Tensor, spatial: int
    ) -> None:
        """:meth:`_blend_virtual_batches` with no host values beyond the shapes: equal
        virtual batches (the only ones this path serves), weights built in the graph."""
        groups = means.shape[0]
        m = self.virtual_batch_size * spatial
        unbias = m / max(m - 1, 1)
        if isinstance(tracked, Tensor):  # momentum=None: the count on the device, float64
            total = tracked + groups
            keep: float | Tensor = tracked / total
            weights = torch.reciprocal(total).expand(groups)
        else:  # _sequential_blend's fold for a fixed momentum m, as tensor operations
            # (Python float arithmetic on m fails dynamo's guards with dynamic=True)
            m_ = self.momentum
            powers = torch.arange(groups - 1, -1, -1, dtype=torch.float64, device=means.device)
            weights = m_ * torch.pow(1.0 - m_, powers)  # m (1 - m)^(G - 1 - j)
            keep = torch.pow(1.0 - m_, torch.full_like(powers[:1], groups)).squeeze(0)
        with torch.no_grad():
            for buf, batch, scale in (
                (self.running_mean, means, 1.0),
                (self.running_var, variances, unbias),
            ):
                update = (weights * scale) @ batch.double()
                buf.copy_((buf.double() * keep + update).to(buf.dtype))

    def _repr_structure(self) -> list[str]:
        return [f"virtual_batch_size={self.virtual_batch_size}"]
