"""A/B of normzoo's Triton kernels on a GPU: their plan knobs, the host's share, and the zoo.

    python scripts/gpu_triton_ab.py --json gpu_out/gpu_triton_ab.json
    python scripts/gpu_triton_ab.py --shapes 256,64,64,64 --dtypes float32   # fewer cases
    python scripts/gpu_triton_ab.py --pick gpu_out/gpu_triton_plan.json  # the plan it chose

Three questions the tenth and eleventh sessions left (``docs/performance.md``, the Triton
sections):

1. **The two-phase kernels' plan.** On channels_last they reached 0.41 (float32) and 0.26
   (bfloat16) of the copy ceiling forward, below the ~2/3 that two passes allow, with each
   program looping over 8 tiles of 64 positions: is it too few bytes in flight per program,
   or the reduction of every tile across its 8 warps (twentieth session's reading of the
   compiled code)? Each configuration of ``_triton.PROGRAMS_PER_SM`` (more programs, fewer
   tiles each), ``_triton.TILE`` (bigger tiles) and ``_triton.TWO_PHASE_LANE_ACC`` (per-lane
   partials merged once after the loop) is timed here on the same tensors, interleaved; so
   are the token backward's ``TOKEN_MIN_ROWS`` and ``TOKEN_ACC_ROWS``. Answered on an H200
   in the twenty-fourth session (``docs/data/gpu_triton_plan_h200.json``): the reduction;
   rows now take 16 KB tiles with per-lane sums (``--pick FILE`` names the plans a file's
   rows would ship, ``--shipped-only`` times those alone).
2. **The host's time per call.** Timed from an idle GPU, the kernels lost to torch's below
   ~67M elements although their GPU time was shorter: each Triton launch from Python costs
   more host time. Here each path's host time per forward and per fwd+bwd is measured with the
   GPU kept busy (so the host never waits), against torch's functional forms.
3. **The zoo's kernels**: FRN + TLU, EvoNorm-S0 and channels-first RMSNorm on the group
   kernels, Batch Renorm, SwitchableNorm, EvoNorm-B0 and Ghost BN on the two-phase scheme,
   FrozenBatchNorm on the map kernels. Each module (``--modules``) runs fwd+bwd with
   ``NORMZOO_TRITON=all`` (the kernels) and with ``NORMZOO_TRITON=0`` (its CUDA path without
   them: ``torch.compile`` of the reference math for FRN and small EvoNorm-S0, eager kernels
   otherwise; "default" in the JSON), interleaved, on the same tensors; ``triton_ran``
   records that the kernels served the first and not the second. The default's first call
   may compile (seconds); it runs before the timing. The twentieth session's rows
   (``docs/data/gpu_triton_ab_h200.json``) set ``_triton.ZOO_MEASURED``.

GPU times are medians of CUDA events around each call, the call queued behind an L2-evicting
memset and a GPU sleep (``bench.py --cuda-timing gpu``); fractions are of a ``copy_`` of the
same tensor (forward: 2 tensor-sizes moved, backward 3).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from normzoo.norms import _triton

SLEEP_CYCLES = 6_000_000  # ~3 ms at 2 GHz: the host queues a call's launches meanwhile
FLUSH_BYTES = 256 << 20
#: (PROGRAMS_PER_SM, TILE, TOKEN_MIN_ROWS, TOKEN_ACC_ROWS, TWO_PHASE_LANE_ACC), each set on
#: both layouts (the tile and lanes as ``TILE``/``TILE_ROWS_BYTES`` and
#: ``TWO_PHASE_LANE_ACC``/``_ROWS``; the tile in elements of the case's dtype); each layout's
#: shipped plan is among them. The token kernels read the first and
#: the third and fourth (their backward), the two-phase kernels the first, second and last.
CONFIGS = [
    (16, 4096, 8, True, 0),
    (64, 4096, 8, True, 0),
    (16, 8192, 8, True, 0),
    (64, 8192, 8, True, 0),
    (256, 4096, 8, True, 0),
    (16, 4096, 1, True, 0),  # the tenth session's token backward: one row a program
    (16, 4096, 32, True, 0),
    (16, 4096, 8, False, 0),  # the token backward summing its tile's rows each iteration
    (16, 4096, 8, True, 1),  # the two-phase partials kept per lane (Welford), merged once
    (64, 4096, 8, True, 1),
    (16, 4096, 8, True, 2),  # ... as shifted sums (a third of the Welford lanes' SASS)
    (64, 4096, 8, True, 2),
    (16, 8192, 8, True, 2),
    (64, 8192, 8, True, 2),
]
KNOBS = ("PROGRAMS_PER_SM", "TILE", "TOKEN_MIN_ROWS", "TOKEN_ACC_ROWS", "TWO_PHASE_LANE_ACC")


def _reads(case: str) -> set[int]:
    """The knobs (indices into a configuration) that ``case``'s kernels read."""
    kind, _, _, token = CASES[case]
    return {0, 2, 3} if token and kind != "batch" else {0, 1, 4}


