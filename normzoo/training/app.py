"""The main job: build everything from a composed config, check it, train, test, and write
``metrics.json``. ``normzoo.train`` wraps ``run`` in a Hydra app; tests call ``run`` with
configs from Hydra's compose API."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from normzoo import _native
from normzoo.errors import ConfigError, DatasetUnavailableError, MissingDependencyError
from normzoo.norms.base import Norm
from normzoo.training.callbacks import FitTimer
from normzoo.training.checks import check_accelerator, check_batch_size

METRICS_FILE = "metrics.json"
RESOLVED_CONFIG_FILE = "config.yaml"


def build(node: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` whose errors name the config group and the cause.

    Hydra wraps a constructor's exception in an ``InstantiationException``; we re-raise the
    cause's message as a ``ConfigError`` (or ``MissingDependencyError`` for an import error),
    prefixed with ``what`` (e.g. ``"model=convnet2d"``).
    """
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, (ConfigError, MissingDependencyError, DatasetUnavailableError)):
            raise cause from None
        if isinstance(cause, ImportError):
            raise MissingDependencyError(
                f"{what}: {cause}. Install the missing package (pip install it, or the normzoo "
                f"extra that provides it: pip install 'normzoo[train,tensorboard,cifar10]')"
            ) from cause
        msg = cause.args[0] if getattr(cause, "args", None) else str(cause)
        raise ConfigError(f"{what}: {msg}") from cause


def build_named(nodes: DictConfig | None, what: str) -> list[Any]:
    """Instantiate a dict of named configs (callbacks, loggers); ``null`` entries are off."""
    if not nodes:
        return []
    return [build(node, f"{what}.{name}") for name, node in nodes.items() if node is not None]


def norm_name(norm_cfg: DictConfig) -> str:
    """The norm a config selects: its registry name, or its target's name."""
    if norm_cfg.get("_args_"):
        return str(norm_cfg._args_[0])
    return str(norm_cfg.get("_target_", "?")).rsplit(".", 1)[-1]


def model_name(model_cfg: DictConfig) -> str:
    """The model's class name, lower-cased (``convnet2d``)."""
    return str(model_cfg._target_).rsplit(".", 1)[-1].lower()


def device_name(trainer: pl.Trainer) -> str:
    """``cpu`` or the GPU's name, with the number of processes when more than one."""
    device = trainer.strategy.root_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{name} x{trainer.world_size}" if trainer.world_size > 1 else name


def prepare_native(net: nn.Module, device: torch.device) -> None:
    """Load (on a machine's first run: build, about 40 s) normzoo's C++ operator library
    before training, where ``net`` has normzoo norms and trains on the CPU, saying so when it
    is built: otherwise its first forward builds it silently inside the timed training."""
    if device.type != "cpu" or not _native.native_enabled():
        return
    if not any(isinstance(m, Norm) for m in net.modules()):
        return
    if not _native.ops_cached():
        print(
            "normzoo: building the native C++ operators for this torch (once per machine, "
            f"about a minute; cached in {_native.cache_dir()})",
            file=sys.stderr,
            flush=True,
        )
    _native.load_ops()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test the configured model; return (and on rank 0 write) the metrics."""
    wall_start = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    check_accelerator(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build(cfg.data, "data")
    net: nn.Module = build(
        cfg.model,
        f"model={model_name(cfg.model)} norm={norm_name(cfg.norm)}",
        input_shape=datamodule.input_shape,
        num_classes=datamodule.num_classes,
    )
    check_batch_size(net, datamodule.batch_size)
    if cfg.get("compile"):  # in place: the state dict keeps its keys (no "_orig_mod.")
        net.compile(backend=cfg.get("compile_backend") or "inductor")
    module = build(cfg.module, "module", net=net, num_classes=datamodule.num_classes)
    timer = FitTimer()
    callbacks = [*build_named(cfg.get("callbacks"), "callbacks"), timer]
    loggers = build_named(cfg.get("logger"), "logger")
    trainer: pl.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / RESOLVED_CONFIG_FILE, resolve=True)

    prepare_native(net, trainer.strategy.root_device)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    ckpt = trainer.checkpoint_callback
    use_best = (
        cfg.get("test_weights", "best") == "best"
        and ckpt is not None
        and bool(getattr(ckpt, "best_model_path", ""))
    )
    test = trainer.test(
        module, datamodule=datamodule, ckpt_path="best" if use_best else None, verbose=False
    )[0]

    metrics: dict[str, Any] = {
        "test_acc": float(test["test/acc"]),
        "test_loss": float(test["test/loss"]),
        "val_acc": val.get("val/acc"),
        "val_loss": val.get("val/loss"),
        "best_val_acc": float(module.val_acc_best.compute()),
        "test_weights": "best" if use_best else "last",
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "train_time_s": round(timer.seconds, 3),
        "samples_per_s": round(
            timer.steps * datamodule.batch_size * trainer.world_size / max(timer.seconds, 1e-9), 1
        ),
        "wall_time_s": round(time.perf_counter() - wall_start, 3),
        "norm": norm_name(cfg.norm),
        "norm_position": cfg.model.get("norm_position"),
        "model": model_name(cfg.model),
        "data": getattr(datamodule, "name", type(datamodule).__name__),
        "batch_size": datamodule.batch_size,
        "seed": cfg.seed,
        "lr": cfg.optimizer.get("lr"),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "device": device_name(trainer),
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
        "compiled": cfg.get("compile_backend") if cfg.get("compile") else None,
        "num_params": sum(p.numel() for p in net.parameters()),
        "resumed_from": cfg.get("ckpt_path"),
        "output_dir": str(output_dir.resolve()),
    }
    if trainer.is_global_zero:
        (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def format_summary(metrics: dict[str, Any]) -> str:
    """The lines ``normzoo-train`` prints at the end of a run."""
    return (
        f"normzoo-train: norm={metrics['norm']} model={metrics['model']} data={metrics['data']} "
        f"batch_size={metrics['batch_size']} seed={metrics['seed']} on {metrics['device']}\n"
        f"  test acc {100 * metrics['test_acc']:.2f}% (best val acc "
        f"{100 * metrics['best_val_acc']:.2f}%), {metrics['epochs']} epochs, "
        f"train {metrics['train_time_s']:.1f} s, wall {metrics['wall_time_s']:.1f} s\n"
        f"  outputs: {metrics['output_dir']} ({METRICS_FILE}, {RESOLVED_CONFIG_FILE}, "
        f"csv/metrics.csv, checkpoints/)"
    )
