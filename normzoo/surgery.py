"""Model surgery: swap the normalization layers of any ``nn.Module`` for a normzoo norm.

>>> model, report = normzoo.convert(resnet, "frozenbatchnorm")   # freeze every BN
>>> print(report)                                                # what was replaced, and kept
>>> model, report = normzoo.convert(resnet, "syncbatchnorm")      # for DDP ...
>>> model = normzoo.revert(model, report)                         # ... and back

A layer counts as a normalization layer when it is a ``normzoo.Norm`` or one of torch.nn's
BatchNorm (incl. ``SyncBatchNorm``), InstanceNorm, GroupNorm, LayerNorm or RMSNorm; its
channel count is read from it. Like detectron2's ``FrozenBatchNorm2d.convert_frozen_batchnorm``
the walk follows ``named_children`` and keeps what still means the same thing: the affine
``weight``/``bias`` wherever both layers have them, and the running statistics (with
``eps``, ``momentum`` and ``track_running_stats``) between norms whose running statistics are
BN's (``Norm.batchnorm_statistics``). Nothing here imports Lightning.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from normzoo import registry
from normzoo.norms.base import Norm
from normzoo.norms.batch import BatchNorm

__all__ = ["ConversionReport", "Replacement", "convert", "is_batchnorm", "is_norm_layer", "revert"]

_TORCH_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.RMSNorm,
)
_AFFINE = ("weight", "bias")
_RUNNING = ("running_mean", "running_var", "num_batches_tracked")
_BN_OPTIONS = ("momentum", "track_running_stats")


@dataclass(frozen=True)
class Replacement:
    """One replaced layer: where, from what to what, and what was carried over."""

    path: str
    old_type: str
    new_type: str
    num_features: int
    carried: tuple[str, ...]
    original: nn.Module = field(repr=False, compare=False)


@dataclass
class ConversionReport:
    """What ``convert`` replaced, in model order; ``str(report)`` is a table."""

    target: str
    replacements: list[Replacement] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.replacements)

    def __iter__(self) -> Iterator[Replacement]:
        return iter(self.replacements)

    def __str__(self) -> str:
        if not self.replacements:
            return f"convert to {self.target}: no normalization layer found"
        rows = [("layer", "old type", "new type", "channels", "carried over")]
        rows += [
            (
                r.path or "(model)",
                r.old_type,
                r.new_type,
                str(r.num_features),
                ", ".join(r.carried) or "-",
            )
            for r in self.replacements
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = [
            "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        return f"convert to {self.target}: {len(self)} layer(s)\n" + "\n".join(lines)


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``convert`` treats ``module`` as a normalization layer."""
    return isinstance(module, (Norm, *_TORCH_NORMS))


def is_batchnorm(module: nn.Module) -> bool:
    """A plain BatchNorm: torch.nn's (any rank, ``SyncBatchNorm`` too) or normzoo's ``batchnorm``.

    The selector the DDP plugin passes as ``only=``: BN variants with their own statistics
    (ghost, renorm, frozen, switchable, EvoNorm) are left alone.
    """
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or type(module) is BatchNorm


def _has_bn_statistics_cls(cls: type) -> bool:
    """Whether the running statistics of ``cls`` are BN's (torch's BNs and such normzoo norms)."""
    return issubclass(cls, nn.modules.batchnorm._BatchNorm) or getattr(
        cls, "batchnorm_statistics", False
    )


def _has_bn_statistics(module: nn.Module) -> bool:
    return _has_bn_statistics_cls(type(module))


def _channels(path: str, module: nn.Module) -> tuple[int, bool]:
    """``(C, channels_last)`` of a norm layer; a ``ValueError`` naming the layer if unknown."""
    if isinstance(module, Norm):
        return module.num_features, module.channels_last
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        shape = tuple(module.normalized_shape)
        if len(shape) == 1:
            return int(shape[0]), True
        channels = None
    else:
        channels = getattr(module, "num_features", getattr(module, "num_channels", None))
    if not isinstance(channels, int) or channels <= 0:
        detail = (
            f"normalized_shape={tuple(module.normalized_shape)} spans several dims"
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm))
            else f"its channel count is {channels!r} (an uninitialised lazy module?)"
        )
        raise ValueError(
            f"cannot infer the channel count of layer {path or '(model)'!r} "
            f"({type(module).__name__}): {detail}; a normzoo norm needs one channel dim "
            f"(num_features)"
        )
    return channels, False


