"""The wider zoo's fast paths (``impl="fast"``, the default) equal their reference math:
outputs, gradients of the input and of every parameter, running statistics, in every
dispatch branch; hand-written backwards pass a float64 gradcheck."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from norm_testing import TOL, small_batch_kwargs

import normzoo
from normzoo import _native
from normzoo._native import zoo_kernels
from normzoo.norms._kernels import _FOLD_MAX_RATIO, RowAffine, RowMeanSquare, RowStats
from normzoo.norms.batch_renorm import _BatchRenormTrain
from normzoo.norms.evonorm import _B0Quotient
from normzoo.norms.frn import _FRNFunction

ZOO = [
    "batchrenorm",
    "ghostbatchnorm",
    "switchablenorm",
    "frn",
    "evonormb0",
    "evonorms0",
    "rmsnorm",
    "syncbatchnorm",
    "frozenbatchnorm",
]
# (name, extra kwargs) covering each norm's dispatch branches.
CASES = [
    ("batchrenorm", {}),  # warm-up: r = 1, d = 0
    ("batchrenorm", {"warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0, "r_max": 1.2}),
    ("batchrenorm", {"warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0, "affine": False}),
    ("batchrenorm", {"momentum": None, "warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0}),
    ("frn", {}),  # the hand-written function
    ("frn", {"tlu": False}),  # reference math
    ("frn", {"affine": False}),
    ("frn", {"learnable_eps": True}),
    ("switchablenorm", {}),
    ("switchablenorm", {"affine": False, "track_running_stats": False}),
    ("switchablenorm", {"momentum": None}),
    ("evonormb0", {}),
    ("evonormb0", {"affine": False, "track_running_stats": False}),
    ("evonorms0", {}),
    ("evonorms0", {"num_groups": 2, "affine": False}),
    ("rmsnorm", {"affine": False}),
    ("rmsnorm", {"channels_last": True}),  # tokens: torch's rms_norm
    *[
        (name, {})
        for name in ZOO
        if name not in ("batchrenorm", "frn", "switchablenorm", "rmsnorm")
    ],
    ("rmsnorm", {}),
]
SHAPES = [(4, 8, 5, 6), (4, 8, 7), (6, 8), (2, 8, 3, 4, 2)]


def _pair(name: str, kwargs: dict, dtype: torch.dtype = torch.float32, channels: int = 8):
    kwargs = {**small_batch_kwargs(name), **kwargs}
    fast = normzoo.create(name, channels, **kwargs).to(dtype)
    ref = normzoo.create(name, channels, impl="reference", **kwargs).to(dtype)
    with torch.no_grad():
        for p in fast.parameters():
            p.uniform_(0.5, 1.5)
        for key, b in fast.named_buffers():
            if b is not None and b.is_floating_point() and key != "running_var":
                b.uniform_(-0.5, 0.5)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _accepts(module: torch.nn.Module, x: torch.Tensor) -> bool:
    try:
        module.check_input(x)
    except ValueError:
        return False
    return True


def _compare(fast, ref, x: torch.Tensor, param_tol: dict | None = None) -> torch.Tensor:
    """One step of both: outputs, gradients (``param_tol`` for the parameters' gradients,
    default ``TOL``) and state dicts equal."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fast(xa), ref(xb)
    torch.testing.assert_close(ya, yb, **TOL)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    for (key, pa), pb in zip(fast.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, **(param_tol or TOL), msg=key)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[key], value, **TOL, msg=key)
    return ya


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=lambda v: str(v) if v else "default")
def test_fast_equals_reference(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    for shape in SHAPES:
        fast, ref = _pair(name, kwargs)
        if not _accepts(fast, torch.zeros(shape)):
            continue
        for step in range(2):  # running statistics after 2 updates
            _compare(fast, ref, torch.randn(shape) * (step + 1) + step)
        fast.eval()
        ref.eval()
        x = torch.randn(shape)
        _compare(fast, ref, x)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), ref(x), **TOL)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [case for case in CASES if case[0] in ("batchrenorm", "ghostbatchnorm", "syncbatchnorm")],
    ids=str,
)
def test_batchnorm_family_on_native_bn_kernels_equals_reference(monkeypatch, name, kwargs):
    # the BN-based norms with BatchNorm's native kernels for every input, however small
    import normzoo.norms.batch as batch_mod

    monkeypatch.setattr(batch_mod, "NATIVE_MIN_NUMEL", 0)
    monkeypatch.setattr(batch_mod, "NATIVE_MIN_SPATIAL", 1)
    assert batch_mod.use_native_batch_stats(torch.empty(4, 8, 5, 6))
    torch.manual_seed(2)
    for shape in ((4, 8, 5, 6), (4, 8, 7), (2, 8, 3, 4, 2)):
        fast, ref = _pair(name, kwargs)
        for step in range(3):  # running statistics after 3 updates
            _compare(fast, ref, torch.randn(shape) * (step + 1) + step)


@pytest.fixture
def native_bn_calls(monkeypatch) -> list[str]:
    """BatchNorm's native kernels for every input, however small, and the names of the C
    functions called, in order."""
    import normzoo.norms.batch as batch_mod
    from normzoo._native import kernels

    monkeypatch.setattr(batch_mod, "NATIVE_MIN_NUMEL", 0)
    monkeypatch.setattr(batch_mod, "NATIVE_MIN_SPATIAL", 1)
    monkeypatch.setattr(batch_mod, "NATIVE_MIN_NUMEL_CL", 0)
    calls: list[str] = []
    real = kernels._fn

    def spy(lib: str, name: str):
        calls.append(name)
        return real(lib, name)

    monkeypatch.setattr(kernels, "_fn", spy)
    return calls


# (shape, memory format, virtual batches of 2 samples: ghost BN's kernel calls per step)
CL_SHAPES = [
    ((4, 8, 5, 6), torch.channels_last, 2),
    ((5, 8, 3, 4), torch.channels_last, 3),  # virtual batches of 2, 2 and 1 samples
    ((2, 8, 3, 4, 2), torch.channels_last_3d, 1),
]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        *[case for case in CASES if case[0] in ("batchrenorm", "ghostbatchnorm")],
        ("ghostbatchnorm", {"momentum": None}),
        ("ghostbatchnorm", {"affine": False, "track_running_stats": False}),
    ],
    ids=str,
)
@pytest.mark.parametrize(("shape", "fmt", "chunks"), CL_SHAPES, ids=str)
def test_batchnorm_family_channels_last_on_native_bn_kernels(
    name, kwargs, shape, fmt, chunks, native_bn_calls
):
    """Batch Renorm and Ghost BN on channels_last input run BatchNorm's channels_last kernels
    on the tensor as it is (Batch Renorm: BatchNorm's forward with r and d per channel, one
    call, behind its C++ operator where it is built; Ghost BN: one call per virtual batch):
    the reference's outputs, gradients and running statistics over 3 steps, output and input
    gradient channels_last."""
    torch.manual_seed(7)
    fast, ref = _pair(name, kwargs)
    for step in range(3):
        x = (torch.randn(shape) * (step + 1) + step).contiguous(memory_format=fmt)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fast(xa), ref(xb)
        assert ya.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(ya, yb, **TOL)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        assert xa.grad.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(xa.grad, xb.grad, **TOL)
        for (key, pa), pb in zip(fast.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(pa.grad, pb.grad, **TOL, msg=key)
        for key, value in ref.state_dict().items():
            torch.testing.assert_close(fast.state_dict()[key], value, **TOL, msg=key)
    per_step = ["nz_renorm_forward_cl", "nz_bn_backward_cl"]  # Batch Renorm: one call each
    if name == "batchrenorm" and _native.ops_available():  # behind its C++ operator
        assert "BatchRenormFunction" in ya.grad_fn.name()
        per_step = []
    if name == "ghostbatchnorm":
        per_step = ["nz_bn_forward_cl"] * chunks + ["nz_bn_backward_cl"] * chunks
        if _native.ops_available():  # behind its C++ operator, the same kernels
            assert "GhostBatchNormFunction" in ya.grad_fn.name()
            per_step = []
    assert native_bn_calls == per_step * 3


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=str)
@pytest.mark.parametrize(("n", "vbs"), [(8, 2), (7, 3), (6, 6)])
def test_native_ghostbatchnorm_is_torch_batchnorm_per_virtual_batch(
    fmt, n, vbs, native_bn_calls, ghost_path
):
    """Each virtual batch is one nn.BatchNorm2d training step: outputs, gradients, running
    statistics and ``num_batches_tracked``; the kernels write one output, no ``torch.cat``;
    behind the C++ operator and the Python ``autograd.Function`` alike."""
    ghost = normzoo.create("ghostbatchnorm", 6, virtual_batch_size=vbs, momentum=None)
    bn = torch.nn.BatchNorm2d(6, momentum=None)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    ghost.load_state_dict(bn.state_dict())
    cat = torch.cat
    for step in range(2):
        x = (torch.randn(n, 6, 5, 4) * 2 + step).contiguous(memory_format=fmt)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch, "cat", lambda *a, **k: pytest.fail("torch.cat called"))
            ya = ghost(xa)
        yb = cat([bn(chunk) for chunk in xb.split(vbs)])
        assert ya.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(ya, yb, **TOL)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        assert xa.grad.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(xa.grad, xb.grad, **TOL)
        torch.testing.assert_close(ghost.weight.grad, bn.weight.grad, **TOL)
        torch.testing.assert_close(ghost.bias.grad, bn.bias.grad, **TOL)
        assert_same_state_as(ghost, bn)
    assert ghost.num_batches_tracked.item() == 2 * math.ceil(n / vbs)
    if fmt == torch.contiguous_format and ghost_path.name == "operator":  # one call
        assert ghost_path.ran(ya) and ghost_path.calls == ["blocks"] * 2
        assert native_bn_calls == []
    elif fmt == torch.contiguous_format:  # every virtual batch in one call each way
        assert native_bn_calls == ["nz_ghost_forward", "nz_ghost_backward"] * 2
    elif ghost_path.name == "operator":  # channels_last, BatchNorm's per virtual batch
        assert ghost_path.ran(ya) and ghost_path.calls == ["per_batch"] * 2
        assert native_bn_calls == []
    else:  # channels_last, too small for the rows kernel: BatchNorm's per virtual batch
        assert len(native_bn_calls) == 4 * math.ceil(n / vbs)


