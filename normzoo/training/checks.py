"""Checks that run before training and fail with a message naming the problem and the fix.

Norm-specific rules are read from the norms' class attributes (``uses_batch_stats``), never
from their names.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from normzoo.errors import ConfigError
from normzoo.norms.base import Norm

GPU_ACCELERATORS = ("gpu", "cuda")


def check_accelerator(cfg: DictConfig) -> None:
    """``trainer=gpu`` (or ``trainer.accelerator=gpu``) needs a CUDA GPU."""
    accelerator = str(cfg.trainer.get("accelerator", "auto")).lower()
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but torch finds no CUDA GPU "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False). "
            f"Run on the CPU with trainer=cpu (the default), or install a CUDA build of torch "
            f"on a machine with a GPU"
        )


def check_batch_size(net: nn.Module, batch_size: int) -> None:
    """Norms that use batch statistics need at least 2 samples per batch."""
    batch_norms = {
        type(m).__name__ for m in net.modules() if isinstance(m, Norm) and m.uses_batch_stats
    }
    if batch_norms and batch_size < 2:
        names = ", ".join(sorted(batch_norms))
        raise ConfigError(
            f"data.batch_size={batch_size} with {names}, which computes its statistics over "
            f"the batch: one sample per batch (per process) leaves nothing to normalize over. "
            f"Use a norm that does not use the batch (norm=gn, norm=ln or norm=in) or "
            f"data.batch_size>=2"
        )
