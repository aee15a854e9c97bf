"""Helpers for the training-system tests: configs composed with Hydra's compose API from the
installed config package (independent of the current folder), and small, fast runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from normzoo.training.configs import CONFIG_MODULE, register_configs

#: Overrides that make a run tiny: synthetic data, one epoch, no progress bar.
FAST = (
    "data=synthetic",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
)


def compose_config(overrides: Sequence[str] = (), output_dir: Path | None = None) -> DictConfig:
    """The ``train`` config with ``overrides``, as ``normzoo-train`` would compose it."""
    register_configs()
    extra = [f"output_dir={output_dir}"] if output_dir is not None else ["output_dir=unused"]
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, *extra])


def train_cli() -> list[str]:
    """The installed ``normzoo-train`` console script (of this interpreter's environment)."""
    script = Path(sys.executable).parent / "normzoo-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "normzoo.train"]


def run_cli(args: Sequence[str], cwd: Path, timeout: float = 240, **kwargs) -> str:
    """Run ``normzoo-train args`` in ``cwd``; fail with its output if it fails or hangs."""
    env = dict(os.environ, HYDRA_FULL_ERROR="1", **kwargs.pop("env", {}))
    proc = subprocess.run(
        [*train_cli(), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
    assert proc.returncode == 0, (
        f"normzoo-train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc.stdout + proc.stderr


class StopAfterEpochs(pl.Callback):
    """Stops training after ``epochs`` epochs, as an interrupted run would (for resume tests)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True
