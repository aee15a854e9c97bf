"""Ghost Batch Normalization."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import functional
from normzoo.norms.batch import BatchNorm


class GhostBatchNorm(BatchNorm):
    r"""Ghost Batch Normalization: BN statistics per virtual batch of the batch.

    .. math::
        y_i = \gamma \, \frac{x_i - \mu_{\mathcal{B}_S(i)}}
              {\sqrt{\sigma^2_{\mathcal{B}_S(i)} + \epsilon}} + \beta

    In training the batch is split, in order, into virtual ("ghost") batches of
    ``virtual_batch_size`` samples, each normalized with its own statistics; the last one is
    smaller when ``N`` is not a multiple. A virtual batch larger than a batch that is not a
    multiple of it is an error. The running statistics take one BN update per virtual batch
    (``num_batches_tracked`` counts virtual batches); eval is BN with the running statistics.
    With ``virtual_batch_size`` equal to the batch size it is exactly BN. Checkpoints are BN's.

    Args:
        num_features: the channel count ``C``.
        virtual_batch_size: samples per virtual batch, ``> 0``. Default ``32``.
        eps, momentum, affine, track_running_stats: as ``BatchNorm``.
        impl: ``"fast"`` (torch's BN kernel per virtual batch) or ``"reference"``.

    Reference: E. Hoffer, I. Hubara, D. Soudry, "Train longer, generalize better: closing the
    generalization gap in large batch training of neural networks", NeurIPS 2017.
    """

    def __init__(
        self,
        num_features: int,
        virtual_batch_size: int = 32,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        vbs = virtual_batch_size
        if isinstance(vbs, bool) or not isinstance(vbs, numbers.Integral):
            raise TypeError(
                f"virtual_batch_size must be a positive int (samples per virtual batch), "
                f"got {type(vbs).__name__} {vbs!r}"
            )
        if vbs <= 0:
            raise ValueError(
                f"virtual_batch_size must be a positive int (samples per virtual batch), got {vbs}"
            )
        self.virtual_batch_size = int(vbs)
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            impl=impl,
            device=device,
            dtype=dtype,
        )

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if not self._uses_batch_statistics() or x.numel() == 0:
            return
        n, vbs = x.shape[0], self.virtual_batch_size
        if vbs > n and n % vbs:
            raise ValueError(
                f"{type(self).__name__}: virtual_batch_size={vbs} is larger than the batch "
                f"(N={n}), which is not a multiple of it; use virtual_batch_size <= {n}"
            )
        smallest = n % vbs or vbs
        if smallest * (x.numel() // (n * x.shape[1])) == 1:
            raise ValueError(
                f"{type(self).__name__} needs more than 1 value per channel in every virtual "
                f"batch; a batch of N={n} in virtual batches of {vbs} leaves one of 1 sample "
                f"(input shape {tuple(x.shape)}); choose a virtual_batch_size that divides N"
            )

    def _forward(self, x: Tensor) -> Tensor:
        if not self._uses_batch_statistics():
            return super()._forward(x)
        update = self.training and self.track_running_stats
        tracked = 0
        if update:
            tracked = int(self.num_batches_tracked)
            self.num_batches_tracked.add_(math.ceil(x.shape[0] / self.virtual_batch_size))
        if self.impl == "reference":
            y, mean, var = functional.ghost_batch_norm(
                x,
                self.running_mean if update else None,
                self.running_var if update else None,
                self.weight,
                self.bias,
                virtual_batch_size=self.virtual_batch_size,
                training=True,
                momentum=self.momentum,
                num_batches_tracked=tracked,
                eps=self.eps,
            )
            if update:
                with torch.no_grad():
                    self.running_mean.copy_(mean)
                    self.running_var.copy_(var)
            return y
        outputs = []
        for j, chunk in enumerate(x.split(self.virtual_batch_size), start=1):
            factor = 1.0 / (tracked + j) if self.momentum is None else self.momentum
            rm, rv = (self.running_mean, self.running_var) if update else (None, None)
            outputs.append(
                F.batch_norm(chunk, rm, rv, self.weight, self.bias, True, factor, self.eps)
            )
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]  # one: no copy

    def _repr_structure(self) -> list[str]:
        return [f"virtual_batch_size={self.virtual_batch_size}"]
