"""Callbacks of the training system."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class FitTimer(pl.Callback):
    """Times the fit loop (training and validation epochs) and counts the optimizer steps it
    ran, so that throughput excludes setup and, on resume, the restored steps.

    After ``trainer.fit``: ``seconds`` and ``steps``.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.steps = 0
        self._start_time = 0.0
        self._start_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_time = time.perf_counter()
        self._start_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self._start_time
        self.steps = trainer.global_step - self._start_step
