"""The Triton kernels' arithmetic, run through ``normzoo.norms._triton``'s functions on CPU
tensors, against torch's functional forms: outputs, input and parameter gradients, batch
statistics, layouts; one-pass and two-phase kernels, odd sizes, 1-d to 3-d spatial, ReLU,
small tiles (many chunks per set).

As a script (``tests/test_triton.py`` runs it in a subprocess with ``TRITON_INTERPRET=1``,
which must be set before ``triton`` is imported) it checks the Triton code under Triton's
interpreter; :func:`check` with ``tests/triton_emulation.py``'s kernels patched in checks the
Python orchestration where triton is absent (CI). Prints one line per failing case and
``cases N fails F``; the script's exit status is 1 on any failure.
"""

import sys

import torch

from normzoo.norms import _triton as T


def main() -> int:
    torch.manual_seed(0)
    target = T._target_programs
    T._target_programs = lambda x: 64  # several chunks per set on the small shapes below
    try:
        return 1 if check() else 0
    finally:
        T._target_programs = target
        T.TILE = 4096


def check() -> int:
    """Run every case through ``T``'s functions; the number of failing cases."""
    cases = []
    for shape in [(4, 6, 5, 7), (3, 8, 33), (2, 4, 3, 4, 5), (16, 12), (2, 8, 70, 70)]:
        for kind, groups in [("batch", 0), ("group", 2), ("group", 1), ("group", shape[1])]:
            for cl in [False, True]:
                if cl and len(shape) not in (4, 5):
                    continue
                for affine, relu in [(True, False), (False, False), (True, True)]:
                    cases.append((shape, kind, groups, cl, affine, relu))
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
    fails = 0
    for shape, kind, groups, cl, affine, relu, *tile in cases:
        T.TILE = tile[0] if tile else 4096
        c = shape[-1] if kind in ("token", "rms_token") else shape[1]
        x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).float()
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        if cl:
            x = x.to(memory_format=fmt)
        w = (torch.randn(c) * 0.5 + 1).requires_grad_() if affine else None
        b = (torch.randn(c) * 0.5).requires_grad_() if affine else None
        # FRN's tau, EvoNorm-S0's v
        p = (torch.randn(c) * 0.5 + (1 if kind == "s0" else 0)).requires_grad_()
        if kind == "frn":  # ties y == tau (x = 0, b = tau): torch.maximum halves the gradient
            x.view(-1)[:: max(1, x.numel() // 64)] = 0.0
            if affine:
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
        errs = [(y1 - y2).abs().max().item(), (x1.grad - x2.grad).abs().max().item()]
        if affine:
            scale = 1 + w2.grad.abs().max().item() + b2.grad.abs().max().item()
            errs += [((w.grad - w2.grad).abs().max() / scale).item()]
            errs += [((b.grad - b2.grad).abs().max() / scale).item()]
        if extra is not None:
            errs += [((p.grad - p2.grad).abs().max() / (1 + p2.grad.abs().max())).item()]
        if kind == "batch":
            v, m = torch.var_mean(x.double(), [0, *range(2, x.dim())], correction=0)
            errs += [(mean.double() - m).abs().max().item()]
            errs += [((var.double() - v).abs().max() / v.max()).item()]
        kept = not cl or y1.is_contiguous(memory_format=fmt)
        tol = 1e-2 if kind == "group" and groups == c and len(shape) == 2 else 1e-4
        if max(errs) > tol or not kept:  # (groups == C on (N, C): one value per set)
            fails += 1
            print(f"FAIL {shape} {kind} groups={groups} cl={cl} affine={affine} relu={relu}")
            print("    tile", tile, "errors", errs)
    for extra_check in (check_renorm, check_switchable, check_b0, check_ghost, check_frozen):
        more_cases, more_fails = extra_check()
        cases += more_cases
        fails += more_fails
    if T._disabled is not None:  # a first call failed and fell back to torch's kernels
        print("FELL BACK:", T._disabled)
        fails += 1
    print(f"cases {len(cases)} fails {fails}")
    return fails


def check_renorm() -> tuple[list, int]:
    """Batch Renorm (``T.batch_renorm``) against ``normzoo.functional.batch_renorm``: output,
    gradients, the running statistics after the step; limits that clip some channels."""
    from normzoo import functional

    cases, fails = [], 0
    for shape in [(4, 6, 5, 7), (3, 8, 33), (16, 12), (2, 8, 70, 70)]:
        for cl in [False, True] if len(shape) == 4 else [False]:
            for affine in (True, False):
                cases.append((shape, "renorm", 0, cl, affine, False))
                c = shape[1]
                x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).float()
                if cl:
                    x = x.to(memory_format=torch.channels_last)
                rm, rv = torch.randn(c) * 2, torch.rand(c) * 12 + 0.5  # r, d clip in some
                w = (torch.randn(c) * 0.5 + 1).requires_grad_() if affine else None
                b = (torch.randn(c) * 0.5).requires_grad_() if affine else None
                x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
                w2 = w.detach().clone().requires_grad_() if affine else None
                b2 = b.detach().clone().requires_grad_() if affine else None
                rm1, rv1 = rm.clone(), rv.clone()
                y1 = T.batch_renorm(x1, w, b, (rm1, rv1, 0.3), (1.5, 0.5), 1e-5)
                y2, rm2, rv2 = functional.batch_renorm(
                    x2, rm, rv, w2, b2, training=True, r_max=1.5, d_max=0.5, momentum=0.3
                )
                g = torch.randn_like(y2)
                y1.backward(g)
                y2.backward(g)
                errs = [(y1 - y2).abs().max().item(), (x1.grad - x2.grad).abs().max().item()]
                errs += [(rm1 - rm2).abs().max().item(), ((rv1 - rv2).abs() / rv2).max().item()]
                if affine:
                    scale = 1 + w2.grad.abs().max().item() + b2.grad.abs().max().item()
                    errs += [((w.grad - w2.grad).abs().max() / scale).item()]
                    errs += [((b.grad - b2.grad).abs().max() / scale).item()]
                kept = not cl or y1.is_contiguous(memory_format=torch.channels_last)
                if max(errs) > 1e-4 or not kept:
                    fails += 1
                    print(f"FAIL {shape} renorm cl={cl} affine={affine}", "errors", errs)
    return cases, fails


def check_switchable() -> tuple[list, int]:
    """SwitchableNorm (``T.switchable_norm``) against ``normzoo.functional.switchable_norm``
    in training (batch statistics, running statistics updated) and eval (the running ones):
    output, gradients of x, the parameters and both logits, the running statistics."""
    from normzoo import functional

    cases, fails = [], 0
    for shape in [(4, 6, 5, 7), (3, 8, 33), (2, 4, 3, 4, 5), (2, 8, 70, 70)]:
        for cl in [False, True] if len(shape) == 4 else [False]:
            for affine, training in [(True, True), (False, True), (True, False)]:
                cases.append((shape, "switchable", 0, cl, affine, training))
                c = shape[1]
                x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).float()
                x += torch.randn(shape[0], c, *[1] * (len(shape) - 2))  # IN != LN != BN
                if cl:
                    x = x.to(memory_format=torch.channels_last)
                rm, rv = torch.randn(c), torch.rand(c) * 4 + 0.5
                mw, vw = torch.randn(3), torch.randn(3)
                w = torch.randn(c) * 0.5 + 1 if affine else None
                b = torch.randn(c) * 0.5 if affine else None
                leaves = [[t.clone().requires_grad_() if t is not None else None
                           for t in (x, mw, vw, w, b)] for _ in range(2)]  # fmt: skip
                rm1, rv1 = rm.clone(), rv.clone()
                state = T._Switch(rm1, rv1, training, 0.3, 1e-5, training)
                y1 = T.switchable_norm(*leaves[0], state)
                x2, mw2, vw2, w2, b2 = leaves[1]
                y2, rm2, rv2 = functional.switchable_norm(
                    x2, mw2, vw2, rm, rv, w2, b2, training=training, momentum=0.3
                )
                g = torch.randn_like(y2)
                y1.backward(g)
                y2.backward(g)
                errs = [(y1 - y2).abs().max().item(), (rm1 - rm2).abs().max().item()]
                errs += [((rv1 - rv2).abs() / rv2).max().item()]
                for t1, t2 in zip(*leaves, strict=True):
                    if t1 is not None:
                        scale = 1 + t2.grad.abs().max().item()
                        errs += [((t1.grad - t2.grad).abs().max() / scale).item()]
                kept = not cl or y1.is_contiguous(memory_format=torch.channels_last)
                if max(errs) > 1e-4 or not kept:
                    fails += 1
                    print(f"FAIL {shape} switchable cl={cl} affine={affine} training={training}")
                    print("    errors", errs)
    return cases, fails


