"""The Triton kernels' arithmetic, run through ``normzoo.norms._triton``'s functions on CPU
tensors, against torch's functional forms: outputs, input and parameter gradients, batch
statistics, layouts; one-pass and two-phase kernels, odd sizes, 1-d to 3-d spatial, ReLU,
small tiles (many chunks per set).

As a script (``tests/test_triton.py`` runs it in a subprocess with ``TRITON_INTERPRET=1``,
which must be set before ``triton`` is imported) it checks the Triton code under Triton's
interpreter; :func:`check` with ``tests/triton_emulation.py``'s kernels patched in checks the
Python orchestration everywhere, triton installed or not. Prints one line per failing case and
``cases N fails F``; the script's exit status is 1 on any failure. ``--shard I/N`` runs every
N-th case from the I-th (the test runs two shards at once, one per core).
"""

import contextlib
import functools
import sys
from collections.abc import Iterator

import torch

from normzoo.norms import _triton as T
from normzoo.norms import _triton_zoo as Z
from normzoo.norms._kernels import channels_last_format


def scalar_index_for_numpy_2_4() -> None:
    """Triton's interpreter (3.6) turns a scalar into a Python int with ``int(array)`` on a
    one-element array, which numpy 2.4 refuses (a loop bound such as ``range(s0, s_end)``
    then fails): read the element instead. Interpreter only; the compiled kernels never see
    it."""
    from triton.runtime import interpreter

    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "normzoo_shim", False):
        return

    def patched(tensor: object, scope: object) -> None:
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched.normzoo_shim = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patched


