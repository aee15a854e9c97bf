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
import collections
import datetime
import inspect
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import normzoo

CONV_SHAPES = [(32, 64, 32, 32), (8, 256, 14, 14), (128, 64, 8, 8), (4, 32, 64, 64)]
TOKEN_SHAPES = [(4096, 1024), (2048, 4096)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FORMATS = ("contiguous", "channels_last")
MODES = ("fwd", "bwd", "fwdbwd")
#: Minimal tensor-sizes moved per mode (see the module docstring).
SIZES_MOVED = {"fwd": 2, "bwd": 3, "fwdbwd": 5}

# -- the torch.nn equivalent of each norm ---------------------------------------------------
# A builder gets (our module, C, token input?) and returns the torch.nn layer computing the
# same function, or None. Norms not listed here are compared with nn.BatchNorm2d only.
TorchBuilder = Callable[[nn.Module, int, bool], nn.Module | None]


def _groups(ours: nn.Module) -> int:
    return int(getattr(ours, "num_groups", 1))


class EvalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that stays in eval mode (``train()`` included): FrozenBatchNorm's
    torch equivalent, normalizing with the running statistics while gradients flow."""

    def train(self, mode: bool = True) -> EvalBatchNorm2d:
        return super().train(False)


TORCH_EQUIVALENT: dict[str, TorchBuilder] = {
    "batchnorm": lambda ours, c, tok: nn.BatchNorm1d(c) if tok else nn.BatchNorm2d(c),
    "layernorm": lambda ours, c, tok: nn.LayerNorm(c) if tok else nn.GroupNorm(1, c),
    "instancenorm": lambda ours, c, tok: None if tok else nn.InstanceNorm2d(c, affine=True),
    "groupnorm": lambda ours, c, tok: nn.GroupNorm(_groups(ours), c),
    "rmsnorm": lambda ours, c, tok: nn.RMSNorm(c) if tok and hasattr(nn, "RMSNorm") else None,
    "frozenbatchnorm": lambda ours, c, tok: None if tok else EvalBatchNorm2d(c),
}


def _accepts(cls: type, kwarg: str) -> bool:
    try:
        return kwarg in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def norm_kwargs(name: str, token: bool, impl: str | None = None) -> dict[str, Any] | None:
    """The keyword arguments that build norm ``name`` for a conv input, or for tokens
    ``(N, C)`` its token form (``channels_last`` for the per-token norms, LayerNorm and
    RMSNorm); ``None`` when it takes no tokens. ``impl`` where the norm takes one."""
    cls = normzoo.get(name)
    kwargs: dict[str, Any] = {}
    if impl is not None and _accepts(cls, "impl"):
        kwargs["impl"] = impl
    if token:  # per-token norms (LN, RMSNorm) take (..., C); others (N, C) if they can
        if _accepts(cls, "channels_last") and "batch" not in cls.reduces_over:
            kwargs["channels_last"] = True
        elif cls.min_spatial_dims > 0:
            return None
    return kwargs


def make_norm(name: str, c: int, token: bool, impl: str | None = None) -> nn.Module | None:
    """``normzoo.create(name, c)`` for a conv input, or its token form (:func:`norm_kwargs`);
    ``None`` when the norm has no token form or cannot be built standalone."""
    kwargs = norm_kwargs(name, token, impl)
    if kwargs is None:
        return None
    try:
        return normzoo.create(name, c, **kwargs)
    except Exception:
        return None


def torch_equivalent(name: str, ours: nn.Module, c: int, token: bool) -> nn.Module | None:
    builder = TORCH_EQUIVALENT.get(normzoo.info(name).name)
    return builder(ours, c, token) if builder else None


# -- timing ----------------------------------------------------------------------------------
#: ``--cuda-timing``: "latency" or "gpu" (see the module docstring).
CUDA_TIMING = "latency"
#: Bytes of the memset that evicts the L2 before a "gpu"-timed call (the H200's L2: 60 MB).
FLUSH_BYTES = 256 << 20
#: GPU cycles of the sleep ahead of a "gpu"-timed call (~3 ms at 2 GHz): time for the host to
#: queue the call's launches (the Triton path's fwd+bwd took ~1.3 ms of host time on the H200
#: machine of the tenth session, more than the 1 ms first used).
SLEEP_CYCLES = 6_000_000


class Timer:
    """Wall-clock timing of one call: perf_counter on CPU, CUDA events on a GPU (with
    ``CUDA_TIMING == "gpu"``, the GPU's time, the host's launches queued ahead)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.flush = None
        if self.cuda and CUDA_TIMING == "gpu":
            self.flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device)
        #: The case being timed (set by :func:`run_rounds`), and per case the "gpu"-timed calls
        #: whose launches were not all queued when the GPU left its sleep: their GPU time
        #: includes the host's (the GPU waited for launches).
        self.key = ""
        self.late: collections.Counter[str] = collections.Counter()

    def __call__(self, fn: Callable[[], Any], setup: Callable[[], Any] | None = None) -> float:
        arg = setup() if setup else None
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            if self.flush is not None:
                self.flush.zero_()
                torch.cuda._sleep(SLEEP_CYCLES)
            start.record()
            fn() if arg is None else fn(arg)
            if self.flush is not None and start.query():  # the sleep ended before the host did
                self.late[self.key] += 1
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn() if arg is None else fn(arg)
        return time.perf_counter() - t0


