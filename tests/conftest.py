from __future__ import annotations

import faulthandler
import os

import pytest
import torch

#: Seconds after which a test still running is taken as hung in C code: every thread's stack is
#: dumped and the run exits (status 1). pytest-timeout (``timeout`` in pyproject.toml, a signal)
#: fails a test hung in Python first; it cannot reach one that holds the GIL in C code (a
#: deadlock in a library), and neither can any Python thread. faulthandler's watchdog is a C
#: thread: it can, so such a hang ends the run in minutes instead of at CI's limit.
HANG_EXIT_S = float(os.environ.get("NORMZOO_TEST_HANG_EXIT_S", "330"))
_stderr_fd: int | None = None


def pytest_configure(config):
    # A copy of the real stderr, taken while pytest's output capture is off: during a test,
    # fd 2 goes to the capture's file, which a run that exits never prints.
    global _stderr_fd
    _stderr_fd = os.dup(2)
    if os.environ.get("TRITON_INTERPRET") == "1":  # tests/test_triton_gpu.py on the CPU
        from triton_interpreter_check import scalar_index_for_numpy_2_4

        scalar_index_for_numpy_2_4()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    faulthandler.dump_traceback_later(HANG_EXIT_S, exit=True, file=_stderr_fd)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def isolated_registry(monkeypatch):
    """Norms a test registers are gone after it (so later tests see the real registry)."""
    from normzoo import registry

    monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.setattr(registry, "_lookup", dict(registry._lookup))


class GhostPath:
    """Which of Ghost BN's two routes to its native kernels a test runs (``ghost_path``):
    ``"operator"``, the C++ operator ``normzoo::ghost_batch_norm_train`` (kernels, autograd
    node and running-statistics blend in C++), or ``"python"``, the ``autograd.Function``
    ``_NativeGhostBatchNorm`` on the ctypes kernels (where the operator library is not built,
    and for bfloat16 parameters). ``calls`` records each operator call's kernels
    (``"blocks"``, ``"rows"`` or ``"per_batch"``: ``ghost_batch.GHOST_*``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[str] = []

    def ran(self, y: torch.Tensor) -> bool:
        """Whether ``y`` came out of this route's autograd node."""
        if self.name == "operator":
            return "GhostBatchNormFunction" in y.grad_fn.name()
        return type(y.grad_fn).__name__ == "_NativeGhostBatchNormBackward"


@pytest.fixture(params=["operator", "python"])
def ghost_path(request, monkeypatch) -> GhostPath:
    from normzoo import _native
    from normzoo.norms import ghost_batch

    path = GhostPath(request.param)
    if path.name == "operator":
        if not _native.ops_available():
            pytest.skip("normzoo's operator library is not available here")
        real = torch.ops.normzoo.ghost_batch_norm_train.default

        def spy(*args):
            path.calls.append(("blocks", "rows", "per_batch")[args[-2]])
            return real(*args)

        monkeypatch.setattr(ghost_batch, "_train_op", spy)
    else:
        monkeypatch.setattr(ghost_batch.GhostBatchNorm, "_op_serves", lambda self, update: False)
    return path
