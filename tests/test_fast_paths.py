"""The fast paths: equal to torch.nn and the reference math on every dispatch branch, layout
preserved, robust (no_grad, half precision, float64, DDP, torch.compile, compile disabled).

BatchNorm's native kernels (``normzoo/_native``) are built once per machine (about a second);
``tests/test_native.py`` covers how they are built, cached and switched off.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from norm_testing import (
    TOL,
    assert_double_backward_close,
    assert_same_state,
    check_fwd_bwd,
    randomize_affine,
    small_batch_kwargs,
)
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import normzoo
from normzoo._native import kernels as _kernels
from normzoo.norms import _fused
from normzoo.norms import _rownorm as rownorm_mod
from normzoo.norms import batch as batch_mod

TORCH_BN = {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
CL_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


@pytest.fixture
def native_everywhere(monkeypatch):
    """Send every eligible BatchNorm input, however small, to the native kernels."""
    monkeypatch.setattr(batch_mod, "NATIVE_MIN_NUMEL", 0)
    monkeypatch.setattr(batch_mod, "NATIVE_MIN_SPATIAL", 1)
    monkeypatch.setattr(batch_mod, "NATIVE_MIN_NUMEL_CL", 0)
    monkeypatch.setattr(rownorm_mod, "NATIVE_MIN_NUMEL", 0)
    monkeypatch.setattr(rownorm_mod, "NATIVE_MIN_NUMEL_GROUPED", 0)


def _pair(rank: int, **kwargs) -> tuple[nn.Module, nn.Module]:
    ref = TORCH_BN[rank](6, **kwargs)
    with torch.no_grad():
        if ref.affine:
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
    ours = normzoo.create("bn", 6, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


# -- dispatch ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "dtype", "channels_last", "fused"),
    [
        ((32, 64, 32, 32), torch.float32, False, True),
        ((32, 64, 32, 32), torch.bfloat16, False, True),  # the kernels' bfloat16 builds
        ((32, 64, 32, 32), torch.float16, False, False),  # torch's kernel
        ((8, 64, 16, 16, 16), torch.float32, False, True),
        ((4, 32, 64, 64), torch.float32, False, True),
        ((8, 256, 14, 14), torch.float32, False, True),
        ((128, 64, 8, 8), torch.float32, False, True),
        ((8, 64, 100), torch.float32, False, True),
        ((32, 64, 32, 32), torch.float32, True, True),  # channels_last: the _cl kernels
        ((8, 256, 14, 14), torch.float32, True, True),
        ((128, 64, 8, 8), torch.float32, True, True),
        ((4, 32, 64, 64), torch.float32, True, True),
        ((8, 64, 16, 16, 16), torch.float32, True, True),  # channels_last_3d
        ((1024, 64, 2, 2), torch.float32, True, True),  # rows of C values: spatial size is moot
        ((8, 64, 16, 16), torch.float32, True, False),  # 128k elements: the call's cost wins
        ((16, 4, 32, 32), torch.float32, True, True),  # 64k, but torch is slow with 4 channels
        ((4, 8, 32, 32), torch.float32, True, True),  # 32k with 8 channels
        ((8, 16, 32, 32), torch.float32, True, False),  # 128k with 16 channels
        ((32, 64, 32, 32), torch.bfloat16, True, True),
        ((8, 64, 16, 16), torch.bfloat16, True, False),  # the float32 thresholds
        ((2, 8, 4, 4), torch.float32, True, False),  # small
        ((4096, 64, 1, 1), torch.float32, True, False),  # also contiguous: spatial size 1
        ((32, 64, 32, 32), torch.float64, False, False),  # float64: torch's kernel (gradcheck)
        ((2, 8, 4, 4), torch.float32, False, False),  # small: the call's fixed cost wins
        ((512, 64, 2, 2), torch.float32, False, False),  # rows of 4 values: too short for SIMD
        ((4096, 1024), torch.float32, False, False),  # (N, C): no spatial dims
    ],
)
def test_dispatch_by_shape(shape, dtype, channels_last, fused):
    x = torch.empty(shape, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=CL_FORMATS[x.dim()])
    assert batch_mod.use_native_batch_stats(x, None, batch_mod.BATCH_NORM_DTYPES) is fused
    # Batch Renorm and Ghost BN ask for float32 only (their own kernels)
    assert batch_mod.use_native_batch_stats(x) is (fused and dtype == torch.float32)


# -- parity: the native branch ----------------------------------------------------------------
@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize("shape", [(4, 6, 7), (4, 6, 5, 3), (2, 6, 3, 4, 2)], ids=str)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_native_training_steps_equal_torch(shape, momentum):
    ours, ref = _pair(len(shape), momentum=momentum)
    assert batch_mod.use_native_batch_stats(torch.empty(shape))
    for step in range(3):
        check_fwd_bwd(ours, ref, torch.randn(shape) * (step + 1) + step)
        assert_same_state(ours, ref)
    ours.eval()
    ref.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), ref(x), **TOL)


@pytest.mark.usefixtures("native_everywhere")
def test_native_updates_running_stats_in_place():
    bn = normzoo.create("bn", 6)
    mean, var = bn.running_mean, bn.running_var
    ptrs = mean.data_ptr(), var.data_ptr()
    bn(torch.randn(4, 6, 3, 3) + 2)
    assert bn.running_mean is mean and bn.running_var is var
    assert (mean.data_ptr(), var.data_ptr()) == ptrs
    assert mean.ne(0).all() and bn.num_batches_tracked.item() == 1


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize(("affine", "track"), [(False, True), (True, False), (False, False)])
def test_native_without_affine_or_running_stats(affine, track):
    ours, ref = _pair(4, affine=affine, track_running_stats=track)
    x = torch.randn(4, 6, 5, 5) * 2 + 1
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb, **TOL)
    g = torch.randn_like(x)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    if affine:
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **TOL)


@pytest.mark.usefixtures("native_everywhere")
def test_native_equals_reference_math():
    fast = normzoo.create("bn", 6)
    slow = normzoo.create("bn", 6, impl="reference")
    x = torch.randn(8, 6, 4, 4) * 3 - 1
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.testing.assert_close(fast(xa), slow(xb), **TOL)
    fast(xa).sum().backward()
    slow(xb).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    torch.testing.assert_close(fast.running_var, slow.running_var, **TOL)


@pytest.mark.usefixtures("native_everywhere")
def test_native_numerically_stable_for_large_means():
    x = 1e4 + 0.05 * torch.randn(64, 4, 8, 8)
    y = normzoo.create("bn", 4)(x)
    std = y.transpose(0, 1).reshape(4, -1).std(dim=1)
    torch.testing.assert_close(std, torch.ones(4), atol=1e-2, rtol=0)


@pytest.mark.usefixtures("native_everywhere")
def test_native_under_no_grad_still_trains_the_statistics():
    ours, ref = _pair(4)
    x = torch.randn(4, 6, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), **TOL)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL)


@pytest.mark.usefixtures("native_everywhere")
def test_native_under_inference_mode():
    ours, ref = _pair(4)
    x = torch.randn(4, 6, 3, 3)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref(x), **TOL)
    torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_native_half_precision(dtype):
    ours, ref = _pair(4)
    x = torch.randn(8, 6, 4, 4).to(dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert ya.dtype == dtype and ours.running_mean.dtype == torch.float32
    torch.testing.assert_close(ya, yb, atol=1e-2, rtol=1e-2)
    g = torch.randn_like(x)
    ya.backward(g)
    yb.backward(g)
    assert xa.grad.dtype == dtype
    torch.testing.assert_close(xa.grad, xb.grad, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
@pytest.mark.parametrize(
    "params", [torch.float32, torch.bfloat16], ids=["f32_params", "bf16_params"]
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_bfloat16_batch_norm_runs_the_bfloat16_kernels(layout, params, relu, monkeypatch):
    """bfloat16 input reaches BatchNorm's kernels as it is (their bfloat16 builds: x read and
    y, dx written as bfloat16, the float32 math on the widened values): with float32
    parameters (autocast's case) through the module's one-call operator, with bfloat16 ones
    (a module cast to bfloat16) through the Python path; the ReLU fused where asked. Over two
    training steps, against torch.nn.BatchNorm2d (then a ReLU) in float64 on the same values:
    output, input gradient (away from the ReLU's kink) and parameter gradients (in the
    parameters' dtype) to bfloat16 rounding, running statistics to a step of their dtype
    (each step's blend in float32, rounded once); the layout kept. (torch's own bfloat16
    module, bfloat16 parameters and a ReLU, measured parameter gradients 30% off here.)"""
    ran: list[str] = []
    real = batch_mod._kernels._fn
    monkeypatch.setattr(batch_mod._kernels, "_fn", lambda lib, n: ran.append(n) or real(lib, n))
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    shape = (16, 32, 24, 24) if layout == "channels_last" else (8, 32, 12, 12)  # >= thresholds
    ours = normzoo.create("bn", 32, activation="relu" if relu else None)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.5, 0.5)
    ours.to(params)
    ref = nn.BatchNorm2d(32).double()
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v
                         for k, v in ours.state_dict().items()})  # fmt: skip
    for step in range(2):
        x = (torch.randn(shape) * 2 + step).to(torch.bfloat16).contiguous(memory_format=fmt)
        dy = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=fmt)
        xa, xb = x.clone().requires_grad_(), x.double().requires_grad_()
        ran.clear()
        ya, pre = ours(xa), ref(xb)
        yb = torch.relu(pre) if relu else pre
        assert ya.dtype == torch.bfloat16 and ya.is_contiguous(memory_format=fmt)
        ya.backward(dy)
        yb.backward(dy.double())
        suffix = ("_cl" if layout == "channels_last" else "") + "_bf16"
        if params == torch.float32:  # the operator: its C++ node, no Python kernel call
            assert "BatchNormFunction" in ya.grad_fn.name() and not ran
        else:
            name = "nz_bn_relu_{}" if relu else "nz_bn_{}"
            assert ran == [name.format("forward") + suffix, name.format("backward") + suffix]
        assert xa.grad.dtype == torch.bfloat16 and xa.grad.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(ya.double(), yb, rtol=2**-8, atol=2**-8)
        away = pre.detach().abs() > 2**-5 if relu else torch.ones(shape, dtype=torch.bool)
        torch.testing.assert_close(xa.grad.double()[away], xb.grad[away], rtol=2**-7, atol=2**-8)
        for a, b in ((ours.weight.grad, ref.weight.grad), (ours.bias.grad, ref.bias.grad)):
            assert a.dtype == params
            torch.testing.assert_close(a.double(), b, rtol=2**-7, atol=2e-2)
        ours.zero_grad()
        ref.zero_grad()
        for key, value in ref.state_dict().items():
            mine = ours.state_dict()[key]
            # float32: a few steps (the batch variance's float sums, in an order that
            # depends on the vector width the compiler picked for this CPU)
            bf16 = mine.dtype == torch.bfloat16
            tol = {"rtol": 2**-7 if bf16 else 2**-21, "atol": 1e-6 if bf16 else 1e-7}
            torch.testing.assert_close(mine.double(), value.to(mine.dtype).double(), **tol)


@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
@pytest.mark.parametrize("shape", [(5, 40, 9, 7), (3, 300, 4, 5), (4, 8, 3, 5, 6)], ids=str)
def test_bfloat16_batch_norm_kernels_are_the_float32_ones_rounded(shape, relu):
    """The bfloat16 builds of BatchNorm's kernels (``bn_block.h``, ``bn_cl.h``) against the
    float32 ones on the widened values. channels_last: the same statistics, sums and
    parameter gradients to the bit (the same loops per channel, their products explicit
    fused multiply-adds: left to the compiler's contraction, an AMD EPYC's builds differed by
    a float32 step), y and dx the float32 ones rounded once. Contiguous: the rows' float
    lanes may add in another order (the float32 rows run hand-vectorized sums), so
    statistics and sums agree to float32 rounding and an output may round to the
    neighbouring bfloat16."""
    from normzoo._native import kernels

    torch.manual_seed(0)
    c = shape[1]
    w, b = torch.rand(c) + 0.5, torch.randn(c)
    for fmt in (torch.contiguous_format, CL_FORMATS[len(shape)]):
        x = (torch.randn(shape) * 3 + 2).to(torch.bfloat16).contiguous(memory_format=fmt)
        dy = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=fmt)
        xf, dyf = x.float(), dy.float()
        yh, stats_h, var_h = kernels.batch_norm_forward_bf16(x, w, b, 1e-5, True, relu)
        if fmt == torch.contiguous_format:
            yf, stats_f, var_f = kernels.batch_norm_forward_unchecked(
                xf, w, b, 1e-5, True, None, relu
            )
        else:
            yf, stats_f, var_f = kernels.batch_norm_forward_cl_unchecked(
                xf, w, b, 1e-5, True, None, relu
            )
        gh = kernels.batch_norm_backward_bf16(dy, x, w, stats_h, (True,) * 3, relu, b)
        backward = (
            kernels.batch_norm_backward_unchecked
            if fmt == torch.contiguous_format
            else kernels.batch_norm_backward_cl_unchecked
        )
        gf = backward(dyf, xf, w, stats_f, (True,) * 3, None, relu, b)
        assert yh.dtype == gh[0].dtype == torch.bfloat16
        assert yh.is_contiguous(memory_format=fmt) and gh[0].is_contiguous(memory_format=fmt)
        if fmt != torch.contiguous_format:
            for got, want in ((stats_h, stats_f), (var_h, var_f), (gh[1], gf[1]), (gh[2], gf[2])):
                assert torch.equal(got, want)
            assert torch.equal(yh, yf.to(torch.bfloat16))
            assert torch.equal(gh[0], gf[0].to(torch.bfloat16))
            continue
        torch.testing.assert_close(stats_h, stats_f, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(var_h, var_f, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gh[1:], gf[1:], rtol=1e-4, atol=1e-3)
        for got, want in ((yh, yf), (gh[0], gf[0])):  # at most one bfloat16 step apart
            torch.testing.assert_close(
                got.float(), want.to(torch.bfloat16).float(), rtol=2**-7, atol=1e-6
            )


def test_float64_module_passes_gradcheck():
    bn = normzoo.create("bn", 3, dtype=torch.float64)
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bn, (x,))


def _assert_matches_float64(y32, leaves32, y64, leaves64, dy) -> None:
    """The float32 kernel's output and gradients equal the float64 reference math's."""
    torch.testing.assert_close(y32, y64.float(), atol=1e-5, rtol=1e-5)
    g32 = torch.autograd.grad(y32, leaves32, dy)
    g64 = torch.autograd.grad(y64, leaves64, dy.double())
    for a, e in zip(g32, g64, strict=True):
        torch.testing.assert_close(a, e.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize("affine", [True, False])
def test_native_gradients_equal_float64_autograd(affine):
    # The C kernels are float32: their gradients are checked against float64 autograd of the
    # reference math on the same values (the exact gradient up to float32 rounding).
    x = torch.randn(5, 4, 3, 7) * 2 + 1
    w = torch.rand(4) + 0.5 if affine else None
    b = torch.randn(4) if affine else None
    dy = torch.randn_like(x)
    leaves32 = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    leaves64 = [t.double().requires_grad_() for t in (x, w, b) if t is not None]

    def run(xx, ww=None, bb=None, native=True):
        if native:
            return batch_mod._NativeBatchNorm.apply(xx, ww, bb, 1e-5, False)[0]
        return normzoo.functional.batch_norm(xx, None, None, ww, bb, training=True, eps=1e-5)[0]

    y32 = run(*leaves32)
    y64 = run(*leaves64, native=False)
    _assert_matches_float64(y32, leaves32, y64, leaves64, dy)


@pytest.mark.usefixtures("native_everywhere")
def test_native_double_backward_equals_torch():
    # create_graph=True runs torch's differentiable backward: second derivatives as torch's.
    ours, ref = _pair(4)
    x = torch.randn(4, 6, 5, 5)
    assert_double_backward_close(ours, x, ref, x)


# -- parity: the native channels_last branch ------------------------------------------------
@pytest.fixture
def bn_kernel_calls(monkeypatch) -> list[str]:
    """The native batch-norm C functions called, in order (a spy on the kernels' lookup),
    BatchNorm's one-call path off: these tests follow the checked path's dispatch, and the
    one-call path is compared with it bit for bit below."""
    calls: list[str] = []
    real = _kernels._fn
    monkeypatch.setattr(batch_mod, "fast_batch_norm", lambda *a: None)

    def spy(lib: str, name: str):
        calls.append(name)
        return real(lib, name)

    monkeypatch.setattr(_kernels, "_fn", spy)
    return calls


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=CL_FORMATS[x.dim()])


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (2, 6, 3, 4, 2), (3, 6, 33, 17)], ids=str)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_native_channels_last_training_steps_equal_torch(shape, momentum, bn_kernel_calls):
    # (3, 6, 33, 17): 1683 rows, several row blocks, the last one partial. Its weight and bias
    # gradients (sums of 1683 terms) are held to 1e-4: torch's channels_last kernel sums them
    # less precisely than ours (vs float64: 2.5e-5 and 6e-6); float64 checks are below.
    ours, ref = _pair(len(shape), momentum=momentum)
    param_tol = {"atol": 1e-4, "rtol": 1e-4}
    for step in range(3):
        x = _cl(torch.randn(shape) * (step + 1) + step)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        assert ya.is_contiguous(memory_format=CL_FORMATS[len(shape)])
        torch.testing.assert_close(ya, yb, **TOL)
        g = torch.randn_like(yb)
        ya.backward(g)
        yb.backward(g)
        assert xa.grad.is_contiguous(memory_format=CL_FORMATS[len(shape)])
        torch.testing.assert_close(xa.grad, xb.grad, **TOL)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **param_tol)
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, **param_tol)
        assert_same_state(ours, ref)
    assert bn_kernel_calls == ["nz_bn_forward_cl", "nz_bn_backward_cl"] * 3
    ours.eval()
    ref.eval()
    x = _cl(torch.randn(shape))
    torch.testing.assert_close(ours(x), ref(x), **TOL)


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize(("affine", "track"), [(False, True), (True, False), (False, False)])
def test_native_channels_last_without_affine_or_running_stats(affine, track, bn_kernel_calls):
    ours, ref = _pair(4, affine=affine, track_running_stats=track)
    for step in range(2):
        check_fwd_bwd(ours, ref, _cl(torch.randn(4, 6, 5, 5) * 2 + step))
        assert_same_state(ours, ref)
    assert bn_kernel_calls == ["nz_bn_forward_cl", "nz_bn_backward_cl"] * 2


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(8, 300, 9, 5), (2, 13, 4, 3, 5)], ids=str)
def test_native_channels_last_gradients_equal_float64_autograd(affine, shape):
    # 300 channels: register tiles of 32 and 8 and a remainder of 4, two runs of channels
    # (256 + 44); 13 channels: one tile of 8 and 5; 360 rows: three row blocks
    c = shape[1]
    x = torch.randn(shape) * 2 + 1
    w = torch.rand(c) + 0.5 if affine else None
    b = torch.randn(c) if affine else None
    dy = _cl(torch.randn(shape))
    leaves32 = [_cl(x).requires_grad_()] + [t.clone().requires_grad_() for t in (w, b) if affine]
    leaves64 = [t.double().requires_grad_() for t in (x, w, b) if t is not None]
    y32 = batch_mod._NativeBatchNorm.apply(*leaves32, *([] if affine else [None, None]), 1e-5, 0)
    y32 = y32[0]
    y64 = normzoo.functional.batch_norm(
        leaves64[0], None, None, *(leaves64[1:] or [None, None]), training=True, eps=1e-5
    )[0]
    assert y32.is_contiguous(memory_format=CL_FORMATS[len(shape)])
    _assert_matches_float64(y32, leaves32, y64, leaves64, dy)


@pytest.mark.usefixtures("native_everywhere")
def test_native_channels_last_takes_a_gradient_in_any_layout(bn_kernel_calls):
    # y.sum() sends back an expanded (all strides 0) gradient; a contiguous one also works
    ours, ref = _pair(4)
    x = _cl(torch.randn(4, 6, 5, 5) * 2 + 1)
    g = torch.randn(4, 6, 5, 5)
    assert g.is_contiguous() and not g.is_contiguous(memory_format=torch.channels_last)
    for backward in (lambda y: y.sum().backward(), lambda y: y.backward(g)):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        backward(ours(xa))
        backward(ref(xb))
        assert xa.grad.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    assert bn_kernel_calls.count("nz_bn_backward_cl") == 2


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (2, 6, 3, 4, 2)], ids=str)
def test_native_channels_last_double_backward_equals_torch(shape):
    ours, ref = _pair(len(shape))
    x = _cl(torch.randn(shape))
    assert_double_backward_close(ours, x, ref, x)


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize("trainable", ["weight", "bias"])
def test_native_channels_last_gradient_reaches_the_only_trainable_parameter(trainable):
    ours, ref = _pair(4)
    frozen = "bias" if trainable == "weight" else "weight"
    for m in (ours, ref):
        getattr(m, frozen).requires_grad_(False)
    x = _cl(torch.randn(4, 6, 5, 5))
    ours(x).pow(2).sum().backward()
    ref(x).pow(2).sum().backward()
    got, want = getattr(ours, trainable).grad, getattr(ref, trainable).grad
    assert got is not None
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert getattr(ours, frozen).grad is None


@pytest.mark.usefixtures("native_everywhere")
def test_native_channels_last_numerically_stable_for_large_means(bn_kernel_calls):
    x = _cl(1e4 + 0.05 * torch.randn(64, 4, 8, 8))
    bn = normzoo.create("bn", 4)
    y = bn(x)
    std = y.transpose(0, 1).reshape(4, -1).std(dim=1)
    torch.testing.assert_close(std, torch.ones(4), atol=1e-2, rtol=0)
    expected = x.transpose(0, 1).reshape(4, -1).double().var(dim=1)
    torch.testing.assert_close(bn.running_var.double(), 0.9 + 0.1 * expected, rtol=1e-3, atol=0)
    assert bn_kernel_calls == ["nz_bn_forward_cl"]


@pytest.mark.usefixtures("native_everywhere")
def test_native_channels_last_under_no_grad_and_inference_mode(bn_kernel_calls):
    ours, ref = _pair(5)
    for context in (torch.no_grad, torch.inference_mode):
        x = _cl(torch.randn(2, 6, 3, 4, 5) + 1)
        with context():
            y = ours(x)
            torch.testing.assert_close(y, ref(x), **TOL)
        assert y.is_contiguous(memory_format=torch.channels_last_3d)
        assert_same_state(ours, ref)
    assert bn_kernel_calls == ["nz_bn_forward_cl"] * 2


# -- parity: the native row kernels (GroupNorm, InstanceNorm, LayerNorm) ---------------------
def _row_pair(
    name: str, c: int, groups: int | None = None, **kwargs
) -> tuple[nn.Module, nn.Module]:
    if name == "gn":
        ours, ref = (
            normzoo.create("gn", c, num_groups=groups, **kwargs),
            nn.GroupNorm(groups, c, **kwargs),
        )
    elif name == "ln":
        ours, ref = normzoo.create("ln", c, **kwargs), nn.GroupNorm(1, c, **kwargs)
    else:
        kw = {"affine": True, **kwargs}
        ours, ref = normzoo.create("in", c, **kw), nn.InstanceNorm2d(c, **kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(0.5, 1.5)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize(
    ("shape", "dtype", "channels_last", "native"),
    [
        ((32, 64, 32, 32), torch.float32, False, True),
        ((128, 64, 8, 8), torch.float32, False, True),
        ((4, 32, 64, 64), torch.float32, False, True),
        ((8, 64, 100), torch.float32, False, True),
        ((32, 64, 32, 32), torch.bfloat16, False, False),
        ((32, 64, 32, 32), torch.float32, True, True),  # the operator's channels_last kernels
        ((32, 64, 32, 32), torch.bfloat16, True, False),
        ((2, 8, 4, 4), torch.float32, False, False),  # small: torch's kernel
        ((4096, 1024), torch.float32, False, False),
    ],
)
def test_row_dispatch(shape, dtype, channels_last, native):
    x = torch.empty(shape, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert rownorm_mod.use_native_row_norm(x) is native  # one channel per group (IN)


def test_row_dispatch_channels_last_needs_the_operator_library(monkeypatch):
    # the channels_last kernels are reached only through torch.ops.normzoo.group_norm
    x = torch.empty(32, 64, 32, 32).to(memory_format=torch.channels_last)
    monkeypatch.setattr(rownorm_mod._native, "ops_available", lambda: False)
    assert not rownorm_mod.use_native_row_norm(x)
    assert not rownorm_mod.use_native_row_norm(x, None, 8)
    assert rownorm_mod.use_native_row_norm(x.contiguous())  # contiguous: the Python Function
    strided = torch.empty(32, 64, 32, 64)[..., ::2]  # neither layout
    monkeypatch.setattr(rownorm_mod._native, "ops_available", lambda: True)
    assert not rownorm_mod.use_native_row_norm(strided)


@pytest.mark.parametrize(
    ("shape", "groups", "ops", "native"),
    [
        ((32, 64, 32, 32), 32, False, True),  # 2M elements: the kernels win
        ((32, 64, 32, 32), 1, False, True),
        ((8, 256, 14, 14), 32, False, False),  # below 1M, kernels through Python: torch's
        ((128, 64, 8, 8), 1, False, False),
        ((8, 256, 14, 14), 32, True, True),  # ... through the C++ operator: the kernels
        ((128, 64, 8, 8), 1, True, True),
        ((2, 8, 4, 4), 2, True, False),  # small: torch's kernel
        ((8, 256, 14, 14), 256, False, True),  # one channel per group: InstanceNorm's dispatch
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_row_dispatch_with_groups(shape, groups, ops, native, channels_last, monkeypatch):
    if ops and not rownorm_mod._native.load_ops():  # this test may run first: load it
        pytest.skip("the C++ operator library could not be built here")
    monkeypatch.setattr(rownorm_mod._native, "ops_available", lambda: ops)
    x = torch.empty(shape)
    if channels_last:  # the operator's channels_last kernels, at every size
        x = x.to(memory_format=torch.channels_last)
        native = ops
    assert rownorm_mod.use_native_row_norm(x, None, groups) is native
    name, kw = ("ln", {}) if groups == 1 else ("gn", {"num_groups": groups})
    calls = []
    original = rownorm_mod.native_group_norm
    norm = normzoo.create(name, shape[1], **kw)
    import normzoo.norms.group as group_mod
    import normzoo.norms.layer as layer_mod

    with pytest.MonkeyPatch.context() as mp:
        for mod in (group_mod, layer_mod):
            mp.setattr(
                mod, "native_group_norm", lambda *a, **k: calls.append(1) or original(*a, **k)
            )
            # the checked path's dispatch (the one-call path is tested on its own below)
            mp.setattr(mod, "fast_group_norm", lambda *a: None)
        with torch.no_grad():
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            norm(torch.randn(shape).to(memory_format=fmt))
    assert bool(calls) is native


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize(
    ("name", "groups", "shape"),
    [
        *[
            (name, groups, shape)
            for name, groups in (("gn", 4), ("gn", 2), ("gn", 8), ("ln", None))
            for shape in ((4, 8, 7), (4, 8, 5, 3), (2, 8, 3, 4, 2))
        ],
        ("in", None, (4, 8, 5, 3)),
        ("in", None, (1, 8, 40, 33)),
    ],
    ids=str,
)
def test_native_rows_equal_torch(name, groups, shape):
    ours, ref = _row_pair(name, 8, groups)
    # the affine gradients are float32 sums of up to 1320 values of size ~1 (here torch's
    # and ours are each 1e-5 to 3e-5 off float64): 5e-5 for them
    for step in range(2):
        check_fwd_bwd(
            ours,
            ref,
            torch.randn(shape) * (step + 2) - step,
            param_tol={"atol": 5e-5, "rtol": 1e-5},
        )


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize("name", ["gn", "ln", "in"])
def test_native_rows_without_affine(name):
    ours, ref = _row_pair(name, 8, 4, affine=False)
    check_fwd_bwd(ours, ref, torch.randn(4, 8, 6, 5) * 3 + 1)


@pytest.mark.usefixtures("native_everywhere")
def test_native_instancenorm_running_stats_equal_torch():
    ours, ref = _row_pair("in", 6, track_running_stats=True, momentum=0.3)
    for step in range(3):
        check_fwd_bwd(ours, ref, torch.randn(4, 6, 5, 5) * (step + 1) + step)
        # torch's InstanceNorm does not count batches; the running averages are compared
        torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL)
        torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)
    ours.eval()
    ref.eval()
    x = torch.randn(4, 6, 5, 5)
    torch.testing.assert_close(ours(x), ref(x), **TOL)


@pytest.mark.usefixtures("native_everywhere")
def test_native_rows_numerically_stable_for_large_means():
    x = 1e4 + 0.05 * torch.randn(4, 8, 32, 32)
    y = normzoo.create("gn", 8, num_groups=2)(x)
    torch.testing.assert_close(y.reshape(4, 2, -1).std(dim=2), torch.ones(4, 2), atol=1e-2, rtol=0)


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize(("groups", "affine"), [(4, True), (1, True), (8, False), (2, False)])
def test_native_rows_gradients_equal_float64_autograd(groups, affine):
    x = torch.randn(3, 8, 5, 7) * 2 + 1
    w = torch.rand(8) + 0.5 if affine else None
    b = torch.randn(8) if affine else None
    dy = torch.randn_like(x)
    leaves32 = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    leaves64 = [t.double().requires_grad_() for t in (x, w, b) if t is not None]
    pad = [None, None] if not affine else []
    y32 = rownorm_mod.native_group_norm(leaves32[0], groups, *leaves32[1:], *pad, 1e-5)[0]
    y64 = normzoo.functional.group_norm(leaves64[0], groups, *leaves64[1:], *pad, eps=1e-5)
    torch.testing.assert_close(y32, y64.float(), atol=1e-5, rtol=1e-5)
    g32 = torch.autograd.grad(y32, leaves32, dy)
    g64 = torch.autograd.grad(y64, leaves64, dy.double())
    for a, e in zip(g32, g64, strict=True):
        torch.testing.assert_close(a, e.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize("name", ["gn", "ln", "in"])
def test_native_rows_double_backward_equals_torch(name):
    ours, ref = _row_pair(name, 8, 4)
    x = torch.randn(4, 8, 5, 5)
    assert_double_backward_close(ours, x, ref, x)


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize("name", ["gn", "ln", "in"])
def test_rows_with_native_kernels_disabled_still_equal_torch(monkeypatch, name):
    monkeypatch.setenv("NORMZOO_NATIVE", "0")
    assert not rownorm_mod.use_native_row_norm(torch.empty(4, 8, 5, 5))
    ours, ref = _row_pair(name, 8, 4)
    check_fwd_bwd(ours, ref, torch.randn(4, 8, 5, 5))


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize("name", ["bn", "gn", "in", "ln"])
@pytest.mark.parametrize("trainable", ["weight", "bias"])
def test_native_gradient_reaches_the_only_trainable_parameter(name, trainable):
    # x needs no gradient and one affine parameter is frozen: the other still gets its own
    ours, ref = _pair(4) if name == "bn" else _row_pair(name, 6 if name != "gn" else 8, 2)
    frozen = "bias" if trainable == "weight" else "weight"
    for m in (ours, ref):
        getattr(m, frozen).requires_grad_(False)
    x = torch.randn(4, ours.num_features, 5, 5)
    ours(x).pow(2).sum().backward()
    ref(x).pow(2).sum().backward()
    got, want = getattr(ours, trainable).grad, getattr(ref, trainable).grad
    assert got is not None
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert getattr(ours, frozen).grad is None


# -- LayerNorm's and GroupNorm's one-call path ----------------------------------------------
def _needs_ops() -> None:
    if not rownorm_mod._native.ops_available():
        pytest.skip("the C++ operator library could not be built here")


def _serve_counter(fast):
    """``(seen, spy)``: ``spy`` calls the one-call function ``fast`` and counts in ``seen`` the
    inputs it served (an output) and declined (``None``)."""
    seen = {"served": 0, "declined": 0}

    def spy(*args):
        y = fast(*args)
        seen["served" if y is not None else "declined"] += 1
        return y

    return seen, spy


@pytest.fixture
def one_call_spy(monkeypatch):
    """Counts the inputs the one-call path served (``served``) and declined (``declined``);
    ``off()`` switches it off, so the modules take their checked path."""
    import normzoo.norms.group as group_mod
    import normzoo.norms.layer as layer_mod

    seen, spy = _serve_counter(rownorm_mod.fast_group_norm)
    for mod in (group_mod, layer_mod):
        monkeypatch.setattr(mod, "fast_group_norm", spy)

    def off() -> None:
        for mod in (group_mod, layer_mod):
            monkeypatch.setattr(mod, "fast_group_norm", lambda *a: None)

    seen["off"] = off  # type: ignore[assignment]
    return seen


def _one_call_run(layer: nn.Module, x: torch.Tensor, g: torch.Tensor, grad: bool) -> list:
    x = x.clone().requires_grad_(grad)
    layer.zero_grad(set_to_none=True)
    if not grad:
        with torch.no_grad():
            return [layer(x)]
    y = layer(x)
    y.backward(g)
    return [y, x.grad, *(p.grad for p in layer.parameters())]


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize(
    ("name", "groups", "shape", "channels_last"),
    [
        ("ln", None, (4, 8, 5, 6), False),
        ("ln", None, (4, 8, 5, 6), True),
        ("ln", None, (3, 8, 33), False),
        ("gn", 4, (2, 8, 3, 4, 5), False),
        ("gn", 2, (2, 8, 3, 4, 5), True),
        ("gn", 8, (4, 8, 7, 5), True),
    ],
    ids=str,
)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("grad", [True, False])
def test_one_call_path_equals_the_checked_path(
    name, groups, shape, channels_last, affine, relu, grad, one_call_spy
):
    """The one-call path serves these inputs, with the checked path's values, gradients and
    layout to the bit (the same kernels through the same operator)."""
    _needs_ops()
    kw = {"num_groups": groups} if groups else {}
    layer = normzoo.create(name, 8, affine=affine, activation="relu" if relu else None, **kw)
    if affine:
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.uniform_(-0.5, 0.5)
    x, g = torch.randn(shape) * 2 + 1, torch.randn(shape)
    if channels_last:
        fmt = CL_FORMATS[len(shape)]
        x, g = x.to(memory_format=fmt), g.to(memory_format=fmt)
    fast = _one_call_run(layer, x, g, grad)
    assert one_call_spy["served"] == 1 and one_call_spy["declined"] == 0
    one_call_spy["off"]()
    checked = _one_call_run(layer, x, g, grad)
    assert len(fast) == len(checked)
    for a, b in zip(fast, checked, strict=True):
        assert torch.equal(a, b) and a.stride() == b.stride()
    if relu:
        assert (fast[0] == 0).any()


@pytest.mark.usefixtures("native_everywhere")
def test_one_call_operator_declines_what_the_checked_path_must_serve():
    """``normzoo::group_norm_module`` returns None, having done nothing, for every input that
    the modules' checked path sends elsewhere (or rejects with its own error)."""
    _needs_ops()
    op = torch.ops.normzoo.group_norm_module.default
    w, b = torch.ones(8), torch.zeros(8)

    def call(x, weight=w, bias=b, relu=False, channels=8, max_dim=5, min_numel=0, max_row=1 << 20):
        return op(x, 2, weight, bias, 1e-5, relu, channels, max_dim, min_numel, max_row)

    x = torch.randn(4, 8, 5, 6)
    assert call(x) is not None and call(x.to(memory_format=torch.channels_last)) is not None
    assert call(x, weight=None, bias=None) is not None
    declined = {
        "float64": call(x.double(), weight=w.double(), bias=b.double()),
        "bfloat16": call(x.bfloat16()),
        "(N, C)": call(torch.randn(4, 8)),
        "too many dims": call(torch.randn(2, 8, 2, 2, 2, 2)),
        "other channel count": call(x, weight=None, bias=None, channels=4),
        "below min_numel": call(x, min_numel=x.numel() + 1),
        "neither layout": call(torch.randn(4, 8, 5, 12)[..., ::2]),
        "float64 weight": call(x, weight=w.double()),
        "float64 bias": call(x, bias=b.double()),
        "ReLU row too long": call(x, relu=True, max_row=4 * 30 - 1),
    }
    assert [k for k, y in declined.items() if y is not None] == []
    assert call(x, relu=True, max_row=4 * 30) is not None  # rows of 4 channels x 30 values
    # channels_last has no row limit (it masks blocks of positions)
    assert call(x.to(memory_format=torch.channels_last), relu=True, max_row=1) is not None


@pytest.mark.parametrize("name", ["gn", "ln"])
def test_one_call_path_serves_channels_last_at_every_size(name, one_call_spy):
    """Below ``NATIVE_MIN_NUMEL`` a contiguous input keeps torch's kernel, a channels_last one
    takes the operator (torch's channels_last kernel cancels; see ``torch_group_norm``), with
    the checked path's values and the layout kept."""
    _needs_ops()
    layer = normzoo.create(name, 8)
    randomize_affine(layer, channels=8)
    x = torch.randn(2, 8, 3, 3) + 5
    assert x.numel() < rownorm_mod.NATIVE_MIN_NUMEL
    y = layer(x)
    assert one_call_spy["served"] == 0
    xc = x.to(memory_format=torch.channels_last)
    y_cl = layer(xc)
    assert one_call_spy["served"] == 1
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5)
    one_call_spy["off"]()
    torch.testing.assert_close(layer(xc), y_cl, rtol=0, atol=0)  # the checked path's kernels


@pytest.mark.usefixtures("native_everywhere")
def test_one_call_path_declines_and_the_checked_path_decides(one_call_spy, monkeypatch):
    """Declined inputs go to the checked path, whose errors and fallbacks stay as they are;
    a subclass with its own math or checks never takes the one-call path."""
    _needs_ops()
    layer = normzoo.create("gn", 8, num_groups=2)
    with pytest.raises(ValueError, match=r"expects 8 channels \(num_features\) in dim 1, got 4"):
        layer(torch.randn(2, 4, 3, 3))
    with pytest.raises(TypeError, match="floating-point input"):
        layer(torch.ones(2, 8, 3, 3, dtype=torch.long))
    assert layer(torch.randn(2, 8, 3, 3, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert one_call_spy["served"] == 0 and one_call_spy["declined"] == 3

    class Sub(torch.Tensor):
        pass

    x = torch.randn(2, 8, 3, 3)
    layer(x.as_subclass(Sub))  # a tensor subclass: the checked path (its torch functions)
    monkeypatch.setenv("NORMZOO_NATIVE", "0")
    layer(x)  # native kernels switched off
    monkeypatch.delenv("NORMZOO_NATIVE")
    traced = torch.jit.trace(layer, x, check_trace=False)  # torch's kernels, recorded
    assert "normzoo::" not in str(traced.graph) and "aten::group_norm" in str(traced.graph)
    assert one_call_spy["served"] == 0 and one_call_spy["declined"] == 6
    layer(x)
    assert one_call_spy["served"] == 1

    class OwnChecks(normzoo.norms.GroupNorm):
        def check_input(self, x):
            super().check_input(x)
            if x.shape[0] < 3:
                raise ValueError("needs 3 samples")

    class Plain(normzoo.norms.LayerNorm):
        pass

    assert not OwnChecks.one_call and Plain.one_call and normzoo.norms.GroupNorm.one_call
    with pytest.raises(ValueError, match="needs 3 samples"):
        OwnChecks(8, 2)(x)
    assert one_call_spy["served"] == 1 and one_call_spy["declined"] == 6


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize("name", ["gn", "ln", "bn"])
def test_one_call_path_skips_the_operator_for_other_dtypes(name, monkeypatch):
    """Half-precision, small (and CUDA) inputs never reach the operator: no call's fixed cost
    for inputs the native kernels do not serve. bfloat16 does reach BatchNorm's (its
    bfloat16 kernels), not GroupNorm's or LayerNorm's."""
    _needs_ops()
    mod = batch_mod if name == "bn" else rownorm_mod
    op = (
        torch.ops.normzoo.batch_norm_module if name == "bn" else torch.ops.normzoo.group_norm_module
    )
    calls = []
    monkeypatch.setattr(mod, "_module_op", lambda *a: calls.append(a[0].dtype) or op(*a))
    layer = normzoo.create(name, 8)
    layer(torch.randn(4, 8, 5, 5, dtype=torch.float16))
    layer(torch.randn(4, 8, 5, 5, dtype=torch.bfloat16))
    layer(torch.randn(4, 8, 5, 5))
    served = [torch.bfloat16, torch.float32] if name == "bn" else [torch.float32]
    assert calls == served
    monkeypatch.setattr(mod, "NATIVE_MIN_NUMEL", 801)
    layer(torch.randn(4, 8, 5, 5))  # 800 elements
    assert calls == served


# -- BatchNorm's one-call path (training) -----------------------------------------------------
@pytest.fixture
def bn_one_call_spy(monkeypatch):
    """Counts the inputs BatchNorm's one-call path served and declined; ``off()`` switches it
    off (the checked path: the Python autograd.Function around the same kernels)."""
    seen, spy = _serve_counter(batch_mod.fast_batch_norm)
    monkeypatch.setattr(batch_mod, "fast_batch_norm", spy)
    seen["off"] = lambda: monkeypatch.setattr(batch_mod, "fast_batch_norm", lambda *a: None)
    return seen


@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize(
    ("shape", "channels_last"),
    [
        ((4, 6, 5, 3), False),
        ((4, 6, 5, 3), True),
        ((2, 6, 3, 4, 2), True),
        ((3, 6, 33), False),
        ((40, 6), False),  # (N, C) tokens: the channels_last kernels on their rows
    ],
    ids=str,
)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}],
    ids=["default", "cumulative", "no-affine", "no-running-stats"],
)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("grad", [True, False])
def test_batchnorm_one_call_path_equals_the_checked_path(
    shape, channels_last, kwargs, relu, grad, bn_one_call_spy
):
    """Two training steps on the one-call path and on the checked path: outputs, gradients,
    running statistics and num_batches_tracked equal to the bit, layout kept."""
    _needs_ops()
    runs = []
    for path in ("one-call", "checked"):
        if path == "checked":
            bn_one_call_spy["off"]()
        torch.manual_seed(0)
        layer = normzoo.create("bn", 6, activation="relu" if relu else None, **kwargs)
        if layer.affine:
            with torch.no_grad():
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.5, 0.5)
        out = []
        for step in range(2):
            x, g = torch.randn(shape) * (step + 2) - step, torch.randn(shape)
            if channels_last:
                fmt = CL_FORMATS[len(shape)]
                x, g = x.to(memory_format=fmt), g.to(memory_format=fmt)
            out += _one_call_run(layer, x, g, grad)
        runs.append(out + [b.clone() for b in layer.buffers()])
    assert bn_one_call_spy["served"] == 2 and bn_one_call_spy["declined"] == 0
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b) and a.stride() == b.stride()


