"""Synchronized Batch Normalization over the processes of a ``torch.distributed`` group."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import FunctionCtx

from normzoo import functional
from normzoo.functional._stats import affine, compute_dtype, reduce_dims
from normzoo.functional.sync_batch import distributed_world_size
from normzoo.norms.base import Norm
from normzoo.norms.batch import BatchNorm


class _SyncBatchNormFunction(torch.autograd.Function):
    """BN on the union of every process's batch, with a hand-written backward.

    Forward: two ``all_reduce`` calls (sums and counts, then squared deviations). Backward: one
    ``all_reduce`` of the two gradient terms ``sum(dy)`` and ``sum(dy * x_hat)``, then

        dx = gamma / sigma * (dy - sum_all(dy) / m - x_hat * sum_all(dy * x_hat) / m)

    while ``weight``/``bias`` get their local gradients (DDP averages them across processes).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        momentum: float,
        eps: float,
        group: Any,
    ) -> Tensor:
        xf = x.to(compute_dtype(x))
        dims = reduce_dims(xf, batch=True, channel=False)
        shape = (1, -1) + (1,) * (xf.dim() - 2)
        totals = torch.cat([xf.sum(dims), xf.new_full((1,), xf.numel() // xf.shape[1])])
        dist.all_reduce(totals, group=group)
        m = totals[-1:]
        mean = totals[:-1] / m
        centered = xf - mean.reshape(shape)
        sq = (centered * centered).sum(dims)
        dist.all_reduce(sq, group=group)
        var = sq / m
        invstd = torch.rsqrt(var + eps)
        x_hat = centered * invstd.reshape(shape)
        if running_mean is not None and running_var is not None:
            unbiased = var * (m / (m - 1).clamp_min(1))
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_(unbiased.to(running_var.dtype), momentum)
        ctx.save_for_backward(x_hat, weight, invstd, m)
        ctx.group = group
        ctx.has_bias = bias is not None
        return affine(x_hat, weight, bias).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x_hat, weight, invstd, m = ctx.saved_tensors
        g = grad_out.to(x_hat.dtype)
        dims = reduce_dims(g, batch=True, channel=False)
        shape = (1, -1) + (1,) * (g.dim() - 2)
        sum_dy = g.sum(dims)
        sum_dy_xhat = (g * x_hat).sum(dims)
        grad_weight = sum_dy_xhat.to(weight.dtype) if weight is not None else None
        grad_bias = sum_dy.clone() if ctx.has_bias else None
        # Every process reduces, even one with an empty batch: the collectives must match.
        terms = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(terms, group=ctx.group)
        mean_dy, mean_dy_xhat = (terms / m).chunk(2)
        scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
        grad_x = (g - mean_dy.reshape(shape) - x_hat * mean_dy_xhat.reshape(shape)) * scale.reshape(
            shape
        )
        if grad_bias is not None:
            grad_bias = grad_bias.to(weight.dtype if weight is not None else grad_bias.dtype)
        return grad_x.to(grad_out.dtype), grad_weight, grad_bias, None, None, None, None, None


class SyncBatchNorm(BatchNorm):
    r"""Batch Normalization with statistics reduced over every process of a group.

    .. math::
        y = \gamma \, \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta, \quad
        \mu, \sigma^2 \text{ over the batches of all processes together}

    In training, each process's sums are combined with ``torch.distributed.all_reduce``, so the
    statistics, the outputs, the input gradients and the running statistics are those of BN on
    the concatenated batch, with each process weighted by its sample count; a process with an
    empty batch takes part (and gets an empty output). The backward all-reduces the gradient
    terms too. It runs over gloo on CPU (torch's ``SyncBatchNorm`` refuses CPU tensors) and
    over NCCL on GPUs. Without an initialised process group, with a group of one process, or
    in eval mode it is exactly ``BatchNorm``. Every process must run the forward and the
    backward of each SyncBatchNorm in the same order, as DDP does.

    ``normzoo.convert(model, "syncbatchnorm")`` swaps a model's BNs for it, and
    ``normzoo.revert`` undoes that; ``normzoo.training.layer_sync`` does both around DDP.

    Args:
        num_features, eps, momentum, affine, track_running_stats: as ``BatchNorm``.
        process_group: the group to synchronize over; ``None``: the default (whole world).
        impl: ``"fast"`` (one fused backward reduction) or ``"reference"``
            (``normzoo.functional.sync_batch_norm``, autograd through differentiable
            ``all_reduce``).

    Reference: S. Ioffe, C. Szegedy, "Batch Normalization", ICML 2015; H. Zhang et al.,
    "Context Encoding for Semantic Segmentation", CVPR 2018 (cross-GPU BN).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        process_group: Any = None,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
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
        self.process_group = process_group

    def _synchronized(self) -> bool:
        return self.training and distributed_world_size(self.process_group) > 1

    def check_input(self, x: Tensor) -> None:
        if self._synchronized():
            # A process may hold 1 sample, or none: only the global batch must be > 1.
            Norm.check_input(self, x)
        else:
            super().check_input(x)

    def _empty_forward(self, x: Tensor) -> Tensor:
        # synchronized, a rank with no samples still joins the statistics' collectives
        return self._forward(x) if self._synchronized() else super()._empty_forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        if not self._synchronized():
            return super()._forward(x)
        factor = self._update_factor() if self.track_running_stats else 0.0
        if self.impl == "reference" or isinstance(factor, Tensor):  # momentum=None, captured
            y, mean, var = functional.sync_batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                training=True,
                momentum=factor,
                eps=self.eps,
                process_group=self.process_group,
            )
            if self.track_running_stats:
                with torch.no_grad():
                    self.running_mean.copy_(mean)
                    self.running_var.copy_(var)
            return y
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return _SyncBatchNormFunction.apply(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            factor,
            self.eps,
            group,
        )
