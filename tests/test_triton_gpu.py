"""normzoo's Triton kernels (``normzoo.norms._triton``, ``_triton_zoo``) through the modules,
every kernel forced on every input it supports: outputs, input and parameter gradients and
running statistics equal torch.nn's (or normzoo's reference math for the zoo), layouts kept,
the ReLU fused to the bit, half inputs, double backward; the measured dispatch.

On a CUDA GPU (``scripts/gpu_check.sh``'s ``tritontest`` step). Without one, with triton
installed, ``NORMZOO_TRITON_CPU=1 TRITON_INTERPRET=1 python -m pytest tests/test_triton_gpu.py``
runs the same tests on the CPU under Triton's interpreter (slow: minutes), which checks the
tests themselves and the kernels' arithmetic before a GPU is lent; CI has neither and skips.
"""

import copy
import math
import os
from typing import Any

import pytest
import torch
from norm_testing import fwd_bwd as _fwd_bwd
from torch import nn
from triton_interpreter_check import served_on_cpu

import normzoo
from normzoo.norms import _triton


def _device() -> str | None:
    """``"cuda"``; else ``"cpu"`` under Triton's interpreter where asked
    (``NORMZOO_TRITON_CPU=1``, ``TRITON_INTERPRET=1``, triton installed); else ``None``."""
    if torch.cuda.is_available():
        return "cuda"
    asked = os.environ.get("NORMZOO_TRITON_CPU") == "1" and os.environ.get("TRITON_INTERPRET")
    return "cpu" if asked and _triton.available() else None


DEVICE = _device()
pytestmark = pytest.mark.skipif(
    DEVICE is None,
    reason="no CUDA GPU (NORMZOO_TRITON_CPU=1 TRITON_INTERPRET=1 runs these on the CPU)",
)
needs_cuda = pytest.mark.skipif(DEVICE != "cuda", reason="a CUDA GPU's dispatch and devices")


