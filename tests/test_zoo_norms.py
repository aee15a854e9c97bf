"""The wider zoo: each norm from its paper's definition, its identities, and both paths agreeing."""

import math

import pytest
import torch
from norm_testing import TOL, check_fwd_bwd, randomize_affine
from torch import nn

import normzoo
from normzoo import functional
from normzoo.norms import (
    BatchNorm,
    BatchRenorm,
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm,
    FrozenBatchNorm,
    GhostBatchNorm,
    RMSNorm,
    SwitchableNorm,
)

IMPLS = ["fast", "reference"]


def _assert_same_stats(ours, ref):
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, key), getattr(ref, key), **TOL, msg=key)


# -- RMSNorm ---------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(6,), (5, 6), (2, 7, 6), (2, 3, 4, 6)], ids=str)
def test_rmsnorm_channels_last_is_torch_rmsnorm(shape, impl):
    ours, ref = RMSNorm(6, channels_last=True, impl=impl), nn.RMSNorm(6, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(6) + 0.5)
    ours.weight.data.copy_(ref.weight.data)
    check_fwd_bwd(ours, ref, torch.randn(shape) * 3 + 1)
    assert ours.reduces_over == ("channel",)


def test_rmsnorm_matches_torch_default_eps():
    eps = torch.finfo(torch.float32).eps  # nn.RMSNorm(C) with eps=None
    x = torch.randn(4, 6)
    torch.testing.assert_close(RMSNorm(6, eps=eps, channels_last=True)(x), nn.RMSNorm(6)(x))


