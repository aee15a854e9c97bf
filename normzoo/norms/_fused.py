"""Fusion of reference math into one kernel with ``torch.compile``, compiled lazily.

A norm written as a few tensor ops (mean, variance, normalize, scale and shift) reads its
input several times in eager mode; ``torch.compile`` fuses the ops into one or two loops that
read it once or twice. :func:`fuse` wraps such a function so that

* nothing is compiled, and ``torch._dynamo`` is not even imported, until the first call
  (``import normzoo`` stays light);
* each *kind* of call (device, dtype, rank, contiguity and ``requires_grad`` of every tensor
  argument, and the value of every bool, int, str or None argument) gets its own compiled
  kernel, compiled once with dynamic shapes (and symbolic floats), so a model with many layer
  shapes, or a momentum that changes every step, neither recompiles per call nor exhausts
  dynamo's per-function recompile limit;
* under an enclosing ``torch.compile`` (a whole model), the plain function runs so that the
  outer compiler traces and fuses it with its neighbours (no nested compile, no graph break);
* where compiling is impossible (no C++ compiler, an unsupported Python, an inductor error) the
  call falls back to the plain function, with one ``RuntimeWarning``; the result is the same.

Switches: the environment variable ``NORMZOO_COMPILE=0`` (read at each call, so tests can set
it) or :func:`set_enabled` turn every fused kernel into its plain function.

On the CPU the wider zoo's fast paths are native kernels or eager (``normzoo.norms._kernels``:
compiling their reference math measured slower, or took minutes to compile); on CUDA,
EvoNorm, FRN and SwitchableNorm fuse theirs (``normzoo.norms._gpu``). To fuse a reference
function anyway, wrap it, ``fast = fuse(functional.rms_norm)``, and call ``fast(...)`` in the
module's fast path; autograd through it is compiled too (forward and
backward kernels). Pass copies of tensors the module updates in place after the call (running
statistics that the math reads): the compiled backward may save an input instead of a value
derived from it, and an in-place update would then fail autograd's version check. Python
floats are symbolic (a momentum of ``1 / n`` compiles once) unless the
function branches on them; bools, ints and strings select kernels.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import types
import warnings
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import torch

__all__ = ["FusedFunction", "compile_enabled", "compile_times", "fuse", "set_enabled"]

R = TypeVar("R")

_ENV = "NORMZOO_COMPILE"
#: Calls whose largest tensor has fewer elements run the plain function (a compiled call has
#: a fixed cost of tens of microseconds, and small inputs are not memory-bound). Tests lower it
#: to reach the compiled kernels with small tensors.
DEFAULT_MIN_NUMEL = 1 << 18
_switch: bool = True
_lock = threading.Lock()
#: First-call wall time (compile included) of every kernel compiled in this process, seconds.
_compile_times: dict[str, float] = {}


def set_enabled(enabled: bool) -> None:
    """Turn compiled kernels on or off for this process (``NORMZOO_COMPILE=0`` also turns
    them off). Already compiled kernels are kept and used again when re-enabled."""
    global _switch
    _switch = bool(enabled)


def compile_enabled() -> bool:
    """Whether fused kernels may compile: the switch, the environment and torch allow it."""
    if not _switch:
        return False
    if os.environ.get(_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return hasattr(torch, "compile")


def compile_times() -> dict[str, float]:
    """``{"<function> <key>": seconds}``: the first call (compile included) of each kernel."""
    return dict(_compile_times)


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _arg_key(arg: Any) -> Hashable:
    if isinstance(arg, torch.Tensor):
        return (
            arg.device.type,
            arg.dtype,
            arg.dim(),
            arg.is_contiguous(),
            arg.is_contiguous(memory_format=torch.channels_last) if arg.dim() == 4 else False,
            arg.requires_grad and torch.is_grad_enabled(),
        )
    if isinstance(arg, float):  # symbolic under dynamic=True: one kernel for every value
        return float
    if arg is None or isinstance(arg, (bool, int, str)):  # control flow: one kernel per value
        return arg
    return type(arg).__name__


def _unparameter(arg: Any) -> Any:
    return arg.view_as(arg) if isinstance(arg, torch.nn.Parameter) else arg


def _fresh_copy(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` with its own code object: dynamo caches (and limits recompiles) per code object,
    so each kernel of a :class:`FusedFunction` gets its own cache."""
    code = fn.__code__.replace()
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return functools.update_wrapper(copy, fn)


