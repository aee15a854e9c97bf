"""Layer Normalization, channels-first and channels-last."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normzoo import functional
from normzoo.norms import _triton
from normzoo.norms._rownorm import (
    fast_group_norm,
    native_group_norm,
    params_like,
    torch_group_norm,
    use_native_row_norm,
)
from normzoo.norms.base import Norm


class LayerNorm(Norm):
    r"""Layer Normalization: each sample normalized over all its channels and positions.

    .. math::
        y = \gamma \odot \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} + \beta

    With the default ``channels_last=False`` the input is ``(N, C, *spatial)`` and the
    statistics are taken per sample over ``C`` and every spatial position, the "LN" of the
    Group Normalization paper and exactly ``torch.nn.GroupNorm(1, C)``. With
    ``channels_last=True`` the input is a token tensor ``(..., C)`` normalized over its last
    dim, exactly ``torch.nn.LayerNorm(C)``. ``weight``/``bias`` are per channel, ``(C,)``.

    Args:
        num_features: the channel count ``C``.
        eps: added to the variance. Default ``1e-5``.
        affine: learn per-channel ``weight`` and ``bias``. Default ``True``.
        channels_last: token input ``(..., C)``. Default ``False``.
        impl: ``"fast"`` (native kernels) or ``"reference"`` (``normzoo.functional``).

    Reference: J. L. Ba, J. R. Kiros, G. E. Hinton, "Layer Normalization", arXiv:1607.06450.
    """

    statistics_per = ("batch",)
    reduces_over = ("channel", "spatial")
    uses_batch_stats = False
    fuses_activation = True
    one_call = True

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
            # One statistic per token (every leading position), over its channels.
            self.statistics_per = ("batch", "spatial")
            self.reduces_over = ("channel",)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if self.one_call and self.impl == "fast" and not self.channels_last:
            y = fast_group_norm(self, x, 1)  # None: the checked path below
            if y is not None:
                return y
        return super().forward(x)

    def _forward(self, x: Tensor, relu: bool = False) -> Tensor:
        if self.impl == "reference":
            y = functional.layer_norm(
                x, self.weight, self.bias, eps=self.eps, channels_last=self.channels_last
            )
        elif self.channels_last and _triton.serves_tokens(x, self.weight, self.bias):
            w, b = self.weight, self.bias  # CUDA: the Triton kernels, ReLU fused
            return _triton.layer_norm_tokens(x, w, b, self.eps, relu)
        elif not self.channels_last and _triton.serves_group(x, 1, self.weight, self.bias):
            w, b = self.weight, self.bias  # CUDA: the Triton kernels, ReLU fused
            return _triton.group_norm(x, 1, w, b, self.eps, relu)[0]
        elif self.channels_last:
            weight, bias = params_like(x, self.weight, self.bias)
            y = F.layer_norm(x, (self.num_features,), weight, bias, self.eps)
        elif use_native_row_norm(x, self.weight, 1):  # ReLU fused
            return native_group_norm(x, 1, self.weight, self.bias, self.eps, relu=relu)[0]
        else:
            y = torch_group_norm(x, 1, self.weight, self.bias, self.eps)
        return torch.relu(y) if relu else y
