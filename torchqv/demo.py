"""``make demo``: float vs fixed-point accuracy of a small MLP on scikit-learn's digits.

Trains a 64-64-32-10 ReLU MLP on the embedded digits data (no download), quantizes weights
(per-channel) and activations to 8, 4 and 2 bits, calibrates on the training split, rounds the
weights to nearest and with the QUBO method (paper 004), and reports the exact fixed-point
simulation's test accuracy, checked against the integer reference on a slice of the test set.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import torchqv as tq


def digits(seed: int = 0) -> tuple[torch.Tensor, ...]:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return xtr, xte, ytr, yte


def train_mlp(xtr: torch.Tensor, ytr: torch.Tensor, epochs: int = 60, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def qconfig(bits: int, weight_observer: str) -> tq.QConfig:
    return tq.QConfig(
        weight=tq.FixedPoint(bits=bits, per_channel=True),
        activation=tq.FixedPoint(bits=bits),
        input=tq.FixedPoint(bits=bits, signed=False),
        weight_observer=weight_observer,
        activation_observer="mse",
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2])
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    xtr, xte, ytr, yte = digits()
    model = train_mlp(xtr, ytr, args.epochs)
    float_acc = accuracy(model, xte, yte)
    rows = []
    for bits in args.bits:
        row = {"bits": bits, "float": float_acc}
        # nearest rounding does best with MSE-optimal steps; QUBO rounding with min-max steps,
        # whose wider grid it can exploit (see BENCHMARKS.md)
        for method, observer in (("nearest", "mse"), ("qubo", "minmax")):
            qm = tq.quantize(model, qconfig(bits, observer))
            tq.calibrate(qm, xtr.split(256), progress=False)
            tq.round_weights(qm, xtr.split(512), method=method, bound=False, progress=False)
            qm.eval()
            row[method] = accuracy(qm, xte, yte)
            row["reference_match"] = torch.equal(qm(xte[:32]), tq.reference_forward(qm, xte[:32]))
        rows.append(row)
    print(f"digits MLP 64-64-32-10, {len(xtr)} train / {len(xte)} test images")
    print("| bits (w/a/in) | float acc | nearest | QUBO rounding | sim == integer reference |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['bits']} | {r['float']:.4f} | {r['nearest']:.4f} | {r['qubo']:.4f} "
            f"| {'yes' if r['reference_match'] else 'NO'} |"
        )
    print(f"total time {time.perf_counter() - t0:.1f} s")
    return rows


if __name__ == "__main__":
    main()
