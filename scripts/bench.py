"""Benchmark every registered norm against torch.nn: forward, backward, fwd+bwd; memory; training.

    python scripts/bench.py                                  # everything, CPU (and CUDA if any)
    python scripts/bench.py --norms bn gn --shapes 32,64,32,32 --dtypes float32 --formats contiguous
    python scripts/bench.py --json docs/data/bench_cpu.json  # the docs' data

For each norm, shape, dtype, memory format and device, every contender runs once per round, in
turn (interleaved in one process, so drift and other processes' load hit all alike), after
warm-up; the rows report per-contender medians. Contenders:

* ``normzoo``: ``normzoo.create(name, C)`` with its default (fast) path, in training mode;
* ``torch``: the ``torch.nn`` layer that computes the same function, where one exists;
* ``bn``: ``nn.BatchNorm2d`` (``BatchNorm1d`` for tokens) on the same tensor, the yardstick;
* ``copy``: ``out.copy_(x)``, the memory ceiling. It moves 2 tensor-sizes; the minimal traffic
  of a norm is 2 tensor-sizes forward (read x, write y), 3 backward (read x and dy, write dx),
  5 for both, so ``copy_bound = copy_ms * sizes / 2`` and ``copy_fraction = copy_bound / ms``
  (1.0 = at memory speed). On CUDA the same fraction is the bandwidth fraction vs ``copy_``.

CUDA timing (``--cuda-timing``): ``latency`` (default) synchronizes before each call and
times it with CUDA events, so the host's work before the first kernel (Python, launches)
counts, as in a program that waits for each result; ``gpu`` puts an L2-evicting memset and a
~3 ms GPU sleep ahead of each call, so the host queues the call's launches while the GPU is
busy and the events time the GPU's work, as in training, where the host runs ahead (the
method of ``triton.testing.do_bench``): the bandwidth of the kernels themselves. A call whose
host work outlasts the sleep (its last launch queued after the GPU woke: the start event had
completed when the host finished) makes the GPU wait, and its GPU time counts host time: each
row's ``gpu_time_late`` gives, per timed case, how many of its calls did (said on the console
too); empty where none did.

``--train`` adds a training step of a small ConvNet built with each normzoo norm and with its
torch.nn equivalent (throughput, interleaved) and the memory of that step: on CUDA the peak of
``torch.cuda.max_memory_allocated``; on CPU, which has no allocator statistics, the bytes of
the distinct tensors autograd saves for backward (the activation memory that sets the peak).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import normzoo

# The harness's core (contenders, interleaved timing, one row) is normzoo.bench, which
# ``normzoo bench`` runs too; this script runs it over the docs' shape set and adds the
# training steps, the first-call times and the JSON.
from normzoo.bench import (  # noqa: F401  (re-exported for the other scripts and the tests)
    CONV_SHAPES,
    DTYPES,
    FORMATS,
    MODES,
    SIZES_MOVED,
    TOKEN_SHAPES,
    TORCH_EQUIVALENT,
    Case,
    EvalBatchNorm2d,
    Timer,
    _late,
    bench_row,
    format_row,
    make_norm,
    norm_cases,
    norm_kwargs,
    run_rounds,
    time_interleaved,
    torch_equivalent,
    warm_and_run,
)

#: ``--cuda-timing``: "latency" or "gpu" (see normzoo.bench).
CUDA_TIMING = "latency"


# -- compile time ----------------------------------------------------------------------------
def first_call_times(names: list[str], device: torch.device) -> dict[str, float]:
    """Seconds of the first fwd+bwd of each norm on a fresh module (compiles included, and
    loading the native kernels; building them too on a cold cache, see ``native_build_s``).

    Kernels compiled earlier in this process are reused, so run this first."""
    out = {}
    for name in names:
        m = make_norm(name, 64, False)
        if m is None:
            continue
        x = torch.randn(32, 64, 32, 32, device=device, requires_grad=True)
        t0 = time.perf_counter()
        m.to(device)(x).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[normzoo.info(name).name] = time.perf_counter() - t0
    return out


# -- training step ---------------------------------------------------------------------------
class ConvNet(nn.Module):
    """conv-norm-ReLU x 4 (32x32 -> 8x8), pooling, linear: the shapes of the table."""

    def __init__(self, norm: Callable[[int], nn.Module], width: int = 64, classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate((width, width, 2 * width, 2 * width)):
            stride = 2 if i in (2, 3) else 1
            layers += [nn.Conv2d(c_in, c, 3, stride, 1, bias=False), norm(c), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def default_model(
    norm: str | Callable[[int], nn.Module], fuse_activation: bool = False
) -> nn.Module:
    """The training system's default model (``normzoo.models.ConvNet2d``, conf/model/
    convnet2d.yaml) on 3x32x32 inputs; the local ConvNet where normzoo.models is missing.
    ``fuse_activation``: ``True``, its norms apply their ReLU themselves (what the default
    ``model.fuse_activation=auto`` does for the norms whose kernels fuse it), ``False`` each
    norm followed by an ``nn.ReLU`` (``model.fuse_activation=false``, the "plain" rows)."""
    try:
        from normzoo.models import ConvNet2d
    except ImportError:
        if fuse_activation:
            raise
        return ConvNet(norm if callable(norm) else lambda c: normzoo.create(norm, c))
    return ConvNet2d(
        input_shape=(3, 32, 32), num_classes=10, norm=norm, fuse_activation=fuse_activation
    )


def fuses_activation(name: str) -> bool:
    """Whether norm ``name``'s kernels fuse a ReLU (``Norm.fuses_activation``)."""
    return bool(getattr(normzoo.get(name), "fuses_activation", False))


