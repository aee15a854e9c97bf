"""Helpers shared by the norm tests: tolerances, comparisons of two layers, small-batch kwargs,
and the scripts (``scripts/*.py``) as modules."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

import normzoo

#: Parity tolerance with torch.nn and between the fast and reference paths.
TOL = {"atol": 1e-5, "rtol": 1e-5}

#: Ghost BN's default virtual batch of 32 is larger than the tests' batches of 4, which is an
#: error by design; these arguments let each norm run on small batches.
SMALL_BATCH_KWARGS = {"ghostbatchnorm": {"virtual_batch_size": 2}}


def small_batch_kwargs(name: str) -> dict:
    """The keyword arguments ``name`` needs for the tests' small batches."""
    return dict(SMALL_BATCH_KWARGS.get(normzoo.info(name).name, {}))


def randomize_affine(*modules: nn.Module, channels: int = 6) -> None:
    """Give every module the same random, non-trivial ``weight`` and ``bias``."""
    w = torch.rand(channels) + 0.5
    b = torch.randn(channels)
    for m in modules:
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(b)


def check_fwd_bwd(
    ours: nn.Module, ref: nn.Module, x: torch.Tensor, tol: dict = TOL, param_tol: dict | None = None
) -> None:
    """Same output, input gradient and affine gradients for ``ours`` and ``ref`` on ``x``
    (``param_tol``, default ``tol``: the affine gradients', float32 sums over the batch and
    the positions, whose rounding grows with their length)."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb, **tol)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    for name in ("weight", "bias"):
        if all(isinstance(getattr(m, name, None), nn.Parameter) for m in (ours, ref)):
            torch.testing.assert_close(
                getattr(ours, name).grad, getattr(ref, name).grad, **(param_tol or tol)
            )


def assert_same_state(ours: nn.Module, ref: nn.Module, tol: dict = TOL) -> None:
    """Every entry of ``ref``'s state dict is in ``ours``'s, with the same value."""
    state = ours.state_dict()
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(state[key], value, **tol, msg=key)


def assert_double_backward_close(ours, x_ours: torch.Tensor, ref, x_ref: torch.Tensor) -> None:
    """``ours(x_ours)`` and ``ref(x_ref)`` (the same values, maybe other layouts) have the same
    gradient of ``sum(y^2)`` and the same gradient of ``sum(g^3)`` through it
    (``create_graph=True``: second derivatives)."""
    out = []
    for m, x in ((ours, x_ours), (ref, x_ref)):
        x = x.detach().clone().requires_grad_()
        (g,) = torch.autograd.grad(m(x).pow(2).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(3).sum(), x)
        out.append((g.detach(), gg))
    torch.testing.assert_close(out[0][0], out[1][0], **TOL)
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-3, rtol=1e-3)


def fwd_bwd(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    """Output, input gradient and parameter gradients of ``m`` at ``x`` against ``g``, all on
    the CPU."""
    x = x.detach().clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    y = m(x)
    y.backward(g.to(y.device, y.dtype))
    return [t.detach().cpu() for t in (y, x.grad, *(p.grad for p in m.parameters()))]


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` executed afresh as module ``name`` (registered in ``sys.modules``,
    where the scripts import each other from, e.g. ``from bench import ...``)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
