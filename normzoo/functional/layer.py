"""Layer Normalization (Ba, Kiros & Hinton, 2016), from its definition."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._stats import affine, compute_dtype, reduce_dims, stable_var_mean


def layer_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    eps: float = 1e-5,
    channels_last: bool = False,
) -> Tensor:
    r"""Layer Normalization: per-sample statistics over every feature of the sample.

    .. math::
        \mu = \frac{1}{H}\sum_{i=1}^{H} a_i, \quad
        \sigma^2 = \frac{1}{H}\sum_{i=1}^{H} (a_i - \mu)^2, \quad
        y = \gamma \odot \frac{a - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    For a channels-first input ``(N, C, *spatial)`` the ``H`` features of a sample are all of
    its channels and positions (the "LN" of the Group Normalization paper, equal to
    ``GroupNorm(1, C)``), with a per-channel ``gamma``/``beta`` of shape ``(C,)``. With
    ``channels_last=True`` the input is a token tensor ``(..., C)`` and each token is
    normalized over its ``C`` features (``torch.nn.LayerNorm(C)``).

    Reference: J. L. Ba, J. R. Kiros, G. E. Hinton, "Layer Normalization", arXiv:1607.06450.
    """
    xf = x.to(compute_dtype(x))
    if channels_last:
        var, mean = stable_var_mean(xf, [-1])
        y = (xf - mean) * torch.rsqrt(var + eps)
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y.to(x.dtype)
    var, mean = stable_var_mean(xf, reduce_dims(xf, batch=False, channel=True))
    return affine((xf - mean) * torch.rsqrt(var + eps), weight, bias).to(x.dtype)
