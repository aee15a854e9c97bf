"""LightningDataModules for the embedded datasets (imports Lightning; not loaded by
``import normzoo``)."""

from normzoo.data.base import ArrayDataModule
from normzoo.data.cifar10 import CIFAR10DataModule
from normzoo.data.digits import DigitsDataModule
from normzoo.data.mnist1d import MNIST1DDataModule
from normzoo.data.synthetic import SyntheticDataModule

__all__ = [
    "ArrayDataModule",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "MNIST1DDataModule",
    "SyntheticDataModule",
]
