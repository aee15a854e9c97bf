"""Names to norm classes: canonical names, aliases and third-party plugins.

Lookup is forgiving: case, ``-``, ``_`` and spaces are ignored, and torch's class names
resolve too (``BatchNorm2d`` -> ``batchnorm``: a trailing ``1d``/``2d``/``3d`` is dropped when
the full name is not registered). Plugins are distributions that declare an entry point in
the group ``normzoo.norms``; they are imported at the first lookup, not at ``import normzoo``.
An entry point may name a ``Norm`` subclass (registered under the entry point's name unless
it registered itself) or a module whose import calls ``normzoo.register``.
"""

from __future__ import annotations

import difflib
import inspect
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar

from normzoo import norms
from normzoo.norms.base import Norm, check_activation

__all__ = [
    "ENTRY_POINT_GROUP",
    "NormInfo",
    "UnknownNormError",
    "available",
    "create",
    "get",
    "info",
    "register",
]

ENTRY_POINT_GROUP = "normzoo.norms"

N = TypeVar("N", bound=type[Norm])
NormSpec = str | type[Norm] | Callable[..., Norm]


@dataclass(frozen=True)
class NormInfo:
    """A registry entry: the canonical name, the aliases and the class."""

    name: str
    aliases: tuple[str, ...]
    cls: type[Norm]
    plugin: str | None = None


class UnknownNormError(KeyError):
    """An unknown norm name. A ``KeyError`` whose message lists the close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


_entries: dict[str, NormInfo] = {}  # canonical name -> entry
_lookup: dict[str, str] = {}  # normalized name or alias -> canonical name
_plugins_loaded = False
_loading_plugin: str | None = None


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def register(name: str, *, aliases: Iterable[str] = ()) -> Callable[[N], N]:
    """Class decorator that registers a ``Norm`` subclass under ``name`` and ``aliases``.

    >>> @normzoo.register("mynorm", aliases=("mn",))
    ... class MyNorm(normzoo.Norm): ...

    Raises:
        ValueError: a name or alias is already taken (or empty).
        TypeError: the decorated object is not a ``normzoo.Norm`` subclass.
    """
    aliases = tuple(aliases)

    def decorator(cls: N) -> N:
        if not (isinstance(cls, type) and issubclass(cls, Norm)):
            raise TypeError(f"register({name!r}) expects a subclass of normzoo.Norm, got {cls!r}")
        keys = [_key(n) for n in (name, *aliases)]
        for raw, key in zip((name, *aliases), keys, strict=True):
            if not key:
                raise ValueError(f"norm names must be non-empty, got {raw!r}")
            if key in _lookup:
                owner = _entries[_lookup[key]]
                raise ValueError(
                    f"cannot register {cls.__name__} as {raw!r}: the name is taken by "
                    f"{owner.cls.__module__}.{owner.cls.__qualname__} (registered as "
                    f"{owner.name!r}); choose another name"
                )
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate names in register({name!r}, aliases={aliases!r})")
        canonical = keys[0]
        _entries[canonical] = NormInfo(canonical, tuple(keys[1:]), cls, _loading_plugin)
        for key in keys:
            _lookup[key] = canonical
        return cls

    return decorator


def _load_plugins() -> None:
    """Import the ``normzoo.norms`` entry points once; a broken plugin only warns."""
    global _plugins_loaded, _loading_plugin
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _loading_plugin = ep.name
        try:
            obj = ep.load()
            registered = any(e.cls is obj for e in _entries.values())
            if isinstance(obj, type) and issubclass(obj, Norm) and not registered:
                register(ep.name)(obj)
        except Exception as exc:  # a broken plugin must not break the registry
            warnings.warn(
                f"normzoo: could not load the norm plugin {ep.name!r} ({ep.value}): "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )
        finally:
            _loading_plugin = None


def _resolve(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a norm name must be a str, got {type(name).__name__} {name!r}")
    _load_plugins()
    key = _key(name)
    if key in _lookup:
        return _lookup[key]
    stripped = re.sub(r"[123]d$", "", key)
    if stripped in _lookup:
        return _lookup[stripped]
    close = difflib.get_close_matches(key, list(_lookup), n=5, cutoff=0.5)
    suggestion = list(dict.fromkeys(_lookup[c] for c in close))
    hint = f"; did you mean {', '.join(map(repr, suggestion))}?" if suggestion else "."
    raise UnknownNormError(
        f"unknown norm {name!r}{hint} Registered norms: {', '.join(available())}"
    )


def get(name: str) -> type[Norm]:
    """The ``Norm`` class registered under ``name`` (a canonical name or an alias)."""
    return _entries[_resolve(name)].cls


def info(name: str) -> NormInfo:
    """The registry entry of ``name``: canonical name, aliases, class, plugin."""
    return _entries[_resolve(name)]


def available() -> list[str]:
    """The canonical names of every registered norm, plugins included, sorted."""
    _load_plugins()
    return sorted(_entries)


def accepted_kwargs(cls: type[Norm]) -> dict[str, Any]:
    """The keyword arguments ``cls`` takes after ``num_features``, with their defaults."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]
    return {
        p.name: p.default
        for p in params
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in ("device", "dtype")
    }


