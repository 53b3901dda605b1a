"""Datasets: readers of the real on-disk formats, the embedded tabular sets, Lightning DataModules."""

from .idx import load_mnist, read_idx
from .tabular import TABULAR, load_tabular, train_test

_DATAMODULES = (
    "CIFAR10DataModule",
    "EMNISTDataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "TabularDataConfig",
    "TabularDataModule",
    "VisionDataConfig",
    "VisionDataModule",
)


def __getattr__(name: str):  # the DataModules import pytorch_lightning: only when asked for
    if name in _DATAMODULES:
        from . import datamodules

        return getattr(datamodules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TABULAR", "load_mnist", "load_tabular", "read_idx", "train_test", *_DATAMODULES]