@pytest.mark.usefixtures("native_everywhere")
def test_batchnorm_one_call_operator_declines_and_changes_nothing():
    """``normzoo::batch_norm_module`` returns None for every input that BatchNorm's checked
    path sends elsewhere (or rejects), leaving the running statistics and the batch count
    untouched."""
    _needs_ops()
    op = torch.ops.normzoo.batch_norm_module.default
    layer = normzoo.create("bn", 8)
    mean, var, count = layer.running_mean, layer.running_var, layer.num_batches_tracked
    limits = {"min_numel": 0, "min_spatial": 4, "min_numel_cl": 10**9, "few_cl": 2}

    def call(x, weight=layer.weight, bias=layer.bias, rm=mean, rv=var, channels=8, **kw):
        lim = {**limits, **kw}
        tokens = lim.pop("tokens", 0)
        args = (x, weight, bias, rm, rv, count, 0.1, 1e-5, False, channels, 5)
        return op(*args, *lim.values(), 64, tokens)

    x = torch.randn(4, 8, 2, 3)
    declined = {
        "float64": call(x.double()),
        "(N, C)": call(torch.randn(4, 8)),
        "(N, C) above max_numel_tokens": call(torch.randn(4, 8), tokens=31),
        "(N, C) not contiguous": call(torch.randn(8, 4).t(), tokens=64),
        "other channel count": call(x, channels=4),
        "below min_numel": call(x, min_numel=x.numel() + 1),
        "short rows": call(torch.randn(4, 8, 3)),
        "channels_last below its threshold": call(x.to(memory_format=torch.channels_last)),
        "neither layout": call(torch.randn(4, 8, 5, 12)[..., ::2]),
        "one value per channel": call(torch.randn(1, 8, 1, 1), min_spatial=1),
        "float64 weight": call(x, weight=layer.weight.double()),
        "float64 running mean": call(x, rm=mean.double()),
        "running mean of another size": call(x, rm=torch.zeros(4)),
        "weight of another size": call(x, weight=torch.ones(4)),
        "strided weight": call(x, weight=torch.ones(16)[::2]),
        "no batch count": op(
            x, layer.weight, layer.bias, mean, var, None, 0.1, 1e-5, False, 8, 5, 0, 4, 10**9, 2, 64
        ),
    }
    assert [k for k, y in declined.items() if y is not None] == []
    assert torch.equal(mean, torch.zeros(8)) and torch.equal(var, torch.ones(8))
    assert count.item() == 0
    assert call(x.to(memory_format=torch.channels_last), min_numel_cl=0) is not None
    assert call(torch.randn(4, 8, 3), min_spatial=3) is not None
    assert call(torch.randn(4, 8), tokens=32) is not None
    assert count.item() == 3 and not torch.equal(mean, torch.zeros(8))
    few = torch.randn(4, 2, 2, 3).to(memory_format=torch.channels_last)
    no_stats = {"weight": None, "bias": None, "rm": None, "rv": None}
    assert call(few, channels=2, **no_stats) is not None  # no parameters or running statistics


