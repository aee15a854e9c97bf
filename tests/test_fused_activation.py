"""A norm that applies its ReLU itself (``Norm.fuse_activation``): the same values as the norm
followed by ``torch.relu``, to the bit where the native kernels fuse it, on every path."""

from __future__ import annotations

import functools

import pytest
import torch
from norm_testing import small_batch_kwargs
from torch import nn

import normzoo
from normzoo import _native
from normzoo.models import ConvNet2d
from normzoo.norms import _rownorm, batch, frozen_batch
from normzoo.norms.base import ACTIVATIONS, Norm

FUSING = ("batchnorm", "groupnorm", "layernorm", "instancenorm", "frozenbatchnorm")

needs_ops = pytest.mark.skipif(
    not (_native.native_enabled() and _native.load_ops()),
    reason="the C++ operator library could not be built here",
)


def _pair(name: str, c: int, **kwargs) -> tuple[Norm, Norm]:
    """A norm with the ReLU fused and the same norm (same state) without it."""
    torch.manual_seed(0)
    kwargs = {**small_batch_kwargs(name), **kwargs}
    fused = normzoo.create(name, c, activation="relu", **kwargs)
    plain = normzoo.create(name, c, **kwargs)
    with torch.no_grad():
        for p in fused.parameters():
            p.uniform_(-1.0, 1.5)  # negative weights and biases too: the mask depends on both
        if isinstance(fused, frozen_batch.FrozenBatchNorm):  # its affine and statistics
            for t in (fused.weight, fused.bias):
                if t is not None:
                    t.uniform_(-1.0, 1.5)
            fused.running_mean.normal_()
            fused.running_var.uniform_(0.5, 2.0)
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def _grads(module: nn.Module, x: torch.Tensor, g: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    params = [p for p in module.parameters() if p.requires_grad]
    return y, torch.autograd.grad(y, [x, *params], g)


def _assert_equal(a, b) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


# every norm but SyncBatchNorm, which needs a process group (tests/test_syncbatchnorm.py)
@pytest.mark.parametrize("name", [n for n in normzoo.available() if n != "syncbatchnorm"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_every_norm_with_relu_is_relu_of_the_norm(name, layout):
    """Output and every gradient equal ``relu(norm(x))``'s, bit for bit, for each norm; on
    (16, 32, 16, 16), where GroupNorm, LayerNorm and InstanceNorm run their native kernels."""
    fused, plain = _pair(name, 32)
    assert fused.activation == "relu" and plain.activation is None
    assert "activation='relu'" in repr(fused) and "activation" not in repr(plain)
    x = torch.randn(16, 32, 16, 16)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(16, 32, 16, 16)
    y, grads = _grads(fused, x, g)
    ref, ref_grads = _grads(nn.Sequential(plain, nn.ReLU()), x, g)
    _assert_equal(y, ref)
    for a, b in zip(grads, ref_grads, strict=True):
        _assert_equal(a, b)
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    for key, value in plain.state_dict().items():  # running statistics: the same updates
        _assert_equal(fused.state_dict()[key], value)


CONTIGUOUS_CASES = [
    ("groupnorm", (64, 32, 16, 16), {}),  # one channel per group (the default model's)
    ("groupnorm", (8, 64, 16, 16), {"num_groups": 8}),
    ("groupnorm", (40, 24, 5, 7), {"num_groups": 6}),  # odd lengths: the loops' tails
    ("groupnorm", (3, 16, 2000), {"num_groups": 4}),  # rows over 1024 values per channel
    ("layernorm", (32, 64, 8, 8), {}),
    ("instancenorm", (16, 32, 12, 12), {"track_running_stats": True}),
    ("groupnorm", (16, 32, 12, 12), {"num_groups": 8, "affine": False}),  # no w, b: pre = xhat
    ("batchnorm", (16, 32, 12, 12), {}),
    ("batchnorm", (4, 300, 6, 7), {"affine": False}),  # channel blocks, odd lengths
    ("batchnorm", (8, 16, 400), {"track_running_stats": False}),
    ("frozenbatchnorm", (16, 32, 16, 16), {}),
    ("frozenbatchnorm", (8, 24, 37, 19), {"affine": False}),  # odd lengths, no affine
]
CHANNELS_LAST_CASES = [
    ("groupnorm", (64, 32, 16, 16), {}),
    ("groupnorm", (40, 24, 5, 7), {"num_groups": 6}),  # 24 channels: a narrow tile and a tail
    ("groupnorm", (3, 20, 48, 48), {"num_groups": 5}),  # 3 samples on 2 threads: spread
    ("layernorm", (1, 32, 40, 40), {}),  # one sample, two super-blocks of positions
    ("layernorm", (32, 64, 8, 8), {}),
    ("instancenorm", (16, 32, 12, 12), {"track_running_stats": True}),
    ("layernorm", (16, 32, 12, 12), {"affine": False}),
    ("batchnorm", (16, 64, 16, 16), {}),
    ("batchnorm", (8, 300, 12, 12), {}),  # channel runs of 256 and a tail; tiles of 32, 8, rest
    ("batchnorm", (8, 6, 32, 32), {"affine": False}),  # few channels
    ("frozenbatchnorm", (16, 32, 16, 16), {}),
    ("frozenbatchnorm", (8, 21, 33, 29), {}),  # a channel count off the vector width
]


@needs_ops
@pytest.mark.parametrize(
    ("name", "shape", "kwargs", "layout"),
    [(*case, "contiguous") for case in CONTIGUOUS_CASES]
    + [(*case, "channels_last") for case in CHANNELS_LAST_CASES],
    ids=str,
)
def test_fused_kernels_match_the_unfused_path_bit_for_bit(name, shape, kwargs, layout):
    """The fused kernels' forward and backward (one node, no ReLU node: GroupNorm, LayerNorm
    and InstanceNorm through the C++ operator, BatchNorm through its autograd.Function) give
    exactly what the unfused kernels and torch.relu give, in both layouts, running statistics
    included; in training and without autograd."""
    fused, plain = _pair(name, shape[1], **kwargs)
    x, g = torch.randn(shape), torch.randn(shape)
    if layout == "channels_last":
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    if name == "batchnorm":
        assert batch.use_native_batch_stats(x, fused.weight)
    elif name == "frozenbatchnorm":
        assert frozen_batch.use_native_affine(
            x, fused.running_mean, fused.running_var, fused.weight, fused.bias
        )
    else:
        assert _rownorm.use_native_row_norm(x, fused.weight, getattr(fused, "num_groups", None))
    y, grads = _grads(fused, x, g)
    assert "Relu" not in type(y.grad_fn).__name__  # the norm's own node, the ReLU inside
    ref, ref_grads = _grads(nn.Sequential(plain, nn.ReLU()), x, g)
    _assert_equal(y, ref)
    for a, b in zip(grads, ref_grads, strict=True):
        _assert_equal(a, b)
    for key, value in plain.state_dict().items():
        _assert_equal(fused.state_dict()[key], value)
    assert (y == 0).any() and (y > 0).any()
    assert y.stride() == x.stride()
    fused.eval()
    plain.eval()
    with torch.no_grad():  # without autograd, fused too
        _assert_equal(fused(x), torch.relu(plain(x)))


@needs_ops
@pytest.mark.parametrize("name", ["groupnorm", "batchnorm", "frozenbatchnorm"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fused_relu_at_its_kink_and_with_nan(name, layout):
    """Where the norm's output is exactly 0 the gradient is 0 (as torch's ReLU gives: the
    mask is ``pre > 0``), and a NaN passes through as torch.relu passes it."""
    fused, plain = _pair(name, 32, **({"num_groups": 4} if name == "groupnorm" else {}))
    frozen = name == "frozenbatchnorm"
    with torch.no_grad():
        if frozen:  # channels 0-7: pre = a x, 0 exactly where x is (a is not 0)
            fused.running_mean[:8] = 0.0
        else:  # channels 0-7: pre = bias; bias 0 there: pre = 0 exactly
            fused.weight[:8] = 0.0
        fused.bias[:8] = 0.0
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(16, 32, 32, 32)
    if frozen:
        x[:, :8, ::2] = 0.0
    x[1, 9, 3, 4] = float("nan")  # GN: sample 1's group 1 all NaN; BN: channel 9 all NaN
    g = torch.randn_like(x)
    if layout == "channels_last":
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    y, grads = _grads(fused, x, g)
    ref, ref_grads = _grads(nn.Sequential(plain, nn.ReLU()), x, g)
    _assert_equal(y, ref)
    for a, b in zip(grads, ref_grads, strict=True):
        _assert_equal(a, b)
    nan = {"groupnorm": y[1, 8:16], "batchnorm": y[:, 9], "frozenbatchnorm": y[1, 9, 3, 4]}
    assert nan[name].isnan().all()
    kink = (
        (slice(None), slice(0, 8), slice(None, None, 2)) if frozen else (slice(None), slice(0, 8))
    )
    assert (y[kink] == 0).all()
    assert (grads[0][kink] == 0).all()  # the kink: no gradient through the ReLU there
    if frozen:  # elsewhere in those channels the gradient flows
        assert (grads[0][:, :8] != 0).any()


@needs_ops
@pytest.mark.parametrize("name", ["groupnorm", "batchnorm"])
def test_fused_relu_double_backward(name):
    """create_graph=True through the fused kernels: torch's norm and relu again,
    differentiated with a graph (so the bias's gradient goes through the mask too)."""
    fused, plain = _pair(name, 32, **({"num_groups": 8} if name == "groupnorm" else {}))
    x = torch.randn(16, 32, 16, 16, requires_grad=True)
    out = []
    for m in (fused, nn.Sequential(plain, nn.ReLU())):
        params = list(m.parameters())
        gx, gw, gb = torch.autograd.grad(m(x).pow(2).sum(), [x, *params], create_graph=True)
        second = torch.autograd.grad((gx.pow(3).sum() + gb.pow(2).sum()), [x, *params])
        out.append([t.detach() for t in (gx, gw, gb, *second)])
    for a, b in zip(out[0][:3], out[1][:3], strict=True):  # first derivatives
        # (both through torch's math under create_graph; BN's by two routes, rounding apart)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for a, b in zip(out[0][3:], out[1][3:], strict=True):  # second: float32 rounding apart
        torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-4)


@needs_ops
def test_fused_frozen_batchnorm_double_backward():
    """create_graph=True through FrozenBatchNorm's fused node: torch ops again (its only
    gradient is the input's; the ReLU's second derivative is 0)."""
    fused, plain = _pair("frozenbatchnorm", 32)
    x = torch.randn(16, 32, 16, 16, requires_grad=True)
    out = []
    for m in (fused, nn.Sequential(plain, nn.ReLU())):
        (gx,) = torch.autograd.grad(m(x).pow(3).sum(), [x], create_graph=True)
        (second,) = torch.autograd.grad(gx.pow(2).sum(), [x])
        out.append((gx.detach(), second))
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-5)


@needs_ops
def test_rows_over_the_scratch_limit_run_the_relu_after(monkeypatch):
    """Contiguous rows longer than FUSED_RELU_MAX_ROW (the fused backward's per-thread
    scratch row) take the kernels without the ReLU and torch.relu after: the same values."""
    monkeypatch.setattr(_rownorm, "FUSED_RELU_MAX_ROW", 8 * 16 * 16)  # one group of (8, 16, 16)
    fused, plain = _pair("groupnorm", 32, num_groups=4)
    for groups_shape, fuses in (((16, 32, 16, 16), True), ((16, 32, 16, 17), False)):
        x, g = torch.randn(groups_shape), torch.randn(groups_shape)
        y, grads = _grads(fused, x, g)
        assert ("Relu" not in type(y.grad_fn).__name__) is fuses
        ref, ref_grads = _grads(nn.Sequential(plain, nn.ReLU()), x, g)
        _assert_equal(y, ref)
        for a, b in zip(grads, ref_grads, strict=True):
            _assert_equal(a, b)


def _frozen_node(ops: bool, monkeypatch) -> None:
    """FrozenBatchNorm on the C++ operator (``ops``) or on its Python node; a skip where
    what that needs could not be built."""
    if not _native.available("zoo"):
        pytest.skip("the native kernels could not be built here")
    if ops and not (_native.native_enabled() and _native.load_ops()):
        pytest.skip("the C++ operator library could not be built here")
    monkeypatch.setattr(frozen_batch._native, "ops_available", lambda: ops)


@pytest.mark.parametrize("ops", [False, True])
def test_frozen_batchnorm_fuses_with_and_without_the_operator_library(ops, monkeypatch):
    """FrozenBatchNorm fuses the ReLU through its C++ operator or, without the operator
    library, its Python autograd.Function on the same kernels: the same values either way."""
    _frozen_node(ops, monkeypatch)
    fused, plain = _pair("frozenbatchnorm", 32)
    x, g = torch.randn(64, 32, 16, 16), torch.randn(64, 32, 16, 16)
    y, grads = _grads(fused, x, g)
    assert "Relu" not in type(y.grad_fn).__name__
    ref, ref_grads = _grads(nn.Sequential(plain, nn.ReLU()), x, g)
    _assert_equal(y, ref)
    for a, b in zip(grads, ref_grads, strict=True):
        _assert_equal(a, b)
    ref_bn = nn.BatchNorm2d(32).eval()
    ref_bn.load_state_dict(plain.state_dict(), strict=False)
    torch.testing.assert_close(y, torch.relu(ref_bn(x)))  # torch's inference BN, rounding apart


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("ops", [False, True])
def test_frozen_batchnorm_takes_an_expanded_output_gradient(ops, activation, monkeypatch):
    """``layer(x).sum().backward()`` hands the backward an expanded (stride 0) gradient: the
    kernels get it as a contiguous copy, in both the operator's and the Python node."""
    _frozen_node(ops, monkeypatch)
    fused, plain = _pair("frozenbatchnorm", 32)
    fused.fuse_activation(activation)
    ref = nn.BatchNorm2d(32).eval()
    ref.load_state_dict(plain.state_dict(), strict=False)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(64, 32, 16, 16).contiguous(memory_format=layout).requires_grad_()
        fused(x).sum().backward()
        xr = x.detach().clone().requires_grad_()
        y = ref(xr)
        (torch.relu(y) if activation else y).sum().backward()
        torch.testing.assert_close(x.grad, xr.grad)


@pytest.mark.parametrize("ops", [False, True])
def test_without_the_operator_library_the_relu_runs_after(ops, monkeypatch):
    """Without the C++ operators (the Python autograd.Function around the kernels) the ReLU
    runs after the norm: the same values."""
    if ops and not (_native.native_enabled() and _native.load_ops()):
        pytest.skip("the C++ operator library could not be built here")
    monkeypatch.setattr(_rownorm._native, "ops_available", lambda: ops)
    fused, plain = _pair("groupnorm", 32)
    x, g = torch.randn(64, 32, 32, 32), torch.randn(64, 32, 32, 32)
    assert _rownorm.use_native_row_norm(x, fused.weight, fused.num_groups)
    y, grads = _grads(fused, x, g)
    ref, ref_grads = _grads(nn.Sequential(plain, nn.ReLU()), x, g)
    _assert_equal(y, ref)
    for a, b in zip(grads, ref_grads, strict=True):
        _assert_equal(a, b)
    assert ("Relu" in type(y.grad_fn).__name__) is not ops


def test_fuse_activation_api():
    """``fuse_activation`` and ``create(activation=)``: validated first, shown in repr, not in
    the state dict, removable; only norms whose kernels fuse it say so."""
    layer = normzoo.create("gn", 8, num_groups=2)
    keys = set(layer.state_dict())
    assert layer.fuse_activation("relu") is layer and "activation='relu'" in repr(layer)
    assert set(layer.state_dict()) == keys
    assert layer.fuse_activation(None).activation is None and "activation" not in repr(layer)
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'.*\('relu',\)"):
        layer.fuse_activation("gelu")
    assert layer.activation is None
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        normzoo.create("gn", 8, activation="tanh")
    with pytest.raises(TypeError, match="needs a normzoo Norm.*BatchNorm2d"):
        normzoo.create(nn.BatchNorm2d, 8, activation="relu")
    assert normzoo.create("bn", 8, activation="relu").activation == "relu"
    assert ACTIVATIONS == ("relu",)
    assert {n for n in normzoo.available() if normzoo.get(n).fuses_activation} == set(FUSING)


def test_a_subclass_with_its_own_forward_applies_the_relu_after_it():
    """A subclass (a plugin's, say) of a fusing norm that computes its own ``_forward`` is not
    asked to fuse: the ReLU runs after its output."""

    class Doubled(normzoo.norms.GroupNorm):
        def _forward(self, x):
            return 2 * super()._forward(x)

    assert normzoo.norms.GroupNorm.fuses_activation and not Doubled.fuses_activation
    layer = Doubled(16, 4).fuse_activation("relu")
    x = torch.randn(8, 16, 16, 16)
    torch.testing.assert_close(layer(x), torch.relu(2 * normzoo.create("gn", 16, num_groups=4)(x)))


def test_convert_carries_the_activation():
    """Converting a layer with a fused ReLU keeps the ReLU (or refuses, changing nothing)."""
    model = ConvNet2d((3, 16, 16), 10, norm="gn", fuse_activation=True)
    x = torch.randn(4, 3, 16, 16)
    before = model(x)
    _, report = normzoo.convert(model, "ln")
    assert all(
        isinstance(m, normzoo.norms.LayerNorm) for m in model.modules() if isinstance(m, Norm)
    )
    assert {m.activation for m in model.modules() if isinstance(m, Norm)} == {"relu"}
    assert all("activation" in r.carried for r in report.replacements)
    feats = model.features[:3](x)  # conv, LayerNorm with the ReLU, Identity
    assert (feats >= 0).all() and (feats == 0).any()
    normzoo.revert(model, report)
    torch.testing.assert_close(model(x), before)
    with pytest.raises(ValueError, match="applies no activation"):
        normzoo.convert(model, functools.partial(nn.GroupNorm, 4))
    assert all(
        isinstance(m, normzoo.norms.GroupNorm) for m in model.modules() if isinstance(m, Norm)
    )


def test_convnet_fuse_activation_is_the_same_network():
    """ConvNet2d(fuse_activation=True): the unfused model's state dict loads into it, and it
    computes the same function with the same gradients; an Identity holds each ReLU's place."""
    fused = ConvNet2d((3, 16, 16), 10, norm="gn", fuse_activation=True)
    plain = ConvNet2d((3, 16, 16), 10, norm="gn")
    fused.load_state_dict(plain.state_dict())
    assert [type(m) for m in fused.features] == [
        nn.Identity if isinstance(m, nn.ReLU) else type(m) for m in plain.features
    ]
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(fused(x), plain(x), rtol=0, atol=0)
    fused(x).sum().backward()
    plain(x).sum().backward()
    for (name, a), b in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="fuse_activation needs a normzoo norm followed by"):
        ConvNet2d((3, 16, 16), 10, norm="gn", norm_position="after_act", fuse_activation=True)
    with pytest.raises(ValueError, match="got BatchNorm2d"):
        ConvNet2d((3, 16, 16), 10, norm=nn.BatchNorm2d, fuse_activation=True)
