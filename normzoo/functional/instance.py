"""Instance Normalization (Ulyanov, Vedaldi & Lempitsky, 2016), from its definition."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._stats import affine, compute_dtype, reduce_dims, stable_var_mean


def instance_norm(
    x: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    use_input_stats: bool = True,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    r"""Instance Normalization: statistics per sample and channel, over the spatial positions.

    .. math::
        \mu_{ti} = \frac{1}{HW}\sum_{l,m} x_{tilm}, \quad
        \sigma^2_{ti} = \frac{1}{HW}\sum_{l,m} (x_{tilm} - \mu_{ti})^2, \quad
        y_{tijk} = \gamma_i \frac{x_{tijk} - \mu_{ti}}{\sqrt{\sigma^2_{ti} + \epsilon}} + \beta_i

    With ``use_input_stats`` the instance statistics normalize and, when running statistics
    are given, these are updated with the batch average of the instance means and of the
    *unbiased* instance variances (what ``torch.nn.InstanceNorm*d(track_running_stats=True)``
    stores). Without it the running statistics normalize every instance.

    Returns:
        ``(y, new_running_mean, new_running_var)``; the arguments are never modified.

    Reference: D. Ulyanov, A. Vedaldi, V. Lempitsky, "Instance Normalization: The Missing
    Ingredient for Fast Stylization", arXiv:1607.08022, Eq. (2).
    """
    xf = x.to(compute_dtype(x))
    if use_input_stats or running_mean is None or running_var is None:
        var, mean = stable_var_mean(xf, reduce_dims(xf, batch=False, channel=False))
        x_hat = (xf - mean) * torch.rsqrt(var + eps)
        if use_input_stats and running_mean is not None and running_var is not None:
            m = xf[0, 0].numel()
            with torch.no_grad():
                batch_mean = mean.detach().reshape(x.shape[0], -1).mean(0)
                batch_var = (var.detach() * (m / max(m - 1, 1))).reshape(x.shape[0], -1).mean(0)
                running_mean = (1 - momentum) * running_mean + momentum * batch_mean
                running_var = (1 - momentum) * running_var + momentum * batch_var
    else:
        shape = (1, -1) + (1,) * (xf.dim() - 2)
        mean = running_mean.reshape(shape).to(xf.dtype)
        var = running_var.reshape(shape).to(xf.dtype)
        x_hat = (xf - mean) * torch.rsqrt(var + eps)
    return affine(x_hat, weight, bias).to(x.dtype), running_mean, running_var