@pytest.mark.parametrize(
    ("shape", "fmt", "native"),
    [
        ((128, 64, 8, 8), torch.channels_last, True),  # virtual batches of 128k elements
        ((128, 64, 8, 8), torch.contiguous_format, True),
        ((32, 64, 8, 8), torch.channels_last, False),  # 128k elements in all: torch's path
        ((64, 8, 8, 8), torch.contiguous_format, True),  # 32k: as BatchNorm's dispatch
    ],
    ids=str,
)
def test_ghostbatchnorm_dispatch_follows_batchnorm_on_the_whole_batch(
    shape, fmt, native, ghost_path
):
    import normzoo.norms.batch as batch_mod
    from normzoo._native import kernels

    ghost = normzoo.create("ghostbatchnorm", shape[1], virtual_batch_size=32)
    x = torch.randn(shape).contiguous(memory_format=fmt)
    assert batch_mod.use_native_batch_stats(x) is native
    calls = []
    real = kernels._fn
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "_fn", lambda lib, name: calls.append(name) or real(lib, name))
        mp.setattr(torch, "get_num_threads", lambda: 2)  # (the rows kernel: a task a thread)
        y = ghost(x)
    assert y.is_contiguous(memory_format=fmt)
    rows = fmt == torch.channels_last
    if native and ghost_path.name == "operator":  # every virtual batch in one call
        assert calls == [] and ghost_path.calls == ["rows" if rows else "blocks"]
    elif native:  # every virtual batch in one call: channels_last on its rows
        assert calls == [f"nz_ghost_forward{'_rows' if rows else ''}"]
    else:
        assert calls == [] and ghost_path.calls == []


@pytest.mark.parametrize(
    ("shape", "vbs"),
    [((10, 8, 24, 24), 4), ((6, 8, 8, 8, 12), 2), ((9, 300, 4, 4), 3)],  # uneven; 5-d; 2 blocks
    ids=str,
)
def test_ghostbatchnorm_channels_last_on_the_rows_kernel(shape, vbs, monkeypatch, ghost_path):
    """channels_last input with a virtual batch (and 256 channels) per thread runs the rows
    kernel on its ``(N * positions, C)`` rows, one call each way: equal to nn.BatchNorm per
    virtual batch (outputs, gradients, running statistics), the output and ``dx``
    channels_last views of the kernel's rows; bfloat16: the float32 results rounded."""
    from normzoo._native import kernels

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    calls = []
    real = kernels._fn
    monkeypatch.setattr(kernels, "_fn", lambda lib, name: calls.append(name) or real(lib, name))
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    c = shape[1]
    ghost = normzoo.create("ghostbatchnorm", c, virtual_batch_size=vbs)
    bn = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm3d)(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    ghost.load_state_dict(bn.state_dict())
    half, twin = copy.deepcopy(ghost), copy.deepcopy(ghost)
    for step in range(2):
        x = (torch.randn(shape, dtype=torch.float64) * 2 + step).contiguous(memory_format=fmt)
        g = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)
        calls.clear(), ghost_path.calls.clear()
        xa = x.float().requires_grad_()
        ya = ghost(xa)
        ya.backward(g.float())
        if ghost_path.name == "operator":
            assert calls == [] and ghost_path.calls == ["rows"] and ghost_path.ran(ya)
        else:
            assert calls == ["nz_ghost_forward_rows", "nz_ghost_backward_rows"]
        assert ya.is_contiguous(memory_format=fmt) and xa.grad.is_contiguous(memory_format=fmt)
        bn.double()
        xb = x.clone().requires_grad_()
        yb = torch.cat([bn(chunk) for chunk in xb.split(vbs)])
        yb.backward(g)
        bn.float()
        torch.testing.assert_close(ya, yb.float(), **TOL)
        torch.testing.assert_close(xa.grad, xb.grad.float(), atol=1e-4, rtol=1e-4)
        for mine, theirs in ((ghost.weight.grad, bn.weight.grad), (ghost.bias.grad, bn.bias.grad)):
            torch.testing.assert_close(mine, theirs, atol=1e-3, rtol=1e-4)
        bn.zero_grad()
        ghost.zero_grad()
        assert_same_state_as(ghost, bn)
        # bfloat16: the same kernel's bfloat16 build, the float32 path's results rounded
        xh = x.to(torch.bfloat16).requires_grad_()
        xf = xh.detach().float().requires_grad_()
        yh, yf = half(xh), twin(xf)
        assert yh.dtype == torch.bfloat16 and yh.is_contiguous(memory_format=fmt)
        assert torch.equal(yh, yf.to(torch.bfloat16))
        gh = g.to(torch.bfloat16)
        got = torch.autograd.grad(yh, [xh, half.weight, half.bias], gh)
        want = torch.autograd.grad(yf, [xf, twin.weight, twin.bias], gh.float())
        assert got[0].is_contiguous(memory_format=fmt)
        assert torch.equal(got[0], want[0].to(torch.bfloat16))
        assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
        for mine, theirs in zip(half.buffers(), twin.buffers(), strict=True):
            assert torch.equal(mine, theirs)


