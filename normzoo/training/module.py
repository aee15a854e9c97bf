"""``Classifier``: the LightningModule. It wraps a network, computes the loss, logs loss and
accuracy (torchmetrics) per split, and builds the optimizer and scheduler from partials.
It holds no data and no trainer logic."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class Classifier(pl.LightningModule):
    """Cross-entropy classification with any network.

    Args:
        net: the network (``normzoo.models``), mapping inputs to ``num_classes`` logits.
        num_classes: the number of classes.
        optimizer: a partial that takes the parameters, e.g.
            ``functools.partial(torch.optim.AdamW, lr=3e-3)``.
        scheduler: ``None`` or a partial that takes the optimizer; with
            a ``total_steps`` argument left at ``None`` (OneCycleLR) is filled in from the
            trainer's estimate of the run's optimizer steps.
        scheduler_interval: ``"epoch"`` or ``"step"``.

    Logs ``{train,val,test}/loss`` and ``{train,val,test}/acc`` per epoch (train also per
    step), and ``val/acc_best``, the best epoch's val accuracy so far.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}"
            )
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        # The best epoch-level val accuracy so far; saved in checkpoints, so it survives resume.
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], split: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = getattr(self, f"{split}_acc")
        acc(logits, y)
        on_step = split == "train"
        self.log(
            f"{split}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True
        )
        self.log(f"{split}/acc", acc, on_step=on_step, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_acc_best(self.val_acc.compute())
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        total_steps = inspect.signature(self.scheduler_factory).parameters.get("total_steps")
        if total_steps is not None and total_steps.default is None:  # OneCycleLR
            # OneCycleLR divides by zero on some very short schedules (4 steps at
            # pct_start=0.25); a toy run of under 10 steps just ends before the annealing.
            kwargs["total_steps"] = max(int(self.trainer.estimated_stepping_batches), 10)
        scheduler = self.scheduler_factory(optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }
