"""MNIST-1D (Greydanus & Kobak, 2020): 1-D sequences of length 40, 10 classes, generated
locally by the ``mnist1d`` package (4000 train / 1000 test with its default arguments).
Never downloads."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from normzoo.data.base import ArrayDataModule, Split, as_tensor


def cache_dir() -> Path:
    """Where generated datasets are cached: ``$NORMZOO_CACHE_DIR`` or ``~/.cache/normzoo``."""
    return Path(os.environ.get("NORMZOO_CACHE_DIR", Path.home() / ".cache" / "normzoo"))


def generate(dataset_seed: int) -> dict[str, Split]:
    """The MNIST-1D splits of ``dataset_seed``, generated once and then read from the cache.

    Generating takes about 10 s of CPU; a sweep of many runs reads the cached tensors
    instead (written atomically, so parallel runs can share the cache).
    """
    path = cache_dir() / f"mnist1d-seed{dataset_seed}.pt"
    if path.exists():
        try:
            return torch.load(path)
        except Exception:  # a damaged cache file: regenerate it
            pass
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = dataset_seed
    data = make_dataset(args)  # generated in memory, no download
    splits = {
        "train": (as_tensor(data["x"]).unsqueeze(1), as_tensor(data["y"], torch.long)),
        "test": (as_tensor(data["x_test"]).unsqueeze(1), as_tensor(data["y_test"], torch.long)),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(splits, tmp)
        tmp.replace(path)
    except OSError:  # a read-only home: no cache, still correct
        pass
    return splits


class MNIST1DDataModule(ArrayDataModule):
    """MNIST-1D as ``(1, 40)`` sequences; ``val_fraction`` of the 4000 training sequences
    are held out for validation.

    Args:
        dataset_seed: the generator's seed (the package default, 42, gives the paper's data).
    """

    input_shape = (1, 40)
    num_classes = 10
    name = "mnist1d"

    def __init__(self, *args, dataset_seed: int = 42, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dataset_seed = dataset_seed

    def _load(self) -> dict[str, Split]:
        return {k: (x.clone(), y.clone()) for k, (x, y) in generate(self.dataset_seed).items()}
