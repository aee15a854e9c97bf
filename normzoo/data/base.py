"""``ArrayDataModule``: the shared LightningDataModule of the small in-memory datasets.

A subclass loads its arrays (``_load``); this class makes the seeded train/val split,
standardizes every split with the training statistics, and serves the loaders. The split
uses ``split_seed``, not the run's seed, so runs with different seeds see the same test set.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

Split = tuple[Tensor, Tensor]


class ArrayDataModule(pl.LightningDataModule):
    """Train/val/test splits held as tensors.

    Args:
        batch_size: samples per training batch (per process under DDP).
        num_workers: DataLoader workers (0: load in the main process, the fastest for
            these small datasets).
        val_fraction: the share of the training data held out for validation, when the
            dataset has no validation split of its own.
        split_seed: the seed of the train/val(/test) split.
        eval_batch_size: samples per validation/test batch.
    """

    #: One sample's shape and the number of classes; the model is built from these.
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    name: str = ""

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        eval_batch_size: int = 1000,
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"data.batch_size must be a positive int, got {batch_size!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.eval_batch_size = eval_batch_size
        self.splits: dict[str, Split] = {}

    # -- subclasses ------------------------------------------------------------------------
    def _load(self) -> dict[str, Split]:
        """The raw splits: ``train`` and ``test``, and ``val`` if the dataset has one."""
        raise NotImplementedError

    # -- Lightning -------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = self._load()
        if "val" not in splits:
            x, y = splits["train"]
            g = torch.Generator().manual_seed(self.split_seed)
            perm = torch.randperm(len(x), generator=g)
            n_val = max(1, round(self.val_fraction * len(x)))
            splits["val"] = (x[perm[:n_val]], y[perm[:n_val]])
            splits["train"] = (x[perm[n_val:]], y[perm[n_val:]])
        x_train = splits["train"][0]
        # Per-channel statistics of the training split (channel = dim 1).
        dims = [d for d in range(x_train.dim()) if d != 1]
        mean = x_train.mean(dim=dims, keepdim=True)
        std = x_train.std(dim=dims, keepdim=True).clamp_min(1e-6)
        for name, (x, y) in splits.items():
            if tuple(x.shape[1:]) != tuple(self.input_shape):
                raise RuntimeError(
                    f"{type(self).__name__}: the {name} split has samples of shape "
                    f"{tuple(x.shape[1:])}, expected {tuple(self.input_shape)}"
                )
            self.splits[name] = ((x - mean) / std, y.long())

    def _loader(self, split: str, train: bool) -> DataLoader:
        return DataLoader(
            TensorDataset(*self.splits[split]),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            # A last training batch of one sample would break batch-statistics norms.
            drop_last=train and len(self.splits[split][0]) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def num_samples(self, split: str = "train") -> int:
        """The number of samples of a split (after ``setup``)."""
        return len(self.splits[split][0])


def as_tensor(x: Sequence | Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """A numpy array (or sequence) as a tensor of ``dtype``."""
    return torch.as_tensor(x).to(dtype)
