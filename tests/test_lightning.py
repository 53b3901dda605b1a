"""Lightning callbacks in real Trainer runs: QAT, QUBO rounding, equivalence checks, checkpoints,
resuming and a two-process DDP fit on CPU."""

from __future__ import annotations

import copy
import csv
import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

import torchqv as tq
from torchqv import QuantizationError, float_twin, fold_batchnorm
from torchqv.data.datamodules import TabularDataModule
from torchqv.data.tabular import train_test
from torchqv.lightning import (
    EquivalenceCheck,
    QATReport,
    QuantizationAwareTraining,
    QUBORounding,
    load_quantized_checkpoint,
    restore_quantized,
)
from torchqv.lightning._trainer import quantizer_keys

CFG = tq.QConfig(
    weight=tq.FixedPoint(bits=8, per_channel=True),
    activation=tq.FixedPoint(bits=8),
    input=tq.FixedPoint(bits=8, signed=False),
)


class Classifier(pl.LightningModule):
    """A 4-16-3 MLP for iris (optionally with batch norm after the first layer)."""

    def __init__(self, batchnorm: bool = False, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        norm = [nn.BatchNorm1d(16)] if batchnorm else []
        self.model = nn.Sequential(nn.Linear(4, 16), *norm, nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def test_step(self, batch, idx):
        x, y = batch
        out = self(x)
        self.log("test_acc", (out.argmax(1) == y).float().mean())
        self.log("test_loss", F.cross_entropy(out.float(), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class RestoringClassifier(Classifier):
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_quantized(self, checkpoint)


class StepRecorder(Callback):
    """Quantizer state after calibration and at the end of every training epoch."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def _snap(self, pl_module: pl.LightningModule) -> None:
        keys = {k for k in quantizer_keys(pl_module.model) if k.endswith(("step_num", "step_den"))}
        self.snapshots.append({k: v.clone() for k, v in pl_module.model.state_dict().items() if k in keys})

    def on_fit_start(self, trainer, pl_module) -> None:
        self._snap(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._snap(pl_module)


class RankRecorder(Callback):
    """Each process saves its LightningModule's state when training ends."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(pl_module.state_dict(), Path(self.folder) / f"rank{trainer.global_rank}.pt")


def make_trainer(tmp_path: Path, callbacks: list, **kwargs) -> pl.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    return pl.Trainer(callbacks=callbacks, **{**args, **kwargs})


def iris() -> TabularDataModule:
    return TabularDataModule(name="iris", batch_size=16)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_qat_fit_swaps_calibrates_freezes_observers_and_trains_fake_quantized(tmp_path: Path) -> None:
    qat = QuantizationAwareTraining(CFG, calibration_batches=2, freeze_observers_epoch=1)
    rec = StepRecorder()
    module, dm = Classifier(), iris()
    w0 = module.model[0].weight.detach().clone()
    make_trainer(tmp_path, [qat, rec], max_epochs=3).fit(module, datamodule=dm)

    assert qat.report == QATReport(True, folded_batchnorm=[], calibration_batches=2, observers_frozen_at=1)
    net = module.model
    assert isinstance(net.get_submodule("0"), tq.QuantLinear)
    assert isinstance(net.get_submodule("1"), tq.QuantAct)
    assert not torch.equal(net.get_submodule("0").weight.detach(), w0)  # trained after the swap
    # snapshots: after calibration, then after epochs 0, 1, 2; observers ran in epoch 0 only
    calibrated, epoch0, epoch1, epoch2 = rec.snapshots
    assert any(not torch.equal(calibrated[k], epoch0[k]) for k in calibrated)
    assert_same_state(epoch0, epoch1)
    assert_same_state(epoch1, epoch2)

    x = next(iter(dm.train_dataloader()))[0]
    net.train()
    y = net(x)  # fake quantization: outputs on the last layer's grid
    k = y / float(net.get_submodule("2").out_quant.steps()[0])
    assert torch.equal(k, k.round()) and k.abs().max() <= 127
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), tq.reference_forward(net, x))  # the exact simulation


class BatchCounter(Callback):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, idx) -> None:
        self.sizes.append(len(batch[1]))


def test_calibration_leaves_the_training_epoch_whole_with_persistent_workers(tmp_path: Path) -> None:
    dm = TabularDataModule(name="iris", batch_size=16, num_workers=1)  # persistent worker process
    counter = BatchCounter()
    qat = QuantizationAwareTraining(CFG, calibration_batches=2)
    make_trainer(tmp_path, [qat, counter], limit_val_batches=0).fit(Classifier(), datamodule=dm)
    assert qat.report.calibration_batches == 2
    assert counter.sizes == [16] * 5 + [len(dm.train_set) - 80]  # every training example, once


def test_checkpoint_test_and_load_cycle_with_folded_batchnorm(tmp_path: Path) -> None:
    dm = iris()
    module = Classifier(batchnorm=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    qat = QuantizationAwareTraining(CFG, calibration_batches=2)
    trainer = make_trainer(tmp_path, [qat, ckpt], max_epochs=2, enable_checkpointing=True)
    trainer.fit(module, datamodule=dm)
    assert qat.report.folded_batchnorm == ["1"]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in module.modules())

    expected = trainer.test(module, datamodule=dm)
    # the case that broke Lightning's own QAT callback: test a checkpoint after fitting
    assert trainer.test(datamodule=dm, ckpt_path=ckpt.last_model_path) == expected
    # a fresh float module: the callback swaps before the checkpoint is loaded
    fresh = Classifier(batchnorm=True)
    assert (
        make_trainer(tmp_path, [QuantizationAwareTraining(CFG)]).test(
            fresh, datamodule=dm, ckpt_path=ckpt.last_model_path
        )
        == expected
    )
    assert_same_state(fresh.state_dict(), module.state_dict())
    # without a Trainer: load_from_checkpoint with restore_quantized in on_load_checkpoint
    loaded = RestoringClassifier.load_from_checkpoint(ckpt.last_model_path)
    assert_same_state(loaded.state_dict(), module.state_dict())

    four_bit = replace(CFG, weight=tq.FixedPoint(bits=4, per_channel=True))
    # the network's own state dict records its formats: refused before anything is loaded
    with pytest.raises(
        QuantizationError, match=r"another quantization configuration: model.0.weight_quant: saved int8"
    ):
        make_trainer(tmp_path, [QuantizationAwareTraining(four_bit)]).test(
            Classifier(batchnorm=True), datamodule=dm, ckpt_path=ckpt.last_model_path
        )
    # the same formats, other settings (an observer): the callback's record refuses it
    with pytest.raises(QuantizationError, match="other quantization settings"):
        make_trainer(tmp_path, [QuantizationAwareTraining(replace(CFG, weight_observer="mse"))]).test(
            Classifier(batchnorm=True), datamodule=dm, ckpt_path=ckpt.last_model_path
        )
    with pytest.raises(QuantizationError, match="ckpt_path"):
        make_trainer(tmp_path, [QuantizationAwareTraining(CFG)]).test(Classifier(), datamodule=dm)


def test_load_quantized_checkpoint_without_trainer_or_hook(tmp_path: Path) -> None:
    """A real checkpoint file of a QAT fit loads back into the plain module class (no
    on_load_checkpoint hook, no callback): same class, same state, same outputs."""
    dm = iris()
    module = Classifier(batchnorm=True)
    trainer = make_trainer(tmp_path, [QuantizationAwareTraining(CFG, calibration_batches=2)], max_epochs=1)
    trainer.fit(module, datamodule=dm)
    path = tmp_path / "qat.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(RuntimeError, match="Missing key"):  # what users hit: Lightning builds the float net
        Classifier.load_from_checkpoint(path)
    loaded = load_quantized_checkpoint(path, Classifier)
    assert type(loaded) is Classifier and loaded.hparams.batchnorm and loaded.hparams.lr == 0.05
    assert_same_state(loaded.state_dict(), module.state_dict())
    x = torch.rand(32, 4)
    assert torch.equal(loaded.eval()(x), module.eval()(x))
    assert any(isinstance(m, tq.QuantizedModel) for m in loaded.modules())  # the quantized network
    # hyperparameter overrides and map_location go to load_from_checkpoint; a hooked class works too
    assert load_quantized_checkpoint(path, Classifier, lr=0.01, map_location="cpu").hparams.lr == 0.01
    assert type(load_quantized_checkpoint(path, RestoringClassifier)) is RestoringClassifier
    with pytest.raises(QuantizationError, match="module_cls must be a LightningModule class"):
        load_quantized_checkpoint(path, nn.Linear)


def test_resume_equals_uninterrupted_training(tmp_path: Path) -> None:
    xtr, xte, ytr, yte = train_test("iris", 0.25, seed=0)
    train = DataLoader(list(zip(xtr, ytr, strict=True)), batch_size=16)
    val = DataLoader(list(zip(xte, yte, strict=True)), batch_size=16)

    straight = Classifier()
    make_trainer(tmp_path, [QuantizationAwareTraining(CFG, calibration_batches=2)], max_epochs=2).fit(
        straight, train, val
    )

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    first = make_trainer(
        tmp_path,
        [QuantizationAwareTraining(CFG, calibration_batches=2), ckpt],
        max_epochs=1,
        enable_checkpointing=True,
    )
    first.fit(Classifier(), train, val)
    qat = QuantizationAwareTraining(CFG, calibration_batches=2)
    resumed = Classifier()
    make_trainer(tmp_path, [qat], max_epochs=2).fit(resumed, train, val, ckpt_path=ckpt.last_model_path)
    assert qat.report.calibration_batches == 0  # steps came from the checkpoint
    assert_same_state(resumed.state_dict(), straight.state_dict())


def test_fold_batchnorm_keeps_eval_outputs() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 5))
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    model.eval()
    folded, names = fold_batchnorm(model)
    assert names == ["1"] and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(3, 2, 4, 4)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert isinstance(model[1], nn.BatchNorm2d)  # the original is left alone
    untracked = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(QuantizationError, match="running statistics"):
        fold_batchnorm(untracked)


