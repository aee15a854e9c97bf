"""Bad input: clear errors that name the problem and the expected value, before any state change."""

import pytest
import torch

import normzoo

ZOO = ["rms", "brn", "gbn", "frozenbn", "syncbn", "sn", "frn", "evonorm_b0", "evonorm_s0"]
WITH_MOMENTUM = ["brn", "gbn", "syncbn", "sn", "evonorm_b0"]


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _unchanged(module, snapshot):
    return all(torch.equal(v, snapshot[k]) for k, v in module.state_dict().items())


@pytest.mark.parametrize("name", ["bn", "ln", "in", "gn", "none", *ZOO])
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


@pytest.mark.parametrize("name", ["bn", "ln", "in", "gn", *ZOO])
@pytest.mark.parametrize(
    ("num_features", "error"),
    [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)],
)
def test_num_features_must_be_positive_int(name, num_features, error):
    with pytest.raises(error, match="num_features must be a positive int"):
        normzoo.create(name, num_features)


@pytest.mark.parametrize("name", ["bn", "ln", "in", "gn", *ZOO])
def test_eps_must_be_non_negative(name):
    with pytest.raises(ValueError, match=r"eps must be a float >= 0, got -0.1"):
        normzoo.create(name, 4, eps=-0.1)


@pytest.mark.parametrize("name", ["bn", "in", *WITH_MOMENTUM])
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


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"r_max": 0.5}, ValueError, r"r_max must be a float >= 1.*got 0.5"),
        ({"r_max": "3"}, TypeError, r"r_max must be a float >= 1.*str"),
        ({"d_max": -1.0}, ValueError, r"d_max must be a float >= 0.*got -1.0"),
        ({"warmup_steps": -1}, ValueError, r"warmup_steps must be an int >= 0, got -1"),
        ({"warmup_steps": 1.5}, TypeError, r"warmup_steps must be an int >= 0"),
        ({"warmup_steps": 10, "r_max_steps": 5}, ValueError, r"r_max_steps must be >= warmup"),
        ({"warmup_steps": 10, "d_max_steps": 5}, ValueError, r"d_max_steps must be >= warmup"),
    ],
)
def test_batchrenorm_limits_and_schedule(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        normzoo.create("brn", 4, **kwargs)


@pytest.mark.parametrize(("vbs", "error"), [(0, ValueError), (-2, ValueError), (2.0, TypeError)])
def test_ghostbatchnorm_virtual_batch_size_must_be_positive_int(vbs, error):
    with pytest.raises(error, match=r"virtual_batch_size must be a positive int"):
        normzoo.create("gbn", 4, virtual_batch_size=vbs)


def test_ghostbatchnorm_virtual_batch_larger_than_a_batch_not_a_multiple():
    layer = normzoo.create("gbn", 4, virtual_batch_size=8)
    before = _snapshot(layer)
    with pytest.raises(ValueError, match=r"virtual_batch_size=8 is larger than the batch \(N=6\)"):
        layer(torch.randn(6, 4, 3))
    with pytest.raises(ValueError, match=r"more than 1 value per channel in every virtual batch"):
        normzoo.create("gbn", 4, virtual_batch_size=2)(torch.randn(5, 4))
    assert _unchanged(layer, before)
    layer(torch.randn(16, 4, 3))  # a multiple: two virtual batches
    assert layer.num_batches_tracked.item() == 2
    layer.eval()
    layer(torch.randn(3, 4))  # eval: running statistics, any batch


def test_frozenbatchnorm_refuses_to_train_its_statistics():
    with pytest.raises(
        ValueError, match=r"cannot compute or train.*track_running_stats must be True"
    ):
        normzoo.create("frozenbn", 4, track_running_stats=False)
    with pytest.raises(TypeError, match=r"momentum.*accepts: eps, affine, track_running_stats"):
        normzoo.create("frozenbn", 4, momentum=0.1)


def test_switchablenorm_needs_spatial_dims_and_evonorm_s0_groups_divide():
    with pytest.raises(ValueError, match=r"rank 2"):
        normzoo.create("sn", 4)(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"num_groups=3 must be a positive divisor of .*=8"):
        normzoo.create("evonorm_s0", 8, num_groups=3)
