"""Compile every Triton kernel variant that normzoo's modules launch, for a GPU, without one.

    python scripts/triton_compile_check.py                      # sm_90 (H100/H200), the full set
    python scripts/triton_compile_check.py --arch 80 --arch 90 --json out.json
    python scripts/triton_compile_check.py --quick --jobs 2     # fewer shapes, two processes

Triton's interpreter (``tests/triton_interpreter_check.py``) checks the kernels' arithmetic
on the CPU, but it runs Python: it accepts code that the compiler rejects (a loop-carried
value that changes type, a block size that is not a power of two) and says nothing of the
registers a tile needs. Kernels written in a session without a GPU (the zoo's, the
token-group ones) used to meet the compiler first on a lent GPU, where a failure costs part of
15 minutes and silently falls back to torch's kernels (``_triton._guarded``).

This runs each module of the zoo on its Triton path (``NORMZOO_TRITON=all``) over the
benchmark's shapes (and the GPU tests' odd ones; the half types on each family's first
shape), both layouts, fused ReLU, training and eval, forward and backward, and the
interpreter check's calls, on CPU tensors, with Triton's driver replaced by one
that names the GPU (``--arch``) and each launch turned into a compile: Triton's own binder
picks the variant (constexprs, integer and pointer specializations) exactly as a launch
would, and ``ptxas`` (shipped with triton) builds the cubin. The kernels run nowhere, so the
tensors hold garbage; only the variants matter. The plans follow a GPU's size
(``--sms``, 132 for an H100/H200).

Per variant it reports the registers per thread and the bytes spilled to local memory (from
``ptxas -v``; each variant compiles afresh, in an empty cache), the shared memory, and its
global loads, vector or scalar (from the PTX); it exits 1 if any variant fails to compile, or
(``--no-spills``) spills. Needs triton (its x86-64 Linux wheels bring ptxas); no GPU, no
CUDA.

``--sass`` also disassembles each variant's machine code (``nvdisasm``, shipped with triton)
and counts the instructions of its largest loop, with the shuffles, barriers, shared-memory
accesses and special-function ops (divisions, exponentials) among them: what a loop costs
the multiprocessor's schedulers per iteration, which bounds a memory-bound kernel when it
outgrows the bytes the iteration moves (the twenty-fourth session found the two-phase
statistics loop at 465-496 instructions a tile on channels_last, twice what the H200's
bandwidth leaves room for in bfloat16).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if os.environ.get("TRITON_INTERPRET"):
    sys.exit("triton_compile_check.py compiles the kernels: unset TRITON_INTERPRET")

import torch

import normzoo
from normzoo.norms import _triton
from normzoo.norms._kernels import channels_last_format

ROOT = Path(__file__).resolve().parent.parent


def _groups(c: int) -> dict[str, int]:
    """32 groups where they divide ``c`` (the GPU runs'), else 4."""
    return {"num_groups": 32 if c % 32 == 0 else 4}


#: module name -> (options of the channel count, token input (channels last in the shape),
#: fuses a ReLU, takes (N, C))
MODULES: dict[str, tuple[Callable[[int], dict[str, Any]], bool, bool, bool]] = {
    "bn": (lambda c: {}, False, True, True),
    "gn": (_groups, False, True, True),
    "in": (lambda c: {"track_running_stats": True}, False, True, False),
    "ln": (lambda c: {}, False, True, True),
    "ln_tokens": (lambda c: {"channels_last": True}, True, True, True),
    "rms_tokens": (lambda c: {"channels_last": True}, True, False, True),
    "gn_tokens": (_groups, True, True, True),
    "frn_tokens": (lambda c: {}, True, False, True),  # the token-group kernels' flags
    "evonorms0_tokens": (_groups, True, False, True),
    "rms": (lambda c: {}, False, False, True),
    "frn": (lambda c: {}, False, False, False),
    "evonorms0": (_groups, False, False, False),
    "batchrenorm": (lambda c: {}, False, False, True),
    "switchablenorm": (lambda c: {}, False, False, False),
    "evonormb0": (lambda c: {}, False, False, False),
    "ghostbatchnorm": (lambda c: {"virtual_batch_size": 3}, False, False, True),
    "frozenbatchnorm": (lambda c: {}, False, True, True),
}
#: The benchmark's conv shapes (issue 6) and the GPU runs' large one; 2-d and 5-d odd ones.
CONV_SHAPES = [
    (32, 64, 32, 32),
    (8, 256, 14, 14),
    (128, 64, 8, 8),
    (4, 32, 64, 64),
    (256, 64, 64, 64),
    (3, 40, 7, 9, 11),
    (300, 40),
]
#: Token shapes ``(rows, channels)``: the benchmark's, the GPU runs' large one, odd widths.
TOKEN_SHAPES = [(4096, 1024), (2048, 4096), (65536, 1024), (1000, 1032), (300, 36)]
QUICK_CONV = [(32, 64, 32, 32), (8, 256, 14, 14), (3, 40, 7, 9, 11), (300, 40)]
QUICK_TOKENS = [(2048, 4096), (300, 36)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _Target:
    """A Triton driver that names a GPU and launches nothing (compilation needs only the
    target)."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def is_active(self) -> bool:
        return True

    def get_current_target(self) -> Any:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


#: The kernels' tile sizes (constexprs): what :attr:`Record.by_flags` leaves out of a launch's key.
TILE_CONSTEXPRS = frozenset({"BLOCK", "CB", "DB", "GB", "KB", "NB", "RB", "SB"})


class Record:
    """The variants compiled (by hash) and the failures, with where they came from;
    ``sass``: each variant's largest loop counted too (:func:`sass_loop`).

    ``by_flags`` (set per run): compile a launch only if no earlier one of the same kernel
    had its flags (:func:`flag_key`: the constexprs other than tile sizes, the warps); the
    others are counted in ``skipped``. For ``--quick``'s interpreter check's calls, whose
    small tiles (many chunks per set on small tensors) are not the ones a GPU's plans pick:
    what they add to the modules' runs is the flag combinations those do not reach (no
    affine, no running statistics), compiled once each, after the flags that the same
    process's runs of the modules compiled (``--quick --jobs 2`` on 2 cores: 629 variants in
    58 s, against 1203 in 105 s with every one; the full run compiles every one)."""

    def __init__(self, sass: bool = False) -> None:
        self.variants: dict[str, dict[str, Any]] = {}
        self.failures: list[dict[str, Any]] = []
        self.case = ""
        self.sass = sass
        self.by_flags = False
        self.flag_keys: set[tuple[Any, ...]] = set()
        self.skipped = 0

    def compiled(self, name: str, kernel: Any, log: str, seconds: float) -> None:
        meta = kernel.metadata
        self.variants[meta.hash] = {
            "kernel": name,
            "hash": meta.hash,
            "arch": meta.target.arch,
            "num_warps": meta.num_warps,
            "constexprs": _constexprs(kernel.src),
            "case": self.case,
            "compile_s": round(seconds, 3),
            "shared": meta.shared,  # bytes, Triton's (dynamic) shared memory
            **_resources(log),
            **_loads(kernel.asm["ptx"]),
            **(sass_loop(kernel.asm["cubin"]) if self.sass else {}),
        }

    def failed(self, name: str, kwargs: dict[str, Any], err: BaseException) -> None:
        text = f"{type(err).__name__}: {err}"
        flags = {k: v for k, v in kwargs.items() if isinstance(v, (bool, int))}
        self.failures.append({"kernel": name, "case": self.case, "flags": flags, "error": text})


def flag_key(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """A launch's kernel, its keyword constexprs and options other than the tile sizes
    (:data:`TILE_CONSTEXPRS`: flags, warps) and its positional flags. (Sizes, and Triton's
    specializations of integers equal to 1, which fold constants, are left out.)"""
    options = tuple(
        sorted(
            (k, v)
            for k, v in kwargs.items()
            if k not in TILE_CONSTEXPRS and isinstance(v, (bool, int, str))
        )
    )
    return name, options, tuple((i, a) for i, a in enumerate(args) if isinstance(a, bool))


def _constexprs(src: Any) -> dict[str, Any]:
    """The variant's constexpr values by parameter name (``None`` ones left out)."""
    names = src.fn.arg_names
    out = {}
    for path, value in src.constants.items():
        index = path[0] if isinstance(path, tuple) else path
        name = names[index] if isinstance(index, int) else str(index)
        if value is not None and not callable(value):
            out[name] = value
    return out