def test_qubo_rounding_after_fit_logs_and_saves(tmp_path: Path) -> None:
    module, dm = Classifier(), iris()
    qubo = QUBORounding(calibration_batches=2, checkpoint_path=str(tmp_path / "rounded.ckpt"))
    logger = CSVLogger(tmp_path, name="run")
    make_trainer(tmp_path, [QuantizationAwareTraining(CFG, calibration_batches=2), qubo], logger=logger).fit(
        module, datamodule=dm
    )

    report = qubo.report
    assert [r.layer for r in report.layers] == ["0", "2"]
    assert all(r.objective <= r.nearest for r in report.layers)
    for name in ("0", "2"):  # the weights now sit exactly on their grids
        layer = module.model.get_submodule(name)
        assert torch.equal(layer.weight.detach().double(), layer.dequantized_weight())
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = next(r for r in rows if r.get("qubo/2/qubo"))
    assert float(logged["qubo/2/qubo"]) == pytest.approx(report.layers[1].objective, rel=1e-6)
    assert float(logged["qubo/0/nearest"]) == pytest.approx(report.layers[0].nearest, rel=1e-6)

    fresh = Classifier()
    make_trainer(tmp_path, [QuantizationAwareTraining(CFG)]).test(
        fresh, datamodule=dm, ckpt_path=tmp_path / "rounded.ckpt"
    )
    assert_same_state(fresh.state_dict(), module.state_dict())


