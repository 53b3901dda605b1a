"""Datasets: readers of the real on-disk formats and the embedded tabular sets."""

from .idx import load_mnist, read_idx
from .tabular import TABULAR, load_tabular, train_test

__all__ = ["TABULAR", "load_mnist", "load_tabular", "read_idx", "train_test"]