_USED = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _resources(log: str) -> dict[str, int]:
    """Registers per thread, stack frame and spill bytes per thread: from ``ptxas -v``'s log
    (the ``ptxas info`` lines)."""
    used, frame = _USED.search(log), _FRAME.search(log)
    if used is None or frame is None:
        raise RuntimeError(f"no ptxas resource usage in its log:\n{log}")
    stack, stores, loads = map(int, frame.groups())
    return {
        "registers": int(used.group(1)),
        "stack": stack,
        "spill_stores": stores,
        "spill_loads": loads,
    }


_LOAD = re.compile(r"\bld\.global(?:\.[a-z0-9]+)*")


def _loads(ptx: str) -> dict[str, int]:
    """The PTX's global loads: ``vector_loads`` (``ld.global.v2``/``.v4``: 8 or 16 bytes a
    thread) and ``scalar_loads`` (one element each)."""
    found = _LOAD.findall(ptx)
    vector = sum(1 for op in found if ".v2" in op or ".v4" in op)
    return {"vector_loads": vector, "scalar_loads": len(found) - vector}


_ADDRESS = re.compile(r"/\*([0-9a-f]{4,})\*/")
_BRANCH = re.compile(r"\bBRA\b.*?(\.L_x_\d+)")
#: The opcodes counted apart in a loop (the SASS mnemonic before its first dot).
_LOOP_OPS = {"SHFL": "shuffles", "BAR": "barriers", "LDS": "shared", "STS": "shared",
             "MUFU": "special"}  # fmt: skip