def test_qubo_rounding_on_demand_equals_round_weights() -> None:
    x, _, _, _ = train_test("iris", 0.25, seed=0)
    module = Classifier()
    qnet = tq.quantize(module.model, CFG)
    tq.calibrate(qnet, [x], progress=False)
    module.model = copy.deepcopy(qnet)
    report = QUBORounding(calibration_batches=1, after_fit=False, progress=False).round(module, batches=[x])
    expected = tq.round_weights(qnet, [x], progress=False)
    assert_same_state(module.model.state_dict(), qnet.state_dict())
    strip = lambda rep: [{**r, "seconds": 0} for r in rep.to_dict()["layers"]]  # noqa: E731
    assert strip(report) == strip(expected)
    with pytest.raises(QuantizationError, match="not quantized"):
        QUBORounding().round(Classifier(), batches=[x])


def test_float_twin_is_the_float_network() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.leaky_relu(self.fc1(x), 0.125))

    x = torch.rand(5, 4)
    for model in (Classifier().model, Functional()):
        qnet = tq.quantize(model, CFG)
        tq.calibrate(qnet, [x], progress=False)
        twin = float_twin(qnet)
        assert not any(isinstance(m, tq.FakeQuantize) for m in twin.modules())
        with torch.no_grad():  # f in float64
            torch.testing.assert_close(
                twin(x), copy.deepcopy(model).double()(x.double()), rtol=1e-12, atol=1e-12
            )


