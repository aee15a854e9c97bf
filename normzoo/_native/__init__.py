"""Native CPU kernels: small C files compiled on first use, loaded with :mod:`ctypes`.

Normalization is memory-bound. torch's CPU kernels for batch norm read the input several
times over the whole tensor (statistics, then normalization; two reductions, then the input
gradient), so a tensor larger than the cache comes from memory each time. The kernels here
work one channel (or one row) at a time: its statistics and its normalization run while its
values are still in the core's cache, so each tensor crosses the memory bus once per pass
(forward: read ``x``, write ``y``; backward: read ``x`` and ``dy``, write ``dx``).

How they are built and used:

* Each ``*.c`` file of this package is one library. :func:`load` compiles it the first time
  it is needed (0.2-4 s; ``-O3 -march=native -fopenmp``, with FMA contraction, which
  ``-std=c11`` alone turns off) into the cache folder
  (``$NORMZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/normzoo``, else ``~/.cache/normzoo``), under a
  name that hashes the source, the flags, the compiler and the CPU, and loads it.
  ``import normzoo`` compiles nothing.
* Threads: the kernels run OpenMP loops over channels with ``torch.get_num_threads()``
  threads. torch's CPU wheel ships ``libgomp.so.1``, which is already loaded when these
  libraries load, so they share torch's OpenMP runtime (one thread pool, no oversubscription).
* Where a library cannot be built (no C compiler, a compiler error, an unwritable cache)
  :func:`load` returns ``None`` after one ``RuntimeWarning``, and the norms use torch's
  kernels: the results are the same. Off Linux it returns ``None`` without a warning.
* ``NORMZOO_NATIVE=0`` (read at each call) or :func:`set_enabled` turn native kernels off.
* ``ops.cpp`` is different: a torch operator library (``torch.ops.normzoo``) whose autograd
  node is C++, so a kernel costs no Python in forward or backward. :func:`load_ops` builds it
  with the C++ compiler against the installed torch's headers (about 30 s, once per machine
  and torch version; cached like the rest) and loads it with ``torch.ops.load_library``.
  Where it cannot be built, the norms call the same C kernels through a Python
  ``torch.autograd.Function`` (one ``RuntimeWarning``).

Each kernel's wrapper checks what the C code assumes (CPU, float32, contiguous or, for the
``_cl`` kernels, channels_last) and the callers only dispatch such tensors; every kernel is
tested against torch and gradchecked through its float32 math in ``tests/test_native.py``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

__all__ = [
    "available",
    "bind",
    "build_times",
    "cache_dir",
    "capturing",
    "load",
    "load_ops",
    "native_enabled",
    "ops_available",
    "set_enabled",
]

_ENV = "NORMZOO_NATIVE"
# The mapping that ``os.environ`` reads and writes through (CPython keeps it as
# ``os.environ._data`` with encoded keys): a plain dict lookup, where ``os.environ.get`` costs
# about a microsecond, which every norm's dispatch would pay several times per call.
_ENVIRON: dict | None = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(_ENV) if _ENVIRON is not None else _ENV
_SRC = Path(__file__).parent
# -fno-math-errno: the kernels never read errno, and without it a sqrtf call (which may set
# it) keeps its loop from vectorizing.
_FLAGS = [
    "-O3",
    "-march=native",
    "-ffp-contract=fast",
    "-fno-math-errno",
    "-fopenmp",
    "-std=c11",
    "-shared",
    "-fPIC",
]
_switch = True
_lock = threading.Lock()
#: name -> loaded library, or None where building or loading failed (not retried).
_libs: dict[str, ctypes.CDLL | None] = {}
#: name -> seconds this process spent building (0 when found in the cache) and loading it.
_load_seconds: dict[str, float] = {}

P = ctypes.c_void_p
I64 = ctypes.c_int64
F64 = ctypes.c_double
INT = ctypes.c_int

#: The C signature of every exported function, per library (argtypes; the return is void but
#: where RESTYPES says otherwise).
SIGNATURES: dict[str, dict[str, list]] = {
    "batch_norm": {
        # x, weight, bias, y, mean, invstd, var, N, C, L, eps, threads
        "nz_bn_forward": [P, P, P, P, P, P, P, I64, I64, I64, F64, INT],
        # dy, x, weight, mean, invstd, dx, dweight, dbias, N, C, L, threads
        "nz_bn_backward": [P, P, P, P, P, P, P, P, I64, I64, I64, INT],
        # the fused ReLU's: as nz_bn_forward; the backward takes the bias after the weight
        "nz_bn_relu_forward": [P, P, P, P, P, P, P, I64, I64, I64, F64, INT],
        "nz_bn_relu_backward": [P, P, P, P, P, P, P, P, P, I64, I64, I64, INT],
        # channels_last: x, weight, bias, y, mean, invstd, var, work, max_blocks, R, C, eps,
        # threads (R = N * spatial rows of C channels; work: 2 * max_blocks * C doubles)
        "nz_bn_forward_cl": [P, P, P, P, P, P, P, P, I64, I64, I64, F64, INT],
        # dy, x, weight, mean, invstd, dx, dweight, dbias, work, max_blocks, R, C, threads
        "nz_bn_backward_cl": [P, P, P, P, P, P, P, P, P, I64, I64, I64, INT],
        "nz_bn_relu_forward_cl": [P, P, P, P, P, P, P, P, I64, I64, I64, F64, INT],
        "nz_bn_relu_backward_cl": [P, P, P, P, P, P, P, P, P, P, I64, I64, I64, INT],
        # Batch Renorm: x, weight, bias, running_mean, running_var, r_max, d_max, y, mean,
        # invstd, out (5 C: r, d, w r, w d + b, unbiased var), N, C, L, eps, threads
        "nz_renorm_forward": [P, P, P, P, P, F64, F64, P, P, P, P, I64, I64, I64, F64, INT],
        # channels_last: ... out, work, max_blocks, R, C, eps, threads
        "nz_renorm_forward_cl": [P, P, P, P, P, F64, F64, P, P, P, P, P, I64, I64, I64, F64, INT],
        # ghost BN over rows: x, weight, bias, y, stats, var, R, C, rows per virtual batch,
        # eps, threads
        "nz_ghost_forward_rows": [P, P, P, P, P, P, I64, I64, I64, F64, INT],
        # dy, x, weight, stats, dx, dweight, dbias, part, R, C, rows per virtual batch, threads
        "nz_ghost_backward_rows": [P, P, P, P, P, P, P, P, I64, I64, I64, INT],
        # ghost BN of a contiguous (N, C, L) tensor: x, weight, bias, y, stats, var, N, C, L,
        # samples per virtual batch, eps, threads
        "nz_ghost_forward": [P, P, P, P, P, P, I64, I64, I64, I64, F64, INT],
        # dy, x, weight, stats, dx, dweight, dbias, part, N, C, L, samples per batch, threads
        "nz_ghost_backward": [P, P, P, P, P, P, P, P, I64, I64, I64, I64, INT],
    },
    "row_norm": {
        # x, weight, bias, y, mean, rstd, var, N, G, Cg, L, eps, threads
        "nz_row_forward": [P, P, P, P, P, P, P, I64, I64, I64, I64, F64, INT],
        "nz_row_relu_forward": [P, P, P, P, P, P, P, I64, I64, I64, I64, F64, INT],
        # dy, x, weight, mean, rstd, dx, dweight, dbias, partial, N, G, Cg, L, threads
        "nz_row_backward": [P, P, P, P, P, P, P, P, P, I64, I64, I64, I64, INT],
        # the fused ReLU's: the bias after the weight, the mask scratch after partial
        "nz_row_relu_backward": [P, P, P, P, P, P, P, P, P, P, P, I64, I64, I64, I64, INT],
    },
    "zoo": {
        # x, mean, var, N, C, L, channels_last, threads
        "nz_row_stats": [P, P, P, I64, I64, I64, INT, INT],
        # op, x, params, y, N, C, L, channels_last, threads
        "nz_map_forward": [INT, P, P, P, I64, I64, I64, INT, INT],
        # op, dy, x, params, grads, N, C, L, channels_last, threads
        "nz_map_sums": [INT, P, P, P, P, I64, I64, I64, INT, INT],
        # op, dy, x, params, mean, k1, k0, dx, N, C, L, channels_last, threads
        "nz_map_dx": [INT, P, P, P, P, P, P, P, I64, I64, I64, INT, INT],
        # the norms' forward and backward (see zoo.c); each ends with N, C, L, cl, threads
        "nz_b0_forward": [P, P, P, P, P, F64, P, P, P, P, P, P, I64, I64, I64, INT, INT],
        "nz_b0_backward": [P, P, P, P, P, INT, P, P, P, P, P, P, I64, I64, I64, INT, INT],
        "nz_s0_forward": [P, P, P, P, I64, F64, P, P, P, P, P, I64, I64, I64, INT, INT],
        "nz_s0_backward": [*[P] * 7, I64, F64, *[P] * 6, I64, I64, I64, INT, INT],
        "nz_switchable_forward": [*[P] * 7, F64, *[P] * 6, I64, I64, I64, INT, INT],
        "nz_switchable_backward": [*[P] * 10, F64, *[P] * 8, I64, I64, I64, INT, INT],
        "nz_frn_forward": [P, P, P, P, F64, P, P, P, P, I64, I64, I64, INT, INT],
        "nz_frn_backward": [P, P, P, P, P, P, F64, P, P, P, P, P, P, I64, I64, I64, INT, INT],
        "nz_rms_forward": [P, P, P, F64, P, P, P, P, I64, I64, I64, INT, INT],
        "nz_rms_backward": [P, P, P, P, P, P, F64, P, P, P, P, P, I64, I64, I64, INT, INT],
        # which path S0, FRN and RMSNorm take (returns int64: 0 for two passes, else the fused
        # path's task width): cl, groups (N G), size (channels per group), C, L, threads
        "nz_fused_width": [INT, I64, I64, I64, I64, INT],
        # src, dst, N, C, L, to_cl, threads: an (N, C, L) tensor copied into the other layout
        # (float32; _bf16: 2-byte elements)
        "nz_transpose_layout": [P, P, I64, I64, I64, INT, INT],
        "nz_transpose_layout_bf16": [P, P, I64, I64, I64, INT, INT],
        # group norm on the rows: x, w, b, G, eps, y, mean, var, gstats, params, N, C, L, cl,
        # threads; backward: dy, x, params, mean, gstats, w, G, sums, k, dx, dw, db, N, C, L,
        # cl, threads
        "nz_gn_forward": [P, P, P, I64, F64, P, P, P, P, P, I64, I64, I64, INT, INT],
        "nz_gn_backward": [P, P, P, P, P, P, I64, P, P, P, P, P, I64, I64, I64, INT, INT],
        # RMSNorm on tokens: x, weight, bias, y, rrms, R, C, eps, threads
        "nz_rms_tokens_forward": [P, P, P, P, P, I64, I64, F64, INT],
        # dy, x, weight, rrms, dx, dweight, dbias, partial, R, C, threads
        "nz_rms_tokens_backward": [P, P, P, P, P, P, P, P, I64, I64, INT],
        # FRN + TLU on tokens: x, weight, bias, tau, z, R, C, eps, threads
        "nz_frn_tokens_forward": [P, P, P, P, P, I64, I64, F64, INT],
        # dz, x, weight, bias, tau, dx, dweight, dbias, dtau, partial, R, C, eps, threads
        "nz_frn_tokens_backward": [P, P, P, P, P, P, P, P, P, P, I64, I64, F64, INT],
        # tokens (R rows of C): op, x, v, weight, bias, y, mean, rstd, R, C, G, eps, threads
        "nz_group_tokens_forward": [INT, P, P, P, P, P, P, P, I64, I64, I64, F64, INT],
        # op, dy, x, v, weight, mean, rstd, dx, dv, dweight, dbias, partial, R, C, G, threads
        "nz_group_tokens_backward": [INT, *[P] * 11, I64, I64, I64, INT],
        # x, mean, var, partial, R, C, threads
        "nz_column_stats": [P, P, P, P, I64, I64, INT],
        # x, v, s_b, weight, bias, y, R, C, s_i, threads
        "nz_b0_tokens_forward": [P, P, P, P, P, P, I64, I64, F64, INT],
        # dy, x, v, s_b, weight, mean, dx, dv, dweight, dbias, partial, k, R, C, s_i, batch,
        # threads
        "nz_b0_tokens_backward": [*[P] * 12, I64, I64, F64, INT, INT],
        # FrozenBN (returns int: 0, or -1 without memory for its C coefficients): x,
        # running_mean, running_var, weight, bias, eps, y, N, C, L, channels_last, relu, threads
        "nz_frozen_forward": [P, P, P, P, P, F64, P, I64, I64, I64, INT, INT, INT],
        # dy, y, running_var, weight, eps, dx, N, C, L, channels_last, relu, threads
        "nz_frozen_backward": [P, P, P, P, F64, P, I64, I64, I64, INT, INT, INT],
    },
}


#: Exported functions that return something: an int status (0, or -1 where their scratch
#: could not be allocated, having written nothing).
#: The zoo's per-row and token kernels, also built for bfloat16 tensors under ``name_bf16``
#: (``zoo_rows.h``, ``zoo_tokens.h``): the same signatures, ``x``, ``y``, ``dy`` and ``dx``
#: pointing to bfloat16.
ZOO_BF16 = (
    "nz_row_stats",
    "nz_map_forward",
    "nz_map_sums",
    "nz_map_dx",
    "nz_b0_forward",
    "nz_b0_backward",
    "nz_s0_forward",
    "nz_s0_backward",
    "nz_switchable_forward",
    "nz_switchable_backward",
    "nz_frn_forward",
    "nz_frn_backward",
    "nz_rms_forward",
    "nz_rms_backward",
    "nz_fused_width",
    "nz_gn_forward",
    "nz_gn_backward",
    "nz_group_tokens_forward",
    "nz_group_tokens_backward",
    "nz_column_stats",
    "nz_b0_tokens_forward",
    "nz_b0_tokens_backward",
    "nz_rms_tokens_forward",
    "nz_rms_tokens_backward",
    "nz_frn_tokens_forward",
    "nz_frn_tokens_backward",
)
SIGNATURES["zoo"].update({f"{fn}_bf16": SIGNATURES["zoo"][fn] for fn in ZOO_BF16})
#: Ghost BN's kernels, also built for bfloat16 (the rows: ``ghost_rows.h``; contiguous input:
#: ``nz_ghost_*_bf16`` in ``batch_norm.c``): ``x``, ``y``, ``dy`` and ``dx`` bfloat16, the rest
#: float32.
GHOST_BF16 = (
    "nz_ghost_forward_rows",
    "nz_ghost_backward_rows",
    "nz_ghost_forward",
    "nz_ghost_backward",
)
#: BatchNorm's and Batch Renorm's kernels, also built for bfloat16 (``bn_block.h``,
#: ``bn_cl.h``): the same signatures, ``x``, ``y``, ``dy`` and ``dx`` bfloat16.
BN_BF16 = tuple(
    f"{name}{layout}"
    for name in ("nz_bn_forward", "nz_bn_backward", "nz_bn_relu_forward", "nz_bn_relu_backward",
                 "nz_renorm_forward")
    for layout in ("", "_cl")
)  # fmt: skip
SIGNATURES["batch_norm"].update(
    {f"{fn}_bf16": SIGNATURES["batch_norm"][fn] for fn in (*GHOST_BF16, *BN_BF16)}
)
RESTYPES: dict[str, type] = {
    "nz_frozen_forward": INT,
    "nz_frozen_backward": INT,
    "nz_fused_width": I64,
    "nz_fused_width_bf16": I64,
}


def set_enabled(enabled: bool) -> None:
    """Turn native kernels on or off for this process (``NORMZOO_NATIVE=0`` also turns them
    off). A library already loaded stays loaded."""
    global _switch
    _switch = bool(enabled)


def native_enabled() -> bool:
    """Whether the norms may use native kernels (the switch and ``NORMZOO_NATIVE``)."""
    if not _switch:
        return False
    value = os.environ.get(_ENV) if _ENVIRON is None else _ENVIRON.get(_ENV_KEY)
    if value is None:  # usually unset: the dispatch of every call reads this
        return True
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value.strip().lower() not in ("0", "false", "no", "off")


def capturing() -> bool:
    """Whether torch is capturing a graph (``torch.compile`` tracing, ``torch.jit.trace``):
    the kernels take raw pointers, which a captured graph cannot hold, so the norms use
    torch's operators there."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


