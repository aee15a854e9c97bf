"""LayerNorm, InstanceNorm, GroupNorm: parity with torch.nn, identities, both paths agree."""

import pytest
import torch
from norm_testing import TOL, check_fwd_bwd, randomize_affine
from torch import nn

import normzoo
from normzoo import functional
from normzoo.norms import GroupNorm, InstanceNorm, LayerNorm

IMPLS = ["fast", "reference"]
CONV_SHAPES = [(4, 6), (4, 6, 9), (3, 6, 5, 4), (2, 6, 3, 4, 5)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_layernorm_channels_first_is_groupnorm_1(shape, impl):
    ours, ref = LayerNorm(6, impl=impl), nn.GroupNorm(1, 6)
    randomize_affine(ours, ref)
    check_fwd_bwd(ours, ref, torch.randn(shape) * 3 + 1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(6,), (5, 6), (2, 7, 6), (2, 3, 4, 6)], ids=str)
def test_layernorm_channels_last_is_torch_layernorm(shape, impl):
    ours, ref = LayerNorm(6, channels_last=True, impl=impl), nn.LayerNorm(6)
    randomize_affine(ours, ref)
    check_fwd_bwd(ours, ref, torch.randn(shape) * 2 - 1)
    assert ours.reduces_over == ("channel",)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("groups", [1, 2, 3, 6])
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_groupnorm_matches_torch(shape, groups, impl):
    ours, ref = GroupNorm(6, groups, impl=impl), nn.GroupNorm(groups, 6)
    randomize_affine(ours, ref)
    # One value per group normalizes rounding noise by 1/sqrt(eps): compare loosely there.
    degenerate = len(shape) == 2 and groups == 6
    tol = {"atol": 1e-3, "rtol": 1e-3} if degenerate else TOL
    check_fwd_bwd(ours, ref, torch.randn(shape) * 2 + 3, tol)


TORCH_IN = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", CONV_SHAPES[1:], ids=str)
def test_instancenorm_matches_torch(shape, affine, impl):
    ours = InstanceNorm(6, affine=affine, impl=impl)
    ref = TORCH_IN[len(shape)](6, affine=affine)
    if affine:
        randomize_affine(ours, ref)
    check_fwd_bwd(ours, ref, torch.randn(shape) * 2 + 3)
    ours.eval()
    ref.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), ref(x), **TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", CONV_SHAPES[1:], ids=str)
def test_instancenorm_running_stats_match_torch(shape, impl):
    ours = InstanceNorm(6, affine=True, track_running_stats=True, impl=impl)
    ref = TORCH_IN[len(shape)](6, affine=True, track_running_stats=True)
    randomize_affine(ours, ref)
    for step in range(3):
        check_fwd_bwd(ours, ref, torch.randn(shape) * (step + 1) + step)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL)
        torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.eval()
    ref.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), ref(x), **TOL)


def test_instancenorm_cumulative_momentum_averages_batches():
    m = InstanceNorm(2, momentum=None, track_running_stats=True)
    batches = [torch.randn(3, 2, 10) * (i + 1) + i for i in range(3)]
    for x in batches:
        m(x)
    means = torch.stack([x.mean(2).mean(0) for x in batches])
    torch.testing.assert_close(m.running_mean, means.mean(0))
    assert m.num_batches_tracked.item() == 3


@pytest.mark.parametrize("shape", CONV_SHAPES[1:], ids=str)
def test_groupnorm_identities(shape):
    x = torch.randn(shape)
    torch.testing.assert_close(GroupNorm(6, 1)(x), LayerNorm(6)(x))
    torch.testing.assert_close(GroupNorm(6, 6)(x), InstanceNorm(6)(x))
    torch.testing.assert_close(functional.group_norm(x, 1), functional.layer_norm(x), **TOL)
    torch.testing.assert_close(functional.group_norm(x, 6), functional.instance_norm(x)[0], **TOL)


@pytest.mark.parametrize(
    ("channels", "kwargs", "groups"),
    [
        (64, {}, 32),
        (48, {}, 24),
        (6, {}, 6),
        (100, {}, 25),
        (37, {}, 1),
        (64, {"num_groups": 8}, 8),
        (64, {"group_size": 16}, 4),
    ],
)
def test_groupnorm_group_resolution(channels, kwargs, groups):
    gn = normzoo.create("gn", channels, **kwargs)
    assert gn.num_groups == groups
    assert f"num_groups={groups}" in repr(gn)


