"""A tiny synthetic classification problem for tests: one random prototype per class plus
Gaussian noise, in any input shape."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from normzoo.data.base import ArrayDataModule, Split


class SyntheticDataModule(ArrayDataModule):
    """``num_samples`` samples of shape ``input_shape``; 60/20/20 train/val/test.

    Args:
        input_shape: one sample's shape, e.g. ``(1, 8, 8)`` or ``(1, 40)``.
        num_classes: the number of classes (and prototypes).
        num_samples: the total number of samples.
        noise: the noise's standard deviation (the prototypes have unit variance).
    """

    name = "synthetic"

    def __init__(
        self,
        *args,
        input_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 4,
        num_samples: int = 256,
        noise: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.num_samples_total = int(num_samples)
        self.noise = float(noise)

    def _load(self) -> dict[str, Split]:
        g = torch.Generator().manual_seed(self.split_seed)
        prototypes = torch.randn(self.num_classes, *self.input_shape, generator=g)
        y = torch.arange(self.num_samples_total) % self.num_classes
        y = y[torch.randperm(len(y), generator=g)]
        x = prototypes[y] + self.noise * torch.randn(len(y), *self.input_shape, generator=g)
        n_val = n_test = len(y) // 5
        n_train = len(y) - n_val - n_test
        return {
            "train": (x[:n_train], y[:n_train]),
            "val": (x[n_train : n_train + n_val], y[n_train : n_train + n_val]),
            "test": (x[n_train + n_val :], y[n_train + n_val :]),
        }
