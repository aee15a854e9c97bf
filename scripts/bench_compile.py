"""Training steps under ``torch.compile``: each norm's default model compiled whole
(``fullgraph=True``) against the same model eager, the torch.nn equivalent's model compiled
and ``nn.BatchNorm2d``'s model compiled; interleaved rounds in one process, medians. A
torch.nn model that does not compile whole (``BatchNorm2d(momentum=None)``) is recorded in
``graph_breaks`` and left out of the rounds: partly eager, it slowed every other model of
the process.

    python scripts/bench_compile.py                       # every norm, CPU (CUDA if present)
    python scripts/bench_compile.py --norms bn brn --json out.json

Per norm it reports the first step of each compiled model (the compile included), the graphs
dynamo compiled over the warm-up and timed steps (one per model: no recompile as
``num_batches_tracked`` moves), and the step medians with their ratios. A norm whose model
does not compile whole is an error row, not a crash. Models: the training system's default
(``normzoo.models.ConvNet2d`` on 3x32x32, ``model.fuse_activation=false``: each norm followed
by ``nn.ReLU``), SGD with momentum; the optimizer step runs eager.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from bench import Timer, _torch_factory, default_model, load, machine, save, warm_and_run
from torch import nn

import normzoo


def _has_momentum(name: str) -> bool:
    return "momentum" in inspect.signature(normzoo.get(name)).parameters


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = model

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(forward(x), y).backward()
        opt.step()

    return step


def compile_row(
    name: str,
    device: torch.device,
    batch: int,
    repeats: int,
    warmup: int,
    momentum: Any,
    backend: str = "inductor",
) -> dict[str, Any]:
    """One norm: its model eager and compiled, torch.nn's equivalent and BatchNorm2d's
    compiled. ``momentum``: ``"default"`` or ``None`` (the cumulative average) for the norms
    that keep running statistics."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    kwargs = {} if momentum == "default" else {"momentum": momentum}
    if kwargs and not _has_momentum(name):
        raise ValueError(f"{name} keeps no running statistics: no momentum to set")

    def ours(c: int) -> nn.Module:
        return normzoo.create(name, c, **kwargs)

    builders: dict[str, Callable[[int], nn.Module]] = {"eager": ours, "compiled": ours}
    factory = _torch_factory(name)
    if factory is not None:

        def torch_nn(c: int, factory: Callable[[int], nn.Module] = factory) -> nn.Module:
            module = factory(c)
            for key, value in kwargs.items():  # momentum=None: torch.nn reads the attribute
                setattr(module, key, value)
            return module

        builders["torch_compiled"] = torch_nn
    builders["bn2d_compiled"] = nn.BatchNorm2d  # the common reference, as it is
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    cases: dict[str, Any] = {}
    first_s: dict[str, float] = {}
    graphs: dict[str, int] = {}
    breaks: dict[str, str] = {}
    for who, build in builders.items():
        model = default_model(build).to(device).train()
        if who != "eager":  # (no torch._dynamo.reset() here: it drops the others' code)
            model = torch.compile(model, fullgraph=True, backend=backend)
        step = _step_fn(model, x, y)
        before = _graphs()
        t0 = time.perf_counter()
        try:
            step()
        except Exception as err:  # torch.nn's may break the graph (BatchNorm2d, momentum=None)
            if who == "compiled":
                raise
            # left out of the rounds: a model that runs partly eager slowed the others of the
            # process (this row's compiled model 50 -> 64 ms a step with one in the rounds)
            breaks[who] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
        first_s[who] = time.perf_counter() - t0
        graphs[who] = _graphs() - before
        cases[who] = (step, None)
    before = {who: _graphs() for who in cases}
    times = warm_and_run(cases, Timer(device), repeats, warmup)
    recompiled = _graphs() - min(before.values())
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    row: dict[str, Any] = {
        "norm": normzoo.info(name).name,
        "momentum": momentum,
        "backend": backend,
        "device": device.type,
        "batch": batch,
        "rounds": repeats,
        "ms": med,
        "first_step_s": first_s,
        "graphs_first_step": graphs,
        "graphs_after_first_step": recompiled,
        "graph_breaks": breaks,
        "compiled_vs_eager": med["eager"] / med["compiled"],
        "compiled_vs_bn2d_compiled": med["compiled"] / med["bn2d_compiled"],
        "load": load(),
    }
    if "torch_compiled" in med:  # else none, or it breaks the graph (graph_breaks)
        row["compiled_vs_torch_compiled"] = med["torch_compiled"] / med["compiled"]
    return row