def served_on_cpu(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """:func:`_triton.serves` without its device and size checks, for runs on CPU tensors
    under the interpreter (``tests/test_triton_gpu.py``, ``scripts/gpu_triton_ab.py
    --device cpu``)."""
    layout = x.is_contiguous() or channels_last_format(x) is not None
    return x.dtype in T.DTYPES and x.dim() >= 2 and layout and T.available()


def _shard(argv: list[str]) -> tuple[int, int]:
    """``--shard I/N`` from the arguments, else ``(0, 1)`` (every case)."""
    if "--shard" not in argv:
        return 0, 1
    index, count = (int(v) for v in argv[argv.index("--shard") + 1].split("/"))
    if not 0 <= index < count:
        raise SystemExit(f"--shard I/N needs 0 <= I < N, got {index}/{count}")
    return index, count


def main() -> int:
    shard = _shard(sys.argv[1:])
    scalar_index_for_numpy_2_4()
    torch.manual_seed(0)
    target, lanes = T._target_programs, (T.TWO_PHASE_LANE_ACC, T.TWO_PHASE_LANE_ACC_ROWS)
    T._target_programs = lambda x: 64  # several chunks per set on the small shapes below
    # --lane-acc [1|2]: one of the two-phase kernels' per-lane variants on both layouts
    # (_triton.TWO_PHASE_LANE_ACC and _ROWS: 1 Welford lanes, the flag's default; 2 shifted
    # sums); without it, each layout's shipped variant
    if "--lane-acc" in sys.argv[1:]:
        after = sys.argv[sys.argv.index("--lane-acc") + 1 :]
        forced = int(after[0]) if after and after[0].isdigit() else 1
        T.TWO_PHASE_LANE_ACC = T.TWO_PHASE_LANE_ACC_ROWS = forced
    a, b = T.TWO_PHASE_LANE_ACC, T.TWO_PHASE_LANE_ACC_ROWS
    print(f"lane_acc {a}" if a == b else f"lane_acc {a} (rows {b})")
    try:
        return 1 if check(shard, quick="--quick" in sys.argv[1:]) else 0
    finally:
        T._target_programs = target
        T.TWO_PHASE_LANE_ACC, T.TWO_PHASE_LANE_ACC_ROWS = lanes


def check(shard: tuple[int, int] = (0, 1), quick: bool = False) -> int:
    """Run every case (``shard`` ``(I, N)``: every N-th from the I-th) through ``T``'s
    functions; the number of failing cases. ``quick``: the two-phase kernels' cases on the
    small shapes (batch norm, and channels_last input), with parameters, and the large-mean
    check: what ``--lane-acc`` changes, in a minute or two."""
    index, count = shard
    tiles = (T.TILE, T.TILE_ROWS_BYTES)  # the shipped tiles, restored after the small ones
    cases = []
    for shape in [(4, 6, 5, 7), (3, 8, 33), (2, 4, 3, 4, 5), (16, 12), (2, 8, 70, 70)]:
        for kind, groups in [("batch", 0), ("group", 2), ("group", 1), ("group", shape[1])]:
            for cl in [False, True]:
                if cl and len(shape) not in (4, 5):
                    continue
                for affine, relu in [(True, False), (False, False), (True, True)]:
                    cases.append((shape, kind, groups, cl, affine, relu))
    # group norm of (N, C) tokens (the token-group kernels): groups of 1 to 125 channels,
    # counts that are not powers of two, several tiles of rows
    for shape, groups in [((33, 64), 32), ((130, 24), 3), ((5, 96), 32), ((7, 1000), 8)]:
        for affine, relu in [(True, False), (False, False), (True, True)]:
            cases.append((shape, "group", groups, False, affine, relu))
    cases.append(((3, 40), "group", 5, False, True, False))
    for d in [(16, 12), (5, 3, 40), (7, 1000)]:
        for affine, relu in [(True, False), (False, True)]:
            cases.append((d, "token", 1, False, affine, relu))
        for affine in (True, False):
            cases.append((d, "rms_token", 1, False, affine, False))
    # the zoo's group-structured kinds: channels-first RMSNorm (one pass, or two phases for
    # the large shape and channels_last), FRN + TLU and EvoNorm-S0 (one pass, contiguous)
    for shape, s0_groups in [((4, 6, 5, 7), 3), ((3, 8, 33), 4), ((2, 4, 3, 4, 5), 2)]:
        for affine in (True, False):
            cases.append((shape, "frn", shape[1], False, affine, False))
            cases.append((shape, "s0", s0_groups, False, affine, False))
    cases.append(((2, 8, 70, 70), "frn", 8, False, True, False))
    cases.append(((2, 8, 70, 70), "s0", 8, False, True, False))
    # FRN on the two-phase kernels (the TLU flag): channels_last, and positions past one pass
    for shape in [(4, 6, 5, 7), (2, 4, 3, 4, 5), (2, 8, 70, 70)]:
        for affine in (True, False):
            cases.append((shape, "frn", shape[1], True, affine, False))
    cases.append(((2, 3, 100, 100), "frn", 3, False, True, False))
    cases.append(((2, 8, 70, 70), "frn", 8, True, True, False, 1024))
    # EvoNorm-S0 on them too (the SWISH flag): channels_last, and groups past one pass
    for shape, s0_groups in [((4, 6, 5, 7), 3), ((2, 4, 3, 4, 5), 2), ((2, 8, 70, 70), 4)]:
        for affine in (True, False):
            cases.append((shape, "s0", s0_groups, True, affine, False))
    cases.append(((2, 8, 70, 70), "s0", 2, False, True, False))
    cases.append(((2, 8, 70, 70), "s0", 4, True, True, False, 1024))
    # FRN + TLU (one channel a group) and EvoNorm-S0 over (N, C) tokens: the token-group
    # kernels' flags; several tiles of rows, counts that are not powers of two
    for shape, s0_groups in [((33, 64), 8), ((130, 24), 3), ((7, 1000), 8), ((5, 96), 1)]:
        for affine in (True, False):
            cases.append((shape, "frn", shape[1], False, affine, False))
            cases.append((shape, "s0", s0_groups, False, affine, False))
    for shape in [(4, 6, 5, 7), (3, 8, 33), (2, 4, 3, 4, 5), (2, 8, 70, 70)]:
        for cl in [False, True] if len(shape) in (4, 5) else [False]:
            for affine in (True, False):
                cases.append((shape, "rms", 1, cl, affine, False))
    # the large shape again with small tiles: many chunks per set, several tiles per program
    cases += [
        (*c, 1024)
        for c in cases
        if c[0] == (2, 8, 70, 70) and c[4] and not c[5] and c[1] not in ("frn", "s0")
    ]
    if quick:
        small = {(4, 6, 5, 7), (3, 8, 33)}
        cases = [c for c in cases if c[0] in small and (c[1] == "batch" or c[3]) and c[4]]
    fails = 0
    numbered = list(enumerate(cases))[index::count]
    cases = [case for _, case in numbered]
    for number, (shape, kind, groups, cl, affine, relu, *tile) in numbered:
        torch.manual_seed(number)  # each case its own data, however the cases are sharded
        T.TILE, T.TILE_ROWS_BYTES = (tile[0], tile[0] * 4) if tile else tiles
        c = shape[-1] if kind in ("token", "rms_token") else shape[1]
        x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).float()
        if kind == "frn":  # ties y == tau (x = 0, b = tau): torch.maximum halves the gradient
            x.view(-1)[:: max(1, x.numel() // 64)] = 0.0
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        if cl:
            x = x.to(memory_format=fmt)
        w = (torch.randn(c) * 0.5 + 1).requires_grad_() if affine else None
        b = (torch.randn(c) * 0.5).requires_grad_() if affine else None
        # FRN's tau, EvoNorm-S0's v
        p = (torch.randn(c) * 0.5 + (1 if kind == "s0" else 0)).requires_grad_()
        if kind == "frn" and affine:  # (the zeros above meet b = tau in half the channels)
            b.data[: c // 2] = p.data[: c // 2]
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        p2 = p.detach().clone().requires_grad_()
        if kind == "batch":
            y1, mean, var = T.batch_norm(x1, w, b, 1e-5, relu)
        elif kind == "group":
            y1, mean, var = T.group_norm(x1, groups, w, b, 1e-5, relu)
        elif kind == "token":
            y1 = T.layer_norm_tokens(x1, w, b, 1e-5, relu)
        elif kind == "rms":
            y1 = T.rms_norm(x1, w, b, 1e-5)
        elif kind == "frn":
            y1 = T.filter_response_norm(x1, w, b, p, 1e-5)
        elif kind == "s0":
            y1 = T.evonorm_s0(x1, p, groups, w, b, 1e-5)
        else:
            y1 = T.rms_norm_tokens(x1, w, b, 1e-5)
        w2 = w.detach().clone().requires_grad_() if affine else None
        b2 = b.detach().clone().requires_grad_() if affine else None
        extra = p2 if kind in ("frn", "s0") else None
        y2 = T.reference(x2, w2, b2, kind, groups, 1e-5, extra)
        y2 = torch.relu(y2) if relu else y2
        g = torch.randn_like(y2)
        y1.backward(g)
        y2.backward(g)
        # (x.grad sums of ~10k terms: float32 rounding of the sums reaches ~1e-4 there)
        # (x.grad relative to its size: groups of two values give gradients of ~1e3)
        gx = x2.grad.abs().max().item()
        errs = [(y1 - y2).abs().max().item(), (x1.grad - x2.grad).abs().max().item() / (1 + gx)]
        if affine:
            scale = 1 + w2.grad.abs().max().item() + b2.grad.abs().max().item()
            errs += [((w.grad - w2.grad).abs().max() / scale).item()]
            errs += [((b.grad - b2.grad).abs().max() / scale).item()]
        if extra is not None:
            errs += [((p.grad - p2.grad).abs().max() / (1 + p2.grad.abs().max())).item()]
        if kind == "batch":
            v, m = torch.var_mean(x.double(), [0, *range(2, x.dim())], correction=0)
        if kind == "group":
            v, m = torch.var_mean(x.double().reshape(shape[0] * groups, -1), 1, correction=0)
        if kind in ("batch", "group"):
            errs += [(mean.double() - m).abs().max().item()]
            errs += [((var.double() - v).abs().max() / v.max().clamp_min(1e-6)).item()]
        kept = not cl or y1.is_contiguous(memory_format=fmt)
        tol = 1e-2 if kind == "group" and groups == c and len(shape) == 2 else 1e-4
        if max(errs) > tol or not kept:  # (groups == C on (N, C): one value per set)
            fails += 1
            print(f"FAIL {shape} {kind} groups={groups} cl={cl} affine={affine} relu={relu}")
            print("    tile", tile, "errors", errs)
    T.TILE, T.TILE_ROWS_BYTES = tiles
    checks = (check_renorm, check_switchable, check_switchable_offset, check_b0, check_ghost)
    checks = (*checks, check_frozen, check_large_mean)
    if quick:  # inputs near 1e4 through the statistics of batch and group norm (a shard each)
        kinds = [("batch", 0), ("group", 2)]
        checks = tuple(functools.partial(check_large_mean, [k]) for k in kinds)
    for number, extra_check in list(enumerate(checks))[index::count]:
        torch.manual_seed(10_000 + number)
        more_cases, more_fails = extra_check()
        cases += more_cases
        fails += more_fails
    if T._disabled is not None:  # a first call failed and fell back to torch's kernels
        print("FELL BACK:", T._disabled)
        fails += 1
    print(f"cases {len(cases)} fails {fails}")
    return fails


#: The zoo's shapes: odd sizes (masks), 1-d to 3-d spatial, and one with several chunks per set.
ZOO_SHAPES = [(4, 6, 5, 7), (3, 8, 33), (2, 4, 3, 4, 5), (2, 8, 70, 70)]


def _layouts(shape: tuple[int, ...]) -> list[bool]:
    """channels_last too where the input is 4-d."""
    return [False, True] if len(shape) == 4 else [False]


def _input(shape: tuple[int, ...], cl: bool, spread: float = 0.0) -> torch.Tensor:
    """``x`` ~ 3 N(0, 1) + 1 in float32, plus per-(sample, channel) offsets of scale
    ``spread`` (so IN, LN, BN and virtual-batch statistics differ); channels_last with ``cl``."""
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).float()
    if spread:
        x += torch.randn(*shape[:2], *[1] * (len(shape) - 2)) * spread
    return x.to(memory_format=torch.channels_last) if cl else x


def _affine(c: int, affine: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if not affine:
        return None, None
    return torch.randn(c) * 0.5 + 1, torch.randn(c) * 0.5


def _twins(*tensors: torch.Tensor | None) -> list[list[torch.Tensor | None]]:
    """Two independent leaf copies of ``tensors`` (``None`` kept): ours and the reference's."""
    return [[t.clone().requires_grad_() if t is not None else None for t in tensors]
            for _ in range(2)]  # fmt: skip


def _compare(label: str, ys: tuple, leaves: list, errs: list[float], cl: bool) -> int:
    """Backpropagates one random ``dy`` through both outputs ``ys``; fails (prints, 1) where
    the outputs, any leaf's gradient (relative to its scale) or ``errs`` differ by more
    than 1e-4, or a channels_last input lost its layout."""
    y1, y2 = ys
    g = torch.randn_like(y2)
    y1.backward(g)
    y2.backward(g)
    errs = [(y1 - y2).abs().max().item(), *errs]
    for t1, t2 in zip(*leaves, strict=True):
        if t1 is not None:
            scale = 1 + t2.grad.abs().max().item()
            errs += [((t1.grad - t2.grad).abs().max() / scale).item()]
    kept = not cl or y1.is_contiguous(memory_format=torch.channels_last)
    if max(errs) <= 1e-4 and kept:
        return 0
    print(f"FAIL {label}", "errors", errs, "layout kept", kept)
    return 1


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs() / b.abs()).max().item()


@contextlib.contextmanager
def _coef_tiles(default: bool) -> Iterator[None]:
    """The zoo's coefficient kernels with their tiles (``default``) or with tiles of 2
    channels and 2 samples (several loop trips over the samples and channel blocks)."""
    sizes = Z.COEF_CB, Z.COEF_TILE
    if not default:
        Z.COEF_CB, Z.COEF_TILE = 2, 4
    try:
        yield
    finally:
        Z.COEF_CB, Z.COEF_TILE = sizes


def check_renorm() -> tuple[list, int]:
    """Batch Renorm (``Z.batch_renorm``) against ``normzoo.functional.batch_renorm``: output,
    gradients, the running statistics after the step; limits that clip some channels."""
    from normzoo import functional

    cases, fails = [], 0
    for shape in [(4, 6, 5, 7), (3, 8, 33), (16, 12), (2, 8, 70, 70)]:
        for cl in _layouts(shape):
            for affine in (True, False):
                cases.append((shape, "renorm", 0, cl, affine, False))
                c = shape[1]
                rm, rv = torch.randn(c) * 2, torch.rand(c) * 12 + 0.5  # r, d clip in some
                leaves = _twins(_input(shape, cl), *_affine(c, affine))
                rm1, rv1 = rm.clone(), rv.clone()
                factor = 0.3 if affine else 0.7  # both forms of lerp
                with _coef_tiles(affine):
                    y1 = Z.batch_renorm(*leaves[0], (rm1, rv1, factor), (1.5, 0.5), 1e-5)
                y2, rm2, rv2 = functional.batch_renorm(
                    *leaves[1][:1], rm, rv, *leaves[1][1:], training=True, r_max=1.5,
                    d_max=0.5, momentum=factor,
                )  # fmt: skip
                errs = [(rm1 - rm2).abs().max().item(), _rel(rv1, rv2)]
                label = f"{shape} renorm cl={cl} affine={affine}"
                fails += _compare(label, (y1, y2), leaves, errs, cl)
    return cases, fails


def check_switchable() -> tuple[list, int]:
    """SwitchableNorm (``Z.switchable_norm``) against ``normzoo.functional.switchable_norm``
    in training (batch statistics, running statistics updated) and eval (the running ones):
    output, gradients of x, the parameters and both logits, the running statistics."""
    from normzoo import functional

    cases, fails = [], 0
    for shape in ZOO_SHAPES:
        for cl in _layouts(shape):
            for affine, training in [(True, True), (False, True), (True, False)]:
                cases.append((shape, "switchable", 0, cl, affine, training))
                c = shape[1]
                rm, rv = torch.randn(c), torch.rand(c) * 4 + 0.5
                x = _input(shape, cl, spread=1.0)
                leaves = _twins(x, torch.randn(3), torch.randn(3), *_affine(c, affine))
                rm1, rv1 = rm.clone(), rv.clone()
                state = Z.SwitchableState(rm1, rv1, training, 0.3, 1e-5, training)
                with _coef_tiles(affine):
                    y1 = Z.switchable_norm(*leaves[0], state)
                x2, mw2, vw2, w2, b2 = leaves[1]
                y2, rm2, rv2 = functional.switchable_norm(
                    x2, mw2, vw2, rm, rv, w2, b2, training=training, momentum=0.3
                )
                errs = [(rm1 - rm2).abs().max().item(), _rel(rv1, rv2)]
                label = f"{shape} switchable cl={cl} affine={affine} training={training}"
                fails += _compare(label, (y1, y2), leaves, errs, cl)
    return cases, fails


def check_switchable_offset() -> tuple[list, int]:
    """SwitchableNorm's mixture on an input far from 0 (mean 1000, std 1): the kernels merge
    the LN and BN variances in the stable form, so the output matches the float64 reference
    (``mean(var_i + mu_i^2) - mu^2`` in float32 would lose ~3% of the variance there)."""
    from normzoo import functional

    shape = (4, 6, 5, 7)
    x = torch.randn(shape, dtype=torch.float64) + 1000.0
    mw, vw = torch.tensor([0.1, 1.0, 0.5]), torch.tensor([0.0, 1.2, 0.8])
    state = Z.SwitchableState(None, None, True, 0.1, 1e-5, False)
    with torch.no_grad():
        y1 = Z.switchable_norm(x.float(), mw, vw, None, None, state)
        y2 = functional.switchable_norm(
            x, mw.double(), vw.double(), None, None, None, None, training=True, momentum=0.0
        )[0]
    err = (y1.double() - y2).abs().max().item()
    if err > 1e-3:
        print("FAIL switchable offset errors", [err])
        return [(shape, "switchable", 0, False, False, "offset")], 1
    return [(shape, "switchable", 0, False, False, "offset")], 0


def _large_mean_ours(x: torch.Tensor, kind: str, groups: int, w, b, p) -> torch.Tensor:
    """The kernels' output for ``check_large_mean``."""
    if kind == "batch":
        return T.batch_norm(x, w, b, 1e-5)[0]
    if kind == "group":
        return T.group_norm(x, groups, w, b, 1e-5)[0]
    if kind == "s0":
        return T.evonorm_s0(x, p, groups, w, b, 1e-5)
    return T.filter_response_norm(x, w, b, p, 1e-5)


def _large_mean_ref(x: torch.Tensor, kind: str, groups: int, w, b, p) -> torch.Tensor:
    """torch's functional form (the reference math for S0 and FRN) in ``x``'s dtype."""
    d = x.dtype
    return T.reference(x, w.to(d), b.to(d), kind, groups, 1e-5, p.to(d))


def check_large_mean(kinds: list[tuple[str, int]] | None = None) -> tuple[list, int]:
    """Inputs far from 0 (mean 10000, std 1), one-pass and two-phase plans, both layouts: the
    kernels' output and input gradient against float64 stay within 20x the error of torch's
    contiguous float32 kernels (the reference math for EvoNorm-S0 and FRN), as
    ``tests/test_numerics.py`` asks of the CPU paths. A variance taken as E[x^2] - E[x]^2
    would be off by ~1 here; a gradient taken against a rounded mean, 400x. EvoNorm-S0 on the
    two-phase kernels (channels_last) is held to 1e-3 instead: its statistics merge float32
    partial means near 1e4, whose rounding costs its variance ~2e-4 (y 9e-5, dx 3e-4 against
    1e-6 for the reference math); centering by a value of each set before the partial sums
    would close that (future work: those kernels serve BatchNorm and GroupNorm on a GPU)."""
    cases, fails = [], 0
    every = [("batch", 0), ("group", 2), ("group", 1), ("group", -1), ("s0", 2), ("frn", -1)]
    kinds = kinds or every
    for shape in [(16, 6, 5, 7), (2, 8, 40, 40)]:  # many sets: some means round far
        c = shape[1]
        for kind, groups in kinds:
            groups = c if groups == -1 else groups
            for cl in _layouts(shape):
                x = (torch.randn(shape, dtype=torch.float64) + 1e4).float()
                x = x.to(memory_format=torch.channels_last) if cl else x
                w, b = _affine(c, True)
                p = torch.randn(c) * 0.5 + (1.0 if kind == "s0" else 0.0)  # S0's v, FRN's tau
                dy = torch.randn(shape, dtype=torch.float64)
                runs = [
                    (_large_mean_ours, x),
                    (_large_mean_ref, x.contiguous()),
                    (_large_mean_ref, x.double().contiguous()),
                ]
                out = []
                for fn, xx in runs:
                    xi = xx.clone().requires_grad_()
                    y = fn(xi, kind, groups, w, b, p)
                    (g,) = torch.autograd.grad(y, xi, dy.to(xi.dtype))
                    out.append((y.detach().double(), g.double()))
                cases.append((shape, kind, groups, cl, True, "large mean"))
                for part in (0, 1):
                    exact = out[2][part]
                    err, err32 = (float((o[part] - exact).abs().max() / exact.abs().max())
                                  for o in out[:2])  # fmt: skip
                    bound = 20 * max(err32, 1e-5)
                    if kind == "s0" and cl:  # the two-phase statistics (see above)
                        bound = max(bound, 1e-3)
                    if err > bound:
                        label = f"large mean {shape} {kind} groups={groups} cl={cl}"
                        print(f"FAIL {label}", ["y", "dx"][part], f"{err:.1e} vs {err32:.1e}")
                        fails += 1
                        break
    return cases, fails


def check_b0() -> tuple[list, int]:
    """EvoNorm-B0 (``Z.evonorm_b0``) against ``normzoo.functional.evonorm_b0`` in training
    (batch variance, running variance updated) and eval (the running one): output, gradients
    of x, v and the parameters, the running variance; both branches of the max taken."""
    from normzoo import functional

    cases, fails = [], 0
    for shape in ZOO_SHAPES:
        for cl in _layouts(shape):
            # (affine, training, running variance): untracked in training too
            for affine, training, tracked in [
                (True, True, True), (False, True, True), (True, False, True), (True, True, False)
            ]:  # fmt: skip
                cases.append((shape, "b0", 0, cl, affine, (training, tracked)))
                c = shape[1]
                rv = torch.rand(c) * 8 + 0.5 if tracked else None
                v = torch.randn(c) * 0.5  # v x + s_i below and above s_b: both branches
                leaves = _twins(_input(shape, cl), v, *_affine(c, affine))
                rv1 = rv.clone() if tracked else None
                state = Z.B0State(rv1, training, 0.3, 1e-5, training and tracked)
                with _coef_tiles(affine):
                    y1 = Z.evonorm_b0(*leaves[0], state)
                x2, v2, w2, b2 = leaves[1]
                y2, rv2 = functional.evonorm_b0(x2, v2, rv, w2, b2, training=training, momentum=0.3)
                errs = [_rel(rv1, rv2)] if tracked else []
                label = f"{shape} b0 cl={cl} affine={affine} training={training} tracked={tracked}"
                fails += _compare(label, (y1, y2), leaves, errs, cl)
    return cases, fails


def check_ghost() -> tuple[list, int]:
    """Ghost Batch Norm (``Z.ghost_batch_norm``) against ``normzoo.functional``'s batch norm
    per virtual batch: output, gradients, each virtual batch's mean and biased variance;
    virtual batches that divide the batch and a smaller last one."""
    from normzoo import functional

    cases, fails = [], 0
    sizes = [((8, 6, 5, 7), 2), ((7, 8, 33), 3), ((6, 4, 3, 4, 5), 4), ((6, 8, 30, 30), 3)]
    for shape, size in sizes:
        for cl in _layouts(shape):
            for affine in (True, False):
                cases.append((shape, "ghost", size, cl, affine, False))
                x = _input(shape, cl, spread=2.0)
                leaves = _twins(x, *_affine(shape[1], affine))
                # the running statistics: a momentum, or momentum=None after 4 batches
                momentum, tracked = (0.3, 0) if affine else (None, 4)
                rm, rv = torch.randn(shape[1]), torch.rand(shape[1]) + 0.5
                rm1, rv1 = rm.clone(), rv.clone()
                with _coef_tiles(affine):
                    y1, means, variances = Z.ghost_batch_norm(
                        *leaves[0], size, 1e-5, (rm1, rv1, momentum, tracked)
                    )
                x2, w2, b2 = leaves[1]
                y2, rm2, rv2 = functional.ghost_batch_norm(
                    x2, rm, rv, w2, b2, virtual_batch_size=size, training=True,
                    momentum=momentum, num_batches_tracked=tracked,
                )  # fmt: skip
                errs = [(rm1 - rm2).abs().max().item(), _rel(rv1, rv2)]
                for j, chunk in enumerate(x.double().split(size)):
                    v, m = torch.var_mean(chunk, [0, *range(2, x.dim())], correction=0)
                    errs += [(means[j] - m).abs().max().item(), _rel(variances[j], v)]
                label = f"{shape} ghost size={size} cl={cl} affine={affine}"
                fails += _compare(label, (y1, y2), leaves, errs, cl)
    return cases, fails


def check_frozen() -> tuple[list, int]:
    """FrozenBatchNorm (``Z.frozen_batch_norm``) against
    ``normzoo.functional.frozen_batch_norm`` (then a ReLU): output and input gradient."""
    from normzoo import functional

    cases, fails = [], 0
    for shape in [(4, 6, 5, 7), (3, 8, 33), (16, 12), (2, 8, 70, 70)]:
        for cl in _layouts(shape):
            for affine, relu in [(True, False), (False, False), (True, True)]:
                cases.append((shape, "frozen", 0, cl, affine, relu))
                c = shape[1]
                frozen = (torch.randn(c), torch.rand(c) * 4 + 0.5, *_affine(c, affine))
                leaves = _twins(_input(shape, cl))
                y1 = Z.frozen_batch_norm(*leaves[0], *frozen, 1e-5, relu)
                y2 = functional.frozen_batch_norm(*leaves[1], *frozen, eps=1e-5)
                y2 = torch.relu(y2) if relu else y2
                label = f"{shape} frozen cl={cl} affine={affine} relu={relu}"
                fails += _compare(label, (y1, y2), leaves, [], cl)
    return cases, fails


if __name__ == "__main__":
    sys.exit(main())
