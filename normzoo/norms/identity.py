"""The no-normalization baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo.functional._stats import affine as _affine
from normzoo.norms.base import Norm


class Identity(Norm):
    """No normalization: returns its input (for "no norm" baselines).

    It checks its input like every norm, so a model built with ``norm="none"`` fails on the
    same bad shapes. ``affine`` defaults to ``False`` here, so the baseline is exactly the
    network without norm layers; ``affine=True`` keeps a per-channel scale and shift.
    """

    statistics_per = ()
    reduces_over = ()
    uses_batch_stats = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = False,
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
        self.reset_parameters()

    def _forward(self, x: Tensor) -> Tensor:
        if not self.affine:
            return x
        if self.channels_last:
            return x * self.weight + self.bias
        return _affine(x, self.weight, self.bias)
