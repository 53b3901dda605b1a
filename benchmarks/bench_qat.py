"""QAT training-step time and eval forward time of quantized models relative to float.

Prints, in one run, for an MLP (784-256-128-10) and a small CNN (two 3x3 conv + pool, linear):
  * QAT step: forward + backward + SGD step with fake quantization (float32, STE), 8-bit
    per-channel weights, 8-bit activations and input, versus the same step on the float model;
  * eval forward: the exact fixed-point simulation (float64, certified rounding) versus the float
    model's eval forward.
Usage: python benchmarks/bench_qat.py [--batch 128] [--repeats 30]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

import torchqv as tq


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


def timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t0)
    best.sort()
    return best[len(best) // 2]  # median


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounding", nargs="+", default=["half_away", "half_even"])
    args = parser.parse_args()
    torch.manual_seed(0)
    parser_rounding = args.rounding
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, batch {args.batch}")
    print(
        "| model | rounding | QAT step float (ms) | QAT step torchqv (ms) | ratio "
        "| eval float (ms) | eval exact torchqv (ms) | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (name, build), rounding in itertools.product(
        (("MLP 784-256-128-10", mlp), ("CNN 2xconv3x3+linear", cnn)), parser_rounding
    ):
        fmt = tq.FixedPoint(bits=8, rounding=rounding)
        cfg = tq.QConfig(
            weight=tq.FixedPoint(bits=8, per_channel=True, rounding=rounding), activation=fmt, input=fmt
        )
        x = torch.randn(args.batch, 1, 28, 28)
        y = torch.randint(0, 10, (args.batch,))
        fm = build()
        qm = tq.quantize(fm, cfg)
        tq.calibrate(qm, [x], progress=False)
        fm.train()
        qm.train()
        t_f = timed(train_step(fm, torch.optim.SGD(fm.parameters(), lr=1e-3), x, y), args.repeats)
        t_q = timed(train_step(qm, torch.optim.SGD(qm.parameters(), lr=1e-3), x, y), args.repeats)
        fm.eval()
        qm.eval()
        with torch.no_grad():
            e_f = timed(functools.partial(fm, x), args.repeats)
            e_q = timed(functools.partial(qm, x), args.repeats)
        print(
            f"| {name} | {rounding} | {t_f * 1e3:.2f} | {t_q * 1e3:.2f} | {t_q / t_f:.2f}x | "
            f"{e_f * 1e3:.2f} | {e_q * 1e3:.2f} | {e_q / e_f:.2f}x |"
        )


if __name__ == "__main__":
    main()
