"""Bad configs fail before training, with a message naming the problem and the fix."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from train_helpers import FAST, compose_config

from normzoo.errors import ConfigError, MissingDependencyError
from normzoo.training import app


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if training starts: every error below must come before."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("normzoo.training.Classifier.training_step", refuse)


def run(overrides, tmp_path):
    return app.run(compose_config([*FAST, *overrides], output_dir=tmp_path))


def test_group_norm_groups_that_do_not_divide_a_width_name_the_layer(tmp_path, no_training):
    with pytest.raises(ConfigError) as err:
        run(["norm=gn", "norm.num_groups=7", "model=convnet2d"], tmp_path)
    msg = str(err.value)
    assert "layer 'stage0.conv0' (width 32)" in msg
    assert "num_groups=7" in msg and "valid values" in msg


def test_batch_norm_with_one_sample_per_batch_says_what_to_use(tmp_path, no_training):
    with pytest.raises(ConfigError, match=r"batch_size=1.*norm=gn, norm=ln or norm=in"):
        run(["norm=bn", "data.batch_size=1"], tmp_path)


def test_batch_size_one_is_fine_without_batch_statistics(tmp_path):
    metrics = run(["norm=gn", "data.batch_size=1", "trainer.limit_train_batches=3"], tmp_path)
    assert metrics["batch_size"] == 1


def test_unknown_norm_position_lists_the_valid_ones(tmp_path, no_training):
    with pytest.raises(ConfigError, match=r"'middle'.*'before_act'.*'after_act'"):
        run(["model.norm_position=middle"], tmp_path)


def test_norm_that_needs_spatial_dims_in_an_mlp(tmp_path, no_training):
    with pytest.raises(ConfigError, match=r"layer 'hidden.0' \(width 256\).*spatial"):
        run(["norm=in", "model=mlp"], tmp_path)


def test_model_that_does_not_fit_the_data(tmp_path, no_training):
    with pytest.raises(ConfigError, match=r"convnet1d expects .*\(C, L\).*\(1, 8, 8\)"):
        run(["model=convnet1d"], tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_trainer_without_a_gpu(tmp_path, no_training):
    with pytest.raises(ConfigError, match=r"no CUDA GPU.*trainer=cpu"):
        run(["trainer=gpu"], tmp_path)


def test_cifar10_without_torchvision_says_what_to_install(tmp_path, monkeypatch, no_training):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torchvision" else real(name, *a),
    )
    with pytest.raises(MissingDependencyError, match=r"pip install 'normzoo\[cifar10\]'"):
        run(["data=cifar10"], tmp_path)


def test_missing_logger_package_says_what_to_install(tmp_path, monkeypatch, no_training):
    import lightning.fabric.loggers.tensorboard as tb

    monkeypatch.setattr(tb, "_TENSORBOARD_AVAILABLE", False)
    monkeypatch.setattr(tb, "_TENSORBOARDX_AVAILABLE", False)
    with pytest.raises(MissingDependencyError, match=r"logger.tensorboard.*pip install"):
        run(["logger=tensorboard"], tmp_path)


def test_cifar10_offline_without_files_says_where_to_put_them(tmp_path, monkeypatch, no_training):
    """torchvision present (faked) but the files neither on disk nor downloadable."""
    from normzoo.data import CIFAR10DataModule
    from normzoo.errors import DatasetUnavailableError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "torchvision" else real(name, *a),
    )

    def offline(self, train, download):  # what torchvision raises without files and network
        raise RuntimeError("Dataset not found or corrupted. You can use download=True")

    monkeypatch.setattr(CIFAR10DataModule, "_dataset", offline)
    with pytest.raises(DatasetUnavailableError, match=rf"cifar-10-batches-py into {tmp_path}"):
        run(["data=cifar10", f"data.root={tmp_path}", "data.num_workers=0"], tmp_path)


def test_the_training_extra_missing_says_what_to_install(monkeypatch, capsys):
    import normzoo.train

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "lightning" else real(name, *a),
    )
    with pytest.raises(SystemExit) as exit_:
        normzoo.train.main()
    assert "pip install 'normzoo[train]'" in str(exit_.value.code)
    assert "lightning" in str(exit_.value.code)
