"""Shared statistics helpers for the reference math."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Statistics of low-precision inputs are accumulated in float32, as torch's kernels do.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype statistics are computed in: float32 for half types, else the input's."""
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def reduce_dims(x: Tensor, *, batch: bool, channel: bool, spatial: bool = True) -> list[int]:
    """The dimensions of an ``(N, C, *spatial)`` tensor that a norm reduces over."""
    dims = []
    if batch:
        dims.append(0)
    if channel:
        dims.append(1)
    if spatial:
        dims.extend(range(2, x.dim()))
    return dims


def stable_var_mean(x: Tensor, dims: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Biased variance and mean over ``dims`` (keepdim), computed in two passes.

    The two-pass form ``mean((x - mean(x))**2)`` keeps full precision when the mean is large
    compared with the spread, where ``E[x^2] - E[x]^2`` cancels catastrophically (an input with
    mean 1e4 and std 0.05 would have no significant digits left in float32).
    """
    mean = x.mean(dim=list(dims), keepdim=True)
    centered = x - mean
    var = (centered * centered).mean(dim=list(dims), keepdim=True)
    return var, mean


def affine(x_hat: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``weight * x_hat + bias`` with per-channel parameters broadcast along dim 1."""
    shape = (1, -1) + (1,) * (x_hat.dim() - 2)
    if weight is not None:
        x_hat = x_hat * weight.reshape(shape)
    if bias is not None:
        x_hat = x_hat + bias.reshape(shape)
    return x_hat
