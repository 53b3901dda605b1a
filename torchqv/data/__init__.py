"""Datasets: readers of the real on-disk formats (the Lightning DataModules build on them)."""

from .idx import load_mnist, read_idx

__all__ = ["load_mnist", "read_idx"]