def _accepted(factory: Callable[..., Any]) -> tuple[set[str], bool]:
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    return set(params) - {"self"}, takes_any


def _resolve_target(to: Any) -> tuple[Callable[..., nn.Module], str]:
    if isinstance(to, str):
        entry = registry.info(to)  # an unknown name lists the registered ones
        return entry.cls, entry.name
    if isinstance(to, type) and issubclass(to, Norm):
        return to, to.__name__
    if callable(to):
        return to, getattr(to, "__name__", None) or repr(to)
    raise TypeError(
        f"to must be a registered norm name, a Norm subclass or a callable that takes the "
        f"channel count, got {type(to).__name__} {to!r}"
    )


def _selector(only: Any) -> Callable[[nn.Module], bool]:
    if only is None:
        return lambda m: True
    if isinstance(only, type) or (
        isinstance(only, tuple) and all(isinstance(t, type) for t in only)
    ):
        return lambda m: isinstance(m, only)
    if callable(only):
        return only
    raise TypeError(
        f"only must be None, a type, a tuple of types or a predicate module -> bool, "
        f"got {type(only).__name__} {only!r}"
    )


def _state_like(module: nn.Module) -> dict[str, Any]:
    """The device and floating dtype of ``module``'s tensors (empty if it has none)."""
    for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        if t.is_floating_point():
            return {"device": t.device, "dtype": t.dtype}
    return {}


def _copy_state(src: nn.Module, dst: nn.Module, names: tuple[str, ...]) -> list[str]:
    """Copy the tensors ``names`` present with the same shape on both; return those copied."""
    copied = []
    with torch.no_grad():
        for name in names:
            a, b = getattr(src, name, None), getattr(dst, name, None)
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
                b.copy_(a)
                if isinstance(a, nn.Parameter) and isinstance(b, nn.Parameter):
                    b.requires_grad_(a.requires_grad)
                copied.append(name)
    return copied


def _carry(src: nn.Module, dst: nn.Module) -> list[str]:
    names = _AFFINE + (_RUNNING if _has_bn_statistics(src) and _has_bn_statistics(dst) else ())
    return _copy_state(src, dst, names)