@pytest.mark.parametrize("impl", IMPLS)
def test_rmsnorm_channels_first_known_answer(impl):
    x = torch.tensor([[[3.0, -4.0], [0.0, 0.0]]])  # one sample: mean square = 25 / 4
    layer = RMSNorm(2, eps=0.0, impl=impl)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([2.0, 1.0]))
        layer.bias.copy_(torch.tensor([0.5, -1.0]))
    expected = torch.tensor([[[3.0 / 2.5 * 2 + 0.5, -4.0 / 2.5 * 2 + 0.5], [-1.0, -1.0]]])
    torch.testing.assert_close(layer(x), expected)
    x = torch.randn(3, 6, 4, 5) + 2  # no centering: the mean survives
    y = RMSNorm(6, impl=impl)(x)
    torch.testing.assert_close(y.pow(2).mean((1, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)
    assert y.mean() > 0.5


# -- Batch Renormalization -------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchrenorm_with_rmax_1_dmax_0_is_batchnorm_in_training(impl, momentum):
    brn = BatchRenorm(6, momentum=momentum, r_max=1.0, d_max=0.0, warmup_steps=0, impl=impl)
    bn = nn.BatchNorm2d(6, momentum=momentum)
    randomize_affine(brn, bn)
    for step in range(4):
        check_fwd_bwd(brn, bn, torch.randn(5, 6, 3, 4) * (step + 1) + step)
        _assert_same_stats(brn, bn)
    brn.eval()
    bn.eval()
    x = torch.randn(5, 6, 3, 4)
    torch.testing.assert_close(brn(x), bn(x), **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_batchrenorm_eval_is_batchnorm_with_running_statistics(impl):
    bn = nn.BatchNorm2d(6)
    for _ in range(3):
        bn(torch.randn(8, 6, 2, 2) * 2 + 1)
    brn = BatchRenorm(6, impl=impl)
    brn.load_state_dict(bn.state_dict())  # BN checkpoints load: same keys
    brn.eval()
    bn.eval()
    x = torch.randn(4, 6, 3, 3)
    torch.testing.assert_close(brn(x), bn(x), **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_batchrenorm_known_answer_with_clipped_r_and_d(impl):
    brn = BatchRenorm(1, eps=0.0, r_max=2.0, d_max=0.5, warmup_steps=0, r_max_steps=0,
                      d_max_steps=0, impl=impl)  # fmt: skip
    with torch.no_grad():
        brn.running_mean.fill_(10.0)  # far from the batch: d clipped to -0.5
        brn.running_var.fill_(0.25)  # sigma = 0.5; batch sigma = 2: r = 4, clipped to 2
    x = torch.tensor([[1.0], [-1.0], [3.0], [-3.0]])  # mean 0, biased var 5
    sigma_b = math.sqrt(5.0)
    r = min(sigma_b / 0.5, 2.0)
    expected = x / sigma_b * r - 0.5
    torch.testing.assert_close(brn(x), expected)
    assert brn.running_mean.item() == pytest.approx(0.9 * 10.0)


def test_batchrenorm_r_and_d_are_constants_to_backprop():
    # With r, d constant, d(y)/d(x) is BN's gradient scaled by r: the ratio of the two gradients
    # of sum(y * g) is exactly r (here clipped to r_max) per channel.
    x = torch.randn(16, 1) * 3
    g = torch.randn(16, 1)
    brn = BatchRenorm(1, r_max=1.5, d_max=1.0, warmup_steps=0, r_max_steps=0, d_max_steps=0)
    bn = BatchNorm(1)
    with torch.no_grad():
        brn.running_var.fill_(0.01)  # batch std ~3 >> 0.1: r clipped to 1.5
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    (brn(xa) * g).sum().backward()
    (bn(xb) * g).sum().backward()
    torch.testing.assert_close(xa.grad, 1.5 * xb.grad, **TOL)


def test_batchrenorm_warmup_schedule():
    brn = BatchRenorm(2, r_max=3.0, d_max=5.0, warmup_steps=2, r_max_steps=6, d_max_steps=4)
    limits = []
    for _ in range(8):
        limits.append(brn.current_limits())
        brn(torch.randn(4, 2))
    expected = [(1, 0), (1, 0), (1, 0), (1.5, 2.5), (2, 5), (2.5, 5), (3, 5), (3, 5)]
    assert limits == [pytest.approx(e) for e in expected]
    assert BatchRenorm(2).current_limits() == (1.0, 0.0)  # the paper's 5k steps of plain BN


# -- Ghost Batch Normalization ---------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_ghostbatchnorm_with_virtual_batch_equal_to_batch_is_batchnorm(impl):
    gbn, bn = GhostBatchNorm(6, virtual_batch_size=8, impl=impl), nn.BatchNorm2d(6)
    randomize_affine(gbn, bn)
    for step in range(3):
        check_fwd_bwd(gbn, bn, torch.randn(8, 6, 3, 2) + step)
        _assert_same_stats(gbn, bn)
    gbn.eval()
    bn.eval()
    x = torch.randn(3, 6, 3, 2)
    torch.testing.assert_close(gbn(x), bn(x), **TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("n", "vbs"), [(8, 2), (7, 3), (6, 6)])
def test_ghostbatchnorm_is_batchnorm_per_virtual_batch(impl, n, vbs):
    gbn, bn = GhostBatchNorm(6, vbs, impl=impl), nn.BatchNorm1d(6)
    randomize_affine(gbn, bn)
    x = torch.randn(n, 6, 5) * 2 + 1
    expected = torch.cat([bn(chunk) for chunk in x.split(vbs)])  # one BN step per ghost batch
    torch.testing.assert_close(gbn(x), expected, **TOL)
    _assert_same_stats(gbn, bn)
    assert gbn.num_batches_tracked.item() == math.ceil(n / vbs)


@pytest.mark.parametrize("momentum", [0.3, None])
def test_ghostbatchnorm_paths_agree_on_uneven_batches(momentum):
    fast = GhostBatchNorm(4, 3, momentum=momentum)
    ref = GhostBatchNorm(4, 3, momentum=momentum, impl="reference")
    for n in (7, 9, 5):
        check_fwd_bwd(fast, ref, torch.randn(n, 4, 2) * 3 - 1)
        _assert_same_stats(fast, ref)


# -- Frozen Batch Normalization --------------------------------------------------------------
def _trained_bn(**kwargs):
    bn = nn.BatchNorm2d(6, **kwargs)
    with torch.no_grad():
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    for _ in range(3):
        bn(torch.randn(8, 6, 3, 3) * 2 + 1)
    return bn.eval()


@pytest.mark.parametrize("impl", IMPLS)
def test_frozenbatchnorm_loads_a_bn_checkpoint_and_equals_bn_in_eval(impl):
    bn = _trained_bn()
    frozen = FrozenBatchNorm(6, impl=impl)
    frozen.load_state_dict(bn.state_dict())
    assert list(frozen.parameters()) == []  # buffers only: nothing to train
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    for mode in (True, False):  # frozen in train mode too
        frozen.train(mode)
        check_fwd_bwd(frozen, bn, torch.randn(2, 6, 4, 4))
    assert all(torch.equal(v, before[k]) for k, v in frozen.state_dict().items())
    bn2 = nn.BatchNorm2d(6)
    bn2.load_state_dict(frozen.state_dict())  # and back: the keys are BN's
    torch.testing.assert_close(bn2.running_var, bn.running_var)


def test_frozenbatchnorm_loads_bn_without_affine_and_normzoo_bn_checkpoints():
    bn = _trained_bn(affine=False)
    frozen = FrozenBatchNorm(6)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(frozen(x), bn(x))
    zoo_bn = BatchNorm(6)
    zoo_bn.load_state_dict(_trained_bn().state_dict())
    frozen.load_state_dict(zoo_bn.eval().state_dict())
    torch.testing.assert_close(frozen(x), zoo_bn(x))
    state = zoo_bn.state_dict()
    del state["num_batches_tracked"]  # an old checkpoint
    FrozenBatchNorm(6).load_state_dict(state)


# -- Switchable Normalization ----------------------------------------------------------------
def _one_hot(sn, index):
    logits = torch.full((3,), -math.inf)
    logits[index] = 0.0
    with torch.no_grad():
        sn.mean_weight.copy_(logits)
        sn.var_weight.copy_(logits)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("index", "make_ref"),
    [
        (0, lambda: nn.InstanceNorm2d(6, affine=True)),
        (1, lambda: nn.GroupNorm(1, 6)),
        (2, lambda: nn.BatchNorm2d(6)),
    ],
    ids=["in", "ln", "bn"],
)
def test_switchablenorm_one_hot_is_in_ln_bn(impl, index, make_ref):
    sn, ref = SwitchableNorm(6, impl=impl), make_ref()
    _one_hot(sn, index)
    randomize_affine(sn, ref)
    for step in range(2):
        check_fwd_bwd(sn, ref, torch.randn(4, 6, 3, 5) * (step + 2) + step)
    if index == 2:
        _assert_same_stats(sn, ref)
    sn.eval()
    ref.eval()
    x = torch.randn(3, 6, 4, 4) * 2
    torch.testing.assert_close(sn(x), ref(x), **TOL)


def test_switchablenorm_mixes_statistics_with_softmax_weights():
    sn = SwitchableNorm(2, eps=0.0)
    with torch.no_grad():
        sn.mean_weight.copy_(torch.log(torch.tensor([0.2, 0.3, 0.5])))
        sn.var_weight.copy_(torch.log(torch.tensor([0.6, 0.1, 0.3])))
    x = torch.randn(3, 2, 4) * 2 + 1
    mu = [x.mean(2, keepdim=True), x.mean((1, 2), keepdim=True), x.mean((0, 2), keepdim=True)]
    var = [
        x.var(2, unbiased=False, keepdim=True),
        x.var((1, 2), unbiased=False, keepdim=True),
        x.var((0, 2), unbiased=False, keepdim=True),
    ]
    mean = 0.2 * mu[0] + 0.3 * mu[1] + 0.5 * mu[2]
    v = 0.6 * var[0] + 0.1 * var[1] + 0.3 * var[2]
    torch.testing.assert_close(sn(x), (x - mean) / v.sqrt(), **TOL)
    sn.mean_weight.grad = None
    sn(x).pow(3).sum().backward()
    assert sn.mean_weight.grad.abs().sum() > 0 and sn.var_weight.grad.abs().sum() > 0


# -- Filter Response Normalization + TLU -----------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_frn_known_answer_and_tlu(impl):
    frn = FilterResponseNorm(2, eps=0.0, impl=impl)
    with torch.no_grad():
        frn.weight.copy_(torch.tensor([1.0, 2.0]))
        frn.bias.copy_(torch.tensor([0.0, -1.0]))
        frn.tau.copy_(torch.tensor([-0.5, 0.0]))
    x = torch.tensor([[[3.0, -4.0], [1.0, -1.0]]])  # nu^2 = 12.5 and 1: no mean subtracted
    y = torch.tensor([[[3.0, -4.0], [2.0 - 1.0, -2.0 - 1.0]]]) / torch.tensor(
        [[[12.5**0.5], [1.0]]]
    )
    y[0, 1] = torch.tensor([1.0, -3.0])
    expected = torch.maximum(y, torch.tensor([-0.5, 0.0]).reshape(1, 2, 1))
    torch.testing.assert_close(frn(x), expected)
    x = torch.randn(4, 2, 3, 3)
    torch.testing.assert_close(frn(5 * x), frn(x), **TOL)  # scale invariant (eps = 0)


def test_frn_fixed_and_learnable_eps():
    fixed = FilterResponseNorm(3)
    assert fixed.eps_learned is None and fixed.effective_eps() == 1e-6
    learned = FilterResponseNorm(3, learnable_eps=True)
    x = torch.zeros(2, 3, 2, 2)
    x[:, :, 0, 0] = 1e-3  # tiny responses: eps matters
    learned(x).sum().backward()
    assert learned.eps_learned.grad is not None and learned.eps_learned.grad.abs() > 0
    no_tlu = FilterResponseNorm(3, tlu=False)
    assert no_tlu.tau is None
    assert (no_tlu(torch.randn(2, 3, 4)) < 0).any()


# -- EvoNorm ---------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_evonorm_s0_known_answer_divides_by_group_std(impl):
    s0 = EvoNormS0(4, num_groups=2, impl=impl)
    randomize_affine(s0, channels=4)
    with torch.no_grad():
        s0.v.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    x = torch.randn(3, 4, 5) * 2 + 1
    grouped = x.reshape(3, 2, -1)
    std = (grouped.var(2, unbiased=False, keepdim=True) + s0.eps).sqrt()
    num = x * torch.sigmoid(s0.v.detach().reshape(1, 4, 1) * x)
    expected = (num.reshape(3, 2, -1) / std).reshape(x.shape)
    expected = expected * s0.weight.detach().reshape(1, 4, 1) + s0.bias.detach().reshape(1, 4, 1)
    torch.testing.assert_close(s0(x), expected, **TOL)
    # With v = 0 the numerator is x / 2: dividing by the std makes the output scale-invariant
    # (a port that multiplies would scale it by k^2).
    plain = EvoNormS0(4, num_groups=2, eps=0.0, affine=False, impl=impl)
    with torch.no_grad():
        plain.v.zero_()
    torch.testing.assert_close(plain(10 * x), plain(x), **TOL)


@pytest.mark.parametrize(
    ("channels", "kwargs", "groups"),
    [(64, {}, 32), (48, {}, 24), (6, {}, 6), (100, {}, 25), (37, {}, 1),
     (64, {"num_groups": 8}, 8), (64, {"group_size": 16}, 4)],
)  # fmt: skip
def test_evonorm_s0_groups_follow_groupnorm(channels, kwargs, groups):
    assert normzoo.create("evonorm_s0", channels, **kwargs).num_groups == groups
    assert normzoo.create("gn", channels, **kwargs).num_groups == groups


@pytest.mark.parametrize("impl", IMPLS)
def test_evonorm_b0_known_answer_and_running_variance(impl):
    b0, bn = EvoNormB0(4, impl=impl), nn.BatchNorm2d(4)
    with torch.no_grad():
        b0.v.copy_(torch.tensor([1.0, 0.0, -2.0, 0.5]))
    for _ in range(3):
        x = torch.randn(5, 4, 3, 3) * 3 + 1
        var_b = x.var((0, 2, 3), unbiased=False, keepdim=True)
        var_i = x.var((2, 3), unbiased=False, keepdim=True)
        v = b0.v.detach().reshape(1, 4, 1, 1)
        denom = torch.maximum((var_b + 1e-5).sqrt(), v * x + (var_i + 1e-5).sqrt())
        torch.testing.assert_close(b0(x), x / denom, **TOL)
        bn(x)
    torch.testing.assert_close(b0.running_var, bn.running_var, **TOL)  # BN's running variance
    assert b0.running_mean is None and "running_mean" not in b0.state_dict()
    b0.eval()
    x = torch.randn(2, 4, 3, 3)
    var_i = x.var((2, 3), unbiased=False, keepdim=True)
    v = b0.v.detach().reshape(1, 4, 1, 1)
    rv = b0.running_var.reshape(1, 4, 1, 1)
    denom = torch.maximum((rv + 1e-5).sqrt(), v * x + (var_i + 1e-5).sqrt())
    torch.testing.assert_close(b0(x), x / denom, **TOL)


# -- every new norm --------------------------------------------------------------------------
ZOO = [
    ("rmsnorm", {}),
    ("rmsnorm", {"channels_last": True}),
    ("batchrenorm", {"warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0}),
    ("ghostbatchnorm", {"virtual_batch_size": 2}),
    ("frozenbatchnorm", {}),
    ("syncbatchnorm", {}),
    ("switchablenorm", {}),
    ("frn", {"learnable_eps": True}),
    ("evonorm_b0", {}),
    ("evonorm_s0", {"num_groups": 3}),
]


def _init_zoo(*modules):
    for m in modules:
        torch.manual_seed(1)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.rand_like(p) * 0.5)
            if m.running_var is not None:
                m.running_var.uniform_(0.5, 2.0)
            if m.running_mean is not None:
                m.running_mean.uniform_(-1, 1)


@pytest.mark.parametrize(("name", "kwargs"), ZOO, ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_fast_and_reference_paths_agree(name, kwargs, training):
    fast = normzoo.create(name, 6, **kwargs)
    ref = normzoo.create(name, 6, impl="reference", **kwargs)
    _init_zoo(fast, ref)
    fast.train(training)
    ref.train(training)
    shape = (4, 5, 6) if kwargs.get("channels_last") else (4, 6, 5, 3)
    for _ in range(2):
        check_fwd_bwd(ref, fast, torch.randn(shape) * 2 + 1)
    for key, value in fast.state_dict().items():
        torch.testing.assert_close(ref.state_dict()[key], value, **TOL, msg=key)


def _double(t):
    return t.double().requires_grad_()


def test_gradcheck_reference_functions_float64():
    x = _double(torch.randn(4, 6, 3, 2))
    w, b = _double(torch.rand(6) + 0.5), _double(torch.randn(6))
    v = _double(torch.randn(6))
    rm = torch.randn(6, dtype=torch.double)
    rv = torch.rand(6, dtype=torch.double) + 0.5
    logits = _double(torch.randn(3))
    checks = {
        "rms_norm": (lambda x, w, b: functional.rms_norm(x, w, b), (x, w, b)),
        "rms_norm/tokens": (
            lambda x, w, b: functional.rms_norm(x, w, b, channels_last=True),
            (_double(torch.randn(5, 6)), w, b),
        ),
        # r and d stop the gradient, which is the true derivative where both are clipped:
        # running statistics far from the batch's (sigma = 10, mu = 10) saturate them.
        "batch_renorm/train": (
            lambda x, w, b: functional.batch_renorm(
                x, rm + 10, rv * 100, w, b, training=True, r_max=1.2, d_max=0.3
            )[0],
            (x, w, b),
        ),
        "batch_renorm/eval": (
            lambda x, w, b: functional.batch_renorm(x, rm, rv, w, b, training=False)[0],
            (x, w, b),
        ),
        "ghost_batch_norm": (
            lambda x, w, b: functional.ghost_batch_norm(
                x, rm, rv, w, b, virtual_batch_size=2, training=True
            )[0],
            (x, w, b),
        ),
        "frozen_batch_norm": (
            lambda x, w, b: functional.frozen_batch_norm(x, rm, rv, w, b),
            (x, w, b),
        ),
        "sync_batch_norm/single-process": (
            lambda x, w, b: functional.sync_batch_norm(x, rm, rv, w, b, training=True)[0],
            (x, w, b),
        ),
        "switchable_norm": (
            lambda x, lm, lv, w, b: functional.switchable_norm(
                x, lm, lv, rm, rv, w, b, training=True
            )[0],
            (x, logits, _double(torch.randn(3)), w, b),
        ),
        "filter_response_norm": (
            lambda x, w, b, t, e: functional.filter_response_norm(x, w, b, t, eps=1e-6 + e.abs()),
            (x, w, b, _double(torch.randn(6) * 0.1), _double(torch.tensor([1e-2]))),
        ),
        "evonorm_b0": (
            lambda x, v, w, b: functional.evonorm_b0(x, v, rv, w, b, training=True)[0],
            (x, v, w, b),
        ),
        "evonorm_s0": (
            lambda x, v, w, b: functional.evonorm_s0(x, v, 3, w, b),
            (x, v, w, b),
        ),
    }
    for name, (fn, args) in checks.items():
        assert torch.autograd.gradcheck(fn, args), name


@pytest.mark.parametrize(("name", "kwargs"), ZOO, ids=str)
def test_low_precision_keeps_the_input_dtype(name, kwargs):
    layer = normzoo.create(name, 6, **kwargs)
    shape = (4, 5, 6) if kwargs.get("channels_last") else (4, 6, 3, 3)
    x = torch.randn(shape)
    for dtype in (torch.bfloat16, torch.float16):
        y = layer(x.to(dtype))
        assert y.dtype == dtype
        assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(32, 6), (32, 6, 5), (32, 6, 3, 4), (32, 6, 2, 3, 2)], ids=str)
def test_ghostbatchnorm_all_virtual_batches_at_once(shape, momentum, monkeypatch):
    """The vectorized path (GPU by default; forced here) equals one BN per virtual batch:
    outputs, gradients, running statistics after several steps, num_batches_tracked."""
    from normzoo.norms import ghost_batch

    monkeypatch.setitem(ghost_batch.VECTOR_MIN_BATCHES, "cpu", 2)
    fast = GhostBatchNorm(6, virtual_batch_size=4, momentum=momentum)
    ref = GhostBatchNorm(6, virtual_batch_size=4, momentum=momentum, impl="reference")
    randomize_affine(fast, ref)
    calls = []
    original = GhostBatchNorm._all_virtual_batches_at_once
    monkeypatch.setattr(
        GhostBatchNorm,
        "_all_virtual_batches_at_once",
        lambda self, *a: calls.append(1) or original(self, *a),
    )
    for step in range(3):
        check_fwd_bwd(fast, ref, torch.randn(shape) * (step + 1) + step)
        _assert_same_stats(fast, ref)
    assert len(calls) == 3
    x = torch.randn(shape)
    if len(shape) == 4:  # the layout is kept
        y = fast(x.to(memory_format=torch.channels_last))
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, ref(x), **TOL)
    y = fast(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref(x), atol=5e-2, rtol=2e-2)
    before = len(calls)
    fast(torch.randn(30, *shape[1:]))  # 30 = 7 x 4 + 2: unequal virtual batches, the loop
    assert len(calls) == before


# -- every norm far from zero ------------------------------------------------------------------
#: options that make every registered norm take these shapes (groups of 4 channels: groups of
#: one value are degenerate, and torch's own group norm rounds them to ~1e-2 at mean 1000)
_FAR_KWARGS = {
    "ghostbatchnorm": {"virtual_batch_size": 4},
    "groupnorm": {"num_groups": 4},
    "evonorms0": {"num_groups": 4},
}


_NO_TOKENS = ("instancenorm", "switchablenorm")  # (positions needed)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        (name, shape)
        for name in sorted(normzoo.available())
        for shape in [(8, 16, 6, 5), (32, 16)]
        if len(shape) > 2 or name not in _NO_TOKENS
    ],
    ids=str,
)
@pytest.mark.parametrize("impl", IMPLS)
def test_every_norm_keeps_precision_far_from_zero(name, shape, impl):
    """Data of mean 1000 and std 1 in float32 (resolution ~6e-5 there): each norm's default
    path and its reference math in float32, outputs, input gradients and buffers, against
    the reference math in float64. A statistic formed as ``E[x^2] - E[x]^2`` in float32
    cancels here (SwitchableNorm's LN and BN variances did, off by up to 1)."""
    torch.manual_seed(12)
    kwargs = _FAR_KWARGS.get(name, {})
    ours = normzoo.create(name, 16, impl=impl, **kwargs)
    exact = normzoo.create(name, 16, impl="reference", **kwargs).double()
    with torch.no_grad():  # non-trivial parameters (0.5 to 1.5)
        for p in ours.parameters():
            p.uniform_(0.5, 1.5)
    exact.load_state_dict(ours.state_dict())
    x = torch.randn(shape) + 1000
    dy = torch.randn(shape)
    outs = []
    for m, dtype in ((ours, torch.float32), (exact, torch.float64)):
        xx = x.to(dtype).requires_grad_()
        y = m(xx)
        (g,) = torch.autograd.grad(y, xx, dy.to(dtype))
        outs.append((y.detach(), g))
    for got, want in zip(*outs, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-3 * (1 + want.abs().max()), rtol=0)
    for key, value in exact.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(ours.state_dict()[key].double(), value, atol=1e-3, rtol=1e-5)
