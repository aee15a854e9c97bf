"""Filter Response Normalization with the Thresholded Linear Unit."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normzoo import functional
from normzoo.norms.base import Norm

#: Initial value of the learned part of epsilon (as TF-Addons' FilterResponseNormalization).
LEARNED_EPS_INIT = 1e-4


class FilterResponseNorm(Norm):
    r"""Filter Response Normalization (FRN) followed by a Thresholded Linear Unit (TLU).

    .. math::
        \nu^2 = \mathrm{E}_{HW}[x^2], \quad
        y = \gamma \frac{x}{\sqrt{\nu^2 + \epsilon}} + \beta, \quad
        z = \max(y, \tau)

    per sample and channel, over the positions; no mean is subtracted and no batch statistic
    is used. The TLU threshold ``tau`` is a learned per-channel parameter (``tlu=False``
    drops it: FRN alone). With ``learnable_eps=True`` epsilon is ``eps + |eps_learned|`` with
    a learned scalar ``eps_learned`` (the paper's remedy for small or 1x1 activation maps);
    otherwise it is the fixed ``eps``. FRN+TLU replaces both the norm and the activation.

    Args:
        num_features: the channel count ``C``.
        eps: epsilon, or its fixed lower bound when learned. Default ``1e-6`` (the paper's).
        affine: learn per-channel ``weight`` and ``bias``. Default ``True``.
        tlu: apply the TLU with a learned ``tau`` (init 0). Default ``True``.
        learnable_eps: learn ``eps_learned`` (init ``1e-4``). Default ``False``.
        impl: ``"fast"`` or ``"reference"`` (both the reference math for now).

    Reference: S. Singh, S. Krishnan, "Filter Response Normalization Layer: Eliminating Batch
    Dependence in the Training of Deep Neural Networks", CVPR 2020 (arXiv:1911.09737).
    """

    statistics_per = ("batch", "channel")
    reduces_over = ("spatial",)
    uses_batch_stats = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        affine: bool = True,
        *,
        tlu: bool = True,
        learnable_eps: bool = False,
        impl: str = "fast",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps=eps, affine=affine, impl=impl, device=device, dtype=dtype
        )
        factory = {"device": device, "dtype": dtype}
        self.tlu = bool(tlu)
        self.learnable_eps = bool(learnable_eps)
        self.tau = nn.Parameter(torch.empty(self.num_features, **factory)) if self.tlu else None
        self.eps_learned = nn.Parameter(torch.empty(1, **factory)) if self.learnable_eps else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "tau", None) is not None:
            nn.init.zeros_(self.tau)
        if getattr(self, "eps_learned", None) is not None:
            nn.init.constant_(self.eps_learned, LEARNED_EPS_INIT)

    def effective_eps(self) -> float | Tensor:
        """Epsilon as used: ``eps``, or ``eps + |eps_learned|`` (a tensor, with a gradient)."""
        if self.eps_learned is None:
            return self.eps
        return self.eps + self.eps_learned.abs()

    def _forward(self, x: Tensor) -> Tensor:
        return functional.filter_response_norm(
            x, self.weight, self.bias, self.tau, eps=self.effective_eps()
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tlu={self.tlu}, learnable_eps={self.learnable_eps}"
