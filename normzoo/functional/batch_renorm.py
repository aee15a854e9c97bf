"""Batch Renormalization (Ioffe, 2017), from its definition."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._stats import affine, compute_dtype, reduce_dims, stable_var_mean


def batch_renorm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    training: bool,
    r_max: float | Tensor = 3.0,
    d_max: float | Tensor = 5.0,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Batch Renormalization: batch statistics corrected towards the running ones.

    In training, with the batch statistics ``mu_B``, ``sigma_B = sqrt(Var_B + eps)`` and the
    running ones ``mu``, ``sigma = sqrt(running_var + eps)``:

    .. math::
        r = \mathrm{sg}\left(\mathrm{clip}_{[1/r_{max},\, r_{max}]}
            \frac{\sigma_\mathcal{B}}{\sigma}\right), \quad
        d = \mathrm{sg}\left(\mathrm{clip}_{[-d_{max},\, d_{max}]}
            \frac{\mu_\mathcal{B} - \mu}{\sigma}\right), \quad
        y = \gamma \left(\frac{x - \mu_\mathcal{B}}{\sigma_\mathcal{B}}\, r + d\right) + \beta

    where ``sg`` stops the gradient (r and d are constants to backprop). ``r_max = 1``,
    ``d_max = 0`` is plain BN. In eval ``y`` is BN with the running statistics, which the
    renormalized training output approximates. The running statistics are updated like BN's
    (the *unbiased* batch variance, with ``momentum``), after r and d are computed from the
    old ones. The paper keeps a running ``sigma``; we keep ``running_var`` so checkpoints are
    BN's, and ``sigma = sqrt(running_var + eps)``.

    Args:
        x: input ``(N, C, *spatial)``.
        running_mean, running_var: ``(C,)``; never modified.
        weight, bias: ``(C,)`` or ``None``.
        training: renormalize with batch statistics and update the running ones.
        r_max, d_max: the clipping limits of this step (the module runs the paper's schedule):
            floats, or 0-d tensors (inside torch.compile).
        momentum: update factor of the running statistics (a float or a 0-d tensor).
        eps: added to the variances.

    Returns:
        ``(y, new_running_mean, new_running_var)``.

    Reference: S. Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models", NeurIPS 2017, Algorithm 1.
    """
    xf = x.to(compute_dtype(x))
    shape = (1, -1) + (1,) * (xf.dim() - 2)
    mu = running_mean.to(xf.dtype).reshape(shape)
    sigma = torch.sqrt(running_var.to(xf.dtype).reshape(shape) + eps)
    if not training:
        return affine((xf - mu) / sigma, weight, bias).to(x.dtype), running_mean, running_var
    var_b, mu_b = stable_var_mean(xf, reduce_dims(xf, batch=True, channel=False))
    sigma_b = torch.sqrt(var_b + eps)
    with torch.no_grad():
        r = (sigma_b / sigma).clamp(1.0 / r_max, r_max)
        d = ((mu_b - mu) / sigma).clamp(-d_max, d_max)
        m = xf.numel() // xf.shape[1]
        unbiased = var_b.reshape(-1) * (m / max(m - 1, 1))
        new_mean = (1 - momentum) * running_mean + momentum * mu_b.reshape(-1)
        new_var = (1 - momentum) * running_var + momentum * unbiased
    x_hat = (xf - mu_b) / sigma_b * r + d
    return affine(x_hat, weight, bias).to(x.dtype), new_mean, new_var
