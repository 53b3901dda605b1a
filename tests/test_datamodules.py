"""DataModules on small files in the real on-disk formats (gzip IDX for the MNIST family, the
python pickles for CIFAR-10), read through torchvision's dataset classes; one test on real MNIST."""

from __future__ import annotations

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import SHARED_DATA, needs_shared_data
from torchqv.data.datamodules import (
    CIFAR10DataModule,
    EMNISTDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    TabularDataModule,
    VisionDataConfig,
    VisionDataModule,
)
from torchqv.data.idx import load_mnist
from torchqv.data.tabular import train_test

N_TRAIN, N_TEST = 20, 6


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000 08 <ndim>, big-endian dimensions, data."""
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return bytes([0, 0, 0x08, array.ndim]) + dims + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, prefix: str, test: str, classes: int, gz: bool = True) -> dict:
    """Train and test images and labels as torchvision's four IDX files; returns the arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, classes, N_TRAIN, dtype=np.uint8),
        f"{test}-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        f"{test}-labels-idx1-ubyte": rng.integers(0, classes, N_TEST, dtype=np.uint8),
    }
    folder.mkdir(parents=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{prefix}{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / f"{prefix}{name}").write_bytes(data)
    return {
        "train": arrays["train-images-idx3-ubyte"],
        "train_labels": arrays["train-labels-idx1-ubyte"],
        "test": arrays[f"{test}-images-idx3-ubyte"],
        "test_labels": arrays[f"{test}-labels-idx1-ubyte"],
    }


def tree(root: Path) -> list[tuple[str, float]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mtime) for p in root.rglob("*"))


