"""Batch Normalization (Ioffe & Szegedy, 2015), from its definition."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._stats import affine, compute_dtype, reduce_dims, stable_var_mean


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    training: bool,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    r"""Batch Normalization, written as the paper writes it.

    .. math::
        \mu_\mathcal{B} = \frac{1}{m}\sum_i x_i, \quad
        \sigma^2_\mathcal{B} = \frac{1}{m}\sum_i (x_i - \mu_\mathcal{B})^2, \quad
        y = \gamma \, \frac{x - \mu_\mathcal{B}}{\sqrt{\sigma^2_\mathcal{B} + \epsilon}} + \beta

    The statistics are per channel, over the batch and every spatial position
    (``m = N * H * W`` for an ``(N, C, H, W)`` input). In training (or when no running
    statistics are given) the batch statistics normalize; otherwise the running ones do.

    When ``training`` and running statistics are given, they are updated as
    ``running = (1 - momentum) * running + momentum * batch_stat``, with the *unbiased*
    batch variance ``m / (m - 1) * sigma^2_B`` (the population estimate the paper uses at
    inference, and what ``torch.nn.BatchNorm`` stores).

    Args:
        x: input of shape ``(N, C, *spatial)``.
        running_mean, running_var: ``(C,)`` running statistics, or ``None``. Never modified.
        weight, bias: ``(C,)`` affine parameters gamma and beta, or ``None``.
        training: use (and update) batch statistics.
        momentum: the update factor of the running statistics: a float, or a 0-d tensor
            (the modules pass one for momentum=None inside torch.compile).
        eps: added to the variance for numerical stability.

    Returns:
        ``(y, new_running_mean, new_running_var)``. The running statistics are new tensors
        (or the inputs unchanged when not updated). ``y`` has the dtype of ``x``; statistics
        are computed in float32 for half-precision inputs.

    Reference: S. Ioffe, C. Szegedy, "Batch Normalization: Accelerating Deep Network Training
    by Reducing Internal Covariate Shift", ICML 2015, Algorithm 1 and 2.
    """
    xf = x.to(compute_dtype(x))
    use_batch_stats = training or running_mean is None or running_var is None
    if use_batch_stats:
        dims = reduce_dims(xf, batch=True, channel=False)
        var, mean = stable_var_mean(xf, dims)
        x_hat = (xf - mean) * torch.rsqrt(var + eps)
        if training and running_mean is not None and running_var is not None:
            m = xf.numel() // xf.shape[1]
            with torch.no_grad():
                batch_mean = mean.detach().reshape(-1)
                unbiased_var = var.detach().reshape(-1) * (m / max(m - 1, 1))
                running_mean = (1 - momentum) * running_mean + momentum * batch_mean
                running_var = (1 - momentum) * running_var + momentum * unbiased_var
    else:
        shape = (1, -1) + (1,) * (xf.dim() - 2)
        mean = running_mean.reshape(shape).to(xf.dtype)
        var = running_var.reshape(shape).to(xf.dtype)
        x_hat = (xf - mean) * torch.rsqrt(var + eps)
    return affine(x_hat, weight, bias).to(x.dtype), running_mean, running_var
