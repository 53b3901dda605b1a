"""``EquivalenceCheck``: verify the quantized network f' against the float network f around
validation points (the local equivalence of Matos Júnior, "An automated method for neural network
quantization refinement", PhD thesis, 2025; by ``tq.verify_equivalence``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from ..errors import ConfigError, QuantizationError, UnsupportedModelError, VerificationInputError
from ..graph import QuantizedModel, float_twin
from ..verify.config import VerifyConfig
from ..verify.engine import verify_equivalence
from ..verify.network import float_chain
from ..verify.parallel import check_executor
from ..verify.verdicts import Verdict
from . import _trainer as T

FAILURE_MODES = ("warn", "raise")
DEFAULT_DELTA = 0.01  # the callback's radius when neither config nor delta gives one


@dataclass
class Region:
    """One L-infinity ball around validation point ``index``."""

    index: int
    verdict: Verdict
    reason: str
    method: str
    seconds: float
    counterexample: torch.Tensor | None = None


@dataclass
class EquivalenceReport:
    relation: str
    delta: float
    epoch: int | None = None
    regions: list[Region] = field(default_factory=list)

    def count(self, verdict: Verdict | str) -> int:
        return sum(r.verdict == verdict for r in self.regions)

    @property
    def proved(self) -> int:
        return self.count(Verdict.EQUIVALENT)

    @property
    def refuted(self) -> int:
        return self.count(Verdict.NOT_EQUIVALENT)

    @property
    def unknown(self) -> int:
        return self.count(Verdict.UNKNOWN)

    def counterexamples(self) -> list[torch.Tensor]:
        return [r.counterexample for r in self.regions if r.counterexample is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "relation": self.relation,
            "delta": self.delta,
            "epoch": self.epoch,
            "proved": self.proved,
            "refuted": self.refuted,
            "unknown": self.unknown,
            "regions": [
                {
                    "index": r.index,
                    "verdict": str(r.verdict),
                    "reason": r.reason,
                    "method": r.method,
                    "seconds": r.seconds,
                    "counterexample": None if r.counterexample is None else r.counterexample.tolist(),
                }
                for r in self.regions
            ],
        }

    def table(self) -> str:
        rows = ["| point | verdict | method | time (s) | reason |", "|---|---|---|---|---|"]
        for r in self.regions:
            rows.append(f"| {r.index} | {r.verdict} | {r.method} | {r.seconds:.2f} | {r.reason} |")
        return "\n".join(rows)


class EquivalenceCheck(Callback):
    """Check ``f(x) ~ f'(x)`` for every ``x`` within ``delta`` (L-infinity, inside ``domain``) of
    each of ``points`` validation inputs (an int: the first ones of the validation loader; or a
    tensor of points).

    f' is ``pl_module.<attr>`` (a calibrated torchqv-quantized network); f is ``reference``: an
    ``nn.Module``, the name of another attribute of the LightningModule, or ``None`` for the float
    twin of f' (same weights, no rounding: what quantization alone changes).  ``config``: a
    :class:`~torchqv.verify.VerifyConfig` (relation, eps, norm, delta, domain, timeout per region,
    seed, workers...; default ``delta=0.01``); keyword ``verify_options`` with those names override
    its fields (``EquivalenceCheck(points=8, delta=0.004, domain=(0, 1), timeout=20)``).
    Runs after fitting (``after_fit``), every ``every_n_epochs`` validation
    epochs, or on demand (:meth:`check`).  Logs ``equivalence/proved|refuted|unknown``, writes
    the report with the counterexamples (each replayed on the concrete models) to the logger's
    folder (``<log_dir>/equivalence-epoch<E>.json``) and keeps it as ``callback.report``.  A
    refuted region is a failure: ``on_failure="warn"`` warns, ``"raise"`` raises
    ``QuantizationError``.  ``config.workers``: the regions are decided on a local pool of that
    many processes, started for each check (1: in the Trainer's process); ``executor``: any
    ``concurrent.futures.Executor`` or Dask ``client.get_executor()`` to run them on instead (see
    ``tq.verify_equivalence``; the results are the same either way).
    """

    def __init__(
        self,
        points: int | torch.Tensor = 8,
        *,
        config: VerifyConfig | Mapping[str, Any] | None = None,
        on_failure: str = "warn",
        attr: str = "model",
        reference: nn.Module | str | None = None,
        after_fit: bool = True,
        every_n_epochs: int | None = None,
        executor: Executor | Any | None = None,
        **verify_options: Any,
    ):
        who = type(self).__name__
        base = config if config is not None else VerifyConfig(delta=DEFAULT_DELTA)
        self.config = VerifyConfig.coerce(base, who, **verify_options)
        if self.config.delta is None:
            raise VerificationInputError(f"{who}: give delta (the radius of the regions), e.g. delta=0.01")
        check_executor(executor, self.config.workers, f"{who}: ")
        if on_failure not in FAILURE_MODES:
            raise ConfigError(f"{who}: on_failure must be one of {FAILURE_MODES}, got {on_failure!r}")
        if isinstance(points, int) and points < 1:
            raise ConfigError(f"{who}: points must be >= 1, got {points}")
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ConfigError(f"{who}: every_n_epochs must be >= 1 or None, got {every_n_epochs}")
        self.points, self.on_failure, self.attr, self.reference = points, on_failure, attr, reference
        self.after_fit, self.every_n_epochs, self.executor = after_fit, every_n_epochs, executor
        self.report: EquivalenceReport | None = None

    def _reference(self, pl_module: pl.LightningModule, fq: nn.Module) -> nn.Module:
        if self.reference is None:
            return float_twin(fq)
        if isinstance(self.reference, str):
            return T.get_network(pl_module, self.reference, type(self).__name__)
        return self.reference

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Before any training: the verifier must be able to read the network (and ``reference``);
        otherwise ``UnsupportedModelError`` names the node now, not after fitting.  Needs the input
        shape: from tensor ``points`` or the data module's ``input_shape`` (else the check runs
        with the first verification)."""
        shape = self._input_shape(trainer)
        if shape is None:
            return
        who = type(self).__name__
        net = T.get_network(pl_module, self.attr, who)
        if T.is_quantized(net) and not isinstance(net, QuantizedModel):
            return  # a graph inside another module: read when verifying
        networks = [("pl_module." + self.attr, float_twin(net) if isinstance(net, QuantizedModel) else net)]
        if self.reference is not None:
            networks.append(("reference", self._reference(pl_module, net)))
        for name, f in networks:
            try:
                float_chain(f, shape)
            except QuantizationError as exc:
                raise UnsupportedModelError(
                    f"{who}: the verifier cannot read {name} ({exc}); remove the callback or verify a "
                    "network the verifier supports"
                ) from exc

    def _input_shape(self, trainer: pl.Trainer | None) -> tuple[int, ...] | None:
        if isinstance(self.points, torch.Tensor):
            return tuple(self.points.shape[1:])
        shape = getattr(getattr(trainer, "datamodule", None), "input_shape", None)
        return tuple(shape) if shape is not None else None

    def _points(self, trainer: pl.Trainer | None, points: torch.Tensor | None) -> torch.Tensor:
        if points is None and isinstance(self.points, torch.Tensor):
            points = self.points
        if points is not None:
            return points.detach().cpu()
        if trainer is None:
            raise ConfigError(f"{type(self).__name__}.check needs a trainer or the points")
        want, got = int(self.points), []
        loader = T.val_loader(trainer, type(self).__name__)
        for x in T.input_batches(loader, want, None, type(self).__name__):
            got.append(x)
            if sum(len(t) for t in got) >= want:
                break
        return torch.cat(got)[:want].cpu()

    def check(
        self,
        pl_module: pl.LightningModule,
        trainer: pl.Trainer | None = None,
        points: torch.Tensor | None = None,
    ) -> EquivalenceReport:
        """Verify now (rank 0; every process gets the report)."""
        who = type(self).__name__
        fq = T.get_network(pl_module, self.attr, who)
        if not T.is_quantized(fq) or T.uncalibrated(fq):
            raise ConfigError(f"{who}: pl_module.{self.attr} must be a calibrated torchqv-quantized network")
        report = None
        if trainer is None or trainer.is_global_zero:
            pts = self._points(trainer, points)
            was_training = fq.training
            try:
                results = verify_equivalence(
                    self._reference(pl_module, fq),
                    fq,
                    pts.to(next(fq.parameters()).device),
                    config=self.config,
                    executor=self.executor,
                )
            finally:
                fq.train(was_training)
            cfg = self.config
            report = EquivalenceReport(
                str(cfg.relation), cfg.delta, trainer.current_epoch if trainer else None
            )
            for i, r in enumerate(results):
                cex = r.counterexample.detach().cpu() if r.counterexample is not None else None
                report.regions.append(
                    Region(i, r.verdict, r.reason, str(r.stats.get("method", "")), r.stats["seconds"], cex)
                )
            path = self._write(trainer, report)
            rank_zero_info(
                f"{who}: {report.proved} proved, {report.refuted} refuted, {report.unknown} unknown"
                + (f" (report: {path})" if path else "")
                + f"\n{report.table()}"
            )
        self.report = T.broadcast(trainer, report)
        T.log_metrics(
            trainer,
            {
                "equivalence/proved": self.report.proved,
                "equivalence/refuted": self.report.refuted,
                "equivalence/unknown": self.report.unknown,
            },
        )
        self._judge(self.report)
        return self.report

    def _write(self, trainer: pl.Trainer | None, report: EquivalenceReport) -> Path | None:
        """The report as JSON in the Trainer's log folder (if it has one)."""
        if trainer is None or not trainer.loggers or trainer.log_dir is None:
            return None
        path = Path(trainer.log_dir) / f"equivalence-epoch{report.epoch}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=1))
        return path

    def _judge(self, report: EquivalenceReport) -> None:
        if report.refuted == 0:
            return
        cex = [r.index for r in report.regions if r.verdict == Verdict.NOT_EQUIVALENT]
        msg = (
            f"f and f' are not {self.config.relation}-equivalent within delta={self.config.delta} of "
            f"validation point(s) "
            f"{cex}; counterexamples (replayed on both models) are in callback.report.counterexamples()"
        )
        if self.on_failure == "raise":
            raise QuantizationError(msg)
        rank_zero_warn(msg)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.after_fit:
            self.check(pl_module, trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = self.every_n_epochs
        if n is not None and not trainer.sanity_checking and (trainer.current_epoch + 1) % n == 0:
            self.check(pl_module, trainer)
