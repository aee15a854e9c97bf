"""Training diagnostics as a Lightning callback: internal covariate shift, loss-landscape
smoothness along the gradient, and pre-activation distributions (saturation).

This module imports Lightning; ``import normzoo`` never imports it. Switch it on for any run
from the command line (``normzoo-train +callbacks=diagnostics``) or pass it to a ``Trainer``::

    from normzoo.diagnostics import Diagnostics

    trainer = lightning.pytorch.Trainer(callbacks=[Diagnostics(every_n_steps=50)])

Every ``every_n_steps`` training steps, before the step runs, on that step's batch and with
the weights the step starts from, it measures (Santurkar, Tsipras, Ilyas, Madry, "How Does
Batch Normalization Help Optimization?", NeurIPS 2018):

- **internal covariate shift** per weight layer ``i`` (``nn.Linear``/``nn.Conv*``):
  ``G`` is the gradient of the loss with respect to the layer's weight; ``G'`` the same
  gradient after every parameter before the layer (in registration order) took its plain
  gradient step ``W <- W - lr * grad`` (``lr`` read from the first optimizer). Recorded:
  ``||G - G'||`` (``ics_l2``), ``cos(G, G')`` (``ics_cos``) and ``||G||``;
- **smoothness along the gradient** ``g`` (all parameters): for steps ``eta = m * lr``,
  ``m`` in ``landscape_steps``, the loss ``L(W - eta g)`` and gradient there. Recorded: the
  variation of the loss (max - min over the steps, ``W`` itself included), gradient
  predictiveness (the largest ``||grad L(W) - grad L(W - eta g)||``) and the effective
  beta-smoothness (the largest ``||grad L(W) - grad L(W - eta g)|| / ||eta g||``).

Every forward of one measurement sees the same random seed (dropout or injected noise is
the same in ``G`` and ``G'``) and the parameters and buffers (BatchNorm's running
statistics) are restored afterwards: the training run itself is not changed.

On the training forward of the same steps, forward hooks on the activation modules
(``nn.Tanh``, ``nn.ReLU``, ...) record each activation's input distribution: mean, standard
deviation, the 2/15/50/85/98th percentiles (the BN paper's Fig. 1 plots the 15/50/85th), the
fraction of saturated inputs ``|x| > saturation_threshold`` (default ``atanh(0.99)``: where
``tanh`` is within 1% of ±1 and its derivative below 0.02) and the fraction below zero. A
norm that applies its ReLU itself (``fuse_activation``) holds the activation's input inside:
on the recorded forwards it runs without it, and a hook on the norm records its output and
applies the ReLU (the same values and gradients, to the bit); its rows carry the norm's name.

At the end of training (and on an exception) three CSVs are written to ``out_dir``
(default: the trainer's ``log_dir`` or ``default_root_dir``): ``diagnostics_ics.csv``,
``diagnostics_landscape.csv`` and ``diagnostics_activations.csv``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normzoo.norms.base import Norm, apply_activation

__all__ = [
    "ACTIVATIONS",
    "WEIGHT_LAYERS",
    "BatchStatsTest",
    "Diagnostics",
    "activation_stats",
    "ics",
    "landscape",
    "weight_layers",
]

#: Modules whose ``weight`` is a "layer" for the ICS measurement.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Modules whose input is recorded as a pre-activation.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.Tanh,
    nn.Sigmoid,
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.ELU,
    nn.SiLU,
)
#: ``|x|`` above which ``tanh(x)`` is within 1% of ±1.
SATURATION = math.atanh(0.99)
QUANTILES = (0.02, 0.15, 0.5, 0.85, 0.98)

LossFn = Callable[[Any], Tensor]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(module name, weight)`` of every ``WEIGHT_LAYERS`` module, in registration order."""
    return [
        (name, m.weight)
        for name, m in model.named_modules()
        if isinstance(m, WEIGHT_LAYERS) and m.weight.requires_grad
    ]


