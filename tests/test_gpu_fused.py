"""The wider zoo's CUDA path (``normzoo.norms._gpu``: the reference math fused by
``torch.compile``), exercised on the CPU: its dispatch is forced on for CPU tensors, so the
modules' wiring (arguments, running statistics, layouts) and the traceability of each fused
function are tested where CI runs. ``tests/test_cuda.py`` runs the same path on a GPU.
"""

import warnings

import pytest
import torch

import normzoo
from normzoo.norms import _fused, _gpu

#: The modules with a fused CUDA path, and the function each calls.
FUSED = {
    "evonormb0": "evonorm_b0",
    "evonorms0": "evonorm_s0",
    "frn": "filter_response_norm",
    "switchablenorm": "switchable_norm",
}
TOL = {"atol": 1e-5, "rtol": 1e-5}
#: The fused functions themselves (the fixture below replaces them with counting wrappers).
ORIGINAL = {attr: getattr(_gpu, attr) for attr in FUSED.values()}


def _pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The default module and its ``impl="reference"`` twin, with the same random parameters."""
    fast = normzoo.create(name, 8)
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ref = normzoo.create(name, 8, impl="reference")
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _step(m: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    y = m(x)
    y.backward(g)
    return [y, x.grad, *(p.grad for p in m.parameters())]


def _check_against_reference(name: str, channels_last: bool) -> None:
    """Three training steps (running statistics moving, momentum applied) and one eval step:
    outputs, all gradients and the state dicts equal the reference module's; a
    channels_last input gives a channels_last output."""
    torch.manual_seed(0)
    fast, ref = _pair(name)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for step in range(4):
        if step == 3:
            fast.eval(), ref.eval()
        x = (torch.randn(4, 8, 5, 6) * (1 + step) + step).to(memory_format=fmt)
        g = torch.randn(4, 8, 5, 6)
        got, want = _step(fast, x, g), _step(ref, x, g)
        assert got[0].is_contiguous(memory_format=fmt)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, **TOL)
        for key, value in ref.state_dict().items():
            torch.testing.assert_close(fast.state_dict()[key], value, **TOL, msg=key)


@pytest.fixture
def fused_on_cpu(monkeypatch):
    """Dispatch to the fused functions as on CUDA, counting their calls."""
    calls: list[str] = []
    monkeypatch.setattr(_gpu, "use_fused_math", lambda x: True)
    for attr, fn in ORIGINAL.items():
        monkeypatch.setattr(
            _gpu, attr, lambda *a, _fn=fn, _attr=attr: calls.append(_attr) or _fn(*a)
        )
    return calls


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("name", sorted(FUSED))
def test_fused_path_wiring_matches_the_reference(name, channels_last, fused_on_cpu, monkeypatch):
    """Compiling off: the fused functions run their eager math, so this checks what the
    modules pass in and do with the results."""
    monkeypatch.setenv("NORMZOO_COMPILE", "0")
    _check_against_reference(name, channels_last)
    assert fused_on_cpu == [FUSED[name]] * 4


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FUSED))
def test_fused_path_compiles_and_matches_the_reference(name, fused_on_cpu, monkeypatch):
    """The real thing on the CPU (inductor's C++ backend instead of Triton): each function
    traces as one graph (no fallback warning) with dynamic shapes, and the compiled kernels
    equal the reference module, channels_last kept."""
    monkeypatch.setattr(_fused, "DEFAULT_MIN_NUMEL", 0)
    monkeypatch.delenv("NORMZOO_COMPILE", raising=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="normzoo: compiling")
        _check_against_reference(name, channels_last=True)
    assert ORIGINAL[FUSED[name]].compiled_kinds() >= 1


def test_dispatch_needs_cuda_size_and_compiling(monkeypatch):
    n = _fused.DEFAULT_MIN_NUMEL
    assert not _gpu.use_fused_math(torch.empty(n))  # CPU tensors keep the native kernels
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert _gpu.use_fused_math(torch.empty(n))
    assert not _gpu.use_fused_math(torch.empty(n - 1))
    monkeypatch.setenv("NORMZOO_COMPILE", "0")
    assert not _gpu.use_fused_math(torch.empty(n))


def test_evonorm_s0_keeps_the_eager_path_for_large_conv_inputs(fused_on_cpu, monkeypatch):
    """Measured 3x slower fused on (256, 64, 64, 64): conv inputs from S0_CONV_MAX_NUMEL
    elements stay eager; tokens of any size are fused."""
    monkeypatch.setenv("NORMZOO_COMPILE", "0")
    monkeypatch.setattr(_gpu, "S0_CONV_MAX_NUMEL", 4 * 8 * 5 * 6)
    m = normzoo.create("evonorms0", 8)
    m(torch.randn(4, 8, 5, 5))
    assert fused_on_cpu == ["evonorm_s0"]
    m(torch.randn(4, 8, 5, 6))
    assert fused_on_cpu == ["evonorm_s0"]
    m(torch.randn(4096, 8))
    assert fused_on_cpu == ["evonorm_s0"] * 2
