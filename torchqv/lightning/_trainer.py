"""What the callbacks need from a Trainer and a LightningModule: the network they act on, input
batches from the data, metric logging, and rank-0 results shared with every process."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from ..errors import CheckpointError, ConfigError, DataError
from ..fake_quant import FakeQuantize
from ..graph import QuantizedModel
from ..quantize import batch_input, quantizers


def check_attr(attr: Any, who: str) -> None:
    """``attr`` must be a dotted path of attribute names (``"model"``, ``"net.0"``)."""
    parts = attr.split(".") if isinstance(attr, str) else []
    if not parts or not all(p.isidentifier() or p.isdigit() for p in parts):
        raise ConfigError(
            f"{who}: attr must name the LightningModule's attribute that holds the network (e.g. 'model', "
            f"'net.backbone'), got {attr!r}"
        )


def get_network(pl_module: pl.LightningModule, attr: str, who: str) -> nn.Module:
    """The network ``pl_module.<attr>`` (a dotted path) that a callback acts on."""
    try:
        net = pl_module.get_submodule(attr)
    except AttributeError:
        net = None
    if not isinstance(net, nn.Module) or net is pl_module:
        raise ConfigError(
            f"{who}: {type(pl_module).__name__} has no network at attribute {attr!r}; keep the network "
            f"as a sub-module (e.g. self.model = nn.Sequential(...)) and pass attr='<its name>'"
        )
    return net


def set_network(pl_module: pl.LightningModule, attr: str, net: nn.Module) -> None:
    parent, _, name = attr.rpartition(".")
    setattr(pl_module.get_submodule(parent) if parent else pl_module, name, net)


def is_quantized(net: nn.Module) -> bool:
    return any(isinstance(m, QuantizedModel) for m in net.modules())


def uncalibrated(net: nn.Module) -> list[str]:
    """Names of the quantizers without steps."""
    return [q.qname for q in quantizers(net) if not q.calibrated]


def quantizer_keys(net: nn.Module) -> set[str]:
    """State-dict keys of every quantizer (steps, zero points, observer statistics, LSQ steps)."""
    return {
        f"{name}.{key}"
        for name, m in net.named_modules()
        if isinstance(m, FakeQuantize)
        for key in m.state_dict()
    }


def broadcast_state(trainer: pl.Trainer | None, net: nn.Module, keys: set[str] | None = None) -> None:
    """Copy ``net``'s state (or the ``keys`` part of it) from rank 0 to every process."""
    if trainer is None or trainer.world_size <= 1:
        return
    state = {k: v.detach().cpu() for k, v in net.state_dict().items() if keys is None or k in keys}
    state = trainer.strategy.broadcast(state, src=0)
    result = net.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"processes hold different networks: {result.unexpected_keys}")


def broadcast(trainer: pl.Trainer | None, obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if trainer is None or trainer.world_size <= 1:
        return obj
    return trainer.strategy.broadcast(obj, src=0)


def _single_loader(loaders: Any, what: str) -> Iterable:
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        if not loaders:
            raise DataError(f"no {what} data: the data module gave no loader")
        return loaders[0]
    return loaders


def _main_process_view(loader: Iterable) -> Iterable:
    """A DataLoader with worker processes, read in this process instead (same dataset, sampler and
    collate function): iterating the original would reset its persistent workers under the
    Trainer's own iterator."""
    if not isinstance(loader, DataLoader) or loader.num_workers == 0:
        return loader
    ds, collate = loader.dataset, loader.collate_fn
    if isinstance(ds, IterableDataset):
        return DataLoader(ds, loader.batch_size, collate_fn=collate, drop_last=loader.drop_last)
    if loader.batch_sampler is not None:
        return DataLoader(ds, batch_sampler=loader.batch_sampler, collate_fn=collate)
    return DataLoader(ds, None, sampler=loader.sampler, collate_fn=collate)


def input_batches(loader: Iterable, count: int, trainer: pl.Trainer | None, who: str) -> list[torch.Tensor]:
    """The inputs of the first ``count`` batches (tensors or ``(x, y, ...)`` tuples), moved to the
    module's device.  The global random state is left as it was, so the training batches do not
    depend on whether a callback looked at the data first."""
    out = []
    with torch.random.fork_rng(devices=[]):
        for batch in itertools.islice(_main_process_view(loader), count):
            if trainer is not None:
                batch = trainer.strategy.batch_to_device(batch)
            out.append(batch_input(batch, f"{who}: a batch's input"))
    if not out:
        raise DataError(f"{who}: the data gave no batch")
    return out


def train_loader(trainer: pl.Trainer, who: str) -> Iterable:
    """The training data: the Trainer's loader (set up now if fitting has not reached it yet), else
    the data module's."""
    if trainer.train_dataloader is None and trainer.state.fn == TrainerFn.FITTING:
        trainer.fit_loop.setup_data()
    if trainer.train_dataloader is not None:
        return _single_loader(trainer.train_dataloader, "training")
    datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's data connector
    if datamodule is not None:
        return _single_loader(datamodule.train_dataloader(), "training")
    raise DataError(f"{who}: no training data to calibrate on; pass the batches explicitly")


def val_loader(trainer: pl.Trainer, who: str) -> Iterable:
    """The validation data: the Trainer's loader, else the data module's."""
    if trainer.val_dataloaders is not None:
        return _single_loader(trainer.val_dataloaders, "validation")
    datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's data connector
    if datamodule is not None:
        return _single_loader(datamodule.val_dataloader(), "validation")
    raise DataError(f"{who}: no validation data to take points from; pass the points explicitly")


def log_metrics(trainer: pl.Trainer | None, metrics: Mapping[str, float]) -> None:
    """Send metrics to the Trainer's loggers (rank 0 writes), at the current global step."""
    if trainer is None:
        return
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=trainer.global_step)


def show_progress(trainer: pl.Trainer | None, progress: bool | None) -> bool:
    """``progress``, or the Trainer's progress-bar setting (rank 0 only) when ``None``."""
    if progress is not None:
        return progress
    return trainer is not None and trainer.is_global_zero and trainer.progress_bar_callback is not None