def _set(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at ``path`` of ``model``; return the model (``module`` for the root)."""
    if not path:
        return module
    parent_path, _, name = path.rpartition(".")
    model.get_submodule(parent_path).add_module(name, module)
    return model


def _target_has_bn_statistics(factory: Callable[..., Any]) -> bool:
    cls = getattr(factory, "func", factory)  # a functools.partial of a class
    return isinstance(cls, type) and _has_bn_statistics_cls(cls)


def convert(
    model: nn.Module,
    to: str | type[Norm] | Callable[..., nn.Module],
    *,
    only: type | tuple[type, ...] | Callable[[nn.Module], bool] | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, ConversionReport]:
    """Replace every normalization layer of ``model`` by the norm ``to``, in place.

    Args:
        model: any ``nn.Module`` (a norm layer itself is replaced and returned).
        to: a registered name or alias (``"gn"``, ``"frozenbn"``), a ``Norm`` subclass, or a
            callable (e.g. a ``functools.partial``) that takes the channel count.
        only: convert only the layers this selects: a type, a tuple of types, or a predicate
            ``module -> bool`` (e.g. ``normzoo.surgery.is_batchnorm``). Default: every norm.
        **kwargs: passed to every new layer (``num_groups=8``...). ``eps`` and, between norms
            with BN statistics, ``momentum`` and ``track_running_stats`` are taken from the
            old layer unless given; ``channels_last`` follows a token LayerNorm/RMSNorm, and a
            fused ``activation`` (``Norm.fuse_activation``) follows its layer.

    Returns:
        ``(model, report)``: the converted model (the same object unless ``model`` was itself
        a norm layer) and a ``ConversionReport`` of each replacement, which ``revert`` undoes.

    Raises:
        UnknownNormError: ``to`` is not registered (the message lists the registered names).
        TypeError: a keyword argument the target does not take (the accepted ones are listed).
        ValueError: a layer whose channel count cannot be inferred (named in the message).

    Nothing is changed when an error is raised: layers are built first, then swapped in.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    factory, target = _resolve_target(to)
    accepted, takes_any = _accepted(factory)
    unknown = sorted(set(kwargs) - accepted)
    if unknown and not takes_any:
        raise TypeError(
            f"convert to {target!r} got argument(s) it does not take: {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted - {'num_features', 'device', 'dtype'}))}"
        )
    select = _selector(only)
    target_bn = _target_has_bn_statistics(factory)
    # Arguments the caller fixed, in kwargs or in a partial (a Hydra norm config), win over
    # what the old layer would pass on.
    given = set(kwargs) | set(getattr(factory, "keywords", None) or {})

    # Plan: find the layers (and fail on any of them) before touching the model.
    plan: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        if is_norm_layer(module) and select(module):
            plan.append((prefix, module))
            return
        for name, child in module.named_children():
            walk(child, f"{prefix}.{name}" if prefix else name)

    walk(model, "")
    built: list[tuple[str, nn.Module, nn.Module, int, list[str]]] = []
    for path, old in plan:
        channels, channels_last = _channels(path, old)
        layer_kwargs = dict(kwargs)
        options: list[str] = []
        inherited = ["eps"] + ["channels_last"] * channels_last
        if target_bn and _has_bn_statistics(old):
            inherited += list(_BN_OPTIONS)
        for name in inherited:
            value = channels_last if name == "channels_last" else getattr(old, name, None)
            if name in given or (name not in accepted and not takes_any):
                continue
            if name == "eps" and value is None:  # torch's RMSNorm: eps=None
                continue
            if value is not None or name == "momentum":
                layer_kwargs[name] = value
                options.append(name)
        try:
            new = factory(channels, **layer_kwargs)
        except (TypeError, ValueError) as exc:
            raise type(exc)(
                f"cannot convert layer {path or '(model)'!r} ({type(old).__name__}) to "
                f"{target!r}: {exc}"
            ) from exc
        activation = getattr(old, "activation", None)
        if activation is not None:  # a fused activation goes with the layer, or nothing converts
            if not isinstance(new, Norm):
                raise ValueError(
                    f"cannot convert layer {path or '(model)'!r} ({type(old).__name__}, "
                    f"activation={activation!r}) to {target!r}: a {type(new).__name__} applies "
                    f"no activation; convert to a normzoo norm, or remove it first with "
                    f"fuse_activation(None) and add the activation as a layer"
                )
            new.fuse_activation(activation)
            options.append("activation")
        new.to(**_state_like(old))
        new.train(old.training)
        built.append((path, old, new, channels, options))

    report = ConversionReport(target)
    for path, old, new, channels, options in built:
        carried = _carry(old, new) + options
        model = _set(model, path, new)
        report.replacements.append(
            Replacement(path, type(old).__name__, type(new).__name__, channels, tuple(carried), old)
        )
    return model, report


def revert(model: nn.Module, report: ConversionReport) -> nn.Module:
    """Undo ``convert``: put each original layer back, updated with the current state.

    Each original module (its class and settings) returns to its path and receives the
    current layer's affine parameters and, between norms with BN statistics, its running
    statistics (so BN -> SyncBN -> BN keeps what training learned). Returns the model.
    """
    for r in reversed(report.replacements):
        try:
            current = model.get_submodule(r.path) if r.path else model
        except AttributeError as exc:
            raise ValueError(f"cannot revert layer {r.path!r}: not in the model any more") from exc
        _carry(current, r.original)
        r.original.train(current.training)
        model = _set(model, r.path, r.original)
    return model
