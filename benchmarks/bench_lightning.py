"""Lightning integration on real MNIST: DataModule load time, QAT epoch time vs float, QUBO
rounding and equivalence checking as callbacks.

1. ``MNISTDataModule`` on ``../shared/data`` (gzip archives): first setup (unpack into the cache and
   read with torchvision) and a cached setup;
2. one epoch (``--batches`` batches of 128) of a 784-256-128-10 MLP, float vs
   ``QuantizationAwareTraining`` (8-bit per-channel weights, 8-bit activations and input),
   then test accuracy (float eval vs the exact fixed-point simulation);
3. after the QAT fit, on demand: ``QUBORounding.round`` (8 calibration batches) and
   ``EquivalenceCheck.check`` (top-1, ``--points`` validation points, L-infinity ``--delta``).
Wall and CPU (process) times are both given: CPU time is the steadier figure on a shared machine.
Writes benchmarks/results/lightning.json.
Usage: python benchmarks/bench_lightning.py [--batches 100] [--points 4] [--delta 0.004]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

import torchqv as tq
from torchqv.data.datamodules import MNISTDataModule
from torchqv.lightning import EquivalenceCheck, QuantizationAwareTraining, QUBORounding

ROOT = Path(os.environ.get("TORCHQV_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
OUT = Path(__file__).resolve().parent / "results"


class MLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    def training_step(self, batch, idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def test_step(self, batch, idx):
        x, y = batch
        self.log("acc", (self.model(x).argmax(1) == y).float().mean(), reduce_fx="mean")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def trainer(callbacks: list, batches: int, tmp: str) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp,
        callbacks=callbacks,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--delta", type=float, default=0.004)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        dm = MNISTDataModule(root=str(ROOT), cache_dir=tmp, batch_size=128, val_size=5000)
        dm.prepare_data()
        dm.setup()
        out["datamodule_first_setup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dm = MNISTDataModule(root=str(ROOT), cache_dir=tmp, batch_size=128, val_size=5000)
        dm.setup()
        out["datamodule_cached_setup_s"] = time.perf_counter() - t0

        cfg = tq.QConfig(
            weight=tq.FixedPoint(bits=8, per_channel=True),
            activation=tq.FixedPoint(bits=8),
            input=tq.FixedPoint(bits=8, signed=False),
        )
        for name, callbacks in (("float", []), ("qat", [QuantizationAwareTraining(cfg)])):
            module = MLP()
            tr = trainer(callbacks, args.batches, tmp)
            t0, c0 = time.perf_counter(), time.process_time()
            tr.fit(module, datamodule=dm)
            out[f"{name}_epoch_s"] = time.perf_counter() - t0
            out[f"{name}_epoch_cpu_s"] = time.process_time() - c0
            t0 = time.perf_counter()
            out[f"{name}_test_acc"] = tr.test(module, datamodule=dm, verbose=False)[0]["acc"]
            out[f"{name}_test_s"] = time.perf_counter() - t0

        qubo = QUBORounding(after_fit=False, progress=False)
        check = EquivalenceCheck(delta=args.delta, points=args.points, domain=(0.0, 1.0), timeout=60)
        t0, c0 = time.perf_counter(), time.process_time()
        report = qubo.round(module, tr)
        out["qubo_s"], out["qubo_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        out["qubo_layers"] = report.to_dict()["layers"]
        out["qubo_test_acc"] = tr.test(module, datamodule=dm, verbose=False)[0]["acc"]
        t0, c0 = time.perf_counter(), time.process_time()
        eq = check.check(module, tr)
        out["equivalence_s"], out["equivalence_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        out["equivalence"] = {k: v for k, v in eq.to_dict().items() if k != "regions"}
        out["equivalence"]["methods"] = [r.method for r in eq.regions]

    print("| step | float | torchqv | ratio |\n|---|---|---|---|")
    print(f"| MNISTDataModule setup, first (s) | - | {out['datamodule_first_setup_s']:.2f} | - |")
    print(f"| MNISTDataModule setup, cached (s) | - | {out['datamodule_cached_setup_s']:.2f} | - |")
    for kind, key in (("wall", "epoch_s"), ("CPU", "epoch_cpu_s")):
        f, q = out[f"float_{key}"], out[f"qat_{key}"]
        print(f"| fit, {args.batches} batches of 128, {kind} (s) | {f:.2f} | {q:.2f} | {q / f:.2f}x |")
    print(f"| test accuracy | {out['float_test_acc']:.4f} | {out['qat_test_acc']:.4f} | - |")
    print(f"| test pass, 10000 images (s) | {out['float_test_s']:.2f} | {out['qat_test_s']:.2f} | - |")
    print(
        f"QUBORounding: {out['qubo_s']:.2f} s wall, {out['qubo_cpu_s']:.2f} s CPU, "
        f"test accuracy after rounding {out['qubo_test_acc']:.4f}"
    )
    print(report.table())
    print(
        f"EquivalenceCheck: {out['equivalence']} in {out['equivalence_s']:.2f} s wall, "
        f"{out['equivalence_cpu_s']:.2f} s CPU"
    )
    OUT.mkdir(exist_ok=True)
    (OUT / "lightning.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
