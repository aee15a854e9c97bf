"""Bad input: clear errors that name the problem and the expected value, before any state change."""

import pytest
import torch

import normzoo


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _unchanged(module, snapshot):
    return all(torch.equal(v, snapshot[k]) for k, v in module.state_dict().items())


@pytest.mark.parametrize("name", ["bn", "ln", "in", "gn", "none"])
@pytest.mark.parametrize(
    ("x", "error", "pattern"),
    [
        (torch.randn(4, 5, 3, 3), ValueError, r"expects 8 channels.*got 5"),
        (torch.randn(8), ValueError, r"rank 1"),
        (torch.randn(2, 8, 2, 2, 2, 2), ValueError, r"rank 6"),
        (torch.ones(4, 8, 3, 3, dtype=torch.long), TypeError, r"floating-point.*torch.int64"),
        (torch.ones(4, 8, 3, 3, dtype=torch.bool), TypeError, r"floating-point.*torch.bool"),
        ([1.0, 2.0], TypeError, r"torch.Tensor"),
    ],
)
def test_bad_inputs_raise_before_state_changes(name, x, error, pattern):
    kwargs = {"track_running_stats": True} if name == "in" else {}
    layer = normzoo.create(name, 8, **kwargs)
    before = _snapshot(layer)
    with pytest.raises(error, match=pattern):
        layer(x)
    assert _unchanged(layer, before)


def test_instancenorm_needs_spatial_positions():
    layer = normzoo.create("in", 8, track_running_stats=True)
    with pytest.raises(ValueError, match="rank 2"):
        layer(torch.randn(4, 8))
    with pytest.raises(ValueError, match="more than 1 spatial position"):
        layer(torch.randn(4, 8, 1, 1))
    assert layer.num_batches_tracked.item() == 0


def test_channels_last_layernorm_checks_last_dim():
    with pytest.raises(ValueError, match=r"8 channels.*last dim, got 5"):
        normzoo.create("ln", 8, channels_last=True)(torch.randn(3, 5))


@pytest.mark.parametrize("name", ["bn", "ln", "in", "gn"])
@pytest.mark.parametrize(
    ("num_features", "error"),
    [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)],
)
def test_num_features_must_be_positive_int(name, num_features, error):
    with pytest.raises(error, match="num_features must be a positive int"):
        normzoo.create(name, num_features)


@pytest.mark.parametrize("name", ["bn", "ln", "in", "gn"])
def test_eps_must_be_non_negative(name):
    with pytest.raises(ValueError, match=r"eps must be a float >= 0, got -0.1"):
        normzoo.create(name, 4, eps=-0.1)


@pytest.mark.parametrize("name", ["bn", "in"])
@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_momentum_must_be_in_unit_interval(name, momentum):
    with pytest.raises(ValueError, match=r"momentum must be a float in \[0, 1\]"):
        normzoo.create(name, 4, momentum=momentum)


def test_groupnorm_groups_must_divide_channels():
    with pytest.raises(ValueError, match=r"num_groups=5 must be a positive divisor of .*=64"):
        normzoo.create("gn", 64, num_groups=5)
    with pytest.raises(ValueError, match=r"group_size=3"):
        normzoo.create("gn", 64, group_size=3)
    with pytest.raises(ValueError, match="not both"):
        normzoo.create("gn", 64, num_groups=4, group_size=16)


def test_unknown_impl():
    with pytest.raises(ValueError, match=r"impl must be one of \('fast', 'reference'\)"):
        normzoo.create("bn", 4, impl="cuda")
