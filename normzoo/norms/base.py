"""``Norm``: the base class every normzoo normalization layer subclasses.

It owns what all norms share: the constructor checks, the per-channel affine parameters, the
optional running statistics, the input checks (raised before any state changes), the
``impl`` switch between the fast path and the reference math, an optional activation applied
to the output (``fuse_activation``), and state-dict compatibility with ``torch.nn`` (the same
keys, and old checkpoints without ``num_batches_tracked``).
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor, nn

#: Names of the axes of an ``(N, C, *spatial)`` input, used by ``statistics_per`` and
#: ``reduces_over``. ``"group"`` is a block of ``C / G`` consecutive channels.
AXES = ("batch", "channel", "group", "spatial")

IMPLS = ("fast", "reference")

#: Activations a norm can apply to its own output (:meth:`Norm.fuse_activation`).
ACTIVATIONS = ("relu",)


def check_activation(activation: Any) -> str | None:
    """``activation`` if it is ``None`` or one of ``ACTIVATIONS``, else a ``ValueError``."""
    if activation is None or activation in ACTIVATIONS:
        return activation
    raise ValueError(
        f"unknown activation {activation!r}; a norm can apply one of {ACTIVATIONS} (or None)"
    )


def apply_activation(x: Tensor, activation: str | None) -> Tensor:
    """``x`` through the named activation of ``ACTIVATIONS`` (``None``: ``x`` itself)."""
    if check_activation(activation) is None:
        return x
    return torch.relu(x)


def check_num_features(num_features: Any) -> int:
    if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral):
        raise TypeError(
            f"num_features must be a positive int (the channel count C), "
            f"got {type(num_features).__name__} {num_features!r}"
        )
    if num_features <= 0:
        raise ValueError(
            f"num_features must be a positive int (the channel count C), got {num_features}"
        )
    return int(num_features)


def check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float >= 0, got {type(eps).__name__} {eps!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps}")
    return float(eps)


def check_momentum(momentum: Any) -> float | None:
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(
            f"momentum must be a float in [0, 1] or None (cumulative average), "
            f"got {type(momentum).__name__} {momentum!r}"
        )
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(
            f"momentum must be a float in [0, 1] or None (cumulative average), got {momentum}"
        )
    return float(momentum)


def _version_key(t: Tensor) -> tuple[int, int] | None:
    """``(storage address, in-place version)`` of ``t``: what changes when its value can have
    changed (``None`` for inference tensors, which keep no version)."""
    try:
        return t.data_ptr(), t._version
    except RuntimeError:
        return None


def _lerp_weight(factor: float | Tensor, running: Tensor) -> float | Tensor:
    """``factor`` as ``Tensor.lerp_`` takes it for ``running``: a tensor factor (see
    :meth:`Norm._update_factor`) in ``running``'s dtype."""
    return factor.to(running.dtype) if isinstance(factor, Tensor) else factor


def _finer(batch: Tensor, running: Tensor) -> bool:
    """Whether ``batch`` statistics hold more precision than the ``running`` buffer (float32
    statistics of a module cast to bfloat16 or float16)."""
    return (
        batch.dtype.is_floating_point
        and running.dtype.is_floating_point
        and torch.finfo(batch.dtype).eps < torch.finfo(running.dtype).eps
    )


def _blend(running: Tensor, batch: Tensor, factor: float | Tensor) -> None:
    """``running.lerp_(batch, factor)`` in place; a low-precision buffer is blended in the
    statistics' precision and rounded once, as torch's batch-norm kernels update theirs."""
    if _finer(batch, running):
        running.copy_(running.to(batch.dtype).lerp_(batch, _lerp_weight(factor, batch)))
    else:
        running.lerp_(batch.to(running.dtype), _lerp_weight(factor, running))


#: Whether a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``, ...) is running.
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def capturing() -> bool:
    """Whether ``torch.compile`` or ``torch.export`` is tracing this call (dynamo reads it as
    a constant), a ``torch.func`` transform is running it, or forward-mode AD is on (a
    ``torch.autograd.forward_ad.dual_level``). The norms then compute through torch
    operators with no host reads of device values: the zoo's norms through their reference
    math (``normzoo.functional``, which inductor fuses and whose operators every transform
    and forward AD know; normzoo's own kernels have no batching rules, and their autograd
    functions no ``jvp`` or transform hooks), the core norms through torch's kernels, and
    ``momentum=None``'s cumulative factors as device tensors."""
    if torch.compiler.is_compiling():
        return True
    if _transforms_active is not None and _transforms_active():
        return True
    return _forward_ad._current_level >= 0


