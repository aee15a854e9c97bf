"""Switchable Normalization (Luo, Ren, Peng, Zhang & Li, 2018), from its definition."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._stats import affine, compute_dtype, merge_statistics, stable_var_mean

#: The order of the statistics that ``mean_weight``/``var_weight`` weigh.
SWITCHABLE_STATISTICS = ("in", "ln", "bn")


def switchable_norm(
    x: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    training: bool,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    r"""Switchable Normalization: a learned mixture of IN, LN and BN statistics.

    .. math::
        \hat{x}_{nc} = \frac{x_{nc} - \sum_k w_k \mu_k}{\sqrt{\sum_k w'_k \sigma_k^2 + \epsilon}},
        \quad w = \mathrm{softmax}(\lambda), \ w' = \mathrm{softmax}(\lambda'),
        \quad y = \gamma \hat{x} + \beta

    for ``k`` in IN (per sample and channel, over the positions), LN (per sample, over
    channels and positions) and BN (per channel, over samples and positions). As in the
    paper, LN and BN statistics are computed from the IN ones:
    ``mu_ln = mean_c mu_in``, ``sigma2_ln = mean_c (sigma2_in + mu_in^2) - mu_ln^2``, and the
    same over ``n`` for BN; evaluated as ``mean_c (sigma2_in + (mu_in - mu_ln)^2)``, equal and
    without the cancellation of the paper's form on inputs far from zero. All variances are
    biased (``1/|I_k|``), as the paper defines them. In training (or without running
    statistics) BN uses the batch statistics, and the running ones are updated like BN's
    (unbiased variance); otherwise BN's term uses the running ones.

    Args:
        x: input ``(N, C, *spatial)``.
        mean_weight, var_weight: the logits ``lambda``, ``lambda'`` of shape ``(3,)`` in the
            order IN, LN, BN.
        running_mean, running_var: ``(C,)`` BN running statistics or ``None``; never modified.

    Returns:
        ``(y, new_running_mean, new_running_var)``.

    Reference: P. Luo, J. Ren, Z. Peng, R. Zhang, J. Li, "Differentiable Learning-to-Normalize
    via Switchable Normalization", ICLR 2019 (arXiv:1806.10779), Eq. (3)-(5).
    """
    xf = x.to(compute_dtype(x))
    flat = xf.reshape(xf.shape[0], xf.shape[1], -1)
    var_in, mean_in = stable_var_mean(flat, [2])  # (N, C, 1)
    mean, var, running_mean, running_var = switchable_statistics(
        mean_in,
        var_in,
        mean_weight,
        var_weight,
        running_mean,
        running_var,
        training=training,
        momentum=momentum,
        positions=flat.shape[2],
    )
    x_hat = ((flat - mean) * torch.rsqrt(var + eps)).reshape(xf.shape)
    return affine(x_hat, weight, bias).to(x.dtype), running_mean, running_var


def switchable_statistics(
    mean_in: Tensor,
    var_in: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    *,
    training: bool,
    momentum: float | Tensor,
    positions: int,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The mixed mean and variance ``(N, C, 1)`` of ``switchable_norm`` from the IN ones
    ``(N, C, 1)`` over ``positions`` values each, and the new running statistics."""
    n, c = mean_in.shape[:2]
    mean_ln, var_ln = merge_statistics(mean_in, var_in, 1)
    if training or running_mean is None or running_var is None:
        mean_bn, var_bn = merge_statistics(mean_in, var_in, 0)
        if training and running_mean is not None and running_var is not None:
            m = n * positions
            with torch.no_grad():
                unbiased = var_bn.detach().reshape(-1) * (m / max(m - 1, 1))
                running_mean = (1 - momentum) * running_mean + momentum * mean_bn.reshape(-1)
                running_var = (1 - momentum) * running_var + momentum * unbiased
    else:
        mean_bn = running_mean.to(mean_in.dtype).reshape(1, c, 1)
        var_bn = running_var.to(mean_in.dtype).reshape(1, c, 1)
    wm = torch.softmax(mean_weight.to(mean_in.dtype), 0)
    wv = torch.softmax(var_weight.to(mean_in.dtype), 0)
    mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
    var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
    return mean, var, running_mean, running_var
