"""QUBO rounding on MNIST (Muñiz Subiñas et al., "Optimization of the quantization of dense neural networks
from an exact QUBO formulation"): solver speed and accuracy.

1. ``speed``: the first layer (784 -> 256) of a 784-256-128-10 MLP trained on MNIST, 1024
   calibration images, per-channel weights at 4 and 2 bits; objective and wall time of nearest,
   dwave-neal (1000 sweeps, 1 read per neuron) and ours, in one run.
2. ``accuracy``: the GPFQ architecture 784-500-300-10; weight-only per-channel quantization at
   1 bit (binary), ternary, 2, 3, 4 and 8 bits, nearest vs QUBO, each with MSE-observed and
   min-max weight steps; then the same with 8-bit activations and input.
Needs ../shared/data/MNIST (or TORCHQV_DATA).  Writes benchmarks/results/qubo_*.json.
3. ``wide``: a 4096-input layer (random, 1024 calibration inputs): ``round_weights`` time with
   and without the certified lower bound (no data needed).
Usage: python benchmarks/bench_qubo.py [speed] [accuracy] [wide] [--epochs 15] [--calib 2048]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import torchqv as tq
from torchqv.data import load_mnist
from torchqv.rounding import build_layer_qubo, solvers
from torchqv.rounding.qubo import group_stats

ROOT = Path(os.environ.get("TORCHQV_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
OUT = Path(__file__).resolve().parent / "results"


def train(widths: list[int], x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
        print(f"  epoch {epoch + 1}/{epochs}", flush=True)
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(
            sum(
                (model(xb).argmax(1) == yb).sum()
                for xb, yb in zip(x.split(1000), y.split(1000), strict=False)
            )
            / len(y)
        )


def speed(xtr, ytr, epochs: int) -> dict:
    print("training 784-256-128-10 ...", flush=True)
    model = train([784, 256, 128, 10], xtr, ytr, max(1, epochs // 3))
    calib = xtr[:1024]
    rows = []
    for bits in (4, 2):
        qm = tq.quantize(
            model, tq.QConfig(weight=tq.FixedPoint(bits=bits, per_channel=True), weight_observer="mse")
        )
        tq.calibrate(qm, [calib], progress=False)
        m = qm[1]
        x = calib.flatten(1).double()
        (stats,) = group_stats([m.patches(x)], [m.patches(x)], 1)
        problem = build_layer_qubo(m, stats, None)
        results = {}
        t0 = time.perf_counter()
        codes = m.weight_codes()
        z_near = torch.cat(
            [
                (codes - problem.lower[:-1].T) / problem.delta[:-1].T.clamp_min(1),
                torch.zeros(256, 1, dtype=torch.float64),
            ],
            1,
        ).T.nan_to_num(0)
        results["nearest"] = (float(problem.energy(z_near).sum()), time.perf_counter() - t0)
        for name, fn in (
            ("ours", functools.partial(solvers.solve_auto, problem)),
            ("neal", functools.partial(solvers.neal, problem, num_sweeps=1000, num_reads=1)),
        ):
            t0 = time.perf_counter()
            z = fn()
            results[name] = (float(problem.energy(z).sum()), time.perf_counter() - t0)
        bound = float(solvers.lower_bound(problem).clamp_min(0).sum())
        row = {
            "bits": bits,
            "bound": bound,
            **{k: {"objective": v[0], "seconds": v[1]} for k, v in results.items()},
        }
        rows.append(row)
        print(
            f"  {bits}-bit: " + ", ".join(f"{k} {v[0]:.1f} in {v[1]:.2f}s" for k, v in results.items()),
            flush=True,
        )
    print(
        "\n| weights | nearest objective | neal objective | neal time (s) | ours objective | ours time (s) "
        "| ours/neal objective | neal/ours time | lower bound |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n, o, a = r["nearest"], r["ours"], r["neal"]
        print(
            f"| {r['bits']}-bit | {n['objective']:.1f} | {a['objective']:.1f} | {a['seconds']:.1f} "
            f"| {o['objective']:.1f} | {o['seconds']:.2f} | {o['objective'] / a['objective']:.4f} "
            f"| {a['seconds'] / o['seconds']:.1f}x | {r['bound']:.1f} |"
        )
    return {"speed": rows}


def wide(n_calib: int) -> dict:
    """A 4096-input layer (4096 -> 256, 4-bit per-channel min-max weights, ``n_calib`` inputs of
    non-negative features): ``round_weights`` wall time with the default settings (no lower bound)
    and with ``bound=True``, and the objectives against nearest rounding."""
    torch.manual_seed(0)
    layer = nn.Linear(4096, 256)
    x = torch.relu(torch.randn(n_calib, 4096))
    rows = []
    for bound in (False, True):
        qm = tq.quantize(nn.Sequential(layer), tq.QConfig(weight=tq.FixedPoint(bits=4, per_channel=True)))
        tq.calibrate(qm, [x], progress=False)
        t0 = time.perf_counter()
        report = tq.round_weights(qm, x.split(256), bound=bound, progress=False)
        seconds = time.perf_counter() - t0
        (r,) = report.layers
        rows.append(
            {"bound": bound, "seconds": seconds, "nearest": r.nearest, "qubo": r.objective, "lower": r.bound}
        )
        print(f"  bound={bound}: {seconds:.1f} s, nearest {r.nearest:.1f}, QUBO {r.objective:.1f}")
    print("\n| lower bound | round_weights time (s) | nearest objective | QUBO objective | certified bound |")
    print("|---|---|---|---|---|")
    for r in rows:
        lower = "-" if r["lower"] is None else f"{r['lower']:.1f}"
        on = "on" if r["bound"] else "off (default)"
        print(f"| {on} | {r['seconds']:.1f} | {r['nearest']:.1f} | {r['qubo']:.1f} | {lower} |")
    return {"wide": rows, "calibration": n_calib}


FORMATS = {
    "1 (binary)": lambda: tq.Binary(per_channel=True),
    "ternary": lambda: tq.Ternary(per_channel=True),
    "2": lambda: tq.FixedPoint(bits=2, narrow=False, per_channel=True),
    "3": lambda: tq.FixedPoint(bits=3, per_channel=True),
    "4": lambda: tq.FixedPoint(bits=4, per_channel=True),
    "8": lambda: tq.FixedPoint(bits=8, per_channel=True),
}


def accuracy_run(xtr, ytr, xte, yte, epochs: int, n_calib: int) -> dict:
    print("training 784-500-300-10 ...", flush=True)
    model = train([784, 500, 300, 10], xtr, ytr, epochs)
    float_acc = accuracy(model, xte, yte)
    print(f"  float test accuracy {float_acc:.4f}", flush=True)
    calib = [xtr[i : i + 512] for i in range(0, n_calib, 512)]
    rows = []
    for acts in (False, True):
        for label, fmt in FORMATS.items():
            a8 = tq.FixedPoint(bits=8) if acts else None
            row = {"weights": label, "activations": "8-bit" if acts else "float", "float": float_acc}
            for observer in ("mse", "minmax"):
                cfg = tq.QConfig(
                    weight=fmt(),
                    activation=a8,
                    input=tq.FixedPoint(bits=8, signed=False) if acts else None,
                    weight_observer=observer,
                    activation_observer="mse",
                )
                for method in ("nearest", "qubo"):
                    qm = tq.quantize(model, cfg)
                    tq.calibrate(qm, calib, progress=False)
                    t0 = time.perf_counter()
                    rep = tq.round_weights(qm, calib, method=method, bound=False, progress=False)
                    key = f"{method}_{observer}"
                    row[key] = accuracy(qm.eval(), xte, yte)
                    row[f"{key}_seconds"] = time.perf_counter() - t0
                    row[f"{key}_objective"] = sum(r.objective for r in rep.layers)
            rows.append(row)
            print(
                f"  {label} w / {row['activations']} a: "
                + ", ".join(
                    f"{k} {row[k]:.4f}" for k in ("nearest_mse", "nearest_minmax", "qubo_mse", "qubo_minmax")
                ),
                flush=True,
            )
    print(f"\nfloat accuracy {float_acc:.4f}\n")
    print(
        "| weights | activations | nearest (MSE steps) | nearest (min-max steps) | QUBO (MSE steps) "
        "| QUBO (min-max steps) | best QUBO - float | QUBO time (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        best = max(r["qubo_mse"], r["qubo_minmax"])
        print(
            f"| {r['weights']} | {r['activations']} | {r['nearest_mse']:.4f} | {r['nearest_minmax']:.4f} "
            f"| {r['qubo_mse']:.4f} | {r['qubo_minmax']:.4f} | {best - float_acc:+.4f} "
            f"| {r['qubo_minmax_seconds']:.1f} |"
        )
    return {"float": float_acc, "accuracy": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("parts", nargs="*", default=["speed", "accuracy"])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--calib", type=int, default=2048)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "wide" in args.parts:  # no data needed
        (OUT / "qubo_wide.json").write_text(json.dumps(wide(1024), indent=2))
    if not {"speed", "accuracy"} & set(args.parts):
        return
    xtr, ytr = load_mnist(ROOT, "train")
    xte, yte = load_mnist(ROOT, "test")
    if "speed" in args.parts:
        (OUT / "qubo_speed.json").write_text(json.dumps(speed(xtr, ytr, args.epochs), indent=2))
    if "accuracy" in args.parts:
        result = accuracy_run(xtr, ytr, xte, yte, args.epochs, args.calib)
        (OUT / "qubo_accuracy.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
