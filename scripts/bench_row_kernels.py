"""The row kernels alone (``normzoo/_native/row_norm.c``: GroupNorm, LayerNorm, InstanceNorm),
without the operator, autograd or Python around them, against torch's group-norm operators.

    python scripts/bench_row_kernels.py                       # LayerNorm-like shapes, both layouts
    python scripts/bench_row_kernels.py --shapes 128,64,8,8 --groups 1 32 --layouts channels_last

Each kernel runs through ``ctypes`` on preallocated tensors; the inputs and outputs rotate
through ``--buffers`` sets (several MB), so each call reads data that is in L3 or memory, as in
a model, not data left in the core's cache by the previous call. torch's
``native_group_norm``/``native_group_norm_backward`` run on the same tensors (they allocate
their outputs: that is part of what they cost in a model). Forward and backward are timed
separately, interleaved round by round; medians in microseconds, and ours / torch.
"""

from __future__ import annotations

import argparse
import ctypes
import random
import statistics
import time
from typing import Any

import torch

from normzoo import _native

P, I64, F64, INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
# The channels_last kernels (row_norm.c, in the same library; the operator calls them): the
# contiguous kernels' arguments, and an int status (0, or -1 without scratch memory).
_CL_SIGNATURES = {
    "nz_row_forward_cl": [P, P, P, P, P, P, P, I64, I64, I64, I64, F64, INT],
    "nz_row_backward_cl": [P, P, P, P, P, P, P, P, P, I64, I64, I64, I64, INT],
}


def _library() -> ctypes.CDLL:
    lib = _native.load("row_norm")
    if lib is None:
        raise SystemExit("the row_norm library could not be built here (see the warning)")
    for name, argtypes in _CL_SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = ctypes.c_int
    return lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def bench_case(
    lib: ctypes.CDLL,
    shape: tuple[int, ...],
    groups: int,
    layout: str,
    rounds: int,
    buffers: int,
    calls: int,
) -> dict[str, Any]:
    """Medians (us) of our forward/backward kernels and torch's operators on ``shape``."""
    n, c = shape[0], shape[1]
    length = 1
    for s in shape[2:]:
        length *= s
    cl = layout == "channels_last"
    fmt = torch.channels_last if cl else torch.contiguous_format
    threads = torch.get_num_threads()
    sets = []
    for _ in range(buffers):
        x = (torch.randn(shape) * 2 + 1).contiguous(memory_format=fmt)
        dy = torch.randn(shape).contiguous(memory_format=fmt)
        sets.append((x, dy, torch.empty_like(x), torch.empty_like(x)))
    w, b = torch.rand(c) + 0.5, torch.randn(c)
    mean, rstd = torch.empty(n * groups), torch.empty(n * groups)
    dw, db, partial = torch.empty(c), torch.empty(c), torch.empty(2 * n * c)
    fwd = lib.nz_row_forward_cl if cl else lib.nz_row_forward
    bwd = lib.nz_row_backward_cl if cl else lib.nz_row_backward
    cg = c // groups

    def ours_fwd(i: int) -> None:
        x, _, y, _ = sets[i % buffers]
        fwd(_ptr(x), _ptr(w), _ptr(b), _ptr(y), _ptr(mean), _ptr(rstd), None, n, groups, cg,
            length, 1e-5, threads)  # fmt: skip

    def ours_bwd(i: int) -> None:
        x, dy, _, dx = sets[i % buffers]
        bwd(_ptr(dy), _ptr(x), _ptr(w), _ptr(mean), _ptr(rstd), _ptr(dx), _ptr(dw), _ptr(db),
            _ptr(partial), n, groups, cg, length, threads)  # fmt: skip

    stats = [torch.ops.aten.native_group_norm(s[0], w, b, n, c, length, groups, 1e-5) for s in sets]

    def torch_fwd(i: int) -> None:
        torch.ops.aten.native_group_norm(sets[i % buffers][0], w, b, n, c, length, groups, 1e-5)

    def torch_bwd(i: int) -> None:
        x, dy, _, _ = sets[i % buffers]
        _, m, r = stats[i % buffers]
        torch.ops.aten.native_group_norm_backward(
            dy, x, m, r, w, n, c, length, groups, [True, True, True]
        )

    cases = {"ours_fwd": ours_fwd, "torch_fwd": torch_fwd, "ours_bwd": ours_bwd,
             "torch_bwd": torch_bwd}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in cases}
    with torch.no_grad():
        for fn in cases.values():  # warm-up
            for i in range(buffers):
                fn(i)
        keys, order = list(cases), random.Random(0)
        for _ in range(rounds):
            order.shuffle(keys)  # a fresh order per round: no case keeps its predecessor
            for key in keys:
                t0 = time.perf_counter()
                for i in range(calls):
                    cases[key](i)
                times[key].append((time.perf_counter() - t0) / calls * 1e6)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "shape": list(shape),
        "groups": groups,
        "layout": layout,
        **{f"{k}_us": v for k, v in med.items()},
        "fwd_ratio": med["ours_fwd"] / med["torch_fwd"],
        "bwd_ratio": med["ours_bwd"] / med["torch_bwd"],
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["256,64,4,4", "128,64,8,8", "4,32,64,64"])
    p.add_argument("--groups", nargs="+", type=int, default=[1])
    p.add_argument("--layouts", nargs="+", default=["contiguous", "channels_last"],
                   choices=["contiguous", "channels_last"])  # fmt: skip
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--calls", type=int, default=12, help="calls per timed block")
    p.add_argument("--buffers", type=int, default=4, help="input/output sets to rotate through")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lib = _library()
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians in us")
    print(
        "| shape | groups | layout | ours fwd | torch fwd | ratio | ours bwd | torch bwd | ratio |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for spec in args.shapes:
        shape = tuple(int(s) for s in spec.split(","))
        for groups in args.groups:
            for layout in args.layouts:
                r = bench_case(lib, shape, groups, layout, args.rounds, args.buffers, args.calls)
                rows.append(r)
                print(
                    f"| {spec} | {groups} | {layout} | {r['ours_fwd_us']:.1f} | "
                    f"{r['torch_fwd_us']:.1f} | {r['fwd_ratio']:.2f} | {r['ours_bwd_us']:.1f} | "
                    f"{r['torch_bwd_us']:.1f} | {r['bwd_ratio']:.2f} |",
                    flush=True,
                )
    return rows


if __name__ == "__main__":
    main()