def sass_loop(cubin: bytes) -> dict[str, int]:
    """The largest loop of a compiled kernel's machine code: ``loop_instructions`` (from a
    backward branch's target to the branch, ``nvdisasm`` of ``cubin``) and, among them,
    ``loop_shuffles``, ``loop_barriers``, ``loop_shared`` (shared-memory loads and stores)
    and ``loop_special`` (``MUFU``: reciprocals, exponentials); ``{}`` where the kernel has no
    loop or ``nvdisasm`` is missing."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    if not tool.exists():
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "-c", f.name], capture_output=True, text=True).stdout
    lines = text.splitlines()
    where: dict[str, int] = {}  # label -> the address of the instruction after it
    code: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in lines:
        label = line.strip()
        if label.startswith(".L_x_") and label.endswith(":"):
            pending.append(label[:-1])
            continue
        found = _ADDRESS.search(line)
        if found is None:
            continue
        address = int(found.group(1), 16)
        for name in pending:
            where[name] = address
        pending = []
        code.append((address, line[found.end() :].strip()))
    best: dict[str, int] = {}
    for address, instruction in code:
        branch = _BRANCH.search(instruction)
        if branch is None or where.get(branch.group(1), address + 1) > address:
            continue  # not a backward branch
        start = where[branch.group(1)]
        body = [i for a, i in code if start <= a <= address]
        if len(body) <= max(1, best.get("loop_instructions", 0)):
            continue  # (a smaller loop, or the branch to itself that ends every kernel)
        counts = dict.fromkeys(_LOOP_OPS.values(), 0)
        for i in body:
            op = re.sub(r"^@!?U?P[T\d]+\s+", "", i).split(" ")[0].split(".")[0]
            if op in _LOOP_OPS:
                counts[_LOOP_OPS[op]] += 1
        best = {"loop_instructions": len(body), **{f"loop_{k}": v for k, v in counts.items()}}
    return best


def _forget_targets() -> None:
    """Drop the kernels' compiled variants and the target their binders hold (the next launch
    asks the driver again), and normzoo's direct launchers (theirs too)."""
    from triton.runtime.jit import JITFunction

    kernels = _triton._kernels()
    for obj in vars(kernels).values():
        if isinstance(obj, JITFunction):
            obj.device_caches.clear()
    _triton._launchers.clear()


