"""CIFAR-10 through torchvision (an optional extra: ``pip install 'normzoo[cifar10]'``).

It downloads when online; offline it needs the files already in ``root``. Either way the
failure comes before training, with a message that says what to install or where to put
the files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from normzoo.data.base import ArrayDataModule, Split, as_tensor
from normzoo.errors import DatasetUnavailableError, MissingDependencyError


class CIFAR10DataModule(ArrayDataModule):
    """CIFAR-10 as ``(3, 32, 32)`` images (no augmentation).

    Args:
        root: the folder holding (or receiving) ``cifar-10-batches-py``.
        download: download when the files are missing.
    """

    input_shape = (3, 32, 32)
    num_classes = 10
    name = "cifar10"

    def __init__(
        self, *args, root: str = "~/.cache/normzoo/cifar10", download: bool = True, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        if importlib.util.find_spec("torchvision") is None:
            raise MissingDependencyError(
                "data=cifar10 needs torchvision, which is not installed; install it with "
                "pip install 'normzoo[cifar10]' (match your torch version), or pick another "
                "dataset: data=digits, data=mnist1d"
            )
        self.root = Path(root).expanduser()
        self.download = download

    def _dataset(self, train: bool, download: bool):
        from torchvision.datasets import CIFAR10

        return CIFAR10(str(self.root), train=train, download=download)

    def prepare_data(self) -> None:
        try:
            self._dataset(True, self.download)
            self._dataset(False, self.download)
        except (RuntimeError, OSError) as exc:  # missing files, or offline (URLError)
            raise DatasetUnavailableError(
                f"CIFAR-10 is not in {self.root} and could not be downloaded ({exc}). "
                f"Go online, or put cifar-10-python.tar.gz (from "
                f"https://www.cs.toronto.edu/~kriz/cifar.html) or its extracted folder "
                f"cifar-10-batches-py into {self.root}, or set data.root=<folder>"
            ) from exc

    def _load(self) -> dict[str, Split]:
        out = {}
        for split, train in (("train", True), ("test", False)):
            ds = self._dataset(train, download=False)
            x = as_tensor(np.asarray(ds.data)).permute(0, 3, 1, 2) / 255.0
            out[split] = (x, torch.as_tensor(ds.targets))
        return out
