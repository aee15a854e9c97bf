"""Kernel launches per module call on normzoo's Triton paths, counted on the CPU.

    python scripts/triton_launches.py

Each Triton launch costs host time on a GPU, and so does each torch op (a CUDA kernel launch
each): the tenth session's H200 run found that host time, not the kernels, decides where the
Triton paths win. This counts both for one forward (no autograd) and one forward + backward
of each module on its Triton path (``NORMZOO_TRITON=all``), with the kernels emulated in torch
(``tests/triton_emulation.py``: their launches are counted, their inner ops are not) and a
``TorchDispatchMode`` counting every other op that launches work (views, shape queries and
allocations excluded). Whole module calls: the modules' own ops (running-statistics updates)
and the backward's seed are included. No GPU is needed; the counts are the GPU's launches.

``--time`` also times each call's host work on this CPU with the kernels as no-ops: the
Python and the torch ops on a tiny tensor (medians of ``--repeats`` rounds of 200 calls, one
thread), a proxy for what a GPU's host spends besides Triton's own launch cost. ``--jit``
(triton 3.4+) times the same calls with the kernels compiled for an sm_90 GPU
(``scripts/triton_compile_check.py``'s stand-in driver) and each launch run up to the
driver's launcher, which does nothing: through Triton's own launch path (``kernel[grid]``:
its binder, cache key, lookup, global-variable check and launch metadata per launch), then
through normzoo's direct launcher (``_triton._Launcher``: the binder and a lookup). Each
``per launch`` column is that path's cost per Triton launch (the extra time of fwd and
fwd+bwd over the no-op kernels', over their launches).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the kernels' torch emulation
import triton_emulation  # noqa: E402

import normzoo  # noqa: E402
from normzoo.norms import _triton  # noqa: E402

#: (name, options, input shape); a name ending in "_cl": the input channels_last
CASES = [
    ("bn", {}, (8, 16, 6, 6)),
    ("gn", {"num_groups": 4}, (8, 16, 6, 6)),
    ("in", {}, (8, 16, 6, 6)),
    ("ln", {"channels_last": True}, (8, 6, 16)),
    ("rms", {}, (8, 16, 6, 6)),
    ("frn", {}, (8, 16, 6, 6)),
    ("evonorms0", {"num_groups": 4}, (8, 16, 6, 6)),
    ("frozenbatchnorm", {}, (8, 16, 6, 6)),
    ("batchrenorm", {}, (8, 16, 6, 6)),
    ("evonormb0", {}, (8, 16, 6, 6)),
    ("ghostbatchnorm", {"virtual_batch_size": 4}, (8, 16, 6, 6)),
    ("switchablenorm", {}, (8, 16, 6, 6)),
    # channels_last: the group norms' two-phase kernels (the coefficient kernel's other side)
    ("gn_cl", {"num_groups": 4}, (8, 16, 6, 6)),
    ("evonorms0_cl", {"num_groups": 4}, (8, 16, 6, 6)),
]
#: Ops that launch no kernel (views, metadata, allocation).
FREE = (
    "aten::detach", "aten::view", "aten::unbind", "aten::select", "aten::alias",
    "aten::_unsafe_view", "aten::reshape", "aten::as_strided", "aten::slice", "aten::t",
    "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::permute", "aten::empty",
    "aten::empty_like", "aten::empty_strided", "aten::is_same_size", "aten::result_type",
)  # fmt: skip


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.inside = 0  # >0 while an emulated kernel runs
        self.triton = 0
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket._qualified_op_name
        if not self.inside and not name.startswith(FREE):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def _counting_kernels(counter: _Counter) -> type:
    """The emulated kernels, each launch counted (and its inner ops not)."""

    def wrap(kernel: Any) -> Any:
        class Launch:
            def __getitem__(self, grid: tuple[int, ...]) -> Any:
                run = kernel[grid]

                def call(*args: Any, **kwargs: Any) -> None:
                    counter.triton += 1
                    counter.inside += 1
                    try:
                        run(*args, **kwargs)
                    finally:
                        counter.inside -= 1

                return call

        return Launch()

    names = [n for n in vars(triton_emulation.Kernels) if n.startswith("_") and n[1] != "_"]
    return type("Counted", (), {n: wrap(getattr(triton_emulation.Kernels, n)) for n in names})


def _host_us(m: torch.nn.Module, x: torch.Tensor, grad: bool, repeats: int) -> float:
    """Median microseconds per call of ``m(x)`` (``grad``: and its backward)."""
    seed = torch.ones(x.shape)

    def call() -> None:
        if grad:
            m(x).backward(seed)
        else:
            with torch.no_grad():
                m(x)

    for _ in range(50):
        call()
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(200):
            call()
        rounds.append((time.perf_counter() - start) / 200 * 1e6)
    return statistics.median(rounds)


def _jit_host_us(m: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """:func:`_host_us` of fwd and fwd+bwd with each kernel launched through Triton's
    ``kernel[grid](...)`` and through normzoo's direct launcher (``_triton._Launcher``), the
    kernels compiled for sm_90 and each launch ended at the driver's launcher
    (``triton_compile_check.stand_in_launches``: everything before it runs)."""
    from triton_compile_check import stand_in_launches

    out = {}
    with stand_in_launches(90, record=False):
        m(x).sum().backward()  # compiles the variants
        with torch.no_grad():
            m(x)
        for path, direct in (("jit", False), ("direct", True)):
            _triton.DIRECT_LAUNCH = direct
            try:
                out[f"{path}_fwd"] = _host_us(m, x, False, repeats)
                out[f"{path}_fwdbwd"] = _host_us(m, x, True, repeats)
            finally:
                _triton.DIRECT_LAUNCH = True
    return out


class _Noop:
    """A kernel that launches nothing."""

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        return lambda *args, **kwargs: None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", action="store_true", help="list each call's torch ops")
    p.add_argument("--time", action="store_true", help="time each call's host work too")
    p.add_argument("--repeats", type=int, default=7, help="rounds of --time (default 7)")
    p.add_argument("--jit", action="store_true", help="with --time: Triton's launch path too")
    args = p.parse_args()
    real = _triton._kernels
    os.environ["NORMZOO_TRITON"] = "all"
    os.environ["NORMZOO_NATIVE"] = "0"  # (the CPU's own kernels come first)
    counter = _Counter()
    kernels = _counting_kernels(counter)
    _triton._kernels = lambda: kernels  # type: ignore[assignment]
    _triton.serves = lambda x, *params: True  # type: ignore[assignment]  # CPU tensors too
    names = [n for n in vars(kernels) if n.startswith("_") and n[1] != "_"]
    noop = type("Noop", (), {n: _Noop() for n in names})
    head = f"{'module':<16} {'fwd: Triton + torch':>20} {'fwd+bwd: Triton + torch':>24}"
    head += f" {'host us fwd':>12} {'fwd+bwd':>8}" if args.time else ""
    jit = f" {'jit fwd':>8} {'fwd+bwd':>8} {'per launch':>10}"
    jit += f" {'direct':>8} {'fwd+bwd':>8} {'per launch':>10}"
    print(head + (jit if args.jit else ""))
    if args.time:
        torch.set_num_threads(1)
    for name, options, shape in CASES:
        c = shape[-1] if options.get("channels_last") else shape[1]
        m = normzoo.create(name.removesuffix("_cl"), c, **options)
        x = torch.randn(shape)
        if name.endswith("_cl"):
            x = x.to(memory_format=torch.channels_last)
        x.requires_grad_()
        m(x).sum().backward()  # the first call of each kind runs once outside the count
        with torch.no_grad():
            m(x)
        m.zero_grad(set_to_none=True)  # as optimizers leave them: no accumulation counted
        x.grad = None
        counts = []
        for grad in (False, True):
            counter.triton, counter.ops = 0, collections.Counter()
            with counter:
                if grad:
                    y = m(x)
                    y.backward(torch.ones_like(y))
                else:
                    with torch.no_grad():
                        m(x)
            counts.append(f"{counter.triton} + {sum(counter.ops.values())}")
        times = ""
        if args.time:
            _triton._kernels = lambda: noop  # type: ignore[assignment]
            host = [_host_us(m, x, grad, args.repeats) for grad in (False, True)]
            _triton._kernels = lambda: kernels  # type: ignore[assignment]
            times = f" {host[0]:>12.1f} {host[1]:>8.1f}"
        if args.time and args.jit:
            _triton._kernels = real  # type: ignore[assignment]
            jit = _jit_host_us(m, x, args.repeats)
            _triton._kernels = lambda: kernels  # type: ignore[assignment]
            launches = int(counts[0].split()[0]) + int(counts[1].split()[0])
            for path in ("jit", "direct"):
                fwd, both = jit[f"{path}_fwd"], jit[f"{path}_fwdbwd"]
                each = (fwd - host[0] + both - host[1]) / launches
                times += f" {fwd:>8.1f} {both:>8.1f} {each:>10.1f}"
        print(f"{name:<16} {counts[0]:>20} {counts[1]:>24}{times}")
        if args.ops:
            print("   ", dict(counter.ops.most_common()))


if __name__ == "__main__":
    main()
