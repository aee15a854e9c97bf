"""A/B of the wider zoo's fused CUDA path (``normzoo.norms._gpu``) against its eager paths.

    python scripts/gpu_fused_ab.py --json gpu_out/gpu_fused_ab.json   # on a CUDA machine

For each norm, shape, layout and dtype, the module's default (fast) path runs with compiling
on (``_fused.set_enabled(True)``: the fused reference math where ``use_fused_math`` holds)
and off (the eager paths), interleaved in one process with ``nn.BatchNorm`` and a ``copy_`` of
the same tensor, fwd+bwd, timed per call with CUDA events; rows give medians, the speed-up
``eager / fused``, both as multiples of BatchNorm and as fractions of the copy bound
(``copy_ms * 5 / 2``, see ``scripts/bench.py``). The first call with compiling on, compile
included, is ``first_call_s``; ``fallback`` lists any "compiling failed" warning; ``eval_err``
is the largest difference between the two paths' eval-mode outputs. The dispatch in
``normzoo/norms/_gpu.py`` was set from this script's H200 run
(``docs/data/gpu_fused_ab_h200.json``).

``--device cpu`` runs the same code on the CPU (where the fused path is not dispatched, so
both columns time the eager paths): the tests' smoke run.

The core norms (``--norms batchnorm groupnorm layernorm``; ``--core`` adds them to the
default list) have no fused path in their modules: on CUDA they call torch's kernels, which
read 0.2-0.5 of the copy ceiling at the large shapes on an H200 (the issue aims at 0.7). For
them the ``fused`` column is a candidate, not a dispatch: the module's reference math
(``normzoo.functional``; BatchNorm in training, batch statistics) compiled by
``_fused.fuse`` (:class:`CompiledReference`), against the module's default path (``eager``:
torch's kernels). It measures whether ``torch.compile``'s kernels reach that aim before a
dispatch is written for them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import make_norm

from normzoo import functional
from normzoo.norms import _fused

NORMS = ["evonormb0", "evonorms0", "frn", "switchablenorm", "rmsnorm", "batchrenorm"]
#: Norms whose ``fused`` column is :class:`CompiledReference` (see the module docstring).
CORE = ["batchnorm", "groupnorm", "layernorm"]
#: (shape, memory format, dtype): the issue's large shapes, GPU-sized ones, one bf16.
CONFIGS = [
    ((256, 64, 64, 64), "contiguous", "float32"),
    ((256, 64, 64, 64), "channels_last", "float32"),
    ((65536, 1024), "contiguous", "float32"),
    ((4096, 1024), "contiguous", "float32"),
    ((32, 64, 32, 32), "contiguous", "float32"),
    ((32, 64, 32, 32), "channels_last", "float32"),
    ((8, 256, 14, 14), "contiguous", "float32"),
    ((256, 64, 64, 64), "contiguous", "bfloat16"),
]


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Milliseconds of one call: CUDA events on the GPU, the wall clock on the CPU."""
    if device.type == "cuda":

        def cuda_ms(fn: Callable[[], Any]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)

        return cuda_ms

    def cpu_ms(fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return cpu_ms


def _batch_norm_train(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    return functional.batch_norm(x, None, None, weight, bias, training=True, eps=eps)[0]


def _group_norm(
    x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    return functional.group_norm(x, groups, weight, bias, eps=eps)


_COMPILED = {"batchnorm": _fused.fuse(_batch_norm_train), "groupnorm": _fused.fuse(_group_norm)}


class CompiledReference(nn.Module):
    """A core norm's reference math compiled by ``_fused.fuse``, with ``norm``'s parameters:
    batch norm with batch statistics (the running statistics are not updated: one C-sized
    blend per step, left out of the timing), group norm, channels-first layer norm (one
    group). Where compiling is off (``_fused.set_enabled(False)``) or the input is not on
    CUDA, ``_fused.fuse`` runs the same math eagerly."""

    def __init__(self, name: str, norm: nn.Module) -> None:
        super().__init__()
        self.name, self.norm = name, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm
        if self.name == "batchnorm":
            return _COMPILED["batchnorm"](x, n.weight, n.bias, n.eps)
        groups = int(getattr(n, "num_groups", 1))
        return _COMPILED["groupnorm"](x, groups, n.weight, n.bias, n.eps)


def time_interleaved(
    fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int
) -> dict[str, float]:
    """Median ms of each contender, one call of each per round; ``fused`` and ``eager`` run
    with compiling switched on and off."""
    timer = _timer(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    try:
        for i in range(repeats + warmup):
            for key, fn in fns.items():
                _fused.set_enabled(key != "eager")
                ms = timer(fn)
                if i >= warmup:
                    times[key].append(ms)
    finally:
        _fused.set_enabled(True)
    return {k: statistics.median(v) for k, v in times.items()}


def ab_row(
    name: str,
    shape: tuple[int, ...],
    fmt: str,
    dtype: torch.dtype,
    device: torch.device,
    repeats: int,
    warmup: int,
) -> dict[str, Any] | None:
    """One norm on one tensor: fused vs eager vs BatchNorm vs copy_ (see the docstring)."""
    channels, token = shape[1], len(shape) == 2
    module = make_norm(name, channels, token)
    if module is None:
        return None
    module = module.to(device).train()
    # the core norms: the compiled reference math is the candidate (module docstring)
    fused = CompiledReference(name, module) if name in CORE and not token else module
    x = torch.randn(shape, device=device, dtype=dtype)
    if fmt == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad = torch.randn_like(x)
    buf = torch.empty_like(x)
    bn = (nn.BatchNorm1d(channels) if token else nn.BatchNorm2d(channels)).to(device, dtype)

    def fwd_bwd(m: nn.Module) -> Callable[[], None]:
        def run() -> None:
            m(x).backward(grad)
            x.grad = None

        return run

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fwd_bwd(fused)()
        if device.type == "cuda":
            torch.cuda.synchronize()
    first_call_s = time.perf_counter() - start
    fallback = [str(w.message)[:200] for w in caught if "normzoo: compiling" in str(w.message)]
    # eval-mode outputs compared; the core norms' candidate always uses batch statistics, so
    # its comparison stays in training mode (statistics untouched: momentum set to 0)
    core = fused is not module
    saved_momentum = getattr(module, "momentum", None)
    if core and hasattr(module, "momentum"):
        module.momentum = 0.0
    else:
        module.eval()
    try:
        with torch.no_grad():
            _fused.set_enabled(True)
            y_fused = fused(x)
            _fused.set_enabled(False)
            y_eager = module(x)
    finally:
        _fused.set_enabled(True)
        module.train()
        if core and hasattr(module, "momentum"):
            module.momentum = saved_momentum
    kept = y_fused.is_contiguous(
        memory_format=torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    )
    t = time_interleaved(
        {
            "fused": fwd_bwd(fused),
            "eager": fwd_bwd(module),
            "bn": fwd_bwd(bn),
            "copy": lambda: buf.copy_(x),
        },
        device,
        repeats,
        warmup,
    )
    bound = t["copy"] * 5 / 2
    return {
        "norm": name,
        "shape": list(shape),
        "format": fmt,
        "dtype": str(dtype).removeprefix("torch."),
        "device": device.type,
        "first_call_s": first_call_s,
        "fallback": fallback,
        "layout_kept": kept,
        "eval_err": (y_fused.float() - y_eager.float()).abs().max().item(),
        **{f"{k}_ms": v for k, v in t.items()},
        "speedup": t["eager"] / t["fused"],
        "fused_vs_bn": t["fused"] / t["bn"],
        "eager_vs_bn": t["eager"] / t["bn"],
        "fused_copy_fraction": bound / t["fused"],
        "eager_copy_fraction": bound / t["eager"],
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--norms", nargs="+", default=NORMS)
    parser.add_argument("--core", action="store_true", help=f"add {' '.join(CORE)}")
    parser.add_argument("--shapes", nargs="+", help="e.g. 32,64,32,32 (default: CONFIGS)")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    norms = list(args.norms) + [n for n in CORE if args.core and n not in args.norms]
    configs = CONFIGS
    if args.shapes:
        shapes = [tuple(int(s) for s in spec.split(",")) for spec in args.shapes]
        configs = [(shape, "contiguous", "float32") for shape in shapes]
    rows: list[dict[str, Any]] = []
    for shape, fmt, dtype_name in configs:
        for name in norms:
            row = ab_row(
                name, shape, fmt, getattr(torch, dtype_name), device, args.repeats, args.warmup
            )
            if row is None:
                continue
            rows.append(row)
            print(
                f"{name:15s} {'x'.join(map(str, shape)):13s} {fmt[:6]} {row['dtype']:8s} "
                f"first {row['first_call_s']:5.1f} s  fused {row['fused_ms']:.3f} ms "
                f"({row['fused_vs_bn']:.2f} bn, {row['fused_copy_fraction']:.2f} copy)  "
                f"eager {row['eager_ms']:.3f} ms ({row['eager_vs_bn']:.2f} bn)  "
                f"speed-up {row['speedup']:.2f}" + ("  FALLBACK" if row["fallback"] else ""),
                flush=True,
            )
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
