"""A/B of a native kernel change: the C kernels of a git revision against the working tree's
(or another revision's), both loaded in one process and timed interleaved (a shuffled order
each round).

A change to ``normzoo/_native/batch_norm.c``, ``row_norm.c`` or ``zoo.c`` worth a few percent of a
kernel's time is a fraction of that at the module level (allocation, autograd, Python), where
a shared 2-core VM moves a fwd+bwd by 10-15% between runs: comparing module timings of two
checkouts, each in its own process, cannot resolve it. Here both versions of the library are
compiled with the flags normzoo uses, loaded side by side (``ctypes`` keeps their symbols
apart) and called on the same tensors (inputs, and a rotation of output buffers, as fresh
outputs would be: with separate tensors, the placement of their memory alone moved one
version's time by up to 8% against an identical copy's), each round in a fresh random order.
The outputs of the two versions are compared too: ``identical`` means bit for bit. Timing a
revision against itself (``--base HEAD --new HEAD``) shows the noise: within 2-3% on
(32, 64, 32, 32), up to 10% on the smaller shapes, on the 2-core VM.

The wider zoo's cases (``frn``, ``rms``, ``s0``, ``b0``, ``switchable`` on the rows; ``*_tok``
on tokens, the shape's positions as rows of C channels) run through ``zoo_kernels``' wrappers
on each version's library (their outputs allocated per call: glibc returning that memory
moved the same code 0.4-2.9x between rounds, so run them with ``MALLOC_MMAP_THRESHOLD_=
4000000000 MALLOC_TRIM_THRESHOLD_=4000000000 MALLOC_TOP_PAD_=536870912`` set), in float32 or, with
``--dtype bfloat16``, on the bfloat16 builds (``--channels-last``: the row cases on
channels_last input); so does Ghost BN on such rows (``ghost_tok``,
``batch_norm.c``'s ghost rows through ``kernels``' wrappers). ``bn_cl`` runs BatchNorm's
channels_last kernels (with ``--relu``, their fused-ReLU variants).

    python scripts/bench_kernel_ab.py --base HEAD~1
    python scripts/bench_kernel_ab.py --base main --cases bn ln --shapes 32,64,32,32
    python scripts/bench_kernel_ab.py --base HEAD~1 --cases frn s0 b0_tok --dtype bfloat16
    python scripts/bench_kernel_ab.py --new HEAD --new-flags=-mprefer-vector-width=512
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from normzoo import _native

ROOT = Path(__file__).resolve().parents[1]
#: case -> (library, groups per sample: None for batch norm, 0 for one per channel)
CASES: dict[str, tuple[str, int | None]] = {
    "bn": ("batch_norm", None),
    "in": ("row_norm", 0),
    "gn32": ("row_norm", 32),
    "ln": ("row_norm", 1),
    "bn_cl": ("batch_norm", None),  # channels_last: the positions as rows of C channels
    "ghost_tok": ("batch_norm", None),  # ghost rows: the positions as rows, 32 per batch
}
#: the wider zoo's cases: zoo.c through zoo_kernels' wrappers (see zoo_kernel_calls)
ZOO_CASES = ("frn", "rms", "s0", "b0", "switchable", "frn_tok", "rms_tok", "gn_tok", "s0_tok",
             "b0_tok")  # fmt: skip
SHAPES = ["32,64,32,32", "8,256,14,14", "128,64,8,8", "4,32,64,64"]


def prepare(
    source: str,
    name: str,
    out_dir: Path,
    headers: dict[str, str] | None = None,
    extra_flags: list[str] | None = None,
) -> tuple[list[str], Path]:
    """Write ``source`` (the text of ``<name>.c``) next to ``headers`` (file name -> text, the
    ones it includes; default: the working tree's) in ``out_dir``; the command that compiles
    it as normzoo does (with ``extra_flags`` after normzoo's), and the library it makes."""
    cc = _native._compiler()
    if cc is None:
        raise SystemExit("no C compiler found (install gcc, or set CC)")
    for header, text in (headers_at(None) if headers is None else headers).items():
        (out_dir / header).write_text(text)
    src = out_dir / f"{name}.c"
    src.write_text(source)
    lib_path = out_dir / f"{name}.so"
    return [
        cc,
        *_native._FLAGS,
        *(extra_flags or []),
        str(src),
        "-o",
        str(lib_path),
        "-lm",
    ], lib_path


def compile_all(cmds: list[list[str]], log_dir: Path) -> None:
    """Run the compile commands, as many at once as there are CPUs (normzoo's own builder)."""
    try:
        _native._run_all(cmds, str(log_dir))
    except RuntimeError as err:
        raise SystemExit(str(err)) from None


def load(lib_path: Path, name: str) -> ctypes.CDLL:
    # RTLD_LOCAL (ctypes' default): the two versions' symbols stay apart
    return _native.bind(ctypes.CDLL(str(lib_path)), name, missing_ok=True)


def source(rev: str | None, name: str) -> str:
    """The text of ``normzoo/_native/<name>`` (a ``.c`` file when ``name`` has no suffix) at
    git revision ``rev`` (None: the working tree's)."""
    rel = f"normzoo/_native/{name if '.' in name else name + '.c'}"
    if rev is None:
        return (ROOT / rel).read_text()
    done = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git show {rev}:{rel} failed: {done.stderr.strip()}")
    return done.stdout


def headers_at(rev: str | None) -> dict[str, str]:
    """The kernel headers (``normzoo/_native/*.h``) at ``rev``: none before they existed."""
    if rev is None:
        return {p.name: p.read_text() for p in (ROOT / "normzoo" / "_native").glob("*.h")}
    done = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, "normzoo/_native/"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    names = [Path(n).name for n in done.stdout.split() if n.endswith(".h")]
    return {n: source(rev, n) for n in names}


class Buffers:
    """Inputs of one case, the output buffers and the statistics: shared by both versions, so
    that neither gets better-placed memory than the other."""

    def __init__(
        self,
        shape: tuple[int, ...],
        groups: int | None,
        buffers: int,
        relu: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        n, c = shape[0], shape[1]
        length = 1
        for s in shape[2:]:
            length *= s
        gen = torch.Generator().manual_seed(0)
        self.sizes = (n, c, length)
        self.x = (torch.randn(n, c, length, generator=gen) * 2 + 0.5).to(dtype)
        self.dy = torch.randn(n, c, length, generator=gen).to(dtype)
        self.w = torch.rand(c, generator=gen) + 0.5
        self.b = torch.randn(c, generator=gen)
        self.ys = [torch.empty_like(self.x) for _ in range(buffers)]
        self.dxs = [torch.empty_like(self.x) for _ in range(buffers)]
        self.dw, self.db = torch.empty(c), torch.empty(c)
        self.groups = None if groups is None else groups or c
        self.stats = torch.empty(3, c) if groups is None else torch.empty(3, n, self.groups)
        self.partial = torch.empty(2, n, c)
        self.relu = relu
        # the fused ReLU's scratch (row kernels): a row of masked dy per thread
        row = 0 if self.groups is None or not relu else c // self.groups * length
        self.mask = torch.empty(torch.get_num_threads(), row)


def kernels(
    lib: ctypes.CDLL, buf: Buffers
) -> tuple[Callable[[int], None], Callable[[int], None], Callable[[], list[torch.Tensor]]]:
    """(forward(i), backward(i), outputs()) of one library on ``buf``: call i writes into
    output buffer i mod the number of buffers."""
    n, c, length = buf.sizes
    x, dy, w, b, dw, db = (t.data_ptr() for t in (buf.x, buf.dy, buf.w, buf.b, buf.dw, buf.db))
    ys, dxs, k = buf.ys, buf.dxs, len(buf.ys)
    m, s, v = (t.data_ptr() for t in buf.stats)
    threads = torch.get_num_threads()
    # the fused ReLU's variants take the forward's bias (and the row kernels a scratch) too
    relu, mask = buf.relu, buf.mask.data_ptr()
    if buf.groups is None:  # (the bfloat16 build's functions: the same signatures)
        sfx = "_bf16" if buf.x.dtype == torch.bfloat16 else ""
        fwd = getattr(lib, f"nz_bn_relu_forward{sfx}" if relu else f"nz_bn_forward{sfx}")
        bwd = getattr(lib, f"nz_bn_relu_backward{sfx}" if relu else f"nz_bn_backward{sfx}")

        def forward(i: int) -> None:
            fwd(x, w, b, ys[i % k].data_ptr(), m, s, v, n, c, length, 1e-5, threads)

        def backward(i: int) -> None:
            if relu:
                bwd(dy, x, w, b, m, s, dxs[i % k].data_ptr(), dw, db, n, c, length, threads)
            else:
                bwd(dy, x, w, m, s, dxs[i % k].data_ptr(), dw, db, n, c, length, threads)

    else:
        g, partial = buf.groups, buf.partial.data_ptr()
        fwd = lib.nz_row_relu_forward if relu else lib.nz_row_forward

        def forward(i: int) -> None:
            fwd(x, w, b, ys[i % k].data_ptr(), m, s, v, n, g, c // g, length, 1e-5, threads)

        def backward(i: int) -> None:
            if relu:
                lib.nz_row_relu_backward(
                    dy, x, w, b, m, s, dxs[i % k].data_ptr(), dw, db, partial, mask, n, g,
                    c // g, length, threads,
                )  # fmt: skip
            else:
                lib.nz_row_backward(
                    dy, x, w, m, s, dxs[i % k].data_ptr(), dw, db, partial, n, g, c // g,
                    length, threads,
                )  # fmt: skip

    def outputs() -> list[torch.Tensor]:
        forward(0)
        backward(0)
        return [t.clone() for t in (ys[0], buf.stats, dxs[0], buf.dw, buf.db)]

    return forward, backward, outputs


def zoo_kernel_calls(
    lib: ctypes.CDLL,
    case: str,
    x: torch.Tensor,
    dy: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
) -> tuple[Callable[[int], None], Callable[[int], None], Callable[[], list[torch.Tensor]]]:
    """(forward(i), backward(i), outputs()) of a wider-zoo case on ``lib``: ``x`` and ``dy``
    ``(N, C, L)`` for the row cases, ``(R, C)`` for the ``*_tok`` ones."""
    from normzoo._native import zoo_kernels as zk

    c = x.shape[1]
    v, tau = torch.linspace(-1.0, 1.0, c), torch.linspace(-0.2, 0.2, c)
    mw, vw = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.3, 0.1, 0.2])
    groups = 4 if c % 4 == 0 else 1
    every = (True, True, True, True, True)
    saved: dict[str, Any] = {}

    def call(fn: Callable[[], Any]) -> Any:
        """``fn()`` with the wrappers calling this version's functions (restored after)."""
        real = zk._lib
        zk._lib = lambda: lib
        try:
            return fn()
        finally:
            zk._lib = real

    def fwd_call() -> Any:
        if case == "frn":
            return zk.frn_forward(x, w, b, tau, 1e-6)
        if case == "rms":
            return zk.rms_forward(x, w, b, 1e-6)
        if case == "s0":
            return zk.s0_forward(x, v, w, b, groups, 1e-5)
        if case == "b0":
            return zk.b0_forward(x, v, w, b, None, 1e-5)
        if case == "switchable":
            return zk.switchable_forward(x, mw, vw, w, b, None, None, 1e-5)
        if case == "frn_tok":
            return zk.frn_tokens_forward(x, w, b, tau, 1e-6)
        if case == "rms_tok":
            return zk.rms_tokens_forward(x, w, b, 1e-6)
        if case in ("gn_tok", "s0_tok"):
            op = zk.TOKENS_GN if case == "gn_tok" else zk.TOKENS_S0
            return zk.group_tokens_forward(op, x, v, w, b, groups, 1e-5)
        mean, var = zk.column_stats(x)  # b0_tok
        s_b = torch.sqrt(var + 1e-5)
        return zk.b0_tokens_forward(x, v, s_b, w, b, 1e-5), mean, s_b

    def bwd_call(f: Any) -> Any:
        if case == "frn":
            return zk.frn_backward(dy, x, f[3], f[1], f[2], w, 1e-6, every[:4])
        if case == "rms":
            return zk.rms_backward(dy, x, f[3], f[1], f[2], w, 1e-6, every[:3])
        if case == "s0":
            return zk.s0_backward(dy, x, f[2], f[1], w, groups, 1e-5, every[:4])
        if case == "b0":
            return zk.b0_backward(dy, x, f[3], f[1], True, every[:4])
        if case == "switchable":
            return zk.switchable_backward(dy, x, f[4], f[1], f[2], mw, vw, w, None, None, 1e-5,
                                          every)  # fmt: skip
        if case == "frn_tok":
            return zk.frn_tokens_backward(dy, x, w, b, tau, 1e-6, True)
        if case == "rms_tok":
            return zk.rms_tokens_backward(dy, x, w, f[1], every[:3])
        if case in ("gn_tok", "s0_tok"):
            op = zk.TOKENS_GN if case == "gn_tok" else zk.TOKENS_S0
            return zk.group_tokens_backward(op, dy, x, v, w, f[1], f[2], every[:4])
        return zk.b0_tokens_backward(dy, x, v, f[2], w, f[1], 1e-5, every[:4])  # b0_tok

    def forward(i: int) -> None:
        saved["f"] = call(fwd_call)

    def backward(i: int) -> None:
        saved["b"] = call(lambda: bwd_call(saved["f"]))

    def outputs() -> list[torch.Tensor]:
        forward(0)
        backward(0)
        flat = [saved["f"]] if isinstance(saved["f"], torch.Tensor) else list(saved["f"])
        flat += list(saved["b"])
        return [t.clone() for t in flat if isinstance(t, torch.Tensor)]

    return forward, backward, outputs


def _on(lib: ctypes.CDLL, fn: Callable[[], Any]) -> Any:
    """``fn()`` with ``kernels``' wrappers calling ``lib``'s functions (restored after)."""
    from normzoo._native import kernels as k

    real = k._fn
    k._fn = lambda _lib_name, name: getattr(lib, name)
    try:
        return fn()
    finally:
        k._fn = real


def bn_cl_kernel_calls(
    lib: ctypes.CDLL,
    x: torch.Tensor,
    dy: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    relu: bool,
) -> tuple[Callable[[int], None], Callable[[int], None], Callable[[], list[torch.Tensor]]]:
    """(forward(i), backward(i), outputs()) of BatchNorm's channels_last kernels on ``lib``
    (``x`` and ``dy`` channels_last), with the ReLU fused where ``relu``."""
    from normzoo._native import kernels as k

    saved: dict[str, Any] = {}

    def forward(i: int) -> None:
        saved["f"] = _on(lib, lambda: k.batch_norm_forward_cl_unchecked(x, w, b, 1e-5, True,
                                                                        relu=relu))  # fmt: skip

    def backward(i: int) -> None:
        stats = saved["f"][1]
        saved["b"] = _on(lib, lambda: k.batch_norm_backward_cl_unchecked(
            dy, x, w, stats, (True,) * 3, relu=relu, bias=b))  # fmt: skip

    def outputs() -> list[torch.Tensor]:
        forward(0)
        backward(0)
        return [t.clone() for t in (*saved["f"], *saved["b"]) if t is not None]

    return forward, backward, outputs


def ghost_kernel_calls(
    lib: ctypes.CDLL, x: torch.Tensor, dy: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> tuple[Callable[[int], None], Callable[[int], None], Callable[[], list[torch.Tensor]]]:
    """(forward(i), backward(i), outputs()) of Ghost BN on token rows ``x`` ``(R, C)`` in
    virtual batches of 32 rows, through ``kernels``' wrappers on ``lib``."""
    from normzoo._native import kernels as k

    saved: dict[str, Any] = {}

    def forward(i: int) -> None:
        saved["f"] = _on(lib, lambda: k.ghost_rows_forward(x, w, b, 1e-5, 32, True))

    def backward(i: int) -> None:
        stats = saved["f"][1]
        saved["b"] = _on(lib, lambda: k.ghost_rows_backward(dy, x, w, stats, 32, (True,) * 3))

    def outputs() -> list[torch.Tensor]:
        forward(0)
        backward(0)
        return [t.clone() for t in (*saved["f"], *saved["b"])]

    return forward, backward, outputs


def run_case(
    libs: dict[str, dict[str, ctypes.CDLL]],
    case: str,
    shape: tuple[int, ...],
    rounds: int,
    buffers: int,
    relu: bool = False,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> dict[str, Any]:
    if case == "bn_cl":
        buf = Buffers(shape, 0, 1)
        # (N, C, L) -> channels_last (N, C, L, 1): memory (N, L, C)
        x, dy = (t.unsqueeze(-1).contiguous(memory_format=torch.channels_last)
                 for t in (buf.x, buf.dy))  # fmt: skip
        runs = {v: bn_cl_kernel_calls(libs[v]["batch_norm"], x, dy, buf.w, buf.b, relu)
                for v in ("base", "new")}  # fmt: skip
    elif case == "ghost_tok":
        buf = Buffers(shape, 0, 1)
        x, dy = (t.transpose(1, 2).reshape(-1, t.shape[1]).contiguous().to(dtype)
                 for t in (buf.x, buf.dy))  # fmt: skip
        runs = {v: ghost_kernel_calls(libs[v]["batch_norm"], x, dy, buf.w, buf.b)
                for v in ("base", "new")}  # fmt: skip
    elif case in ZOO_CASES:
        buf = Buffers(shape, 0, 1)
        x, dy = buf.x, buf.dy
        if case.endswith("_tok"):  # the positions as rows of C channels
            x, dy = (t.transpose(1, 2).reshape(-1, t.shape[1]).contiguous() for t in (x, dy))
        elif channels_last:  # (N, C, L) in memory (N, L, C)
            x, dy = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (x, dy))
        x, dy = x.to(dtype), dy.to(dtype)
        runs = {v: zoo_kernel_calls(libs[v]["zoo"], case, x, dy, buf.w, buf.b)
                for v in ("base", "new")}  # fmt: skip
    else:
        lib_name, groups = CASES[case]
        if dtype != torch.float32 and groups is not None:
            raise SystemExit(f"{case}: row_norm.c has no bfloat16 build (--dtype float32)")
        buf = Buffers(shape, groups, buffers, relu, dtype)
        runs = {v: kernels(libs[v][lib_name], buf) for v in ("base", "new")}
    pairs = zip(runs["base"][2](), runs["new"][2](), strict=True)
    same = [torch.equal(a, b) for a, b in pairs]
    times: dict[tuple[str, str], list[float]] = {
        (v, p): [] for v in ("base", "new") for p in ("fwd", "bwd")
    }
    rng = random.Random(0)
    for r in range(rounds + 3):
        order = ["base", "new"]
        rng.shuffle(order)
        for v in order:
            fwd, bwd, _ = runs[v]
            t0 = time.perf_counter()
            fwd(r)
            t1 = time.perf_counter()
            bwd(r)
            t2 = time.perf_counter()
            if r >= 3:  # warm-up rounds dropped
                times[(v, "fwd")].append((t1 - t0) * 1e6)
                times[(v, "bwd")].append((t2 - t1) * 1e6)
    row: dict[str, Any] = {
        "case": case
        + ("+relu" if relu else "")
        + ("_cl" if channels_last and case in ZOO_CASES and not case.endswith("_tok") else ""),
        "shape": list(shape),
        "identical": all(same),
    }
    for p in ("fwd", "bwd"):
        base, new = statistics.median(times[("base", p)]), statistics.median(times[("new", p)])
        row[f"base_{p}_us"], row[f"new_{p}_us"] = round(base, 1), round(new, 1)
        row[f"{p}_ratio"] = round(new / base, 3)
    return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="HEAD", help="git revision to compare against")
    p.add_argument("--new", default=None, help="git revision to time (default: the working tree)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=[*CASES, *ZOO_CASES])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="of x and dy in bn, the wider zoo's cases and ghost_tok")  # fmt: skip
    p.add_argument("--shapes", nargs="+", default=SHAPES)
    p.add_argument("--rounds", type=int, default=41)
    p.add_argument("--buffers", type=int, default=4, help="output buffers to rotate through")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--relu", action="store_true", help="the kernels with the ReLU fused")
    p.add_argument("--channels-last", action="store_true",
                   help="the wider zoo's row cases on channels_last input")  # fmt: skip
    p.add_argument("--new-flags", nargs="+", default=[], metavar="FLAG",
                   help="compiler flags added to the new build's (an A/B of a flag: "
                   "--base HEAD --new HEAD --new-flags=-mprefer-vector-width=512)")  # fmt: skip
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("the native kernels are built on Linux only")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = sorted({"zoo" if c in ZOO_CASES else CASES[c][0] for c in args.cases})
    dtype = getattr(torch, args.dtype)
    libs: dict[str, dict[str, ctypes.CDLL]] = {"base": {}, "new": {}}
    with tempfile.TemporaryDirectory() as tmp:
        made: dict[tuple[str, str], tuple[list[str], Path]] = {}
        for name in names:
            for version, rev in (("base", args.base), ("new", args.new)):
                out = Path(tmp) / version
                out.mkdir(exist_ok=True)
                flags = args.new_flags if version == "new" else []
                made[version, name] = prepare(source(rev, name), name, out, headers_at(rev), flags)
        compile_all([cmd for cmd, _ in made.values()], Path(tmp))  # the builds at once
        for (version, name), (_, lib_path) in made.items():
            libs[version][name] = load(lib_path, name)
        shapes = [tuple(int(s) for s in spec.split(",")) for spec in args.shapes]
        # a group count must divide the channels (GroupNorm's 32 groups: not on 16 channels)
        runs = [
            (c, s)
            for s in shapes
            for c in args.cases
            if c in ZOO_CASES or s[1] % max(CASES[c][1] or 1, 1) == 0
        ]
        rows = [
            run_case(libs, c, s, args.rounds, args.buffers, args.relu, dtype, args.channels_last)
            for c, s in runs
        ]
    new = (args.new or "the working tree") + "".join(f" {f}" for f in args.new_flags)
    print(f"base {args.base} against {new}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians of {args.rounds} rounds, in us")  # fmt: skip
    print("| case | shape | base fwd | new fwd | ratio | base bwd | new bwd | ratio | outputs |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(
            f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {r['base_fwd_us']} | "
            f"{r['new_fwd_us']} | {r['fwd_ratio']:.2f} | {r['base_bwd_us']} | "
            f"{r['new_bwd_us']} | {r['bwd_ratio']:.2f} | "
            f"{'identical' if r['identical'] else 'differ'} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"base": args.base, "new_flags": args.new_flags, "rows": rows}, indent=1)
            + "\n"
        )
    return rows


if __name__ == "__main__":
    main()