def check_b0() -> tuple[list, int]:
    """EvoNorm-B0 (``T.evonorm_b0``) against ``normzoo.functional.evonorm_b0`` in training
    (batch variance, running variance updated) and eval (the running one): output, gradients
    of x, v and the parameters, the running variance; both branches of the max taken."""
    from normzoo import functional

    cases, fails = [], 0
    for shape in [(4, 6, 5, 7), (3, 8, 33), (2, 4, 3, 4, 5), (2, 8, 70, 70)]:
        for cl in [False, True] if len(shape) == 4 else [False]:
            for affine, training in [(True, True), (False, True), (True, False)]:
                cases.append((shape, "b0", 0, cl, affine, training))
                c = shape[1]
                x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).float()
                if cl:
                    x = x.to(memory_format=torch.channels_last)
                rv = torch.rand(c) * 8 + 0.5
                v = torch.randn(c) * 0.5  # v x + s_i below and above s_b: both branches
                w = torch.randn(c) * 0.5 + 1 if affine else None
                b = torch.randn(c) * 0.5 if affine else None
                leaves = [[t.clone().requires_grad_() if t is not None else None
                           for t in (x, v, w, b)] for _ in range(2)]  # fmt: skip
                rv1 = rv.clone()
                y1 = T.evonorm_b0(*leaves[0], T._B0(rv1, training, 0.3, 1e-5, training))
                x2, v2, w2, b2 = leaves[1]
                y2, rv2 = functional.evonorm_b0(x2, v2, rv, w2, b2, training=training, momentum=0.3)
                g = torch.randn_like(y2)
                y1.backward(g)
                y2.backward(g)
                errs = [(y1 - y2).abs().max().item(), ((rv1 - rv2).abs() / rv2).max().item()]
                for t1, t2 in zip(*leaves, strict=True):
                    if t1 is not None:
                        scale = 1 + t2.grad.abs().max().item()
                        errs += [((t1.grad - t2.grad).abs().max() / scale).item()]
                kept = not cl or y1.is_contiguous(memory_format=torch.channels_last)
                if max(errs) > 1e-4 or not kept:
                    fails += 1
                    print(f"FAIL {shape} b0 cl={cl} affine={affine} training={training}")
                    print("    errors", errs)
    return cases, fails