class _Restore:
    """Snapshot the parameters and buffers of a module; put them back on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> _Restore:
        self.saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(self.saved[k])


def _seeded(loss_fn: LossFn, batch: Any, seed: int, device: torch.device) -> Tensor:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return loss_fn(batch)


def ics(
    model: nn.Module, loss_fn: LossFn, batch: Any, lr: float, seed: int = 0
) -> list[dict[str, float | str]]:
    """Per weight layer, ``||G - G'||``, ``cos(G, G')`` and ``||G||`` (see the module doc).

    ``model`` keeps its parameters and buffers; ``loss_fn(batch)`` computes the loss with it.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    index = {id(p): i for i, p in enumerate(params)}
    device = params[0].device
    rows: list[dict[str, float | str]] = []
    with _Restore(model):
        grads = torch.autograd.grad(_seeded(loss_fn, batch, seed, device), params)
        for name, weight in weight_layers(model):
            k = index[id(weight)]
            with _Restore(model):
                with torch.no_grad():
                    for p, g in zip(params[:k], grads[:k], strict=True):
                        p.sub_(lr * g)
                (g_after,) = torch.autograd.grad(_seeded(loss_fn, batch, seed, device), [weight])
            g_before = grads[k]
            rows.append(
                {
                    "layer": name,
                    "ics_l2": float((g_before - g_after).norm()),
                    "ics_cos": float(
                        F.cosine_similarity(g_before.flatten(), g_after.flatten(), dim=0)
                    ),
                    "grad_norm": float(g_before.norm()),
                }
            )
    return rows


