import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def isolated_registry(monkeypatch):
    """Norms a test registers are gone after it (so later tests see the real registry)."""
    from normzoo import registry

    monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.setattr(registry, "_lookup", dict(registry._lookup))
