"""Time normalization layers against torch.nn on this machine: ``normzoo bench``.

    normzoo bench                                  # every norm, (32, 64, 32, 32), float32, CPU
    normzoo bench gn ln bn --shape 8,256,14,14 --channels-last
    normzoo bench rmsnorm --shape 4096,1024 --dtype bfloat16 --device cuda
    normzoo bench gn ghostbatchnorm --set num_groups=8 --set virtual_batch_size=8

For each norm, every contender runs once per round, in a fresh random order each round
(interleaved in one process, so drift and other processes' load hit all alike), after
warm-up; the results are per-contender medians over the rounds. Contenders:

* ``normzoo``: ``normzoo.create(name, C)`` with its default (fast) path, in training mode;
* ``torch``: the ``torch.nn`` layer that computes the same function, where one exists;
* ``bn``: ``nn.BatchNorm2d`` (``BatchNorm1d`` for tokens) on the same tensor, the yardstick;
* ``copy``: ``out.copy_(x)``, the memory ceiling. It moves 2 tensor-sizes; the minimal traffic
  of a norm is 2 tensor-sizes forward (read x, write y), 3 backward (read x and dy, write dx),
  5 for both, so ``copy_bound = copy_ms * sizes / 2`` and ``copy_fraction = copy_bound / ms``
  (1.0 = at memory speed). On CUDA the same fraction is the bandwidth fraction vs ``copy_``.

CUDA timing: ``latency`` (default) synchronizes before each call and times it with CUDA
events, so the host's work before the first kernel (Python, launches) counts, as in a program
that waits for each result; ``gpu`` puts an L2-evicting memset and a ~3 ms GPU sleep ahead of
each call, so the host queues the call's launches while the GPU is busy and the events time
the GPU's work, as in training, where the host runs ahead (the method of
``triton.testing.do_bench``): the bandwidth of the kernels themselves. A call whose host work
outlasts the sleep makes the GPU wait, and its GPU time counts host time: each row's
``gpu_time_late`` gives, per timed case, how many of its calls did.

``scripts/bench.py`` runs this harness over the docs' shape set and adds training steps; its
JSON feeds the performance page.
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

import normzoo
from normzoo.registry import accepted_kwargs

CUDA_TIMINGS = ("latency", "gpu")

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


def norm_kwargs(name: str, token: bool, impl: str | None = None) -> dict[str, Any] | None:
    """The keyword arguments that build norm ``name`` for a conv input, or for tokens
    ``(N, C)`` its token form (``channels_last`` for the per-token norms, LayerNorm and
    RMSNorm); ``None`` when it takes no tokens. ``impl`` where the norm takes one."""
    cls = normzoo.get(name)
    kwargs: dict[str, Any] = {}
    if impl is not None and "impl" in accepted_kwargs(cls):
        kwargs["impl"] = impl
    if token:  # per-token norms (LN, RMSNorm) take (..., C); others (N, C) if they can
        if "channels_last" in accepted_kwargs(cls) and "batch" not in cls.reduces_over:
            kwargs["channels_last"] = True
        elif cls.min_spatial_dims > 0:
            return None
    return kwargs


def make_norm(
    name: str,
    c: int,
    token: bool,
    impl: str | None = None,
    options: dict[str, Any] | None = None,
    strict: bool = False,
) -> nn.Module | None:
    """``normzoo.create(name, c)`` for a conv input, or its token form (:func:`norm_kwargs`),
    with the ``options`` the norm accepts (others ignored); ``None`` when the norm has no
    token form or cannot be built standalone (with ``strict``, ``create``'s error is raised
    instead: a bad option says what is wrong)."""
    kwargs = norm_kwargs(name, token, impl)
    if kwargs is None:
        return None
    accepted = accepted_kwargs(normzoo.get(name))
    kwargs.update({k: v for k, v in (options or {}).items() if k in accepted})
    try:
        return normzoo.create(name, c, **kwargs)
    except Exception:
        if strict:
            raise
        return None


def torch_equivalent(name: str, ours: nn.Module, c: int, token: bool) -> nn.Module | None:
    """The ``torch.nn`` layer computing the same function as ``ours`` (norm ``name`` on ``c``
    channels, tokens or conv input), or ``None`` where torch has none (``TORCH_EQUIVALENT``)."""
    builder = TORCH_EQUIVALENT.get(normzoo.info(name).name)
    return builder(ours, c, token) if builder else None


# -- timing ----------------------------------------------------------------------------------
#: Bytes of the memset that evicts the L2 before a "gpu"-timed call (the H200's L2: 60 MB).
FLUSH_BYTES = 256 << 20
#: GPU cycles of the sleep ahead of a "gpu"-timed call (~3 ms at 2 GHz): time for the host to
#: queue the call's launches (the Triton path's fwd+bwd took ~1.3 ms of host time on the H200
#: machine of the tenth session, more than the 1 ms first used).
SLEEP_CYCLES = 6_000_000


class Timer:
    """Wall-clock timing of one call: perf_counter on CPU, CUDA events on a GPU (with
    ``cuda_timing="gpu"``, the GPU's time, the host's launches queued ahead; ``"latency"``,
    each call from an idle GPU, host work included: see the module docstring)."""

    def __init__(self, device: torch.device, cuda_timing: str = "latency") -> None:
        if cuda_timing not in CUDA_TIMINGS:
            raise ValueError(f"cuda_timing must be one of {CUDA_TIMINGS}, got {cuda_timing!r}")
        self.cuda = device.type == "cuda"
        self.flush = None
        if self.cuda and cuda_timing == "gpu":
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


def _skip(why: str, skipped: list[str] | None) -> None:
    if skipped is None:
        print(f"skip {why}", flush=True)
    else:
        skipped.append(why)


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
    cuda_timing: str = "latency",
    skipped: list[str] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """One row: norm ``name`` against its torch.nn equivalent and ``nn.BatchNorm2d`` on the
    same tensor, every contender's medians over ``repeats`` interleaved rounds (after
    ``warmup`` calls each), and a ``copy_`` of the tensor for the memory bound; ``None`` where
    the norm cannot take this input (no token form; a norm that needs a process group).
    ``activation`` (``"relu"``): ours applies it itself (``fuse_activation``), the two
    torch.nn modules are followed by ``nn.ReLU``. ``options``: keyword arguments for the
    norms that accept them (``num_groups=8``). Why a norm was skipped is appended to
    ``skipped`` where given, else printed."""
    token = len(shape) == 2
    c = shape[-1] if token else shape[1]
    try:
        ours = make_norm(name, c, token, impl, options, strict=bool(options))
    except Exception as err:  # an option the norm refuses, in its own words
        _skip(f"{name}: {type(err).__name__}: {err}", skipped)
        return None
    if ours is None:
        _skip(f"{name}: no {'token' if token else 'standalone'} form", skipped)
        return None
    taken = {k: v for k, v in (options or {}).items() if k in accepted_kwargs(type(ours))}
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
        _skip(f"{name} {tuple(shape)}: {type(err).__name__}: {err}", skipped)
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
    timer = Timer(device, cuda_timing)
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
        "options": taken,  # the options (--set) this norm took
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
    """One row as a line of text (the harness's console output)."""

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


# -- normzoo bench ---------------------------------------------------------------------------
def parse_shape(text: str) -> tuple[int, ...]:
    """``"32,64,32,32"`` -> ``(32, 64, 32, 32)``: a conv input ``(N, C, *spatial)`` or tokens
    ``(N, C)``."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"a shape is N,C or N,C,H,W with positive sizes (e.g. 32,64,32,32), got {text!r}"
        )
    return shape


def add_parser(sub: Any) -> None:
    """``normzoo bench``'s arguments, on the CLI's subparsers."""
    p = sub.add_parser(
        "bench",
        help="time norms against torch.nn and BatchNorm on this machine",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("norms", nargs="*", help="names or aliases (default: every registered norm)")
    p.add_argument(
        "--shape",
        type=parse_shape,
        default=(32, 64, 32, 32),
        help="N,C,H,W (conv input) or N,C (tokens); default 32,64,32,32",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--channels-last", action="store_true", help="channels_last conv input")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--repeats", type=int, default=21, help="timed rounds (default 21)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument("--cuda-timing", choices=CUDA_TIMINGS, default="latency")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="options",
        help="a keyword argument for the norms that take it, e.g. num_groups=8 or "
        "virtual_batch_size=8 (repeatable)",
    )
    p.add_argument("--json", help="also write the rows here")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    """Time each norm on one input; print a table, fastest first."""
    try:  # (each norm once, however it was named)
        names = list(dict.fromkeys(normzoo.info(n).name for n in args.norms))
    except KeyError as err:  # the registry's message names close matches
        print(f"normzoo bench: {err.args[0]}", file=sys.stderr)
        return 2
    names = names or normzoo.available()
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as err:
        print(f"normzoo bench: --device {args.device!r}: {err}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("normzoo bench: --device cuda, but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    if args.channels_last and len(args.shape) != 4:
        print(f"normzoo bench: --channels-last takes a 4-d shape, got {args.shape}",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.repeats < 1 or args.warmup < 0:
        print("normzoo bench: --repeats must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    try:
        options = parse_options(args.options, names)
    except ValueError as err:
        print(f"normzoo bench: {err}", file=sys.stderr)
        return 2
    fmt = "channels_last" if args.channels_last else "contiguous"
    dtype = getattr(torch, args.dtype)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; shape "
        f"{tuple(args.shape)} {args.dtype} {fmt}; medians of {args.repeats} rounds"
        + "".join(f"; {k}={v!r} ({', '.join(takers)})" for k, (v, takers) in options.items()),
        flush=True,
    )
    rows, skipped = [], []
    for name in names:
        row = bench_row(name, args.shape, dtype, fmt, device, args.repeats, args.warmup,
                        cuda_timing=args.cuda_timing, skipped=skipped,
                        options={k: v for k, (v, _) in options.items()})  # fmt: skip
        if row is not None:
            rows.append(row)
    print(format_table(rows))
    if skipped:
        print("\nnot timed:\n" + "\n".join(f"- {why}" for why in skipped))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def parse_options(items: Sequence[str], names: Sequence[str]) -> dict[str, tuple[Any, list[str]]]:
    """``["num_groups=8"]`` -> ``{"num_groups": (8, [norms that take it])}``: each value a
    Python literal where it parses as one (``8``, ``1e-3``, ``None``, ``True``), else the
    string. ValueError for an item without ``=`` or a key none of ``names`` takes."""
    out: dict[str, tuple[Any, list[str]]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE (e.g. num_groups=8), got {item!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        takers = [n for n in names if key in accepted_kwargs(normzoo.get(n))]
        if not takers:
            raise ValueError(f"--set {key}: none of {', '.join(names)} takes {key!r}")
        out[key] = (value, takers)
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as a markdown table, fastest fwd+bwd first: times in ms, ratios < 1 = faster
    than the contender, the copy fraction (1.0 = memory speed)."""
    from normzoo.cli import format_table as table

    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    out = [
        {
            "norm": r["norm"],
            "fwd+bwd ms": f(r["fwdbwd_ms"], ".3f"),
            "vs torch.nn": f(r["fwdbwd_ratio_torch"], ".2f"),
            "vs BatchNorm": f(r["fwdbwd_ratio_bn"], ".2f"),
            "copy fraction": f(r["fwdbwd_copy_fraction"], ".2f"),
            "fwd ms": f(r["fwd_ms"], ".3f"),
            "bwd ms": f(r["bwd_ms"], ".3f"),
            "layout kept": "yes" if r["channels_last_kept"] else "NO",
        }
        for r in sorted(rows, key=lambda r: r["fwdbwd_ms"])
    ]
    return table(out)