class FusedFunction(Generic[R]):
    """``fn`` compiled lazily with ``torch.compile``, one kernel per kind of call.

    Calling it is calling ``fn`` (same arguments, same results up to float rounding), only
    faster once compiled. ``eager`` is the plain function.
    """

    def __init__(
        self, fn: Callable[..., R], *, dynamic: bool = True, min_numel: int | None = None
    ) -> None:
        self.eager = fn
        self.dynamic = dynamic
        self.min_numel = min_numel
        self._kernels: dict[Hashable, Callable[..., R] | None] = {}
        self.__name__ = getattr(fn, "__name__", "fused")
        self.__doc__ = fn.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        if _is_compiling() or not compile_enabled() or self._too_small(args, kwargs):
            return self.eager(*args, **kwargs)
        # Parameters enter as plain views (same storage, gradient flows through the view):
        # dynamo keeps Parameter shapes static and would compile one kernel per channel count.
        args = tuple(_unparameter(a) for a in args)
        kwargs = {k: _unparameter(v) for k, v in kwargs.items()}
        key = (
            tuple(_arg_key(a) for a in args),
            tuple((k, _arg_key(v)) for k, v in sorted(kwargs.items())),
        )
        kernel = self._kernels.get(key, self)
        if kernel is None:  # compiling this kind of call failed before
            return self.eager(*args, **kwargs)
        if kernel is not self:
            try:
                return kernel(*args, **kwargs)
            except Exception as err:  # e.g. a recompile that fails: fall back for good
                return self._fail(key, err, args, kwargs)
        return self._compile_and_call(key, args, kwargs)

    def _too_small(self, args: tuple, kwargs: dict) -> bool:
        floor = DEFAULT_MIN_NUMEL if self.min_numel is None else self.min_numel
        if floor <= 0:
            return False
        sizes = [a.numel() for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        return max(sizes, default=0) < floor

    def _compile_and_call(self, key: Hashable, args: tuple, kwargs: dict) -> R:
        with _lock:
            kernel = torch.compile(_fresh_copy(self.eager), dynamic=self.dynamic, fullgraph=True)
            start = time.perf_counter()
            try:
                out = kernel(*args, **kwargs)
            except Exception as err:  # no compiler, unsupported Python, inductor error, ...
                return self._fail(key, err, args, kwargs)
            _compile_times[f"{self.__name__} {key}"] = time.perf_counter() - start
            self._kernels[key] = kernel
            return out

    def _fail(self, key: Hashable, err: Exception, args: tuple, kwargs: dict) -> R:
        """Use the eager function for this kind of call from now on (a genuine error in
        the arguments is raised again by it)."""
        self._kernels[key] = None
        first_line = str(err).splitlines()[0] if str(err) else ""
        warnings.warn(
            f"normzoo: compiling {self.__name__} failed ({type(err).__name__}: {first_line}); "
            f"using the eager version (set {_ENV}=0 to skip compiling)",
            RuntimeWarning,
            stacklevel=4,
        )
        return self.eager(*args, **kwargs)

    def compiled_kinds(self) -> int:
        """How many kinds of call have a compiled kernel (failed ones not counted)."""
        return sum(k is not None for k in self._kernels.values())


def fuse(
    fn: Callable[..., R] | None = None, *, dynamic: bool = True, min_numel: int | None = None
) -> Any:
    """Wrap ``fn`` as a :class:`FusedFunction`; usable as ``@fuse`` or ``fuse(fn)``.

    ``min_numel``: calls whose largest tensor is smaller run ``fn`` itself (default
    ``DEFAULT_MIN_NUMEL``; 0 compiles every call).
    """
    if fn is None:
        return lambda f: FusedFunction(f, dynamic=dynamic, min_numel=min_numel)
    return FusedFunction(fn, dynamic=dynamic, min_numel=min_numel)
