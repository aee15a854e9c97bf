"""Every norm on a CUDA GPU: the same results as on the CPU, parity with torch.nn there, layouts
kept, bfloat16 inputs, float64 gradients.

CI has no GPU, so these are skipped there; on a GPU machine run
``python -m pytest tests/test_cuda.py`` (``scripts/gpu_check.sh`` does, with the benchmark).
The native CPU kernels never see CUDA tensors: these tests cover the torch paths that CUDA
inputs take.
"""

import copy
from typing import Any

import pytest
import torch
from norm_testing import small_batch_kwargs
from torch import nn

import normzoo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

#: CPU and GPU reduce in different orders; float32 results agree to about 1e-6 relative.
DEVICE_TOL = {"atol": 2e-5, "rtol": 2e-5}
NAMES = [n for n in normzoo.available() if n != "identity"]


def _cpu_and_cuda(name: str, c: int = 6, **kwargs) -> tuple[nn.Module, nn.Module]:
    """One layer with random affine parameters, and its exact copy on the GPU."""
    cpu = normzoo.create(name, c, **small_batch_kwargs(name), **kwargs)
    with torch.no_grad():
        for p in cpu.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return cpu, copy.deepcopy(cpu).cuda()


def _fwd_bwd(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    """Output, input gradient and parameter gradients, all on the CPU."""
    x = x.detach().clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    y = m(x)
    y.backward(g.to(y.device, y.dtype))
    return [t.detach().cpu() for t in (y, x.grad, *(p.grad for p in m.parameters()))]


@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu_in_training_and_eval(name):
    cpu, gpu = _cpu_and_cuda(name)
    for step in range(3):  # several steps: running statistics and warm-ups advance alike
        x = torch.randn(8, 6, 5, 7) * (step + 1) + step
        g = torch.randn_like(x)
        for a, b in zip(_fwd_bwd(gpu, x.cuda(), g), _fwd_bwd(cpu, x, g), strict=True):
            torch.testing.assert_close(a, b, **DEVICE_TOL)
    for key, value in cpu.state_dict().items():
        torch.testing.assert_close(gpu.state_dict()[key].cpu(), value, **DEVICE_TOL, msg=key)
    cpu.eval()
    gpu.eval()
    x = torch.randn(4, 6, 5, 7)
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), **DEVICE_TOL)


