"""Embedded tabular data: digits, iris and the packaged UCI seeds file."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest
import torch

from torchqv import QuantizationError
from torchqv.data import load_tabular, train_test


def test_seeds_file_is_the_uci_file() -> None:
    data = resources.files("torchqv.data").joinpath("files/seeds_dataset.txt").read_bytes()
    assert hashlib.md5(data).hexdigest() == "7ce8dcdd8a03cc8e461196b11fc0e746"


@pytest.mark.parametrize(
    ("name", "shape", "counts"),
    [
        ("digits", (1797, 64), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]),
        ("iris", (150, 4), [50, 50, 50]),
        ("seeds", (210, 7), [70, 70, 70]),
    ],
)
def test_shapes_labels_and_unit_box(name: str, shape: tuple, counts: list) -> None:
    x, y = load_tabular(name)
    assert tuple(x.shape) == shape and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.bincount().tolist() == counts
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_seeds_first_row_scaled_exactly() -> None:
    x, y = load_tabular("seeds")
    # first row: 15.26 14.84 0.871 5.763 3.312 2.221 5.22 (class 1); area range [10.59, 21.18]
    assert y[0] == 0
    assert x[0, 0].item() == pytest.approx((15.26 - 10.59) / (21.18 - 10.59), abs=1e-7)


def test_split_is_deterministic_and_stratified() -> None:
    a = train_test("iris", 0.2, seed=3)
    b = train_test("iris", 0.2, seed=3)
    assert all(torch.equal(s, t) for s, t in zip(a, b, strict=True))
    assert a[3].bincount().tolist() == [10, 10, 10]
    assert not torch.equal(train_test("iris", 0.2, seed=4)[1], a[1])


def test_bad_names_and_sizes() -> None:
    with pytest.raises(QuantizationError, match="unknown embedded data set"):
        load_tabular("cifar")
    with pytest.raises(QuantizationError, match="test_size"):
        train_test("iris", 1.5)