@pytest.mark.skipif(not _native.ops_available(), reason="no operator library here")
def test_ghostbatchnorm_bfloat16_channels_last_per_virtual_batch(monkeypatch):
    """bfloat16 channels_last input with too few virtual batches for the rows kernel (3 for
    8 threads) runs BatchNorm's bfloat16 channels_last kernels per virtual batch behind the
    C++ operator (torch's bfloat16 BN per virtual batch before): ``y`` and ``dx`` the float32
    kernels' results on the same values rounded once, the parameters' gradients and the
    running statistics theirs exactly."""
    from normzoo.norms import ghost_batch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    kinds = []
    real = torch.ops.normzoo.ghost_batch_norm_train.default
    monkeypatch.setattr(ghost_batch, "_train_op", lambda *a: kinds.append(a[-2]) or real(*a))
    half = normzoo.create("ghostbatchnorm", 8, virtual_batch_size=4)
    with torch.no_grad():
        half.weight.uniform_(0.5, 1.5)
        half.bias.uniform_(-0.5, 0.5)
    full = copy.deepcopy(half)
    for step in range(2):
        x = (torch.randn(10, 8, 64, 64) * 2 + 1 + step).to(torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        g = torch.randn_like(x)
        xh, xf = x.clone().requires_grad_(), x.float().requires_grad_()
        yh, yf = half(xh), full(xf)
        assert "GhostBatchNormFunction" in yh.grad_fn.name()
        assert yh.dtype == torch.bfloat16 and yh.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(yh, yf.to(torch.bfloat16))
        got = torch.autograd.grad(yh, [xh, half.weight, half.bias], g)
        want = torch.autograd.grad(yf, [xf, full.weight, full.bias], g.float())
        assert got[0].is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(got[0], want[0].to(torch.bfloat16))
        assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    assert kinds == [ghost_batch.GHOST_CL_PER_BATCH] * 4
    for mine, theirs in zip(half.buffers(), full.buffers(), strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize(("shape", "vbs"), [((10, 8, 24, 24), 4), ((6, 24, 5, 7, 9), 4)], ids=str)
def test_ghostbatchnorm_bfloat16_contiguous_in_one_call(shape, vbs, monkeypatch, ghost_path):
    """bfloat16 contiguous input: every virtual batch in one call each way of the contiguous
    kernels' bfloat16 build (where torch's bfloat16 BN ran per virtual batch, then a
    ``torch.cat``); ``y`` and ``dx`` within a bfloat16 step of the float32 kernels' results on
    the same values, the statistics (running ones too) and the parameters' gradients close
    to theirs; a bfloat16 model's parameters get bfloat16 gradients."""
    from normzoo._native import kernels

    calls = []
    real = kernels._fn
    monkeypatch.setattr(kernels, "_fn", lambda lib, name: calls.append(name) or real(lib, name))
    c = shape[1]
    half = normzoo.create("ghostbatchnorm", c, virtual_batch_size=vbs)
    with torch.no_grad():
        half.weight.uniform_(0.5, 1.5)
        half.bias.uniform_(-0.5, 0.5)
    full = copy.deepcopy(half)
    for step in range(2):
        x = (torch.randn(shape) * 2 + 1 + step).to(torch.bfloat16)
        g = torch.randn(shape).to(torch.bfloat16)
        xh, xf = x.clone().requires_grad_(), x.float().requires_grad_()
        calls.clear(), ghost_path.calls.clear()
        yh = half(xh)
        yh.backward(g)
        if ghost_path.name == "operator":
            assert calls == [] and ghost_path.calls == ["blocks"] and ghost_path.ran(yh)
        else:
            assert calls == ["nz_ghost_forward_bf16", "nz_ghost_backward_bf16"]
        yf = full(xf)
        yf.backward(g.float())
        assert yh.dtype == xh.grad.dtype == torch.bfloat16
        step_of = lambda t: 2.0 ** (torch.floor(torch.log2(t.abs().clamp_min(1e-6))) - 7)
        assert ((yh.float() - yf).abs() <= step_of(yf) + 1e-6).all()
        assert ((xh.grad.float() - xf.grad).abs() <= step_of(xf.grad) + 1e-4).all()
        for a, b in ((half.weight.grad, full.weight.grad), (half.bias.grad, full.bias.grad)):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)
        half.zero_grad(), full.zero_grad()
    for mine, theirs in zip(half.buffers(), full.buffers(), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    model = copy.deepcopy(half).to(torch.bfloat16)  # parameters in bfloat16 too
    xm = torch.randn(shape).to(torch.bfloat16).requires_grad_()
    model(xm).float().sum().backward()
    assert model.weight.grad.dtype == torch.bfloat16 and xm.grad.dtype == torch.bfloat16


def assert_same_state_as(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, **TOL, msg=key)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=str)
def test_native_ghostbatchnorm_double_backward_and_frozen_weight(fmt, native_bn_calls, ghost_path):
    """``create_graph=True`` runs torch's differentiable backward per virtual batch; with the
    weight frozen and ``x`` not differentiated, the bias still gets its gradient."""
    ghost = normzoo.create("ghostbatchnorm", 6, virtual_batch_size=2)
    ref = normzoo.create("ghostbatchnorm", 6, virtual_batch_size=2, impl="reference")
    x = (torch.randn(6, 6, 4, 5) * 2 + 1).contiguous(memory_format=fmt)
    out = []
    for m in (ghost, ref):
        xx = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(m(xx).pow(2).sum(), xx, create_graph=True)
        out.append([g.detach(), *torch.autograd.grad(g.pow(3).sum(), [xx, m.weight])])
    torch.testing.assert_close(out[0][0], out[1][0], **TOL)
    for a, b in zip(out[0][1:], out[1][1:], strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    for m in (ghost, ref):
        m.weight.requires_grad_(False)
        m(x).pow(3).sum().backward()
    assert ghost.weight.grad is None
    torch.testing.assert_close(ghost.bias.grad, ref.bias.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ZOO)
def test_channels_last_bf16_no_grad(name: str) -> None:
    torch.manual_seed(1)
    fast, ref = _pair(name, {})
    x = torch.randn(4, 8, 5, 6).to(memory_format=torch.channels_last)
    y = _compare(fast, ref, x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        yb = fast(x.to(torch.bfloat16))
        assert yb.dtype == torch.bfloat16 and not yb.requires_grad
        torch.testing.assert_close(yb, ref(x.to(torch.bfloat16)), atol=2e-2, rtol=2e-2)


def test_frn_ties_split_like_torch_maximum() -> None:
    """Zeros with bias = tau = 0 (their initial values) tie ``y`` with ``tau``."""
    fast, ref = normzoo.create("frn", 8), normzoo.create("frn", 8, impl="reference")
    x = torch.randn(4, 8, 5, 6)
    x[:, :, :2] = 0
    _compare(fast, ref, x)


def test_large_mean_rows_keep_precision() -> None:
    """Rows whose mean dwarfs their spread (mean / std = 300; rows with no spread) take the
    subtracting branch of ``RowStats``' backward. Gradients then grow to ~1e4 and float32
    rounding differs between the paths, so both are held to the float64 reference math."""
    torch.manual_seed(3)
    for name in ("evonorms0", "evonormb0", "switchablenorm"):
        fast, ref = _pair(name, {})
        exact = normzoo.create(name, 8, impl="reference").double()
        exact.load_state_dict(fast.state_dict())
        x = torch.randn(4, 8, 5, 6) * 0.01 + 3.0
        assert float(x.mean() / x.std()) > _FOLD_MAX_RATIO
        g = torch.randn_like(x)
        grads = []
        for m, dtype in ((fast, torch.float32), (ref, torch.float32), (exact, torch.float64)):
            xa = x.to(dtype).detach().clone().requires_grad_()
            m(xa).backward(g.to(dtype))
            grads.append(xa.grad.double())
        scale = float(grads[2].abs().max())
        for grad in grads[:2]:
            torch.testing.assert_close(grad, grads[2], atol=2e-5 * scale, rtol=1e-4)
    fast, ref = _pair("evonorms0", {"num_groups": 8})
    _compare(fast, ref, torch.randn(6, 8))  # one value per group: no spread


@pytest.mark.parametrize("operators", [True, False], ids=["operators", "python"])
@pytest.mark.parametrize(
    ("name", "shape", "fmt"),
    [
        ("evonorms0", (8, 16, 8, 8), torch.contiguous_format),
        ("evonorms0", (8, 80, 6, 6), torch.channels_last),
        ("evonormb0", (8, 16, 8, 8), torch.contiguous_format),
        ("evonormb0", (8, 80, 6, 6), torch.channels_last),
        ("evonorms0", (256, 256), torch.contiguous_format),  # the token kernel
    ],
    ids=str,
)
def test_evonorm_input_gradient_at_large_mean(name, shape, fmt, operators, monkeypatch) -> None:
    """EvoNorm does not subtract the mean in its output, so float32 can give its input
    gradient to ~1e-6 at any mean; the variance's share of it, ``2 (x - mean) / L``, must be
    taken against the exact mean: the float32 mean of values around 1e4 is off by up to 5e-4,
    which shifted every gradient of a row by that much (4e-4 relative, against the reference
    math's 1e-6), and float partial sums of such values made the mean itself that inexact."""
    if not operators:
        monkeypatch.setattr(_native, "ops_available", lambda: False)
    torch.manual_seed(7)
    fast = normzoo.create(name, shape[1])
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(0.1 * torch.randn_like(p))
    exact = normzoo.create(name, shape[1], impl="reference").double()
    exact.load_state_dict(fast.state_dict())
    x = (1e4 + torch.randn(shape)).contiguous(memory_format=fmt)
    dy = torch.randn(shape, dtype=torch.float64)
    xa = x.clone().requires_grad_()
    (dx,) = torch.autograd.grad(fast(xa), xa, dy.float())
    x64 = x.double().requires_grad_()
    (dx64,) = torch.autograd.grad(exact(x64), x64, dy)
    err = float((dx.double() - dx64).abs().max() / dx64.abs().max())
    assert err < 1e-5, f"relative error {err:.1e}"


@pytest.mark.parametrize("path", ["operators", "python", "eager", "reference"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_switchablenorm_far_from_zero_keeps_precision(path, training, monkeypatch) -> None:
    """Data of mean 1000 and std 1: the LN and BN variances merged from the IN ones in the
    form ``mean(var_i + (mu_i - mu)^2)``, not the paper's ``mean(var_i + mu_i^2) - mu^2``,
    which in float32 is ~0.1 off here (outputs off by up to 1). Every CPU path, outputs,
    first and second derivatives and running statistics against float64."""
    if path == "python":
        monkeypatch.setattr(_native, "ops_available", lambda: False)
    elif path == "eager":
        monkeypatch.setenv("NORMZOO_NATIVE", "0")
    torch.manual_seed(11)
    impl = "reference" if path == "reference" else "fast"
    m = normzoo.create("switchablenorm", 8, impl=impl)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(0.5, 1.5)
        m.running_mean.uniform_(999.5, 1000.5)  # as after many steps on such data
        m.running_var.uniform_(0.5, 1.5)
    m.train(training)
    exact = normzoo.create("switchablenorm", 8, impl="reference").double().train(training)
    exact.load_state_dict(m.state_dict())
    x = torch.randn(4, 8, 5, 6) + 1000
    dy = torch.randn_like(x)
    out = []
    for mod, dtype in ((m, torch.float32), (exact, torch.float64)):
        xx = x.to(dtype).requires_grad_()
        y = mod(xx)
        (g,) = torch.autograd.grad(y, xx, dy.to(dtype), create_graph=True)
        leaves = [xx, *mod.parameters()]  # the bias has no second derivative: None
        out.append([y, g, *torch.autograd.grad(g.pow(2).sum(), leaves, allow_unused=True)])
    # float32 holds 1000 + x to ~6e-5: that, not the mixture, bounds the agreement
    names = ["y", "dx", "ddx", *(n for n, _ in m.named_parameters())]
    for name, got, want in zip(names, *out, strict=True):
        if want is None:  # the bias: no second derivative (None, or zeros from an operator)
            assert got is None or not got.any(), name
            continue
        scale = float(want.detach().abs().max())
        torch.testing.assert_close(got.double(), want, atol=5e-4 * scale, rtol=1e-3, msg=name)
    for key, value in exact.state_dict().items():
        torch.testing.assert_close(
            m.state_dict()[key].double(), value.double(), rtol=1e-4, atol=1e-4
        )


def test_hand_written_backwards_gradcheck() -> None:
    torch.manual_seed(2)
    f64 = {"dtype": torch.float64}
    x = torch.randn(3, 4, 5, **f64, requires_grad=True)
    a, b = (torch.randn(3, 4, 1, **f64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(RowAffine.apply, (x, a, b))
    assert torch.autograd.gradcheck(lambda t: RowStats.apply(t), (x,))
    assert torch.autograd.gradcheck(RowMeanSquare.apply, (x,))
    shifted = (x.detach() * 0.01 + 5).requires_grad_()  # the subtracting branch
    assert torch.autograd.gradcheck(lambda t: RowStats.apply(t), (shifted,))
    w, bias, tau = (torch.randn(4, **f64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda *t: _FRNFunction.apply(*t, 1e-3), (x, w, bias, tau))
    # r and d are constants to backprop, as in the numerical Jacobian only where clipped:
    # plain BN, and running statistics far enough to clip both.
    v, s_b = torch.randn(1, 4, 1, **f64, requires_grad=True), torch.rand(1, 4, 1, **f64)
    s_i = (torch.rand(3, 4, 1, **f64) + 0.5).requires_grad_()
    s_b = (s_b + 1.0).requires_grad_()
    assert torch.autograd.gradcheck(_B0Quotient.apply, (x, v, s_i, s_b))
    rm, rv = torch.full((4,), 100.0, **f64), torch.full((4,), 100.0, **f64)
    for r_max, d_max in ((1.0, 0.0), (1.5, 0.5)):

        def renorm(x, w, b, r_max=r_max, d_max=d_max):
            return _BatchRenormTrain.apply(x, w, b, rm, rv, r_max, d_max, 1e-5)[0]

        assert torch.autograd.gradcheck(renorm, (x, w, bias))


def test_compile_free() -> None:
    """The zoo's fast paths are eager: the first call compiles nothing."""
    import normzoo.norms._fused as fused

    before = dict(fused.compile_times())
    for name in ZOO:
        m = normzoo.create(name, 8, **small_batch_kwargs(name))
        m(torch.randn(4, 8, 5, 6, requires_grad=True)).sum().backward()
    assert fused.compile_times() == before or name == "syncbatchnorm"


# -- native per-row kernels (normzoo/_native/zoo.c) -----------------------------------------
NATIVE_CASES = [
    ("switchablenorm", {}),
    ("switchablenorm", {"affine": False, "track_running_stats": False}),
    ("switchablenorm", {"momentum": None}),
    ("evonormb0", {}),
    ("evonormb0", {"affine": False, "track_running_stats": False}),
    ("evonormb0", {"momentum": None}),
    ("evonorms0", {}),
    ("evonorms0", {"num_groups": 2, "affine": False}),
    ("frn", {}),
    ("rmsnorm", {}),
    ("rmsnorm", {"affine": False}),
]
NATIVE_NORMS = ["switchablenorm", "evonormb0", "evonorms0", "frn", "rmsnorm"]
# (shape, memory format, layout the kernels must see: 0 rows, 1 channels_last)
NATIVE_LAYOUTS = [
    ((4, 8, 5, 6), torch.contiguous_format, 0),
    ((4, 8, 5, 6), torch.channels_last, 1),
    ((2, 8, 3, 4, 2), torch.channels_last_3d, 1),
    ((3, 8, 7), torch.contiguous_format, 0),
]


#: The norms whose kernels run behind a C++ operator (``ops.cpp``) where it is built: the
#: forward is seen at the operator, the backward runs in its C++ autograd node.
ZOO_OPS = {
    "evonorms0": "evonorm_s0",
    "evonormb0": "evonorm_b0",
    "switchablenorm": "switchable_norm",
    "frn": "filter_response_norm",
    "rmsnorm": "rms_norm_rows",
}
ZOO_NODES = {
    "evonorms0": "EvoNormS0Function",
    "evonormb0": "EvoNormB0Function",
    "switchablenorm": "SwitchableFunction",
    "frn": "FRNFunction",
    "rmsnorm": "RMSNormFunction",
}


@pytest.fixture
def kernel_layouts(monkeypatch) -> list[int]:
    """The layout of the input of every native call (a copy made on the way to the kernels
    would show up as a contiguous layout): the Python entry points, and the C++ operators'
    inputs (which they pass to the kernels as they are)."""
    seen: list[int] = []
    real = zoo_kernels._check

    def spy(x: torch.Tensor, *small: torch.Tensor | None) -> int:
        seen.append(real(x, *small))
        return seen[-1]

    monkeypatch.setattr(zoo_kernels, "_check", spy)
    if _native.load_ops():
        for op in ZOO_OPS.values():
            real_op = getattr(torch.ops.normzoo, op)

            def op_spy(x: torch.Tensor, *args, _op=real_op):
                seen.append(real(x.reshape(x.shape[0], x.shape[1], -1)))
                return _op(x, *args)

            monkeypatch.setattr(torch.ops.normzoo, op, op_spy)
    return seen


def _native_calls(name: str, layout: int, steps: int) -> list[int]:
    """The layouts ``kernel_layouts`` sees for ``steps`` forwards and backwards of ``name``."""
    if name in ZOO_OPS and _native.ops_available():
        return [layout] * steps  # the backwards run in the operator's C++ node
    return [layout] * (2 * steps)


@pytest.mark.parametrize("cl", [0, 1], ids=["contiguous", "channels_last"])
def test_s0_map_sigmoid_is_within_three_ulp(cl):
    """EvoNorm-S0's map y = x sigmoid(v x) a + b on the kernels' own exponential (zoo.c's
    nz_exp: a degree-6 minimax polynomial, the power of two added to the exponent bits),
    against float64 over every float32 z = v x of a dense sweep of [-80, 80] (v = 1, a = 1,
    b = 0, so y = z sigmoid(z)): within 3 ulp of y, as torch's sigmoid is (the sigmoid within
    2.5, the product within 0.5); and its saturation: 0 far below, z far above, no NaN, a
    NaN kept. The forward and the backward's sums share the function (its bits are the
    backward's in the tests of the fused paths)."""
    z = torch.linspace(-80, 80, 2**20 + 7, dtype=torch.float64)
    z = torch.cat([z.float(), torch.tensor([-1e4, -89.0, -87.5, 88.5, 1e4, float("nan")])])
    length = z.numel()
    x = z.view(1, 1, length)
    if cl:  # one channel: (N, C, L) with strides (L C, 1, C) is contiguous too; use two
        x = torch.stack([z, z], dim=1).view(1, length, 2).transpose(1, 2)
        assert zoo_kernels.layout(x) == 1
    params = torch.tensor([1.0, 1.0, 0.0]).repeat(1, x.shape[1], 1).contiguous()
    y = zoo_kernels.map_forward(zoo_kernels.S0, x, params)[0, 0]
    zz = z.double()
    ref = zz * torch.sigmoid(zz)
    body = (z.abs() <= 80) & (ref != 0)
    ulp = torch.ldexp(torch.ones_like(ref), torch.frexp(ref.float())[1] - 24).double()
    err = ((y.double() - ref).abs() / ulp)[body]
    assert err.max().item() <= 3.0, err.max().item()
    tail = y[-6:]  # below -87 the exponential saturates at e^88: sigmoid 6e-39, not 0
    assert all(t.abs() < 1e-33 for t in tail[:3])
    assert tail[3] == 88.5 and tail[4] == 1e4 and tail[5].isnan()


@pytest.mark.parametrize("operators", [True, False], ids=["operators", "python"])
@pytest.mark.parametrize(("name", "kwargs"), NATIVE_CASES, ids=str)
@pytest.mark.parametrize(("shape", "fmt", "layout"), NATIVE_LAYOUTS, ids=str)
def test_native_row_maps_equal_reference(
    name, kwargs, shape, fmt, layout, operators, kernel_layouts, monkeypatch
):
    """Outputs, gradients of the input and every parameter, running statistics after two
    steps, eval mode; the kernels get the input as it is and the output keeps its format.
    ``python``: without the C++ operator library, the same kernels through Python."""
    if not operators:
        monkeypatch.setattr(_native, "ops_available", lambda: False)
    torch.manual_seed(4)
    fast, ref = _pair(name, kwargs)
    for step in range(2):
        x = (torch.randn(shape) * (step + 1) + step).contiguous(memory_format=fmt)
        assert _compare(fast, ref, x).is_contiguous(memory_format=fmt)
    fast.eval()
    ref.eval()
    x = torch.randn(shape).contiguous(memory_format=fmt)
    y = _compare(fast, ref, x)
    assert y.is_contiguous(memory_format=fmt)
    assert kernel_layouts == _native_calls(name, layout, 3)
    if name in ZOO_OPS and _native.ops_available():
        assert y.grad_fn.name().endswith(f"{ZOO_NODES[name]}>")


@pytest.mark.parametrize(("name", "kwargs"), NATIVE_CASES, ids=str)
def test_eager_fallback_equals_reference(name, kwargs, monkeypatch, kernel_layouts):
    """Without native kernels the torch paths run, channels_last included."""
    monkeypatch.setenv("NORMZOO_NATIVE", "0")
    fast, ref = _pair(name, kwargs)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(4, 8, 5, 6).contiguous(memory_format=fmt)
        assert _compare(fast, ref, x).is_contiguous(memory_format=fmt)
    assert kernel_layouts == []


@pytest.mark.parametrize("name", NATIVE_NORMS)
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=str)
def test_native_gradients_equal_float64_autograd(name, fmt):
    """The float32 kernels against float64 autograd of the reference math on the same values
    (the exact gradients up to float32 rounding), with 80 channels: two channels_last blocks,
    the second partial."""
    torch.manual_seed(5)
    fast = normzoo.create(name, 80)
    with torch.no_grad():
        for p in fast.parameters():
            p.uniform_(0.5, 1.5)
    exact = normzoo.create(name, 80, impl="reference").double()
    exact.load_state_dict(fast.state_dict())
    x = (torch.randn(3, 80, 4, 5) * 2 + 1).contiguous(memory_format=fmt)
    dy = torch.randn_like(x)
    grads = []
    for m, dtype in ((fast, torch.float32), (exact, torch.float64)):
        xx = x.to(dtype).requires_grad_()
        y = m(xx)
        grads.append([y, *torch.autograd.grad(y, [xx, *m.parameters()], dy.to(dtype))])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=1e-4)
    for key, value in exact.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[key], value.to(fast.state_dict()[key]))


@pytest.mark.parametrize("operators", [True, False], ids=["operators", "python"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NATIVE_NORMS)
def test_native_double_backward_equals_reference(name, training, operators, monkeypatch):
    """``create_graph=True`` differentiates the same math in torch ops (ATen ops in the C++
    operators): second derivatives as the reference's (in eval, after one training step,
    with the running statistics)."""
    if not operators:
        monkeypatch.setattr(_native, "ops_available", lambda: False)
    torch.manual_seed(6)
    fast, ref = _pair(name, {})
    x = torch.randn(4, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    if not training:
        for m in (fast, ref):
            m(x * 2 + 1)
            m.eval()
    out = []
    for m in (fast, ref):
        xx = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(m(xx).pow(2).sum(), xx, create_graph=True)
        out.append([g.detach(), *torch.autograd.grad(g.pow(2).sum(), [xx, *m.parameters()])])
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_native_b0_ties_split_like_torch_maximum():
    """One sample and ``v = 0``: ``v x + s_i`` equals ``s_b`` everywhere, and the gradient
    splits between them as ``torch.maximum``'s."""
    fast, ref = _pair("evonormb0", {})
    with torch.no_grad():
        fast.v.zero_()
        ref.v.zero_()
    _compare(fast, ref, torch.randn(1, 8, 5, 6))


def test_zoo_kernels_refuse_what_the_c_code_does_not_handle():
    p = torch.ones(2, 3, 2)
    with pytest.raises(ValueError, match="float32 or bfloat16 CPU"):
        zoo_kernels.row_stats(torch.randn(2, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="float32 or bfloat16 CPU"):
        zoo_kernels.row_stats(torch.randn(2, 3, 4, dtype=torch.float16))
    with pytest.raises(ValueError, match="take float32 CPU"):  # FrozenBN: float32 only
        x = torch.randn(2, 3, 4, dtype=torch.bfloat16)
        zoo_kernels.frozen_forward(x, torch.zeros(3), torch.ones(3), None, None, 1e-5)
    with pytest.raises(ValueError, match="channels_last"):
        zoo_kernels.map_forward(zoo_kernels.AFFINE, torch.randn(2, 3, 8)[..., ::2], p)
    with pytest.raises(ValueError, match="together"):
        x = torch.randn(2, 3, 4)
        zoo_kernels.map_dx(zoo_kernels.AFFINE, x, x, p, k1=torch.ones(2, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(3, 40, 196), (5, 7, 33), (2, 1, 9), (2, 9, 1), (0, 4, 5)])
def test_relayout_copies_between_the_two_layouts(shape, dtype, monkeypatch):
    """``zoo_kernels.relayout``: a contiguous ``(N, C, L)`` tensor to channels_last and back,
    the same values (bit copies), tiles of 32 cut by any shape, any thread count; a backward
    given ``dy`` in the other layout than ``x`` copies it this way (``_like``); what it does not
    take is refused."""
    t = (torch.randn(shape) * 3).to(dtype)
    for threads in (1, 3):
        monkeypatch.setattr(zoo_kernels, "threads", lambda n=threads: n)
        cl = zoo_kernels.relayout(t)
        back = zoo_kernels.relayout(cl)
        assert torch.equal(cl, t) and torch.equal(back, t)
        assert cl.dtype == dtype and back.dtype == dtype
        if shape[1] > 1 and shape[2] > 1:
            assert cl.stride() == (shape[1] * shape[2], 1, shape[1]) and back.is_contiguous()
    x = torch.randn(shape).to(dtype).transpose(1, 2).contiguous().transpose(1, 2)
    copied = zoo_kernels._like(x, t)
    assert copied.stride() == x.stride() and torch.equal(copied, t)
    with pytest.raises(ValueError, match="relayout takes"):
        zoo_kernels.relayout(torch.randn(2, 3, 8)[..., ::2])
    with pytest.raises(ValueError, match="relayout takes"):
        zoo_kernels.relayout(torch.randn(2, 3, 4, dtype=torch.float64))


@pytest.mark.parametrize("threads", [1, 3])
def test_zoo_kernels_do_not_depend_on_the_thread_count(threads):
    x = (torch.randn(3, 70, 6, 5) * 3 + 1).contiguous(memory_format=torch.channels_last)
    rows = x.view(3, 70, -1)
    p = torch.rand(3, 70, 3) + 0.5
    old = torch.get_num_threads()
    results = []
    try:
        for t in (1, threads):
            torch.set_num_threads(t)
            mean, var = zoo_kernels.row_stats(rows)
            sums = zoo_kernels.map_sums(zoo_kernels.S0, rows, rows, p)
            results.append([mean, var, zoo_kernels.map_forward(zoo_kernels.S0, rows, p), sums])
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


#: rows (N C) from which zoo.c shares SwitchableNorm's small graph among the threads
SWITCHABLE_PARALLEL_ROWS = 1024


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=str)
@pytest.mark.parametrize(
    ("shape", "affine"), [((72, 64, 3, 2), True), ((257, 5, 2, 3), False)], ids=str
)
def test_switchablenorm_graph_shared_among_threads(shape, affine, training, fmt) -> None:
    """From ``NZ_SW_PARALLEL`` rows (N C: 4608, and 1285 with 5 channels, fewer than a task's
    16, and a sample count that is not a multiple of 8) zoo.c runs SwitchableNorm's graph (the
    LN and BN statistics from the rows', each row's mixture, the backward's sums over samples,
    channels and every row) on all the threads: the same bits with 1 and 3 threads (an uneven
    split of samples and channels), and the values of the float64 reference math; with and
    without the affine parameters."""
    torch.manual_seed(5)
    assert shape[0] * shape[1] >= SWITCHABLE_PARALLEL_ROWS
    fast, ref = _pair("switchablenorm", {"affine": affine}, channels=shape[1])
    fast.train(training)
    ref = ref.double().train(training)
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).contiguous(memory_format=fmt)
    dy = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)

    def run() -> list[torch.Tensor]:
        m = copy.deepcopy(fast)
        xx = x.float().requires_grad_()
        y = m(xx)
        grads = torch.autograd.grad(y, [xx, *m.parameters()], dy.float())
        return [y, *grads, *m.buffers()]

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(3)
        three = run()
    finally:
        torch.set_num_threads(old)
    for a, b in zip(one, three, strict=True):
        assert torch.equal(a, b)
    xx = x.clone().requires_grad_()
    y = ref(xx)
    want = [y, *torch.autograd.grad(y, [xx, *ref.parameters()], dy), *ref.buffers()]
    names = [
        "y",
        "dx",
        *(n for n, _ in fast.named_parameters()),
        *(n for n, _ in fast.named_buffers()),
    ]
    for name, got, exp in zip(names, three, want, strict=True):
        scale = 1 + exp.double().abs().max().item()
        torch.testing.assert_close(
            got.double(), exp.double(), atol=2e-5 * scale, rtol=1e-4, msg=name
        )


@pytest.mark.parametrize("name", ["evonormb0", "evonorms0"])
def test_evonorm_one_value_per_row_takes_the_reference_math(name, monkeypatch) -> None:
    """(N, C) inputs (and spatial size 1) skip the row kernels, whose per-row cost made them
    4-6x slower than the reference math there; larger rows keep the fast path."""
    layer = normzoo.create(name, 8)
    ref = normzoo.create(name, 8, impl="reference")

    def refuse(*args, **kwargs):
        raise AssertionError("fast path taken")

    monkeypatch.setattr(type(layer), "_fast_forward", refuse)
    for shape in [(16, 8), (16, 8, 1), (16, 8, 1, 1)]:
        x = torch.randn(shape)
        torch.testing.assert_close(layer(x), ref(x))
    with pytest.raises(AssertionError, match="fast path taken"):
        layer(torch.randn(16, 8, 2, 2))


def test_zoo_operators_refuse_bad_input_before_any_state_change():
    """The C++ operators check what the kernels cannot handle (the modules only call them
    with good input) and fail before touching the running statistics."""
    if not _native.load_ops():
        pytest.skip("the C++ operator library could not be built here")
    ops = torch.ops.normzoo
    x, v, rv = torch.randn(2, 4, 3, 3), torch.ones(4), torch.rand(4) + 0.5
    before = rv.clone()
    logits = torch.zeros(3)
    with pytest.raises(RuntimeError, match="expected a float32 or bfloat16 CPU input"):
        ops.evonorm_s0(x.double(), v, None, None, 2, 1e-5)
    with pytest.raises(RuntimeError, match="expected a float32 CPU input"):
        ops.frozen_batch_norm(x.bfloat16(), v, rv, None, None, 1e-5, False)
    with pytest.raises(RuntimeError, match=r"groups \(3\) must divide the channels \(4\)"):
        ops.evonorm_s0(x, v, None, None, 3, 1e-5)
    with pytest.raises(RuntimeError, match=r"expected contiguous float32 CPU \(4,\) param"):
        ops.evonorm_b0(x, v, torch.ones(5), None, rv, True, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="batch=False normalizes with running_var"):
        ops.evonorm_b0(x, v, None, None, None, False, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match=r"\(3,\) mixture logits"):
        ops.switchable_norm(x, torch.zeros(2), logits, None, None, rv, rv, True, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="both running statistics or neither"):
        ops.switchable_norm(x, logits, logits, None, None, rv, None, True, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match=r"expected contiguous float32 CPU \(4,\) param"):
        ops.filter_response_norm(x, v, v, torch.ones(3), 1e-6)
    with pytest.raises(RuntimeError, match=r"expected \(N, C, \*spatial\) input"):
        ops.rms_norm_rows(x[:, :, 0, 0], None, None, 1e-6)
    assert torch.equal(rv, before)
    ops.evonorm_b0(x, v, None, None, rv, True, 0.1, 1e-5)  # the good call does update it
    assert not torch.equal(rv, before)


class _NoGradient(torch.autograd.Function):
    """``2 y`` whose backward gives ``y`` no gradient (``None``)."""

    @staticmethod
    def forward(ctx, y):  # type: ignore[override]
        return y * 2

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return None


@pytest.mark.parametrize("op", ["group_norm", "evonorm_b0", "switchable_norm"])
def test_operators_given_no_gradient_return_none(op):
    """The operators with non-differentiable extra outputs (statistics) make no zero
    gradients for them; where ``y`` gets no gradient either, the backward gives every input
    none (torch's convention: ``None``, not a zero tensor), with no kernel call."""
    if not _native.load_ops():
        pytest.skip("the C++ operator library could not be built here")
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    w = torch.ones(4, requires_grad=True)
    ops, logits = torch.ops.normzoo, torch.zeros(3)
    calls = {
        "group_norm": lambda: ops.group_norm(x, 2, w, None, 1e-5, False)[0],
        "evonorm_b0": lambda: ops.evonorm_b0(x, torch.ones(4), w, None, None, True, 0.1, 1e-5),
        "switchable_norm": lambda: ops.switchable_norm(
            x, logits, logits, w, None, None, None, True, 0.1, 1e-5
        ),
    }
    y = calls[op]()
    (_NoGradient.apply(y).sum() + x.sum()).backward()
    assert w.grad is None
    assert torch.equal(x.grad, torch.ones_like(x))  # only the direct term
    x.grad = None
    calls[op]().sum().backward()  # and with a gradient, as usual
    assert w.grad is not None and x.grad is not None


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("frn", {}),
        ("evonorms0", {}),
        ("evonormb0", {}),
        ("groupnorm", {"num_groups": 8}),
        ("rmsnorm", {"channels_last": True}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bfloat16_models_keep_the_token_kernels(name, kwargs, monkeypatch):
    """A model cast to bfloat16, its parameters too, keeps the fused token kernels (it ran the
    reference math in bfloat16 before, 5x slower): they take the parameters in float32, so
    the output and ``dx`` are the bits of the same model with float32 parameters (the
    bfloat16 values) and the parameters' gradients are that model's, cast to bfloat16."""
    calls = []
    for fn in ("frn_tokens_forward", "group_tokens_forward", "b0_tokens_forward",
               "rms_tokens_forward"):  # fmt: skip
        real = getattr(zoo_kernels, fn)
        monkeypatch.setattr(zoo_kernels, fn, lambda *a, _r=real, _n=fn: calls.append(_n) or _r(*a))
    torch.manual_seed(0)
    half = normzoo.create(name, 512, **kwargs)
    with torch.no_grad():
        for p in half.parameters():
            p.uniform_(0.5, 1.5)
    half = half.to(torch.bfloat16)
    full = normzoo.create(name, 512, **kwargs)
    full.load_state_dict(half.state_dict())  # float32 parameters, the bfloat16 values
    x = torch.randn(64, 512).to(torch.bfloat16)  # 32K elements: TOKEN_MIN_NUMEL
    dy = torch.randn(64, 512).to(torch.bfloat16)
    out = []
    for m in (half, full):
        calls.clear()
        xx = x.clone().requires_grad_()
        y = m(xx)
        assert calls, "the token kernels did not run"
        out.append((y, torch.autograd.grad(y, [xx, *m.parameters()], dy)))
    (ya, ga), (yb, gb) = out
    assert ya.dtype == yb.dtype == torch.bfloat16 and torch.equal(ya, yb)
    assert torch.equal(ga[0], gb[0])
    for a, b in zip(ga[1:], gb[1:], strict=True):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b.to(torch.bfloat16))
    if name == "evonormb0":  # the running variance, blended into the bfloat16 buffer
        torch.testing.assert_close(half.running_var.float(), full.running_var, atol=1e-2, rtol=1e-2)


def test_batch_renorm_tokens_take_the_column_kernel(monkeypatch):
    """Float32 tokens ``(N, C)`` from TOKEN_MIN_NUMEL elements: the statistics from
    ``zoo.c``'s column kernel, ``y`` from ``x`` in one pass; equal to the reference over
    three steps with ``r`` and ``d`` active (outputs, gradients, running statistics)."""
    calls = []
    real = zoo_kernels.column_stats
    monkeypatch.setattr(zoo_kernels, "column_stats", lambda x: calls.append(x.shape) or real(x))
    fast, ref = _pair("batchrenorm", {"warmup_steps": 0, "r_max_steps": 1, "d_max_steps": 1})
    for step, scale in enumerate((1.0, 2.0, 0.1)):  # 0.1: eps is 1e-3 of the variance
        _compare(fast, ref, torch.randn(512, 8) * (step + 1) + step)  # below: torch's kernel
        # parameter gradients: sums over 4096 rows in another order than autograd's
        _compare(fast, ref, torch.randn(4096, 8) * scale + step, {"atol": 2e-4, "rtol": 1e-5})
        fast.zero_grad(set_to_none=True), ref.zero_grad(set_to_none=True)
    assert calls == [(4096, 8)] * 3


# -- bfloat16 on the per-row kernels (zoo_rows.h built for bfloat16) ------------------------
BF16 = torch.bfloat16


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bfloat16 tensors, NaN where NaN (whatever its payload), the same bits elsewhere."""
    nan = a.isnan()
    if not torch.equal(nan, b.isnan()):
        return False
    return torch.equal(
        a.masked_fill(nan, 0).view(torch.int16), b.masked_fill(nan, 0).view(torch.int16)
    )


def test_bfloat16_rows_round_once_to_nearest_even():
    """The bfloat16 kernels widen each value, compute in float32 and round the result once
    to the nearest bfloat16, ties to even, NaN to NaN, overflow to infinity: known answers
    at the halfway points, and the bits of torch's own conversion of the float32 kernel's
    output."""
    one = 1.0
    big = torch.finfo(BF16).max  # (2 - 2^-7) 2^127
    x = torch.tensor([one, one + 2**-7, -one, 3.0, float("nan"), float("inf"), big, 0.0])
    x = x.to(BF16).view(1, 1, -1).expand(1, 5, -1).contiguous()
    a = torch.tensor([1.0, 1.0, 1.0, 1.0 + 2**-8, 1.0])
    b = torch.tensor([2**-8, 3 * 2**-8, 2**-8 + 2**-16, 0.0, -(2**-9)])
    p = torch.stack([a, b], dim=1).view(1, 5, 2).contiguous()
    y = zoo_kernels.map_forward(zoo_kernels.AFFINE, x, p)
    assert y.dtype == BF16
    # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to the even 1; 1 + 3 2^-8 is halfway
    # between 1 + 2^-7 and 1 + 2^-6: to the even 1 + 2^-6; just above halfway goes up
    assert y[0, 0, 0].item() == 1.0
    assert y[0, 1, 0].item() == 1.0 + 2**-6
    assert y[0, 2, 0].item() == 1.0 + 2**-7
    assert y[0, 0, 2].item() == -1.0 + 2**-8  # exact in bfloat16 (-0.99609375)
    assert y[0, 3, 6].item() == float("inf")  # (2 - 2^-15) 2^127: past halfway to 2^128
    assert y[0, 4, 7].item() == -(2**-9)
    assert y[..., 4].isnan().all() and (y[..., 5] == float("inf")).all()
    reference = zoo_kernels.map_forward(zoo_kernels.AFFINE, x.float(), p).to(BF16)
    assert _bits_equal(y, reference)


@pytest.mark.parametrize("cl", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "op", [zoo_kernels.AFFINE, zoo_kernels.B0, zoo_kernels.S0, zoo_kernels.TLU]
)
def test_bfloat16_row_kernels_equal_the_float32_ones(op, cl):
    """Every per-row kernel takes bfloat16 ``x`` and ``dy`` as they are: the elementwise
    passes (forward map, ``dx``) give the bits of the float32 kernels on the widened values,
    rounded once; the statistics and row sums (float32 outputs) agree with them to float32
    rounding (their sums may add in another order)."""
    torch.manual_seed(0)
    n, c, h, w = 3, 70, 6, 7
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = (torch.randn(n, c, h, w) * 2 + 1).to(BF16).contiguous(memory_format=fmt)
    dy = torch.randn(n, c, h, w).to(BF16).contiguous(memory_format=fmt)
    x[0, 0, 0, :3] = 0  # ties of the TLU and B0 maxima
    rows, drows = x.view(n, c, -1), dy.view(n, c, -1)
    size = zoo_kernels.NPARAMS[op]
    p = (torch.rand(n, c, size) + 0.5).contiguous()
    if op in (zoo_kernels.TLU, zoo_kernels.B0):
        p[..., 2] = torch.randn(n, c) * 0.3
    mean, k1, k0 = (torch.randn(n, c) for _ in range(3))
    mean_b, var_b = zoo_kernels.row_stats(rows)
    mean_f, var_f = zoo_kernels.row_stats(rows.float())
    torch.testing.assert_close(mean_b, mean_f, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var_b, var_f, rtol=1e-5, atol=1e-6)
    y = zoo_kernels.map_forward(op, rows, p)
    assert y.dtype == BF16 and y.stride() == rows.stride()
    assert _bits_equal(y, zoo_kernels.map_forward(op, rows.float(), p).to(BF16))
    dx = zoo_kernels.map_dx(op, drows, rows, p, mean, k1, k0)
    assert dx.dtype == BF16 and dx.stride() == rows.stride()
    assert _bits_equal(
        dx, zoo_kernels.map_dx(op, drows.float(), rows.float(), p, mean, k1, k0).to(BF16)
    )
    sums = zoo_kernels.map_sums(op, drows, rows, p)
    assert sums.dtype == torch.float32
    torch.testing.assert_close(
        sums, zoo_kernels.map_sums(op, drows.float(), rows.float(), p), rtol=1e-4, atol=1e-3
    )


def _fused_norm(name: str, x: torch.Tensor, dy: torch.Tensor) -> list[torch.Tensor]:
    """Forward and backward of zoo.c's EvoNorm-S0 (8 groups), FRN or RMSNorm on ``x``: ``y``,
    the statistics, the parameters, ``dx`` and the parameter gradients."""
    gen = torch.Generator().manual_seed(1)
    c = x.shape[1]
    w, b, extra = (torch.rand(c, generator=gen) + 0.5 for _ in range(3))
    if name == "s0":
        y, stats, params = zoo_kernels.s0_forward(x, extra, w, b, 8, 1e-5)
        grads = zoo_kernels.s0_backward(dy, x, params, stats, w, 8, 1e-5, (True,) * 4)
        return [y, stats, params, *grads]
    if name == "rms":
        y, mean, var, params = zoo_kernels.rms_forward(x, w, b, 1e-6)
        grads = zoo_kernels.rms_backward(dy, x, params, mean, var, w, 1e-6, (True,) * 3)
        return [y, mean, var, params, *grads]
    y, mean, var, params = zoo_kernels.frn_forward(x, w, b, extra - 1, 1e-6)
    grads = zoo_kernels.frn_backward(dy, x, params, mean, var, w, 1e-6, (True,) * 4)
    return [y, mean, var, params, *grads]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(5, 16, 35), (8, 64, 1024)], ids=str)
@pytest.mark.parametrize("name", ["s0", "frn", "rms"])
def test_fused_groups_give_the_two_pass_bits(name, shape, layout, monkeypatch):
    """EvoNorm-S0, FRN and RMSNorm finish runs of whole groups (of a sample's channels, one
    channel, a sample) in cache where there are four runs or more per thread, or as many per
    thread (zoo.c, "fused groups"; channels_last: tasks of a sample's block of whole groups;
    here on one thread), and otherwise take two passes over memory (here: on 64 threads).
    Every output of both paths has the same bits, but contiguous bfloat16 S0's dx (which tells
    the paths apart): the fused path keeps (df/dx) dy from the sums' sweep in a float buffer
    (the float32 path's expression), where the two-pass path recomputes it in another order
    (a bfloat16 step apart at most: a float32 rounding apart before the bfloat16 one, which
    moves few values: none of the small shape's on one machine, one of its 2800 and 15 of the
    large shape's 2^19 on another, where the compiler contracts the expressions differently);
    both agree with the float32 kernels on the widened values to bfloat16 rounding. (On
    channels_last both paths recompute it: the same bits.)"""
    torch.manual_seed(0)
    n, c, length = shape
    x = torch.randn(n, length, c) * 2 + 1
    dy = torch.randn(n, length, c)
    if layout == "channels_last":  # (N, C, L) views with strides (L C, 1, C)
        x, dy = x.transpose(1, 2).to(BF16), dy.transpose(1, 2).to(BF16)
    else:
        x, dy = x.transpose(1, 2).contiguous().to(BF16), dy.transpose(1, 2).contiguous().to(BF16)
    groups = {"s0": 8, "frn": c, "rms": 1}[name]
    out = {}
    for threads in (1, 64):
        monkeypatch.setattr(zoo_kernels, "threads", lambda t=threads: t)
        widths = [zoo_kernels.fused_width(t, groups) for t in (x.float(), x)]
        assert all(widths) if threads == 1 else not any(widths), widths
        out[threads] = [_fused_norm(name, x.float(), dy.float()), _fused_norm(name, x, dy)]
    (fused, fused_bf16), (two_pass, two_pass_bf16) = out[1], out[64]
    dx = 3 if name == "s0" else 4
    for i, (a, b) in enumerate(zip(fused + fused_bf16, two_pass + two_pass_bf16, strict=True)):
        if i == len(fused) + dx and name == "s0" and layout == "contiguous":  # bf16 S0's dx
            assert a.dtype == BF16 and (a != b).sum() <= max(2, a.numel() >> 10)
            torch.testing.assert_close(a.float(), b.float(), rtol=2**-7, atol=1e-6)
        else:
            assert torch.equal(a, b), i
    for a, b in zip(fused_bf16, fused, strict=True):
        tol = {"rtol": 2**-7, "atol": 1e-5} if a.dtype == BF16 else {"rtol": 1e-4, "atol": 1e-4}
        torch.testing.assert_close(a.float(), b, **tol)


@pytest.fixture
def zoo_kernel_names(monkeypatch) -> list[str]:
    """The names of the zoo library's C functions called, in order (``name_bf16`` for the
    bfloat16 build)."""
    ran: list[str] = []
    real = zoo_kernels._fn
    monkeypatch.setattr(
        zoo_kernels, "_fn", lambda x, fn: ran.append(real(x, fn).__name__) or real(x, fn)
    )
    return ran


def _twins(
    name: str, c: int, kwargs: dict, warm: tuple[int, ...] | None = None
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two equal modules (float32 parameters in [0.5, 1.5]; ``warm``: two training steps on
    inputs of that shape first, for running statistics away from their initial values)."""
    torch.manual_seed(0)
    first = normzoo.create(name, c, **kwargs)
    with torch.no_grad():
        for p in first.parameters():
            p.uniform_(0.5, 1.5)
        for _ in range(2 if warm else 0):
            first(torch.randn(warm) * 2 + 1)
    second = normzoo.create(name, c, **kwargs)
    second.load_state_dict(first.state_dict())
    return first, second


# (name, kwargs, layouts): the norms whose conv path runs on the per-row kernels
BF16_ROW_NORMS = [
    ("frn", {}, ("contiguous", "channels_last")),
    ("rmsnorm", {}, ("contiguous", "channels_last")),
    ("evonorms0", {}, ("contiguous", "channels_last")),
    ("evonormb0", {}, ("contiguous", "channels_last")),
    ("switchablenorm", {}, ("contiguous", "channels_last")),
    ("instancenorm", {"affine": True, "track_running_stats": True}, ("channels_last",)),
    ("groupnorm", {"num_groups": 4}, ("channels_last",)),
]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    ("name", "kwargs", "layout"),
    [(n, k, fmt) for n, k, fmts in BF16_ROW_NORMS for fmt in fmts],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bfloat16_conv_input_runs_the_bfloat16_row_kernels(
    name, kwargs, layout, train, zoo_kernel_names
):
    """A bfloat16 conv input reaches the per-row kernels as it is (it took float32 copies of
    ``x``, ``y``, ``dy`` and ``dx`` before: 2.5-3.5x slower): the kernels that run are the
    bfloat16 ones (behind the C++ operators: ``ZOO_OPS``); output,
    ``dx``, parameter gradients and running statistics agree with the same module on the
    float32 values to bfloat16 rounding (one rounding of each output), in training and in
    eval (the running statistics from two earlier steps); layout and dtype are kept."""
    ran = zoo_kernel_names
    op = name in ZOO_OPS and _native.ops_available()  # the kernels behind a C++ operator
    half, full = _twins(name, 16, kwargs, warm=(4, 16, 9, 11))
    half.train(train)
    full.train(train)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = (torch.randn(4, 16, 9, 11) * 2 + 1).to(BF16).contiguous(memory_format=fmt)
    dy = torch.randn(4, 16, 9, 11).to(BF16).contiguous(memory_format=fmt)
    out = []
    for m, xx, g in ((half, x, dy), (full, x.float(), dy.float())):
        ran.clear()
        xx = xx.clone().requires_grad_()
        y = m(xx)
        grads = torch.autograd.grad(y, [xx, *m.parameters()], g)
        out.append((y, grads, list(ran)))
    (yb, gb, ran_b), (yf, gf, _) = out
    if name == "instancenorm" and not train:  # the running statistics: torch's inference BN
        assert not ran_b
    elif op:  # the operator's bfloat16 kernels, its C++ node: no Python kernel call
        assert not ran_b and yb.grad_fn.name().endswith(f"{ZOO_NODES[name]}>")
    else:
        assert ran_b and all(fn.endswith("_bf16") for fn in ran_b), ran_b
    assert yb.dtype == gb[0].dtype == BF16
    assert yb.is_contiguous(memory_format=fmt) and gb[0].is_contiguous(memory_format=fmt)
    torch.testing.assert_close(yb.float(), yf, rtol=2**-8, atol=1e-5)
    torch.testing.assert_close(gb[0].float(), gf[0], rtol=2**-7, atol=2e-3)
    for a, b in zip(gb[1:], gf[1:], strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    for key, value in full.state_dict().items():
        torch.testing.assert_close(half.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", ["frn", "evonorms0", "evonormb0", "switchablenorm"])
def test_bfloat16_row_kernels_double_backward(name):
    """``create_graph=True`` on a bfloat16 input differentiates the float32 math of the
    kernels (the C++ operators' reference math promoted to float32, the result bfloat16):
    second derivatives agree with the float32 module's."""
    torch.manual_seed(0)
    x = (torch.randn(2, 8, 5, 6) * 2).to(BF16)
    m = normzoo.create(name, 8)
    half, full = _second_derivatives(m, x), _second_derivatives(m, x.float())
    assert half[0].dtype == BF16
    for a, b in zip(half, full, strict=True):
        torch.testing.assert_close(a.float(), b, rtol=2**-7, atol=1e-4 * b.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"]
)
def test_half_batch_renorm_runs_torchs_half_kernels(dtype, fmt, monkeypatch):
    """Half-precision CPU input trains on torch's half kernels (statistics in float32 from
    ``batch_norm_update_stats``, no float32 copy of ``x``): over three steps with ``r`` and
    ``d`` active, output, ``dx``, parameter gradients and running statistics agree with the
    same module on the float32 values to half-precision rounding; dtype and layout kept."""
    calls = []
    real = torch.batch_norm_update_stats
    monkeypatch.setattr(
        torch, "batch_norm_update_stats", lambda *a: calls.append(a[0].dtype) or real(*a)
    )
    kwargs = {"warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0, "r_max": 1.5, "d_max": 0.5}
    torch.manual_seed(0)
    half, full = (normzoo.create("batchrenorm", 8, **kwargs) for _ in range(2))
    with torch.no_grad():
        half.weight.uniform_(0.5, 1.5)
        half.bias.uniform_(-0.5, 0.5)
    full.load_state_dict(half.state_dict())
    eps = 2**-8 if dtype == torch.bfloat16 else 2**-11
    for step in range(3):
        x = (torch.randn(6, 8, 5, 7) * (step + 1) + step).to(dtype).contiguous(memory_format=fmt)
        dy = torch.randn(6, 8, 5, 7).to(dtype).contiguous(memory_format=fmt)
        out = []
        for m, xx, g in ((half, x, dy), (full, x.float(), dy.float())):
            xx = xx.clone().requires_grad_()
            y = m(xx)
            out.append((y, torch.autograd.grad(y, [xx, m.weight, m.bias], g)))
        (yh, gh), (yf, gf) = out
        assert yh.dtype == gh[0].dtype == dtype and yh.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(yh.float(), yf, rtol=eps, atol=1e-4)
        torch.testing.assert_close(gh[0].float(), gf[0], rtol=2 * eps, atol=1e-3)
        for a, b in zip(gh[1:], gf[1:], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
        for key, value in full.state_dict().items():
            torch.testing.assert_close(half.state_dict()[key], value, rtol=1e-5, atol=1e-5)
    assert calls == [dtype] * 3
    half.eval()
    full.eval()
    x = torch.randn(6, 8, 5, 7).to(dtype).contiguous(memory_format=fmt)
    torch.testing.assert_close(half(x).float(), full(x.float()), rtol=eps, atol=1e-4)


@pytest.mark.parametrize(
    "fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"]
)
def test_bfloat16_batch_renorm_runs_the_bfloat16_renorm_kernel(fmt, monkeypatch):
    """bfloat16 conv input of a size BatchNorm's kernels serve takes Batch Renorm's one native
    call in its bfloat16 build (``nz_renorm_forward*_bf16``; the backward BatchNorm's with the
    weight ``w r``; behind the C++ operator where it is built): over three steps with ``r``
    and ``d`` active, output, ``dx``, parameter gradients and running statistics agree with
    the same module on the float32 values to bfloat16 rounding; dtype and layout kept."""
    from normzoo._native import kernels

    ran = []
    real = kernels._fn
    monkeypatch.setattr(kernels, "_fn", lambda lib, name: ran.append(name) or real(lib, name))
    kwargs = {"warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0, "r_max": 1.5, "d_max": 0.5}
    torch.manual_seed(0)
    half, full = (normzoo.create("batchrenorm", 32, **kwargs) for _ in range(2))
    with torch.no_grad():
        half.weight.uniform_(0.5, 1.5)
        half.bias.uniform_(-0.5, 0.5)
    full.load_state_dict(half.state_dict())
    shape = (16, 32, 24, 24)
    cl = "_cl" if fmt == torch.channels_last else ""
    for step in range(3):
        x = (torch.randn(shape) * (step + 1) + step).to(BF16).contiguous(memory_format=fmt)
        dy = torch.randn(shape).to(BF16).contiguous(memory_format=fmt)
        out = []
        for m, xx, g in ((half, x, dy), (full, x.float(), dy.float())):
            ran.clear()
            xx = xx.clone().requires_grad_()
            y = m(xx)
            out.append((y, torch.autograd.grad(y, [xx, m.weight, m.bias], g), list(ran)))
        (yh, gh, ran_h), (yf, gf, _) = out
        if _native.ops_available():  # behind the C++ operator: no Python kernel call
            assert not ran_h and "BatchRenormFunction" in yh.grad_fn.name()
        else:
            assert ran_h == [f"nz_renorm_forward{cl}_bf16", f"nz_bn_backward{cl}_bf16"]
        assert yh.dtype == gh[0].dtype == BF16 and yh.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(yh.float(), yf, rtol=2**-8, atol=1e-4)
        torch.testing.assert_close(gh[0].float(), gf[0], rtol=2**-7, atol=1e-3)
        for a, b in zip(gh[1:], gf[1:], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
        for key, value in full.state_dict().items():
            torch.testing.assert_close(half.state_dict()[key], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize(
    "fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"]
)
def test_batch_renorm_operator_gives_the_python_paths_bits(dtype, fmt, monkeypatch):
    """Batch Renorm's training step behind its C++ operator (``batch_renorm_train``: the
    native call, BatchNorm's backward with the weight ``w r``, the running statistics blended
    in C++) against the Python ``autograd.Function`` on the same kernels: over three steps
    with ``r`` and ``d`` active, output, input and parameter gradients, running statistics and
    the step count to the bit; second derivatives (``create_graph=True``, the weight's
    included) equal, and the reference math's (float32)."""
    if not _native.load_ops():
        pytest.skip("the C++ operator library could not be built here")
    from normzoo.norms import batch_renorm

    kwargs = {"warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0, "r_max": 1.5, "d_max": 0.5}
    torch.manual_seed(0)
    op = normzoo.create("batchrenorm", 32, **kwargs)
    with torch.no_grad():
        op.weight.uniform_(0.5, 1.5)
        op.bias.uniform_(-0.5, 0.5)
    python = copy.deepcopy(op)
    real = batch_renorm.use_zoo_op
    for step in range(3):
        x = (torch.randn(16, 32, 24, 24) * (step + 1) + step).to(dtype)
        x = x.contiguous(memory_format=fmt)
        dy = torch.randn_like(x)
        out = []
        for m, serve in ((op, real), (python, lambda *t: False)):
            monkeypatch.setattr(batch_renorm, "use_zoo_op", serve)
            xx = x.clone().requires_grad_()
            y = m(xx)
            out.append((y, torch.autograd.grad(y, [xx, m.weight, m.bias], dy)))
        (ya, ga), (yb, gb) = out
        assert "BatchRenormFunction" in ya.grad_fn.name()
        assert "BatchRenormFunction" not in yb.grad_fn.name()
        for a, b in zip((ya, *ga), (yb, *gb), strict=True):
            assert torch.equal(a, b)
        for a, b in zip(op.state_dict().values(), python.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    reference = copy.deepcopy(python)
    reference.impl = "reference"  # normzoo.functional.batch_renorm, plain autograd
    seconds = []
    for m, serve in ((op, real), (python, lambda *t: False), (reference, real)):
        monkeypatch.setattr(batch_renorm, "use_zoo_op", serve)
        xx = x.clone().requires_grad_()
        (g,) = torch.autograd.grad((m(xx).float() * dy.float()).sum(), xx, create_graph=True)
        seconds.append(torch.autograd.grad(g.float().pow(2).sum(), [xx, m.weight]))
    for a, b in zip(*seconds[:2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if dtype == torch.float32:  # the weight's second derivative too (it was not reached)
        for a, b in zip(seconds[0], seconds[2], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item())


def _token_kernel_cases(x, dy):
    """Every token kernel on ``x`` ``(R, C)`` and ``dy``: name -> (outputs computed
    elementwise, outputs with sums)."""
    c = x.shape[1]
    g = torch.Generator().manual_seed(1)
    v, w, b = (
        torch.randn(c, generator=g),
        torch.rand(c, generator=g) + 0.5,
        torch.randn(c, generator=g),
    )
    tau = torch.randn(c, generator=g) * 0.2
    out = {}
    for op, name in ((zoo_kernels.TOKENS_GN, "gn"), (zoo_kernels.TOKENS_S0, "s0")):
        y, mean, rstd = zoo_kernels.group_tokens_forward(op, x, v, w, b, 8, 1e-5)
        grads = zoo_kernels.group_tokens_backward(op, dy, x, v, w, mean, rstd, (True,) * 4)
        out[name] = ([], [y, mean, rstd, *grads])
    mean, var = zoo_kernels.column_stats(x)
    s_b = torch.sqrt(var + 1e-5)
    y = zoo_kernels.b0_tokens_forward(x, v, s_b, w, b, 1e-5)
    fused = zoo_kernels.b0_tokens_backward(dy, x, v, s_b, w, None, 1e-5, (True,) * 4)
    batch = zoo_kernels.b0_tokens_backward(dy, x, v, s_b, w, mean, 1e-5, (True,) * 4)
    out["b0"] = ([y, fused[0]], [mean, var, *fused[1:], *batch])
    y, rrms = zoo_kernels.rms_tokens_forward(x, w, b, 1e-6)
    out["rms"] = ([], [y, rrms, *zoo_kernels.rms_tokens_backward(dy, x, w, rrms, (True,) * 3)])
    z = zoo_kernels.frn_tokens_forward(x, w, b, tau, 1e-6)
    dx, *sums = zoo_kernels.frn_tokens_backward(dy, x, w, b, tau, 1e-6, True)
    out["frn"] = ([z, dx], sums)
    return out


def test_bfloat16_token_kernels_equal_the_float32_ones():
    """The token kernels take bfloat16 ``x`` and ``dy`` as they are (built from the same
    source as the float32 ones): what they compute elementwise (FRN's ``z`` and ``dx``,
    EvoNorm-B0's ``y`` and its one-sweep ``dx``) is the float32 kernels' output on the widened
    values rounded once, to the bit; the rest (row or column statistics and sums, and what
    depends on them) agrees to float32 rounding (their sums may add in another order), up to
    one bfloat16 rounding for bfloat16 outputs."""
    torch.manual_seed(0)
    x = (torch.randn(130, 96) * 2 + 0.5).to(BF16)
    dy = torch.randn(130, 96).to(BF16)
    x[0, :4] = 0  # ties of the TLU and of B0's maximum
    half, full = _token_kernel_cases(x, dy), _token_kernel_cases(x.float(), dy.float())
    for name, (exact_h, rest_h) in half.items():
        exact_f, rest_f = full[name]
        for a, b in zip(exact_h, exact_f, strict=True):
            assert a.dtype == BF16 and _bits_equal(a, b.to(BF16)), name
        for a, b in zip(rest_h, rest_f, strict=True):
            if a.dtype == BF16:
                torch.testing.assert_close(a.float(), b, rtol=2**-7, atol=1e-2, msg=name)
            else:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("frn", {}),
        ("rmsnorm", {"channels_last": True}),
        ("groupnorm", {"num_groups": 32}),
        ("evonorms0", {}),
        ("evonormb0", {}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bfloat16_tokens_run_the_bfloat16_token_kernels(name, kwargs, zoo_kernel_names):
    """bfloat16 token input ``(N, C)`` reaches the token kernels as it is (float32 copies of
    ``x``, ``y``, ``dy`` and ``dx`` before: 4-7x slower on (2048, 4096)); output, ``dx`` and
    the parameters' gradients agree with the float32 module's to bfloat16 rounding, and a
    double backward differentiates the float32 math."""
    ran = zoo_kernel_names
    half, full = _twins(name, 512, kwargs)
    x = (torch.randn(64, 512) * 2).to(BF16)  # 32K elements: TOKEN_MIN_NUMEL
    dy = torch.randn(64, 512).to(BF16)
    out = []
    for m, xx, g in ((half, x, dy), (full, x.float(), dy.float())):
        ran.clear()
        xx = xx.clone().requires_grad_()
        y = m(xx)
        out.append((y, torch.autograd.grad(y, [xx, *m.parameters()], g), list(ran)))
    (yb, gb, ran_b), (yf, gf, _) = out
    assert ran_b and all(fn.endswith("_bf16") for fn in ran_b), ran_b
    assert yb.dtype == gb[0].dtype == BF16
    torch.testing.assert_close(yb.float(), yf, rtol=2**-8, atol=1e-5)
    torch.testing.assert_close(gb[0].float(), gf[0], rtol=2**-7, atol=2e-3)
    for a, b in zip(gb[1:], gf[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    assert _second_derivatives(half, x)[0].dtype == BF16
    for a, b in zip(
        _second_derivatives(half, x), _second_derivatives(full, x.float()), strict=True
    ):
        torch.testing.assert_close(a.float(), b, rtol=2**-7, atol=1e-4 * b.abs().max().item())


def _second_derivatives(m: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``u2 . d(u1 . y)/dx`` differentiated again (``create_graph=True``) with respect to
    ``x`` and the weight, for fixed bfloat16-exact ``u1``, ``u2``: the same numbers from a
    bfloat16 ``x`` as from its float32 values, up to the rounding of each result (a loss like
    ``sum(y^2)`` would feed the rounded ``y`` back in)."""
    g = torch.Generator().manual_seed(3)
    u1, u2 = (torch.randn(x.shape, generator=g).to(BF16).float() for _ in range(2))
    xx = x.clone().requires_grad_()
    (g1,) = torch.autograd.grad((m(xx).float() * u1).sum(), xx, create_graph=True)
    return torch.autograd.grad((g1.float() * u2).sum(), [xx, m.weight])


@pytest.mark.parametrize(
    "fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"]
)
def test_batch_renorm_kernel_clips_r_and_d_per_channel(fmt):
    """``kernels.renorm_forward_unchecked``: BatchNorm's forward with each channel's ``r`` and
    ``d`` from its own moments and the running statistics, clipped at both ends (running
    statistics far above, far below and near each channel's batch statistics): ``r``, ``d``,
    the map's weight and bias, the unbiased variance and ``y`` as the float64 formulas."""
    from normzoo._native import kernels

    torch.manual_seed(0)
    c = 6
    x = (torch.randn(5, c, 7, 9) * 2 + 1).contiguous(memory_format=fmt)
    xd = x.double()
    mean = xd.mean((0, 2, 3))
    var = xd.var((0, 2, 3), unbiased=False)
    # sigma_B / sigma: 1/9, 1/4, about 1, 4, 9, 1: r clipped at 1/3, inside, at 3
    running_var = var * torch.tensor([81.0, 16.0, 1.1, 1 / 16, 1 / 81, 0.9], dtype=torch.float64)
    running_mean = mean + torch.tensor([50.0, -50.0, 0.1, 0.0, 30.0, -0.2], dtype=torch.float64)
    w, b = torch.rand(c) + 0.5, torch.randn(c)
    rm, rv = running_mean.float(), running_var.float()
    y, stats, out = kernels.renorm_forward_unchecked(x, w, b, rm, rv, 3.0, 2.0, 1e-5)
    sigma = (running_var + 1e-5).sqrt()
    r = ((var + 1e-5).sqrt() / sigma).clamp(1 / 3, 3.0)
    d = ((mean - running_mean) / sigma).clamp(-2.0, 2.0)
    assert (r == 1 / 3).any() and (r == 3.0).any() and (d.abs() == 2.0).sum() >= 2
    m = x[:, 0].numel()
    for got, want in zip(out, [r, d, w * r, w * d + b, var * m / (m - 1)], strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    view = (1, c, 1, 1)
    want_y = (xd - mean.view(view)) / (var.view(view) + 1e-5).sqrt() * (w * r).view(view) + (
        w * d + b
    ).view(view)
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y.double(), want_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats[0].double(), mean, rtol=1e-6, atol=1e-6)
