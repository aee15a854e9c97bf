r"""BatchNorm, GroupNorm, LayerNorm and InstanceNorm (and RMSNorm, FRN, EvoNorm-S0/B0, Batch
Renorm, SwitchableNorm, Ghost BN, FrozenBN) on CUDA through Triton kernels.

torch's CUDA kernels for these norms reached 0.15-0.6 of a ``copy_``'s bandwidth on an H200
(``docs/data/bench_cuda_h200.json``, the eighth session): batch norm on contiguous input
reads the tensor several times, group/layer/instance norm on channels_last copy it to NCHW
first. The kernels here (``normzoo.norms._triton_kernels``) move what the math needs:

* a group (or instance, or channels-first layer) norm whose (sample, group) block is
  contiguous and at most ``ONE_PASS_MAX`` elements, a layer norm over tokens, and a group
  norm of ``(N, C)`` tokens (each row's groups as a (groups, channels) tile) take **one
  pass**: the block in registers, ``x`` read once and ``y`` written once; in the backward
  ``x`` and ``dy`` read once, ``dx`` written once;
* everything else (batch norm, large groups, channels_last) takes **two phases**: partial
  statistics per chunk (merged with Chan's pairwise formula, stable in float32), a small
  kernel merging each set's partials, then the map over the tensor, run last chunk first so
  it starts on what is still in L2.

Math, per set ``S`` (a channel for batch norm, a (sample, group) for the others), ``m = |S|``:

.. math::
    \hat x = (x - \mu_S)\, r_S,\quad r_S = (\sigma^2_S + \epsilon)^{-1/2},\quad
    y = w_c \hat x + b_c, \qquad
    \frac{\partial L}{\partial x} = r_S \Big(w_c\, dy - \frac{1}{m}\sum_S w\, dy
        - \hat x\, \frac{1}{m}\sum_S w\, dy\, \hat x\Big)

with ``sum(dy * x_hat)`` and ``sum(dy)`` per channel as the weight and bias gradients; chunk
statistics merge as in T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a
pairwise algorithm for computing sample variances" (1979):
``M2 = M2_a + M2_b + d^2 n_a n_b / n`` with ``d = mean_b - mean_a``.

Arithmetic is float32 for float32, bfloat16 and float16 inputs; ``y`` and ``dx`` have the
input's dtype and layout (channels_last stays channels_last, no copy).

Measured on an H200 (tenth session, ``docs/data/bench_cuda_h200_triton_*.json``, fwd and bwd
as fractions of a ``copy_`` of the same tensor, timed as the GPU's work): the one-pass kernels
run at 0.82-0.97 of the copy ceiling on (256, 64, 64, 64) and (65536, 1024) (torch's: 0.2-0.6),
the two-phase ones at 0.58-0.64 contiguous (two passes over a tensor larger than the L2 bound
them near 2/3) and 0.41-0.53 channels_last. But each Triton launch from Python costs far more
host time than a torch kernel call, so timed call by call (host included) they win only on
large tensors; the dispatch (:func:`serves_batch`, :func:`serves_group`) takes them where that
measured a win, at ``MIN_NUMEL`` elements and more:

* batch norm on contiguous ``(N, C, *spatial)``: fwd+bwd 0.70x torch's at (256, 64, 64, 64)
  (1.79x at (64, 64, 64, 64)); channels_last and ``(N, C)`` keep torch's (1.8-2.1x slower);
* group and instance norm on contiguous input with one-pass groups: 0.93-0.99x (1.3-1.6x at
  16M elements), and group, instance and layer norm on channels_last: 0.80-0.82x (torch's
  kernels copy to NCHW there);
* each of these only where the positions (contiguous) or the channels (channels_last) are a
  multiple of 16, as in every measured shape: elsewhere (14 x 14 = 196 positions) Triton
  cannot prove the rows aligned and compiles scalar loads with 2-3x the registers
  (``scripts/triton_compile_check.py``, fourteenth session), a variant not measured;
* layer norm over (C, H, W) on contiguous input (two-phase: 1.35x) and over tokens (one-pass,
  2x faster on the GPU but 1.28x host included; twenty-fourth session, (65536, 1024):
  1.6-1.9x faster on the GPU, but 1.0-1.3 ms of host time a fwd+bwd against torch's
  0.5-0.7) keep torch's; so does RMSNorm over float32 tokens (the token kernels without
  centering: 1.5x faster on the GPU than RMSNorm's CUDA path, torch's ``rms_norm`` and the
  bias, but not per call), while bfloat16 tokens take them (4.1x on the GPU);
* group norm of ``(N, C)`` tokens (the token-group kernels, thirteenth session) takes them
  with a multiple of 16 channels: torch's kernel read 0.07 of the copy ceiling fwd+bwd on
  float32 (65536, 1024) (4.3 ms, twenty-fourth session), the kernels 0.79 (twentieth), so
  even with the token kernels' host time (1.0-1.3 ms) a call costs a third of torch's.

The zoo on the group kernels (eleventh session, written without a GPU and checked under
Triton's interpreter, ``tests/triton_interpreter_check.py``; compiled and tested on an H200 in
the twentieth session):
channels-first RMSNorm (``kind="rms"``: no centering; the two-phase statistics merge keeps the
mean square), FRN + TLU (``"frn"``: one channel per group, no centering, ``max(y, tau)``, with
``torch.maximum``'s split of the gradient at ties) and EvoNorm-S0 (``"s0"``:
``x sigmoid(v x)`` over the group's std). Over ``(N, C)`` tokens both are flags of the
token-group kernels (twenty-fifth session, without a GPU: FRN one channel a group; served
under ``NORMZOO_TRITON=all`` until measured, where their CUDA paths, ``torch.compile`` of
the reference math, read 0.05-0.69 of the copy ceiling on an H200). Both take the two-phase
kernels where the one-pass ones cannot (channels_last, more positions than one program
holds; twelfth session): FRN with the mean square and the map and gradient kernels' ``TLU``
flag, EvoNorm-S0 with their ``SWISH`` flag; each gives its extra parameter's gradient
(``tau``, ``v``) from the same backward pass. Batch Renorm, SwitchableNorm, EvoNorm-B0,
Ghost BN and FrozenBatchNorm run on these kernels from :mod:`normzoo.norms._triton_zoo`.
The zoo's kernels are served where an A/B on an H200 (``scripts/gpu_triton_ab.py``,
twentieth session) measured them faster per call than the norm's CUDA path without them:
:data:`ZOO_MEASURED`, from ``MIN_NUMEL`` elements.

``NORMZOO_TRITON=0`` turns the kernels off; ``NORMZOO_TRITON=all`` serves every input they
support from ``MIN_NUMEL_ALL`` elements (tests, and A/B runs on a GPU). GPUs older than compute
capability 8.0 (Triton's supported range) keep torch's kernels; a kind of call whose first run
fails (Triton cannot compile here) falls back to torch's with one warning and turns the
kernels off for the process (:func:`_guarded`).

The functions take CPU tensors too under Triton's interpreter (``TRITON_INTERPRET=1``), which
is how the CPU tests check the kernels' arithmetic; the GPU tests (``tests/test_triton_gpu.py``)
check them compiled.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from normzoo import functional
from normzoo.norms._kernels import channels_last_format
from normzoo.norms._rownorm import _autocast_on

__all__ = [
    "available",
    "batch_norm",
    "entry_points",
    "evonorm_s0",
    "filter_response_norm",
    "group_norm",
    "layer_norm_tokens",
    "rms_norm",
    "rms_norm_tokens",
    "serves",
    "serves_batch",
    "serves_group",
    "serves_tokens",
    "takes",
]

_ENV = "NORMZOO_TRITON"
#: Inputs with fewer elements keep torch's kernels: the Triton launches' host time outweighs
#: their faster kernels below (measured: 16M elements lost, 67M won; see above).
MIN_NUMEL = 1 << 26
#: The threshold under ``NORMZOO_TRITON=all``.
MIN_NUMEL_ALL = 1 << 18
#: The largest (sample, group) block that one program holds in registers.
ONE_PASS_MAX = 8192
#: The zoo's kinds (see :func:`takes`).
ZOO_KINDS = frozenset({"rms", "frn", "s0", "renorm", "switchable", "b0", "ghost"})
#: Those served by default, as ``(kind, contiguous) -> dtypes``, from ``MIN_NUMEL`` elements
#: with positions (contiguous) or channels (channels_last) a multiple of 16. Measured on an
#: H200 (twentieth session, ``docs/data/gpu_triton_ab_h200.json``: each module's fwd+bwd on
#: (256, 64, 64, 64) with the kernels and with its CUDA path without them, interleaved, timed
#: as the GPU's work, and the host time per call with the GPU kept busy). A pair is here where
#: the kernels were faster on the GPU and ``max(host time, GPU time)`` (what a call costs
#: whichever bounds it) was lower too: contiguous 1.97-12.4x faster on the GPU, that estimate
#: 0.11-0.81 of the path without them; channels_last float32 1.47-3.46x, 0.57-0.98.
#: FRN and EvoNorm-S0 on contiguous input were measured on one-pass groups, so only those
#: take the kernels there. Left out: Batch Renorm on channels_last (1.40x on the GPU, but
#: 1.54 ms of host time against 1.29: estimate 1.19), FrozenBatchNorm everywhere (2.0x on the
#: GPU in bfloat16, but its eager path's host time, 0.58 ms against 1.02-1.07, sets the time:
#: estimate 1.75-1.82), and the pairs not measured (float16; channels_last bfloat16;
#: SwitchableNorm in bfloat16 or channels_last; EvoNorm-S0 on channels_last). FRN and
#: EvoNorm-S0 over ``(N, C)`` tokens take the token-group kernels (twenty-fifth session,
#: written without a GPU) as ``("frn_token", True)`` and ``("s0_token", True)``: none yet.
_F32, _BF16 = torch.float32, torch.bfloat16
ZOO_MEASURED: dict[tuple[str, bool], frozenset[torch.dtype]] = {
    ("rms", True): frozenset({_F32, _BF16}),
    ("frn", True): frozenset({_F32, _BF16}),
    ("s0", True): frozenset({_F32, _BF16}),
    ("renorm", True): frozenset({_F32, _BF16}),
    ("switchable", True): frozenset({_F32}),
    ("b0", True): frozenset({_F32, _BF16}),
    ("ghost", True): frozenset({_F32, _BF16}),
    ("rms", False): frozenset({_F32}),
    ("frn", False): frozenset({_F32}),
    ("b0", False): frozenset({_F32}),
    ("ghost", False): frozenset({_F32}),
}
#: Elements per tile of the two-phase kernels on contiguous input (a tile of one channel's
#: positions), and bytes per tile on rows (channels_last and token input: a tile of
#: positions' channels; 4096 float32 or 8192 bfloat16 values). H200, the A/B of
#: ``gpu_triton_ab.py`` (``docs/data/gpu_triton_plan_h200.json``: BatchNorm and GroupNorm on
#: (256, 64, 64, 64), BatchNorm on (65536, 1024) tokens; fwd+bwd time over the plan before,
#: 4096 elements and no lanes): on rows, the per-lane sums
#: (:data:`TWO_PHASE_LANE_ACC_ROWS`) with 16 KB tiles took 0.91-0.93 in float32 and 0.40-0.68
#: in bfloat16 (forward 0.41 -> 0.54 and 0.26 -> 0.45 of the copy ceiling on channels_last,
#: bfloat16 tokens 0.10 -> 0.29; 32 KB float32 tiles with lanes, 0.97-0.98); on contiguous
#: input, where a program's chunk is one tile, lanes lost (1.15-1.31) and bigger tiles
#: changed nothing (1.00).
TILE = 4096
TILE_ROWS_BYTES = 16384
#: Programs per multiprocessor that the two-phase kernels aim for (chunks per set follow).
PROGRAMS_PER_SM = 16
#: Fewest rows per program of the token kernels' backward, float32 (twice that for half
#: types): each program writes its column sums of ``dy * xhat`` and ``dy`` (two float32
#: rows) and a torch sum reads them back, so one row a program (the H200 run's plan for
#: (2048, 4096): 2048 programs) moved 4/3 of the minimal bytes on top (backward at 0.36 of
#: the copy ceiling); 8 rows bound that at 1/6. Not measured yet (``gpu_triton_ab.py``).
TOKEN_MIN_ROWS = 8
#: The token kernels' backward keeps its column sums per row of the tile and sums them once
#: after the loop (``ACC_ROWS``), where it summed the tile's rows in every iteration. In
#: bfloat16 the tile's rows span two warps (Triton's layout for 8 values a thread), so that
#: per-iteration sum went through shared memory (8 KB, the compile check's ``shared``): the
#: H200 run (twentieth session) read LayerNorm's bfloat16 token backward at 0.24 of the copy
#: ceiling against 0.86 in float32 (1.8x the float32 time for half the bytes). Not timed on
#: a GPU yet; ``gpu_triton_ab.py``'s configurations A/B it (served only under
#: ``NORMZOO_TRITON=all`` either way).
TOKEN_ACC_ROWS = True
#: The two-phase statistics and gradient-sum kernels keep per-lane partials of each tile (a
#: Welford mean and M2, or sums) and merge them once after the loop (``LANE_ACC``), where
#: they reduce every tile over its positions. On channels_last a (64, 64) tile's positions
#: span its 8 warps, so that per-tile reduction goes through 2 KB of shared memory and two
#: barriers in every iteration (the contiguous tile's, one value a channel, 32 bytes); the H200
#: run read these kernels' channels_last paths at 0.38-0.41 of the copy ceiling forward
#: against 0.57-0.64 contiguous. ``1``: Welford lanes; ``2``: shifted sums and sums of squares
#: per lane. The statistics loop for sm_90 (``nvdisasm`` of the compile check's cubins), per
#: tile of 16 values a thread: 465-496 instructions with the per-tile reduction (44-48
#: shuffles, 20-32 shared-memory stores and loads, 6 barriers, 9 divisions), 168-206 with
#: Welford lanes, 102-107 with sums; at the H200's bandwidth a bfloat16 tile of that
#: reduction needs about twice the instructions its 4 schedulers issue meanwhile.
#: Contiguous input keeps 0 and rows take 2: the H200's A/B under :data:`TILE`.
TWO_PHASE_LANE_ACC = 0
TWO_PHASE_LANE_ACC_ROWS = 2
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def _kernels() -> ModuleType | None:
    try:
        from normzoo.norms import _triton_kernels
    except Exception:  # no triton, or one that cannot build here
        return None
    return _triton_kernels


#: Launch the compiled kernels directly (:class:`_Launcher`) where this Triton's launch
#: internals are the ones it was written against; ``NORMZOO_TRITON_DIRECT=0``: always through
#: ``kernel[grid](...)`` (A/B runs set this flag).
DIRECT_LAUNCH = os.environ.get("NORMZOO_TRITON_DIRECT", "1").strip() != "0"
#: Triton versions :class:`_Launcher` was written against and tested with.
DIRECT_VERSIONS = ("3.6.",)


class _Launcher:
    """``kernel[grid](*args, **kwargs)`` with a fraction of the host work.

    A launch through ``JITFunction.run`` binds the arguments and derives their
    specialization (dtypes, 16-byte alignment, integers divisible by 16 or equal to 1), builds
    a cache key from it and the options (a string), looks the compiled kernel up, checks the
    globals it read, and asks the launch hooks for metadata before the driver's launcher
    runs. On the H200's VM of the twenty-fourth session that took 77 us of host time a
    launch, the compiled kernel launched directly 30 (a torch op 42), and a BatchNorm fwd+bwd
    makes five. This keeps Triton's own binder (its specialization, whatever this Triton
    specializes on), its device and stream and its launcher, and skips the rest: the compiled
    kernel is cached per ``(device, specialization, options)`` after Triton's own path has
    compiled (or found) and launched it once. Triton's path still takes every launch where a
    launch hook, the debug mode or instrumentation is on, or the kernel has pre-run hooks."""

    __slots__ = ("binders", "compiled", "driver", "kernel", "knobs")

    def __init__(self, kernel: Any) -> None:
        from triton import knobs
        from triton.runtime.driver import driver

        self.kernel, self.knobs, self.driver = kernel, knobs, driver
        self.binders: dict[int, Callable[..., Any]] = {}
        self.compiled: dict[Any, Any] = {}

    @staticmethod
    def make(kernel: Any) -> _Launcher | None:
        """A launcher for ``kernel``, or None where it is not a ``triton.jit`` function of a
        supported Triton (:data:`DIRECT_VERSIONS`)."""
        try:
            import triton
            from triton.runtime.jit import JITFunction
        except Exception:
            return None
        supported = triton.__version__.startswith(DIRECT_VERSIONS)
        return _Launcher(kernel) if supported and type(kernel) is JITFunction else None

    def __call__(
        self, grid: tuple[int, ...], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        knobs, kernel = self.knobs, self.kernel
        runtime = knobs.runtime
        if (
            _hooked(runtime.launch_enter_hook)
            or _hooked(runtime.launch_exit_hook)
            or runtime.debug
            or knobs.compilation.instrumentation_mode
            or kernel.pre_run_hooks
        ):
            kernel[grid](*args, **kwargs)
            return
        active = self.driver.active
        device = active.get_current_device()  # as Triton's: the current device's stream
        binder = self.binders.get(device)
        if binder is None:  # (device_caches[device]: (..., target, backend, binder))
            binder = self.binders[device] = kernel.device_caches[device][-1]
        bound, specialization, options = binder(*args, **kwargs)
        key = (device, tuple(specialization), tuple(options.items()))
        compiled = self.compiled.get(key)
        if compiled is None:  # Triton's path compiles or finds it, and launches it
            compiled = kernel[grid](*args, **kwargs)
            self.compiled[key] = compiled.result() if hasattr(compiled, "result") else compiled
            return
        n = len(grid)
        compiled.run(
            grid[0],
            grid[1] if n > 1 else 1,
            grid[2] if n > 2 else 1,
            active.get_current_stream(device),
            compiled.function,
            compiled.packed_metadata,
            None,  # launch metadata: for the launch hooks, none here
            None,
            None,
            *bound.values(),
        )


def _hooked(hook: Any) -> bool:
    """Whether a launch hook is set: a function, or (Triton 3.6's ``knobs.HookChain``, there
    whether or not anything was added) a chain with calls."""
    return hook is not None and getattr(hook, "calls", True) != []


#: id(kernel) -> its launcher, or None (not a supported ``triton.jit`` function).
_launchers: dict[int, _Launcher | None] = {}
#: The direct launch for CPU tensors too: ``scripts/triton_compile_check.py``'s stand-in
#: driver (the tests and ``scripts/triton_launches.py`` time and check it without a GPU).
_DIRECT_ON_CPU = False


def _launch(kernel: Any, grid: tuple[int, ...], /, *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``: through :class:`_Launcher` where ``args[0]`` is a
    CUDA tensor and :data:`DIRECT_LAUNCH` is on (the tests' emulated kernels, and the
    interpreter's CPU tensors, take ``kernel[grid]``)."""
    if DIRECT_LAUNCH and (args[0].is_cuda or _DIRECT_ON_CPU):
        key = id(kernel)
        launcher = _launchers.get(key, False)
        if launcher is False:
            launcher = _launchers[key] = _Launcher.make(kernel)
        if launcher is not None:
            launcher(grid, args, kwargs)
            return
    kernel[grid](*args, **kwargs)


