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


def merge_statistics(mean: Tensor, var: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """The mean and biased variance of the union of equal-sized sets, from each set's mean
    and biased variance along ``dim`` (kept): ``mu = mean_i mu_i`` and
    ``sigma^2 = mean_i sigma_i^2 + mean_i (mu_i - mu)^2`` (the law of total variance; Chan,
    Golub and LeVeque's pairwise update, all sets at once). The second-moment form
    ``mean_i (sigma_i^2 + mu_i^2) - mu^2`` is the same number in exact arithmetic but cancels:
    in float32 it is off by ~0.1 on data of mean 1000 and variance 1."""
    mu = mean.mean(dim, keepdim=True)
    return mu, var.mean(dim, keepdim=True) + (mean - mu).square().mean(dim, keepdim=True)


def affine(x_hat: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``weight * x_hat + bias`` with per-channel parameters broadcast along dim 1."""
    shape = (1, -1) + (1,) * (x_hat.dim() - 2)
    if weight is not None:
        x_hat = x_hat * weight.reshape(shape)
    if bias is not None:
        x_hat = x_hat + bias.reshape(shape)
    return x_hat