def check_ghost() -> tuple[list, int]:
    """Ghost Batch Norm (``T.ghost_batch_norm``) against ``normzoo.functional``'s batch norm
    per virtual batch: output, gradients, each virtual batch's mean and biased variance;
    virtual batches that divide the batch and a smaller last one."""
    from normzoo import functional

    cases, fails = [], 0
    for shape, size in [
        ((8, 6, 5, 7), 2),
        ((7, 8, 33), 3),
        ((6, 4, 3, 4, 5), 4),
        ((6, 8, 30, 30), 3),
    ]:
        for cl in [False, True] if len(shape) == 4 else [False]:
            for affine in (True, False):
                cases.append((shape, "ghost", size, cl, affine, False))
                c = shape[1]
                x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).float()
                x += torch.randn(shape[0], 1, *[1] * (len(shape) - 2)) * 2  # batches differ
                if cl:
                    x = x.to(memory_format=torch.channels_last)
                w = torch.randn(c) * 0.5 + 1 if affine else None
                b = torch.randn(c) * 0.5 if affine else None
                leaves = [[t.clone().requires_grad_() if t is not None else None
                           for t in (x, w, b)] for _ in range(2)]  # fmt: skip
                y1, means, variances = T.ghost_batch_norm(*leaves[0], size, 1e-5)
                x2, w2, b2 = leaves[1]
                y2 = functional.ghost_batch_norm(
                    x2, None, None, w2, b2, virtual_batch_size=size, training=True
                )[0]
                g = torch.randn_like(y2)
                y1.backward(g)
                y2.backward(g)
                errs = [(y1 - y2).abs().max().item()]
                for t1, t2 in zip(*leaves, strict=True):
                    if t1 is not None:
                        scale = 1 + t2.grad.abs().max().item()
                        errs += [((t1.grad - t2.grad).abs().max() / scale).item()]
                dims = [0, *range(2, x.dim())]
                for j, chunk in enumerate(x.double().split(size)):
                    v, m = torch.var_mean(chunk, dims, correction=0)
                    errs += [(means[j] - m).abs().max().item()]
                    errs += [((variances[j] - v).abs() / v).max().item()]
                kept = not cl or y1.is_contiguous(memory_format=torch.channels_last)
                if max(errs) > 1e-4 or not kept:
                    fails += 1
                    print(f"FAIL {shape} ghost size={size} cl={cl} affine={affine}")
                    print("    errors", errs)
    return cases, fails


def check_frozen() -> tuple[list, int]:
    """FrozenBatchNorm (``T.frozen_batch_norm``) against
    ``normzoo.functional.frozen_batch_norm`` (then a ReLU): output and input gradient."""
    from normzoo import functional

    cases, fails = [], 0
    for shape in [(4, 6, 5, 7), (3, 8, 33), (16, 12), (2, 8, 70, 70)]:
        for cl in [False, True] if len(shape) == 4 else [False]:
            for affine, relu in [(True, False), (False, False), (True, True)]:
                cases.append((shape, "frozen", 0, cl, affine, relu))
                c = shape[1]
                x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).float()
                if cl:
                    x = x.to(memory_format=torch.channels_last)
                rm, rv = torch.randn(c), torch.rand(c) * 4 + 0.5
                w = torch.randn(c) * 0.5 + 1 if affine else None
                b = torch.randn(c) * 0.5 if affine else None
                x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
                y1 = T.frozen_batch_norm(x1, rm, rv, w, b, 1e-5, relu)
                y2 = functional.frozen_batch_norm(x2, rm, rv, w, b, eps=1e-5)
                y2 = torch.relu(y2) if relu else y2
                g = torch.randn_like(y2)
                y1.backward(g)
                y2.backward(g)
                errs = [(y1 - y2).abs().max().item(), (x1.grad - x2.grad).abs().max().item()]
                kept = not cl or y1.is_contiguous(memory_format=torch.channels_last)
                if max(errs) > 1e-4 or not kept:
                    fails += 1
                    print(f"FAIL {shape} frozen cl={cl} affine={affine} relu={relu}", errs)
    return cases, fails


if __name__ == "__main__":
    sys.exit(main())
