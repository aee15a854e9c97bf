"""Ghost BN's dispatch: one torch BN call per virtual batch (the loop) against every virtual
batch in one set of kernels (vectorized), fwd+bwd medians, with nn.BatchNorm on the same tensor.

    python scripts/bench_ghost_dispatch.py            # CUDA if present, else the CPU

Sets ``normzoo.norms.ghost_batch.VECTOR_MIN_BATCHES`` (measured: on an H100 the loop wins up
to 8 virtual batches and loses 9-60x from 128 on; on the 2-core CPU the loop wins throughout).
"""

from __future__ import annotations

import statistics
import time

import torch

import normzoo
from normzoo.norms import ghost_batch

SHAPES = [(64, 64, 32, 32), (128, 64, 8, 8), (256, 64, 64, 64), (4096, 1024), (65536, 1024)]


def fwd_bwd_ms(m: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, reps: int = 20) -> float:
    times = []
    for i in range(reps + 3):
        x.grad = None
        m.zero_grad(set_to_none=True)
        if x.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            m(x).backward(g)
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            m(x).backward(g)
            ms = (time.perf_counter() - t0) * 1e3
        if i >= 3:
            times.append(ms)
    return statistics.median(times)


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    saved = dict(ghost_batch.VECTOR_MIN_BATCHES)
    for shape in SHAPES if device == "cuda" else SHAPES[:2] + SHAPES[3:4]:
        x = torch.randn(shape, device=device, requires_grad=True)
        g = torch.randn_like(x)
        ghost = normzoo.create("ghostbatchnorm", shape[1]).to(device)
        bn = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(shape[1])
        bn.to(device)
        row: dict[str, list[float]] = {}
        for _ in range(2):  # interleaved rounds
            for name, least in (("vectorized", 2), ("loop", 10**9)):
                ghost_batch.VECTOR_MIN_BATCHES[device] = least
                row.setdefault(name, []).append(round(fwd_bwd_ms(ghost, x, g), 3))
            row.setdefault("batchnorm", []).append(round(fwd_bwd_ms(bn, x, g), 3))
        print(f"{device} {shape} virtual batches {shape[0] // 32}: {row} ms", flush=True)
    ghost_batch.VECTOR_MIN_BATCHES.clear()
    ghost_batch.VECTOR_MIN_BATCHES.update(saved)


if __name__ == "__main__":
    main()
