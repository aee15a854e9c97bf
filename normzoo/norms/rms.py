"""Root Mean Square Layer Normalization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import functional
from normzoo.functional._stats import affine as _affine
from normzoo.functional._stats import compute_dtype
from normzoo.norms.base import Norm


class RMSNorm(Norm):
    r"""RMSNorm: each sample rescaled by the root mean square of its features, no centering.

    .. math::
        y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \odot \gamma + \beta

    With the default ``channels_last=False`` the input is ``(N, C, *spatial)`` and the mean
    square is taken per sample over ``C`` and every position (as normzoo's channels-first
    LayerNorm). With ``channels_last=True`` the input is a token tensor ``(..., C)``
    rescaled over its last dim: with ``bias`` at 0 this is exactly
    ``torch.nn.RMSNorm(C, eps=eps)``. Unlike torch, there is a per-channel ``bias`` (the
    paper's ``b``; the shared interface of normzoo), initialised to 0.

    Args:
        num_features: the channel count ``C``.
        eps: added to the mean square inside the root. Default ``1e-5``.
        affine: learn per-channel ``weight`` and ``bias``. Default ``True``.
        channels_last: token input ``(..., C)``. Default ``False``.
        impl: ``"fast"`` (torch's ``rms_norm`` kernel) or ``"reference"``.

    Reference: B. Zhang, R. Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
    """

    statistics_per = ("batch",)
    reduces_over = ("channel", "spatial")
    uses_batch_stats = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        channels_last: bool = False,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features,
            eps=eps,
            affine=affine,
            impl=impl,
            channels_last=channels_last,
            device=device,
            dtype=dtype,
        )
        if self.channels_last:
            self.statistics_per = ("batch", "spatial")
            self.reduces_over = ("channel",)
        self.reset_parameters()

    def _forward(self, x: Tensor) -> Tensor:
        if self.impl == "reference":
            return functional.rms_norm(
                x, self.weight, self.bias, eps=self.eps, channels_last=self.channels_last
            )
        xf = x.to(compute_dtype(x))  # half inputs: statistics and affine in float32
        if self.channels_last:
            y = F.rms_norm(xf, (self.num_features,), self.weight, self.eps)
            y = y if self.bias is None else y + self.bias
        else:
            y = _affine(F.rms_norm(xf, tuple(x.shape[1:]), None, self.eps), self.weight, self.bias)
        return y.to(x.dtype)
