"""Time normzoo's norms against their torch.nn equivalents: fwd+bwd, interleaved, medians.

    python scripts/bench.py                      # the four core norms, the core conv shapes
    python scripts/bench.py --norms bn gn --shapes 32,64,32,32 --repeats 50 --json out.json

Each round runs every contender once, in turn (interleaved, so drift and thermal effects hit
all alike), after warm-up; the table reports per-contender medians and the ratio
normzoo / torch (< 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import normzoo

CORE_SHAPES = [(32, 64, 32, 32), (8, 256, 14, 14), (128, 64, 8, 8)]


def torch_equivalent(name: str, c: int) -> nn.Module:
    """The torch.nn layer that computes the same function as ``normzoo.create(name, c)``."""
    ours = normzoo.create(name, c)
    canonical = normzoo.info(name).name
    builders: dict[str, Callable[[], nn.Module]] = {
        "batchnorm": lambda: nn.BatchNorm2d(c),
        "layernorm": lambda: nn.GroupNorm(1, c),
        "instancenorm": lambda: nn.InstanceNorm2d(c, affine=True),
        "groupnorm": lambda: nn.GroupNorm(getattr(ours, "num_groups", 1), c),
    }
    return builders[canonical]()


def fwd_bwd(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).backward(grad)

    return step


def time_interleaved(fns: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(names: list[str], shapes: list[tuple[int, ...]], repeats: int, warmup: int) -> list[dict]:
    rows = []
    for shape in shapes:
        c = shape[1]
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        for name in names:
            ours, ref = normzoo.create(name, c), torch_equivalent(name, c)
            med = time_interleaved(
                {"normzoo": fwd_bwd(ours, x, g), "torch": fwd_bwd(ref, x, g)}, repeats, warmup
            )
            rows.append(
                {
                    "norm": normzoo.info(name).name,
                    "shape": list(shape),
                    "normzoo_ms": med["normzoo"] * 1e3,
                    "torch_ms": med["torch"] * 1e3,
                    "ratio": med["normzoo"] / med["torch"],
                }
            )
            r = rows[-1]
            print(
                f"{r['norm']:<13} {tuple(shape)!s:<18} normzoo {r['normzoo_ms']:8.3f} ms   "
                f"torch {r['torch_ms']:8.3f} ms   ratio {r['ratio']:.3f}",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["bn", "ln", "in", "gn"])
    parser.add_argument("--shapes", nargs="+", default=[",".join(map(str, s)) for s in CORE_SHAPES])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", help="write the rows and the machine to this file")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}")
    rows = bench(args.norms, shapes, args.repeats, args.warmup)
    if args.json:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.platform(),
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
