"""Frozen Batch Normalization: BN with fixed statistics and affine, for fine-tuning."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import functional
from normzoo.norms.base import Norm


class FrozenBatchNorm(Norm):
    r"""Batch Normalization with fixed statistics and a fixed affine map.

    .. math::
        y = \gamma \, \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    where ``mu``/``sigma^2`` (``running_mean``/``running_var``) and ``gamma``/``beta``
    (``weight``/``bias``) are *buffers*: nothing is learned or updated, in train or eval mode
    alike, and only the input gets a gradient. This is BN in eval mode, frozen, as detection
    models use it to fine-tune backbones on batches too small for batch statistics. The
    state-dict keys are BN's, and any BN checkpoint loads (torch's or normzoo's, with or
    without ``num_batches_tracked``; one without an affine loads as ``weight=1``, ``bias=0``).
    Use ``normzoo.convert(model, "frozenbatchnorm")`` to freeze the BNs of a model.

    Args:
        num_features: the channel count ``C``.
        eps: added to the variance. Default ``1e-5``.
        affine: keep a (fixed) per-channel ``weight`` and ``bias``. Default ``True``.
        track_running_stats: must be ``True``: the statistics are fixed, never batch ones.
        impl: ``"fast"`` (torch's inference BN kernel) or ``"reference"``.

    Reference: S. Ioffe, C. Szegedy, "Batch Normalization", ICML 2015, Algorithm 2; the frozen
    BN of Detectron (R. Girshick et al., 2018) and Mask R-CNN (K. He et al., ICCV 2017).
    """

    statistics_per = ("channel",)
    reduces_over = ()
    uses_batch_stats = False
    batchnorm_statistics = True

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not track_running_stats:
            raise ValueError(
                "FrozenBatchNorm normalizes with fixed statistics and cannot compute or train "
                "them: track_running_stats must be True, got False (use 'batchnorm' to train "
                "the statistics)"
            )
        super().__init__(num_features, eps=eps, affine=False, impl=impl, device=device, dtype=dtype)
        self.affine = bool(affine)
        factory = {"device": device, "dtype": dtype}
        # weight and bias are buffers: they move with .to() and the state dict, never train.
        del self.weight, self.bias
        for name, fill in (("weight", 1.0), ("bias", 0.0)):
            value = torch.full((self.num_features,), fill, **factory) if self.affine else None
            self.register_buffer(name, value)
        self._init_running_stats(0.0, device, dtype)
        self.reset_parameters()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A BN checkpoint without affine (affine=False) is the identity affine map.
        if self.affine and prefix + "running_mean" in state_dict:
            for name, fill in (("weight", 1.0), ("bias", 0.0)):
                if prefix + name not in state_dict:
                    state_dict[prefix + name] = torch.full_like(getattr(self, name), fill)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _forward(self, x: Tensor) -> Tensor:
        if self.impl == "reference":
            return functional.frozen_batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, eps=self.eps
            )
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps:g}, affine={self.affine}, frozen=True"
            + (f", impl={self.impl!r}" if self.impl != "fast" else "")
            + (f", activation={self.activation!r}" if self.activation is not None else "")
        )
