"""BatchNorm followed by injected, time-varying, non-zero-mean noise (Santurkar et al. 2018).

Santurkar, Tsipras, Ilyas and Madry ("How Does Batch Normalization Help Optimization?",
NeurIPS 2018, Sec. 2.1) test whether BatchNorm helps by stabilizing the distributions of the
layer inputs: they add noise with a random non-zero mean and non-unit variance after each
BatchNorm, drawn afresh at every training step, so the distributions shift more than without
BatchNorm, and find that the network still trains about as well as with plain BatchNorm.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.norms.batch import BatchNorm


class NoisyBatchNorm(BatchNorm):
    r"""BatchNorm whose output is shifted and scaled by noise redrawn at every training step.

    .. math::
        y = s_c \, \mathrm{BN}(x) + m_c, \quad
        m_c \sim \mathcal{U}(-\mu_{max}, \mu_{max}), \quad
        s_c \sim \mathcal{U}(1, \sigma_{max})

    with one ``m_c`` and ``s_c`` per channel, drawn at every training forward (time-varying
    noise) and, with ``per_sample=True``, per sample too. In eval mode no noise is added: the
    layer is plain BatchNorm. A device for the internal-covariate-shift experiment, not a
    norm to train with.

    Args:
        num_features: the channel count ``C``.
        noise_mean: ``mu_max``, the largest absolute noise mean. Default ``0.5``.
        noise_scale: ``sigma_max``, the largest noise scale. Default ``1.5``.
        per_sample: draw the noise per sample and channel, not per channel only.
            Default ``False``.
        eps: added to the variance. Default ``1e-5``.
        momentum: running-average factor, or ``None`` for a cumulative average.
        affine: learn a per-channel ``weight`` and ``bias``. Default ``True``.
        track_running_stats: keep running statistics for eval mode. Default ``True``.
        impl: ``"fast"`` or ``"reference"``.

    Reference: S. Santurkar, D. Tsipras, A. Ilyas, A. Madry, "How Does Batch Normalization
    Help Optimization?", NeurIPS 2018.
    """

    def __init__(
        self,
        num_features: int,
        noise_mean: float = 0.5,
        noise_scale: float = 1.5,
        per_sample: bool = False,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if noise_mean < 0 or noise_scale < 1:
            raise ValueError(
                f"noise_mean must be >= 0 and noise_scale >= 1, got noise_mean={noise_mean}, "
                f"noise_scale={noise_scale}"
            )
        super().__init__(
            num_features,
            eps=eps,
            momentum=momentum,
            affine=affine,
            track_running_stats=track_running_stats,
            impl=impl,
            device=device,
            dtype=dtype,
        )
        self.noise_mean = float(noise_mean)
        self.noise_scale = float(noise_scale)
        self.per_sample = bool(per_sample)

    def _forward(self, x: Tensor) -> Tensor:
        y = super()._forward(x)
        if not self.training:
            return y
        shape = [x.shape[0] if self.per_sample else 1, x.shape[1]] + [1] * (x.dim() - 2)
        u = torch.rand([2, *shape], device=x.device, dtype=x.dtype)
        mean = (2 * u[0] - 1) * self.noise_mean
        scale = 1 + u[1] * (self.noise_scale - 1)
        return y * scale + mean

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", noise_mean={self.noise_mean}, noise_scale={self.noise_scale}"
            + (", per_sample=True" if self.per_sample else "")
        )