@pytest.mark.parametrize(
    ("shape", "served"),
    [((8, 64, 16, 16), True), ((4, 16, 32, 32), True), ((16, 32, 8, 8), False)],
    ids=str,
)
def test_batchnorm_one_call_serves_channels_last_from_its_own_threshold(
    shape, served, bn_one_call_spy
):
    """channels_last from 64k elements: the one-call operator's fixed cost is lower than the
    Python autograd.Function's, whose dispatch (``use_native_batch_stats``, 256k) keeps torch's
    kernel there; both equal torch.nn to float32 accuracy."""
    _needs_ops()
    x = torch.randn(shape).to(memory_format=torch.channels_last)
    assert not batch_mod.use_native_batch_stats(x)
    ours, ref = normzoo.create("bn", shape[1]), nn.BatchNorm2d(shape[1])
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(ya, yb, **TOL)
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    # the affine gradients sum 2k-8k terms: held to 1e-4, as in the channels_last tests above
    for a, b in ((ours.weight, ref.weight), (ours.bias, ref.bias)):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4)
    assert_same_state(ours, ref)
    assert bn_one_call_spy["served"] == int(served)


@pytest.mark.parametrize("one_call", [True, False], ids=["one-call", "checked"])
@pytest.mark.parametrize(
    ("shape", "native"),
    [((1024, 64), True), ((96, 1000), True), ((4096, 256), False)],  # 64k, 96k; 1M: torch's
    ids=str,
)
def test_batchnorm_on_tokens_runs_the_rows_kernels_up_to_its_threshold(
    shape, native, one_call, bn_one_call_spy, monkeypatch
):
    """``(N, C)`` tokens (BatchNorm1d's input) from ``NATIVE_MIN_NUMEL`` to
    ``NATIVE_MAX_NUMEL_TOKENS`` elements run the channels_last kernels on their rows, on the
    one-call operator and on the checked path alike; larger ones torch's kernel. Two training
    steps equal ``nn.BatchNorm1d`` (outputs, gradients, running statistics), with the ReLU
    fused too; eval is torch's."""
    _needs_ops()
    if not one_call:
        bn_one_call_spy["off"]()
    rows_calls = []
    real = _kernels._fn
    monkeypatch.setattr(
        _kernels, "_fn", lambda lib, name: rows_calls.append(name) or real(lib, name)
    )
    c = shape[1]
    for relu in (False, True):
        ours = normzoo.create("bn", c, activation="relu" if relu else None)
        ref = nn.BatchNorm1d(c)
        randomize_affine(ref, channels=c)
        ours.load_state_dict(ref.state_dict())
        for step in range(2):
            x = torch.randn(shape) * (step + 2) + step
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = ours(xa), ref(xb)
            yb = torch.relu(yb) if relu else yb
            g = torch.randn(shape)
            ya.backward(g)
            yb.backward(g)
            torch.testing.assert_close(ya, yb, **TOL)
            torch.testing.assert_close(xa.grad, xb.grad, atol=1e-4, rtol=1e-4)
            for a, b in ((ours.weight, ref.weight), (ours.bias, ref.bias)):
                torch.testing.assert_close(a.grad, b.grad, atol=1e-3, rtol=1e-4)
            ours.zero_grad(), ref.zero_grad()
        assert_same_state(ours, ref)
        ours.eval(), ref.eval()
        x = torch.randn(shape)
        torch.testing.assert_close(ours(x), torch.relu(ref(x)) if relu else ref(x), **TOL)
    if not native:
        assert rows_calls == [] and bn_one_call_spy["served"] == 0
    elif one_call:
        assert rows_calls == [] and bn_one_call_spy["served"] == 4
    else:  # the checked path: the Python autograd.Function on the rows kernels
        names = ["nz_bn_forward_cl", "nz_bn_backward_cl"] * 2
        names += ["nz_bn_relu_forward_cl", "nz_bn_relu_backward_cl"] * 2
        assert rows_calls == names


