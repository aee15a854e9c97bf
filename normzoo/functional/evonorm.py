"""EvoNorm-B0 and EvoNorm-S0 (Liu, Brock, Simonyan & Le, 2020), from their definitions."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._stats import affine, compute_dtype, reduce_dims, stable_var_mean


def _per_channel(t: Tensor, dim: int) -> Tensor:
    return t.reshape((1, -1) + (1,) * (dim - 2))


def evonorm_b0(
    x: Tensor,
    v: Tensor,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    training: bool,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor | None]:
    r"""EvoNorm-B0: a batch-dependent normalization-activation layer.

    .. math::
        y = \frac{x}{\max\left(\sqrt{s^2_{b,w,h}(x) + \epsilon},\;
                     v_1 x + \sqrt{s^2_{w,h}(x) + \epsilon}\right)} \gamma + \beta

    with ``s^2_{b,w,h}`` the (biased) batch variance per channel over the samples and
    positions (in eval, or with no batch statistics wanted, the running variance), and
    ``s^2_{w,h}`` the instance variance of one sample's channel over its positions. ``v_1``
    is a learned per-channel vector. In training the running variance is updated like BN's
    (unbiased batch variance, ``momentum``).

    Returns:
        ``(y, new_running_var)``; the arguments are never modified.

    Reference: H. Liu, A. Brock, K. Simonyan, Q. V. Le, "Evolving Normalization-Activation
    Layers", NeurIPS 2020 (arXiv:2004.02967), Table 1 and Appendix.
    """
    xf = x.to(compute_dtype(x))
    if training or running_var is None:
        var_b, _ = stable_var_mean(xf, reduce_dims(xf, batch=True, channel=False))
        if training and running_var is not None:
            m = xf.numel() // xf.shape[1]
            with torch.no_grad():
                unbiased = var_b.detach().reshape(-1) * (m / max(m - 1, 1))
                running_var = (1 - momentum) * running_var + momentum * unbiased
    else:
        var_b = _per_channel(running_var.to(xf.dtype), xf.dim())
    dims = reduce_dims(xf, batch=False, channel=False)
    var_i = stable_var_mean(xf, dims)[0] if dims else torch.zeros_like(xf)
    v1 = _per_channel(v.to(xf.dtype), xf.dim())
    denom = torch.maximum(torch.sqrt(var_b + eps), v1 * xf + torch.sqrt(var_i + eps))
    return affine(xf / denom, weight, bias).to(x.dtype), running_var


def evonorm_s0(
    x: Tensor,
    v: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    eps: float = 1e-5,
) -> Tensor:
    r"""EvoNorm-S0: a batch-independent normalization-activation layer.

    .. math::
        y = \frac{x \cdot \sigma(v_1 x)}{\sqrt{s^2_{w,h,c/g}(x) + \epsilon}} \gamma + \beta

    with ``sigma`` the logistic sigmoid, ``v_1`` a learned per-channel vector and
    ``s^2_{w,h,c/g}`` the (biased) variance of one sample's group of ``C / G`` channels over
    them and their positions, as in Group Normalization. The output is *divided* by the group
    standard deviation, as the paper defines it (some public ports multiply).

    Reference: H. Liu, A. Brock, K. Simonyan, Q. V. Le, "Evolving Normalization-Activation
    Layers", NeurIPS 2020 (arXiv:2004.02967), Table 1 and Appendix.
    """
    xf = x.to(compute_dtype(x))
    n = xf.shape[0]
    var_g, _ = stable_var_mean(xf.reshape(n, num_groups, -1), [2])
    std = torch.sqrt(var_g + eps)
    num = xf * torch.sigmoid(_per_channel(v.to(xf.dtype), xf.dim()) * xf)
    y = (num.reshape(n, num_groups, -1) / std).reshape(xf.shape)
    return affine(y, weight, bias).to(x.dtype)