def landscape(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    lr: float,
    steps: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    seed: int = 0,
) -> dict[str, float]:
    """Loss variation, gradient predictiveness and effective beta-smoothness along ``-grad``.

    ``steps`` are multiples of ``lr``. ``model`` keeps its parameters and buffers.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    with _Restore(model):
        loss0 = _seeded(loss_fn, batch, seed, device)
        grads = torch.autograd.grad(loss0, params)
        gnorm = float(torch.sqrt(sum((g * g).sum() for g in grads)))
        losses, changes, betas = [float(loss0.detach())], [], []
        for m in steps:
            eta = m * lr
            with _Restore(model):
                with torch.no_grad():
                    for p, g in zip(params, grads, strict=True):
                        p.sub_(eta * g)
                loss = _seeded(loss_fn, batch, seed, device)
                moved = torch.autograd.grad(loss, params)
                loss = loss.detach()
            change = float(
                torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(grads, moved, strict=True)))
            )
            losses.append(float(loss))
            changes.append(change)
            betas.append(change / max(eta * gnorm, 1e-12))

    def spread(values: list[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return max(finite) - min(finite) if finite else math.nan

    def largest(values: list[float]) -> float:
        return max((v for v in values if not math.isnan(v)), default=math.nan)

    return {
        "loss": losses[0],
        "grad_norm": gnorm,
        "loss_variation": spread(losses),
        "grad_predictiveness": largest(changes),
        "beta_smoothness": largest(betas),
    }


def activation_stats(x: Tensor, threshold: float = SATURATION) -> dict[str, float]:
    """Distribution summary of one pre-activation tensor (see the module doc)."""
    flat = x.detach().flatten().float()
    if flat.numel() > 100_000:  # quantile() has a size limit; a random subset is plenty
        flat = flat[torch.randint(flat.numel(), (100_000,), device=flat.device)]
    qs = torch.quantile(flat, torch.tensor(QUANTILES, device=flat.device))
    row = {
        "mean": float(flat.mean()),
        "std": float(flat.std()) if flat.numel() > 1 else 0.0,
        "saturated_frac": float((flat.abs() > threshold).float().mean()),
        "negative_frac": float((flat < 0).float().mean()),
    }
    row.update({f"q{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, qs, strict=True)})
    return row


def default_loss(pl_module: nn.Module) -> LossFn:
    """``pl_module.diagnostic_loss`` if it has one, else cross-entropy of ``(x, y)`` batches."""
    custom = getattr(pl_module, "diagnostic_loss", None)
    if callable(custom):
        return custom

    def loss(batch: Any) -> Tensor:
        x, y = batch[0], batch[1]
        return F.cross_entropy(pl_module(x), y)

    return loss


class Diagnostics(pl.Callback):
    """Record ICS, smoothness and pre-activation statistics during training.

    Args:
        every_n_steps: measure at global steps 0, n, 2n, ...
        ics: measure internal covariate shift (``L + 1`` extra forward-backward passes).
        landscape: measure smoothness along the gradient (``len(landscape_steps) + 1``
            passes).
        activations: record the inputs of activation modules (and of the activations
            fused into norms) on the training forward.
        landscape_steps: step sizes along the gradient, as multiples of the learning rate.
        saturation_threshold: ``|x|`` above which a pre-activation counts as saturated.
        out_dir: where the CSVs go. Default: the trainer's ``log_dir`` or
            ``default_root_dir``.
        loss_fn: ``loss_fn(pl_module, batch) -> loss``. Default: ``default_loss``.
        seed: the measurement at step ``s`` runs its forwards with the seed ``seed + s``.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        ics: bool = True,
        landscape: bool = True,
        activations: bool = True,
        landscape_steps: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
        saturation_threshold: float = SATURATION,
        out_dir: str | Path | None = None,
        loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive int, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self.measure_ics = ics
        self.measure_landscape = landscape
        self.measure_activations = activations
        self.landscape_steps = tuple(float(s) for s in landscape_steps)
        self.saturation_threshold = float(saturation_threshold)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.loss_fn = loss_fn
        self.seed = int(seed)
        self.ics_rows: list[dict[str, Any]] = []
        self.landscape_rows: list[dict[str, Any]] = []
        self.activation_rows: list[dict[str, Any]] = []
        self._handles: list[Any] = []
        self._recording: int | None = None
        self._fused: list[Norm] = []  # norms that apply their activation themselves
        self._unfused: dict[nn.Module, str] = {}  # those running without it, for one forward

    # -- hooks ----------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.measure_activations:
            return
        for name, module in pl_module.named_modules():
            if isinstance(module, ACTIVATIONS):
                self._handles.append(module.register_forward_hook(self._hook(name)))
            elif isinstance(module, Norm) and module.activation is not None:
                self._fused.append(module)  # its activation's input is inside it
                self._handles.append(module.register_forward_hook(self._fused_hook(name)))

    def _record(self, name: str, x: Tensor) -> None:
        row = {"step": self._recording, "layer": name}
        row.update(activation_stats(x, self.saturation_threshold))
        self.activation_rows.append(row)

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if self._recording is not None and module.training:
                self._record(name, inputs[0])

        return hook

    def _fused_hook(self, name: str) -> Callable[..., Tensor | None]:
        """A fused norm's hook: on a recorded forward (the norm runs without its activation
        then, see ``_unfuse``) it records the output and returns the activation of it."""

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            activation = self._unfused.get(module)
            if activation is None:
                return None
            self._record(name, output)
            return apply_activation(output, activation)

        return hook

    def _unfuse(self) -> None:
        """For the recorded training forward: the fused norms leave their activation to
        their hooks (``_fused_hook``)."""
        for module in self._fused:
            if module.training and module.activation is not None:
                self._unfused[module] = module.activation
                module.fuse_activation(None)

    def _refuse(self) -> None:
        """Give the fused norms their activation back (after the recorded step, or an error)."""
        for module, activation in self._unfused.items():
            module.fuse_activation(activation)
        self._unfused.clear()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps:
            return
        if self.measure_ics or self.measure_landscape:
            self._measure(trainer, pl_module, batch, step)
        self._recording = step  # the hooks record the training forward that follows
        self._unfuse()

    def _measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, step: int
    ) -> None:
        lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        loss_fn = self._loss_fn(pl_module)
        seed = self.seed + step  # not drawn: the run's own random stream stays untouched
        was_training = pl_module.training
        pl_module.train()
        with torch.enable_grad():
            if self.measure_ics:
                for row in ics(pl_module, loss_fn, batch, lr, seed=seed):
                    self.ics_rows.append({"step": step, "lr": lr, **row})
            if self.measure_landscape:
                row = landscape(pl_module, loss_fn, batch, lr, self.landscape_steps, seed=seed)
                self.landscape_rows.append({"step": step, "lr": lr, **row})
        pl_module.train(was_training)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._recording = None
        self._refuse()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._finish(trainer)

    # -- helpers --------------------------------------------------------------------------
    def _loss_fn(self, pl_module: pl.LightningModule) -> LossFn:
        if self.loss_fn is None:
            return default_loss(pl_module)
        custom = self.loss_fn
        return lambda batch: custom(pl_module, batch)

    def output_dir(self, trainer: pl.Trainer) -> Path:
        """Where the CSVs are written."""
        if self.out_dir is not None:
            return self.out_dir
        return Path(trainer.log_dir or trainer.default_root_dir)

    def _finish(self, trainer: pl.Trainer) -> None:
        self._recording = None
        self._refuse()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._fused.clear()
        if not trainer.is_global_zero:
            return
        out = self.output_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        for stem, rows in (
            ("ics", self.ics_rows),
            ("landscape", self.landscape_rows),
            ("activations", self.activation_rows),
        ):
            if rows:
                write_csv(out / f"diagnostics_{stem}.csv", rows)