def _torch_factory(name: str) -> Callable[[int], nn.Module] | None:
    if normzoo.info(name).name not in TORCH_EQUIVALENT:
        return None

    def build(c: int) -> nn.Module:
        ref = torch_equivalent(name, normzoo.create(name, c), c, False)
        if ref is None:
            raise LookupError(name)
        return ref

    try:
        build(8)
    except LookupError:
        return None
    return build


def saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return sum(seen.values())


def _round_ratios(num: list[float], den: list[float]) -> list[float]:
    """``num / den`` round by round."""
    return [a / b for a, b in zip(num, den, strict=True)]


def _quartiles(values: list[float]) -> list[float]:
    """The first and third quartiles of ``values``."""
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return [q[0], q[2]]


def train_row(
    name: str,
    device: torch.device,
    batch: int,
    repeats: int,
    warmup: int,
    fuse_activation: bool = False,
) -> dict[str, Any] | None:
    """One training-step row: the default model with normzoo's norm ``name`` (with
    ``fuse_activation``, each applying its ReLU itself) against the same model with the
    torch.nn equivalent and ``nn.ReLU``; ``None`` where torch.nn has no equivalent."""
    factory = _torch_factory(name)
    if factory is None:
        return None
    torch.manual_seed(0)
    # "torch_again": a second torch.nn model, timed like the others. torch against torch is an
    # A/A test: how far the ratio strays from 1 when nothing differs but the instances (their
    # weights, their memory) and the order in each round, the resolution of this measurement.
    models = {
        "normzoo": default_model(name, fuse_activation),
        "torch": default_model(factory),
        "torch_again": default_model(factory),
    }
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    cases: dict[str, Case] = {}
    for who, model in models.items():
        model.to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        cases[who] = (step, None)
    timer = Timer(device, CUDA_TIMING)
    times = warm_and_run(cases, timer, repeats, warmup)
    late = _late(timer, "training step", repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    # Each round runs every model's step back to back: the ratio within a round cancels what
    # drifts between rounds (the machine's load), so its median is a second, steadier estimate.
    paired = _round_ratios(times["torch"], times["normzoo"])
    aa = _round_ratios(times["torch"], times["torch_again"])
    memory = {}
    for who, model in models.items():
        if who == "torch_again":
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            cases[who][0]()
            torch.cuda.synchronize()
            memory[who] = torch.cuda.max_memory_allocated() - base
        else:
            memory[who] = saved_bytes(model, x, y)
    return {
        "norm": normzoo.info(name).name,
        "fused_activation": fuse_activation,
        "device": device.type,
        "batch": batch,
        "memory_kind": "cuda_peak" if device.type == "cuda" else "saved_for_backward",
        "torch_mode": "eval"
        if any(isinstance(m, EvalBatchNorm2d) for m in models["torch"].modules())
        else "train",
        "normzoo_ms": med["normzoo"] * 1e3,
        "torch_ms": med["torch"] * 1e3,
        "throughput_ratio": med["torch"] / med["normzoo"],
        "throughput_paired": statistics.median(paired),
        "throughput_paired_iqr": _quartiles(paired),
        "throughput_min": min(times["torch"]) / min(times["normzoo"]),
        "aa_ratio": med["torch"] / med["torch_again"],
        "aa_paired": statistics.median(aa),
        "rounds": repeats,
        "normzoo_mem_mb": memory["normzoo"] / 2**20,
        "torch_mem_mb": memory["torch"] / 2**20,
        "mem_ratio": memory["normzoo"] / memory["torch"],
        "gpu_time_late": late,
    }


# -- driver ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "normzoo_compile": os.environ.get("NORMZOO_COMPILE", "1"),
        "normzoo_native": os.environ.get("NORMZOO_NATIVE", "1"),
        "normzoo_triton": os.environ.get("NORMZOO_TRITON", "1"),
        # the allocator's settings change CPU timings (page faults of fresh outputs)
        "allocator_env": {
            k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "THP_", "LD_PRELOAD"))
        },
    }
    return meta


