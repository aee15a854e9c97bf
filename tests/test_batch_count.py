"""``num_batches_tracked`` read on the host without a device read per training step.

Batch Renorm's warm-up schedule, Ghost BN's and ``momentum=None``'s cumulative factors need
the count; ``int(num_batches_tracked)`` on a GPU waits for every queued kernel (a sync per
step and layer). ``Norm._batches_tracked`` keeps the host's copy while only the module's own
``_count_batches`` changed the buffer, and reads it again after anything else did. On the
CPU a read is ``aten::_local_scalar_dense``, which these tests count.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import normzoo
from normzoo import functional


class _Reads(TorchDispatchMode):
    """Counts device-to-host reads of a tensor's value."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.overloadpacket._qualified_op_name == "aten::_local_scalar_dense":
            self.count += 1
        return func(*args, **(kwargs or {}))


def _renorm(**kw: Any) -> normzoo.BatchRenorm:
    options = {"warmup_steps": 2, "r_max_steps": 5, "d_max_steps": 7, "r_max": 3.0}
    return normzoo.create("batchrenorm", 4, **{**options, **kw})


def _expected_limits(m: Any, step: int) -> tuple[float, float]:
    """The schedule from the count itself (a fresh module told the step)."""
    fresh = copy.deepcopy(m)
    fresh.num_batches_tracked = torch.tensor(step)
    return fresh.current_limits()


def test_batch_renorm_reads_the_count_once_then_follows_it_on_the_host() -> None:
    m = _renorm()
    x = torch.randn(6, 4, 3, 3)
    m(x)  # the first step reads the count
    reads = _Reads()
    for step in range(1, 10):
        expected = _expected_limits(m, step)
        with reads:
            limits = m.current_limits()
            m(x)
        assert limits == expected
    assert int(m.num_batches_tracked) == 10
    assert reads.count == 0  # no device read per step


@pytest.mark.parametrize(
    "change",
    ["load_state_dict", "reset", "fill", "data", "state_dict_view", "to", "deepcopy"],
)
def test_any_other_change_of_the_count_is_read_again(change: str) -> None:
    m = _renorm()
    x = torch.randn(6, 4, 3, 3)
    for _ in range(3):
        m(x)
    assert m.current_limits() == _expected_limits(m, 3)
    if change == "load_state_dict":
        state = m.state_dict()
        state["num_batches_tracked"] = torch.tensor(6)
        m.load_state_dict(state)
    elif change == "reset":
        m.reset_running_stats()
    elif change == "fill":
        m.num_batches_tracked.fill_(5)
    elif change == "data":
        m.num_batches_tracked.data = torch.tensor(4)
    elif change == "state_dict_view":  # detached views share the version counter
        m.state_dict()["num_batches_tracked"].fill_(6)
    elif change == "to":
        m = m.to(torch.float64)
        m.num_batches_tracked.fill_(4)
        x = x.double()
    else:
        m = copy.deepcopy(m)
        m.num_batches_tracked.fill_(5)
    step = int(m.num_batches_tracked)
    assert step != 3
    assert m.current_limits() == _expected_limits(m, step)
    m(x)
    assert int(m.num_batches_tracked) == step + 1
    assert m.current_limits() == _expected_limits(m, step + 1)


def test_batch_renorm_outputs_follow_the_schedule_across_a_checkpoint() -> None:
    """Train, load a checkpoint from later in the schedule, train on: the outputs equal the
    reference math with the limits of the loaded count (not the host's stale one)."""
    torch.manual_seed(0)
    m = _renorm(momentum=0.5)
    x = torch.randn(6, 4, 3, 3) * 3 + 1
    for _ in range(2):
        m(x)
    later = _renorm(momentum=0.5)
    later.load_state_dict(m.state_dict())
    later.num_batches_tracked.fill_(6)
    m.load_state_dict(later.state_dict())
    r_max, d_max = _expected_limits(m, 6)
    assert (r_max, d_max) != _expected_limits(m, 2)  # the host's count before the load
    rm, rv = m.running_mean.clone(), m.running_var.clone()
    y = m(x)
    ref, _, _ = functional.batch_renorm(
        x, rm, rv, m.weight, m.bias, training=True, r_max=r_max, d_max=d_max, momentum=0.5
    )
    torch.testing.assert_close(y, ref)


@pytest.mark.parametrize("name", ["bn", "ghostbatchnorm"])
def test_cumulative_average_counts_on_the_host(name: str) -> None:
    """``momentum=None``: the running statistics equal torch.nn's cumulative average over
    steps with a checkpoint load between them, and no step after the first reads the count."""
    torch.manual_seed(0)
    options = {"virtual_batch_size": 3} if name == "ghostbatchnorm" else {}
    m = normzoo.create(name, 4, momentum=None, **options)
    ref = torch.nn.BatchNorm2d(4, momentum=None)
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    m, ref = m.double(), ref.double()
    reads = _Reads()

    def step(t: torch.Tensor) -> None:
        with reads:  # (torch.nn's own module reads its count each step)
            m(t)
        if name == "ghostbatchnorm":  # one BN update per virtual batch
            for chunk in t.split(3):
                ref(chunk)
        else:
            ref(t)

    step(x)
    reads.count = 0
    for j in range(3):
        step(x * (j + 2) + j)
    assert reads.count == 0
    ref.num_batches_tracked.fill_(10)
    m.load_state_dict(ref.state_dict())
    for j in range(2):
        step(x - j)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(m.state_dict()[key], value, msg=key)


def test_batch_norm_cumulative_average_mixes_the_cpp_operator_and_python() -> None:
    """BatchNorm's one-call C++ operator counts on its own (float32, large); float64 takes the
    Python path: interleaved with ``momentum=None`` they stay equal to torch.nn."""
    torch.manual_seed(0)
    m, ref = normzoo.create("bn", 8, momentum=None), torch.nn.BatchNorm2d(8, momentum=None)
    big = torch.randn(64, 8, 32, 32)
    small = torch.randn(4, 8, 3, 3)
    for t in (small, big, small, big, big, small):
        m(t)
        ref(t)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(m.state_dict()[key], value, msg=key)


@pytest.mark.parametrize("vbs", [2, 3])
def test_ghost_batch_norm_steps_copy_nothing_from_the_host(vbs: int) -> None:
    """With a fixed momentum a Ghost BN training step reads no count and builds no tensor
    from host values (each a host-to-device copy on a GPU, which waits for its queue): the
    running-statistics weights are cached."""
    m = normzoo.create("ghostbatchnorm", 4, virtual_batch_size=vbs)
    x = torch.randn(8, 4, 32, 32)
    assert m._native_route(x)  # the path that blends all virtual batches' statistics at once
    m(x)

    names: list[str] = []

    class _Copies(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
            name = func.overloadpacket._qualified_op_name
            if name in ("aten::_local_scalar_dense", "aten::lift_fresh"):
                names.append(name)
            return func(*args, **(kwargs or {}))

    with _Copies():
        m(x)
        m(x)
    assert names == []