def test_equivalence_check_after_fit_logs_counts_and_report(tmp_path: Path) -> None:
    module, dm = Classifier(), iris()
    # delta above half the 8-bit input step: every region holds a grid point (an empty region
    # is a QuantizationError, not a vacuous proof)
    check = EquivalenceCheck(delta=0.004, points=4, domain=(0.0, 1.0), timeout=20)
    logger = CSVLogger(tmp_path, name="run")
    make_trainer(tmp_path, [QuantizationAwareTraining(CFG, calibration_batches=2), check], logger=logger).fit(
        module, datamodule=dm
    )
    report = check.report
    assert report.proved + report.refuted + report.unknown == 4 and report.epoch == 1
    written = json.loads((Path(logger.log_dir) / "equivalence-epoch1.json").read_text())
    assert (written["proved"], written["refuted"], written["unknown"]) == (
        report.proved,
        report.refuted,
        report.unknown,
    )
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        row = next(r for r in csv.DictReader(f) if r.get("equivalence/proved"))
    assert float(row["equivalence/proved"]) == report.proved
    assert module.model.training  # the check leaves the training flag as it was


class LeNetClassifier(Classifier):
    """A LeNet-shaped CNN (two conv + max-pool stages, a residual add) on digits read as 1 x 8 x 8."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = LeNet()


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = (
            nn.Conv2d(1, 6, 3, padding=1),
            nn.Conv2d(6, 6, 3, padding=1),
            nn.Conv2d(6, 8, 3),
        )
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.c1(x.view(-1, 1, 8, 8))), 2)
        h = F.relu(self.c2(h) + h)
        return self.fc(F.max_pool2d(F.relu(self.c3(h)), 2).flatten(1))


def test_equivalence_check_after_fit_on_a_lenet(tmp_path: Path) -> None:
    """Conv layers, max pooling and a residual add are read by the verifier: the check passes
    ``setup`` and reports a verdict per region after the fit (it used to crash ``fit``)."""
    check = EquivalenceCheck(delta=0.004, points=2, domain=(0.0, 1.0), timeout=20)
    make_trainer(tmp_path, [QuantizationAwareTraining(CFG, calibration_batches=2), check]).fit(
        LeNetClassifier(), datamodule=TabularDataModule(name="digits", batch_size=64)
    )
    assert check.report.proved + check.report.refuted + check.report.unknown == 2


def test_equivalence_check_refutes_and_replays_counterexamples() -> None:
    x, _, _, _ = train_test("iris", 0.25, seed=0)
    module = Classifier()
    coarse = tq.QConfig(weight=tq.Ternary(per_channel=True), activation=tq.FixedPoint(bits=2))
    module.model = tq.quantize(module.model, coarse)
    tq.calibrate(module.model, [x], progress=False)
    points, delta = x[:2], 0.5
    check = EquivalenceCheck(delta=delta, points=points, domain=(0.0, 1.0), timeout=5, on_failure="raise")
    with pytest.raises(QuantizationError, match="not top1-equivalent"):
        check.check(module)
    report = check.report
    assert report.refuted >= 1
    twin = float_twin(module.model)
    for region in report.regions:
        if region.verdict == "NOT_EQUIVALENT":
            cex = region.counterexample.unsqueeze(0).float()
            assert (cex - points[region.index]).abs().max() <= delta + 1e-7
            with torch.no_grad():
                assert twin(cex).argmax() != tq.reference_forward(module.model, cex).argmax()
    with pytest.warns(UserWarning, match="not top1-equivalent"):
        EquivalenceCheck(delta=delta, points=points[:1], domain=(0.0, 1.0), timeout=5).check(module)


def test_equivalence_check_on_workers_gives_the_serial_report(tmp_path: Path) -> None:
    """``workers=2``: the check after fit runs its regions on two processes; the report is the one
    a serial check of the same network gives (verdicts, reasons, counterexamples; the delta is
    wide enough for refuted regions next to proved ones)."""
    module, dm = Classifier(), iris()
    check = EquivalenceCheck(delta=0.2, points=6, domain=(0.0, 1.0), timeout=20, workers=2)
    make_trainer(tmp_path, [QuantizationAwareTraining(CFG, calibration_batches=2), check]).fit(
        module, datamodule=dm
    )
    points = torch.cat([x for x, _ in dm.val_dataloader()])[:6]
    serial = EquivalenceCheck(delta=0.2, points=points, domain=(0.0, 1.0), timeout=20).check(module)

    def rows(report):
        return [
            (
                r.index,
                r.verdict,
                r.reason,
                r.method,
                None if r.counterexample is None else r.counterexample.tolist(),
            )
            for r in report.regions
        ]

    assert rows(check.report) == rows(serial)
    assert {"EQUIVALENT", "NOT_EQUIVALENT"} <= {r.verdict for r in serial.regions}
    with pytest.raises(QuantizationError, match=r"VerifyConfig.workers must be an int >= 1.*got 0"):
        EquivalenceCheck(workers=0)
    with pytest.raises(QuantizationError, match=r"VerifyConfig.workers must be an int >= 1.*got '2'"):
        EquivalenceCheck(workers="2")
    with pytest.raises(QuantizationError, match="executor must be"):
        EquivalenceCheck(executor="dask")


def test_missing_network_attribute_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="attr='<its name>'"):
        make_trainer(tmp_path, [QuantizationAwareTraining(CFG, attr="net")]).fit(
            Classifier(), datamodule=iris()
        )


def ddp_fit(tmp_path: Path) -> None:
    """Two ``ddp_fork`` processes train with the QAT callback and record their states.

    Run in a fresh interpreter (see the test): a process that already ran autograd on worker
    threads (any earlier test of the same pytest worker may) cannot fork autograd users, and a
    forked child hangs in GNU OpenMP if it uses the parent's thread pool, so every process
    computes on one thread."""
    callbacks = [
        QuantizationAwareTraining(CFG, calibration_batches=2),
        RankRecorder(str(tmp_path)),
        ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True),
    ]
    pickle.loads(pickle.dumps(callbacks))  # what ddp_spawn sends to its processes
    trainer = make_trainer(
        tmp_path, callbacks, devices=2, strategy="ddp_fork", max_epochs=2, enable_checkpointing=True
    )
    torch.set_num_threads(1)
    trainer.fit(Classifier(), datamodule=iris())


def test_ddp_two_cpu_processes_stay_in_sync_and_checkpoint_loads(tmp_path: Path) -> None:
    # ddp_fork (ddp_spawn's launcher without re-importing torch in every process: seconds instead
    # of a minute), started from a fresh interpreter that imports this module
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "MASTER_PORT"} | {"OMP_NUM_THREADS": "1"}
    code = f"import pathlib, tests.test_lightning as t; t.ddp_fit(pathlib.Path({str(tmp_path)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    dm = iris()
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert_same_state(rank0, rank1)  # weights and steps identical on both processes
    fresh = Classifier()
    make_trainer(tmp_path, [QuantizationAwareTraining(CFG)]).test(
        fresh, datamodule=dm, ckpt_path=tmp_path / "ck" / "last.ckpt"
    )
    assert_same_state(fresh.state_dict(), rank0)


class Gated(nn.Module):
    """x * relu(W x): a product of two tensors, which is not piecewise linear (the verifier
    reads products with constants only)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x * torch.relu(self.inner(x)))


def test_equivalence_check_refuses_an_unreadable_network_before_training(tmp_path: Path) -> None:
    """Support is checked in ``setup`` (the data module gives the input shape): the fit stops
    before its first batch, naming the node, instead of after training."""
    module = Classifier()
    module.model = Gated()
    counter = BatchCounter()
    check = EquivalenceCheck(delta=0.004, points=4, domain=(0.0, 1.0))
    trainer = make_trainer(tmp_path, [QuantizationAwareTraining(CFG, calibration_batches=2), check, counter])
    with pytest.raises(tq.UnsupportedModelError, match=r"EquivalenceCheck: the verifier cannot read pl_mod"):
        trainer.fit(module, datamodule=iris())
    assert counter.sizes == []
    # a network it reads passes the same check
    EquivalenceCheck(delta=0.004, points=torch.rand(2, 4)).setup(trainer, Classifier(), "fit")