def load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--norms", nargs="+", default=None, help="default: every registered norm")
    p.add_argument("--shapes", nargs="+", default=None, help="e.g. 32,64,32,32 4096,1024")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda if any")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument(
        "--cuda-timing",
        choices=("latency", "gpu"),
        default="latency",
        help="latency: each call from an idle GPU, host work included; gpu: the GPU's time",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--impl",
        choices=["fast", "reference"],
        default=None,
        help="build every norm that takes one with this impl (default: the norm's default)",
    )
    p.add_argument(
        "--recheck",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure a row again when normzoo is slower than torch.nn (the first ratio is kept "
        "in the row as first_fwdbwd_ratio_torch)",
    )
    p.add_argument(
        "--activation",
        choices=["relu"],
        help="time each norm with this activation after it: normzoo's applies it itself "
        "(fuse_activation), torch.nn's and BatchNorm2d are followed by nn.ReLU",
    )
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--fused-train",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the training step with the ReLU fused into each norm that fuses it "
        "(BatchNorm, GroupNorm, InstanceNorm, LayerNorm, FrozenBN: the default model, "
        "fuse_activation='auto'); the plain rows build it with fuse_activation=False",
    )
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument(
        "--first-call",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time each norm's first fwd+bwd (compiles included) before the rows; "
        "--no-first-call skips it (a run that another has timed them for)",
    )
    p.add_argument(
        "--rows",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--no-rows: only the training step",
    )
    p.add_argument("--json", help="write meta, rows, compile times and training rows here")
    p.add_argument("--title", help="a title for the docs page's section of this run")
    p.add_argument(
        "--triton-knobs",
        nargs="*",
        default=[],
        metavar="NAME=INT",
        help="set these plan knobs of the Triton kernels (normzoo.norms._triton: "
        + ", ".join(TRITON_KNOBS)
        + ") for the run, e.g. what scripts/gpu_triton_ab.py --pick chose",
    )
    return p.parse_args(argv)


#: The Triton kernels' plan knobs that ``--triton-knobs`` may set.
TRITON_KNOBS = (
    "PROGRAMS_PER_SM",
    "TILE",
    "TILE_ROWS_BYTES",
    "TWO_PHASE_LANE_ACC",
    "TWO_PHASE_LANE_ACC_ROWS",
    "TOKEN_MIN_ROWS",
    "TOKEN_ACC_ROWS",
)


