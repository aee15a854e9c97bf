"""Filter Response Normalization with the Thresholded Linear Unit."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normzoo import functional
from normzoo._native import kernels as _kernels
from normzoo._native import zoo_kernels
from normzoo.functional._stats import compute_dtype
from normzoo.norms import _gpu, _triton
from normzoo.norms._kernels import restore_format, row_view, scale_shift
from normzoo.norms._row_map import RowNormSpec, row_input, row_map, use_row_map, use_zoo_op
from normzoo.norms._tokens import float32_params, use_token_kernels
from normzoo.norms.base import Norm, capturing


class _FRNFunction(torch.autograd.Function):
    """FRN + TLU on ``(N, C, L)`` in a few passes, with a backward that saves only ``x``.

    Forward: ``s = w / sqrt(mean_L(x^2) + eps)`` per sample and channel, ``y = s x + b``,
    ``z = max(y, tau)``. Backward recomputes ``y``; with ``h = dz (1 + sign(y - tau))`` (twice
    ``dz`` where ``y > tau``, ``dz`` at a tie, 0 below: ``torch.maximum``'s split of ties)
    and ``q = 1 / sqrt(nu^2 + eps)``:
    ``dx = (w q / 2) (h - q^2 x mean_L(h x))``, ``dw = sum_{N,L} q h x / 2``,
    ``db = sum h / 2``, ``dtau = sum dz - db``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, tau: Tensor, eps: float
    ) -> Tensor:
        length = x.shape[2]
        nu2 = torch.linalg.vector_norm(x, dim=2, keepdim=True).square_().div_(length)
        q = torch.rsqrt(nu2 + eps)  # (N, C, 1)
        w, b, t = (p.to(x.dtype).view(1, -1, 1) for p in (weight, bias, tau))
        z = scale_shift(x, q * w, b)
        z = torch.maximum(z, t, out=z)
        ctx.save_for_backward(x, q, w, b, t)
        return z

    @staticmethod
    def backward(ctx: Any, dz: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, q, w, b, t = ctx.saved_tensors
        dz = dz.contiguous()
        h = scale_shift(x, q * w, b - t).sign_()  # sign(y - tau)
        h = torch.addcmul(dz, dz, h, out=h)
        n, c, length = x.shape
        a = (w * q * 0.5).expand(n, c, 1).reshape(-1)
        zeros, ones = torch.zeros_like(a), torch.ones_like(a)
        # One pass: a h, sum_L h x and sum_L h (the inference BN backward, x_hat = x).
        dx, hx, sum_h = torch.ops.aten.native_batch_norm_backward(
            h.view(1, n * c, length),
            x.view(1, n * c, length),
            a,
            zeros,
            ones,
            zeros,  # CUDA's kernel needs saved statistics even in inference mode
            ones,
            False,
            0.0,
            [ctx.needs_input_grad[0], True, True],
        )
        hx, sum_h = hx.view(n, c, 1), sum_h.view(n, c)
        dweight = None
        if ctx.needs_input_grad[1]:
            dweight = (q * hx).sum(dim=(0, 2)).mul_(0.5)
        if dx is not None:
            dx = dx.view(n, c, length).addcmul_(x, a.view(n, c, 1) * q * q * hx / -length)
        dbias = sum_h.sum(0).mul_(0.5)
        dtau = dz.sum(dim=(0, 2)) - dbias
        return dx, dweight, dbias, dtau, None


class _FRNTokens(torch.autograd.Function):
    """FRN + TLU on token input ``(N, C)``, elementwise (the mean square over no spatial
    positions is ``x^2``) on ``zoo.c``'s token kernels: one pass forward, one backward (``dx``
    and the parameters' column sums). Double backward differentiates the reference math."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, tau: Tensor, eps: float
    ) -> Tensor:
        ctx.save_for_backward(x, weight, bias, tau)
        ctx.eps = eps
        return zoo_kernels.frn_tokens_forward(x, weight, bias, tau, eps)

    @staticmethod
    def backward(ctx: Any, dz: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, weight, bias, tau = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the reference math, with a graph
            leaves = [x, weight, bias, tau]
            wanted = [t for t, need in zip(leaves, ctx.needs_input_grad[:4], strict=True) if need]
            with torch.enable_grad():
                xc = x.to(compute_dtype(x))  # bfloat16: the kernels' float32 math
                z = functional.filter_response_norm(xc, weight, bias, tau, eps=ctx.eps)
            grads = iter(torch.autograd.grad(z, wanted, dz.to(z.dtype), create_graph=True))
            return (*(next(grads) if need else None for need in ctx.needs_input_grad[:4]), None)
        dx, dw, db, dtau = zoo_kernels.frn_tokens_backward(
            dz, x, weight, bias, tau, ctx.eps, ctx.needs_input_grad[0]
        )
        return dx, dw, db, dtau, None


def frn_tokens(x: Tensor, weight: Tensor, bias: Tensor, tau: Tensor, eps: float) -> Tensor:
    r"""FRN + TLU of token input ``x`` ``(N, C)`` on the fused kernels.

    .. math:: z = \max\left(\gamma \frac{x}{\sqrt{x^2 + \epsilon}} + \beta, \tau\right)
    """
    if x.dtype != torch.float32:  # half precision: computed in float32
        weight, bias, tau = float32_params(weight, bias, tau)
        if x.dtype not in zoo_kernels.ROW_DTYPES:  # float16: on a float32 copy
            return frn_tokens(x.float(), weight, bias, tau, eps).to(x.dtype)
    if torch.is_grad_enabled() and _kernels.needs_grad(x, weight, bias, tau):
        return _FRNTokens.apply(x, weight, bias, tau, eps)
    return zoo_kernels.frn_tokens_forward(x, weight, bias, tau, eps)


class _FRNSpec(RowNormSpec):
    """FRN + TLU as a per-row map (``zoo_kernels.TLU``): ``a = w / sqrt(nu^2 + eps)``, ``b``,
    ``tau`` per row, ``nu^2 = var + mean^2`` the row's mean square. Inputs: ``weight``,
    ``bias``, ``tau``."""

    op = zoo_kernels.TLU

    def __init__(self, eps: float) -> None:
        self.eps = eps

    def params(  # type: ignore[override]
        self, mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor, tau: Tensor
    ) -> Tensor:
        a = torch.rsqrt(var + mean * mean + self.eps) * weight.to(mean.dtype).view(1, -1)
        rows = [a, bias.to(a.dtype).view(1, -1).expand_as(a), tau.to(a.dtype).view(1, -1)]
        return torch.stack([r.expand_as(a) for r in rows], dim=2)

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor, tau: Tensor) -> Tensor:  # type: ignore[override]
        y, self.mean, self.var, self.p = zoo_kernels.frn_forward(x, weight, bias, tau, self.eps)
        return y

    def backward(
        self, dy: Tensor, x: Tensor, inputs: tuple[Tensor | None, ...], needs: tuple[bool, ...]
    ) -> list[Tensor | None]:
        weight = inputs[0]
        return zoo_kernels.frn_backward(
            dy,
            x,
            self.p,
            self.mean,
            self.var,
            weight,
            self.eps,
            needs,  # type: ignore[arg-type]
        )


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
        impl: ``"fast"`` (a hand-written backward that saves only the input, for the affine
            TLU with a fixed eps, fused native kernels for tokens ``(N, C)``; on CUDA the
            reference math fused by ``torch.compile``; the reference math otherwise) or
            ``"reference"``.

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
        fast = self.impl == "fast" and not capturing()  # captured: the reference math
        if (
            fast
            and self._default_config()
            and _triton.serves_group(x, x.shape[1], self.weight, self.bias, self.tau, kind="frn")
        ):  # CUDA, measured (_triton.ZOO_MEASURED): one pass per (sample, channel) or token
            return _triton.filter_response_norm(x, self.weight, self.bias, self.tau, self.eps)
        if fast and _gpu.use_fused_math(x):
            return _gpu.filter_response_norm(
                x, self.weight, self.bias, self.tau, self.effective_eps()
            )
        if fast and self._use_token_kernel(x):
            return frn_tokens(x, self.weight, self.bias, self.tau, self.eps)
        if fast and self._use_function(x):
            xf = row_input(x)  # bfloat16 read and written natively
            if use_zoo_op(xf, self.weight, self.bias, self.tau):  # the kernels, C++ autograd
                y = torch.ops.normzoo.filter_response_norm(
                    xf, self.weight, self.bias, self.tau, self.eps
                )
                return y.to(x.dtype)
            if use_row_map(xf):  # native, any layout kept
                spec = _FRNSpec(self.eps)
                return row_map(xf, spec, self.weight, self.bias, self.tau).to(x.dtype)
            x3, channels_last = row_view(xf)
            z = _FRNFunction.apply(x3, self.weight, self.bias, self.tau, self.eps)
            return restore_format(z, xf.shape, channels_last).to(x.dtype)
        return functional.filter_response_norm(
            x, self.weight, self.bias, self.tau, eps=self.effective_eps()
        )

    def _default_config(self) -> bool:
        """Affine, with the TLU and a fixed eps: what the fast paths compute."""
        return self.weight is not None and self.tau is not None and self.eps_learned is None

    def _use_function(self, x: Tensor) -> bool:
        """The hand-written path covers the default configuration with spatial dims; every
        other configuration runs the reference math."""
        return x.dim() >= 3 and self._default_config()

    def _use_token_kernel(self, x: Tensor) -> bool:
        """Token input ``(N, C)`` (no spatial dims) in the default configuration where
        :func:`use_token_kernels` holds: the fused elementwise kernels (the reference math
        measured 9-15x BatchNorm1d's fwd+bwd on (4096, 1024) and (2048, 4096) on a 2-core
        Xeon)."""
        return self._default_config() and use_token_kernels(x, self.weight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tlu={self.tlu}, learnable_eps={self.learnable_eps}"
