"""Data, networks and float training for the recipes.

Data comes from torchqv's DataModules (:class:`~torchqv.data.datamodules.TabularDataModule`,
:class:`~torchqv.data.datamodules.VisionDataModule`): features in [0, 1], deterministic splits.
Float networks are trained with a Lightning Trainer (Adam, cross entropy); quantization-aware
training passes the ``QuantizationAwareTraining`` callback to the same :func:`fit`.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.datamodules import TabularDataModule, VisionDataModule
from ..data.tabular import TABULAR, TABULAR_IMAGES
from ..errors import ConfigError
from ..progress import show_progress
from ..verify import from_onnx
from .config import FLOAT_ACTIVATIONS, DatasetConfig, ModelConfig, TrainerConfig


@dataclass
class Data:
    """Training and test splits of one data set, with what a network needs to know of it."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    image_shape: tuple[int, ...] | None = None  # a flat set of pixels (digits): the image's C x H x W


def _first(ds: Dataset, n: int | None) -> Dataset:
    return ds if n is None or n >= len(ds) else Subset(ds, range(n))  # type: ignore[arg-type]  # torch's Dataset declares no __len__


def load_data(cfg: DatasetConfig, seed: int = 0) -> Data:
    """The data set of ``cfg`` (tabular: stratified split; images: the official split), the
    training split in seeded random order, cut to its first ``train_subset`` / ``test_subset``
    examples by the DataModule (more than the split holds is an error)."""
    subsets: dict[str, Any] = {"train_subset": cfg.train_subset, "test_subset": cfg.test_subset}
    dm: TabularDataModule | VisionDataModule
    if cfg.name in TABULAR:
        dm = TabularDataModule(name=cfg.name, test_size=cfg.test_size, val_size=0.0, seed=seed, **subsets)
    else:
        dm = VisionDataModule(
            name=cfg.name,
            root=cfg.root,
            cache_dir=cfg.cache_dir,
            download=cfg.download,
            verify_md5=cfg.verify_md5,
            val_size=0,
            seed=seed,
            **subsets,
        )
        dm.prepare_data()
    try:
        dm.setup()
    except ValueError as exc:
        if "_subset=" in str(exc):
            raise ConfigError(f"dataset.{exc}") from exc
        raise
    assert dm.train_set is not None and dm.test_set is not None
    shape = tuple(dm.input_shape)
    image = shape if len(shape) == 3 else TABULAR_IMAGES.get(cfg.name)
    return Data(cfg.name, dm.train_set, dm.test_set, int(dm.num_classes), shape, image)


def tensors(ds: Dataset, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples (all if ``None``) as ``(x, y)`` tensors."""
    xs, ys = [], []
    for x, y in DataLoader(_first(ds, n), batch_size=1024):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def build_model(
    cfg: ModelConfig,
    input_shape: Sequence[int],
    num_classes: int,
    image_shape: Sequence[int] | None = None,
) -> nn.Module:
    """An untrained network for ``cfg`` (``cfg.load`` is read by :func:`load_model`).  A CNN on a
    flat input that holds an image's pixels (``image_shape``, e.g. digits' 1 x 8 x 8) starts with
    an ``nn.Unflatten`` to that shape."""
    if cfg.target is not None:
        return _instantiate(cfg, input_shape, num_classes)
    act = FLOAT_ACTIVATIONS[cfg.activation]
    layers: list[nn.Module] = []
    if cfg.kind == "mlp":
        widths = [math.prod(input_shape), *cfg.hidden, num_classes]
        if len(input_shape) > 1:
            layers.append(nn.Flatten())
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), act()]
        return nn.Sequential(*layers[:-1])
    if len(input_shape) == 1 and image_shape is not None and math.prod(image_shape) == input_shape[0]:
        layers.append(nn.Unflatten(1, tuple(image_shape)))
        input_shape = tuple(image_shape)
    if len(input_shape) != 3:
        raise ConfigError(f"model.kind='cnn' needs C x H x W images, got input shape {tuple(input_shape)}")
    c, h, w = input_shape
    for out in cfg.channels:
        layers += [nn.Conv2d(c, out, 3, padding=1), act(), nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
    if h < 1 or w < 1:
        raise ConfigError(
            f"model.channels: {len(cfg.channels)} pooling stages leave no pixels of {input_shape}"
        )
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, num_classes))


def _instantiate(cfg: ModelConfig, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """``cfg.target`` built by Hydra with ``cfg.kwargs`` (and the data's classes and channels)."""
    from hydra.utils import get_object, instantiate

    assert cfg.target is not None  # called for a target only
    try:
        factory = get_object(cfg.target)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"model.target={cfg.target!r} cannot be imported: {exc}") from exc
    params = inspect.signature(factory).parameters
    extra = {"num_classes": num_classes, "in_channels": input_shape[0] if len(input_shape) > 1 else None}
    kwargs = {k: v for k, v in extra.items() if k in params and k not in cfg.kwargs and v is not None}
    model = instantiate({"_target_": cfg.target, **cfg.kwargs, **kwargs})
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.target={cfg.target!r} built a {type(model).__name__}, not an nn.Module")
    return model


def load_model(
    cfg: ModelConfig, input_shape: Sequence[int], num_classes: int, image_shape: Sequence[int] | None = None
) -> nn.Module:
    """The network ``cfg.load`` names: an ONNX file, or a state dict for :func:`build_model`'s network."""
    path = Path(str(cfg.load))
    if not path.exists():
        raise FileNotFoundError(f"model.load: {path} does not exist")
    if path.suffix == ".onnx":
        return from_onnx(path).eval()
    model = build_model(cfg, input_shape, num_classes, image_shape)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


class Classifier(pl.LightningModule):
    """Cross entropy with Adam on ``self.model`` (the attribute torchqv's callbacks act on); the
    learning rate is constant or follows a cosine schedule over ``epochs``."""

    def __init__(self, model: nn.Module, lr: float, schedule: str = "constant", epochs: int = 1):
        super().__init__()
        self.model, self.lr, self.schedule, self.epochs = model, lr, schedule, epochs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        if self.schedule == "constant":
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs),
        }


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's banners (accelerators found, tips) at INFO level stay out of the recipe's log."""
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def fit(
    model: nn.Module,
    train: Dataset,
    cfg: TrainerConfig,
    epochs: int,
    lr: float,
    callbacks: Sequence[Callback] = (),
    root: str | Path | None = None,
) -> nn.Module:
    """Train ``model`` for ``epochs`` with a Lightning Trainer; returns the trained network (with
    a ``QuantizationAwareTraining`` callback: the quantized one), in eval mode."""
    # Lightning keeps the modes it finds, and eval mode is the exact (non-differentiable) path
    module = Classifier(model.train(), lr, cfg.lr_schedule, epochs)
    if epochs == 0:
        return module.model.eval()
    loader = DataLoader(
        train,
        batch_size=cfg.batch_size or len(train),  # type: ignore[arg-type]  # torch's Dataset declares no __len__
        shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    with warnings.catch_warnings(), _quiet_lightning():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # in-memory tensors
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # inside Lightning 2.6
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator=cfg.accelerator,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=show_progress(cfg.progress),
            limit_val_batches=0,
            num_sanity_val_steps=0,
            default_root_dir=root,
            callbacks=list(callbacks),
        )
        trainer.fit(module, train_dataloaders=loader)
    return module.model.eval()


def accuracy(model: nn.Module, ds: Dataset, batch_size: int = 1000) -> float:
    """Top-1 accuracy on ``ds`` (``model`` in eval mode: the exact simulation for torchqv networks)."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in DataLoader(ds, batch_size=batch_size):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total