def test_batchnorm_on_bfloat16_tokens_rounds_the_float32_kernels():
    """bfloat16 ``(N, C)`` tokens on the rows kernels' bfloat16 build: ``y`` and ``dx`` the
    float32 results on the same values rounded once, the parameters' gradients and the
    running statistics the float32 path's exactly; double backward through torch's."""
    _needs_ops()
    half = normzoo.create("bn", 96)
    randomize_affine(half, channels=96)
    full = normzoo.create("bn", 96)
    full.load_state_dict(half.state_dict())
    for step in range(2):
        x = (torch.randn(1024, 96) * 3 + step).to(torch.bfloat16)
        g = torch.randn(1024, 96).to(torch.bfloat16)
        xh, xf = x.clone().requires_grad_(), x.float().requires_grad_()
        yh, yf = half(xh), full(xf)
        assert yh.dtype == torch.bfloat16 and torch.equal(yh, yf.to(torch.bfloat16))
        got = torch.autograd.grad(yh, [xh, half.weight, half.bias], g)
        want = torch.autograd.grad(yf, [xf, full.weight, full.bias], g.float())
        assert torch.equal(got[0], want[0].to(torch.bfloat16))
        assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    for mine, theirs in zip(half.buffers(), full.buffers(), strict=True):
        assert torch.equal(mine, theirs)
    ref = nn.BatchNorm1d(96)
    ref.load_state_dict(full.state_dict())
    x = torch.randn(1024, 96) * 2 + 1
    assert_double_backward_close(full, x, ref, x)