def _mode() -> str:
    """``NORMZOO_TRITON``: ``"off"``, ``"all"`` or ``"measured"`` (the default)."""
    value = os.environ.get(_ENV, "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return "off"
    return "all" if value == "all" else "measured"


#: Why the kernels were turned off for this process (a first call that failed), or None.
_disabled: str | None = None
#: Kinds of call that have run once (compiled): later failures of theirs are real errors.
_proven: set[tuple[Any, ...]] = set()


def available() -> bool:
    """Whether the Triton kernels can be used: ``triton`` imports, ``NORMZOO_TRITON`` is not
    ``0`` and no first call has failed in this process (see :func:`_guarded`)."""
    return _mode() != "off" and _disabled is None and _kernels() is not None


@functools.cache
def _capable(device: int) -> bool:
    """Triton's supported GPUs: NVIDIA compute capability 8.0 (Ampere) and newer."""
    return torch.version.hip is None and torch.cuda.get_device_capability(device) >= (8, 0)


def _guarded(key: tuple[Any, ...], run: Any, fallback: Any) -> Any:
    """``run()``; the first time a kind of call (``key``) runs, a failure (Triton cannot
    compile here: an unsupported GPU or toolchain) turns the kernels off for the process with
    one warning and returns ``fallback()`` (torch's kernels) instead. Nothing the caller sees
    has been written then but the running statistics that batch norm's statistics kernel
    (and the coefficient kernels of Batch Renorm, EvoNorm-B0 and SwitchableNorm) update
    before the map kernel runs: :func:`_run` (and ``_triton_zoo._call``) restore them from
    a copy taken before a first call, and the fallback updates them once."""
    global _disabled
    if key in _proven:
        return run()
    try:
        out = run()
    except Exception as err:  # any failure of a first call: fall back
        _disabled = f"{type(err).__name__}: {err}"
        warnings.warn(
            f"normzoo: the Triton kernels failed on their first call ({_disabled}); torch's "
            "kernels run instead from now on (NORMZOO_TRITON=0 skips them)",
            RuntimeWarning,
            stacklevel=4,
        )
        return fallback()
    if len(_proven) >= 4096:  # many shapes (dynamic ones): forget, at the cost of a try
        _proven.clear()
    _proven.add(key)
    return out


def serves(x: Tensor, *params: Tensor | None) -> bool:
    """Whether the Triton kernels can take ``x``: a CUDA tensor in float32, bfloat16 or
    float16 with at least ``MIN_NUMEL`` elements (``MIN_NUMEL_ALL`` under
    ``NORMZOO_TRITON=all``), contiguous or channels_last, outside ``torch.compile`` and
    ``torch.jit.trace`` (which see torch's kernels) and autocast, with floating parameters on
    its device; and :func:`available`. Each norm's own rule comes on top
    (:func:`serves_batch`, :func:`serves_group`, :func:`serves_tokens`)."""
    if not x.is_cuda:  # first: the CPU paths pay one attribute read
        return False
    if not _capable(x.device.index if x.device.index is not None else 0):
        return False
    least = MIN_NUMEL_ALL if _mode() == "all" else MIN_NUMEL
    if not (x.dtype in DTYPES and x.numel() >= least and x.dim() >= 2):
        return False
    if torch.compiler.is_compiling() or torch._C._is_tracing():
        return False
    if _autocast_on("cuda"):  # autocast runs these norms in float32: torch's kernels
        return False
    for p in params:
        if p is not None and (p.device != x.device or p.dtype not in DTYPES):
            return False
    return (x.is_contiguous() or channels_last_format(x) is not None) and available()


def takes(
    kind: str,
    shape: tuple[int, ...],
    contiguous: bool,
    groups: int = 1,
    dtype: torch.dtype = torch.float32,
) -> bool:
    """The measured rule (module docstring) for an input of ``shape`` that :func:`serves`
    accepts: ``kind`` ``"batch"``, ``"group"`` (``groups`` groups), ``"token"`` (layer
    norm over tokens), ``"rms_token"`` (RMSNorm over tokens), or the zoo's ``"rms"``
    (channels-first RMSNorm), ``"frn"``, ``"s0"`` (EvoNorm-S0), ``"renorm"`` (Batch Renorm),
    ``"switchable"`` (SwitchableNorm), ``"b0"`` (EvoNorm-B0), ``"ghost"`` (Ghost BN),
    ``"frozen"`` (FrozenBatchNorm) (``"frn"`` and ``"s0"`` of a 2-d ``shape``: over
    ``(N, C)`` tokens, on the token-group kernels, ``ZOO_MEASURED``'s ``"frn_token"`` and
    ``"s0_token"``); ``contiguous``: else channels_last. Under ``NORMZOO_TRITON=all``: every
    input the kernels support. Otherwise the measured rule: layer norm over tokens (``"token"``),
    RMSNorm over float32 or float16 tokens (``"rms_token"``), and FrozenBatchNorm under
    ``all`` only (group norm and bfloat16 RMSNorm over tokens with a multiple of 16
    channels: served); the zoo's other kinds where :data:`ZOO_MEASURED` holds their layout
    and ``dtype``; every measured kind only where the compiled kernels are the measured ones
    (:func:`_vectorized`)."""
    every = _mode() == "all"
    if kind == "batch":
        return every or (len(shape) >= 3 and contiguous and _vectorized(shape, contiguous))
    if kind == "group":
        if len(shape) < 3:  # (N, C) tokens: a row in one program
            # H200 (twentieth and twenty-fourth sessions): torch's group norm of (65536, 1024)
            # read 0.07 of the copy ceiling fwd+bwd, these kernels 0.79 (float32)
            c = shape[1]
            fits = contiguous and _pow2(groups) * _pow2(c // groups) <= ONE_PASS_MAX
            return fits and (every or c % 16 == 0)
        if every:
            return True
        one_pass = not contiguous or _one_pass_shape(shape, groups)
        return one_pass and _vectorized(shape, contiguous)
    if kind == "frozen":  # FrozenBatchNorm: any layout the batch-norm kernels take
        return every  # measured: its eager path's host time is shorter (see ZOO_MEASURED)
    if kind == "renorm" and every:  # Batch Renorm: any layout the batch-norm kernels take
        return True
    if kind in ("frn", "s0") and len(shape) == 2:  # (N, C) tokens: the token-group kernels
        c = shape[1]
        fits = contiguous and _pow2(groups) * _pow2(c // groups) <= ONE_PASS_MAX
        measured = dtype in ZOO_MEASURED.get((f"{kind}_token", True), ()) and c % 16 == 0
        return fits and (every or measured)
    if kind in ZOO_KINDS:  # (N, C, *spatial) only
        if every:
            return len(shape) >= 3
        measured = dtype in ZOO_MEASURED.get((kind, contiguous), ())
        if kind in ("frn", "s0") and contiguous and len(shape) >= 3:
            # measured on one-pass groups: their two phases only on channels_last (FRN)
            measured = measured and _one_pass_shape(shape, groups)
        return measured and len(shape) >= 3 and _vectorized(shape, contiguous)
    fits = _pow2(shape[-1]) <= ONE_PASS_MAX  # a token in one program's registers
    if kind == "rms_token" and dtype == torch.bfloat16 and shape[-1] % 16 == 0:
        # H200 (twenty-fourth session), (65536, 1024) bfloat16 fwd+bwd: the kernels 0.34 ms
        # of GPU time and 1.09 ms of host time against RMSNorm's CUDA path's 1.39 ms of GPU
        # time (torch's rms_norm, which takes float32 there, and the bias): faster per call
        # either way. In float32 (0.56 and 0.87 ms against 0.83 ms of GPU time) the call
        # would not be, unless that path's host time is the longer: not measured.
        return fits
    return every and fits


def _vectorized(shape: tuple[int, ...], contiguous: bool) -> bool:
    """Whether the kernels compile for ``shape`` as they did for the measured shapes, moving
    the tensor in 16-byte vectors: Triton marks an integer argument divisible by 16 and
    only then can prove a channel's positions (contiguous; a position's channels,
    channels_last) aligned. At 196 positions (14 x 14) the loads stay scalar and the
    statistics and gradient kernels take 2-3x the registers (``scripts/
    triton_compile_check.py``): not measured, so torch's kernels there."""
    inner = math.prod(shape[2:]) if contiguous else shape[1]
    return inner % 16 == 0


def serves_batch(x: Tensor, *params: Tensor | None, kind: str = "batch") -> bool:
    """Batch norm (training) of ``x`` through the kernels, or Batch Renorm
    (``kind="renorm"``): :func:`serves` and :func:`takes`."""
    return serves(x, *params) and takes(kind, tuple(x.shape), x.is_contiguous(), dtype=x.dtype)


def serves_group(x: Tensor, groups: int, *params: Tensor | None, kind: str = "group") -> bool:
    """Group norm of ``x`` with ``groups`` groups (1: layer norm over (C, *spatial), C:
    instance norm), or another group-structured ``kind`` (``"rms"``, ``"frn"``, ``"s0"``:
    see :func:`takes`), through the kernels: :func:`serves` and :func:`takes`."""
    shape, contiguous = tuple(x.shape), x.is_contiguous()
    return serves(x, *params) and takes(kind, shape, contiguous, groups, x.dtype)


def serves_tokens(x: Tensor, *params: Tensor | None, rms: bool = False) -> bool:
    """Layer norm or (``rms``) RMSNorm of tokens ``(..., C)`` through the kernels:
    :func:`serves` and :func:`takes`."""
    kind = "rms_token" if rms else "token"
    shape = tuple(x.shape)
    return x.is_contiguous() and serves(x, *params) and takes(kind, shape, True, dtype=x.dtype)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _sm_count(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _target_programs(x: Tensor) -> int:
    return PROGRAMS_PER_SM * (_sm_count(x.device.index or 0) if x.is_cuda else 8)


def _plan(x: Tensor, fold: bool) -> _Plan:
    """The (cached) :class:`_Plan` of ``x``: its shape, layout and the device's size decide."""
    rows = x.dim() == 2 or channels_last_format(x) is not None
    tile = TILE_ROWS_BYTES // x.element_size() if rows else TILE
    return _cached_plan(tuple(x.shape), rows, fold, _target_programs(x), tile)


class _Plan:
    """Tiles and chunks of the two-phase kernels for ``x`` seen as ``(n, c, s)``."""

    def __init__(
        self, shape: tuple[int, ...], rows: bool, fold: bool, target: int, tile: int
    ) -> None:
        n, c = shape[0], shape[1]
        s = math.prod(shape) // max(1, n * c)
        self.rows = rows
        if rows:
            # rows of C channels; batch norm folds the samples into the positions
            if fold:
                n, s = 1, n * s
            self.strides = (s * c, 1, c)
            self.cb = min(_pow2(c), 256)
            self.sb = min(max(1, tile // self.cb), _pow2(s))
        else:
            self.strides = (c * s, s, 1)
            self.sb = min(_pow2(s), tile)
            self.cb = max(1, min(_pow2(c), tile // self.sb))
        self.n, self.c, self.s = n, c, s
        self.ncb = _cdiv(c, self.cb)
        most = _cdiv(s, self.sb)
        nk = min(max(1, _cdiv(target, self.ncb * n)), most)
        self.spp = _cdiv(_cdiv(s, nk), self.sb) * self.sb
        self.nk = _cdiv(s, self.spp)
        self.grid = (self.nk, self.ncb, n)
        self.warps = 8 if self.cb * self.sb >= 2048 else 4


_cached_plan = functools.lru_cache(maxsize=256)(_Plan)


def _lanes(plan: _Plan) -> int:
    """The statistics and gradient-sum kernels' ``LANE_ACC`` for ``plan``'s layout."""
    return TWO_PHASE_LANE_ACC_ROWS if plan.rows else TWO_PHASE_LANE_ACC


def _stats(
    x: Tensor,
    plan: _Plan,
    sets: tuple[int, int],
    eps: float,
    running: tuple[Tensor, Tensor, float] | None = None,
    rms: bool = False,
) -> tuple[Tensor, ...]:
    """``(mean, rstd, var)`` per set: ``sets = (SET_N, CPG)``, batch norm ``(0, 1)``;
    ``running = (running_mean, running_var, factor)`` blends them into those (per set);
    ``rms``: mean 0 and the mean square in ``var``'s place (RMSNorm)."""
    k = _kernels()
    n, c, nk = plan.n, plan.c, plan.nk
    set_n, cpg = sets
    if set_n == 0:  # per channel: partial (c, n, kk)
        pn, pc, per, count = nk, n * nk, n * nk, c
    else:  # per (sample, group): partial (n, c, kk)
        pn, pc, per, count = c * nk, nk, cpg * nk, n * set_n
    part = torch.empty((3, n * c * nk), device=x.device, dtype=torch.float32).unbind(0)
    _launch(k._partial_stats, plan.grid,
        x, *part, c, plan.s, *plan.strides, pn, pc, plan.spp,
        CB=plan.cb, SB=plan.sb, LANE_ACC=_lanes(plan), num_warps=plan.warps,
    )  # fmt: skip
    out = torch.empty((3, count), device=x.device, dtype=torch.float32).unbind(0)
    rm, rv, factor = running if running is not None else (None, None, 0.0)
    m = x.numel() // count  # values per set
    _launch(k._finalize, (count,),
        *part, *out, rm, rv, per, eps, factor, m / max(m - 1, 1),
        HAS_RUNNING=running is not None, KB=min(1024, _pow2(per)), RMS=rms, num_warps=4,
    )  # fmt: skip
    return out


def _two_phase_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    sets: tuple[int, int],
    eps: float,
    relu: bool,
    running: tuple[Tensor, Tensor, float] | None = None,
    rms: bool = False,
    extra: Tensor | None = None,
    swish: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(y, mean, rstd, var)``; ``extra``: FRN's ``tau`` (``max(y, tau)`` after the map), or
    with ``swish`` EvoNorm-S0's ``v`` (the numerator ``x sigmoid(v x)``)."""
    plan = _plan(x, fold=sets[0] == 0)
    mean, rstd, var = _stats(x, plan, sets, eps, running, rms)
    y = torch.empty_like(x)
    _launch(_kernels()._apply, plan.grid,
        x, y, mean, rstd, weight, bias, extra, plan.n, plan.c, plan.s, *plan.strides, *sets,
        plan.spp, plan.nk, plan.ncb, HAS_W=weight is not None, HAS_B=bias is not None,
        RELU=relu, CB=plan.cb, SB=plan.sb, num_warps=plan.warps, **_extra_flag(extra, swish),
    )  # fmt: skip
    return y, mean, rstd, var


def _extra_flag(extra: Tensor | None, swish: bool) -> dict[str, bool]:
    """The two-phase kernels' flag for an ``extra`` parameter: ``TLU`` (FRN's ``tau``) or
    ``SWISH`` (EvoNorm-S0's ``v``); none without one (the GPU-verified kernels' launches
    unchanged)."""
    if extra is None:
        return {}
    return {"SWISH": True} if swish else {"TLU": True}


def _two_phase_backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    sets: tuple[int, int],
    relu: bool,
    rms: bool = False,
    extra: Tensor | None = None,
    swish: bool = False,
    renorm: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(dx, dw, db, d_extra)`` (``d_extra`` ``None`` without FRN's ``tau`` or, with
    ``swish``, EvoNorm-S0's ``v``): the partial sums, the coefficients and parameter
    gradients from them in one kernel (batch norm's ``_bn_grad_coef``, with ``renorm =
    (r, d)`` Batch Renorm's ``dw = r sum(dy x_hat) + d sum(dy)``; the (sample, group) sets'
    ``_group_grad_coef``), then the map gradient."""
    plan = _plan(x, fold=sets[0] == 0)
    n = plan.n
    part = _grad_sums(dy, x, weight, bias, mean, rstd, sets, relu, plan, extra, swish)
    if sets[0] == 0:  # batch norm, one set per channel (no mean square, swish or extra)
        c = plan.c
        db, dw, b, a = torch.empty((4, c), device=x.device, dtype=torch.float32).unbind(0)
        r, d = renorm if renorm is not None else (None, None)
        _launch(_kernels()._bn_grad_coef, (c,),
            part, weight, r, d, db, dw, a, b, n, c, plan.nk, 1.0 / (n * plan.s),
            HAS_W=weight is not None, RENORM=renorm is not None,
            KB=min(1024, _pow2(n * plan.nk)), num_warps=4,
        )  # fmt: skip
        dx = _grad_map(dy, x, weight, bias, mean, rstd, a, b, sets, relu, plan)
        return dx, dw, db, None
    # per (sample, group) set: its coefficients, and the parameters' gradients per channel
    set_n, cpg = sets
    c = plan.c
    per_set = torch.empty((2, n * set_n), device=x.device, dtype=torch.float32)
    per_channel = torch.empty((3, c), device=x.device, dtype=torch.float32)
    (a, b), (db, dw, d_extra) = per_set.unbind(0), per_channel.unbind(0)
    total = max(cpg, n) * plan.nk
    _launch(_kernels()._group_grad_coef, (n * set_n + c,),
        part, weight, rstd, db, dw, d_extra, a, b, n, c, plan.nk, cpg, 1.0 / (cpg * plan.s),
        HAS_W=weight is not None, EXTRA=extra is not None, NO_MEAN=rms or swish, SWISH=swish,
        KB=min(1024, _pow2(total)), num_warps=4,
    )  # fmt: skip
    dx = _grad_map(dy, x, weight, bias, mean, rstd, a, b, sets, relu, plan, extra, swish)
    return dx, dw, db, d_extra if extra is not None else None


def _grad_sums(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    sets: tuple[int, int],
    relu: bool,
    plan: _Plan,
    extra: Tensor | None = None,
    swish: bool = False,
) -> Tensor:
    """``(2, n, c, nk)``: per (sample, channel, chunk) ``sum(dy)`` and ``sum(dy * xhat)``;
    with an ``extra`` parameter (FRN's ``tau``; ``swish``: EvoNorm-S0's ``v``, the swish's
    ``f`` in ``xhat``'s place) ``(3, n, c, nk)``, its gradient's sums third; with ``swish``
    ``(4, n, c, nk)``, ``sum(x - mean)`` fourth."""
    n, c, nk = plan.n, plan.c, plan.nk
    rows = 2 if extra is None else (4 if swish else 3)
    part = torch.empty((rows, n, c, nk), device=x.device, dtype=torch.float32)
    pst = part[2] if extra is not None else None
    psd = part[3] if swish else None
    _launch(_kernels()._partial_grad, plan.grid,
        x, dy, mean, rstd, weight, bias, extra, part[0], part[1], pst, psd, c, plan.s,
        *plan.strides, *sets, plan.spp, nk, HAS_W=weight is not None, HAS_B=bias is not None,
        RELU=relu, CB=plan.cb, SB=plan.sb, LANE_ACC=_lanes(plan), num_warps=plan.warps,
        **_extra_flag(extra, swish),
    )  # fmt: skip
    return part


def _grad_map(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    a: Tensor,
    b: Tensor,
    sets: tuple[int, int],
    relu: bool,
    plan: _Plan,
    extra: Tensor | None = None,
    swish: bool = False,
) -> Tensor:
    """``dx = rstd (w dy - xhat a[set] - b[set])`` (``_apply_grad``; ``extra`` and ``swish``
    as in :func:`_grad_sums`)."""
    dx = torch.empty_like(x)
    _launch(_kernels()._apply_grad, plan.grid,
        x, dy, dx, mean, rstd, weight, bias, extra, a, b, plan.n, plan.c, plan.s,
        *plan.strides, *sets, plan.spp, plan.nk, plan.ncb, HAS_W=weight is not None,
        HAS_B=bias is not None, RELU=relu, CB=plan.cb, SB=plan.sb, num_warps=plan.warps,
        **_extra_flag(extra, swish),
    )  # fmt: skip
    return dx


@functools.lru_cache(maxsize=256)
def _group_tiles(shape: tuple[int, ...], groups: int) -> tuple[int, int] | None:
    """The one-pass tile ``(channels, positions)`` of a contiguous conv input of ``shape``, or
    ``None`` where its (sample, group) blocks do not fit one program."""
    if len(shape) < 3:
        return None
    cb, sb = _pow2(shape[1] // groups), _pow2(math.prod(shape[2:]))
    return (cb, sb) if cb * sb <= ONE_PASS_MAX else None


def _one_pass_shape(shape: tuple[int, ...], groups: int) -> bool:
    """(Contiguous) conv input of ``shape`` whose (sample, group) blocks fit one program."""
    return _group_tiles(shape, groups) is not None


#: The one-pass kernels' flags for each group-structured kind (:class:`_Spec`): group norm,
#: channels-first RMSNorm (no centering), FRN + TLU (RMS over the positions, then
#: ``max(y, tau)``) and EvoNorm-S0 (``x sigmoid(v x)`` over the group's std).
_GROUP_FLAGS: dict[str, dict[str, bool]] = {
    "group": {},
    "rms": {"RMS": True},
    "frn": {"RMS": True, "TLU": True},
    "s0": {"SWISH": True},
}


def _group_forward(
    x: Tensor,
    spec: _Spec,
    weight: Tensor | None,
    bias: Tensor | None,
    extra: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(y, mean, rstd, var)`` per (sample, group) of a group-structured ``spec``; ``extra``:
    FRN's ``tau`` or EvoNorm-S0's ``v``."""
    kind, groups, eps, relu = spec
    if x.dim() == 2:  # group norm, FRN, EvoNorm-S0 of (N, C) tokens (:func:`takes`)
        return _token_forward(x, weight, bias, eps, relu, groups=groups, extra=extra, kind=kind)
    n, c = x.shape[0], x.shape[1]
    tiles = _group_tiles(tuple(x.shape), groups) if x.is_contiguous() else None
    if tiles is None:
        # two phases (large sets, channels_last): RMSNorm and FRN with the mean square, FRN's
        # max(y, tau) and EvoNorm-S0's swish as flags of the map and gradient kernels
        sets = (groups, c // groups)
        rms, swish = kind in ("rms", "frn"), kind == "s0"
        return _two_phase_forward(x, weight, bias, sets, eps, relu, None, rms, extra, swish)
    s = x.numel() // (n * c)
    cb, sb = tiles
    stats = torch.empty((3, n * groups), device=x.device, dtype=torch.float32).unbind(0)
    y = torch.empty_like(x)
    _launch(_kernels()._group_fwd, (groups, n),
        x, y, weight, bias, extra, *stats, c, s, groups, c // groups, eps,
        HAS_W=weight is not None, HAS_B=bias is not None, RELU=relu, CB=cb, SB=sb,
        num_warps=_warps(cb * sb), **_GROUP_FLAGS[kind],
    )  # fmt: skip
    return (y, *stats)


def _warps(elements: int) -> int:
    return 16 if elements >= 8192 else 8 if elements >= 2048 else 4


def _group_backward(
    dy: Tensor,
    x: Tensor,
    spec: _Spec,
    weight: Tensor | None,
    bias: Tensor | None,
    extra: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(dx, dw, db, d_extra)`` (``d_extra`` ``None`` without ``extra``)."""
    kind, groups, _, relu = spec
    if x.dim() == 2:  # group norm, FRN, EvoNorm-S0 of (N, C) tokens
        return _token_backward(
            dy, x, weight, bias, mean, rstd, relu, groups=groups, extra=extra, kind=kind
        )
    n, c = x.shape[0], x.shape[1]
    tiles = _group_tiles(tuple(x.shape), groups) if x.is_contiguous() else None
    if tiles is None:
        sets = (groups, c // groups)
        rms, swish = kind in ("rms", "frn"), kind == "s0"
        return _two_phase_backward(dy, x, weight, bias, mean, rstd, sets, relu, rms, extra, swish)
    s = x.numel() // (n * c)
    cb, sb = tiles
    npp = _cdiv(n, max(1, _target_programs(x) // groups))
    np_ = _cdiv(n, npp)
    part = torch.empty(
        (3 if extra is not None else 2, np_, c), device=x.device, dtype=torch.float32
    )
    pdp = part[2] if extra is not None else None
    dx = torch.empty_like(x)
    _launch(_kernels()._group_bwd, (groups, np_),
        x, dy, dx, weight, bias, extra, mean, rstd, part[0], part[1], pdp, n, c, s, groups,
        c // groups, npp, HAS_W=weight is not None, HAS_B=bias is not None, RELU=relu, CB=cb,
        SB=sb, num_warps=_warps(cb * sb), **_GROUP_FLAGS[kind],
    )  # fmt: skip
    sums = part.sum(1)
    return dx, sums[0], sums[1], (sums[2] if extra is not None else None)


def _token_plan(r: int, d: int, groups: int, rms: bool) -> tuple[int, int, dict[str, Any]]:
    """``(rows, elements, tile)`` of a token kernel's program over ``r`` rows of ``d``: rows
    of ``d`` padded to a power of two (layer norm, RMSNorm), or with ``groups`` each row's
    groups as a ``(groups, channels)`` tile, both padded (group norm); about 4096 elements
    a program. ``tile``: the kernel's block sizes."""
    if groups:
        gb, kb = _pow2(groups), _pow2(d // groups)
        tile: dict[str, Any] = {"GB": gb, "KB": kb}
        row = gb * kb
    else:
        row = _pow2(d)
        tile = {"DB": row, "RMS": rms}
    rb = max(1, min(_pow2(r), 4096 // row))
    return rb, rb * row, tile


def _token_rows(x: Tensor, r: int, rb: int) -> int:
    """Rows per program of the token kernels' backward (a multiple of the tile's ``rb``): the
    device's programs spread over ``r`` rows, at least ``TOKEN_MIN_ROWS`` (scaled to keep the
    column sums' share of the bytes for half types)."""
    least = TOKEN_MIN_ROWS * max(1, 4 // x.element_size())
    return _cdiv(max(_cdiv(r, _target_programs(x)), least), rb) * rb


def _token_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    relu: bool,
    rms: bool = False,
    groups: int = 0,
    extra: Tensor | None = None,
    kind: str = "group",
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(y, mean, rstd, None)`` per row of a contiguous ``(..., d)`` input (``rms``: RMSNorm,
    the mean 0), one pass; with ``groups``, ``kind`` (group norm; ``"frn"``, one channel a
    group, ``"s0"``, their ``extra``) of ``(N, C)`` tokens: ``(y, mean, rstd, var)`` per
    (row, group)."""
    d = x.shape[-1]
    r = x.numel() // d
    rb, elements, tile = _token_plan(r, d, groups, rms)
    stats = torch.empty(
        (3 if groups else 2, r * max(1, groups)), device=x.device, dtype=torch.float32
    ).unbind(0)
    y = torch.empty_like(x)
    k = _kernels()
    flags = {"HAS_W": weight is not None, "HAS_B": bias is not None, "RELU": relu, "RB": rb}
    if groups:
        _launch(k._token_group_fwd, (_cdiv(r, rb),),
            x, y, weight, bias, extra, *stats, r, d, groups, d // groups, eps,
            num_warps=_warps(elements), **flags, **tile, **_GROUP_FLAGS[kind],
        )  # fmt: skip
        return (y, *stats)
    _launch(
        k._token_fwd,
        (_cdiv(r, rb),),
        x,
        y,
        weight,
        bias,
        *stats,
        r,
        d,
        eps,
        num_warps=_warps(elements),
        **flags,
        **tile,
    )
    return (y, *stats, None)


def _token_backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    relu: bool,
    rms: bool = False,
    groups: int = 0,
    extra: Tensor | None = None,
    kind: str = "group",
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(dx, dw, db, d_extra)`` of :func:`_token_forward`'s norm (``d_extra`` ``None``
    without ``extra``)."""
    d = x.shape[-1]
    r = x.numel() // d
    rb, elements, tile = _token_plan(r, d, groups, rms)
    rpp = _token_rows(x, r, rb)
    np_ = _cdiv(r, rpp)
    part = torch.empty((2 if extra is None else 3, np_, d), device=x.device, dtype=torch.float32)
    dx = torch.empty_like(x)
    k = _kernels()
    flags = {"HAS_W": weight is not None, "HAS_B": bias is not None, "RELU": relu, "RB": rb}
    flags["ACC_ROWS"] = TOKEN_ACC_ROWS
    if groups:
        pdp = part[2] if extra is not None else None
        _launch(k._token_group_bwd, (np_,),
            x, dy, dx, weight, bias, extra, mean, rstd, part[0], part[1], pdp, r, d, groups,
            d // groups, rpp, num_warps=_warps(elements), **flags, **tile, **_GROUP_FLAGS[kind],
        )  # fmt: skip
    else:
        _launch(k._token_bwd, (np_,),
            x, dy, dx, weight, bias, mean, rstd, part[0], part[1], r, d, rpp,
            num_warps=_warps(elements), **flags, **tile,
        )  # fmt: skip
    sums = part.sum(1)
    return dx, sums[0], sums[1], (sums[2] if extra is not None else None)


def _elsewhere(x: Tensor) -> bool:
    """A CUDA tensor on another device than the current one."""
    return x.is_cuda and x.device.index != torch.cuda.current_device()


def _device_of(x: Tensor) -> contextlib.AbstractContextManager[Any]:
    """Launches on ``x``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(x.device) if _elsewhere(x) else contextlib.nullcontext()


def _in_layout(dy: Tensor, x: Tensor) -> Tensor:
    """``dy`` in ``x``'s layout (contiguous or channels_last), which the kernels address."""
    fmt = channels_last_format(x)
    return dy.contiguous() if fmt is None else dy.contiguous(memory_format=fmt)


def _differentiate(
    fn: Callable[[], Tensor],
    params: tuple[Tensor | None, ...],
    needs: tuple[bool, ...],
    dy: Tensor,
    create_graph: bool,
) -> tuple[Tensor | None, ...]:
    """The gradients of ``params`` that ``needs`` asks for, of ``fn()`` (torch's math, built
    here with autograd on) against ``dy``: the double backward and the backward fallback."""
    with torch.enable_grad():
        inputs = [t for t, need in zip(params, needs, strict=True) if need]
        grads = iter(torch.autograd.grad(fn(), inputs, dy, create_graph=create_graph))
        return tuple(next(grads) if need else None for need in needs)


def entry_points() -> list[tuple[ModuleType, str]]:
    """``(module, name)`` of the functions through which every forward launches its kernels
    (the core norms' and the zoo's, :mod:`normzoo.norms._triton_zoo`): the tests and the A/B
    script count the kernels' calls by wrapping them."""
    from normzoo.norms import _triton_zoo

    return [(sys.modules[__name__], "_forward"), (_triton_zoo, "_zoo_forward")]


class _Spec(NamedTuple):
    """Which norm a call computes: ``kind`` (``"batch"``; with ``groups``, ``"group"``,
    ``"rms"`` (channels-first RMSNorm, one group), ``"frn"`` (FRN + TLU, one channel per
    group), ``"s0"`` (EvoNorm-S0); ``"token"``, ``"rms_token"``), its ``eps``, and whether a
    ReLU follows."""

    kind: str
    groups: int
    eps: float
    relu: bool


def _forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    extra: Tensor | None,
    spec: _Spec,
    running: tuple[Tensor, Tensor, float] | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(y, mean, rstd, var)`` of ``spec``'s norm (per set; ``var`` ``None`` for tokens)."""
    kind, _, eps, relu = spec
    with _device_of(x):  # Triton launches on the current device: make it x's
        if kind == "batch":
            return _two_phase_forward(x, weight, bias, (0, 1), eps, relu, running)
        if kind in _GROUP_FLAGS:
            return _group_forward(x, spec, weight, bias, extra)
        return _token_forward(x, weight, bias, eps, relu, rms=kind == "rms_token")


class _TritonNorm(torch.autograd.Function):
    """``(y, mean, var)`` of ``spec``'s norm; ``mean`` and the biased ``var`` (per set;
    ``None`` for tokens) are not differentiable. Saves ``x``, the parameters (``extra``: FRN's
    ``tau``, EvoNorm-S0's ``v``) and the per-set mean and 1/std, as torch's kernels do. Under
    ``create_graph=True`` the backward differentiates torch's functional form with a graph,
    so double backward works."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        extra: Tensor | None,
        spec: _Spec,
        running: tuple[Tensor, Tensor, float] | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        y, mean, rstd, var = _forward(x, weight, bias, extra, spec, running)
        ctx.save_for_backward(x, weight, bias, extra, mean, rstd)
        ctx.spec = spec
        ctx.mark_non_differentiable(*(t for t in (mean, var) if t is not None))
        ctx.set_materialize_grads(False)  # no zero-filled gradients of mean and var: launches
        return y, mean, var

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if dy is None:  # (y unused by what was differentiated)
            return (None,) * 6
        x, weight, bias, extra, mean, rstd = ctx.saved_tensors
        params = (x, weight, bias, extra)
        spec, needs = ctx.spec, ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():  # create_graph=True: torch's math, with a graph
            return (*_torch_backward(spec, dy, params, needs, True), None, None)
        grads = _guarded(
            _key("bwd", (x, weight), spec, needs),
            lambda: _kernel_backward(spec, dy, params, mean, rstd, needs),
            lambda: _torch_backward(spec, dy, params, needs, False),
        )
        return (*grads, None, None)


_Params = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]


def _torch_backward(
    spec: _Spec,
    dy: Tensor,
    params: _Params,
    needs: tuple[bool, ...],
    create_graph: bool,
) -> tuple[Tensor | None, ...]:
    """The gradients of ``params = (x, weight, bias, extra)`` by differentiating torch's
    functional form (double backward, fallback)."""

    def out() -> Tensor:
        y = reference(*params[:3], spec.kind, spec.groups, spec.eps, params[3])
        return torch.relu(y) if spec.relu else y

    return _differentiate(out, params, needs, dy, create_graph)


def _kernel_backward(
    spec: _Spec,
    dy: Tensor,
    params: _Params,
    mean: Tensor,
    rstd: Tensor,
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, ...]:
    kind, _, _, relu = spec
    x, weight, bias, extra = params
    dy = _in_layout(dy, x)
    dp = None
    with _device_of(x):
        if kind == "batch":
            dx, dw, db, _ = _two_phase_backward(dy, x, weight, bias, mean, rstd, (0, 1), relu)
        elif kind in _GROUP_FLAGS:
            dx, dw, db, dp = _group_backward(dy, x, spec, weight, bias, extra, mean, rstd)
        else:
            rms = kind == "rms_token"
            dx, dw, db, _ = _token_backward(dy, x, weight, bias, mean, rstd, relu, rms)
    return (
        dx if needs[0] else None,
        dw.to(weight.dtype) if needs[1] else None,
        db.to(bias.dtype) if needs[2] else None,
        dp.to(extra.dtype) if needs[3] else None,
    )


def _run(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    spec: _Spec,
    running: tuple[Tensor, Tensor, float] | None = None,
    extra: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Through :class:`_TritonNorm` where autograd needs it, else the forward kernels alone
    (the Function's fixed cost is tens of microseconds of a launch-bound call); torch's
    kernels where this kind of call fails the first time (:func:`_guarded`)."""
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, extra)
    )

    def run() -> tuple[Tensor, Tensor, Tensor | None]:
        if grad:
            return _TritonNorm.apply(x, weight, bias, extra, spec, running)
        y, mean, _, var = _forward(x, weight, bias, extra, spec, running)
        return y, mean, var

    key = _key("fwd", (x, weight), spec, running is not None, grad)
    kept = None
    if running is not None and key not in _proven:  # a first call: a later kernel may fail
        kept = (running[0].clone(), running[1].clone())  # after the statistics kernel blended

    def fallback() -> tuple[Tensor, Tensor, Tensor]:
        if running is not None and kept is not None:  # as before the call: blended once below
            running[0].copy_(kept[0])
            running[1].copy_(kept[1])
        return _torch_forward(x, weight, bias, extra, spec, running)

    return _guarded(key, run, fallback)


def _key(step: str, params: tuple[Tensor | None, ...], spec: _Spec, *rest: Any) -> tuple[Any, ...]:
    """What selects the kernels and their compiled variants: the step, the input's shape,
    strides and dtype, the other ``params``' dtypes (``None`` where absent), the norm (not
    its ``eps``, a plain argument) and the call's options."""
    x = params[0]
    dtypes = tuple(None if t is None else t.dtype for t in params)
    return (step, tuple(x.shape), x.stride(), dtypes, spec.kind, spec.groups, spec.relu, *rest)


def _torch_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    extra: Tensor | None,
    spec: _Spec,
    running: tuple[Tensor, Tensor, float] | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """What :func:`_run` returns, on torch's kernels (differentiable): the fallback."""
    kind, groups, eps, relu = spec
    with torch.no_grad():
        xf = x.detach().float()
        if kind == "batch":
            var, mean = torch.var_mean(xf, [0, *range(2, x.dim())], correction=0)
        else:  # per token, or per (sample, group)
            tokens = "token" in kind
            rows = xf.reshape(-1, x.shape[-1]) if tokens else xf.reshape(x.shape[0] * groups, -1)
            if kind in ("rms_token", "rms", "frn"):  # (the mean square in var's place)
                var = rows.square().mean(1)
                mean = torch.zeros_like(var)
            else:
                var, mean = torch.var_mean(rows, 1, correction=0)
        if running is not None:
            rm, rv, factor = running
            m = x.numel() // mean.numel()
            rm.lerp_(mean.to(rm.dtype), factor)
            rv.lerp_((var * (m / max(m - 1, 1))).to(rv.dtype), factor)
    y = reference(x, weight, bias, kind, groups, eps, extra)
    fmt = channels_last_format(x)
    if fmt is not None:
        y = y.contiguous(memory_format=fmt)  # torch's CUDA group norm returns NCHW
    return (torch.relu(y) if relu else y), mean, var


def reference(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    kind: str,
    groups: int,
    eps: float,
    extra: Tensor | None = None,
) -> Tensor:
    """torch's functional form of what the kernels compute (before the ReLU; normzoo's
    reference math for the zoo's kinds); the parameters cast to a half ``x``'s dtype for
    group and layer norm, whose CUDA kernels need one dtype (their gradients reach the
    parameters through the cast)."""
    if kind == "batch":
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    if kind == "rms":
        return functional.rms_norm(x, weight, bias, eps=eps)
    if kind == "frn":
        return functional.filter_response_norm(x, weight, bias, extra, eps=eps)
    if kind == "s0":
        return functional.evonorm_s0(x, extra, groups, weight, bias, eps=eps)
    weight = weight if weight is None or weight.dtype == x.dtype else weight.to(x.dtype)
    bias = bias if bias is None or bias.dtype == x.dtype else bias.to(x.dtype)
    if kind == "group":
        return F.group_norm(x, groups, weight, bias, eps)
    if kind == "rms_token":
        return functional.rms_norm(x, weight, bias, eps=eps, channels_last=True)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def batch_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    relu: bool = False,
    running: tuple[Tensor, Tensor, float] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Training-mode batch norm of ``x`` ``(N, C, *spatial)``:
    ``y = w (x - E[x]) / sqrt(Var[x] + eps) + b`` per channel over ``N`` and the positions
    (``relu``: then a ReLU). Returns ``(y, mean, var)``, ``var`` biased, both ``(C,)``.
    ``running = (running_mean, running_var, factor)``: blended in place as
    ``Tensor.lerp_(batch, factor)`` with the unbiased variance, in the statistics kernel.

    S. Ioffe, C. Szegedy, "Batch Normalization", ICML 2015."""
    return _run(x, weight, bias, _Spec("batch", 0, eps, relu), running)


def group_norm(
    x: Tensor,
    groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    relu: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Group norm of ``x`` ``(N, C, *spatial)`` with ``groups`` groups (1: channels-first
    layer norm, ``C``: instance norm), or of ``(N, C)`` tokens (each row's groups in one
    program). Returns ``(y, mean, var)``, per (sample, group) ``(N * groups,)``.

    Y. Wu, K. He, "Group Normalization", ECCV 2018."""
    return _run(x, weight, bias, _Spec("group", groups, eps, relu))


def layer_norm_tokens(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, relu: bool = False
) -> Tensor:
    """Layer norm of a contiguous ``(..., C)`` tensor over its last dim (``F.layer_norm``).

    J. L. Ba, J. R. Kiros, G. E. Hinton, "Layer Normalization", arXiv:1607.06450."""
    return _run(x, weight, bias, _Spec("token", 1, eps, relu))[0]


def rms_norm_tokens(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """RMSNorm of a contiguous ``(..., C)`` tensor over its last dim, plus normzoo's bias:
    ``y = x / sqrt(mean(x^2) + eps) * w + b`` (``normzoo.functional.rms_norm``).

    B. Zhang, R. Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019."""
    return _run(x, weight, bias, _Spec("rms_token", 1, eps, False))[0]


def rms_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """Channels-first RMSNorm of ``x`` ``(N, C, *spatial)`` over each sample's channels and
    positions, per-channel ``w`` and ``b``: ``y = x / sqrt(mean(x^2) + eps) * w + b``
    (``normzoo.functional.rms_norm``). One pass where a sample fits one program, else the
    two-phase kernels with a mean-square statistic.

    B. Zhang, R. Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019."""
    return _run(x, weight, bias, _Spec("rms", 1, eps, False))[0]


def filter_response_norm(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, tau: Tensor, eps: float
) -> Tensor:
    """FRN + TLU of ``x`` ``(N, C, *spatial)``, one pass per (sample, channel) where it fits a
    program on contiguous input, else two phases:
    ``z = max(w x / sqrt(mean_s(x^2) + eps) + b, tau)`` (``normzoo.functional``'s).

    S. Singh, S. Krishnan, "Filter Response Normalization Layer", CVPR 2020."""
    return _run(x, weight, bias, _Spec("frn", x.shape[1], eps, False), extra=tau)[0]


def evonorm_s0(
    x: Tensor,
    v: Tensor,
    groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """EvoNorm-S0 of ``x`` ``(N, C, *spatial)``, one pass per (sample, group) where it fits a
    program on contiguous input, else two phases:
    ``y = x sigmoid(v x) / sqrt(Var_group(x) + eps) * w + b`` (``normzoo.functional``'s).

    H. Liu, A. Brock, K. Simonyan, Q. V. Le, "Evolving Normalization-Activation Layers",
    NeurIPS 2020."""
    return _run(x, weight, bias, _Spec("s0", groups, eps, False), extra=v)[0]
