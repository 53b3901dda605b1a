"""``QuantizationAwareTraining``: train a LightningModule's network with fake quantization.

Lightning's own QAT callback was removed (Lightning PR 16750) because it converted the model at
the end of fitting, so checkpoints did not match the model ``trainer.test(ckpt_path=...)``
rebuilt.  Here the quantized modules are ordinary modules with ordinary state dicts, swapped in
by ``setup`` (which Lightning calls before any checkpoint is restored, in every stage) and never
converted afterwards.  The settings of the swap travel in the checkpoint as the extra state of a
small record module (``pl_module.torchqv_qat_<attr>``), so loading a checkpoint made with other
settings fails loudly instead of misreading the steps.

Timeline of a fit: ``setup`` quantizes (folding batch norm, :mod:`torchqv.batchnorm`);
``on_fit_start`` calibrates on the first training batches unless every step is already known
(restored from a checkpoint); during training batches the observers keep updating the steps
until ``freeze_observers_epoch``; the forward pass fake-quantizes (straight-through estimator,
or LSQ with ``QConfig(learn_step=True)``, whose steps are learned, never observed).  With several
processes, steps are chosen from rank 0's batches and copied to every rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..quantize import QConfig, calibrate, quantize, quantizers
from ..tracing import make_plan
from . import _trainer as T

RECORD_PREFIX = "torchqv_qat_"


@dataclass
class QATReport:
    """What the callback did: ``folded_batchnorm`` (names), ``calibration_batches`` (0: steps were
    restored or already set), ``observers_frozen_at`` (the epoch, or ``None``)."""

    swapped: bool = False
    folded_batchnorm: list[str] = field(default_factory=list)
    calibration_batches: int = 0
    observers_frozen_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class QATRecord(nn.Module):
    """Carries the settings of a quantization swap in the state dict (``_extra_state``); loading a
    state dict made with other settings raises."""

    def __init__(self, settings: dict[str, Any]):
        super().__init__()
        self.settings = settings

    def get_extra_state(self) -> dict[str, Any]:
        return self.settings

    def set_extra_state(self, state: Any) -> None:
        if state == self.settings:
            return
        if not isinstance(state, dict):
            raise CheckpointError(f"malformed torchqv QAT record in the checkpoint: {state!r}")
        diff = [
            f"{k}: checkpoint {state.get(k)!r}, callback {self.settings.get(k)!r}"
            for k in sorted(set(state) | set(self.settings))
            if state.get(k) != self.settings.get(k)
        ]
        raise CheckpointError(
            "the checkpoint was trained with other quantization settings ("
            + "; ".join(diff)
            + "); configure QuantizationAwareTraining as when it was saved"
        )


def _as_config(value: QConfig | Mapping[str, Any] | None) -> QConfig | None:
    return QConfig.from_dict(value) if isinstance(value, Mapping) else value


class QuantizationAwareTraining(Callback):
    """Quantize ``pl_module.<attr>`` with ``config`` (and per-module ``overrides``, as in
    ``tq.quantize``) when fitting starts and train it with fake quantization.

    ``calibration_batches``: how many training batches calibrate the observers (or give
    ``calibration_data``, an iterable of batches).  ``freeze_observers_epoch``: from this epoch on
    the steps stay fixed (``None``: observers update during every training batch; ``0``: only
    calibration sets them).  BatchNorm that follows a Conv/Linear is folded into it at the swap
    (``tq.quantize`` does it; its statistics are then frozen for the whole of QAT; see
    :mod:`torchqv.batchnorm`).  Attach the same callback to the Trainer that tests,
    validates, predicts or resumes from a checkpoint: the float network is swapped before the
    checkpoint is loaded.  ``callback.report`` records what was done.  Without a Trainer, load a
    checkpoint with :func:`load_quantized_checkpoint` (or call :func:`restore_quantized` from the
    module's ``on_load_checkpoint``): plain ``load_from_checkpoint`` builds the float network.
    """

    def __init__(
        self,
        config: QConfig | Mapping[str, Any],
        overrides: Mapping[str, QConfig | Mapping[str, Any] | None] | None = None,
        attr: str = "model",
        calibration_batches: int = 8,
        calibration_data: Iterable[Any] | None = None,
        freeze_observers_epoch: int | None = None,
    ):
        checked = _as_config(config)
        if not isinstance(checked, QConfig):
            raise ConfigError(f"config must be a QConfig or a dict, got {type(checked).__name__}")
        config = checked
        if (
            isinstance(calibration_batches, bool)
            or not isinstance(calibration_batches, int)
            or calibration_batches < 1
        ):
            raise ConfigError(f"calibration_batches must be an int >= 1, got {calibration_batches!r}")
        epoch = freeze_observers_epoch
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
            raise ConfigError(f"freeze_observers_epoch must be an int >= 0 or None, got {epoch!r}")
        T.check_attr(attr, type(self).__name__)
        self.config = config
        self.overrides = make_plan(config, overrides).overrides
        self.attr = attr
        self.calibration_batches = calibration_batches
        self.calibration_data = calibration_data
        self.freeze_observers_epoch = freeze_observers_epoch
        self.report = QATReport()

    # ------------------------------------------------------------------ settings
    @property
    def record_name(self) -> str:
        return RECORD_PREFIX + self.attr.replace(".", "_")

    def settings(self) -> dict[str, Any]:
        """Everything the swap depends on, as plain data (stored in checkpoints)."""
        return {
            "attr": self.attr,
            "config": self.config.to_dict(),
            "overrides": {k: (v.to_dict() if v is not None else None) for k, v in self.overrides.items()},
        }

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> QuantizationAwareTraining:
        """The callback that made a checkpoint, from its stored :meth:`settings`."""
        config, overrides, attr = settings["config"], settings["overrides"], settings["attr"]
        return cls(config, overrides, attr)

    # ------------------------------------------------------------------ swap
    def quantize_module(self, pl_module: pl.LightningModule) -> nn.Module:
        """Swap the float network for its quantized version (a no-op if it is quantized already)."""
        net = T.get_network(pl_module, self.attr, type(self).__name__)
        if T.is_quantized(net):
            return net
        qnet = quantize(net, self.config, self.overrides)
        T.set_network(pl_module, self.attr, qnet)
        pl_module.add_module(self.record_name, QATRecord(self.settings()))
        self.report.swapped, self.report.folded_batchnorm = True, list(qnet.folded_batchnorm)
        return qnet

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.quantize_module(pl_module)

    # ------------------------------------------------------------------ calibration
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = T.get_network(pl_module, self.attr, type(self).__name__)
        if not T.uncalibrated(net):
            return
        who = type(self).__name__
        data = self.calibration_data if self.calibration_data is not None else T.train_loader(trainer, who)
        batches = T.input_batches(data, self.calibration_batches, trainer, who)
        calibrate(net, batches, progress=False)
        T.broadcast_state(trainer, net, T.quantizer_keys(net))
        self.report.calibration_batches = len(batches)

    def _check_calibrated(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        missing = T.uncalibrated(T.get_network(pl_module, self.attr, type(self).__name__))
        if missing:
            raise ConfigError(
                f"{type(self).__name__}: the quantized network has no steps for {missing[:3]}: evaluate a "
                "fitted model, or pass ckpt_path= a checkpoint saved while training with this callback"
            )

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_calibrated(trainer, pl_module)
        self._sync(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_calibrated(trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_calibrated(trainer, pl_module)

    # ------------------------------------------------------------------ observers
    def _observing(self, epoch: int) -> bool:
        return self.freeze_observers_epoch is None or epoch < self.freeze_observers_epoch

    def _set_observers(self, pl_module: pl.LightningModule, on: bool) -> None:
        for q in quantizers(T.get_network(pl_module, self.attr, type(self).__name__)):
            q.observer_enabled = on and q.observer is not None and not q.learn_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        epoch = trainer.current_epoch
        on = self._observing(epoch)
        if not on and self.report.observers_frozen_at is None:
            self.report.observers_frozen_at = epoch
            rank_zero_info(f"{type(self).__name__}: observers frozen at epoch {epoch}")
        self._set_observers(pl_module, on)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._set_observers(pl_module, False)

    # ------------------------------------------------------------------ processes
    def _sync(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Every rank takes rank 0's steps (observers see each rank's own batches)."""
        if trainer.world_size > 1 and trainer.state.fn == TrainerFn.FITTING:
            net = T.get_network(pl_module, self.attr, type(self).__name__)
            T.broadcast_state(trainer, net, T.quantizer_keys(net))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(trainer, pl_module)


def restore_quantized(pl_module: pl.LightningModule, checkpoint: Mapping[str, Any]) -> None:
    """Swap in the quantized network(s) a checkpoint was saved with, before its state dict is loaded.

    For ``LightningModule.load_from_checkpoint``, which runs no callback: call it from the module's
    ``on_load_checkpoint(self, checkpoint)``, or load with :func:`load_quantized_checkpoint`.
    """
    state = checkpoint.get("state_dict", {})
    for key, settings in state.items():
        if key.startswith(RECORD_PREFIX) and key.endswith("._extra_state"):
            QuantizationAwareTraining.from_settings(settings).quantize_module(pl_module)


M = TypeVar("M", bound=pl.LightningModule)


def load_quantized_checkpoint(
    checkpoint_path: str | Path | IO[bytes], module_cls: type[M], **kwargs: Any
) -> M:
    """``module_cls.load_from_checkpoint(checkpoint_path, **kwargs)`` for a checkpoint saved while
    the ``QuantizationAwareTraining`` callback had quantized the module's network, without a
    Trainer and without changing ``module_cls``.

    Plain ``load_from_checkpoint`` builds the float network and then fails on the quantized keys
    (missing and unexpected keys): no callback runs there.  The checkpoint carries the callback's
    settings (QConfig, overrides, attribute) in its state dict (the ``torchqv_qat_*`` records), so
    this swaps in the same quantized network from them (:func:`restore_quantized`) after the
    module is built and before its state is loaded, then loads the state strictly.  The result is
    an instance of ``module_cls`` itself; ``kwargs`` (``map_location``, ``strict``, hyperparameter
    overrides) go to Lightning's ``load_from_checkpoint``.
    """
    if not (isinstance(module_cls, type) and issubclass(module_cls, pl.LightningModule)):
        raise ConfigError(
            f"load_quantized_checkpoint: module_cls must be a LightningModule class, got {module_cls!r}"
        )

    class Restoring(module_cls):  # type: ignore[valid-type,misc]
        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            restore_quantized(self, checkpoint)
            super().on_load_checkpoint(checkpoint)

    Restoring.__name__, Restoring.__qualname__ = module_cls.__name__, module_cls.__qualname__
    Restoring.__module__ = module_cls.__module__
    module = Restoring.load_from_checkpoint(checkpoint_path, **kwargs)
    module.__class__ = module_cls  # only the loading hook differed
    return module
