"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), shipped inside
scikit-learn: no download."""

from __future__ import annotations

import torch

from normzoo.data.base import ArrayDataModule, Split, as_tensor


class DigitsDataModule(ArrayDataModule):
    """The 8x8 digits as ``(1, 8, 8)`` images; a stratified, seeded 20% test split, then
    ``val_fraction`` of the rest for validation."""

    input_shape = (1, 8, 8)
    num_classes = 10
    name = "digits"

    def __init__(self, *args, test_fraction: float = 0.2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.test_fraction = test_fraction

    def _load(self) -> dict[str, Split]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        data = load_digits()
        x = as_tensor(data.images).unsqueeze(1)
        y = torch.as_tensor(data.target)
        idx = torch.arange(len(y)).numpy()
        train_idx, test_idx = train_test_split(
            idx, test_size=self.test_fraction, random_state=self.split_seed, stratify=data.target
        )
        return {"train": (x[train_idx], y[train_idx]), "test": (x[test_idx], y[test_idx])}