@contextlib.contextmanager
def compile_only(arch: int, record: Record) -> Iterator[None]:
    """Within: each Triton launch compiles its variant for ``sm_<arch>`` and runs nothing;
    failures are recorded and raised."""
    from triton import knobs
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    launch, active = JITFunction.run, driver._active  # (no default driver without a GPU)

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        key = flag_key(self.__name__, args, kwargs)
        if record.by_flags and key in record.flag_keys:
            record.skipped += 1
            return None  # (normzoo's launches ignore what a launch returns)
        record.flag_keys.add(key)
        start = time.perf_counter()
        log = io.StringIO()  # (Triton prints ptxas's log where it compiles)
        try:
            with contextlib.redirect_stdout(log):
                kernel = launch(self, *args, grid=grid, warmup=True, **kwargs)
        except Exception as err:
            record.failed(self.__name__, kwargs, err)
            raise
        if kernel.metadata.hash not in record.variants:
            record.compiled(self.__name__, kernel, log.getvalue(), time.perf_counter() - start)
        return kernel

    # an empty cache: every variant compiles here, so ptxas's log (registers, spills) is seen
    with tempfile.TemporaryDirectory() as cache, knobs.cache.scope(), knobs.nvidia.scope():
        knobs.cache.dir = cache
        knobs.nvidia.dump_ptxas_log = True
        driver.set_active(_Target(arch))
        JITFunction.run = run
        _forget_targets()
        try:
            yield
        finally:
            JITFunction.run = launch
            driver._active = active
            _forget_targets()


@contextlib.contextmanager
def stand_in_launches(arch: int = 90, record: bool = True) -> Iterator[list[tuple[Any, ...]]]:
    """Within: each Triton launch compiles its variant for ``sm_<arch>`` (on first use) and
    goes all the way to the driver's launcher, which is replaced by one that records its
    arguments (the grid, stream, function handle, metadata, hooks and the kernel's arguments)
    and runs nothing; normzoo's direct launches (``_triton._Launcher``) take CPU tensors too.
    What Triton's launch path and the direct one hand the driver can be compared, and their
    host time measured, without a GPU. Yields the list of recorded launches (``record``
    False: the launcher does nothing, for timing)."""
    from triton import knobs
    from triton.compiler.compiler import CompiledKernel
    from triton.runtime.driver import driver

    calls: list[tuple[Any, ...]] = []
    active, init, on_cpu = driver._active, CompiledKernel._init_handles, _triton._DIRECT_ON_CPU

    def init_handles(self: Any) -> None:  # what a GPU's load_binary would set
        if self.module is None:
            self.module, self.function = f"module {self.hash}", hash(self.hash)
            self._run = (lambda *args: calls.append(args)) if record else (lambda *args: None)

    with tempfile.TemporaryDirectory() as cache, knobs.cache.scope():
        knobs.cache.dir = cache
        driver.set_active(_Target(arch))
        CompiledKernel._init_handles = init_handles
        _triton._DIRECT_ON_CPU = True
        _forget_targets()
        try:
            yield calls
        finally:
            CompiledKernel._init_handles = init
            _triton._DIRECT_ON_CPU = on_cpu
            driver._active = active
            _forget_targets()


@contextlib.contextmanager
def triton_paths(sms: int) -> Iterator[None]:
    """Every input the kernels support takes them (CPU tensors as a GPU's), no fallback to
    torch's kernels on a failure, plans for a GPU of ``sms`` multiprocessors."""
    saved = {n: getattr(_triton, n) for n in ("serves", "_guarded", "_target_programs")}
    env = {k: os.environ.get(k) for k in ("NORMZOO_TRITON", "NORMZOO_NATIVE")}

    def serves(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
        layout = x.is_contiguous() or channels_last_format(x) is not None
        return x.dtype in _triton.DTYPES and x.dim() >= 2 and layout

    _triton.serves = serves
    _triton._guarded = lambda key, run, fallback: run()
    _triton._target_programs = lambda x: _triton.PROGRAMS_PER_SM * sms
    _triton._cached_plan.cache_clear()
    os.environ["NORMZOO_TRITON"] = "all"
    os.environ["NORMZOO_NATIVE"] = "0"  # (the CPU's own kernels come first)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(_triton, name, value)
        _triton._cached_plan.cache_clear()
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cases(quick: bool) -> Iterator[tuple[str, tuple[int, ...], str, bool, bool]]:
    """``(module, shape, dtype, channels_last, relu)`` of every run (``quick``: fewer shapes,
    the half types on the first only)."""
    conv, tokens = (QUICK_CONV, QUICK_TOKENS) if quick else (CONV_SHAPES, TOKEN_SHAPES)
    for name, (_, token, fuses, rows) in MODULES.items():
        shapes = tokens if token else conv
        for shape in shapes:
            if len(shape) == 2 and not (token or rows):
                continue
            half = ["bfloat16"] if quick else ["bfloat16", "float16"]
            for dtype in ["float32", *half] if shape == shapes[0] else ["float32"]:
                for cl in (False, True) if len(shape) in (4, 5) else (False,):
                    for relu in (False, True) if fuses else (False,):
                        yield name, shape, dtype, cl, relu


def interpreter_cases(shard: tuple[int, int] = (0, 1)) -> None:
    """The interpreter check's calls (``tests/triton_interpreter_check.py``: no-affine, small
    tiles, several chunks per set, the zoo's coefficient kernels without updates; ``shard``
    ``(I, N)``: its every N-th case from the I-th), its comparisons (of garbage here)
    silenced."""
    sys.path.insert(0, str(ROOT / "tests"))
    import triton_interpreter_check

    target, tiles = _triton._target_programs, (_triton.TILE, _triton.TILE_ROWS_BYTES)
    _triton._target_programs = lambda x: 64  # as its main() does
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            triton_interpreter_check.check(shard)
    finally:
        _triton._target_programs = target
        _triton.TILE, _triton.TILE_ROWS_BYTES = tiles


def run_case(name: str, shape: tuple[int, ...], dtype: str, cl: bool, relu: bool) -> None:
    """Two training steps (the second with running statistics in place) and an eval step of
    the module, forward and backward."""
    options, token, _, _ = MODULES[name]
    c = shape[-1] if token else shape[1]
    m = normzoo.create(name.removesuffix("_tokens"), c, **options(c))
    if relu:
        m.fuse_activation("relu")
    x = torch.empty(shape, dtype=DTYPES[dtype])
    if cl:
        x = x.to(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
    x.requires_grad_()
    for step in range(3):
        if step == 2:
            m.eval()
        y = m(x)
        y.backward(torch.empty_like(y))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, action="append", help="compute capability x10 (90)")
    p.add_argument("--sms", type=int, default=132, help="multiprocessors the plans fill")
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer shapes and dtypes; the interpreter check's calls once per flag set",
    )
    p.add_argument("--only", nargs="*", help="modules to run (default: all)")
    p.add_argument(
        "--no-interpreter-cases", action="store_true", help="skip the interpreter check's calls"
    )
    p.add_argument("--jobs", type=int, default=1, help="processes that compile (default 1)")
    p.add_argument("--part", type=int, help=argparse.SUPPRESS)  # one process of --jobs
    p.add_argument("--json", help="write every variant and failure here")
    p.add_argument("--no-spills", action="store_true", help="exit 1 on spills too")
    p.add_argument(
        "--sass", action="store_true", help="count each variant's largest loop (nvdisasm)"
    )
    args = p.parse_args(argv)
    if _triton._kernels() is None:
        sys.exit("triton is not installed")
    if importlib.util.find_spec("triton.knobs") is None:  # (ptxas's log and the cache dir)
        sys.exit("the compile check needs triton 3.4 or newer (triton.knobs)")
    start = time.perf_counter()
    todo = [c for c in cases(args.quick) if not args.only or c[0] in args.only]
    if args.jobs > 1 and args.part is None:
        record = _in_processes(sys.argv[1:] if argv is None else argv, args.jobs)
    else:
        record = Record(sass=args.sass)
        runs = [(" ".join(map(str, c)), lambda c=c: run_case(*c), False) for c in todo]
        if args.part is not None:
            runs = [run for i, run in enumerate(runs) if i % args.jobs == args.part]
        if not args.no_interpreter_cases:
            # last, so that the flags that the modules' runs compiled are not compiled again
            shard = (0, 1) if args.part is None else (args.part, args.jobs)
            label = "the interpreter check's calls"
            label += f" {shard[0]}/{shard[1]}" if shard[1] > 1 else ""
            runs.append((label, lambda: interpreter_cases(shard), args.quick))
        with triton_paths(args.sms):
            for arch in args.arch or [90]:
                record.flag_keys.clear()
                with compile_only(arch, record):
                    for label, call, by_flags in runs:
                        record.case, record.by_flags = f"sm_{arch} {label}", by_flags
                        try:
                            call()
                        except Exception as err:  # recorded where a kernel failed; others too
                            if not record.failures or record.failures[-1]["case"] != record.case:
                                record.failures.append({"case": record.case, "error": repr(err)})
    if args.part is None:
        report(record, time.perf_counter() - start, len(todo))
    if args.json:
        found = {
            "variants": list(record.variants.values()),
            "failures": record.failures,
            "skipped": record.skipped,
        }
        Path(args.json).write_text(json.dumps(found, indent=1))
    spilled = [v for v in record.variants.values() if v["spill_stores"]]
    return 1 if record.failures or (args.no_spills and spilled) else 0