_F32 = torch.float32
_is_tracing = torch._C._is_tracing  # torch.jit.is_tracing without its two Python frames


def one_call_ready(x: torch.Tensor, min_numel: int, bfloat16: bool = False) -> bool:
    """Whether a module's one-call operator (``group_norm_module``, ``batch_norm_module``)
    may be asked to serve ``x``: a float32 (or, where ``bfloat16``, bfloat16) CPU tensor (not
    a subclass) of at least ``min_numel`` elements, outside ``torch.compile`` and
    ``torch.jit.trace`` (the tracer runs an operator's kernel with tracing off, so the
    operator cannot tell), the operator library loaded. The operator checks the rest. CUDA,
    other dtypes and small inputs stop here and pay no operator call; ``is_compiling`` comes
    first, where dynamo reads it as a constant."""
    if torch.compiler.is_compiling():
        return False
    if type(x) is not torch.Tensor or not x.is_cpu:
        return False
    if x.dtype is not _F32 and not (bfloat16 and x.dtype is torch.bfloat16):
        return False
    return x.numel() >= min_numel and not _is_tracing() and ops_available()


def cache_dir() -> Path:
    """Where compiled libraries are kept."""
    if os.environ.get("NORMZOO_CACHE_DIR"):
        return Path(os.environ["NORMZOO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "normzoo"


def _compiler() -> str | None:
    if os.environ.get("CC"):  # the user's choice, or nothing
        return shutil.which(os.environ["CC"])
    return shutil.which("cc") or shutil.which("gcc")


def _cpu_id() -> str:
    """Model and flags of this CPU: ``-march=native`` output must not run on another one
    (a cache folder shared over NFS)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _headers() -> bytes:
    """The kernel files' shared headers (``nz_simd.h``), part of every library's cache key."""
    return b"".join(p.read_bytes() for p in sorted(_SRC.glob("*.h")))


def _library_path(name: str, cc: str) -> Path:
    source = (_SRC / f"{name}.c").read_bytes() + _headers()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        version = cc
    key = hashlib.sha256()
    for part in (source, " ".join(_FLAGS).encode(), version.encode(), _cpu_id().encode()):
        key.update(part)
    return cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"


class _Unsupported(RuntimeError):
    """This platform has no native kernels (not a failure: no warning)."""


class _NoCompiler(RuntimeError):
    """No C compiler: no native library (C or C++ operators) can be built, one warning says so
    for all of them."""


#: Whether this process has warned that there is no C compiler (once for every library).
_warned_no_compiler = False


def _c_compiler() -> str:
    """The C compiler, or :class:`_NoCompiler` saying what was looked for."""
    cc = _compiler()
    if cc is None:
        chosen = os.environ.get("CC")
        raise _NoCompiler(
            f"C compiler {chosen!r} (from CC) not found"
            if chosen
            else "no C compiler found (install gcc, or set CC)"
        )
    return cc


def _warn_no_compiler(err: _NoCompiler) -> None:
    """One warning per process for every library that the missing C compiler rules out."""
    global _warned_no_compiler
    if not _warned_no_compiler:
        _warned_no_compiler = True
        warnings.warn(
            f"normzoo: native kernels unavailable ({err}); using torch's kernels (set "
            f"{_ENV}=0 to skip building them)",
            RuntimeWarning,
            stacklevel=3,
        )


def _build(name: str) -> ctypes.CDLL:
    if not sys.platform.startswith("linux"):
        raise _Unsupported(f"native kernels are built on Linux only (this is {sys.platform})")
    cc = _c_compiler()
    path = _library_path(name, cc)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Build under a unique name, then rename: processes that build at once (DDP ranks)
        # never load a half-written file.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            cmd = [cc, *_FLAGS, str(_SRC / f"{name}.c"), "-o", tmp, "-lm"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return bind(ctypes.CDLL(str(path)), name)


def bind(lib: ctypes.CDLL, name: str, missing_ok: bool = False) -> ctypes.CDLL:
    """``lib``, a build of library ``name``, with the C signatures of its functions set
    (``missing_ok``: skipping functions it lacks, as a build of an older revision may, for
    ``scripts/bench_kernel_ab.py``)."""
    for fn, argtypes in SIGNATURES[name].items():
        if missing_ok and not hasattr(lib, fn):
            continue
        getattr(lib, fn).argtypes = argtypes
        getattr(lib, fn).restype = RESTYPES.get(fn)
    return lib


def load(name: str) -> ctypes.CDLL | None:
    """The native library ``name`` (built on first call), or ``None`` where it is switched
    off or cannot be built (one ``RuntimeWarning`` says why; then torch's kernels are used)."""
    if not native_enabled():
        return None
    if name in _libs:
        return _libs[name]
    with _lock:
        if name not in _libs:
            start = time.perf_counter()
            try:
                _libs[name] = _build(name)
                _load_seconds[name] = time.perf_counter() - start
            except _Unsupported:  # macOS, Windows: torch's kernels, silently
                _libs[name] = None
            except _NoCompiler as err:  # one warning for every library
                _libs[name] = None
                _warn_no_compiler(err)
            except Exception as err:  # compile error, unwritable cache, ...
                _libs[name] = None
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                warnings.warn(
                    f"normzoo: native kernels '{name}' unavailable ({first}); using torch's "
                    f"kernels (set {_ENV}=0 to skip building them)",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _libs[name]


# -- the C++ operator library ------------------------------------------------------------------
OPS = "ops"
#: C sources linked into the operator library with ``ops.cpp``.
OPS_C_SOURCES = ("batch_norm.c", "row_norm.c", "zoo.c")
_CXX_FLAGS = ["-O2", "-std=c++20", "-fPIC", "-shared", "-fopenmp", "-w"]
#: None: not tried yet; True: loaded (torch.ops.normzoo.* exist); False: unavailable.
_ops_state: bool | None = None


def _cxx_compiler() -> str | None:
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    return shutil.which("c++") or shutil.which("g++")


def _torch_build_info() -> tuple[Path, list[str], str]:
    """(torch's library folder, its header folders, the C++ ABI define) of this torch."""
    root = Path(torch.__file__).parent
    includes = [str(root / "include"), str(root / "include" / "torch" / "csrc" / "api" / "include")]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    return root / "lib", includes, abi


def _version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return compiler


def _ops_library_path(cc: str, cxx: str) -> Path:
    key = hashlib.sha256()
    for name in (f"{OPS}.cpp", *OPS_C_SOURCES):
        key.update((_SRC / name).read_bytes())
    key.update(_headers())
    torch_id = f"{torch.__version__} {torch.version.git_version} {torch._C._GLIBCXX_USE_CXX11_ABI}"
    for part in (" ".join(_FLAGS + _CXX_FLAGS), _version(cc), _version(cxx), _cpu_id(), torch_id):
        key.update(part.encode())
    return cache_dir() / f"{OPS}-{key.hexdigest()[:16]}.so"


def _run_all(cmds: list[list[str]], log_dir: str) -> None:
    """Run the compiler commands ``cmds``, in order, as many at once as this process may use
    CPUs (the operator library's four compiles take about 19, 18, 9 and 2 s one after another
    here); the first that fails ends the others and raises with its errors."""
    jobs = max(1, min(len(cmds), len(os.sched_getaffinity(0))))
    todo = list(enumerate(cmds))
    running: dict[int, subprocess.Popen[bytes]] = {}
    try:
        while todo or running:
            while todo and len(running) < jobs:
                i, cmd = todo.pop(0)
                with open(os.path.join(log_dir, f"{i}.log"), "wb") as log:  # not a pipe: no
                    running[i] = subprocess.Popen(cmd, stdout=log, stderr=log)  # full buffers
            for i, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[i]
                if proc.returncode != 0:
                    errors = Path(log_dir, f"{i}.log").read_text(errors="replace").strip()
                    raise RuntimeError(f"{' '.join(cmds[i])} failed:\n{errors}")
            if running:
                time.sleep(0.02)
    finally:
        for proc in running.values():
            proc.kill()
            proc.wait()


def _build_ops() -> Path:
    if not sys.platform.startswith("linux"):
        raise _Unsupported(f"native kernels are built on Linux only (this is {sys.platform})")
    cc, cxx = _c_compiler(), _cxx_compiler()
    if cxx is None:  # the C kernels still build: the norms call them through Python
        chosen = os.environ.get("CXX")
        raise RuntimeError(
            f"C++ compiler {chosen!r} (from CXX) not found"
            if chosen
            else "no C++ compiler found (install g++, or set CXX)"
        )
    path = _ops_library_path(cc, cxx)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lib_dir, includes, abi = _torch_build_info()
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        # ops.cpp first: a C++ compiler that fails, fails before the C kernels' compiles
        cpp = os.path.join(tmp, f"{OPS}_cpp.o")
        cxx_flags = [f for f in _CXX_FLAGS if f != "-shared"]
        includes_flags = [f"-I{d}" for d in includes]
        cmds = [[cxx, *cxx_flags, abi, *includes_flags, "-c", str(_SRC / f"{OPS}.cpp"), "-o", cpp]]
        objects = [cpp]
        for name in OPS_C_SOURCES:  # the C kernels, with the flags of their own libraries
            obj = os.path.join(tmp, name.replace(".c", ".o"))
            flags = [f for f in _FLAGS if f != "-shared"]
            cmds.append([cc, *flags, "-c", str(_SRC / name), "-o", obj])
            objects.append(obj)
        _run_all(cmds, tmp)
        out = os.path.join(tmp, f"{OPS}.so")
        link = [cxx, "-shared", "-fopenmp", *objects, "-o", out, f"-L{lib_dir}"]
        link += [f"-Wl,-rpath,{lib_dir}", "-ltorch", "-ltorch_cpu", "-lc10", "-lm"]
        _run_all([link], tmp)
        os.replace(out, path)  # atomic: processes that build at once never load half a file
    return path


def load_ops() -> bool:
    """Build (on first use) and load the C++ operator library; ``torch.ops.normzoo`` then
    holds its operators. ``False`` where native kernels are off or it cannot be built (one
    ``RuntimeWarning`` says why; the norms then call the C kernels through Python)."""
    global _ops_state
    if not native_enabled():
        return False
    if _ops_state is not None:
        return _ops_state
    with _lock:
        if _ops_state is None:
            start = time.perf_counter()
            try:
                torch.ops.load_library(str(_build_ops()))
                _ops_state = True
                _load_seconds[OPS] = time.perf_counter() - start
            except _Unsupported:
                _ops_state = False
            except _NoCompiler as err:  # no native kernels at all: one warning for all
                _ops_state = False
                _warn_no_compiler(err)
            except Exception as err:  # no C++ compiler, no torch headers, a compile error
                _ops_state = False
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                warnings.warn(
                    f"normzoo: native operator library unavailable ({first}); calling the "
                    f"native kernels through Python instead (set {_ENV}=0 to skip building)",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _ops_state


def ops_cached() -> bool:
    """Whether this machine's cache holds the operator library for this torch, compilers and
    sources (so :func:`load_ops` loads it in a moment instead of building it)."""
    cc, cxx = _compiler(), _cxx_compiler()
    return cc is not None and cxx is not None and _ops_library_path(cc, cxx).exists()


def ops_available() -> bool:
    """Whether ``torch.ops.normzoo`` is usable here (builds and loads it if needed)."""
    if _ops_state and native_enabled():  # the fast path of every dispatch
        return True
    return load_ops()


def build_times() -> dict[str, float]:
    """``{library: seconds}`` this process spent building (on a cold cache) and loading each
    native library: the first-call cost of the native kernels."""
    return dict(_load_seconds)


def available(name: str) -> bool:
    """Whether the native library ``name`` is usable here (builds it if needed)."""
    lib = _libs.get(name, False)  # the fast path: loaded before, switch and env still on
    if lib is False or not native_enabled():
        return load(name) is not None
    return lib is not None


def threads() -> int:
    """OpenMP threads for one kernel call: torch's intra-op thread count."""
    return torch.get_num_threads()
