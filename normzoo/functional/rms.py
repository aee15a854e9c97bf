"""Root Mean Square Layer Normalization (Zhang & Sennrich, 2019), from its definition."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._stats import affine, compute_dtype, reduce_dims


def rms_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    eps: float = 1e-5,
    channels_last: bool = False,
) -> Tensor:
    r"""RMSNorm: rescale each sample by the root mean square of its features, no centering.

    .. math::
        \mathrm{RMS}(a) = \sqrt{\frac{1}{n}\sum_{i=1}^{n} a_i^2 + \epsilon}, \quad
        y_i = \frac{a_i}{\mathrm{RMS}(a)}\, g_i + b_i

    For a channels-first input ``(N, C, *spatial)`` the ``n`` features of a sample are all of
    its channels and positions (like normzoo's channels-first LayerNorm), with per-channel
    ``g``/``b`` of shape ``(C,)``. With ``channels_last=True`` the input is a token tensor
    ``(..., C)`` and each token is rescaled over its ``C`` features: with ``b = 0`` this is
    exactly ``torch.nn.RMSNorm(C, eps=eps)``. ``eps`` sits inside the square root, as in torch.

    Reference: B. Zhang, R. Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019,
    Eq. (4).
    """
    xf = x.to(compute_dtype(x))
    if channels_last:
        y = xf * torch.rsqrt((xf * xf).mean(-1, keepdim=True) + eps)
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y.to(x.dtype)
    dims = reduce_dims(xf, batch=False, channel=True)
    y = xf * torch.rsqrt((xf * xf).mean(dims, keepdim=True) + eps)
    return affine(y, weight, bias).to(x.dtype)