@pytest.mark.usefixtures("native_everywhere")
def test_batchnorm_one_call_path_declines_and_the_checked_path_decides(bn_one_call_spy):
    _needs_ops()
    layer = normzoo.create("bn", 8)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 8, 1, 1))
    with pytest.raises(ValueError, match=r"expects 8 channels \(num_features\) in dim 1, got 4"):
        layer(torch.randn(2, 4, 3, 3))
    assert layer.num_batches_tracked.item() == 0
    assert bn_one_call_spy["served"] == 0 and bn_one_call_spy["declined"] == 2
    layer.eval()
    layer(torch.randn(2, 8, 3, 3))  # eval with running statistics: not asked
    assert bn_one_call_spy["declined"] == 2
    layer.train()
    layer(torch.randn(2, 8, 3, 3))
    assert bn_one_call_spy["served"] == 1 and layer.num_batches_tracked.item() == 1
    sub = normzoo.create("noisybn", 8) if "noisybn" in normzoo.available() else None
    for cls in (normzoo.norms.SyncBatchNorm, normzoo.norms.GhostBatchNorm):
        assert not cls.one_call
    assert sub is None or not type(sub).one_call


# -- switches and fallbacks ------------------------------------------------------------------
def test_small_calls_run_eager():
    fused = _fused.fuse(lambda x: x * 2, min_numel=100)
    torch.testing.assert_close(fused(torch.ones(3)), torch.full((3,), 2.0))
    assert fused.compiled_kinds() == 0


