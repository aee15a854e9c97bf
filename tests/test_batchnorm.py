"""BatchNorm: exactly torch.nn.BatchNorm1d/2d/3d, and the study notebook's numbers."""

import copy

import pytest
import torch
from norm_testing import TOL, assert_same_state
from torch import nn

import normzoo
from normzoo import functional
from normzoo.norms import BatchNorm

TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
SHAPES = [(8, 3), (4, 3, 7), (4, 3, 5, 6), (2, 3, 4, 3, 5)]
IMPLS = ["fast", "reference"]


def _pair(rank, impl, **kwargs):
    ours = BatchNorm(3, impl=impl, **kwargs)
    ref = TORCH_BN[rank](3, **kwargs)
    with torch.no_grad():
        if ref.affine:
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("momentum", [0.1, None, 0.7])
def test_training_steps_match_torch(shape, impl, momentum):
    ours, ref = _pair(len(shape), impl, momentum=momentum)
    for step in range(4):
        x = torch.randn(shape) * (step + 1) + step
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        torch.testing.assert_close(ya, yb, **TOL)
        g = torch.randn(shape)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, **TOL)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **TOL)
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, **TOL)
        assert_same_state(ours, ref)
    assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 4
    ours.eval()
    ref.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), ref(x), **TOL)
    assert_same_state(ours, ref)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("affine", [True, False])
def test_no_running_stats_uses_batch_stats_in_eval(impl, affine):
    ours, ref = _pair(4, impl, track_running_stats=False, affine=affine)
    assert ours.running_mean is None and ours.num_batches_tracked is None
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.eval()
    ref.eval()
    x = torch.randn(4, 3, 5, 5) * 3 + 2
    torch.testing.assert_close(ours(x), ref(x), **TOL)
    y = ours(x)
    expected_mean = ours.bias.detach() if affine else torch.zeros(3)
    torch.testing.assert_close(y.mean((0, 2, 3)), expected_mean, atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_mode_follows_module_training_not_grad_mode(impl):
    # The study notebook chose the mode from torch.is_grad_enabled(); we follow .training.
    bn = BatchNorm(3, impl=impl)
    x = torch.randn(16, 3) * 4 + 10
    with torch.no_grad():
        y = bn(x)  # still training: batch statistics, running stats updated
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    assert bn.num_batches_tracked.item() == 1
    bn.eval()
    y = bn(x)  # grad enabled but eval: running statistics, no update
    expected = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(y, expected)
    assert bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_running_var_uses_unbiased_variance(impl):
    bn = BatchNorm(1, momentum=1.0, impl=impl)
    x = torch.tensor([[1.0], [2.0], [3.0], [6.0]])
    bn(x)
    assert bn.running_var.item() == pytest.approx(x.var(unbiased=True).item())
    assert bn.running_var.item() != pytest.approx(x.var(unbiased=False).item())


@pytest.mark.parametrize("impl", IMPLS)
def test_study_notebook_numbers(impl):
    x = torch.arange(27.0).reshape(1, 3, 3, 3)
    bn = normzoo.create("bn", 3, impl=impl)
    y = bn(x)
    torch.testing.assert_close(
        y[0, 0, 0], torch.tensor([-1.5492, -1.1619, -0.7746]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(bn.running_mean, torch.tensor([0.4, 1.3, 2.2]))
    torch.testing.assert_close(bn.running_var, torch.tensor([1.65, 1.65, 1.65]))


@pytest.mark.parametrize("impl", IMPLS)
def test_numerically_stable_variance_float32(impl):
    x = 1e4 + 0.05 * torch.randn(64, 4, 8, 8)
    y = BatchNorm(4, impl=impl)(x)
    std = y.transpose(0, 1).reshape(4, -1).std(dim=1)
    torch.testing.assert_close(std, torch.ones(4), atol=1e-2, rtol=0)


def test_functional_is_pure_and_two_pass():
    x = 1e4 + 0.05 * torch.randn(128, 2)
    rm, rv = torch.zeros(2), torch.ones(2)
    y, new_rm, _ = functional.batch_norm(x, rm, rv, training=True)
    assert rm.eq(0).all() and rv.eq(1).all()  # inputs untouched
    torch.testing.assert_close(y.std(0), torch.ones(2), atol=1e-2, rtol=0)
    torch.testing.assert_close(new_rm, 0.1 * x.mean(0))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_state_dict_round_trips_with_torch(shape, impl):
    ours, ref = _pair(len(shape), impl)
    for _ in range(3):
        ours(torch.randn(shape))
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref2 = TORCH_BN[len(shape)](3)
    ref2.load_state_dict(ours.state_dict())  # normzoo -> torch
    assert_same_state(ours, ref2)
    ours2 = BatchNorm(3, impl=impl)
    ours2.load_state_dict(ref2.state_dict())  # torch -> normzoo
    assert_same_state(ours2, ref2)


def test_loads_old_checkpoint_without_num_batches_tracked():
    ref = nn.BatchNorm2d(3)
    ref(torch.randn(4, 3, 2, 2))
    state = ref.state_dict()
    del state["num_batches_tracked"]
    for metadata_version in (None, 1, 2):
        old = copy.copy(state)
        old._metadata = {"": {"version": metadata_version}}  # type: ignore[attr-defined]
        bn = BatchNorm(3)
        bn.load_state_dict(old)
        torch.testing.assert_close(bn.running_mean, ref.running_mean)
        assert bn.num_batches_tracked.item() == 0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_keeps_float32_statistics(dtype, impl):
    bn = BatchNorm(3, impl=impl)
    x = torch.randn(8, 3, 4, 4).to(dtype)
    y = bn(x)
    assert y.dtype == dtype
    assert bn.running_mean.dtype == bn.running_var.dtype == torch.float32
    ref = nn.BatchNorm2d(3)
    yr = ref(x.float())
    torch.testing.assert_close(y.float(), yr, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(bn.running_mean, ref.running_mean, atol=1e-2, rtol=1e-2)


def test_one_value_per_channel_in_training_is_an_error_before_any_update():
    bn = BatchNorm(4)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(torch.randn(1, 4))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(torch.randn(1, 4, 1, 1))
    assert bn.num_batches_tracked.item() == 0
    assert bn.running_mean.eq(0).all()
    bn.eval()
    bn(torch.randn(1, 4))  # eval uses running statistics: fine


def test_repr_is_informative():
    text = repr(normzoo.create("bn", 16, momentum=None))
    assert "16" in text and "momentum=None" in text and "track_running_stats=True" in text
