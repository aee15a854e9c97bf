"""MNIST-1D (Greydanus & Kobak, 2020): 1-D sequences of length 40, 10 classes, generated
locally by the ``mnist1d`` package (4000 train / 1000 test with its default arguments).
Never downloads."""

from __future__ import annotations

from normzoo.data.base import ArrayDataModule, Split, as_tensor


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
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed = self.dataset_seed
        data = make_dataset(args)  # generated in memory, no download
        return {
            "train": (as_tensor(data["x"]).unsqueeze(1), as_tensor(data["y"])),
            "test": (as_tensor(data["x_test"]).unsqueeze(1), as_tensor(data["y_test"])),
        }