def test_compile_switch_off_uses_eager(monkeypatch):
    calls = []
    fused = _fused.fuse(lambda x: calls.append(1) or x * 2, min_numel=0)
    monkeypatch.setenv("NORMZOO_COMPILE", "0")
    assert not _fused.compile_enabled()
    torch.testing.assert_close(fused(torch.ones(3)), torch.full((3,), 2.0))
    assert calls == [1] and fused.compiled_kinds() == 0
    monkeypatch.delenv("NORMZOO_COMPILE")
    _fused.set_enabled(False)
    try:
        assert not _fused.compile_enabled()
        fused(torch.ones(3))
        assert fused.compiled_kinds() == 0
    finally:
        _fused.set_enabled(True)
    assert _fused.compile_enabled()


@pytest.mark.usefixtures("native_everywhere")
def test_batchnorm_with_native_kernels_disabled_still_equals_torch(monkeypatch):
    monkeypatch.setenv("NORMZOO_NATIVE", "0")
    assert not batch_mod.use_native_batch_stats(torch.empty(4, 6, 3, 3))
    ours, ref = _pair(4, momentum=None)
    for _ in range(2):
        x = torch.randn(4, 6, 3, 3, requires_grad=True)
        torch.testing.assert_close(ours(x), ref(x), **TOL)
    torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)


