"""Ghost Batch Normalization (Hoffer, Hubara & Soudry, 2017), from its definition."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional.batch import batch_norm


def ghost_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    virtual_batch_size: int,
    training: bool,
    momentum: float | None = 0.1,
    num_batches_tracked: int | Tensor = 0,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    r"""Ghost Batch Normalization: BN statistics per virtual ("ghost") batch.

    The batch is split, in order, into virtual batches of ``|B_S| = virtual_batch_size``
    samples (the last one smaller when ``N`` is not a multiple), and each is normalized with
    its own statistics:

    .. math::
        y_i = \gamma \, \frac{x_i - \mu_{\mathcal{B}_S(i)}}
              {\sqrt{\sigma^2_{\mathcal{B}_S(i)} + \epsilon}} + \beta

    The running statistics take one BN update per virtual batch, in order, which is the
    paper's ``mu_run = (1 - eta)^k mu_run + sum_i (1 - eta)^(k - i) eta mu_(B_S)^i``. With
    ``momentum=None`` the factor of the ``j``-th update is ``1 / (num_batches_tracked + j)``
    (a cumulative average over virtual batches). A virtual batch equal to the batch is BN.
    In eval (``training=False``) the running statistics normalize, as in BN.

    Returns:
        ``(y, new_running_mean, new_running_var)``; the arguments are never modified.

    Reference: E. Hoffer, I. Hubara, D. Soudry, "Train longer, generalize better: closing the
    generalization gap in large batch training of neural networks", NeurIPS 2017, Algorithm 1.
    """
    if not training and running_mean is not None and running_var is not None:
        return batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=eps)
    outputs = []
    for j, chunk in enumerate(x.split(virtual_batch_size, dim=0), start=1):
        factor = 1.0 / (num_batches_tracked + j) if momentum is None else momentum
        y, running_mean, running_var = batch_norm(
            chunk, running_mean, running_var, weight, bias, training=True, momentum=factor, eps=eps
        )
        outputs.append(y)
    return torch.cat(outputs), running_mean, running_var
