"""SyncBatchNorm: two real CPU processes (gloo) equal one process running BN on the whole batch."""

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from norm_testing import TOL
from torch import nn

from normzoo.norms import BatchNorm, SyncBatchNorm

IMPLS = ("fast", "reference")
# Per-rank batch sizes and the spatial shape: equal, unequal, one sample, an empty rank.
CASES = [
    ((4, 4), (4, 5)),
    ((2, 5), (6,)),
    ((1, 3), (2, 2, 2)),
    ((0, 6), (4,)),
    ((6, 0), ()),
]
STEPS = 2


def _inputs(case, step):
    sizes, sample = case
    gen = torch.Generator().manual_seed(100 * step + len(sample))
    x = torch.randn(sum(sizes), 3, *sample, generator=gen) * (step + 2) + step
    g = torch.randn(x.shape, generator=gen)
    return x, g


def _init(module):
    with torch.no_grad():
        module.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        module.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    torch.set_num_threads(1)
    results = {}
    for impl in IMPLS:
        for c, case in enumerate(CASES):
            sizes = case[0]
            start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
            layer = SyncBatchNorm(3, momentum=None if c % 2 else 0.1, impl=impl)
            _init(layer)
            for step in range(STEPS):
                x, g = _inputs(case, step)
                xl = x[start:stop].clone().requires_grad_()
                layer.zero_grad()
                y = layer(xl)
                (y * g[start:stop]).sum().backward()
                results[impl, c, step] = {
                    "y": y.detach(),
                    "x.grad": xl.grad,
                    "weight.grad": layer.weight.grad.clone(),
                    "bias.grad": layer.bias.grad.clone(),
                    "running_mean": layer.running_mean.clone(),
                    "running_var": layer.running_var.clone(),
                }
    layer.eval()  # eval: no synchronization, running statistics
    results["eval"] = layer(torch.ones(2, 3, 2))
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("syncbn")
    # fork, not spawn: a spawned child re-imports torch, which costs ~10 s on a slow machine.
    mp.start_processes(
        _worker, args=(2, str(tmp / "init"), str(tmp)), nprocs=2, join=True, start_method="fork"
    )
    return [torch.load(tmp / f"rank{r}.pt") for r in range(2)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("c", range(len(CASES)), ids=[str(case) for case in CASES])
def test_two_processes_equal_one_process_on_the_concatenated_batch(two_process_results, c, impl):
    case = CASES[c]
    bn = BatchNorm(3, momentum=None if c % 2 else 0.1)  # equals torch.nn.BatchNorm (tested)
    _init(bn)
    for step in range(STEPS):
        x, g = _inputs(case, step)
        x.requires_grad_()
        bn.zero_grad()
        y = bn(x)
        (y * g).sum().backward()
        ranks = [r[impl, c, step] for r in two_process_results]
        torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), **TOL)
        torch.testing.assert_close(torch.cat([r["x.grad"] for r in ranks]), x.grad, **TOL)
        # Parameter gradients are local (DDP averages them): their sum is the whole batch's.
        for name, param in (("weight.grad", bn.weight), ("bias.grad", bn.bias)):
            torch.testing.assert_close(ranks[0][name] + ranks[1][name], param.grad, **TOL)
        for name in ("running_mean", "running_var"):
            for r in ranks:  # identical on both ranks, and the whole batch's
                torch.testing.assert_close(r[name], getattr(bn, name), **TOL)


def test_two_processes_eval_uses_running_statistics(two_process_results):
    torch.testing.assert_close(two_process_results[0]["eval"], two_process_results[1]["eval"])


@pytest.mark.parametrize("impl", IMPLS)
def test_without_a_process_group_it_is_batchnorm(impl):
    assert not dist.is_initialized()
    sync, bn = SyncBatchNorm(3, impl=impl), nn.BatchNorm2d(3)
    _init(sync)
    _init(bn)
    for _ in range(2):
        x = torch.randn(4, 3, 2, 5) * 3
        torch.testing.assert_close(sync(x), bn(x), **TOL)
    torch.testing.assert_close(sync.running_var, bn.running_var, **TOL)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        sync(torch.randn(1, 3))  # BN's own check applies when not distributed
