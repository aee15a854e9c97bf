"""Root Mean Square Layer Normalization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import functional
from normzoo._native import zoo_kernels
from normzoo.functional._stats import affine as _affine
from normzoo.functional._stats import compute_dtype
from normzoo.norms._kernels import RowAffine, RowMeanSquare, restore_format, row_view
from normzoo.norms._row_map import RowNormSpec, row_map, use_row_map
from normzoo.norms.base import Norm


class _RMSSpec(RowNormSpec):
    """Channels-first RMSNorm as a per-row affine map: ``a = w / RMS(x_n)``, ``b`` per row,
    ``RMS(x_n)^2 = mean_c (var + mean^2) + eps`` from the rows' statistics. Inputs:
    ``weight``, ``bias``."""

    op = zoo_kernels.AFFINE

    def __init__(self, eps: float) -> None:
        self.eps = eps

    def params(  # type: ignore[override]
        self, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> Tensor:
        a = torch.rsqrt((var + mean * mean).mean(1, keepdim=True) + self.eps).expand_as(mean)
        if weight is not None:
            a = a * weight.to(a.dtype).view(1, -1)
        b = bias.to(a.dtype).view(1, -1).expand_as(a) if bias is not None else torch.zeros_like(a)
        return torch.stack([a, b], dim=2)

    def forward(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        y, self.mean, self.var, self.p = zoo_kernels.rms_forward(x, weight, bias, self.eps)
        return y

    def backward(
        self, dy: Tensor, x: Tensor, inputs: tuple[Tensor | None, ...], needs: tuple[bool, ...]
    ) -> list[Tensor | None]:
        return zoo_kernels.rms_backward(
            dy, x, self.p, self.mean, self.var, inputs[0], self.eps, needs
        )


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
        impl: ``"fast"`` (native kernels with hand-written backwards; torch's ``rms_norm``
            for tokens) or ``"reference"``.

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
        if not self.channels_last and x.dim() >= 3:
            if use_row_map(xf):  # native, any layout kept
                y = row_map(xf, _RMSSpec(self.eps), self.weight, self.bias)
                return y.to(x.dtype)
            return self._rows_forward(xf).to(x.dtype)
        if self.channels_last:
            y = F.rms_norm(xf, (self.num_features,), self.weight, self.eps)
            y = y if self.bias is None else y + self.bias
        else:
            y = _affine(F.rms_norm(xf, tuple(x.shape[1:]), None, self.eps), self.weight, self.bias)
        return y.to(x.dtype)

    def _rows_forward(self, xf: Tensor) -> Tensor:
        """Channels-first ``(N, C, *spatial)``: ``y = A x + B`` per sample and channel with
        ``A = w / RMS(x_n)``, the mean square in one pass (``RowMeanSquare``) and the map in
        one (``RowAffine``); torch's ``rms_norm`` plus a broadcast affine measured ~2x BN."""
        flat, channels_last = row_view(xf)
        n, c, _ = flat.shape
        rinv = torch.rsqrt(RowMeanSquare.apply(flat.view(n, 1, -1)) + self.eps)  # (N, 1)
        a = rinv.unsqueeze(2).expand(n, c, 1)
        b = torch.zeros_like(a)
        if self.weight is not None:
            a = a * self.weight.to(a.dtype).view(1, -1, 1)
        if self.bias is not None:
            b = b + self.bias.to(b.dtype).view(1, -1, 1)
        y = RowAffine.apply(flat, a, b)
        return restore_format(y, xf.shape, channels_last)