def test_known_answer_groupnorm_from_definition():
    # Two groups of two channels; each group of a sample is [0, 1, 2, 3] or [10, 20, 30, 40].
    x = torch.tensor([[[0.0], [1.0], [2.0], [3.0]], [[10.0], [20.0], [30.0], [40.0]]])
    x = x.reshape(1, 4, 2)  # (N=1, C=4, L=2): group 0 = channels 0,1; group 1 = channels 2,3
    y = GroupNorm(4, 2, eps=0.0)(x)
    for g in range(2):
        vals = x[0, 2 * g : 2 * g + 2].flatten()
        expected = (vals - vals.mean()) / vals.var(unbiased=False).sqrt()
        torch.testing.assert_close(y[0, 2 * g : 2 * g + 2].flatten(), expected)


@pytest.mark.parametrize("name", ["ln", "in", "gn"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_output_dtype(name, dtype):
    for impl in IMPLS:
        m = normzoo.create(name, 6, impl=impl)
        x = torch.randn(2, 6, 4, 4)
        y = m(x.to(dtype))
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), m(x), atol=5e-2, rtol=5e-2)
        assert m.weight.dtype == torch.float32


def _norms_for_parity():
    return [
        ("bn", {}),
        ("bn", {"track_running_stats": False}),
        ("ln", {}),
        ("ln", {"channels_last": True}),
        ("in", {}),
        ("in", {"track_running_stats": True}),
        ("gn", {"num_groups": 3}),
        ("none", {"affine": True}),
    ]


