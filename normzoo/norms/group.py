"""Group Normalization."""

from __future__ import annotations

import torch
from torch import Tensor

from normzoo import functional
from normzoo._native.zoo_kernels import TOKENS_GN
from normzoo.norms import _triton
from normzoo.norms._row_map import row_map
from normzoo.norms._rownorm import (
    GroupSpec,
    channels_last_rows,
    fast_group_norm,
    native_group_norm,
    torch_group_norm,
    use_native_row_norm,
)
from normzoo.norms._tokens import group_tokens, use_token_kernels
from normzoo.norms.base import Norm

#: The GN paper's default number of groups.
DEFAULT_GROUPS = 32


def resolve_groups(
    num_features: int, num_groups: int | None = None, group_size: int | None = None
) -> int:
    """The number of groups for ``num_features`` channels.

    ``num_groups`` must divide ``num_features``; ``group_size`` (channels per group) must
    too. With neither, the paper's 32 groups, or the largest divisor of ``num_features``
    not above 32 when 32 does not divide it.
    """
    if num_groups is not None and group_size is not None:
        raise ValueError(
            f"give num_groups or group_size, not both (got num_groups={num_groups}, "
            f"group_size={group_size})"
        )
    for name, value in (("num_groups", num_groups), ("group_size", group_size)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
        if value <= 0 or num_features % value:
            divisors = [d for d in range(1, num_features + 1) if num_features % d == 0]
            raise ValueError(
                f"{name}={value} must be a positive divisor of num_features={num_features}; "
                f"valid values: {divisors}"
            )
    if num_groups is not None:
        return num_groups
    if group_size is not None:
        return num_features // group_size
    return max(d for d in range(1, min(DEFAULT_GROUPS, num_features) + 1) if num_features % d == 0)


class GroupNorm(Norm):
    r"""Group Normalization: each sample normalized per group of ``C / G`` channels.

    .. math::
        y = \gamma \, \frac{x - \mathrm{E}_{\mathcal{S}}[x]}{\sqrt{\mathrm{Var}_{\mathcal{S}}[x]
            + \epsilon}} + \beta

    where ``S`` is the set of one sample's values in one group of channels, at every spatial
    position. ``num_groups=1`` is channels-first LayerNorm, ``num_groups=C`` is InstanceNorm.
    Equals ``torch.nn.GroupNorm(G, C)`` (note the argument order: ``num_features`` first here,
    like every normzoo norm).

    Args:
        num_features: the channel count ``C``.
        num_groups: ``G``, a divisor of ``C``. Default: 32 as in the paper, or the largest
            divisor of ``C`` not above 32 when 32 does not divide ``C``.
        group_size: channels per group, instead of ``num_groups``.
        eps: added to the variance. Default ``1e-5``.
        affine: learn per-channel ``weight`` and ``bias``. Default ``True``.
        impl: ``"fast"`` (the native kernels, fused ones for tokens ``(N, C)``) or
            ``"reference"`` (``normzoo.functional``).

    Reference: Y. Wu, K. He, "Group Normalization", ECCV 2018.
    """

    statistics_per = ("batch", "group")
    reduces_over = ("channel", "spatial")
    uses_batch_stats = False
    fuses_activation = True
    one_call = True

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = None,
        *,
        group_size: int | None = None,
        eps: float = 1e-5,
        affine: bool = True,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps=eps, affine=affine, impl=impl, device=device, dtype=dtype
        )
        self.num_groups = resolve_groups(self.num_features, num_groups, group_size)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if self.one_call and self.impl == "fast":
            y = fast_group_norm(self, x, self.num_groups)  # None: the checked path below
            if y is not None:
                return y
        return super().forward(x)

    def _forward(self, x: Tensor, relu: bool = False) -> Tensor:
        if self.impl == "reference":
            y = functional.group_norm(x, self.num_groups, self.weight, self.bias, eps=self.eps)
        elif _triton.serves_group(x, self.num_groups, self.weight, self.bias):
            g, w, b = self.num_groups, self.weight, self.bias  # CUDA: Triton, ReLU fused
            return _triton.group_norm(x, g, w, b, self.eps, relu)[0]
        elif use_token_kernels(x, self.weight):  # (N, C): the fused token kernels
            y = group_tokens(TOKENS_GN, x, None, self.weight, self.bias, self.num_groups, self.eps)
        elif use_native_row_norm(x, self.weight, self.num_groups):
            g, w, b = self.num_groups, self.weight, self.bias
            return native_group_norm(x, g, w, b, self.eps, relu=relu)[0]  # ReLU fused
        elif x.dtype == torch.bfloat16 and channels_last_rows(x):
            # bfloat16 channels_last: zoo.c's per-row kernels read it in place, in bfloat16
            # (torch's kernel on a contiguous copy, its channels_last one being unstable, took
            # 1.5-4x their fwd+bwd: 2 threads, (32, 64, 32, 32) 6.5 against 1.4-1.7 ms)
            spec = GroupSpec(self.num_groups, self.eps)
            y = row_map(x, spec, self.weight, self.bias)
        else:
            y = torch_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return torch.relu(y) if relu else y

    def _repr_structure(self) -> list[str]:
        return [f"num_groups={self.num_groups}"]
