"""Hostile data files (issue 17, item 8): a truncated or corrupt file read with verify_md5=False is an
error that names the file (a truncated MNIST archive used to raise a bare EOFError)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

import torchqv as tq
from tests.test_datamodules import write_cifar, write_idx_set
from torchqv.data.datamodules import CIFAR10DataModule, MNISTDataModule


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("gz", [True, False], ids=["archive", "unpacked"])
def test_a_truncated_mnist_file_is_named(tmp_path, gz):
    write_idx_set(tmp_path / "MNIST" / "raw", "", "t10k", 10, gz=gz)
    bad = tmp_path / "MNIST" / "raw" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    truncate(bad)
    dm = MNISTDataModule(root=tmp_path, cache_dir=tmp_path / "cache", verify_md5=False, val_size=0)
    what = (
        r"truncated or corrupt archive \(EOFError"
        if gz
        else r"truncated or corrupt IDX file \(\d+ bytes, its header"
    )
    with pytest.raises(tq.QuantizationError, match=rf"{bad}: {what}.*replace it with the original"):
        dm.setup("fit")


def test_a_truncated_cifar_archive_is_named(tmp_path):
    write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    truncate(archive)
    dm = CIFAR10DataModule(root=tmp_path, cache_dir=tmp_path / "cache", verify_md5=False, val_size=0)
    with pytest.raises(tq.QuantizationError, match=rf"{archive}: truncated or corrupt archive"):
        dm.setup("fit")


def test_a_truncated_cifar_batch_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    truncate(folder / "data_batch_3")
    dm = CIFAR10DataModule(root=tmp_path, verify_md5=False, val_size=0)
    with pytest.raises(
        tq.QuantizationError,
        match=rf"{folder}: a CIFAR-10 file is truncated or corrupt.*verify_md5=True names the file",
    ):
        dm.setup("fit")