@pytest.mark.parametrize(("name", "kwargs"), _norms_for_parity(), ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_fast_and_reference_paths_agree(name, kwargs, training):
    fast = normzoo.create(name, 6, **kwargs)
    ref = normzoo.create(name, 6, impl="reference", **kwargs)
    with torch.no_grad():
        for m in (fast, ref):
            if m.weight is not None:
                m.weight.copy_(torch.linspace(0.5, 2, 6))
                m.bias.copy_(torch.linspace(-1, 1, 6))
    ref.load_state_dict(fast.state_dict())
    fast.train(training)
    ref.train(training)
    shape = (4, 5, 6) if kwargs.get("channels_last") else (4, 6, 5, 3)
    for _ in range(2):
        check_fwd_bwd(ref, fast, torch.randn(shape) * 2 + 1)
    for key, value in fast.state_dict().items():
        torch.testing.assert_close(ref.state_dict()[key], value, **TOL)


def _double(t):
    return t.double().requires_grad_()


def test_gradcheck_reference_functions_float64():
    x = _double(torch.randn(3, 4, 3, 2))
    w, b = _double(torch.rand(4) + 0.5), _double(torch.randn(4))
    rm, rv = torch.zeros(4, dtype=torch.double), torch.ones(4, dtype=torch.double)
    checks = {
        "batch_norm/train": lambda x, w, b: functional.batch_norm(x, rm, rv, w, b, training=True)[
            0
        ],
        "batch_norm/eval": lambda x, w, b: functional.batch_norm(
            x, rm + 0.3, rv + 0.5, w, b, training=False
        )[0],
        "layer_norm": lambda x, w, b: functional.layer_norm(x, w, b),
        "instance_norm": lambda x, w, b: functional.instance_norm(x, None, None, w, b)[0],
        "group_norm": lambda x, w, b: functional.group_norm(x, 2, w, b),
    }
    for name, fn in checks.items():
        assert torch.autograd.gradcheck(fn, (x, w, b)), name
    tokens = _double(torch.randn(5, 4))
    assert torch.autograd.gradcheck(
        lambda t, w, b: functional.layer_norm(t, w, b, channels_last=True), (tokens, w, b)
    )


@pytest.mark.parametrize("name", ["bn", "ln", "in", "gn"])
def test_gradcheck_reference_modules_float64(name):
    m = normzoo.create(name, 4, impl="reference").double()
    x = _double(torch.randn(3, 4, 5))
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("name", ["gn", "ln", "in"])
def test_group_norm_kernel_off_the_cpu_keeps_layout_and_casts_parameters(name):
    """Off the CPU, torch's group-norm kernel wants the parameters in the input's dtype and
    returns NCHW for channels_last input (CUDA; the meta device behaves alike): the layer
    casts its float32 parameters for the call and gives the output the input's layout."""
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        """Records the parameters' dtypes of torch.group_norm calls. (Replacing
        torch.group_norm itself made a later torch.compile in the same process refuse to
        trace it: dynamo's table of torch functions was built while the stand-in was there.)"""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.group_norm:
                seen.append((args[2].dtype, args[3].dtype))
            return func(*args, **(kwargs or {}))

    layer = normzoo.create(name, 8).to("meta")
    for fmt, dims in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        x = torch.empty(2, 8, *(4,) * (dims - 2), device="meta", dtype=torch.bfloat16)
        with Spy():
            y = layer(x.to(memory_format=fmt))
            assert layer(x).is_contiguous()
        assert y.dtype == torch.bfloat16
        assert y.is_contiguous(memory_format=fmt)
    assert seen and all(dtypes == (torch.bfloat16, torch.bfloat16) for dtypes in seen)
    assert layer.weight.dtype == torch.float32


def test_token_layernorm_off_the_cpu_casts_parameters(monkeypatch):
    """Token LayerNorm (channels_last=True) off the CPU: torch's CUDA layer norm refuses
    float32 parameters with bfloat16 input, so the layer casts them for the call."""
    seen = []
    layer_norm = torch.nn.functional.layer_norm

    def spy(x, shape, weight, bias, eps):
        seen.append((weight.dtype, bias.dtype))
        return layer_norm(x, shape, weight, bias, eps)

    monkeypatch.setattr(torch.nn.functional, "layer_norm", spy)
    layer = LayerNorm(8, channels_last=True).to("meta")
    y = layer(torch.empty(5, 8, device="meta", dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert seen == [(torch.bfloat16, torch.bfloat16)]
    LayerNorm(8, channels_last=True)(torch.randn(5, 8, dtype=torch.bfloat16))  # CPU: as is
    assert seen[-1] == (torch.float32, torch.float32)


@pytest.mark.parametrize("native", [True, False], ids=["native", "no-native"])
@pytest.mark.parametrize(
    "shape", [(4, 8, 6, 6), (2, 8, 4, 6, 3), (8, 32, 12, 12)], ids=["small", "3d", "36k"]
)
@pytest.mark.parametrize(
    ("name", "kwargs"), [("gn", {"num_groups": 4}), ("gn", {}), ("ln", {}), ("in", {})]
)
def test_channels_last_cpu_stays_accurate_at_large_mean(name, kwargs, shape, native, monkeypatch):
    """torch's channels_last CPU group-norm kernel takes the variance as E[x^2] - E[x]^2:
    at mean 1000 and std 1 its outputs were off by 0.1-1 relative and, with one channel per
    group, its input gradients by 1e6 (torch 2.13; its contiguous kernel: 2e-5). Every path
    of GroupNorm, LayerNorm and InstanceNorm on such input (the native operator at every
    size; without native kernels, torch's contiguous kernel on a copy) stays within
    float32's reach of the float64 math, double backward included, and keeps the layout."""
    if not native:
        monkeypatch.setenv("NORMZOO_NATIVE", "0")
    torch.manual_seed(0)
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    layer = normzoo.create(name, shape[1], **kwargs)
    randomize_affine(layer, channels=shape[1])
    exact = normzoo.create(name, shape[1], impl="reference", **kwargs).double()
    exact.load_state_dict(layer.state_dict())
    x = (1000 + torch.randn(shape)).contiguous(memory_format=fmt).requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    y, y64 = layer(x), exact(x64)
    assert y.is_contiguous(memory_format=fmt)
    dy = torch.randn(shape, dtype=torch.float64)
    (dx,) = torch.autograd.grad(y, x, dy.float(), create_graph=True)
    (dx64,) = torch.autograd.grad(y64, x64, dy, create_graph=True)
    (ddx,) = torch.autograd.grad(dx, x, dy.float())  # double backward
    (ddx64,) = torch.autograd.grad(dx64, x64, dy)

    def close(a, b, scale=1e-3):
        err = (a.double() - b).abs().max() / b.abs().max()
        assert err < scale, f"relative error {err:.1e}"

    close(y, y64)
    close(dx, dx64)
    close(ddx, ddx64, 1e-2)  # second derivatives: x - mean rounds once more
