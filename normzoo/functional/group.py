"""Group Normalization (Wu & He, 2018), from its definition."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._stats import affine, compute_dtype, stable_var_mean


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    eps: float = 1e-5,
) -> Tensor:
    r"""Group Normalization: per-sample statistics over groups of ``C / G`` channels.

    .. math::
        \mathcal{S}_i = \{k \mid k_N = i_N,\ \lfloor k_C / (C/G) \rfloor
                                             = \lfloor i_C / (C/G) \rfloor\}, \quad
        \hat{x}_i = \frac{x_i - \mu_i}{\sqrt{\sigma_i^2 + \epsilon}}, \quad
        y_i = \gamma_{i_C} \hat{x}_i + \beta_{i_C}

    with ``mu_i`` and ``sigma_i^2`` the mean and (biased) variance over ``S_i``: the sample's
    channels of the same group and all their spatial positions. ``G = 1`` is Layer
    Normalization, ``G = C`` is Instance Normalization.

    Reference: Y. Wu, K. He, "Group Normalization", ECCV 2018, Eq. (1)-(4) and (7).
    """
    n = x.shape[0]
    xf = x.to(compute_dtype(x))
    grouped = xf.reshape(n, num_groups, -1)
    var, mean = stable_var_mean(grouped, [2])
    x_hat = ((grouped - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    return affine(x_hat, weight, bias).to(x.dtype)