def _set_knobs(config: tuple[int, int, int, bool, int], itemsize: int) -> None:
    for name, value in zip(KNOBS, config, strict=True):
        setattr(_triton, name, value)
    _triton.TILE_ROWS_BYTES, _triton.TWO_PHASE_LANE_ACC_ROWS = config[1] * itemsize, config[4]


#: name -> (kind, groups, channels_last, token)
CASES = {
    "bn_contiguous": ("batch", 0, False, False),
    "bn_channels_last": ("batch", 0, True, False),
    "gn32_contiguous": ("group", 32, False, False),
    "gn32_channels_last": ("group", 32, True, False),
    "ln_contiguous": ("group", 1, False, False),
    "ln_tokens": ("token", 1, False, True),
    "rms_tokens": ("rms_token", 1, False, True),
    "bn_tokens": ("batch", 0, False, True),
    "gn32_tokens": ("group", 32, False, True),  # the token-group kernels (thirteenth session)
    "rms_contiguous": ("rms", 1, False, False),
    "rms_channels_last": ("rms", 1, True, False),
}
#: Modules of the zoo A/B'd with and without the kernels (question 3), with their options.
MODULES = {
    "frn": {},
    "evonorms0": {"num_groups": 32},
    "rmsnorm": {},
    "batchrenorm": {},
    "switchablenorm": {},
    "evonormb0": {},
    "ghostbatchnorm": {"virtual_batch_size": 32},
    "frozenbatchnorm": {},
}