def val_indices(n: int, n_val: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()[:n_val]


@pytest.mark.parametrize(
    ("module", "folder", "prefix", "test", "classes", "transposed"),
    [
        (MNISTDataModule, "MNIST/raw", "", "t10k", 10, False),
        (FashionMNISTDataModule, "FashionMNIST/raw", "", "t10k", 10, False),
        (EMNISTDataModule, "EMNIST/raw/gzip", "emnist-balanced-", "test", 47, True),  # as in gzip.zip
    ],
)
def test_mnist_family_from_gzip_archives_without_writing_the_root(
    tmp_path: Path, module: type, folder: str, prefix: str, test: str, classes: int, transposed: bool
) -> None:
    root, cache = tmp_path / "data", tmp_path / "cache"
    written = write_idx_set(root / folder, prefix, test, classes)
    before = tree(root)
    dm = module(root=str(root), cache_dir=str(cache), verify_md5=False, val_size=5, batch_size=4, seed=3)
    dm.prepare_data()
    dm.setup()
    assert tree(root) == before  # archives were unpacked into the cache, not next to them
    assert len(list(cache.rglob("*-ubyte"))) == 4
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (N_TRAIN - 5, 5, N_TEST)
    assert dm.num_classes == classes and dm.input_shape == (1, 28, 28)

    expected = torch.from_numpy(written["train"])
    expected = expected.transpose(1, 2) if transposed else expected  # EMNIST is stored transposed
    full = dm.train_set.dataset
    assert torch.equal(full.images[:, 0], expected)
    assert full.labels.tolist() == written["train_labels"].tolist()
    assert dm.val_set.indices == val_indices(N_TRAIN, 5, seed=3)
    x, y = dm.val_set[0]
    i = dm.val_set.indices[0]
    assert x.dtype == torch.float32 and torch.equal(x[0], expected[i].float() / 255)
    assert int(y) == int(written["train_labels"][i])
    test_x, test_y = next(iter(dm.test_dataloader()))
    expected = torch.from_numpy(written["test"][:4])
    expected = expected.transpose(1, 2) if transposed else expected
    assert torch.equal(test_x[:, 0], expected.float() / 255)
    assert test_y.tolist() == written["test_labels"][:4].tolist()


def test_splits_and_shuffling_are_seeded(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "MNIST/raw", "", "t10k", 10)
    kw = dict(root=str(tmp_path), cache_dir=str(tmp_path / "cache"), verify_md5=False, val_size=0.25)

    def loaded(seed: int) -> MNISTDataModule:
        dm = MNISTDataModule(**kw, seed=seed, batch_size=7)
        dm.setup("fit")
        return dm

    a, b, c = loaded(1), loaded(1), loaded(2)
    assert a.val_set.indices == b.val_set.indices != c.val_set.indices
    assert len(a.val_set) == 5
    assert [y.tolist() for _, y in a.train_dataloader()] == [y.tolist() for _, y in b.train_dataloader()]


def test_unpacked_files_are_read_in_place(tmp_path: Path) -> None:
    written = write_idx_set(tmp_path / "MNIST/raw", "", "t10k", 10, gz=False)
    dm = MNISTDataModule(root=str(tmp_path), cache_dir=str(tmp_path / "cache"), flatten=True, val_size=0)
    dm.setup()
    assert not (tmp_path / "cache").exists()
    assert len(dm.train_set) == N_TRAIN and len(dm.val_set) == 0 and dm.val_dataloader() == []
    x, _ = dm.test_set[2]
    assert x.shape == (784,) and dm.input_shape == (784,)
    assert torch.equal(x, torch.from_numpy(written["test"][2]).flatten().float() / 255)


def test_archives_are_checked_against_torchvision_md5(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "MNIST/raw", "", "t10k", 10)
    dm = MNISTDataModule(root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"MD5.*verify_md5=False"):
        dm.setup()


def test_missing_data_names_the_place_and_the_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TORCHQV_DATA", raising=False)
    dm = FashionMNISTDataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "download=True" in msg and "TORCHQV_DATA" in msg
    assert not (tmp_path / "nowhere").exists()  # nothing downloaded or created


def test_root_and_cache_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    write_idx_set(tmp_path / "data/MNIST/raw", "", "t10k", 10)
    monkeypatch.setenv("TORCHQV_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TORCHQV_CACHE", str(tmp_path / "cache"))
    dm = VisionDataModule(VisionDataConfig(name="mnist", verify_md5=False))
    dm.setup("test")
    assert len(dm.test_set) == N_TEST and len(list((tmp_path / "cache").rglob("t10k-*"))) == 2


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        VisionDataModule(name="svhn")
    with pytest.raises(ValueError, match="reads 'mnist'"):
        MNISTDataModule(name="cifar10")
    with pytest.raises(TypeError, match="unknown VisionDataConfig field"):
        VisionDataModule(batchsize=3)
    with pytest.raises(ValueError, match="val_size"):
        VisionDataModule(val_size=1.5)


def write_cifar(folder: Path) -> dict:
    """torchvision's CIFAR-10 python pickles: 5 training batches of 2 images, a test batch of 3."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    out = {}
    for name, n in [*((f"data_batch_{i}", 2) for i in range(1, 6)), ("test_batch", 3)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # rows: 1024 red, 1024 green, 1024 blue
        labels = rng.integers(0, 10, n).tolist()
        names = [f"{name}_{i}.png" for i in range(n)]
        batch = {"batch_label": name, "labels": labels, "data": data, "filenames": names}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        out[name] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"label_names": names, "num_cases_per_batch": 2, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


def test_cifar10_from_the_python_pickles(tmp_path: Path) -> None:
    written = write_cifar(tmp_path / "cifar-10-batches-py")
    dm = CIFAR10DataModule(root=str(tmp_path), verify_md5=False, val_size=0.2, seed=0)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (8, 2, 3)
    assert dm.num_classes == 10 and dm.input_shape == (3, 32, 32)
    data, labels = written["test_batch"]
    for i in range(3):
        x, y = dm.test_set[i]
        assert torch.equal(x, torch.from_numpy(data[i]).reshape(3, 32, 32).float() / 255)
        assert int(y) == labels[i]
    train = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(dm.train_set.dataset.images, torch.from_numpy(train).reshape(10, 3, 32, 32))
    with pytest.raises(ValueError, match="data_batch_1: MD5"):
        CIFAR10DataModule(root=str(tmp_path)).setup()


def test_cifar10_from_its_tar_archive(tmp_path: Path) -> None:
    written = write_cifar(tmp_path / "build" / "cifar-10-batches-py")
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    before = tree(root)
    dm = CIFAR10DataModule(root=str(root), cache_dir=str(tmp_path / "cache"), verify_md5=False)
    dm.setup("test")
    assert tree(root) == before
    data, labels = written["test_batch"]
    assert torch.equal(dm.test_set.images, torch.from_numpy(data).reshape(3, 3, 32, 32))
    assert dm.test_set.labels.tolist() == labels


def test_tabular_splits_are_stratified_and_deterministic() -> None:
    dm = TabularDataModule(name="seeds", test_size=0.2, val_size=0.25, seed=5)
    dm.setup()
    xtr, xte, _, _ = train_test("seeds", 0.2, seed=5)
    train_x, train_y = dm.train_set.tensors
    val_x, val_y = dm.val_set.tensors
    assert (len(train_y), len(val_y), len(dm.test_set)) == (126, 42, 42)
    assert torch.equal(dm.test_set.tensors[0], xte)
    rows = lambda x: sorted(map(tuple, x.tolist()))  # noqa: E731
    assert rows(torch.cat([train_x, val_x])) == rows(xtr)  # train + val = the training split
    assert val_y.bincount().tolist() == [14, 14, 14]
    again = TabularDataModule(name="seeds", test_size=0.2, val_size=0.25, seed=5)
    again.setup()
    assert torch.equal(again.val_set.tensors[0], val_x)
    assert (dm.num_features, dm.num_classes) == (7, 3)


class TinyNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def training_step(self, batch, idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def test_step(self, batch, idx):
        x, y = batch
        self.log("test_acc", (self.model(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fits_and_tests_on_a_vision_datamodule(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "MNIST/raw", "", "t10k", 10)
    dm = MNISTDataModule(root=str(tmp_path), cache_dir=str(tmp_path / "c"), verify_md5=False, batch_size=8)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(TinyNet(), datamodule=dm)
    assert trainer.global_step == 3  # 18 training images in batches of 8
    (result,) = trainer.test(trainer.lightning_module, datamodule=dm)
    assert 0.0 <= result["test_acc"] <= 1.0


@needs_shared_data("MNIST")
def test_real_mnist_through_torchvision(tmp_path: Path) -> None:
    before = tree(SHARED_DATA / "MNIST")
    dm = MNISTDataModule(root=str(SHARED_DATA), cache_dir=str(tmp_path), val_size=5000)
    dm.prepare_data()
    dm.setup()
    assert tree(SHARED_DATA / "MNIST") == before
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    full = dm.train_set.dataset
    assert int(full.labels[0]) == 5 and int(dm.test_set.labels[0]) == 7
    # torchvision's reader and torchqv's own IDX reader agree on every pixel and label
    x, y = load_mnist(SHARED_DATA, "test")
    assert torch.equal(dm.test_set.images.float() / 255, x) and torch.equal(dm.test_set.labels, y)
    assert full.labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.parametrize(
    ("name", "shape", "classes"), [("digits", (64,), 10), ("iris", (4,), 3), ("seeds", (7,), 3)]
)
def test_every_datamodule_describes_its_data_before_setup(name: str, shape: tuple, classes: int) -> None:
    dm = TabularDataModule(name=name, val_size=0.0)
    assert (dm.input_shape, dm.num_classes, dm.num_features) == (shape, classes, shape[0])  # before setup
    dm.setup()
    x, _ = dm.train_set[0]
    assert tuple(x.shape) == dm.input_shape
    assert int(max(dm.train_set.tensors[1].max(), dm.test_set.tensors[1].max())) + 1 == dm.num_classes
    for cls in (TabularDataModule, MNISTDataModule, CIFAR10DataModule):  # the same attributes everywhere
        assert isinstance(cls.input_shape, property)
        assert isinstance(cls.num_classes, property)


def test_subsets_keep_the_first_examples_deterministically(tmp_path: Path) -> None:
    full = TabularDataModule(name="iris", val_size=0.2, seed=1)
    full.setup()
    dm = TabularDataModule(name="iris", val_size=0.2, seed=1, train_subset=10, test_subset=5)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (10, len(full.val_set), 5)
    assert all(torch.equal(dm.train_set[i][0], full.train_set[i][0]) for i in range(10))
    assert all(torch.equal(dm.test_set[i][0], full.test_set[i][0]) for i in range(5))
    write_idx_set(tmp_path / "MNIST/raw", "", "t10k", 10)
    kw = dict(root=str(tmp_path), cache_dir=str(tmp_path / "c"), verify_md5=False, val_size=5, seed=3)
    whole, cut = MNISTDataModule(**kw), MNISTDataModule(**kw, train_subset=4, test_subset=N_TEST)
    whole.setup()
    cut.setup()
    assert len(cut.train_set) == 4 and len(cut.test_set) == N_TEST
    assert all(torch.equal(cut.train_set[i][0], whole.train_set[i][0]) for i in range(4))
    assert cut.val_set.indices == whole.val_set.indices  # the validation split is untouched


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_subset": 0}, r"train_subset must be a positive int .*got 0"),
        ({"test_subset": 2.5}, r"test_subset must be a positive int .*got 2.5"),
        ({"train_subset": True}, r"train_subset must be a positive int .*got True"),
    ],
)
def test_subset_values_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TabularDataModule(name="iris", **kwargs)
    with pytest.raises(ValueError, match=message):
        VisionDataModule(name="mnist", **kwargs)


def test_subset_larger_than_the_split_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"test_subset=64 exceeds the 38 examples of iris's test split"):
        TabularDataModule(name="iris", test_subset=64).setup()
    write_cifar(tmp_path / "cifar-10-batches-py")
    with pytest.raises(ValueError, match=r"train_subset=9 exceeds the 8 examples of cifar10's training"):
        CIFAR10DataModule(root=str(tmp_path), verify_md5=False, val_size=0.2, train_subset=9).setup()