@pytest.mark.parametrize("name", NAMES)
def test_cuda_channels_last_stays_channels_last(name):
    _, gpu = _cpu_and_cuda(name)
    ref = copy.deepcopy(gpu)
    x = torch.randn(8, 6, 5, 7, device="cuda")
    g = torch.randn_like(x)
    y_cl = copy.deepcopy(gpu)(x.to(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(
        _fwd_bwd(gpu, x.to(memory_format=torch.channels_last), g),
        _fwd_bwd(ref, x, g),
        strict=True,
    ):
        torch.testing.assert_close(a, b, **DEVICE_TOL)


@pytest.mark.parametrize("name", NAMES)
def test_cuda_bfloat16_input(name):
    """bfloat16 activations with float32 parameters (what the benchmark and bf16 training
    feed): the output keeps the input's dtype and is the float32 result to bfloat16 accuracy."""
    _, gpu = _cpu_and_cuda(name)
    ref = copy.deepcopy(gpu)
    x = torch.randn(8, 6, 5, 7, device="cuda")
    y = gpu(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref(x), atol=5e-2, rtol=2e-2)


@pytest.mark.parametrize("name", ["layernorm", "rmsnorm"])
def test_cuda_token_norms_bfloat16_input(name):
    """The token forms (``channels_last=True``, input ``(..., C)``) with bfloat16 input and
    float32 parameters."""
    ours = normzoo.create(name, 6, channels_last=True).cuda()
    x = torch.randn(64, 6, device="cuda")
    y = ours(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ours(x), atol=5e-2, rtol=2e-2)
    y.float().sum().backward()
    assert ours.weight.grad is not None and ours.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_cuda_activation_relu_is_norm_then_relu(name, layout):
    """``activation="relu"`` on CUDA (the fused kernels are CPU-only: the ReLU runs after the
    norm there): outputs, gradients and running statistics equal the CPU's fused layer and the
    GPU's ``nn.Sequential(norm, nn.ReLU())``; the layout is kept."""
    cpu, gpu = _cpu_and_cuda(name, activation="relu")
    plain = copy.deepcopy(gpu).fuse_activation(None)
    seq = nn.Sequential(plain, nn.ReLU())
    for step in range(3):
        x = torch.randn(8, 6, 5, 7) * (step + 1) + step
        g = torch.randn_like(x)
        xg = x.cuda().to(memory_format=layout)
        ours = _fwd_bwd(gpu, xg, g)
        for a, b in zip(ours, _fwd_bwd(seq, xg, g), strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        for a, b in zip(ours, _fwd_bwd(cpu, x, g), strict=True):
            torch.testing.assert_close(a, b, **DEVICE_TOL)
    for key, value in cpu.state_dict().items():
        torch.testing.assert_close(gpu.state_dict()[key].cpu(), value, **DEVICE_TOL, msg=key)
    assert gpu(xg).is_contiguous(memory_format=layout)


TORCH_NN = {
    "batchnorm": lambda c: nn.BatchNorm2d(c),
    "groupnorm": lambda c: nn.GroupNorm(2, c),
    "layernorm": lambda c: nn.GroupNorm(1, c),
    "instancenorm": lambda c: nn.InstanceNorm2d(c, affine=True, track_running_stats=True),
}


@pytest.mark.parametrize("name", list(TORCH_NN))
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
def test_cuda_parity_with_torch_nn(name, layout):
    kwargs = {"num_groups": 2} if name == "groupnorm" else {}
    if name == "instancenorm":
        kwargs["track_running_stats"] = True
    ours = normzoo.create(name, 6, **kwargs).cuda()
    ref = TORCH_NN[name](6).cuda()
    with torch.no_grad():
        for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
            p.copy_(torch.rand_like(p) + 0.5)
            q.copy_(p)
    for step in range(3):
        x = (torch.randn(8, 6, 5, 7, device="cuda") * 2 + step).to(memory_format=layout)
        g = torch.randn_like(x)
        for a, b in zip(_fwd_bwd(ours, x, g), _fwd_bwd(ref, x, g), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    state = ours.state_dict()
    for key, value in ref.state_dict().items():
        if name == "instancenorm" and key == "num_batches_tracked":
            continue  # torch's InstanceNorm never counts; ours does (for momentum=None)
        torch.testing.assert_close(state[key], value, atol=1e-5, rtol=1e-5, msg=key)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_cuda_batchnorm_is_torch_batchnorm_for_every_rank(dims):
    ours = normzoo.create("bn", 5).cuda()
    ref = getattr(nn, f"BatchNorm{dims}d")(5).cuda()
    shape = (6, 5, *(4,) * dims)
    for _ in range(3):
        x = torch.randn(shape, device="cuda") * 3 + 1
        g = torch.randn_like(x)
        for a, b in zip(_fwd_bwd(ours, x, g), _fwd_bwd(ref, x, g), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, msg=key)


#: Batch Renorm's r and d stop the gradient (a finite difference sees them move), and
#: SyncBatchNorm without a process group is BatchNorm: both are left to the CPU tests.
GRADCHECK_NAMES = [n for n in NAMES if n not in ("batchrenorm", "syncbatchnorm")]


@pytest.mark.parametrize("name", GRADCHECK_NAMES)
def test_cuda_float64_gradcheck(name):
    m = normzoo.create(name, 3, **small_batch_kwargs(name)).cuda().double()
    x = torch.randn(4, 3, 3, 2, device="cuda", dtype=torch.float64, requires_grad=True)
    params = [p for p in m.parameters() if p.requires_grad]

    def f(x, *ps):
        return m(x)

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_cuda_ghost_batchnorm_vectorized_equals_the_cpu_loop(momentum, monkeypatch):
    """On CUDA, from VECTOR_MIN_BATCHES["cuda"] virtual batches, every virtual batch runs in
    one set of kernels; forced here from 2: outputs, gradients and running statistics equal
    the CPU's one-BN-per-virtual-batch path."""
    from normzoo.norms import ghost_batch

    monkeypatch.setitem(ghost_batch.VECTOR_MIN_BATCHES, "cuda", 2)
    cpu, gpu = _cpu_and_cuda("ghostbatchnorm", momentum=momentum)
    for step in range(3):
        x = torch.randn(16, 6, 5, 7) * (step + 1) + step  # 8 virtual batches of 2
        g = torch.randn_like(x)
        for a, b in zip(_fwd_bwd(gpu, x.cuda(), g), _fwd_bwd(cpu, x, g), strict=True):
            torch.testing.assert_close(a, b, **DEVICE_TOL)
    for key, value in cpu.state_dict().items():
        torch.testing.assert_close(gpu.state_dict()[key].cpu(), value, **DEVICE_TOL, msg=key)


#: The zoo modules whose CUDA path is the fused reference math (``normzoo.norms._gpu``).
FUSED = {
    "evonormb0": "evonorm_b0",
    "evonorms0": "evonorm_s0",
    "frn": "filter_response_norm",
    "switchablenorm": "switchable_norm",
}


def _assert_close_to_scale(a: torch.Tensor, b: torch.Tensor) -> None:
    """``a`` equals ``b`` to float32 accuracy at ``b``'s scale. A parameter gradient here sums
    4096 products per channel, and the CPU and the GPU sum in different orders: the rounding
    is relative to the largest sums, so a channel whose sum cancels to near zero cannot be
    held to 2e-5 of itself (evonorms0 on an H200: 3e-5 off on a 0.15 entry)."""
    atol = DEVICE_TOL["atol"] * max(1.0, b.abs().max().item())
    torch.testing.assert_close(a, b, atol=atol, rtol=DEVICE_TOL["rtol"])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
@pytest.mark.parametrize("name", sorted(FUSED))
def test_cuda_fused_zoo_equals_the_cpu(name, layout):
    """Inputs large enough for the fused path (compiled with Triton, no fallback warning):
    three training steps and one eval step equal the CPU module (outputs, gradients, running
    statistics); channels_last stays channels_last."""
    import warnings

    from normzoo.norms import _gpu

    cpu, gpu = _cpu_and_cuda(name, c=64)
    shape = (16, 64, 16, 16)  # exactly DEFAULT_MIN_NUMEL elements
    assert _gpu.use_fused_math(torch.empty(shape, device="cuda"))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="normzoo: compiling")
        for step in range(4):
            if step == 3:
                cpu.eval(), gpu.eval()
            x = torch.randn(shape) * (step + 1) + step
            g = torch.randn(shape)
            xg = x.cuda().to(memory_format=layout)
            for a, b in zip(_fwd_bwd(gpu, xg, g), _fwd_bwd(cpu, x, g), strict=True):
                _assert_close_to_scale(a, b)
        assert gpu(xg).is_contiguous(memory_format=layout)  # eval: no state changes
    for key, value in cpu.state_dict().items():
        torch.testing.assert_close(gpu.state_dict()[key].cpu(), value, **DEVICE_TOL, msg=key)
    assert getattr(_gpu, FUSED[name]).compiled_kinds() >= 1


# -- the Triton kernels (normzoo.norms._triton) ----------------------------------------------
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
    "ln_tokens": (
        lambda c: normzoo.create("ln", c, channels_last=True),
        lambda c: nn.LayerNorm(c),
    ),
    "rms_tokens": _vs_reference("rms", channels_last=True),  # torch.nn.RMSNorm has no bias
    # the zoo (no torch.nn equivalent: normzoo's reference math on torch's kernels)
    "rms": _vs_reference("rms"),
    "frn": _vs_reference("frn"),
    "s0": _vs_reference("evonorms0", groups_of=4),
    "renorm": _vs_reference("batchrenorm", **RENORM),
    "switchable": _vs_reference("switchablenorm"),
    "b0": _vs_reference("evonormb0"),
    "ghost": _vs_reference("ghostbatchnorm", virtual_batch_size=3),
    "frozen": _vs_reference("frozenbatchnorm"),
}
#: Kinds that the kernels serve on contiguous input only (one pass per set).
TRITON_CONTIGUOUS_ONLY = ("frn", "s0")
TRITON_SHAPES = {
    "bn": [(8, 12, 30, 30), (64, 24, 9, 9), (2, 40, 130, 70)],
    "bn1d": [(300, 36), (50, 24, 77)],
    "bn_cumulative": [(8, 12, 30, 30)],
    "gn": [(8, 12, 30, 30), (4, 32, 130, 70), (3, 20, 7, 9, 11)],
    "ln": [(8, 12, 30, 30), (4, 32, 130, 70)],
    "in": [(8, 12, 30, 30), (2, 8, 130, 70)],
    "ln_tokens": [(4, 300, 36), (1000, 1030)],
    "rms_tokens": [(4, 300, 36), (1000, 1030)],
    "rms": [(4, 12, 20, 20), (4, 32, 130, 70), (3, 8, 7, 9, 11)],  # one pass, two phases
    "frn": [(8, 12, 30, 30), (2, 8, 70, 70), (3, 20, 7, 9, 11)],
    "s0": [(8, 12, 30, 30), (2, 8, 60, 30), (3, 20, 7, 9, 11)],  # groups of 4 channels
    "renorm": [(8, 12, 30, 30), (2, 40, 130, 70), (300, 36)],
    "switchable": [(8, 12, 30, 30), (2, 40, 130, 70), (3, 20, 7, 9, 11)],
    "b0": [(8, 12, 30, 30), (2, 40, 130, 70), (3, 20, 7, 9, 11)],
    "ghost": [(8, 12, 30, 30), (7, 40, 65, 70), (6, 20, 7, 9, 11)],  # 8, 7: a smaller last one
    "frozen": [(8, 12, 30, 30), (2, 40, 130, 70), (300, 36)],
}


@pytest.fixture
def triton_everywhere(monkeypatch):
    """Every input the Triton kernels support takes them (NORMZOO_TRITON=all, no size
    threshold); counts their calls."""
    from normzoo.norms import _triton

    if not _triton.available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("NORMZOO_TRITON", "all")
    monkeypatch.setattr(_triton, "MIN_NUMEL_ALL", 0)
    calls = []
    for module, name in _triton.entry_points():  # every forward's kernels launch through them
        entry = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, f=entry: calls.append(1) or f(*a))
    yield calls
    assert _triton._disabled is None, _triton._disabled  # no call fell back to torch's


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
        if layout == torch.contiguous_format
        or (case not in TRITON_CONTIGUOUS_ONLY and any(len(s) == 4 for s in TRITON_SHAPES[case]))
    ],
    ids=str,
)
def test_cuda_triton_kernels_equal_torch_nn(case, layout, relu, triton_everywhere):
    """Three training steps and one eval step: outputs, input and parameter gradients and
    running statistics equal torch.nn's (followed by nn.ReLU where ours fuses it); the layout
    is kept; the kernels ran."""
    make, make_ref = TRITON_CASES[case]
    for shape in TRITON_SHAPES[case]:
        if layout == torch.channels_last and len(shape) not in (4,):
            continue
        c = shape[-1] if case.endswith("_tokens") else shape[1]
        ours, ref = make(c).cuda(), make_ref(c).cuda()
        _triton_params(ours, ref)
        if relu:
            ours.fuse_activation("relu")
            ref = nn.Sequential(ref, nn.ReLU())
        triton_everywhere.clear()
        for step in range(4):
            if step == 3:
                ours.eval(), ref.eval()
            x = (torch.randn(shape, device="cuda") * 2 + step).to(memory_format=layout)
            g = torch.randn_like(x)
            for a, b in zip(_fwd_bwd(ours, x, g), _fwd_bwd(ref, x, g), strict=True):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
            with torch.no_grad():  # a copy: ours keeps the running statistics of ref
                assert copy.deepcopy(ours)(x).is_contiguous(memory_format=layout)
        state = ours.state_dict()
        for key, value in ref.state_dict().items():
            key = key.removeprefix("0.")
            if case == "in" and key == "num_batches_tracked":
                continue  # torch's InstanceNorm never counts
            torch.testing.assert_close(state[key], value, atol=1e-5, rtol=1e-5, msg=key)
        assert len(triton_everywhere) >= 3, shape


