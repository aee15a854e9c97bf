"""Synchronized Batch Normalization: BN whose statistics span every process of a group."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from normzoo.functional._stats import affine, compute_dtype, reduce_dims
from normzoo.functional.batch import batch_norm


def distributed_world_size(process_group: Any = None) -> int:
    """The size of ``process_group`` (``None``: the default group), or 1 without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def sync_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    training: bool,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    process_group: Any = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    r"""Batch Normalization over the union of the batches of every process in a group.

    With ``m_p`` samples-times-positions on process ``p`` (``m_p = 0`` is allowed):

    .. math::
        m = \sum_p m_p, \quad
        \mu = \frac{1}{m}\sum_p \sum_{i \in \mathcal{B}_p} x_i, \quad
        \sigma^2 = \frac{1}{m}\sum_p \sum_{i \in \mathcal{B}_p} (x_i - \mu)^2, \quad
        y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    i.e. exactly BN on the concatenated batch: the sums are ``all_reduce``-d (two passes, for
    the numerically stable variance), so each process's statistics are weighted by its sample
    count. The reductions are the differentiable ``torch.distributed.nn.functional.all_reduce``,
    whose backward all-reduces the gradient terms, so autograd gives the gradient of BN on the
    concatenated batch. Without an initialised process group (or a group of one), or when not
    ``training``, this is ``normzoo.functional.batch_norm``. Every process of the group must
    call it (and its backward) in the same order.

    Returns:
        ``(y, new_running_mean, new_running_var)``; the running statistics are updated with
        the global unbiased variance ``m / (m - 1) sigma^2``, identically on every process.

    Reference: S. Ioffe, C. Szegedy, "Batch Normalization", ICML 2015, Algorithm 1 (on the
    global batch); H. Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018,
    Sec. 3.3 (cross-GPU BN).
    """
    if not training or distributed_world_size(process_group) == 1:
        return batch_norm(
            x,
            running_mean,
            running_var,
            weight,
            bias,
            training=training,
            momentum=momentum,
            eps=eps,
        )
    # Imported here: only reached with an initialised process group (torch.distributed present).
    from torch.distributed.nn.functional import all_reduce

    group = process_group if process_group is not None else dist.group.WORLD
    xf = x.to(compute_dtype(x))
    c = xf.shape[1]
    dims = reduce_dims(xf, batch=True, channel=False)
    shape = (1, -1) + (1,) * (xf.dim() - 2)
    count = xf.new_full((1,), xf.numel() // c)
    totals = all_reduce(torch.cat([xf.sum(dims), count]), group=group)
    m = totals[-1]
    mean = totals[:-1] / m
    centered = xf - mean.reshape(shape)
    var = all_reduce((centered * centered).sum(dims), group=group) / m
    y = affine(centered * torch.rsqrt(var + eps).reshape(shape), weight, bias)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            unbiased = var.detach() * (m / (m - 1).clamp_min(1))
            running_mean = (1 - momentum) * running_mean + momentum * mean.detach()
            running_var = (1 - momentum) * running_var + momentum * unbiased
    return y.to(x.dtype), running_mean, running_var
