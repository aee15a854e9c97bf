"""Frozen Batch Normalization: BN with fixed statistics and affine, for fine-tuning."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import _native, functional
from normzoo._native import zoo_kernels
from normzoo.norms import _triton, _triton_zoo
from normzoo.norms._row_map import rows
from normzoo.norms.base import Norm

#: Below this many elements the native path's fixed cost (the operator call and its checks)
#: is more than it saves, and torch's inference ``batch_norm`` runs (on a 2-core Xeon, torch
#: 2.13, fwd+bwd against it: 1.23x at 32K elements, 0.86x at 128K).
NATIVE_MIN_NUMEL = 1 << 17


def use_native_affine(x: Tensor, *buffers: Tensor | None) -> bool:
    """Whether FrozenBatchNorm runs on ``zoo.c``'s per-channel map (``frozen_forward``):
    float32 CPU input ``(N, C, *)`` of at least ``NATIVE_MIN_NUMEL`` elements, contiguous or
    channels_last; ``buffers`` (the statistics, then the affine, ``None`` where absent) float32
    and contiguous; native kernels available; outside ``torch.compile``."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and all(
            b is None or (b.dtype == torch.float32 and b.is_cpu and b.is_contiguous())
            for b in buffers
        )
        and x.dim() >= 2
        and x.numel() >= NATIVE_MIN_NUMEL
        and zoo_kernels.layout(rows(x)) is not None
        and not _native.capturing()
        and _native.available("zoo")
    )


class _FrozenAffine(torch.autograd.Function):
    """``y = a_c x + b_c`` (with ``relu``: ``max(a_c x + b_c, 0)``) on the native map, ``a``
    and ``b`` from the statistics and the affine (``zoo_kernels.frozen_forward``); the backward
    ``dx = a_c dy`` (0 where ``y <= 0`` with ``relu``) reads ``dy`` and, with the ReLU, ``y``:
    one pass each way, and only ``y`` saved (the next layer saves it anyway)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        mean: Tensor,
        var: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        relu: bool,
    ) -> Tensor:
        y = zoo_kernels.frozen_forward(x, mean, var, weight, bias, eps, relu)
        ctx.relu, ctx.eps = relu, eps
        ctx.save_for_backward(y if relu else None, var, weight)
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        y, var, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiable torch ops
            a = (
                torch.rsqrt(var + ctx.eps)
                if weight is None
                else weight * torch.rsqrt(var + ctx.eps)
            )
            a = a.view(1, -1, 1)
            dx = dy * a if y is None else torch.where(y <= 0, 0.0, dy) * a
        else:
            if y is None and zoo_kernels.layout(dy) is None:  # e.g. expanded by .sum()
                dy = dy.contiguous()
            dx = zoo_kernels.frozen_backward(dy, dy if y is None else y, var, weight, ctx.eps,
                                             ctx.relu)  # fmt: skip
        return dx, None, None, None, None, None, None


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
        impl: ``"fast"`` (float32 CPU input from ``NATIVE_MIN_NUMEL`` elements: one native
            pass each way, ``torch.ops.normzoo.frozen_batch_norm``, with a fused
            ``activation="relu"``; torch's inference BN kernel otherwise) or ``"reference"``.

    Reference: S. Ioffe, C. Szegedy, "Batch Normalization", ICML 2015, Algorithm 2; the frozen
    BN of Detectron (R. Girshick et al., 2018) and Mask R-CNN (K. He et al., ICCV 2017).
    """

    statistics_per = ("channel",)
    fuses_activation = True
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

    def _forward(self, x: Tensor, relu: bool = False) -> Tensor:
        if self.impl == "reference":
            y = functional.frozen_batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, eps=self.eps
            )
        elif _triton.serves_batch(x, *self._frozen_buffers(), kind="frozen"):
            # CUDA, NORMZOO_TRITON=all (its eager path's host time won the A/B): one map
            # kernel each way, the ReLU fused
            return _triton_zoo.frozen_batch_norm(x, *self._frozen_buffers(), self.eps, relu)
        elif use_native_affine(x, self.running_mean, self.running_var, self.weight, self.bias):
            args = (self.running_mean, self.running_var, self.weight, self.bias, self.eps, relu)
            if _native.ops_available():  # a C++ autograd node: no Python in the backward
                return torch.ops.normzoo.frozen_batch_norm(x, *args)
            x3 = rows(x)
            if torch.is_grad_enabled() and x.requires_grad:
                y3 = _FrozenAffine.apply(x3, *args)
            else:
                y3 = zoo_kernels.frozen_forward(x3, *args)
            return y3.view(x.shape)  # a view in x's layout: channels_last stays so
        else:
            y = F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                self.eps,
            )  # fmt: skip
        return torch.relu(y) if relu else y

    def _frozen_buffers(self) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        return self.running_mean, self.running_var, self.weight, self.bias

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps:g}, affine={self.affine}, frozen=True"
            + (f", impl={self.impl!r}" if self.impl != "fast" else "")
            + (f", activation={self.activation!r}" if self.activation is not None else "")
        )
