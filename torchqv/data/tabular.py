"""Embedded tabular data sets that need no download: scikit-learn's digits and iris, UCI seeds.

Features are scaled to [0, 1] (digits: pixel / 16; iris and seeds: min-max over the whole data
set, fixed constants, so the verifier's input domain is the unit box); labels are 0-based
``int64``.  ``train_test`` gives a deterministic stratified split.  The seeds file ships with the
package (``files/seeds_dataset.txt``, CC BY 4.0, citation in ``files/SEEDS_CITATION.txt``).
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from ..errors import DataError
from ..extras import require

TABULAR = ("digits", "iris", "seeds")
# what each set holds, known without loading it: (features, classes)
TABULAR_SHAPES = {"digits": (64, 10), "iris": (4, 3), "seeds": (7, 3)}
# sets whose features are the pixels of an image (row by row): the image's C x H x W shape
TABULAR_IMAGES = {"digits": (1, 8, 8)}


def _seeds() -> tuple[np.ndarray, np.ndarray]:
    text = resources.files(__package__).joinpath("files/seeds_dataset.txt").read_text()
    table = np.loadtxt(text.splitlines(), dtype=np.float64)
    return table[:, :7], table[:, 7].astype(np.int64) - 1


def load_tabular(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: features (float32, in [0, 1]) and labels (int64, from 0) of an embedded set."""
    if name == "digits":
        data = require("sklearn.datasets", "load_tabular('digits')").load_digits()
        x, y = data.data / 16.0, data.target
    elif name == "iris":
        data = require("sklearn.datasets", "load_tabular('iris')").load_iris()
        x, y = data.data, data.target
    elif name == "seeds":
        x, y = _seeds()
    else:
        raise DataError(f"unknown embedded data set {name!r}; choose one of {TABULAR}")
    if name != "digits":
        lo, hi = x.min(0), x.max(0)
        x = (x - lo) / (hi - lo)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def train_test(
    name: str, test_size: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic stratified split ``(x_train, x_test, y_train, y_test)`` of an embedded set."""
    train_test_split = require("sklearn.model_selection", "torchqv.data.train_test").train_test_split
    if not 0 < test_size < 1:
        raise DataError(f"test_size must be in (0, 1), got {test_size}")
    x, y = load_tabular(name)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return xtr, xte, ytr, yte