#: Batch Renorm's limits clipping r and d from the first step.
RENORM = {"r_max": 1.5, "d_max": 0.5, "warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0}


def _vs_reference(name: str, groups_of: int | None = None, **kwargs: Any) -> tuple[Any, Any]:
    """Makers of ``name`` and of its ``impl="reference"`` twin (``groups_of``: groups of that
    many channels)."""

    def make(c: int, **more: Any) -> nn.Module:
        groups = {} if groups_of is None else {"num_groups": c // groups_of}
        return normzoo.create(name, c, **groups, **kwargs, **more)

    return make, lambda c: make(c, impl="reference")


#: module, its torch.nn equivalent, and the input shapes: one-pass and two-phase kernels,
#: several chunks per set, channel blocks, odd sizes (masks), 1-d to 3-d spatial.
TRITON_CASES = {
    "bn": (lambda c: normzoo.create("bn", c), lambda c: nn.BatchNorm2d(c)),
    "bn1d": (lambda c: normzoo.create("bn", c), lambda c: nn.BatchNorm1d(c)),
    "bn_cumulative": (  # momentum=None: the factors 1, 1/2, 1/3 (lerp's two branches)
        lambda c: normzoo.create("bn", c, momentum=None),
        lambda c: nn.BatchNorm2d(c, momentum=None),
    ),
    "gn": (lambda c: normzoo.create("gn", c, num_groups=4), lambda c: nn.GroupNorm(4, c)),
    "ln": (lambda c: normzoo.create("ln", c), lambda c: nn.GroupNorm(1, c)),
    "in": (
        lambda c: normzoo.create("in", c, track_running_stats=True),
        lambda c: nn.InstanceNorm2d(c, affine=True, track_running_stats=True),
    ),
    "gn_tokens": (lambda c: normzoo.create("gn", c, num_groups=4), lambda c: nn.GroupNorm(4, c)),
    "ln_tokens": (
        lambda c: normzoo.create("ln", c, channels_last=True),
        lambda c: nn.LayerNorm(c),
    ),
    "rms_tokens": _vs_reference("rms", channels_last=True),  # torch.nn.RMSNorm has no bias
    # the zoo (no torch.nn equivalent: normzoo's reference math on torch's kernels)
    "rms": _vs_reference("rms"),
    "frn": _vs_reference("frn"),
    "s0": _vs_reference("evonorms0", groups_of=4),
    "frn_tokens": _vs_reference("frn"),  # the token-group kernels' flags (one channel a group)
    "s0_tokens": _vs_reference("evonorms0", groups_of=4),
    "renorm": _vs_reference("batchrenorm", **RENORM),
    "switchable": _vs_reference("switchablenorm"),
    "b0": _vs_reference("evonormb0"),
    "ghost": _vs_reference("ghostbatchnorm", virtual_batch_size=3),
    "frozen": _vs_reference("frozenbatchnorm"),
}
TRITON_SHAPES = {
    "bn": [(8, 12, 30, 30), (64, 24, 9, 9), (2, 40, 130, 70)],
    "bn1d": [(300, 36), (50, 24, 77)],
    "bn_cumulative": [(8, 12, 30, 30)],
    "gn": [(8, 12, 30, 30), (4, 32, 130, 70), (3, 20, 7, 9, 11)],
    "ln": [(8, 12, 30, 30), (4, 32, 130, 70)],
    "in": [(8, 12, 30, 30), (2, 8, 130, 70)],
    "gn_tokens": [(300, 36), (1000, 1032)],  # groups of 9 and 258 channels (padded)
    "ln_tokens": [(4, 300, 36), (1000, 1030)],
    "rms_tokens": [(4, 300, 36), (1000, 1030)],
    "rms": [(4, 12, 20, 20), (4, 32, 130, 70), (3, 8, 7, 9, 11)],  # one pass, two phases
    "frn": [(8, 12, 30, 30), (2, 8, 70, 70), (3, 20, 7, 9, 11)],
    "s0": [(8, 12, 30, 30), (2, 8, 60, 30), (3, 20, 7, 9, 11)],  # groups of 4 channels
    "frn_tokens": [(300, 36), (1000, 1032)],
    "s0_tokens": [(300, 36), (1000, 1032)],
    "renorm": [(8, 12, 30, 30), (2, 40, 130, 70), (300, 36)],
    "switchable": [(8, 12, 30, 30), (2, 40, 130, 70), (3, 20, 7, 9, 11)],
    "b0": [(8, 12, 30, 30), (2, 40, 130, 70), (3, 20, 7, 9, 11)],
    "ghost": [(8, 12, 30, 30), (7, 40, 65, 70), (6, 20, 7, 9, 11)],  # 8, 7: a smaller last one
    "frozen": [(8, 12, 30, 30), (2, 40, 130, 70), (300, 36)],
}


@pytest.fixture
def triton_everywhere(monkeypatch):
    """Every input the Triton kernels support takes them (NORMZOO_TRITON=all, no size
    threshold; on the CPU, CPU tensors too); counts their calls."""
    if not _triton.available():
        pytest.skip("triton is not installed")
    if DEVICE == "cpu":  # the interpreter takes CPU tensors: serve them as a GPU's
        monkeypatch.setattr(_triton, "serves", served_on_cpu)
        monkeypatch.setenv("NORMZOO_NATIVE", "0")  # (the CPU's own kernels come first)
    monkeypatch.setenv("NORMZOO_TRITON", "all")
    monkeypatch.setattr(_triton, "MIN_NUMEL_ALL", 0)
    calls = []
    for module, name in _triton.entry_points():  # every forward's kernels launch through them
        entry = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, f=entry: calls.append(1) or f(*a))
    yield calls
    assert _triton._disabled is None, _triton._disabled  # no call fell back to torch's


class _Mask(nn.Module):
    """``y * mask``: a ReLU whose mask is given (ours), where ``y`` is within rounding of it."""

    mask: torch.Tensor

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.mask


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal to float32 accuracy at ``b``'s scale: parameter gradients sum ~1e5 products
    (their cancellation leaves entries far below the tensor's largest)."""
    torch.testing.assert_close(a, b, atol=1e-4 * (1 + b.abs().max().item()), rtol=1e-4)


def _triton_params(ours: nn.Module, ref: nn.Module) -> None:
    """The same random parameters and floating buffers (running statistics, FrozenBN's
    affine) in both, positive (a valid running variance)."""
    with torch.no_grad():
        for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
            p.copy_(torch.rand_like(p) + 0.5)
            q.copy_(p)
        for p, q in zip(ours.buffers(), ref.buffers(), strict=True):
            if p.is_floating_point():
                p.copy_(torch.rand_like(p) + 0.5)
                q.copy_(p)


@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
@pytest.mark.parametrize(
    ("case", "layout"),
    [
        (case, layout)
        for case in TRITON_CASES
        for layout in (torch.contiguous_format, torch.channels_last)
        # (FRN and EvoNorm-S0 on channels_last: the two-phase kernels, since the twelfth
        # session; their GPU cases were left out until the twenty-first)
        if layout == torch.contiguous_format or any(len(s) == 4 for s in TRITON_SHAPES[case])
    ],
    ids=str,
)
def test_triton_kernels_equal_torch_nn(case, layout, relu, triton_everywhere):
    """Three training steps and one eval step: outputs, input and parameter gradients and
    running statistics equal torch.nn's (followed by the ReLU where ours fuses it); the layout
    is kept; the kernels ran.

    The reference's ReLU takes its mask from our output: a pre-activation within rounding of
    0 may fall on either side in the two computations (one element in a million did, under
    the interpreter), which flips that element's gradient and its share of the parameters'
    (``test_triton_fused_relu_is_bit_equal_to_relu_after`` checks the fused mask exactly)."""
    make, make_ref = TRITON_CASES[case]
    for shape in TRITON_SHAPES[case]:
        if layout == torch.channels_last and len(shape) not in (4,):
            continue
        c = shape[-1] if case.endswith("_tokens") else shape[1]
        ours, ref = make(c).to(DEVICE), make_ref(c).to(DEVICE)
        _triton_params(ours, ref)
        if relu:
            ours.fuse_activation("relu")
            ref = nn.Sequential(ref, _Mask())
        triton_everywhere.clear()
        for step in range(4):
            if step == 3:
                ours.eval(), ref.eval()
            x = (torch.randn(shape, device=DEVICE) * 2 + step).to(memory_format=layout)
            g = torch.randn_like(x)
            got = _fwd_bwd(ours, x, g)
            if relu:
                ref[1].mask = (got[0] > 0).to(DEVICE)
            for a, b in zip(got, _fwd_bwd(ref, x, g), strict=True):
                _close(a, b)
            with torch.no_grad():  # a copy: ours keeps the running statistics of ref
                assert copy.deepcopy(ours)(x).is_contiguous(memory_format=layout)
        state = ours.state_dict()
        for key, value in ref.state_dict().items():
            key = key.removeprefix("0.")
            if case == "in" and key == "num_batches_tracked":
                continue  # torch's InstanceNorm never counts
            torch.testing.assert_close(state[key], value, atol=1e-5, rtol=1e-5, msg=key)
        assert len(triton_everywhere) >= 3, shape


@pytest.mark.parametrize(
    ("knob", "value", "cases"),
    [
        ("TWO_PHASE_LANE_ACC", 1, ("bn", "gn", "ln", "rms", "frn", "s0", "b0", "ghost")),
        ("TWO_PHASE_LANE_ACC", 2, ("bn", "gn", "ln", "rms", "frn", "s0", "b0", "ghost")),
        (
            "TOKEN_ACC_ROWS",
            False,
            ("gn_tokens", "ln_tokens", "rms_tokens", "frn_tokens", "s0_tokens"),
        ),
    ],
    ids=["lane_welford", "lane_sums", "token_sums_each_tile"],
)
def test_triton_plan_variants_equal_torch_nn(knob, value, cases, monkeypatch, triton_everywhere):
    """The kernels' variants that ``scripts/gpu_triton_ab.py`` times against the defaults
    (``_triton.TWO_PHASE_LANE_ACC`` 1 or 2, ``TOKEN_ACC_ROWS`` off) give torch.nn's results too:
    one training step on each case's largest 4-d shape (its last for tokens), in both
    layouts."""
    monkeypatch.setattr(_triton, knob, value)
    for case in cases:
        make, make_ref = TRITON_CASES[case]
        four = [s for s in TRITON_SHAPES[case] if len(s) == 4]
        shape = max(four, key=math.prod) if four else TRITON_SHAPES[case][-1]
        c = shape[-1] if case.endswith("_tokens") else shape[1]
        layouts = [torch.contiguous_format] + ([torch.channels_last] if len(shape) == 4 else [])
        for layout in layouts:
            ours, ref = make(c).to(DEVICE), make_ref(c).to(DEVICE)
            _triton_params(ours, ref)
            triton_everywhere.clear()
            x = (torch.randn(shape, device=DEVICE) * 2 + 1).to(memory_format=layout)
            g = torch.randn_like(x)
            for a, b in zip(_fwd_bwd(ours, x, g), _fwd_bwd(ref, x, g), strict=True):
                _close(a, b)
            assert triton_everywhere, (case, layout)


@pytest.mark.parametrize("case", ["bn", "gn", "gn_tokens", "ln", "ln_tokens", "frozen"])
def test_triton_fused_relu_is_bit_equal_to_relu_after(case, triton_everywhere):
    """The ReLU inside the kernels (forward and its mask in the backward) gives the same bits
    as the same kernels followed by nn.ReLU."""
    make, _ = TRITON_CASES[case]
    shape = TRITON_SHAPES[case][-1]
    c = shape[-1] if case.endswith("_tokens") else shape[1]
    fused = make(c).to(DEVICE)
    _triton_params(fused, make(c).to(DEVICE))
    plain = nn.Sequential(copy.deepcopy(fused), nn.ReLU())
    fused.fuse_activation("relu")
    x = torch.randn(shape, device=DEVICE)
    g = torch.randn_like(x)
    for a, b in zip(_fwd_bwd(fused, x, g), _fwd_bwd(plain, x, g), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("case", list(TRITON_CASES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_triton_half_inputs(case, dtype, triton_everywhere):
    """Half inputs, float32 parameters: the output and input gradient keep the input's dtype
    and equal the float32 computation to the half type's accuracy; parameter gradients are
    float32."""
    make, _ = TRITON_CASES[case]
    shape = TRITON_SHAPES[case][0]
    c = shape[-1] if case.endswith("_tokens") else shape[1]
    ours = make(c).to(DEVICE)
    ref = copy.deepcopy(ours)
    x = torch.randn(shape, device=DEVICE).to(dtype)
    g = torch.randn_like(x)
    half = _fwd_bwd(ours, x, g)
    assert half[0].dtype == dtype and half[1].dtype == dtype
    assert all(t.dtype == torch.float32 for t in half[2:])
    full = _fwd_bwd(ref, x.float(), g.float())
    for a, b in zip(half, full, strict=True):
        scale = b.abs().max().item() + 1
        torch.testing.assert_close(a.float(), b, atol=2e-2 * scale, rtol=2e-2)
    assert triton_everywhere


def test_triton_double_backward(triton_everywhere):
    """create_graph=True: the backward is torch's functional form with a graph, so second
    derivatives are torch's."""
    zoo = ("rms", "frn", "s0", "frn_tokens", "s0_tokens", "renorm", "switchable", "b0")
    zoo = (*zoo, "ghost", "frozen")
    for case in ("bn", "gn", "ln_tokens", *zoo):
        make, make_ref = TRITON_CASES[case]
        shape = TRITON_SHAPES[case][0]
        c = shape[-1] if case.endswith("_tokens") else shape[1]
        ours, ref = make(c).to(DEVICE), make_ref(c).to(DEVICE)
        _triton_params(ours, ref)
        grads = []
        for m in (ours, ref):
            x = torch.randn(shape, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
            x.requires_grad_()
            (dx,) = torch.autograd.grad((m(x) ** 2).sum(), x, create_graph=True)
            grads.append(torch.autograd.grad(dx.square().sum(), [x, *m.parameters()]))
        for a, b in zip(*grads, strict=True):
            _close(a, b)


@needs_cuda
def test_triton_dispatch(monkeypatch):
    """The measured dispatch: from MIN_NUMEL elements, batch norm on contiguous input, group
    and instance norm on contiguous input with one-pass groups, group, layer and instance
    norm on channels_last, group norm over tokens and RMSNorm over bfloat16 tokens; float64,
    smaller inputs, other layouts, positions (contiguous) not a multiple of 16,
    NORMZOO_TRITON=0 and autocast keep torch's kernels."""
    if not _triton.available():
        pytest.skip("triton is not installed")
    monkeypatch.setattr(_triton, "MIN_NUMEL", 1 << 20)  # the rule's shape, small tensors
    big = torch.empty(16, 64, 32, 32, device="cuda")
    cl = big.to(memory_format=torch.channels_last)
    assert _triton.serves_batch(big) and _triton.serves_batch(big.half())
    assert not _triton.serves_batch(cl) and not _triton.serves_batch(big.view(16, -1))
    assert _triton.serves_group(big, 32) and _triton.serves_group(big, 64)  # GN, IN
    assert not _triton.serves_group(big, 1)  # LN over (C, H, W): two-phase, slower
    assert _triton.serves_group(cl, 1) and _triton.serves_group(cl, 32)
    tokens = big.view(-1, 1024)
    assert not _triton.serves_tokens(tokens) and not _triton.serves_tokens(tokens, rms=True)
    assert not _triton.serves_tokens(tokens.bfloat16())  # layer norm: torch's per call
    assert _triton.serves_tokens(tokens.bfloat16(), rms=True)  # RMSNorm: bfloat16 only
    assert _triton.serves_group(tokens, 32) and _triton.serves_group(tokens.bfloat16(), 32)
    assert not _triton.serves_batch(big.double())
    assert not _triton.serves_batch(big[:1])  # below MIN_NUMEL
    assert not _triton.serves_batch(big.transpose(2, 3))
    assert not _triton.serves_batch(big, torch.ones(64))  # a CPU parameter
    odd = torch.empty(128, 64, 14, 14, device="cuda")  # 196 positions: scalar loads
    assert not _triton.serves_batch(odd) and not _triton.serves_group(odd, 32)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert not _triton.serves_batch(big)
    # the zoo's measured pairs (_triton.ZOO_MEASURED): contiguous, some on channels_last
    for kind in ("rms", "frn", "s0"):
        assert _triton.serves_group(big, 16, kind=kind)
        assert not _triton.serves_group(odd, 16, kind=kind)  # 196 positions
        assert _triton.serves_group(big.bfloat16(), 16, kind=kind)
        assert not _triton.serves_group(big.half(), 16, kind=kind)  # float16: not measured
    assert _triton.serves_group(cl, 16, kind="rms") and _triton.serves_group(cl, 64, kind="frn")
    assert not _triton.serves_group(cl, 16, kind="s0")
    wide = torch.empty(2, 64, 128, 128, device="cuda")  # FRN's two phases on contiguous input
    assert not _triton.serves_group(wide, 64, kind="frn")
    assert not _triton.serves_group(cl.bfloat16(), 16, kind="rms")
    for kind in ("renorm", "switchable", "b0", "ghost"):
        assert _triton.serves_batch(big, kind=kind)
    assert _triton.serves_batch(cl, kind="b0") and _triton.serves_batch(cl, kind="ghost")
    assert not _triton.serves_batch(cl, kind="renorm")  # its host time outweighed the kernels
    assert not _triton.serves_batch(big.bfloat16(), kind="switchable")  # not measured
    assert not _triton.serves_batch(big, kind="frozen")  # its eager path's host time won
    for kind, groups in (("frn", 1024), ("s0", 32)):  # over tokens: not measured yet
        assert not _triton.serves_group(tokens, groups, kind=kind)
    monkeypatch.setenv("NORMZOO_TRITON", "all")
    assert _triton.serves_batch(cl) and _triton.serves_tokens(big.view(-1, 1024))
    assert _triton.serves_group(big, 64, kind="frn") and _triton.serves_group(big, 32, kind="s0")
    assert _triton.serves_group(big, 1, kind="rms") and _triton.serves_group(cl, 1, kind="rms")
    assert _triton.serves_group(cl, 64, kind="frn")  # two phases on channels_last
    assert _triton.serves_batch(cl, kind="frozen") and _triton.serves_batch(cl, kind="ghost")
    assert _triton.serves_group(tokens, 1024, kind="frn")  # the token-group kernels
    assert _triton.serves_group(tokens, 32, kind="s0")
    assert not _triton.serves_group(tokens.t(), 32, kind="s0")  # (not contiguous)
    monkeypatch.setenv("NORMZOO_TRITON", "0")
    assert not _triton.serves_batch(big) and not _triton.serves_group(cl, 1)


@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_triton_kernels_run_on_the_input_device(triton_everywhere):
    """Triton launches on the current device: an input on another GPU is served there."""
    ours, ref = normzoo.create("bn", 12).to("cuda:1"), nn.BatchNorm2d(12).to("cuda:1")
    assert torch.cuda.current_device() == 0
    x = torch.randn(8, 12, 30, 30, device="cuda:1")
    g = torch.randn_like(x)
    for a, b in zip(_fwd_bwd(ours, x, g), _fwd_bwd(ref, x, g), strict=True):
        _close(a, b)
    assert triton_everywhere