def _in_processes(argv: list[str], jobs: int) -> Record:
    """Run this script as ``jobs`` processes, each on its share of the runs (``--part``), and
    merge what they found (a variant compiled by several processes counts once)."""
    record = Record()
    with tempfile.TemporaryDirectory() as out:
        procs = []
        for part in range(jobs):
            found = Path(out) / f"part{part}.json"
            cmd = [sys.executable, __file__, *argv, "--part", str(part), "--json", str(found)]
            procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL), found, part))
        for proc, found, part in procs:
            proc.wait()
            if not found.exists():
                error = f"process {part} of {jobs} ended ({proc.returncode}) with no results"
                record.failures.append({"case": f"part {part}", "error": error})
                continue
            data = json.loads(found.read_text())
            record.variants.update((v["hash"], v) for v in data["variants"])
            record.failures += data["failures"]
            record.skipped += data["skipped"]
    return record


def report(record: Record, seconds: float, runs: int) -> None:
    """Per kernel: variants, the most registers, spill-store and shared bytes; failures."""
    by_kernel: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for v in record.variants.values():
        by_kernel[v["kernel"]].append(v)
    print(f"{'kernel':<22} {'variants':>8} {'max regs':>8} {'max spills':>10} {'max shared':>10}")
    for name, vs in sorted(by_kernel.items()):
        most = {k: max(v[k] for v in vs) for k in ("registers", "spill_stores", "shared")}
        regs, spills, shared = most["registers"], most["spill_stores"], most["shared"]
        print(f"{name:<22} {len(vs):>8} {regs:>8} {spills:>10} {shared:>10}")
    for v in record.variants.values():
        if v["spill_stores"]:
            print(f"spills: {v['kernel']} warps {v['num_warps']} {v['constexprs']}: "
                  f"{v['spill_stores']} B stored, {v['spill_loads']} B loaded, "
                  f"{v['registers']} registers ({v['case']})")  # fmt: skip
    looped = [v for v in record.variants.values() if v.get("loop_instructions")]
    if looped:
        print(f"{'largest loop':<22} {'instr':>6} {'shuffles':>8} {'barriers':>8} "
              f"{'shared':>6} {'special':>7}  (the variant with the most, per kernel)")  # fmt: skip
        for name, vs in sorted(by_kernel.items()):
            v = max(vs, key=lambda v: v.get("loop_instructions", 0))
            if v.get("loop_instructions"):
                print(f"{name:<22} {v['loop_instructions']:>6} {v['loop_shuffles']:>8} "
                      f"{v['loop_barriers']:>8} {v['loop_shared']:>6} {v['loop_special']:>7}"
                      f"  {v['constexprs']}")  # fmt: skip
    for f in record.failures:
        print(f"FAILED {f.get('kernel', '')} {f['case']}: {f['error'][:2000]}")
    print(f"runs {runs} variants {len(record.variants)} failures {len(record.failures)} "
          f"skipped {record.skipped} ({seconds:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
