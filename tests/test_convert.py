"""normzoo.convert / normzoo.revert: model surgery on a ResNet of torchvision's structure."""

import copy

import pytest
import torch
from torch import nn

import normzoo
from normzoo.norms import BatchNorm, FrozenBatchNorm, GroupNorm, RMSNorm, SyncBatchNorm
from normzoo.surgery import is_batchnorm


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock's structure and attribute names."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.resnet.ResNet's structure (stem, layer1-4, avgpool, fc), narrow."""

    def __init__(self, layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), num_classes=10):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


BN_PATHS = [
    "bn1",
    "layer1.0.bn1",
    "layer1.0.bn2",
    "layer2.0.bn1",
    "layer2.0.bn2",
    "layer2.0.downsample.1",
    "layer3.0.bn1",
    "layer3.0.bn2",
    "layer3.0.downsample.1",
    "layer4.0.bn1",
    "layer4.0.bn2",
    "layer4.0.downsample.1",
]


def _trained_resnet():
    """A ResNet whose BNs have non-trivial affine parameters and running statistics."""
    model = ResNet(layers=(2, 1, 1, 1))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 16, 16))
    return model


def _norm_layers(model):
    return {name: m for name, m in model.named_modules() if normzoo.surgery.is_norm_layer(m)}


X = torch.randn(2, 3, 16, 16)


def test_bn_to_groupnorm():
    model = _trained_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted, report = normzoo.convert(model, "gn", num_groups=4)
    assert converted is model
    layers = _norm_layers(model)
    assert sorted(layers) == sorted([*BN_PATHS, "layer1.1.bn1", "layer1.1.bn2"])
    assert all(type(m) is GroupNorm and m.num_groups == 4 for m in layers.values())
    assert [r.path for r in report][:3] == ["bn1", "layer1.0.bn1", "layer1.0.bn2"]
    for r in report:
        assert (r.old_type, r.new_type) == ("BatchNorm2d", "GroupNorm")
        assert r.carried == ("weight", "bias", "eps")  # GN has no BN statistics to take
        torch.testing.assert_close(model.get_submodule(r.path).weight, before[r.path + ".weight"])
    assert "layer2.0.downsample.1" in str(report) and "14 layer(s)" in str(report)
    assert model(X).shape == (2, 10)
    assert not any("running" in k for k in model.state_dict())


def test_bn_to_frozenbn_keeps_eval_outputs():
    model = _trained_resnet().eval()
    expected = model(X)
    n_params = sum(p.numel() for p in model.parameters())
    bn_params = sum(m.weight.numel() * 2 for m in _norm_layers(model).values())
    _, report = normzoo.convert(model, "frozenbn")
    assert all(type(m) is FrozenBatchNorm for m in _norm_layers(model).values())
    assert set(report.replacements[0].carried) >= {"weight", "bias", "running_mean", "running_var"}
    torch.testing.assert_close(model(X), expected)
    model.train()  # frozen: the same in train mode, and nothing left to learn in the norms
    torch.testing.assert_close(model(X), expected)
    assert sum(p.numel() for p in model.parameters()) == n_params - bn_params


@pytest.mark.parametrize("target", ["syncbn", "gbn", "brn", "frozenbn", "sn"])
def test_bn_statistics_are_carried_where_they_mean_the_same(target):
    model = _trained_resnet().eval()
    expected = model(X)
    _, report = normzoo.convert(model, target)
    for r in report:
        assert {"weight", "bias", "running_mean", "running_var", "eps"} <= set(r.carried), r
    if target != "sn":  # in eval each is BN with the running statistics
        torch.testing.assert_close(model(X), expected)


def test_bn_to_syncbn_and_back_round_trips():
    model = _trained_resnet()
    originals = dict(_norm_layers(model))
    reference = copy.deepcopy(model)
    _, report = normzoo.convert(model, "syncbatchnorm")
    assert all(type(m) is SyncBatchNorm for m in _norm_layers(model).values())
    for step in range(2):  # single process: SyncBN is BN, so both models train alike
        x = torch.randn(4, 3, 16, 16) + step
        torch.testing.assert_close(model(x), reference(x))
    reverted = normzoo.revert(model, report)
    assert reverted is model
    layers = _norm_layers(model)
    assert all(layers[k] is originals[k] for k in layers)  # the original layers, same class
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)


def test_torch_to_normzoo_bn_and_back_is_lossless():
    model = _trained_resnet()
    reference = copy.deepcopy(model)
    _, report = normzoo.convert(model, "bn")
    assert all(type(m) is BatchNorm for m in _norm_layers(model).values())
    assert list(model.state_dict()) == list(reference.state_dict())  # the same keys
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    for training in (True, False):
        model.train(training)
        reference.train(training)
        torch.testing.assert_close(model(X), reference(X))
    normzoo.revert(model, report)
    assert all(type(m) is nn.BatchNorm2d for m in _norm_layers(model).values())
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # Without the report, converting to a torch class gets there too.
    normzoo.convert(model, "bn")
    _, report = normzoo.convert(model, nn.BatchNorm2d)
    assert all(type(m) is nn.BatchNorm2d for m in _norm_layers(model).values())
    assert set(report.replacements[0].carried) >= {"running_var", "momentum", "eps"}
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_settings_and_frozen_parameters_are_carried():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, eps=1e-3, momentum=None))
    model[1].weight.requires_grad_(False)
    normzoo.convert(model, "syncbn")
    assert (model[1].eps, model[1].momentum) == (1e-3, None)
    assert not model[1].weight.requires_grad and model[1].bias.requires_grad
    normzoo.convert(model, "frozenbn")
    assert model[1].eps == 1e-3


def test_only_selects_layers_and_other_norms_convert():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1),
        nn.BatchNorm2d(8),
        nn.GroupNorm(2, 8),
        normzoo.create("bn", 8),
        normzoo.create("ln", 8),
    )
    _, report = normzoo.convert(model, "syncbn", only=is_batchnorm)
    assert [r.path for r in report] == ["1", "3"]
    assert [type(m).__name__ for m in model] == [
        "Conv2d",
        "SyncBatchNorm",
        "GroupNorm",
        "SyncBatchNorm",
        "LayerNorm",
    ]
    _, report = normzoo.convert(model, "evonorm_s0", only=(nn.GroupNorm, normzoo.norms.LayerNorm))
    assert [r.old_type for r in report] == ["GroupNorm", "LayerNorm"]
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 8, 4, 4)


def test_token_layernorm_converts_channels_last_and_a_root_norm_is_replaced():
    model = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6))
    _, report = normzoo.convert(model, "rms")
    assert isinstance(model[1], RMSNorm) and model[1].channels_last
    assert "channels_last" in report.replacements[0].carried
    assert model(torch.randn(3, 7, 5)).shape == (3, 7, 6)
    root, report = normzoo.convert(nn.BatchNorm1d(4), "gn")
    assert isinstance(root, GroupNorm) and report.replacements[0].path == ""


def test_errors_name_the_problem_and_change_nothing():
    model = nn.Sequential(nn.BatchNorm2d(4), nn.Sequential(nn.LayerNorm([4, 3, 3])))
    with pytest.raises(KeyError, match=r"unknown norm 'groupnrom'.*Registered norms: .*batchnorm"):
        normzoo.convert(model, "groupnrom")
    with pytest.raises(ValueError, match=r"layer '1.0' \(LayerNorm\).*normalized_shape"):
        normzoo.convert(model, "gn")
    assert type(model[0]) is nn.BatchNorm2d  # nothing replaced
    with pytest.raises(TypeError, match=r"num_groups.*it accepts: .*momentum"):
        normzoo.convert(model, "bn", num_groups=2)
    with pytest.raises(ValueError, match=r"layer '0'.*num_groups=3 must be a positive divisor"):
        normzoo.convert(nn.Sequential(nn.BatchNorm2d(4)), "gn", num_groups=3)
    with pytest.raises(ValueError, match=r"layer '0'.*track_running_stats must be True"):
        normzoo.convert(nn.Sequential(nn.BatchNorm2d(4, track_running_stats=False)), "frozenbn")
    with pytest.raises(TypeError, match="nn.Module"):
        normzoo.convert("resnet", "gn")


def test_arguments_fixed_in_a_partial_win_over_the_old_layers():
    import functools

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, eps=1e-3))
    model, report = normzoo.convert(model, functools.partial(normzoo.create, "gn", eps=0.5))
    assert model[1].eps == 0.5 and "eps" not in report.replacements[0].carried
    model2 = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, eps=1e-3))
    model2, _ = normzoo.convert(model2, functools.partial(normzoo.create, "gn"))
    assert model2[1].eps == 1e-3  # not fixed by the partial: inherited
