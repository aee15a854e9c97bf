"""Every config composes and instantiates: each norm (the YAML files of conf/norm and every
registered name) with each model, and every option of the other groups."""

from __future__ import annotations

from importlib.resources import files

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from train_helpers import compose_config

import normzoo
from normzoo.errors import ConfigError
from normzoo.norms.base import Norm
from normzoo.registry import accepted_kwargs
from normzoo.training.app import build
from normzoo.training.configs import CONFIG_MODULE, norm_node


def options(group: str) -> list[str]:
    folder = files(CONFIG_MODULE) / group
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


NORM_YAMLS = options("norm")
MODELS = options("model")
#: A sample shape each model accepts.
SHAPES = {
    "mlp": (1, 8, 8),
    "convnet1d": (1, 40),
    "convnet2d": (1, 8, 8),
    "resnet": (1, 8, 8),
    "converted": (1, 8, 8),
}


def test_the_required_options_exist():
    assert {"bn", "ln", "in", "gn", "none"} <= set(NORM_YAMLS)
    assert {"mlp", "convnet1d", "convnet2d", "resnet"} <= set(MODELS)
    assert {"digits", "mnist1d", "synthetic", "cifar10"} <= set(options("data"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"csv", "tensorboard"} <= set(options("logger"))
    assert "mnist1d" in options("experiment")
    assert set(SHAPES) == set(MODELS), "give every model a sample shape in SHAPES"


def build_net(overrides, shape):
    cfg = compose_config([*overrides, "data=synthetic", f"data.input_shape={list(shape)}"])
    return build(cfg.model, "model", input_shape=shape, num_classes=3)


def spatial_dims_ok(norm_cls: type, shape) -> bool:
    return norm_cls.min_spatial_dims <= len(shape) - 1 <= norm_cls.max_spatial_dims


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("norm", NORM_YAMLS)
@pytest.mark.parametrize("position", ["before_act", "after_act"])
def test_every_norm_yaml_with_every_model(norm, model, position):
    shape = SHAPES[model]
    overrides = [f"norm={norm}", f"model={model}", f"model.norm_position={position}"]
    cfg = compose_config(overrides)
    layer = instantiate(cfg.norm)(16)
    assert isinstance(layer, torch.nn.Module)
    flat = model == "mlp"
    if isinstance(layer, Norm) and flat and layer.min_spatial_dims > 0:
        with pytest.raises(ConfigError, match=r"layer 'hidden.0' \(width 256\)"):
            build_net(overrides, shape)
        return
    net = build_net(overrides, shape)
    norms = [m for m in net.modules() if type(m) is type(layer)]
    assert norms, f"{model} has no {type(layer).__name__} layer"
    net.train()
    out = net(torch.randn(4, *shape))
    assert out.shape == (4, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", normzoo.available())
def test_every_registered_norm_is_an_option_with_its_own_arguments(name):
    """norm=<canonical name> works without a YAML file, and its fields are exactly the
    norm's constructor arguments at their defaults (read from the registry, not retyped)."""
    cfg = compose_config([f"norm={name}"])
    cls = normzoo.get(name)
    kwargs = {k: v for k, v in cfg.norm.items() if not k.startswith("_")}
    expected = {k: v for k, v in accepted_kwargs(cls).items() if k in kwargs}
    assert kwargs == expected
    assert set(kwargs) == set(norm_node(name)) - {"_target_", "_partial_", "_args_"}
    assert type(instantiate(cfg.norm)(8)) is cls


@pytest.mark.parametrize("model", ["convnet2d", "convnet1d", "resnet"])
def test_fuse_activation_is_auto_true_or_false(model):
    """model.fuse_activation: auto (default) fuses the ReLU into each norm whose kernels fuse
    it (an Identity in the ReLU's place), false never, true every normzoo norm (else a
    ConfigError); the values are the same, to the bit."""
    shape = (1, 40) if model == "convnet1d" else (1, 8, 8)
    gn = ["norm=gn", "norm.num_groups=4", f"model={model}"]
    auto = build_net(gn, shape)
    plain = build_net([*gn, "model.fuse_activation=false"], shape)
    assert {m.activation for m in plain.modules() if isinstance(m, Norm)} == {None}
    assert {m.activation for m in auto.modules() if isinstance(m, Norm)} == {"relu"}
    assert not any(isinstance(m, torch.nn.ReLU) for m in auto.modules())
    auto.load_state_dict(plain.state_dict())
    x = torch.randn(4, *shape)
    torch.testing.assert_close(auto(x), plain(x), rtol=0, atol=0)
    # FRN's kernels do not fuse a ReLU: auto keeps nn.ReLU, true moves it into the norm
    frn = [f"model={model}", "norm=frn"]
    assert {m.activation for m in build_net(frn, shape).modules() if isinstance(m, Norm)} == {None}
    forced = build_net([*frn, "model.fuse_activation=true"], shape)
    assert {m.activation for m in forced.modules() if isinstance(m, Norm)} == {"relu"}
    after = [f"model={model}", "model.norm_position=after_act"]
    assert not any(m.activation for m in build_net(after, shape).modules() if isinstance(m, Norm))
    with pytest.raises(ConfigError, match="fuse_activation needs a normzoo norm"):
        build_net([*after, "model.fuse_activation=true"], shape)
    with pytest.raises(ConfigError, match="fuse_activation must be 'auto'"):
        build_net([f"model={model}", "model.fuse_activation=maybe"], shape)


def test_norm_kwargs_reach_every_layer():
    net = build_net(["norm=gn", "norm.num_groups=8", "model=convnet2d"], (1, 8, 8))
    groups = {m.num_groups for m in net.modules() if isinstance(m, normzoo.norms.GroupNorm)}
    assert groups == {8}
    net = build_net(["norm=bn", "norm.momentum=0.01"], (1, 8, 8))
    assert {m.momentum for m in net.modules() if isinstance(m, Norm)} == {0.01}


@pytest.mark.usefixtures("isolated_registry")
def test_a_norm_registered_at_run_time_is_an_option(monkeypatch):
    """A plugin's norm (here registered by the test) works by name, without a YAML file."""

    @normzoo.register("scaledtestnorm")
    class ScaledTestNorm(Norm):
        def __init__(self, num_features: int, scale: float = 2.0) -> None:
            super().__init__(num_features, affine=False)
            self.scale = scale

        def _forward(self, x):
            return x * self.scale

    cfg = compose_config(["norm=scaledtestnorm", "norm.scale=3.0", "model=mlp"])
    layer = instantiate(cfg.norm)(4)
    assert isinstance(layer, ScaledTestNorm) and layer.scale == 3.0


def test_unknown_norm_lists_the_options():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["norm=nosuchnorm"])
    msg = str(err.value)
    assert "nosuchnorm" in msg
    for name in ("bn", "gn", "groupnorm", "batchnorm", "layernorm"):
        assert f"\t{name}\n" in msg or msg.rstrip().endswith(f"\t{name}")


@pytest.mark.parametrize(
    "group", ["trainer", "logger", "data", "experiment", "optimizer", "scheduler"]
)
def test_every_option_of_the_other_groups_composes(group, tmp_path):
    for option in options(group):
        cfg = compose_config([f"{group}={option}"], output_dir=tmp_path)
        assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
        if group == "experiment":
            assert cfg.model and cfg.data


def test_trainer_options():
    cpu = compose_config(["trainer=cpu"]).trainer
    assert cpu.accelerator == "cpu" and cpu.deterministic is True
    gpu = compose_config(["trainer=gpu"]).trainer
    assert gpu.accelerator == "gpu" and gpu.precision == "bf16-mixed"
    ddp = compose_config(["trainer=ddp"]).trainer
    assert ddp.strategy == "ddp" and ddp.devices == 2
    (sync,) = ddp.plugins  # BatchNorms synchronized over the processes, unless switched off
    assert sync._target_ == "normzoo.training.layer_sync.NormzooSyncBatchNorm" and sync.enabled
    off = compose_config(["trainer=ddp", "trainer.plugins.0.enabled=false"]).trainer
    assert instantiate(off.plugins[0]).enabled is False


def test_experiment_mnist1d_picks_the_1d_cnn_and_keeps_the_norm_override():
    cfg = compose_config(["experiment=mnist1d", "norm=gn"])
    assert cfg.model._target_.endswith("ConvNet1d")
    assert cfg.data._target_.endswith("MNIST1DDataModule")
    assert cfg.norm._args_ == ["groupnorm"]


def test_callbacks_are_a_dict_that_the_command_line_can_edit():
    cfg = compose_config([])
    assert set(cfg.callbacks) >= {"checkpoint", "lr_monitor"}
    cfg = compose_config(["~callbacks.lr_monitor"])
    assert "lr_monitor" not in cfg.callbacks
    cfg = compose_config(["logger=[csv,tensorboard]"])
    assert set(cfg.logger) == {"csv", "tensorboard"}


@pytest.mark.parametrize("norm", ["gn", "bn", "frozenbn"])
def test_converted_model_swaps_torch_norms_of_a_model_given_as_a_whole(norm):
    overrides = ["model=converted", f"norm={norm}", "norm.eps=0.001"]
    net = build_net(overrides, SHAPES["converted"])
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    swapped = [m for m in net.modules() if isinstance(m, Norm)]
    assert len(swapped) == 4  # 2 stages x 2 convs of the torch.nn ConvNet
    assert all(type(m) is normzoo.get(norm) and m.eps == 0.001 for m in swapped)
    assert net(torch.randn(2, *SHAPES["converted"])).shape == (2, 3)
