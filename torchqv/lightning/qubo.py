"""``QUBORounding``: round a quantized network's weights with the QUBO method (Muñiz Subiñas et al.,
"Optimization of the quantization of dense neural networks from an exact QUBO formulation") when
fitting ends, or on demand, from calibration batches of the training data."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info

from ..errors import ConfigError
from ..rounding.api import RoundingReport, round_weights
from ..rounding.config import RoundingConfig
from . import _trainer as T


class QUBORounding(Callback):
    """Choose the rounding of every weight of ``pl_module.<attr>`` (a calibrated torchqv-quantized
    network, e.g. trained with :class:`QuantizationAwareTraining`) by ``tq.round_weights``.

    Runs at the end of fitting when ``after_fit`` (before the Trainer tears down), or whenever
    :meth:`round` is called.  Calibration: the first ``calibration_batches`` batches of the
    Trainer's training loader (else the data module's).  ``config``: the
    :class:`~torchqv.rounding.RoundingConfig` given to ``round_weights`` (method, solver, target,
    seed, sweeps, replicas, num_sweeps, num_reads, bound, time_limit); keyword ``options`` with
    those names override its fields (``QUBORounding(solver="neal", seed=1)``).  Per-layer
    objectives go to the Trainer's loggers (``qubo/<layer>/nearest``, ``.../qubo``,
    ``.../ratio``) and ``callback.report``.  Rounding runs on rank 0 and the weights are copied to
    every process.  Checkpoints written before rounding hold the unrounded weights: give
    ``checkpoint_path`` to save one afterwards.
    """

    def __init__(
        self,
        attr: str = "model",
        calibration_batches: int = 8,
        after_fit: bool = True,
        *,
        config: RoundingConfig | Mapping[str, Any] | None = None,
        checkpoint_path: str | None = None,
        progress: bool | None = None,
        **options: Any,
    ):
        who = type(self).__name__
        if (
            isinstance(calibration_batches, bool)
            or not isinstance(calibration_batches, int)
            or calibration_batches < 1
        ):
            raise ConfigError(f"{who}: calibration_batches must be an int >= 1, got {calibration_batches!r}")
        self.config = RoundingConfig.coerce(config, who, **options)
        T.check_attr(attr, who)
        self.attr, self.calibration_batches, self.after_fit = attr, calibration_batches, after_fit
        self.checkpoint_path = checkpoint_path
        self.progress = progress
        self.report: RoundingReport | None = None

    def round(
        self,
        pl_module: pl.LightningModule,
        trainer: pl.Trainer | None = None,
        batches: Iterable[Any] | None = None,
    ) -> RoundingReport:
        """Round now; ``batches`` (tensors or ``(x, y)`` tuples) replace the Trainer's data."""
        who = type(self).__name__
        net = T.get_network(pl_module, self.attr, who)
        if not T.is_quantized(net):
            raise ConfigError(
                f"{who}: pl_module.{self.attr} is not quantized; add QuantizationAwareTraining before "
                "this callback, or quantize and calibrate the network (tq.quantize, tq.calibrate)"
            )
        missing = T.uncalibrated(net)
        if missing:
            raise ConfigError(f"{who}: calibrate the network first ({missing[:3]} have no step)")
        if batches is None:
            if trainer is None:
                raise ConfigError(f"{who}.round needs a trainer or calibration batches")
            batches = T.train_loader(trainer, who)
        report = None
        if trainer is None or trainer.is_global_zero:
            report = round_weights(
                net,
                T.input_batches(batches, self.calibration_batches, trainer, who),
                self.config,
                progress=T.show_progress(trainer, self.progress),
            )
        self.report = T.broadcast(trainer, report)
        T.broadcast_state(trainer, net)
        metrics: dict[str, Any] = {}
        for r in self.report.layers:
            metrics |= {
                f"qubo/{r.layer}/nearest": r.nearest,
                f"qubo/{r.layer}/qubo": r.objective,
                f"qubo/{r.layer}/ratio": r.objective / r.nearest if r.nearest else 1.0,
            }
        T.log_metrics(trainer, metrics)
        rank_zero_info(f"{who}: per-layer output errors (squared Frobenius)\n{self.report.table()}")
        if self.checkpoint_path is not None:
            if trainer is None:
                raise ConfigError(f"{who}: saving checkpoint_path needs the trainer")
            Path(self.checkpoint_path).parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(self.checkpoint_path)
        return self.report

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.after_fit:
            self.round(pl_module, trainer)
