"""The Lightning LayerSync plugin: BatchNorms synchronized over a real 2-process DDP run on CPU."""

import datetime

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import normzoo
from normzoo.norms import BatchNorm, GhostBatchNorm, SyncBatchNorm

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402

from normzoo.training.layer_sync import NormzooSyncBatchNorm  # noqa: E402


def test_apply_converts_plain_batchnorms_and_revert_restores_them():
    model = nn.Sequential(
        nn.BatchNorm2d(4), BatchNorm(4), GhostBatchNorm(4, 2), nn.GroupNorm(2, 4), nn.Identity()
    )
    originals = list(model)
    plugin = NormzooSyncBatchNorm()
    model = plugin.apply(model)
    assert [type(m) for m in model][:4] == [
        SyncBatchNorm,
        SyncBatchNorm,
        GhostBatchNorm,
        nn.GroupNorm,
    ]
    model(torch.randn(4, 4, 3, 3))  # single process: plain BN, updates the statistics
    model = plugin.revert(model)
    assert list(model) == originals
    assert model[0].num_batches_tracked.item() == 1 and model[1].num_batches_tracked.item() == 1
    assert plugin.revert(model) is model  # nothing left to revert
    off = NormzooSyncBatchNorm(enabled=False)
    assert type(off.apply(model)[0]) is nn.BatchNorm2d


class BNModel(pl.LightningModule):
    """A torch BN on the input (its statistics depend only on the data) and a normzoo BN."""

    def __init__(self, out_dir):
        super().__init__()
        self.out_dir = out_dir
        self.net = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3), normzoo.create("bn", 3))
        self.seen = []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        self.seen.append(x.clone())
        return self.net(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        data = torch.randn(24, 4, generator=gen) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 1
        return DataLoader(TensorDataset(data), batch_size=3)

    def on_train_end(self):
        torch.save(
            {
                "seen": self.seen,
                "types": [type(m).__name__ for m in self.net],
                "state": {k: v.clone() for k, v in self.net.state_dict().items()},
            },
            self.out_dir / f"rank{self.global_rank}.pt",
        )


def _fit(tmp_path, plugin):
    model = BNModel(tmp_path)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        # fork: a spawned process would re-import torch and lightning (slow); a hang fails
        # through the process-group timeout and the test's timeout.
        strategy=DDPStrategy(start_method="fork", timeout=datetime.timedelta(seconds=60)),
        plugins=[plugin],
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model)
    return model, [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


@pytest.mark.timeout(180)
def test_ddp_run_synchronizes_batchnorm_statistics(tmp_path):
    model, ranks = _fit(tmp_path, NormzooSyncBatchNorm())
    assert ranks[0]["types"] == ["SyncBatchNorm", "Linear", "SyncBatchNorm"]
    for key, value in ranks[0]["state"].items():  # identical on both ranks
        torch.testing.assert_close(ranks[1]["state"][key], value, msg=key)
    # What synced statistics give: one BN over the two ranks' batches of every step.
    bn = nn.BatchNorm1d(4)
    for x0, x1 in zip(ranks[0]["seen"], ranks[1]["seen"], strict=True):
        assert not torch.equal(x0, x1)  # each rank saw its own data
        bn(torch.cat([x0, x1]))
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(ranks[0]["state"][f"0.{key}"], getattr(bn, key), msg=key)
    # The main process gets rank 0's weights back into the original (reverted) layers.
    assert [type(m) for m in model.net] == [nn.BatchNorm1d, nn.Linear, BatchNorm]
    torch.testing.assert_close(model.net[0].running_var, bn.running_var)


@pytest.mark.timeout(180)
def test_ddp_run_with_the_plugin_off_keeps_local_statistics(tmp_path):
    _, ranks = _fit(tmp_path, NormzooSyncBatchNorm(enabled=False))
    assert ranks[0]["types"][0] == "BatchNorm1d"
    assert not torch.allclose(
        ranks[0]["state"]["0.running_mean"], ranks[1]["state"]["0.running_mean"]
    )
