"""The wider zoo's fused fast paths (``normzoo.norms._fused``) equal their reference math:
outputs, gradients of the input and of every parameter, running statistics.

Each norm compiles its forward and backward once (seconds to a minute on a loaded 2-core
machine), so these tests are marked ``slow``; they reach the compiled kernels with small
tensors by lowering the size threshold. ``switchablenorm`` and ``evonorms0`` are not fused:
compiled with dynamic shapes they measured slower than their eager reference math.
"""

from __future__ import annotations

import pytest
import torch

import normzoo
from normzoo.norms import _fused

FUSED = ["frn", "evonormb0", "batchrenorm"]
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.mark.slow
@pytest.mark.parametrize("name", FUSED)
def test_fused_zoo_norm_equals_reference(name, monkeypatch):
    if name not in normzoo.available():
        pytest.skip(f"{name} is not registered (the wider zoo has not landed here)")
    monkeypatch.setattr(_fused, "DEFAULT_MIN_NUMEL", 0)
    fast = normzoo.create(name, 8)
    ref = normzoo.create(name, 8, impl="reference")
    with torch.no_grad():
        for p in fast.parameters():
            p.uniform_(0.5, 1.5)
    ref.load_state_dict(fast.state_dict())
    for step in range(2):
        x = torch.randn(4, 8, 5, 6) * (step + 1) + step
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fast(xa), ref(xb)
        torch.testing.assert_close(ya, yb, **TOL)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, **TOL)
        for (key, pa), pb in zip(fast.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(pa.grad, pb.grad, **TOL, msg=key)
        for key, value in ref.state_dict().items():
            torch.testing.assert_close(fast.state_dict()[key], value, **TOL, msg=key)
    fast.eval()
    ref.eval()
    x = torch.randn(4, 8, 5, 6)
    torch.testing.assert_close(fast(x), ref(x), **TOL)