@pytest.mark.parametrize("case", ["bn", "gn", "ln", "ln_tokens", "frozen"])
def test_cuda_triton_fused_relu_is_bit_equal_to_relu_after(case, triton_everywhere):
    """The ReLU inside the kernels (forward and its mask in the backward) gives the same bits
    as the same kernels followed by nn.ReLU."""
    make, _ = TRITON_CASES[case]
    shape = TRITON_SHAPES[case][-1]
    c = shape[-1] if case.endswith("_tokens") else shape[1]
    fused = make(c).cuda()
    _triton_params(fused, make(c).cuda())
    plain = nn.Sequential(copy.deepcopy(fused), nn.ReLU())
    fused.fuse_activation("relu")
    x = torch.randn(shape, device="cuda")
    g = torch.randn_like(x)
    for a, b in zip(_fwd_bwd(fused, x, g), _fwd_bwd(plain, x, g), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("case", list(TRITON_CASES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cuda_triton_half_inputs(case, dtype, triton_everywhere):
    """Half inputs, float32 parameters: the output and input gradient keep the input's dtype
    and equal the float32 computation to the half type's accuracy; parameter gradients are
    float32."""
    make, _ = TRITON_CASES[case]
    shape = TRITON_SHAPES[case][0]
    c = shape[-1] if case.endswith("_tokens") else shape[1]
    ours = make(c).cuda()
    ref = copy.deepcopy(ours)
    x = torch.randn(shape, device="cuda").to(dtype)
    g = torch.randn_like(x)
    half = _fwd_bwd(ours, x, g)
    assert half[0].dtype == dtype and half[1].dtype == dtype
    assert all(t.dtype == torch.float32 for t in half[2:])
    full = _fwd_bwd(ref, x.float(), g.float())
    for a, b in zip(half, full, strict=True):
        scale = b.abs().max().item() + 1
        torch.testing.assert_close(a.float(), b, atol=2e-2 * scale, rtol=2e-2)
    assert triton_everywhere


def test_cuda_triton_double_backward(triton_everywhere):
    """create_graph=True: the backward is torch's functional form with a graph, so second
    derivatives are torch's."""
    zoo = ("rms", "frn", "s0", "renorm", "switchable", "b0", "ghost", "frozen")
    for case in ("bn", "gn", "ln_tokens", *zoo):
        make, make_ref = TRITON_CASES[case]
        shape = TRITON_SHAPES[case][0]
        c = shape[-1] if case.endswith("_tokens") else shape[1]
        ours, ref = make(c).cuda(), make_ref(c).cuda()
        _triton_params(ours, ref)
        grads = []
        for m in (ours, ref):
            x = torch.randn(shape, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
            x.requires_grad_()
            (dx,) = torch.autograd.grad((m(x) ** 2).sum(), x, create_graph=True)
            grads.append(torch.autograd.grad(dx.square().sum(), [x, *m.parameters()]))
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_cuda_triton_dispatch(monkeypatch):
    """The measured dispatch: from MIN_NUMEL elements, batch norm on contiguous input, group
    and instance norm on contiguous input with one-pass groups, and group, layer and instance
    norm on channels_last; float64, smaller inputs, other layouts, NORMZOO_TRITON=0 and
    autocast keep torch's kernels."""
    from normzoo.norms import _triton

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
    assert not _triton.serves_tokens(big.view(-1, 1024))
    assert not _triton.serves_batch(big.double())
    assert not _triton.serves_batch(big[:1])  # below MIN_NUMEL
    assert not _triton.serves_batch(big.transpose(2, 3))
    assert not _triton.serves_batch(big, torch.ones(64))  # a CPU parameter
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert not _triton.serves_batch(big)
    for kind in ("rms", "frn", "s0"):  # the zoo's kinds: not measured yet, so "all" only
        assert not _triton.serves_group(big, 16, kind=kind)
    monkeypatch.setenv("NORMZOO_TRITON", "all")
    assert _triton.serves_batch(cl) and _triton.serves_tokens(big.view(-1, 1024))
    assert _triton.serves_group(big, 64, kind="frn") and _triton.serves_group(big, 32, kind="s0")
    assert _triton.serves_group(big, 1, kind="rms") and _triton.serves_group(cl, 1, kind="rms")
    assert not _triton.serves_group(cl, 64, kind="frn")  # one pass, contiguous only
    monkeypatch.setenv("NORMZOO_TRITON", "0")
    assert not _triton.serves_batch(big) and not _triton.serves_group(cl, 1)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_triton_kernels_run_on_the_input_device(triton_everywhere):
    """Triton launches on the current device: an input on another GPU is served there."""
    ours, ref = normzoo.create("bn", 12).to("cuda:1"), nn.BatchNorm2d(12).to("cuda:1")
    assert torch.cuda.current_device() == 0
    x = torch.randn(8, 12, 30, 30, device="cuda:1")
    g = torch.randn_like(x)
    for a, b in zip(_fwd_bwd(ours, x, g), _fwd_bwd(ref, x, g), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert triton_everywhere
