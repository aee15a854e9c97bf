"""Real training runs: tiny ones in-process through ``normzoo.training.app.run`` with
configs from Hydra's compose API, and the console script for what needs a process (sweeps,
DDP, an installed wheel)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import FAST, compose_config, run_cli

from normzoo.summary import summarize
from normzoo.training.app import run

#: metrics.json fields that the docs and scripts rely on.
REQUIRED_FIELDS = {
    "test_acc",
    "val_acc",
    "best_val_acc",
    "test_loss",
    "epochs",
    "train_time_s",
    "samples_per_s",
    "norm",
    "model",
    "data",
    "batch_size",
    "seed",
    "device",
}
REPO = Path(__file__).resolve().parents[2]
SHAPES = {"mlp": [1, 8, 8], "convnet1d": [1, 40], "convnet2d": [1, 8, 8], "resnet": [1, 8, 8]}


def train(tmp_path: Path, *overrides: str) -> dict:
    return run(compose_config([*FAST, *overrides], output_dir=tmp_path))


@pytest.mark.parametrize("model", sorted(SHAPES))
def test_fast_dev_run_per_model(model, tmp_path):
    shape = SHAPES[model]
    metrics = train(
        tmp_path, f"model={model}", f"data.input_shape={shape}", "trainer.fast_dev_run=true"
    )
    assert metrics["model"] == model
    assert 0.0 <= metrics["test_acc"] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["model"] == model


def test_default_job_on_fewer_epochs_learns_the_digits(tmp_path):
    cfg = compose_config(
        ["trainer.max_epochs=4", "trainer.enable_progress_bar=false"], output_dir=tmp_path
    )
    assert (cfg.norm._args_, cfg.model._target_, cfg.data._target_, cfg.trainer.accelerator) == (
        ["batchnorm"],
        "normzoo.models.ConvNet2d",
        "normzoo.data.DigitsDataModule",
        "cpu",
    )
    metrics = run(cfg)
    assert metrics["test_acc"] >= 0.93, metrics
    assert metrics["epochs"] == 4 and metrics["device"] == "cpu"
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert set(written) >= REQUIRED_FIELDS
    assert written["test_acc"] == metrics["test_acc"]
    assert (tmp_path / "config.yaml").read_text().count("batchnorm") >= 1
    assert {"best.ckpt", "last.ckpt"} <= {p.name for p in (tmp_path / "checkpoints").iterdir()}
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    epochs_with_val = {r["epoch"] for r in rows if r.get("val/acc")}
    assert epochs_with_val == {"0", "1", "2", "3"}


def test_native_operators_are_prepared_before_the_timed_training(monkeypatch, capsys):
    """A CPU run with normzoo norms loads the operator library before ``fit`` (on a machine's
    first run it builds it, saying so), not in its first training step; nothing happens for
    a GPU run, a model without normzoo norms, or with the native kernels switched off."""
    from torch import nn

    import normzoo
    from normzoo import _native
    from normzoo.training import app

    loads = []
    monkeypatch.setattr(_native, "load_ops", lambda: loads.append(1) or True)
    monkeypatch.setattr(_native, "ops_cached", lambda: False)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), normzoo.create("bn", 8))
    app.prepare_native(net, torch.device("cpu"))
    assert loads == [1] and "building the native C++ operators" in capsys.readouterr().err
    monkeypatch.setattr(_native, "ops_cached", lambda: True)
    app.prepare_native(net, torch.device("cpu"))
    assert loads == [1, 1] and capsys.readouterr().err == ""  # cached: loaded, no message
    app.prepare_native(net, torch.device("cuda"))
    app.prepare_native(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), torch.device("cpu"))
    monkeypatch.setenv("NORMZOO_NATIVE", "0")
    app.prepare_native(net, torch.device("cpu"))
    assert loads == [1, 1]


def test_same_seed_same_metrics_and_another_seed_differs(tmp_path):
    args = ("trainer.max_epochs=2", "norm=bn")
    a = train(tmp_path / "a", *args, "seed=3")
    b = train(tmp_path / "b", *args, "seed=3")
    c = train(tmp_path / "c", *args, "seed=4")
    keys = ("test_acc", "test_loss", "val_acc", "val_loss", "best_val_acc", "steps")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert a["test_loss"] != c["test_loss"]


def test_compiled_run(tmp_path):
    """``compile=true`` (backend ``aot_eager`` here: dynamo's capture and AOTAutograd, not
    inductor's code generation) with Batch Renorm at ``momentum=None``, its schedule short
    enough to clip within the run: it trains as the eager run of the same seed on the same
    math (the reference, what a captured norm computes; the fast path's rounding differs and
    18 steps amplify it to about 1% of the loss), and its checkpoint has the eager one's keys
    (the model compiled in place, no ``_orig_mod.``)."""
    args = ("norm=brn", "norm.momentum=null", "norm.warmup_steps=2", "norm.r_max_steps=4")
    args += ("norm.d_max_steps=4", "trainer.max_epochs=2")
    eager = train(tmp_path / "eager", *args, "norm.impl=reference")
    compiled = train(tmp_path / "compiled", *args, "compile=true", "compile_backend=aot_eager")
    assert (eager["compiled"], compiled["compiled"]) == (None, "aot_eager")
    assert compiled["steps"] == eager["steps"] > 4
    assert compiled["test_loss"] == pytest.approx(eager["test_loss"], rel=1e-4)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-4)
    keys = [
        set(torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
        for d in (tmp_path / "eager", tmp_path / "compiled")
    ]
    assert keys[0] == keys[1] and any(k.endswith("num_batches_tracked") for k in keys[0])


def test_resume_an_interrupted_run_from_its_checkpoint(tmp_path):
    """A 3-epoch run stopped after 2 epochs, resumed from last.ckpt, ends as planned."""
    stop = ("+callbacks.stop._target_=train_helpers.StopAfterEpochs", "+callbacks.stop.epochs=2")
    first = train(tmp_path / "first", "trainer.max_epochs=3", *stop)
    assert first["epochs"] == 2
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = train(tmp_path / "resumed", "trainer.max_epochs=3", f"ckpt_path={last}")
    assert resumed["epochs"] == 3
    assert resumed["steps"] == first["steps"] // 2 * 3  # the step count carries on
    assert resumed["resumed_from"] == str(last)
    assert resumed["best_val_acc"] >= first["best_val_acc"]  # carried over in the checkpoint


def test_multirun_of_two_jobs_and_the_summary(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_cli(
        [
            "-m",
            "norm=bn,gn",
            *FAST,
            "data.batch_size=8",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert out.count("normzoo-train: norm=") == 2
    runs = sorted(p.parent.name for p in sweep.rglob("metrics.json"))
    assert len(runs) == 2  # one folder per job, named by its number and overrides
    assert runs[0].startswith("0_") and "norm=bn" in runs[0]
    assert runs[1].startswith("1_") and "norm=gn" in runs[1]
    table, csv_path = summarize(sweep)
    assert "| batchnorm" in table and "| groupnorm" in table
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["norm"], r["batch_size"]) for r in rows] == [("batchnorm", "8"), ("groupnorm", "8")]
    cli = subprocess.run(
        [sys.executable, "-m", "normzoo.cli", "summarize", str(sweep)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert cli.stdout.count("| synthetic") == 2


def test_ddp_on_two_cpu_processes(tmp_path):
    """trainer=ddp: two processes over gloo; a hang fails through the timeout."""
    out_dir = tmp_path / "ddp"
    run_cli(["trainer=ddp", *FAST, f"hydra.run.dir={out_dir}"], cwd=tmp_path, timeout=300)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["device"] == "cpu x2"
    assert 0.0 <= metrics["test_acc"] <= 1.0


def test_installed_wheel_runs_from_outside_the_checkout(tmp_path):
    """A built wheel (not editable), installed into a folder, runs ``normzoo-train`` from
    elsewhere with its shipped configs, and finds a plugin's norm by name."""
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", REPO],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("normzoo-*.whl")
    site = tmp_path / "site"
    plugin = REPO / "tests" / "plugin_dist"
    subprocess.run(
        [
            *pip,
            "install",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--target",
            site,
            wheel,
            plugin,
        ],
        check=True,
        capture_output=True,
    )
    assert (site / "normzoo" / "conf" / "norm" / "bn.yaml").exists()
    for source in (REPO / "normzoo" / "_native").glob("*.c"):  # built on first use
        assert (site / "normzoo" / "_native" / source.name).exists(), source.name
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import normzoo, normzoo.conf, normzoo._native as n; print(normzoo.__file__); "
        "assert n.load('batch_norm') is not None and n.load('row_norm') is not None"
    )
    check = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        env={
            "PYTHONPATH": str(site),
            "PATH": os.environ.get("PATH", ""),
            "NORMZOO_CACHE_DIR": str(tmp_path / "cache"),
        },
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.startswith(str(site))
    proc = subprocess.run(
        [
            str(site / "bin" / "normzoo-train"),
            "norm=dummynorm",
            "norm.scale=3.0",
            "model=mlp",
            *FAST,
            "hydra.run.dir=run",
        ],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((elsewhere / "run" / "metrics.json").read_text())
    assert metrics["norm"] == "dummynorm"
    resolved = (elsewhere / "run" / "config.yaml").read_text()
    assert "scale: 3.0" in resolved


def test_models_do_not_import_lightning():
    code = (
        "import sys, normzoo.models; "
        "print([m for m in ('lightning', 'hydra', 'omegaconf', 'matplotlib') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("experiment", [[], ["experiment=mnist1d"]])
def test_gpu_default_job_and_mnist1d(experiment, tmp_path):
    metrics = run(
        compose_config(
            [*experiment, "trainer=gpu", "trainer.enable_progress_bar=false"], output_dir=tmp_path
        )
    )
    print(json.dumps(metrics, indent=2))
    assert metrics["device"] != "cpu"
    assert metrics["test_acc"] >= 0.95


def test_both_loggers_at_once(tmp_path):
    train(tmp_path, "logger=[csv,tensorboard]")
    assert (tmp_path / "csv" / "metrics.csv").exists()
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
