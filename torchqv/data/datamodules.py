"""Lightning DataModules: torchvision's image sets and the embedded tabular sets.

* :class:`VisionDataModule` (and ``MNISTDataModule``, ``FashionMNISTDataModule``,
  ``EMNISTDataModule``, ``CIFAR10DataModule``): read by torchvision's dataset classes from a
  data root (``root`` in the config, else ``$TORCHQV_DATA``, else ``./data``); archives are
  unpacked into a cache, never into the root, and nothing is downloaded unless
  ``download=True`` (see :mod:`torchqv.data.torchvision_sets`).  Images are float32 in [0, 1],
  ``C x H x W`` (or flat vectors with ``flatten=True``).
* :class:`TabularDataModule`: scikit-learn's digits and iris and the UCI seeds data, shipped
  with the package (:mod:`torchqv.data.tabular`).

Splits are deterministic: the validation set is a seeded random subset of the training split
(stratified for the tabular sets), the shuffling of the training batches is seeded too.

Every DataModule describes its data before ``setup()``: ``input_shape`` (one example's shape)
and ``num_classes``.  ``train_subset`` / ``test_subset`` (``None``: all) keep the first N
examples of the training split (after the validation split is taken out; its order is already
a seeded shuffle, so the first N are a deterministic random sample) and of the test split (in
its published order); a count larger than the split is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..errors import DataError
from ..extras import require

if TYPE_CHECKING:
    import pytorch_lightning as pl
else:
    pl = require("pytorch_lightning", "torchqv.data's DataModules")
train_test_split = require("sklearn.model_selection", "torchqv.data's DataModules").train_test_split

from .tabular import TABULAR, TABULAR_SHAPES, train_test  # noqa: E402
from .torchvision_sets import load_split, locate, vision_set  # noqa: E402


@dataclass
class VisionDataConfig:
    """An image data set: ``name`` is ``mnist``, ``fashion_mnist``, ``emnist`` (balanced split)
    or ``cifar10``.  ``val_size``: a fraction of the training split in (0, 1), or a count (0: no
    validation set).  ``cache_dir``: where archives are unpacked (default ``$TORCHQV_CACHE``,
    else ``~/.cache/torchqv``).  ``verify_md5``: check files against torchvision's checksums
    (archives when unpacked; CIFAR-10's files at every load).  ``train_subset`` /
    ``test_subset``: keep the first N training / test examples (``None``: all)."""

    name: str = "mnist"
    root: str | None = None
    download: bool = False
    cache_dir: str | None = None
    verify_md5: bool = True
    val_size: float = 0.1
    batch_size: int = 128
    eval_batch_size: int | None = None
    num_workers: int = 0
    seed: int = 0
    flatten: bool = False
    train_subset: int | None = None
    test_subset: int | None = None

    def __post_init__(self) -> None:
        vision_set(self.name)
        _check_loader_fields(self)


@dataclass
class TabularDataConfig:
    """An embedded set (``digits``, ``iris``, ``seeds``): ``test_size`` of the whole set is the
    test split, ``val_size`` of the rest the validation split (fractions, stratified).
    ``train_subset`` / ``test_subset``: keep the first N training / test examples (``None``: all)."""

    name: str = "digits"
    test_size: float = 0.25
    val_size: float = 0.2
    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int = 0
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None

    def __post_init__(self) -> None:
        if self.name not in TABULAR:
            raise DataError(f"unknown embedded data set {self.name!r}; choose one of {TABULAR}")
        if not 0 < self.test_size < 1:
            raise DataError(f"test_size must be a fraction in (0, 1), got {self.test_size}")
        _check_loader_fields(self)
        if not 0 <= self.val_size < 1:
            raise DataError(f"val_size must be a fraction in [0, 1), got {self.val_size}")


def _check_loader_fields(cfg: Any) -> None:
    if cfg.batch_size < 1 or (cfg.eval_batch_size is not None and cfg.eval_batch_size < 1):
        raise DataError(f"batch sizes must be >= 1, got {cfg.batch_size} and {cfg.eval_batch_size}")
    if cfg.num_workers < 0:
        raise DataError(f"num_workers must be >= 0, got {cfg.num_workers}")
    if cfg.val_size < 0 or (cfg.val_size >= 1 and cfg.val_size != int(cfg.val_size)):
        raise DataError(f"val_size must be a fraction in [0, 1) or a whole count, got {cfg.val_size}")
    for name in ("train_subset", "test_subset"):
        n = getattr(cfg, name)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise DataError(f"{name} must be a positive int (a number of examples) or None, got {n!r}")


def subset(ds: Dataset, n: int | None, what: str, data: str) -> Dataset:
    """The first ``n`` examples of ``ds`` (``None``: all); more than ``ds`` holds is an error naming
    ``what`` (the config field) and ``data`` (the split)."""
    if n is None:
        return ds
    size = len(ds)  # type: ignore[arg-type]  # torch's Dataset declares no __len__
    if n > size:
        raise DataError(f"{what}={n} exceeds the {size} examples of {data}; use at most {size} or None (all)")
    return ds if n == size else Subset(ds, range(n))


def _config(cls: type, config: Any, overrides: Mapping[str, Any]) -> Any:
    base: Any = config if isinstance(config, cls) else cls(**dict(config or {}))
    names = {f.name for f in fields(cls)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; valid: {sorted(names)}")
    return replace(base, **overrides)


class ImageTensors(Dataset):
    """uint8 images served as float32 in [0, 1] (optionally flattened), with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, flatten: bool = False):
        self.images, self.labels, self.flatten = images, labels, flatten

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].to(torch.float32).div_(255.0)
        return (x.flatten() if self.flatten else x), self.labels[i]