#: Timed calls whose launches were still queuing when the GPU left its sleep (their GPU time
#: includes host time), of all timed calls: in the JSON's meta.
LATE = {"late": 0, "calls": 0}
#: Where the tensors live: ``--device cpu`` runs every step on the CPU under Triton's
#: interpreter (``TRITON_INTERPRET=1``), wall-clock timed: a smoke test of this script (its
#: numbers mean nothing), so that a GPU's minutes are not spent finding its bugs.
DEVICE = "cuda"


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def gpu_time(fn: Callable[[], Any], flush: torch.Tensor, repeats: int) -> float:
    """Median ms of ``fn`` on the GPU, its launches queued while the GPU sleeps (a call whose
    host work outlasts the sleep is counted in :data:`LATE`). On the CPU: wall-clock."""
    if DEVICE == "cpu":
        return host_time(fn, repeats) / 1000
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        flush.zero_()
        torch.cuda._sleep(SLEEP_CYCLES)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        LATE["late"] += start.query()  # the GPU already past the sleep: it waited on the host
        LATE["calls"] += 1
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def host_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median us of host time per call of ``fn``, the GPU kept busy so the host never waits."""
    times = []
    for _ in range(repeats):
        _sync()
        if DEVICE == "cuda":
            torch.cuda._sleep(SLEEP_CYCLES * 2)
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    _sync()
    return statistics.median(times)


def make(case: str, shape: tuple[int, ...], dtype: torch.dtype) -> dict[str, Any]:
    kind, groups, cl, token = CASES[case]
    x = torch.randn(shape, device=DEVICE).to(dtype)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    c = shape[-1] if token else shape[1]
    w = torch.rand(c, device=DEVICE, requires_grad=True)
    b = torch.rand(c, device=DEVICE, requires_grad=True)
    return {"x": x.requires_grad_(), "w": w, "b": b, "g": torch.randn_like(x), "kind": kind,
            "groups": groups}  # fmt: skip


def ours(t: dict[str, Any], grad: bool) -> Callable[[], Any]:
    x, w, b, kind, groups = t["x"], t["w"], t["b"], t["kind"], t["groups"]

    def fwd() -> torch.Tensor:
        if kind == "batch":
            return _triton.batch_norm(x, w, b, 1e-5)[0]
        if kind == "group":
            return _triton.group_norm(x, groups, w, b, 1e-5)[0]
        if kind == "rms_token":
            return _triton.rms_norm_tokens(x, w, b, 1e-5)
        if kind == "rms":
            return _triton.rms_norm(x, w, b, 1e-5)
        return _triton.layer_norm_tokens(x, w, b, 1e-5)

    if not grad:
        return lambda: _no_grad(fwd)
    return lambda: fwd().backward(t["g"])


def theirs(t: dict[str, Any], grad: bool) -> Callable[[], Any]:
    x, w, b, kind, groups = t["x"], t["w"], t["b"], t["kind"], t["groups"]
    wc, bc = (w, b) if kind == "batch" else (w.to(x.dtype), b.to(x.dtype))

    def fwd() -> torch.Tensor:
        return _triton.reference(x, wc, bc, kind, groups, 1e-5)

    if not grad:
        return lambda: _no_grad(fwd)
    return lambda: fwd().backward(t["g"])


def _no_grad(fn: Callable[[], Any]) -> Any:
    with torch.no_grad():
        return fn()


def launch_costs(repeats: int) -> dict[str, Any]:
    """Host us of one launch: a Triton kernel through ``kernel[grid](...)`` (the one-pass
    token kernel on a 4x64 tensor), through normzoo's launches (``_triton._launch``: on a GPU
    the direct launcher, Triton's binder and the compiled kernel), the same compiled kernel
    launched directly (``CompiledKernel[grid](*args)``: no argument binding, specialization or
    cache key; its error instead where this Triton's internals differ), a torch kernel
    (``add_``), and ``torch.empty_like``."""
    x = torch.randn(4, 64, device=DEVICE)
    y, (mean, rstd) = torch.empty_like(x), torch.empty(2, 4, device=DEVICE).unbind(0)
    k = _triton._kernels()

    def triton_launch() -> Any:
        return k._token_fwd[(1,)](x, y, None, None, mean, rstd, 4, 64, 1e-5, HAS_W=False,
                                  HAS_B=False, RELU=False, RB=4, DB=64, num_warps=4)  # fmt: skip

    compiled = triton_launch()  # compile
    costs: dict[str, Any] = {"triton_launch": host_time(triton_launch, repeats * 4)}

    def normzoo_launch() -> None:  # normzoo's launches: direct on a GPU (_triton._Launcher)
        _triton._launch(k._token_fwd, (1,), x, y, None, None, mean, rstd, 4, 64, 1e-5,
                        HAS_W=False, HAS_B=False, RELU=False, RB=4, DB=64, num_warps=4)  # fmt: skip

    normzoo_launch()
    costs["normzoo_launch"] = host_time(normzoo_launch, repeats * 4)
    try:  # every parameter in the signature's order, the constexprs' values included
        direct = compiled[(1, 1, 1)]
        args = (x, y, None, None, mean, rstd, 4, 64, 1e-5, False, False, False, 4, 64, False)
        y.zero_()
        direct(*args)
        torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, (64,), eps=1e-5))
        costs["compiled_launch"] = host_time(lambda: direct(*args), repeats * 4)
    except Exception as err:  # (an internal API: record why)
        costs["compiled_launch"] = f"{type(err).__name__}: {err}"
    costs["torch_add_"] = host_time(lambda: x.add_(0.0), repeats * 4)
    costs["empty_like"] = host_time(lambda: torch.empty_like(x), repeats * 4)
    return costs


def module_ab(
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    flush: torch.Tensor,
    repeats: int,
    channels_last: bool = False,
) -> dict[str, Any]:
    """One zoo module's fwd and fwd+bwd GPU and host times with the kernels
    (``NORMZOO_TRITON=all``) and without (``NORMZOO_TRITON=0``), interleaved per repeat, on a
    contiguous or channels_last input."""
    import normzoo

    m = normzoo.create(name, shape[1], **MODULES[name]).to(DEVICE)
    x = torch.randn(shape, device=DEVICE).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn_like(x)
    src, out = x.detach(), torch.empty_like(x)
    row: dict[str, Any] = {"module": name, "shape": list(shape), "dtype": str(dtype)[6:]}
    row["format"] = "channels_last" if channels_last else "contiguous"
    row["copy_ms"] = gpu_time(lambda: out.copy_(src), flush, repeats)
    calls: list[Any] = []
    originals = {point: getattr(*point) for point in _triton.entry_points()}
    for (module, entry_name), entry in originals.items():
        setattr(module, entry_name, lambda *a, f=entry: calls.append(1) or f(*a))
    fns = {
        "fwd": lambda: _no_grad(lambda: m(x)),
        "fwdbwd": lambda: torch.autograd.grad(m(x), [x, *m.parameters()], g),  # no .grad sums
    }
    # "default": the module's CUDA path without the kernels (NORMZOO_TRITON=0), which the
    # measured dispatch replaces where the kernels win
    modes = {"triton": "all", "default": "0"}
    try:
        times: dict[str, list[float]] = {f"{k}_{f}": [] for k in modes for f in fns}
        ran = {}
        for mode, env in modes.items():  # compile (the default's first call) and warm
            os.environ["NORMZOO_TRITON"] = env
            calls.clear()
            t0 = time.perf_counter()
            fns["fwdbwd"]()
            _sync()
            row[f"{mode}_first_call_s"] = time.perf_counter() - t0
            ran[mode] = bool(calls)
            fns["fwd"]()
        for _ in range(repeats):  # interleaved: one of each per round
            for mode, env in modes.items():
                os.environ["NORMZOO_TRITON"] = env
                for f, fn in fns.items():
                    times[f"{mode}_{f}"].append(gpu_time(fn, flush, 1))
        for mode, env in modes.items():
            os.environ["NORMZOO_TRITON"] = env
            row[f"{mode}_host_us_fwdbwd"] = host_time(fns["fwdbwd"], repeats)
    finally:
        for (module, entry_name), entry in originals.items():
            setattr(module, entry_name, entry)
        os.environ.pop("NORMZOO_TRITON", None)
    for key, values in times.items():
        row[f"{key}_ms"] = statistics.median(values)
    for mode in modes:
        fwd, fb = row[f"{mode}_fwd_ms"], row[f"{mode}_fwdbwd_ms"]
        row[f"{mode}_fwd_fraction"] = row["copy_ms"] / fwd
        row[f"{mode}_bwd_fraction"] = row["copy_ms"] * 1.5 / max(fb - fwd, 1e-9)
    row["triton_ran"] = ran  # expected: {"triton": True, "default": False}
    row["speedup_fwdbwd"] = row["default_fwdbwd_ms"] / row["triton_fwdbwd_ms"]
    return row


def shipped(rows: bool, itemsize: int = 4) -> tuple[int, int, int, bool, int]:
    """The configuration that normzoo ships for contiguous input or (``rows``) for rows of
    elements of ``itemsize`` bytes."""
    t = _triton
    tile, lanes = t.TILE, t.TWO_PHASE_LANE_ACC
    if rows:
        tile, lanes = t.TILE_ROWS_BYTES // itemsize, t.TWO_PHASE_LANE_ACC_ROWS
    return (t.PROGRAMS_PER_SM, tile, t.TOKEN_MIN_ROWS, t.TOKEN_ACC_ROWS, lanes)


def _on_rows(case: str) -> bool:
    """Whether ``case``'s two-phase kernels take rows (channels_last, or batch norm's tokens)."""
    kind, _, cl, token = CASES[case]
    return cl or (token and kind == "batch")


def _key(config: tuple[int, int, int, bool, int]) -> str:
    return "x".join(str(int(v)) for v in config)


def _itemsize(row: dict[str, Any]) -> int:
    return torch.empty(0, dtype=getattr(torch, row["dtype"])).element_size()


def pick(data: dict[str, Any], margin: float = 0.97) -> dict[str, int]:
    """The two-phase kernels' tile and lanes, for each layout, of the configuration whose
    fwd+bwd time over the shipped plan's has the lowest geometric mean over that layout's
    A/B rows, among those with the shipped ``PROGRAMS_PER_SM`` (one for both); the knobs
    that change (``{}``: keep the shipped plans). Contiguous input's tile is in elements, the
    rows' (channels_last and tokens) in bytes: a configuration's tile there is float32
    elements, the same bytes in each row's dtype. A layout changes only where that mean is
    below ``margin`` and every row of it has the configuration."""
    out: dict[str, int] = {}
    two_phase = [r for r in data["rows"] if _reads(r["case"]) == {0, 1, 4}]
    for rows in (False, True):
        layout = [r for r in two_phase if _on_rows(r["case"]) == rows]
        best, best_score = None, margin
        for config in CONFIGS:
            if config[0] != _triton.PROGRAMS_PER_SM:
                continue
            ratios = []
            for r in layout:
                tile = config[1] * 4 // _itemsize(r) if rows else config[1]
                key, base = _key((config[0], tile, *config[2:])), _key(shipped(rows, _itemsize(r)))
                if key != base and key in r["configs"] and base in r["configs"]:
                    ratios.append(r["configs"][key]["fwdbwd_ms"] / r["configs"][base]["fwdbwd_ms"])
            if not ratios or len(ratios) < len(layout):
                continue  # (the shipped plan itself, or one that some row lacks)
            score = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
            if score < best_score:
                best, best_score = config, score
        if best is not None and rows:
            out.update({"TILE_ROWS_BYTES": best[1] * 4, "TWO_PHASE_LANE_ACC_ROWS": int(best[4])})
        elif best is not None:
            out.update({"TILE": best[1], "TWO_PHASE_LANE_ACC": int(best[4])})
    return out


def main(argv: list[str] | None = None) -> None:
    global DEVICE
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--pick"]:  # --pick FILE: the plans to ship, as bench.py's --triton-knobs
        with open(argv[1]) as fh:
            print(" ".join(f"{k}={v}" for k, v in pick(json.load(fh)).items()))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"],
        help="cpu: a smoke test under Triton's interpreter (TRITON_INTERPRET=1)",
    )  # fmt: skip
    p.add_argument("--shapes", nargs="+", default=["256,64,64,64", "65536,1024"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--modules", nargs="*", default=list(MODULES), choices=list(MODULES))
    p.add_argument("--module-shapes", nargs="+", default=["256,64,64,64", "64,64,64,64"])
    p.add_argument(
        "--module-formats", nargs="+", default=["contiguous"],
        choices=["contiguous", "channels_last"], help="the modules' input layouts",
    )  # fmt: skip
    p.add_argument(
        "--only-modules", action="store_true", help="skip questions 1 and 2: the zoo's A/B only"
    )
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument(
        "--shipped-only", action="store_true", help="time each case on its shipped plan alone"
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    saved = {n: getattr(_triton, n) for n in (*KNOBS, "TILE_ROWS_BYTES", "TWO_PHASE_LANE_ACC_ROWS")}
    DEVICE = args.device
    if DEVICE == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--device cpu runs under Triton's interpreter: TRITON_INTERPRET=1")
        _interpreter_shim()
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (or --device cpu with TRITON_INTERPRET=1)")
    if not _triton.available():
        raise SystemExit("needs triton")
    flush = torch.empty(FLUSH_BYTES // 4 if DEVICE == "cuda" else 1, dtype=torch.int32,
                        device=DEVICE)  # fmt: skip
    launches = {} if args.only_modules else launch_costs(args.repeats)
    print("host us per launch: " + ", ".join(f"{k} {v}" for k, v in launches.items()))
    rows = []
    for shape in (tuple(int(v) for v in s.split(",")) for s in args.shapes):
        if args.only_modules:
            break
        for dtype in (getattr(torch, d) for d in args.dtypes):
            for case in args.cases:
                token, cl = CASES[case][3], CASES[case][2]
                if token != (len(shape) == 2) or (cl and len(shape) != 4):
                    continue
                t = make(case, shape, dtype)
                src, out = t["x"].detach(), torch.empty_like(t["x"])
                copy_ms = gpu_time(lambda s=src, o=out: o.copy_(s), flush, args.repeats)
                row = {"case": case, "shape": list(shape), "dtype": str(dtype)[6:],
                       "copy_ms": copy_ms, "configs": {}}  # fmt: skip
                reads = _reads(case)
                mine = shipped(_on_rows(case), t["x"].element_size())
                for config in CONFIGS:
                    unread = (i for i in range(len(KNOBS)) if i not in reads)
                    if any(config[i] != CONFIGS[0][i] for i in unread):
                        continue  # (the same kernels as another configuration's)
                    if args.shipped_only and any(config[i] != mine[i] for i in reads):
                        continue
                    _set_knobs(config, t["x"].element_size())
                    f, fb = ours(t, False), ours(t, True)
                    for fn in (f, fb):  # compile and warm
                        fn()
                    fwd_ms = gpu_time(f, flush, args.repeats)
                    fb_ms = gpu_time(fb, flush, args.repeats)
                    row["configs"]["x".join(str(int(v)) for v in config)] = {
                        "fwd_ms": fwd_ms,
                        "fwd_fraction": copy_ms / fwd_ms,
                        "fwdbwd_ms": fb_ms,
                        "bwd_fraction": copy_ms * 1.5 / max(fb_ms - fwd_ms, 1e-9),
                    }
                for name, value in saved.items():  # the shipped plans
                    setattr(_triton, name, value)
                f, fb, rf, rfb = ours(t, False), ours(t, True), theirs(t, False), theirs(t, True)
                for fn in (rf, rfb):
                    fn()
                row["torch_fwd_ms"] = gpu_time(rf, flush, args.repeats)
                row["torch_fwdbwd_ms"] = gpu_time(rfb, flush, args.repeats)
                row["host_us"] = {
                    "fwd": host_time(f, args.repeats),
                    "fwdbwd": host_time(fb, args.repeats),
                    "torch_fwd": host_time(rf, args.repeats),
                    "torch_fwdbwd": host_time(rfb, args.repeats),
                }
                rows.append(row)
                write_json(args.json, launches, rows, [])  # a step cut short keeps them
                best = max(row["configs"].items(), key=lambda kv: kv[1]["fwd_fraction"])
                print(
                    f"{case:<19} {'x'.join(map(str, shape)):<14} {row['dtype']:<8} "
                    + " ".join(
                        f"{k}: {v['fwd_fraction']:.2f}/{v['bwd_fraction']:.2f}"
                        for k, v in row["configs"].items()
                    )
                    + f"  best fwd {best[0]}  torch fwd {row['torch_fwd_ms']:.3f} ms"
                    + "  host us fwd {fwd:.0f} (torch {torch_fwd:.0f}), fwd+bwd {fwdbwd:.0f} "
                    "(torch {torch_fwdbwd:.0f})".format(**row["host_us"]),
                    flush=True,
                )
    modules: list[dict[str, Any]] = []

    def dump() -> None:
        write_json(args.json, launches, rows, modules)

    dump()
    combos = [
        (tuple(int(v) for v in s.split(",")), getattr(torch, d), fmt == "channels_last")
        for s in args.module_shapes
        for d in args.dtypes
        for fmt in args.module_formats
        if fmt == "contiguous" or s.count(",") == 3  # (channels_last: 4-d shapes)
    ]
    for shape, dtype, channels_last in combos:
        for name in args.modules:
            r = module_ab(name, shape, dtype, flush, args.repeats, channels_last)
            modules.append(r)
            dump()
            print(
                f"{name:<10} {'x'.join(map(str, shape)):<14} {r['dtype']:<8} {r['format']:<13} "
                f"triton {r['triton_fwd_fraction']:.2f}/{r['triton_bwd_fraction']:.2f} "
                f"default {r['default_fwd_fraction']:.2f}/{r['default_bwd_fraction']:.2f} "
                f"fwd+bwd x{r['speedup_fwdbwd']:.2f}  host us {r['triton_host_us_fwdbwd']:.0f}"
                f" vs {r['default_host_us_fwdbwd']:.0f}  ran {r['triton_ran']}  first call "
                f"{r['triton_first_call_s']:.1f}/{r['default_first_call_s']:.1f} s",
                flush=True,
            )
    dump()
    if _triton._disabled:  # a first call fell back to torch's kernels: the rows are not theirs
        raise SystemExit(f"the Triton kernels fell back to torch's: {_triton._disabled}")
    if LATE["late"]:
        late, calls = LATE["late"], LATE["calls"]
        print(f"gpu timing: {late} of {calls} timed calls were still queuing launches when "
              "the GPU left its sleep (their GPU times include host time)")  # fmt: skip


def _interpreter_shim() -> None:
    """The tests' fix for Triton's interpreter under numpy 2.4
    (``tests/triton_interpreter_check.py``), and the modules' dispatch serving CPU tensors to
    the kernels (as ``tests/test_triton_gpu.py`` does there)."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "tests", "triton_interpreter_check.py")
    spec = importlib.util.spec_from_file_location("triton_interpreter_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.scalar_index_for_numpy_2_4()
    _triton.serves = module.served_on_cpu  # (--device cpu: every tensor here is a CPU one)


def write_json(path: str | None, launches: dict, rows: list, modules: list) -> None:
    """The results so far (written after each module row: a step cut short keeps them)."""
    if path:
        import triton

        meta = {"torch": torch.__version__, "triton": triton.__version__,
                "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "configs": CONFIGS,
                "gpu_time_late": LATE}  # fmt: skip
        with open(path, "w") as fh:
            out = {"meta": meta, "launch_us": launches, "rows": rows, "modules": modules}
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