def test_compile_failure_falls_back_with_one_warning():
    def data_dependent(x: torch.Tensor) -> torch.Tensor:
        return x + 1 if x.sum() > 0 else x - 1  # not capturable as one graph

    fused = _fused.fuse(data_dependent, min_numel=0)
    with pytest.warns(RuntimeWarning, match="using the eager version"):
        out = fused(torch.ones(3))
    torch.testing.assert_close(out, torch.full((3,), 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(fused(-torch.ones(3)), torch.full((3,), -2.0))


def test_import_is_light():
    code = (
        "import sys, normzoo, torch; normzoo.create('bn', 4).eval()(torch.randn(2, 4, 3, 3)); "
        "heavy = [m for m in ('torch._dynamo', 'torch._inductor', 'matplotlib') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- layout ----------------------------------------------------------------------------------
@pytest.mark.usefixtures("native_everywhere")
@pytest.mark.parametrize("name", normzoo.available())
def test_channels_last_in_channels_last_out(name):
    norm = normzoo.create(name, 8, **small_batch_kwargs(name))
    x = torch.randn(4, 8, 5, 6).to(memory_format=torch.channels_last).requires_grad_()
    y = norm(x)
    assert y.is_contiguous(memory_format=torch.channels_last), name
    y.backward(torch.randn_like(y))
    assert x.grad.is_contiguous(memory_format=torch.channels_last), name


class _CopyCounter(TorchDispatchMode):
    """Records every copy (``copy_``, ``clone``, ``_to_copy``, ``contiguous``) of a tensor
    with ``numel`` elements: a layout change of the input, the output or the gradients."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel = numel
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        first = args[0] if args else None
        if (
            any(k in name for k in ("copy", "clone", "contiguous"))
            and isinstance(first, torch.Tensor)
            and first.numel() == self.numel
        ):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("shape", [(4, 8, 6, 5), (8, 64, 16, 16)], ids=str)
@pytest.mark.parametrize("name", normzoo.available())
def test_channels_last_has_no_hidden_copy(name, shape):
    """Forward and backward of every norm on channels_last input copy no input-sized tensor
    (no round trip through NCHW), on the small path and on the native kernels' sizes."""
    norm = normzoo.create(name, shape[1], **small_batch_kwargs(name))
    x = torch.randn(shape).to(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(shape).to(memory_format=torch.channels_last)
    with _CopyCounter(x.numel()) as mode:
        y = norm(x)
        torch.autograd.grad(y, [x, *norm.parameters()], g, allow_unused=True)
    assert mode.seen == [], name
    with _CopyCounter(x.numel()) as mode:  # the counter does see a layout change
        x.contiguous()
    assert mode.seen == ["aten.clone"]


@pytest.mark.parametrize(
    ("name", "native", "copies"), [("ln", True, 0), ("gn", True, 0), ("gn", False, 3)]
)
def test_half_precision_channels_last_group_norm_kernel_choice(name, native, copies, monkeypatch):
    """bfloat16 on channels_last: LayerNorm keeps torch's channels_last kernel (2-4.5x faster
    than a copy; half precision cannot hold the means that break it); GroupNorm with several
    channels per group runs zoo.c's bfloat16 row kernels on the tensor as it is, and without
    native kernels torch's contiguous kernel on a copy (faster than its channels_last one
    there, and stable): the input and the output, and the output's gradient in the
    backward."""
    if not native:
        monkeypatch.setenv("NORMZOO_NATIVE", "0")
    norm = normzoo.create(name, 8)
    x = torch.randn(4, 8, 6, 5, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    x.requires_grad_()
    with _CopyCounter(x.numel()) as mode:
        y = norm(x)
        torch.autograd.grad(y, x, torch.ones_like(y))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert mode.seen == ["aten.clone"] * copies


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 8, 5, 6), (2, 8, 3, 4, 5)], ids=str)
def test_instancenorm_channels_last_equals_torch(shape, dtype):
    ours = normzoo.create("in", 8)
    ref = (nn.InstanceNorm2d if len(shape) == 4 else nn.InstanceNorm3d)(8, affine=True)
    ref.load_state_dict(ours.state_dict())
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = torch.randn(shape).to(dtype=dtype, memory_format=fmt)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert ya.is_contiguous(memory_format=fmt)
    tol = TOL if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(ya, yb, **tol)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, **tol)


@pytest.mark.parametrize("ops", [True, False])
@pytest.mark.parametrize(("affine", "track"), [(True, True), (False, True), (True, False)])
def test_instancenorm_channels_last_native_path(monkeypatch, affine, track, ops):
    # float32 channels_last runs the operator's channels_last kernels (ops) or, without the
    # operator library, zoo.c's row statistics and affine map, in place: the same outputs,
    # gradients (vs float64 autograd of the reference math) and running statistics
    from normzoo._native import zoo_kernels
    from normzoo.norms import instance as instance_mod

    monkeypatch.setattr(rownorm_mod._native, "ops_available", lambda: ops)
    monkeypatch.setattr(rownorm_mod, "NATIVE_MIN_NUMEL", 1)
    calls = []
    original = zoo_kernels.gn_forward
    monkeypatch.setattr(
        zoo_kernels, "gn_forward", lambda *a: calls.append(a[0].stride()) or original(*a)
    )
    op_calls = []
    original_op = instance_mod.native_group_norm
    monkeypatch.setattr(
        instance_mod,
        "native_group_norm",
        lambda x, *a, **k: op_calls.append(x.stride()) or original_op(x, *a, **k),
    )
    ours = normzoo.create("in", 6, affine=affine, track_running_stats=track, momentum=0.3)
    ref = nn.InstanceNorm2d(6, affine=affine, track_running_stats=track, momentum=0.3)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(ref.state_dict(), strict=False)
    for step in range(2):
        x = torch.randn(3, 6, 5, 7) * (step + 2) + step
        xa = x.to(memory_format=torch.channels_last).requires_grad_()
        x64 = x.double().requires_grad_()
        ya = ours(xa)
        assert ya.is_contiguous(memory_format=torch.channels_last)
        w64 = ref.weight.detach().double().requires_grad_() if affine else None
        b64 = ref.bias.detach().double().requires_grad_() if affine else None
        y64 = normzoo.functional.instance_norm(
            x64, None, None, w64, b64, use_input_stats=True, eps=1e-5
        )[0]
        torch.testing.assert_close(ya, y64.float(), **TOL)
        g = torch.randn_like(x)
        ya.backward(g)
        leaves = [x64, *([w64, b64] if affine else [])]
        want = torch.autograd.grad(y64, leaves, g.double())
        torch.testing.assert_close(xa.grad, want[0].float(), atol=1e-4, rtol=1e-4)
        assert xa.grad.is_contiguous(memory_format=torch.channels_last)
        if affine:
            torch.testing.assert_close(ours.weight.grad, want[1].float(), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ours.bias.grad, want[2].float(), atol=1e-4, rtol=1e-4)
            ours.zero_grad()
        with torch.no_grad():
            ref(x)  # torch's running statistics for the same batch
        if track:
            torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL)
            torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)
    used = op_calls if ops else calls
    assert not (calls if ops else op_calls)
    assert len(used) == 2 and all(stride[1] == 1 for stride in used)  # read in place