class _SplitDataModule(pl.LightningDataModule):
    """Shared loaders: seeded shuffling for training, fixed order for evaluation."""

    config: Any
    train_set: Dataset | None
    val_set: Dataset | None
    test_set: Dataset | None

    def _loader(self, ds: Dataset | None, train: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() (the Trainer does) before the loaders")
        cfg = self.config
        return DataLoader(
            ds,
            batch_size=cfg.batch_size if train else (cfg.eval_batch_size or cfg.batch_size),
            shuffle=train,
            generator=torch.Generator().manual_seed(cfg.seed) if train else None,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is not None and len(self.val_set) == 0:  # type: ignore[arg-type]  # torch's Dataset declares no __len__
            return []  # no validation split: Lightning skips validation
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)


def _val_count(val_size: float, n: int) -> int:
    count = round(val_size * n) if val_size < 1 else int(val_size)
    if count >= n:
        raise DataError(f"val_size={val_size} leaves no training examples out of {n}")
    return count


class VisionDataModule(_SplitDataModule):
    """A torchvision image set (see :class:`VisionDataConfig`); keyword arguments override the
    config's fields: ``VisionDataModule(name="cifar10", batch_size=256)``."""

    def __init__(self, config: VisionDataConfig | Mapping[str, Any] | None = None, **overrides: Any):
        super().__init__()
        self.config: VisionDataConfig = _config(VisionDataConfig, config, overrides)
        self.save_hyperparameters(asdict(self.config))
        self.train_set = self.val_set = self.test_set = None

    @property
    def num_classes(self) -> int:
        return vision_set(self.config.name).classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        c, h, w = vision_set(self.config.name).shape
        return (c * h * w,) if self.config.flatten else (c, h, w)

    def _root(self) -> Any:
        cfg = self.config
        return locate(cfg.name, cfg.root, cfg.cache_dir, cfg.download, cfg.verify_md5)

    def prepare_data(self) -> None:
        """Unpack archives or download (when allowed); Lightning runs it on one process per node."""
        self._root()

    def setup(self, stage: str | None = None) -> None:
        cfg = self.config
        root = self._root()
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = load_split(cfg.name, root, True, cfg.verify_md5)
            full = ImageTensors(images, labels, cfg.flatten)
            perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
            n_val = _val_count(cfg.val_size, len(full))
            self.val_set, train = Subset(full, perm[:n_val]), Subset(full, perm[n_val:])
            self.train_set = subset(train, cfg.train_subset, "train_subset", f"{cfg.name}'s training split")
        if stage in (None, "test", "predict") and self.test_set is None:
            test = ImageTensors(*load_split(cfg.name, root, False, cfg.verify_md5), cfg.flatten)
            self.test_set = subset(test, cfg.test_subset, "test_subset", f"{cfg.name}'s test split")


class _FixedVisionDataModule(VisionDataModule):
    """A :class:`VisionDataModule` for one data set, configured by keyword arguments."""

    set_name = ""

    def __init__(self, **overrides: Any):
        if overrides.get("name", self.set_name) != self.set_name:
            raise DataError(f"{type(self).__name__} reads {self.set_name!r}, not {overrides['name']!r}")
        super().__init__(None, **{**overrides, "name": self.set_name})


class MNISTDataModule(_FixedVisionDataModule):
    """MNIST (LeCun et al.): 60000 + 10000 handwritten digits, 1 x 28 x 28."""

    set_name = "mnist"


class FashionMNISTDataModule(_FixedVisionDataModule):
    """Fashion-MNIST (Xiao et al. 2017): 60000 + 10000 clothing images, 1 x 28 x 28."""

    set_name = "fashion_mnist"


class EMNISTDataModule(_FixedVisionDataModule):
    """EMNIST balanced split (Cohen et al. 2017): 112800 + 18800 characters in 47 classes, 1 x 28 x 28,
    transposed to MNIST's orientation."""

    set_name = "emnist"


class CIFAR10DataModule(_FixedVisionDataModule):
    """CIFAR-10 (Krizhevsky 2009): 50000 + 10000 colour images, 3 x 32 x 32."""

    set_name = "cifar10"


class TabularDataModule(_SplitDataModule):
    """An embedded tabular set (see :class:`TabularDataConfig`): features in [0, 1], no download."""

    def __init__(self, config: TabularDataConfig | Mapping[str, Any] | None = None, **overrides: Any):
        super().__init__()
        self.config: TabularDataConfig = _config(TabularDataConfig, config, overrides)
        self.save_hyperparameters(asdict(self.config))
        self.train_set = self.val_set = self.test_set = None

    @property
    def num_features(self) -> int:
        return TABULAR_SHAPES[self.config.name][0]

    @property
    def num_classes(self) -> int:
        return TABULAR_SHAPES[self.config.name][1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.num_features,)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        cfg = self.config
        xtr, xte, ytr, yte = train_test(cfg.name, cfg.test_size, cfg.seed)
        if cfg.val_size > 0:
            xtr, xva, ytr, yva = train_test_split(
                xtr, ytr, test_size=cfg.val_size, random_state=cfg.seed, stratify=ytr
            )
        else:
            xva, yva = xtr[:0], ytr[:0]
        if (xtr.shape[1], int(torch.cat([ytr, yte]).max()) + 1) != TABULAR_SHAPES[cfg.name]:
            raise DataError(f"the embedded {cfg.name} data does not match TABULAR_SHAPES")
        train, test = TensorDataset(xtr, ytr), TensorDataset(xte, yte)
        self.train_set = subset(train, cfg.train_subset, "train_subset", f"{cfg.name}'s training split")
        self.val_set = TensorDataset(xva, yva)
        self.test_set = subset(test, cfg.test_subset, "test_subset", f"{cfg.name}'s test split")