Case = tuple[Callable[..., Any], Callable[[], Any] | None]


def _late(timer: Timer, what: str, repeats: int) -> dict[str, int]:
    """Per case, how many of its ``repeats`` "gpu"-timed calls had launches queued after the
    GPU's sleep ended (their GPU time includes host time); said on the console where any."""
    late = {k: v for k, v in sorted(timer.late.items()) if v}
    if late:
        cases = ", ".join(f"{k} {v}/{repeats}" for k, v in late.items())
        print(f"gpu timing of {what}: launches still queuing after the GPU's sleep ({cases}): "
              "those GPU times include host time", flush=True)  # fmt: skip
    return late


def run_rounds(
    cases: dict[str, Case], timer: Timer, repeats: int, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds of every case in each round, the cases in a fresh random order each round
    (seeded: the same orders every run). A case's time depends on what ran just before it
    (the caches it left, the memory it freed for this case's outputs to reuse or fault in
    again), so no case may keep the same predecessor: rotating one fixed order, as this harness
    did before the ninth session, keeps every neighbour but one in place."""
    keys = list(cases)
    order = random.Random(seed)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(repeats):
        order.shuffle(keys)
        for key in keys:
            fn, setup = cases[key]
            timer.key = key
            times[key].append(timer(fn, setup))
    return times


def warm_and_run(
    cases: dict[str, Case], timer: Timer, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """``warmup`` untimed calls of each case (compiles and caches outside the timed rounds),
    then :func:`run_rounds`."""
    for fn, setup in cases.values():
        for _ in range(warmup):
            arg = setup() if setup else None
            fn() if arg is None else fn(arg)
    return run_rounds(cases, timer, repeats)


def time_interleaved(
    cases: dict[str, Case], timer: Timer, repeats: int, warmup: int, stat: str = "median"
) -> dict[str, float]:
    """Median (or ``stat="min"``) seconds of each case; each round runs every case once."""
    times = warm_and_run(cases, timer, repeats, warmup)
    reduce = min if stat == "min" else statistics.median
    return {k: reduce(v) for k, v in times.items()}


def norm_cases(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[str, Case]:
    """fwd, bwd (forward untimed in setup) and fwd+bwd of a module in training mode."""
    module.train()

    def fwd() -> None:
        with torch.no_grad():
            module(x)

    def setup_bwd() -> torch.Tensor:
        x.grad = None
        module.zero_grad(set_to_none=True)
        return module(x)

    def fwdbwd() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).backward(g)

    bwd = lambda y: y.backward(g)
    return {"fwd": (fwd, None), "bwd": (bwd, setup_bwd), "fwdbwd": (fwdbwd, None)}


def bench_row(
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    fmt: str,
    device: torch.device,
    repeats: int,
    warmup: int,
    impl: str | None = None,
    activation: str | None = None,
) -> dict[str, Any] | None:
    """One row: norm ``name`` against its torch.nn equivalent and ``nn.BatchNorm2d`` on the
    same tensor. ``activation`` (``"relu"``): ours applies it itself (``fuse_activation``),
    the two torch.nn modules are followed by ``nn.ReLU``."""
    token = len(shape) == 2
    c = shape[-1] if token else shape[1]
    ours = make_norm(name, c, token, impl)
    if ours is None:
        return None
    ref = ref_norm = torch_equivalent(name, ours, c, token)
    bn: nn.Module = nn.BatchNorm1d(c) if token else nn.BatchNorm2d(c)
    if activation is not None:
        ours.fuse_activation(activation)
        ref = ref and nn.Sequential(ref, nn.ReLU())
        bn = nn.Sequential(bn, nn.ReLU())
    modules = {"normzoo": ours, "torch": ref, "bn": bn}
    modules = {k: m.to(device) for k, m in modules.items() if m is not None}
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, device=device).to(dtype=dtype, memory_format=memory_format)
    x.requires_grad_(True)
    g = torch.randn(shape, device=device).to(dtype=dtype, memory_format=memory_format)
    out = torch.empty_like(x)
    try:
        with torch.no_grad():
            y = ours(x)
    except Exception as err:  # e.g. a norm that needs a process group: skip, say why
        print(f"skip {name} {tuple(shape)}: {type(err).__name__}: {err}", flush=True)
        return None
    torch_params_dtype = None
    if "torch" in modules:
        try:
            with torch.no_grad():
                modules["torch"](x)
        except RuntimeError:  # torch's CUDA GN/LN refuse float32 parameters with bf16 input
            modules["torch"] = modules["torch"].to(dtype)
            torch_params_dtype = str(dtype).removeprefix("torch.")
    layout_kept = fmt != "channels_last" or y.is_contiguous(memory_format=torch.channels_last)
    cases: dict[str, Case] = {"copy": (lambda: out.copy_(x.detach()), None)}
    for who, module in modules.items():
        for mode, case in norm_cases(module, x, g).items():
            cases[f"{who}_{mode}"] = case
    timer = Timer(device)
    times = warm_and_run(cases, timer, repeats, warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    row: dict[str, Any] = {
        "norm": normzoo.info(name).name,
        "shape": list(shape),
        "dtype": str(dtype).removeprefix("torch."),
        "format": fmt,
        "device": device.type,
        "impl": getattr(ours, "impl", None),
        "activation": activation,
        # the torch.nn module's parameters were cast to the input's dtype (it refused mixed)
        "torch_params_dtype": torch_params_dtype,
        # the mode the torch.nn module ran in (FrozenBatchNorm's equivalent: eval)
        "torch_mode": None if ref_norm is None else ("train" if ref_norm.training else "eval"),
        "copy_ms": med["copy"] * 1e3,
        "channels_last_kept": layout_kept,
        "gpu_time_late": _late(timer, f"{name} {tuple(shape)}", repeats),
    }
    for mode in MODES:
        ms = med[f"normzoo_{mode}"] * 1e3
        bound = row["copy_ms"] * SIZES_MOVED[mode] / 2
        row[f"{mode}_ms"] = ms
        row[f"{mode}_copy_fraction"] = bound / ms
        row[f"torch_{mode}_ms"] = med[f"torch_{mode}"] * 1e3 if "torch" in modules else None
        row[f"bn_{mode}_ms"] = med[f"bn_{mode}"] * 1e3
        row[f"{mode}_ratio_torch"] = (
            ms / row[f"torch_{mode}_ms"] if row[f"torch_{mode}_ms"] else None
        )
        row[f"{mode}_ratio_bn"] = ms / row[f"bn_{mode}_ms"]
    # The fastest round of each, a load-robust second opinion on a shared machine.
    row["fwdbwd_min_ms"] = min(times["normzoo_fwdbwd"]) * 1e3
    row["torch_fwdbwd_min_ms"] = min(times["torch_fwdbwd"]) * 1e3 if "torch" in modules else None
    return row


def format_row(r: dict[str, Any]) -> str:
    def f(v: float | None, spec: str) -> str:
        return format(v, spec) if v is not None else "-".rjust(len(format(0.0, spec)))

    return (
        f"{r['norm']:<16} {'x'.join(map(str, r['shape'])):<14} {r['dtype']:<8} "
        f"{r['format'][:6]:<6} {r['device']:<4} "
        f"fwd+bwd {r['fwdbwd_ms']:8.3f} ms  torch {f(r['torch_fwdbwd_ms'], '8.3f')} ms  "
        f"ratio {f(r['fwdbwd_ratio_torch'], '5.2f')}  vs bn {r['fwdbwd_ratio_bn']:5.2f}  "
        f"copy-bound {r['fwdbwd_copy_fraction']:5.2f}  "
        f"(fwd {r['fwd_ms']:.3f} / bwd {r['bwd_ms']:.3f})"
        + ("" if r["channels_last_kept"] else "  LAYOUT LOST")
    )


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
    timer = Timer(device)
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
        "--rows",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--no-rows: only the training step",
    )
    p.add_argument("--json", help="write meta, rows, compile times and training rows here")
    p.add_argument("--title", help="a title for the docs page's section of this run")
    return p.parse_args(argv)


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
                            row = bench_row(*spec, *timing, args.impl, args.activation)
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
                            again = bench_row(*spec, *timing, args.impl, args.activation)
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