def uses_batch_statistics(module: nn.Module) -> bool:
    """Whether ``module`` normalizes with batch statistics in training mode."""
    flag = getattr(type(module), "uses_batch_stats", None)
    if flag is not None:
        return bool(flag)
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


@torch.no_grad()
def batch_stats_accuracy(
    model: nn.Module, batches: Any, batch_size: int, device: torch.device | None = None
) -> tuple[float, int]:
    """Accuracy of ``model`` when its batch-dependent norms use the statistics of each batch.

    The samples of ``batches`` (``(x, y)`` pairs of any size) are regrouped into batches of
    ``batch_size`` (a trailing single sample joins the previous batch); the norms with
    ``uses_batch_stats`` (and torch's BatchNorm) run in training mode, everything else
    (dropout) in eval mode. Parameters, buffers and modes are restored. Returns
    ``(accuracy, number of samples)``.
    """
    modes = {m: m.training for m in model.modules()}
    correct = total = 0
    with _Restore(model):
        model.eval()
        for m in model.modules():
            if uses_batch_statistics(m):
                m.train()
        xs, ys = [], []
        for x, y in batches:
            xs.append(x)
            ys.append(y)
        x_all, y_all = torch.cat(xs), torch.cat(ys)
        if device is not None:
            x_all, y_all = x_all.to(device), y_all.to(device)
        starts = list(range(0, len(x_all), batch_size))
        if len(starts) > 1 and len(x_all) - starts[-1] == 1:
            starts.pop()
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else len(x_all)
            pred = model(x_all[start:stop]).argmax(dim=1)
            correct += int((pred == y_all[start:stop]).sum())
            total += stop - start
    for m, mode in modes.items():
        m.train(mode)
    return correct / max(total, 1), total


class BatchStatsTest(pl.Callback):
    """After testing, test again with batch statistics instead of running statistics.

    BatchNorm normalizes a training batch with its own statistics and a test input with the
    running averages (the study notebook: "model.eval()"). This callback measures the other
    choice on the same weights and test set: each test batch of ``batch_size`` samples
    (default: the datamodule's training batch size) normalized with its own statistics.
    It writes ``test_batch_stats.json`` (``test_acc_batch_stats``, ``batch_size``,
    ``samples``) to ``out_dir`` (default: the trainer's ``log_dir`` or
    ``default_root_dir``) and keeps the result in ``self.result``.
    """

    def __init__(self, batch_size: int | None = None, out_dir: str | Path | None = None) -> None:
        self.batch_size = batch_size
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.result: dict[str, Any] = {}

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batch_size = self.batch_size or getattr(trainer.datamodule, "batch_size", None)
        if not batch_size:
            raise ValueError("BatchStatsTest needs batch_size (or a datamodule with one)")
        loaders = trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        acc, n = batch_stats_accuracy(pl_module, loader, int(batch_size), pl_module.device)
        self.result = {"test_acc_batch_stats": acc, "batch_size": int(batch_size), "samples": n}
        if trainer.is_global_zero:
            out = self.out_dir or Path(trainer.log_dir or trainer.default_root_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "test_batch_stats.json").write_text(json.dumps(self.result, indent=2) + "\n")


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write dict rows to ``path``, floats with 6 significant digits."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})