def _define_snapshot() -> Any:
    library = getattr(torch, "library", None)
    if not hasattr(library, "custom_op"):  # torch < 2.4
        return None

    @torch.library.custom_op("normzoo_graph::snapshot", mutates_args=())
    def snapshot(t: Tensor) -> Tensor:
        return t.clone()

    @snapshot.register_fake
    def _(t: Tensor) -> Tensor:
        return torch.empty_like(t)

    return snapshot


_snapshot_op = _define_snapshot()


def snapshot(t: Tensor) -> Tensor:
    """A copy of a buffer that a captured training step reads *and* updates, for the math
    the backward needs (Batch Renorm's ``r`` and ``d`` come from the running statistics and
    the step count). AOTAutograd's partitioner would recompute that math in the backward
    from the buffer itself, after the step's in-place update: silently wrong gradients
    (pytorch/pytorch#197039). A custom operator is never recomputed (it is not on the
    partitioner's allowlist), so its output is saved."""
    return t.clone() if _snapshot_op is None else _snapshot_op(t)


class Norm(nn.Module):
    """Base class of every normzoo norm.

    Subclasses set the class attributes below (what the norm normalizes over, as data that
    docs and tools read), call ``super().__init__`` and implement ``_forward(x)``; the
    public ``forward`` checks the input first.

    Attributes:
        statistics_per: the axes along which separate statistics are kept (e.g. BatchNorm:
            ``("channel",)``, one mean and variance per channel).
        reduces_over: the axes a statistic is computed over (BatchNorm:
            ``("batch", "spatial")``). ``"channel"`` together with ``"group"`` in
            ``statistics_per`` means the channels of one group.
        uses_batch_stats: whether an output depends on other samples of the batch in training.
        batchnorm_statistics: whether ``running_mean``/``running_var`` are BN's per-channel
            statistics of the batch, so ``normzoo.convert`` may carry them between such norms.
        min_spatial_dims, max_spatial_dims: the number of spatial dims the norm accepts.
        fuses_activation: whether its kernels apply a ``fuse_activation`` ReLU in their own
            passes (float32 CPU input, contiguous or channels_last); others apply it after. Its
            ``_forward`` then takes ``relu``. A subclass defining its own ``_forward`` gets
            ``False`` unless it sets the attribute itself.
        one_call: whether ``forward`` may serve an input in one C++ call that does the input
            checks and ``_forward``'s dispatch itself (BatchNorm in training, GroupNorm,
            LayerNorm: see ``normzoo.norms._rownorm.fast_group_norm``). A subclass defining its
            own ``_forward`` or ``check_input`` gets ``False`` unless it sets the attribute.
    """

    statistics_per: ClassVar[tuple[str, ...]] = ()
    reduces_over: ClassVar[tuple[str, ...]] = ()
    uses_batch_stats: ClassVar[bool] = False
    batchnorm_statistics: ClassVar[bool] = False
    min_spatial_dims: ClassVar[int] = 0
    max_spatial_dims: ClassVar[int] = 3
    fuses_activation: ClassVar[bool] = False
    one_call: ClassVar[bool] = False

    # Version 2 checkpoints carry ``num_batches_tracked`` (torch.nn's numbering).
    _version = 2

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # a subclass with its own math (a _forward of its own, e.g. BatchNorm's subclasses or
        # a plugin's) applies the activation after it, unless it says it fuses it
        if "_forward" in cls.__dict__ and "fuses_activation" not in cls.__dict__:
            cls.fuses_activation = False
        # ... and runs its forward through _forward and check_input, never a one-call path
        # that skips both (BatchNorm's, GroupNorm's, LayerNorm's)
        own_math = "_forward" in cls.__dict__ or "check_input" in cls.__dict__
        if own_math and "one_call" not in cls.__dict__:
            cls.one_call = False

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        affine: bool = True,
        impl: str = "fast",
        channels_last: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = check_num_features(num_features)
        self.eps = check_eps(eps)
        self.affine = bool(affine)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.impl = impl
        self.channels_last = bool(channels_last)
        factory = {"device": device, "dtype": dtype}
        if self.affine:
            self.weight = nn.Parameter(torch.empty(self.num_features, **factory))
            self.bias = nn.Parameter(torch.empty(self.num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        #: applied to the output (``fuse_activation``); not part of the state dict
        self.activation: str | None = None
        self.track_running_stats = False
        self.register_buffer("running_mean", None)
        self.register_buffer("running_var", None)
        self.register_buffer("num_batches_tracked", None)

    # -- state ---------------------------------------------------------------------------
    def _init_running_stats(
        self, momentum: float | None, device: Any = None, dtype: Any = None
    ) -> None:
        """Create ``running_mean``, ``running_var`` and ``num_batches_tracked`` buffers."""
        self.momentum = check_momentum(momentum)
        self.track_running_stats = True
        factory = {"device": device, "dtype": dtype}
        self.running_mean = torch.zeros(self.num_features, **factory)
        self.running_var = torch.ones(self.num_features, **factory)
        kwargs = {k: v for k, v in factory.items() if k != "dtype"}
        self.num_batches_tracked = torch.tensor(0, dtype=torch.long, **kwargs)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batch tracked."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Running statistics reset, ``weight`` 1 and ``bias`` 0."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _update_factor(self) -> float | Tensor:
        """Count one more tracked batch and return this step's running-average factor.

        ``momentum=None`` gives the cumulative average ``1 / num_batches_tracked``: a float
        from the host's count, or, inside a graph capture (:func:`capturing`), a float64
        0-d tensor computed on the device (a host read would break the graph, or make
        ``torch.compile`` specialize on the count and recompile every step).
        Call only after every input check has passed.
        """
        if capturing():
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                return torch.reciprocal(self.num_batches_tracked.to(torch.float64))
            return self.momentum
        if self.momentum is None:
            return 1.0 / self._count_batches(1, read=True)
        self._count_batches(1)
        return self.momentum

    def _known_batches(self) -> int | None:
        """The host's copy of ``num_batches_tracked`` where it is still valid, else ``None``:
        valid while the buffer is the tensor it was taken from, on the same storage, at the
        same in-place version (``Tensor._version``, which ``add_``, ``copy_``, ``zero_``,
        ``load_state_dict`` and normzoo's C++ operator bump)."""
        t, seen = self.num_batches_tracked, self.__dict__.get("_tracked_seen")
        if seen is None or seen[0] is not t:
            return None
        key = _version_key(t)
        return seen[2] if key is not None and key == seen[1] else None

    def _remember_batches(self, value: int) -> int:
        self.__dict__["_tracked_seen"] = (
            self.num_batches_tracked,
            _version_key(self.num_batches_tracked),
            value,
        )
        return value

    def _batches_tracked(self) -> int:
        """``int(num_batches_tracked)``, read from the device only when something other than
        :meth:`_count_batches` changed it since the last read (:meth:`_known_batches`): on a
        GPU each read waits for every queued kernel, a sync per training step in Batch
        Renorm's schedule and Ghost BN's and ``momentum=None``'s cumulative factors."""
        known = self._known_batches()
        return self._remember_batches(int(self.num_batches_tracked)) if known is None else known

    def _count_batches(self, k: int, read: bool = False) -> int:
        """``num_batches_tracked += k``; returns the new count where the host knows it (then
        keeps knowing it) or ``read`` asks to read it first, else ``0``, reading nothing
        (momentum factors do not need the count)."""
        if not read and "_tracked_seen" not in self.__dict__:  # never read: nothing to keep
            self.num_batches_tracked.add_(k)
            return 0
        known = self._batches_tracked() if read else self._known_batches()
        self.num_batches_tracked.add_(k)
        return 0 if known is None else self._remember_batches(known + k)

    def _blend_running_stats(
        self,
        mean: Tensor | None,
        var: Tensor | None,
        factor: float | Tensor,
        count: int,
    ) -> None:
        """``running = (1 - factor) running + factor batch``, in place as torch's norms do, for
        the batch ``mean`` and biased ``var`` (either may be ``None``); the variance is made
        unbiased over ``count`` values first. Call after every input check has passed."""
        with torch.no_grad():
            if mean is not None:
                _blend(self.running_mean, mean.detach(), factor)
            if var is not None:
                var = var.detach()
                if not _finer(var, self.running_var):
                    var = var.to(self.running_var.dtype)
                _blend(self.running_var, var * (count / max(count - 1, 1)), factor)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Checkpoints written before torch 0.4.1 (version < 2) have no num_batches_tracked;
        # we also accept any checkpoint that simply lacks it.
        key = prefix + "num_batches_tracked"
        if self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # -- forward -------------------------------------------------------------------------
    def check_input(self, x: Any) -> None:
        """Raise a ``TypeError``/``ValueError`` naming the problem if ``x`` is not accepted."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} expects a floating-point input "
                f"(float32, float64, float16 or bfloat16), got {x.dtype}"
            )
        if self.channels_last:
            if x.dim() < 1:
                raise ValueError(
                    f"{type(self).__name__}(channels_last=True) expects an input of shape "
                    f"(..., C), got a scalar"
                )
            if x.shape[-1] != self.num_features:
                raise ValueError(
                    f"{type(self).__name__} expects {self.num_features} channels "
                    f"(num_features) in the last dim, got {x.shape[-1]} "
                    f"(input shape {tuple(x.shape)})"
                )
            return
        lo, hi = 2 + self.min_spatial_dims, 2 + self.max_spatial_dims
        if not lo <= x.dim() <= hi:
            spatial = (
                f"{self.min_spatial_dims} to {self.max_spatial_dims}"
                if lo != hi
                else f"{self.min_spatial_dims}"
            )
            raise ValueError(
                f"{type(self).__name__} expects an input of shape (N, C, *spatial) with "
                f"{spatial} spatial dims (rank {lo} to {hi}), got rank {x.dim()} "
                f"(input shape {tuple(x.shape)})"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expects {self.num_features} channels (num_features) "
                f"in dim 1, got {x.shape[1]} (input shape {tuple(x.shape)})"
            )

    def fuse_activation(self, activation: str | None = "relu") -> Norm:
        """Apply ``activation`` to this layer's output: ``y = relu(norm(x))``, the norm and the
        activation of a conv block as one layer (timm's norm-act layers). ``None`` removes it.
        Returns the module.

        BatchNorm (training), GroupNorm, InstanceNorm and channels-first LayerNorm fuse the ReLU
        into their native CPU kernels (float32, contiguous or channels_last): the
        forward's map writes ``max(y, 0)`` and the backward recomputes the ReLU's mask from
        ``x``, the parameters and the saved statistics (per row or block of positions, in
        cache), so the activation costs no pass over the tensor of its own (a separate
        ``nn.ReLU`` reads and writes it once forward and reads two tensors and writes one
        backward). FrozenBatchNorm (from ``NATIVE_MIN_NUMEL`` elements) writes ``max(a x + b,
        0)`` in its one pass and masks its backward with the saved output. Everywhere else,
        and for the other norms, the activation runs after the norm; the values are the same.
        Raises a ``ValueError`` for an activation not in ``ACTIVATIONS``.
        """
        self.activation = check_activation(activation)
        return self

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if x.numel() == 0:
            return self._empty_forward(x)
        if self.activation is None:
            return self._forward(x)
        if self.fuses_activation:  # such a norm's _forward takes relu=True and applies it
            return self._forward(x, relu=True)  # type: ignore[call-arg]
        return apply_activation(self._forward(x), self.activation)

    def _empty_forward(self, x: Tensor) -> Tensor:
        """An input with no elements (an empty batch, as a detection model's zero instances
        or a data-parallel rank's share of a short last batch give), after ``check_input``
        passed: an empty output shaped and laid out as ``x``, on which every parameter's
        gradient is zero, as ``torch.nn``'s norms give. Nothing is normalized, so the running
        statistics stay as they are; in training a tracked batch is still counted
        (:meth:`_empty_batches`), as ``torch.nn.BatchNorm`` counts it."""
        if self.training and self.track_running_stats:
            batches = self._empty_batches(x)
            if capturing():
                self.num_batches_tracked.add_(batches)
            else:
                self._count_batches(batches)
        y = x.clone()
        for p in self.parameters():  # each gradient a zero tensor, none left as None
            y = y + p.sum().to(x.dtype) * 0
        return y

    def _empty_batches(self, x: Tensor) -> int:
        """How many batches an empty input counts in ``num_batches_tracked`` (one)."""
        return 1

    def _forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The norm's output. A subclass with ``fuses_activation`` takes ``relu: bool = False``
        too and returns ``relu(norm(x))`` with it (fused into its kernels where they can)."""
        raise NotImplementedError

    def _repr_structure(self) -> list[str]:
        """``key=value`` items that ``repr`` shows right after ``num_features`` (e.g. groups)."""
        return []

    def extra_repr(self) -> str:
        parts = [f"{self.num_features}", *self._repr_structure(), f"eps={self.eps:g}"]
        if self.track_running_stats or hasattr(self, "momentum"):
            parts.append(f"momentum={getattr(self, 'momentum', None)}")
        parts.append(f"affine={self.affine}")
        if hasattr(self, "momentum"):
            parts.append(f"track_running_stats={self.track_running_stats}")
        if self.channels_last:
            parts.append("channels_last=True")
        if self.impl != "fast":
            parts.append(f"impl={self.impl!r}")
        if self.activation is not None:
            parts.append(f"activation={self.activation!r}")
        return ", ".join(parts)