def create(
    norm: NormSpec, num_features: int, *, activation: str | None = None, **kwargs: Any
) -> Norm:
    """Build a norm layer for ``num_features`` channels.

    ``norm`` is a registered name or alias (``"gn"``, ``"BatchNorm2d"``), a ``Norm``
    subclass, or any callable (e.g. a ``functools.partial``) that takes the channel count.
    Unknown keyword arguments raise a ``TypeError`` that lists the accepted ones.
    ``activation="relu"`` makes the layer apply a ReLU to its output
    (:meth:`normzoo.norms.Norm.fuse_activation`, fused into the kernels where they can).
    """
    if activation is not None:
        check_activation(activation)  # before building anything
        layer = create(norm, num_features, **kwargs)
        if not isinstance(layer, Norm):
            raise TypeError(
                f"activation={activation!r} needs a normzoo Norm, but {norm!r} built a "
                f"{type(layer).__name__}; apply the activation as a separate layer"
            )
        return layer.fuse_activation(activation)
    if isinstance(norm, str):
        cls = get(norm)
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        unknown = sorted(set(kwargs) - set(params) - {"self"})
        if unknown and not takes_any:
            accepted = ", ".join(accepted_kwargs(cls))
            raise TypeError(
                f"norm {_resolve(norm)!r} ({cls.__name__}) got unexpected argument(s) "
                f"{', '.join(unknown)}; it accepts: {accepted}"
            )
        return cls(num_features, **kwargs)
    if callable(norm):
        return norm(num_features, **kwargs)
    raise TypeError(
        f"norm must be a registered name, a Norm subclass or a callable, "
        f"got {type(norm).__name__} {norm!r}"
    )


_BUILTINS: tuple[tuple[str, type[Norm], tuple[str, ...]], ...] = (
    ("batchnorm", norms.BatchNorm, ("bn",)),
    ("layernorm", norms.LayerNorm, ("ln",)),
    ("instancenorm", norms.InstanceNorm, ("in",)),
    ("groupnorm", norms.GroupNorm, ("gn",)),
    ("identity", norms.Identity, ("none",)),
    ("rmsnorm", norms.RMSNorm, ("rms",)),
    ("batchrenorm", norms.BatchRenorm, ("brn", "batchrenormalization")),
    ("ghostbatchnorm", norms.GhostBatchNorm, ("gbn", "ghostbn")),
    ("frozenbatchnorm", norms.FrozenBatchNorm, ("frozenbn", "fbn")),
    ("syncbatchnorm", norms.SyncBatchNorm, ("syncbn",)),
    ("switchablenorm", norms.SwitchableNorm, ("sn", "switchnorm")),
    ("frn", norms.FilterResponseNorm, ("filterresponsenorm", "frntlu")),
    ("evonorm_b0", norms.EvoNormB0, ("b0",)),
    ("evonorm_s0", norms.EvoNormS0, ("s0",)),
)
for _name, _cls, _aliases in _BUILTINS:
    register(_name, aliases=_aliases)(_cls)
