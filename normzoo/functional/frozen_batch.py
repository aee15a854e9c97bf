"""Frozen Batch Normalization: BN with fixed statistics and affine, as one affine map."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._stats import compute_dtype


def frozen_batch_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    eps: float = 1e-5,
) -> Tensor:
    r"""Batch Normalization at inference, with every statistic and parameter held fixed.

    .. math::
        s = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \quad
        y = s \, x + (\beta - s\,\mu)

    where ``mu`` and ``sigma^2`` are the (fixed) running statistics: Algorithm 2 of the BN
    paper, which folds inference-time BN into one per-channel affine map. Used to fine-tune
    detection models whose batches are too small for batch statistics (Detectron's
    ``FrozenBatchNorm2d``). Only ``x`` gets a gradient in a module; the rest are buffers.

    Reference: S. Ioffe, C. Szegedy, "Batch Normalization", ICML 2015, Algorithm 2, step 11.
    """
    xf = x.to(compute_dtype(x))
    shape = (1, -1) + (1,) * (xf.dim() - 2)
    scale = torch.rsqrt(running_var.to(xf.dtype) + eps)
    if weight is not None:
        scale = scale * weight.to(xf.dtype)
    shift = -running_mean.to(xf.dtype) * scale
    if bias is not None:
        shift = shift + bias.to(xf.dtype)
    return (xf * scale.reshape(shape) + shift.reshape(shape)).to(x.dtype)