def set_triton_knobs(specs: list[str]) -> dict[str, int]:
    """Set ``NAME=INT`` knobs of :mod:`normzoo.norms._triton`; returns them (for the meta)."""
    from normzoo.norms import _triton

    knobs = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or name not in TRITON_KNOBS or not value.lstrip("-").isdigit():
            raise SystemExit(f"--triton-knobs takes NAME=INT with NAME in {TRITON_KNOBS}: {spec!r}")
        knobs[name] = int(value)
    for name, value in knobs.items():
        setattr(_triton, name, type(getattr(_triton, name))(value))
    return knobs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    global CUDA_TIMING
    CUDA_TIMING = args.cuda_timing
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.norms or normzoo.available()
    shapes = (
        [tuple(int(v) for v in s.split(",")) for s in args.shapes]
        if args.shapes
        else CONV_SHAPES + TOKEN_SHAPES
    )
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    meta = machine()
    meta["title"] = args.title
    meta["cuda_timing"] = args.cuda_timing
    if args.triton_knobs:
        meta["triton_knobs"] = set_triton_knobs(args.triton_knobs)
    meta["load_start"] = load()
    print(json.dumps(meta), flush=True)
    result: dict[str, Any] = {
        "meta": meta,
        "rows": [],
        "compile_s": {},
        "train": [],
        "errors": [],
    }
    for dev in map(torch.device, devices):
        if args.first_call:
            result["compile_s"][dev.type] = first_call_times(names, dev)
            print(f"first fwd+bwd (compile included), {dev.type}: {result['compile_s'][dev.type]}")
        for dtype_name in args.dtypes if args.rows else []:
            for fmt in args.formats:
                for shape in shapes:
                    if fmt == "channels_last" and len(shape) != 4:
                        continue
                    for name in names:
                        spec = (name, shape, DTYPES[dtype_name], fmt, dev)
                        timing = (args.repeats, args.warmup)
                        try:
                            row = bench_row(*spec, *timing, args.impl, args.activation,
                                            CUDA_TIMING)  # fmt: skip
                        except Exception as err:  # a bug: recorded, and the run goes on
                            error = {
                                "norm": name,
                                "shape": list(shape),
                                "dtype": dtype_name,
                                "format": fmt,
                                "device": dev.type,
                                "error": f"{type(err).__name__}: {err}",
                            }
                            result["errors"].append(error)
                            print(f"ERROR {error}", flush=True)
                            continue
                        ratio = row and row["fwdbwd_ratio_torch"]
                        if ratio and ratio > 1.0 and args.recheck:  # suspicious: measure again
                            print("  recheck: " + format_row(row), flush=True)
                            again = bench_row(*spec, *timing, args.impl, args.activation,
                                              CUDA_TIMING)  # fmt: skip
                            if again is not None:
                                again["first_fwdbwd_ratio_torch"] = ratio
                                row = again
                        if row is not None:
                            row["load"] = load()
                            result["rows"].append(row)
                            save(result, args.json)
                            print(format_row(row), flush=True)
        if args.train:
            variants = [(n, False) for n in names]
            if args.fused_train:  # and each norm whose kernels fuse the ReLU, fused
                variants += [(n, True) for n in names if fuses_activation(n)]
            for name, fuse in variants:
                try:
                    row = train_row(name, dev, args.train_batch, args.repeats, args.warmup, fuse)
                except Exception as err:  # a bug: recorded, and the run goes on
                    error = {"norm": name, "train": True, "device": dev.type, "fused": fuse}
                    error["error"] = f"{type(err).__name__}: {err}"
                    result["errors"].append(error)
                    print(f"ERROR {error}", flush=True)
                    continue
                if row is not None:
                    result["train"].append(row)
                    save(result, args.json)
                    label = row["norm"] + (" +ReLU" if fuse else "")
                    print(
                        f"train {label:<20} {dev.type}: normzoo {row['normzoo_ms']:.1f} ms "
                        f"torch {row['torch_ms']:.1f} ms  throughput x{row['throughput_ratio']:.2f}"
                        f" (paired x{row['throughput_paired']:.2f}, fastest rounds"
                        f" x{row['throughput_min']:.2f}; torch/torch x{row['aa_ratio']:.2f},"
                        f" paired x{row['aa_paired']:.2f})"
                        f"  memory {row['normzoo_mem_mb']:.1f} / {row['torch_mem_mb']:.1f} MB",
                        flush=True,
                    )
    meta["load_end"] = load()
    from normzoo import _native
    from normzoo.norms import _fused

    result["kernel_compile_s"] = _fused.compile_times()
    # building (cold cache) and loading the native libraries: their first-call cost
    result["native_build_s"] = _native.build_times()
    save(result, args.json)
    return result


def save(result: dict[str, Any], path: str | None) -> None:
    """Write ``result`` to ``path`` (if any) through a temporary file: called after every
    row too, so a run cut short (a time limit) keeps what it measured."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
