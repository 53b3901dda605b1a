"""Equivalence verification benchmarks (paper 003), part 1: VNN-COMP mnist-net_256x2.

The network (98.08% on MNIST) quantized to 8-bit per-channel weights, 8-bit activations and an
8-bit unsigned input, calibrated on 1024 MNIST training images; top-1 equivalence around the
first test images at each delta (pixels in [0, 1]); verdict and time per image, and the plain z3
encoding (no bound stage, no sampling) side by side on the first ``--plain`` images.
Usage: python benchmarks/bench_verify.py [--images 15] [--deltas 0.005 0.01 0.02] [--plain 3]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torchqv as tq
from torchqv.data import load_mnist

ROOT = Path(os.environ.get("TORCHQV_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=15)
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.005, 0.01, 0.02])
    parser.add_argument("--plain", type=int, default=3)
    parser.add_argument("--branching", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    f = tq.from_onnx(ROOT / "onnx" / "mnist-net_256x2.onnx")
    xtr, _ = load_mnist(ROOT, "train")
    xte, _ = load_mnist(ROOT, "test")
    xtr, xte = xtr.reshape(-1, 784, 1), xte.reshape(-1, 784, 1)
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=8, per_channel=True),
        activation=tq.FixedPoint(bits=8),
        input=tq.FixedPoint(bits=8, signed=False),
    )
    fq = tq.quantize(f, cfg)
    tq.calibrate(fq, [xtr[:1024]], progress=False)
    rows = []
    for delta in args.deltas:
        ours = tq.verify_equivalence(
            f, fq, xte[: args.images], delta, relation="top1", domain=(0.0, 1.0), timeout=args.timeout
        )
        plain = (
            tq.verify_equivalence(
                f,
                fq,
                xte[: args.plain],
                delta,
                relation="top1",
                domain=(0.0, 1.0),
                timeout=args.timeout,
                samples=0,
                use_bounds=False,
            )
            if args.plain
            else []
        )
        for i, r in enumerate(ours):
            row = {
                "delta": delta,
                "image": i,
                "verdict": r.verdict,
                "method": r.stats["method"],
                "seconds": r.stats["seconds"],
            }
            if i < len(plain):
                row.update(plain_verdict=plain[i].verdict, plain_seconds=plain[i].stats["seconds"])
            rows.append(row)
            print(row, flush=True)
    print("\n| delta | image | verdict | decided by | time (s) | plain z3 verdict | plain z3 time (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        plain = f"{r['plain_verdict']} | {r['plain_seconds']:.1f}" if "plain_verdict" in r else "- | -"
        print(
            f"| {r['delta']} | {r['image']} | {r['verdict']} | {r['method']} | {r['seconds']:.2f} | {plain} |"
        )
    for delta in args.deltas:
        sel = [r for r in rows if r["delta"] == delta]
        decided = sum(r["verdict"] != "UNKNOWN" for r in sel)
        print(f"delta {delta}: {decided}/{len(sel)} decided, max time {max(r['seconds'] for r in sel):.1f} s")
    OUT.mkdir(exist_ok=True)
    (OUT / "verify_mnist.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
