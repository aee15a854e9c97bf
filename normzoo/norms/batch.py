"""Batch Normalization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import functional
from normzoo.norms.base import Norm, check_momentum


class BatchNorm(Norm):
    r"""Batch Normalization over an ``(N, C, *spatial)`` input (0 to 3 spatial dims).

    .. math::
        y = \gamma \, \frac{x - \mathrm{E}_\mathcal{B}[x]}{\sqrt{\mathrm{Var}_\mathcal{B}[x]
            + \epsilon}} + \beta

    Mean and (biased) variance are computed per channel over the batch and every spatial
    position. In training mode (``module.train()``) the batch statistics normalize and the
    running statistics are updated with momentum, using the *unbiased* batch variance; in
    eval mode (``module.eval()``) the running statistics normalize. With
    ``track_running_stats=False`` there are no running statistics and the batch statistics
    are used in both modes. One class serves every rank and equals ``torch.nn.BatchNorm1d``,
    ``BatchNorm2d`` and ``BatchNorm3d`` (outputs, gradients, buffers and state-dict keys).

    Args:
        num_features: the channel count ``C``.
        eps: added to the variance. Default ``1e-5``.
        momentum: running-average factor, or ``None`` for a cumulative average.
            Default ``0.1``.
        affine: learn a per-channel ``weight`` (gamma) and ``bias`` (beta). Default ``True``.
        track_running_stats: keep running statistics for eval mode. Default ``True``.
        impl: ``"fast"`` (the native kernel) or ``"reference"`` (``normzoo.functional``).

    Shape:
        input ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``; output the same.

    Reference: S. Ioffe, C. Szegedy, "Batch Normalization: Accelerating Deep Network Training
    by Reducing Internal Covariate Shift", ICML 2015.
    """

    statistics_per = ("channel",)
    reduces_over = ("batch", "spatial")
    uses_batch_stats = True
    batchnorm_statistics = True

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps=eps, affine=affine, impl=impl, device=device, dtype=dtype
        )
        if track_running_stats:
            self._init_running_stats(momentum, device, dtype)
        else:
            self.momentum = check_momentum(momentum)
        self.reset_parameters()

    def _uses_batch_statistics(self) -> bool:
        return self.training or not self.track_running_stats

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if self._uses_batch_statistics() and x.numel() // x.shape[1] == 1 and x.numel() > 0:
            raise ValueError(
                f"{type(self).__name__} needs more than 1 value per channel to compute batch "
                f"statistics, got input of shape {tuple(x.shape)}; use a batch larger than 1 "
                f"(or spatial size > 1), call .eval() to use running statistics, or use a norm "
                f"that does not depend on the batch (groupnorm, layernorm, instancenorm)"
            )

    def _forward(self, x: Tensor) -> Tensor:
        batch_stats = self._uses_batch_statistics()
        factor = 0.0
        if self.training and self.track_running_stats:
            factor = self._update_factor()
        if self.impl == "fast":
            return F.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                batch_stats,
                factor,
                self.eps,
            )
        y, mean, var = functional.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=batch_stats,
            momentum=factor,
            eps=self.eps,
        )
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(mean)
                self.running_var.copy_(var)
        return y