def format_row(row: dict[str, Any]) -> str:
    ms = row["ms"]
    parts = [f"{k} {v:.1f} ms" for k, v in ms.items()]
    first = ", ".join(f"{k} {v:.1f} s" for k, v in row["first_step_s"].items() if k != "eager")
    torch_ratio = row.get("compiled_vs_torch_compiled")
    vs_torch = f", torch.nn compiled / ours x{torch_ratio:.2f}" if torch_ratio else ""
    return (
        f"{row['norm']:<16} momentum={row['momentum']}: {'; '.join(parts)}; "
        f"eager / compiled x{row['compiled_vs_eager']:.2f}{vs_torch}, "
        f"ours / BN2d compiled x{row['compiled_vs_bn2d_compiled']:.2f}; first step {first}; "
        f"graphs {row['graphs_first_step']} then {row['graphs_after_first_step']} more"
    )


def _isolated_row(name: str, momentum: Any, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`compile_row` in a fresh Python process (``--row``)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--row", name, str(momentum)]
    cmd += ["--device", args.device, "--batch", str(args.batch), "--backend", args.backend]
    cmd += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise RuntimeError(f"row process exited {done.returncode}: {done.stderr[-1000:]}")
    out = json.loads(lines[-1])
    if "error" in out:
        raise RuntimeError(out["error"])
    return out["row"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--norms", nargs="+", help="default: every registered norm")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--backend", default="inductor", help="torch.compile's backend")
    p.add_argument(
        "--momentum-none",
        action="store_true",
        help="also each norm with running statistics at momentum=None (cumulative average)",
    )
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each row in a fresh process (default): one process compiling model after model "
        "slowed down, the same compiled model 52 ms a step in the first row, 71 ms in the 17th",
    )
    p.add_argument("--json", help="write meta and rows here")
    p.add_argument("--row", nargs=2, metavar=("NORM", "MOMENTUM"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.row:  # one row, from a parent run with --isolate: its JSON on stdout's last line
        name, momentum = args.row[0], None if args.row[1] == "None" else args.row[1]
        if args.threads:
            torch.set_num_threads(args.threads)
        timing = (args.batch, args.repeats, args.warmup)
        try:
            out = {
                "row": compile_row(name, torch.device(args.device), *timing, momentum, args.backend)
            }
        except Exception as err:
            out = {"error": f"{type(err).__name__}: {err}"}
        print("\n" + json.dumps(out), flush=True)
        return out
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in (args.norms or normzoo.available()) if normzoo.info(n).name != "identity"]
    names = [n for n in names if normzoo.info(n).name != "syncbatchnorm"]
    device = torch.device(args.device)
    meta = machine()
    meta["command"] = " ".join(["python", "scripts/bench_compile.py", *(argv or sys.argv[1:])])
    meta["load_start"] = load()
    result: dict[str, Any] = {"meta": meta, "rows": [], "errors": []}
    print(json.dumps(meta), flush=True)
    variants = [(n, "default") for n in names]
    if args.momentum_none:
        variants += [(n, None) for n in names if _has_momentum(n)]
    for name, momentum in variants:
        try:
            if args.isolate:
                row = _isolated_row(name, momentum, args)
            else:
                timing = (args.batch, args.repeats, args.warmup)
                row = compile_row(name, device, *timing, momentum, args.backend)
        except Exception as err:  # a norm that does not compile whole: recorded, go on
            error = {"norm": name, "momentum": momentum, "error": f"{type(err).__name__}: {err}"}
            result["errors"].append(error)
            print(f"ERROR {json.dumps(error)[:400]}", flush=True)
            continue
        result["rows"].append(row)
        save(result, args.json)
        print(format_row(row), flush=True)
    meta["load_end"] = load()
    save(result, args.json)
    return result


if __name__ == "__main__":
    main()
