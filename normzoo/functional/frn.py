"""Filter Response Normalization with TLU (Singh & Krishnan, 2019), from its definition."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._stats import affine, compute_dtype


def filter_response_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    tau: Tensor | None = None,
    *,
    eps: float | Tensor = 1e-6,
) -> Tensor:
    r"""Filter Response Normalization followed by the Thresholded Linear Unit.

    .. math::
        \nu^2 = \frac{1}{N}\sum_i x_i^2, \quad
        \hat{x} = \frac{x}{\sqrt{\nu^2 + \epsilon}}, \quad
        y = \gamma \hat{x} + \beta, \quad
        z = \max(y, \tau)

    with ``nu^2`` the mean squared value of one sample's channel over its ``N`` spatial
    positions (no mean is subtracted), and ``tau`` a learned per-channel threshold (``None``:
    no TLU, ``z = y``). ``eps`` may be a tensor: the paper's learnable epsilon
    ``eps + |eps_l|`` is computed by the module and passed here, so it gets a gradient.

    Reference: S. Singh, S. Krishnan, "Filter Response Normalization Layer: Eliminating Batch
    Dependence in the Training of Deep Neural Networks", CVPR 2020 (arXiv:1911.09737), Eq. (1)-(3).
    """
    xf = x.to(compute_dtype(x))
    dims = list(range(2, xf.dim()))
    nu2 = (xf * xf).mean(dims, keepdim=True) if dims else xf * xf
    y = affine(xf * torch.rsqrt(nu2 + eps), weight, bias)
    if tau is not None:
        y = torch.maximum(y, tau.to(y.dtype).reshape((1, -1) + (1,) * (xf.dim() - 2)))
    return y.to(x.dtype)
