"""CEG4N on the thesis' Iris and Seeds networks (Matos Júnior, "An automated method for neural network
quantization refinement" (PhD thesis, UFAM, 2025), ch. 4, Tables 2 and 3).

Networks trained here with fixed seeds (full-batch Adam, features scaled to [0, 1] by
``torchqv.data.train_test``): Iris 4-h-h-3 (h = 4, 10, 15) and Seeds 7-h-3 (h = 4, 6, 10, 15),
ReLU.  Critical points: for each class one correctly classified test point (``--points margin``:
the largest logit margin, default; ``first``: the first in test order; the thesis draws them at
random, sec. 4.4.6).  For each network, delta in 0.01, 0.03, 0.05 and mode (weights and biases,
or full fixed point): ``search_bits`` with top-1 equivalence, bits in [2, 32], domain [0, 1],
calibration on the training set.  Prints a Markdown table like the thesis' (iterations,
counterexamples, bits per layer, status, time) with the test accuracy of f and f', writes
benchmarks/results/ceg4n.json and ceg4n.png (ceg4n_first.* with ``--points first``).
Usage: python benchmarks/bench_ceg4n.py [--nets iris_4x2 seeds_6x1] [--deltas 0.01] [--modes weights]
       [--time-limit 300] [--timeout 60] [--on-unknown skip] [--points margin] [--no-progress]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn
from tqdm.auto import tqdm

from torchqv.data import train_test
from torchqv.recipes.ceg4n import critical_points, train_full_batch
from torchqv.verify.ceg4n import BitSearchConfig, search_bits
from torchqv.verify.config import VerifyConfig

OUT = Path(__file__).resolve().parent / "results"
NETS = {  # thesis sec. 4.3.2: Iris, two hidden layers; Seeds, one hidden layer
    "iris_4x2": ("iris", [4, 4, 4, 3]),
    "iris_10x2": ("iris", [4, 10, 10, 3]),
    "iris_15x2": ("iris", [4, 15, 15, 3]),
    "seeds_4x1": ("seeds", [7, 4, 3]),
    "seeds_6x1": ("seeds", [7, 6, 3]),
    "seeds_10x1": ("seeds", [7, 10, 3]),
    "seeds_15x1": ("seeds", [7, 15, 3]),
}


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.01, 0.03, 0.05])
    parser.add_argument("--modes", nargs="+", default=["weights", "full"], choices=["weights", "full"])
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--on-unknown", default="vf", choices=["vf", "skip"])
    parser.add_argument("--points", default="margin", choices=["margin", "first"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny networks: 1 is fastest)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    runs = list(itertools.product(args.nets, args.deltas, args.modes))
    nets: dict[str, tuple] = {}
    for name, delta, mode in tqdm(runs, desc="runs", disable=args.no_progress):
        data, widths = NETS[name]
        if name not in nets:
            xtr, xte, ytr, yte = train_test(data)
            f = train_full_batch(widths, xtr, ytr)
            nets[name] = (f, xtr, xte, yte, *critical_points(f, xte, yte, args.points))
        f, xtr, xte, yte, points, idx = nets[name]
        cfg = BitSearchConfig(
            mode=mode,
            time_limit=args.time_limit,
            on_unknown=args.on_unknown,
            verify=VerifyConfig(timeout=args.timeout, domain=(0.0, 1.0)),
        )
        t0 = time.perf_counter()
        r = search_bits(
            f, points, delta, (2, 32), config=cfg, calibration=xtr, progress=False
        )
        wall = time.perf_counter() - t0
        row = {
            "network": name,
            "delta": delta,
            "mode": mode,
            "points": idx,
            "acc_f": accuracy(f, xte, yte),
            "acc_fq": accuracy(r.fq, xte, yte) if r.fq is not None else None,
            "weights_per_layer": [m.weight.numel() for m in f if isinstance(m, nn.Linear)],
            "wall_seconds": wall,
            "config": cfg.to_dict(),
            **r.to_dict(),
        }
        rows.append(row)
        tqdm.write(f"{name} delta={delta} {mode}: {r.status} bits={r.bits} iter={r.iterations} {wall:.1f}s")
    print()
    print(table(rows))
    OUT.mkdir(exist_ok=True)
    stem = "ceg4n" if args.points == "margin" else f"ceg4n_{args.points}"
    (OUT / f"{stem}.json").write_text(json.dumps(rows, indent=2))
    plot(rows, OUT / f"{stem}.png")


def table(rows: list[dict]) -> str:
    lines = [
        "| network | delta | mode | No. Iter. | No. CEs | candidates | bits | status | time (s) "
        "| acc f | acc f' |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bits = ",".join(map(str, r["bits"])) if r["bits"] is not None and r["status"] != "QF" else "-"
        acc_q = f"{r['acc_fq']:.4f}" if r["acc_fq"] is not None and r["status"] == "SQ" else "-"
        skipped = f" ({len(r['skipped'])} skipped)" if r["skipped"] else ""
        cells = [r["network"], r["delta"], r["mode"], r["iterations"], len(r["counterexamples"])]
        cells += [
            r["candidates"],
            bits,
            r["status"] + skipped,
            f"{r['seconds']:.1f}",
            f"{r['acc_f']:.4f}",
            acc_q,
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Average bits per weight of the final f' (SQ runs) per network, delta and mode."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, mode in zip(axes, ("weights", "full"), strict=True):
        for delta, style in zip(sorted({r["delta"] for r in rows}), itertools.cycle(["o-", "s--", "^:"])):
            sel = [r for r in rows if r["mode"] == mode and r["delta"] == delta and r["status"] == "SQ"]
            ax.plot(
                [r["network"] for r in sel],
                [r["cost"] / sum(r["weights_per_layer"]) for r in sel],
                style,
                label=f"delta={delta}",
            )
        ax.set_title(f"mode={mode}: average weight bits of f' (SQ runs)")
        ax.tick_params(axis="x", rotation=45)
        ax.legend()
    axes[0].set_ylabel("bits per weight")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