def test_instancenorm_channels_last_double_backward():
    ours = normzoo.create("in", 6)
    ref = nn.InstanceNorm2d(6, affine=True)
    x = torch.randn(3, 6, 5, 4)
    assert_double_backward_close(ours, x.to(memory_format=torch.channels_last), ref, x)


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(3, 8, 5, 7), (2, 8, 3, 4, 5)], ids=str)
def test_group_spec_on_channels_last_equals_reference(groups, affine, shape):
    # GroupSpec (any group count) through zoo.c on channels_last: InstanceNorm's path
    # (groups=C); GroupNorm and LayerNorm keep torch's channels_last kernel, measured faster
    from normzoo.norms._row_map import row_map

    w = torch.rand(8) + 0.5 if affine else None
    b = torch.randn(8) if affine else None
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = torch.randn(shape) * 3 + 2
    xa = x.to(memory_format=fmt).requires_grad_()
    params32 = [t.clone().requires_grad_() for t in (w, b) if t is not None]
    ya = row_map(xa, rownorm_mod.GroupSpec(groups, 1e-5), *(params32 or [None, None]))
    assert ya.is_contiguous(memory_format=fmt)
    x64 = x.double().requires_grad_()
    params64 = [t.double().requires_grad_() for t in (w, b) if t is not None]
    y64 = normzoo.functional.group_norm(x64, groups, *(params64 or [None, None]), eps=1e-5)
    torch.testing.assert_close(ya, y64.float(), **TOL)
    g = torch.randn_like(x)
    got = torch.autograd.grad(ya, [xa, *params32], g)
    want = torch.autograd.grad(y64, [x64, *params64], g.double())
    assert got[0].is_contiguous(memory_format=fmt)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("groups", [1, 2])
def test_group_spec_double_backward_and_large_means(groups):
    from normzoo.norms._row_map import row_map

    spec_norm = lambda t: row_map(t, rownorm_mod.GroupSpec(groups, 1e-5), None, None)
    ref = nn.GroupNorm(groups, 8, affine=False)
    x = torch.randn(3, 8, 5, 4)
    assert_double_backward_close(spec_norm, x.to(memory_format=torch.channels_last), ref, x)
    # the group variance combines the channels' without cancellation (mean 1e4, std 0.05)
    big = (1e4 + 0.05 * torch.randn(4, 8, 16, 16)).to(memory_format=torch.channels_last)
    y = spec_norm(big).contiguous().reshape(4, groups, -1)
    torch.testing.assert_close(y.std(dim=2), torch.ones(4, groups), atol=1e-2, rtol=0)


# -- integration -----------------------------------------------------------------------------
_DDP_CHILD = """
import os, sys, torch, torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
import normzoo
from normzoo.norms import batch
batch.NATIVE_MIN_NUMEL = batch.NATIVE_MIN_NUMEL_CL = 0  # the native kernels, however small
batch.NATIVE_MIN_SPATIAL = 1
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
torch.manual_seed(0)
# no ReLU after the norm: where BN's output is within rounding of 0 the two BNs can land on
# either side of the kink, and the conv's gradient then differs by a whole term (a flaky test)
model = nn.Sequential(nn.Conv2d(3, 6, 3), normzoo.create("bn", 6))
ref = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6))
ref.load_state_dict(model.state_dict())
ddp = DistributedDataParallel(model)
x = torch.randn(4, 3, 8, 8)
g = torch.randn(4, 6, 6, 6)
ddp(x).backward(g)
ref(x).backward(g)
torch.testing.assert_close(model[0].weight.grad, ref[0].weight.grad, atol=1e-5, rtol=1e-5)
torch.testing.assert_close(model[1].running_var, ref[1].running_var, atol=1e-5, rtol=1e-5)
print("ok", flush=True)
# No teardown: destroying a gloo group that DDP used can deadlock inside torch (the group's
# worker thread waits for the GIL, which the destructor holds while it joins that thread).
os._exit(0)
"""


def test_under_ddp_single_process(tmp_path):
    """normzoo's BatchNorm (native kernels) inside DistributedDataParallel on a one-process
    gloo group: the gradients and running statistics of torch's. In a child process with a
    time limit: a gloo group's teardown once hung the whole test run here (a deadlock in
    torch, at the group's destruction, not in normzoo)."""
    out = subprocess.run(
        [sys.executable, "-c", _DDP_CHILD, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bn", "ln", "in", "gn"])
def test_inside_torch_compile_of_a_whole_model(name):
    torch._dynamo.reset()
    model = nn.Sequential(nn.Conv2d(3, 8, 3), normzoo.create(name, 8), nn.ReLU())
    ref = nn.Sequential(nn.Conv2d(3, 8, 3), normzoo.create(name, 8), nn.ReLU())
    ref.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 3, 10, 10)
    y, yr = compiled(x), ref(x)
    torch.testing.assert_close(y, yr, **TOL)
    g = torch.randn_like(y)
    y.backward(g)
    yr.backward(g)
    # inductor's own fused batch norm: float rounding differs a little more than eager's
    torch.testing.assert_close(model[0].weight.grad, ref[0].weight.grad, atol=1e-4, rtol=1e-4)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, **TOL, msg=key)


@pytest.mark.slow
def test_fuse_compiles_reference_math_with_autograd():
    # The recipe for the wider zoo: fuse a reference function, gradients included; one
    # kernel serves every shape and channel count, and Parameters keep their gradients.
    from normzoo import functional

    fused = _fused.fuse(functional.group_norm, min_numel=0)
    for c, groups in ((8, 4), (12, 4)):
        w = nn.Parameter(torch.rand(c) + 0.5)
        b = nn.Parameter(torch.rand(c))
        x = torch.randn(3, c, 5, 4, requires_grad=True)
        y = fused(x, groups, w, b, eps=1e-5)
        yr = functional.group_norm(x, groups, w, b, eps=1e-5)
        torch.testing.assert_close(y, yr, **TOL)
        g = torch.randn_like(y)
        grads = torch.autograd.grad(y, (x, w, b), g)
        grads_ref = torch.autograd.grad(yr, (x, w, b), g)
        for got, want in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(got, want, **TOL)
    assert fused.compiled_kinds() == 1


@pytest.mark.parametrize("name", [n for n in normzoo.available() if n != "syncbatchnorm"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_jit_trace_records_torch_ops_not_the_kernels(name, channels_last):
    """``torch.jit.trace`` cannot hold the native kernels' raw pointers (they failed with a
    ctypes error under tracing): a traced norm takes torch's operators and computes what the
    eager module computes, on inputs where eager takes the kernels."""
    layer = normzoo.create(name, 32, **small_batch_kwargs(name)).eval()
    x = torch.randn(8, 32, 16, 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():  # tracer warnings, and recent torch deprecates jit.trace
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(layer, x, check_trace=False)
    x2 = torch.randn_like(x)
    torch.testing.assert_close(traced(x2), layer(x2), **TOL)
