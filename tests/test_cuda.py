"""Every norm on a CUDA GPU: the same results as on the CPU, parity with torch.nn there, layouts
kept, bfloat16 inputs, float64 gradients.

CI has no GPU, so these are skipped there; on a GPU machine run
``python -m pytest tests/test_cuda.py`` (``scripts/gpu_check.sh`` does, with the benchmark).
The native CPU kernels never see CUDA tensors: these tests cover the torch paths that CUDA
inputs take.
"""

import copy

import pytest
import torch
from norm_testing import fwd_bwd as _fwd_bwd
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
