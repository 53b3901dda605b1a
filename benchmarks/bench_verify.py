"""Equivalence verification benchmarks (Matos Júnior, "An automated method for neural network quantization
refinement" (PhD thesis, UFAM, 2025)).

``mnist``: VNN-COMP mnist-net_256x2 (98.08% on MNIST) quantized to 8-bit per-channel weights,
8-bit activations and an 8-bit unsigned input, calibrated on 1024 MNIST training images; top-1
equivalence around the first test images at each delta (pixels in [0, 1]); verdict and time per
image, and the plain z3 encoding (no bounds, no branching, no sampling) side by side.

``acas``: the five ACAS Xu networks quantized to 8 and 6 bits, per-channel weights and biases
only (the thesis' setting, ``--mode weights``) or weights and activations (``--mode full``),
calibrated on 2048 points of the normalised input box; eps-equivalence (L-inf, eps 0.05) around
5 random points of the box per network at each delta.

``--network mnist-net_256x6`` (or 256x4) runs the same on the deeper nets of the family; the
summary line gives the slowest region against the timeout (the time limit's overrun).
``--workers N`` (N > 1) verifies the same regions again with ``workers=N`` (a local pool of N
processes, started per delta and included in the time): wall times, their ratio, and whether
every result (verdict, reason, counterexample) is the serial one.

``graph``: networks that are not chains, trained here on MNIST (the 60,000 training images,
2 epochs): a LeNet (two conv + max-pool stages) and a residual CNN (a strided conv, a residual
block, average pooling), quantized like ``mnist``; top-1 around the first test images at each
delta: verdict, method and time per image, and the size of the chain the graph lowers to.

``shipping``: how f and f' reach the workers, on a warm pool of ``--workers`` processes and
``--images`` regions of mnist-net_256x2 at ``--delta`` (cheap regions, so the overhead shows):
one region per task with the problem built once per worker (the default), one region per task
built again for every task, and one chunk of regions per worker.

Usage: python benchmarks/bench_verify.py mnist [--images 15] [--deltas 0.005 0.01 0.02] [--plain 15]
                                         [--network mnist-net_256x2] [--timeout 60] [--workers 2]
       python benchmarks/bench_verify.py acas [--points 5] [--deltas 0.01 0.05 0.1] [--bits 8 6]
       python benchmarks/bench_verify.py graph [--images 10] [--deltas 0.005 0.01] [--timeout 30]
       python benchmarks/bench_verify.py shipping [--images 15] [--delta 0.005] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

import torchqv as tq
from torchqv.data import load_mnist
from torchqv.verify import engine
from torchqv.verify.parallel import check_workers, process_pool

ROOT = Path(os.environ.get("TORCHQV_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
OUT = Path(__file__).resolve().parent / "results"
ACAS = ["1_1", "1_2", "2_1", "3_3", "5_9"]
ACAS_LO = torch.tensor([-0.3284, -0.5, -0.5, -0.5, -0.5])
ACAS_HI = torch.tensor([0.6799, 0.5, 0.5, 0.5, 0.5])


def _row(r: tq.verify.Result) -> dict:
    return {"verdict": r.verdict, "method": r.stats["method"], "seconds": round(r.stats["seconds"], 2)}


def signature(r: tq.verify.Result) -> tuple:
    """A result without its times: what must not depend on the executor."""
    exact = None if r.counterexample_exact is None else r.counterexample_exact.tolist()
    cex = None if r.counterexample is None else r.counterexample.tolist()
    return r.verdict, r.reason, r.stats.get("method"), cex, exact


def mnist_pair(network: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """The network, its 8-bit copy (calibrated on 1024 training images) and the test images."""
    f = tq.from_onnx(ROOT / "onnx" / f"{network}.onnx")
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
    return f, fq, xte


def mnist(args: argparse.Namespace) -> list[dict]:
    f, fq, xte = mnist_pair(args.network)
    rows, walls = [], {}
    for delta in args.deltas:
        common = dict(relation="top1", domain=(0.0, 1.0), timeout=args.timeout)
        t0 = time.perf_counter()
        ours = tq.verify_equivalence(f, fq, xte[: args.images], delta, **common)
        walls[delta] = [time.perf_counter() - t0]
        pooled = []
        if args.workers > 1:
            t0 = time.perf_counter()
            pooled = tq.verify_equivalence(f, fq, xte[: args.images], delta, **common, workers=args.workers)
            walls[delta].append(time.perf_counter() - t0)
        plain = (
            tq.verify_equivalence(f, fq, xte[: args.plain], delta, samples=0, use_bounds=False, **common)
            if args.plain
            else []
        )
        for i, r in enumerate(ours):
            row = {"delta": delta, "image": i, **_row(r)}
            if pooled:
                row.update(
                    workers_verdict=pooled[i].verdict,
                    workers_seconds=round(pooled[i].stats["seconds"], 2),
                    same=signature(pooled[i]) == signature(r),
                )
            if i < len(plain):
                row.update(plain_verdict=plain[i].verdict, plain_seconds=round(plain[i].stats["seconds"], 2))
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
        plain_decided = sum(r.get("plain_verdict", "UNKNOWN") != "UNKNOWN" for r in sel)
        slowest = max(r["seconds"] for r in sel)
        print(
            f"delta {delta}: ours {decided}/{len(sel)} decided (max {slowest:.1f} s, timeout "
            f"{args.timeout:g} s, overrun {max(0.0, slowest - args.timeout):.1f} s), "
            f"plain z3 {plain_decided}/{min(len(sel), args.plain)}"
        )
    if args.workers > 1:
        print(f"\n| delta | serial wall (s) | workers={args.workers} wall (s) | ratio ", end="")
        print("| same verdicts | same results |\n|---|---|---|---|---|---|")
        for delta in args.deltas:
            sel = [r for r in rows if r["delta"] == delta]
            serial, pooled = walls[delta]
            verdicts = sum(r["verdict"] == r["workers_verdict"] for r in sel)
            same = sum(r["same"] for r in sel)
            print(
                f"| {delta} | {serial:.1f} | {pooled:.1f} | {serial / pooled:.2f} | {verdicts}/{len(sel)} "
                f"| {same}/{len(sel)} |"
            )
            rows.append({"delta": delta, "serial_wall": round(serial, 2), "workers_wall": round(pooled, 2)})
        serial, pooled = (sum(w[k] for w in walls.values()) for k in (0, 1))
        ratio = serial / pooled
        print(f"all deltas: serial {serial:.1f} s, workers={args.workers} {pooled:.1f} s, ratio {ratio:.2f}")
    return rows


class LeNet(torch.nn.Module):
    """Conv(1, 6, 5) - ReLU - MaxPool - Conv(6, 16, 5) - ReLU - MaxPool - Linear(256, 10)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(256, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResidualCNN(torch.nn.Module):
    """Conv(1, 8, 3, stride 2) - ReLU - [Conv(8, 8, 3) - ReLU - Conv(8, 8, 3)] + skip - ReLU -
    AvgPool(2) - Linear(392, 10)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(self.c2(torch.relu(self.c1(h))) + h)
        return self.fc(torch.nn.functional.avg_pool2d(h, 2).flatten(1))


def trained(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 128]), y[i : i + 128]).backward()
            opt.step()
    return model.eval()


def graph(args: argparse.Namespace) -> list[dict]:
    from torchqv.verify.network import Affine, float_chain, quant_chain

    xtr, ytr = load_mnist(ROOT, "train")
    xte, yte = load_mnist(ROOT, "test")
    xtr, xte = xtr.reshape(-1, 1, 28, 28), xte.reshape(-1, 1, 28, 28)
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=8, per_channel=True),
        activation=tq.FixedPoint(bits=8),
        input=tq.FixedPoint(bits=8, signed=False),
    )
    rows = []
    for name, net in (("lenet", LeNet()), ("residual_cnn", ResidualCNN())):
        t0 = time.perf_counter()
        f = trained(net, xtr, ytr)
        train_s = time.perf_counter() - t0
        with torch.no_grad():
            acc = float((f(xte).argmax(1) == yte).float().mean())
        fq = tq.quantize(f, cfg)
        tq.calibrate(fq, [xtr[:1024]], progress=False)
        fq.eval()
        t0 = time.perf_counter()
        float_chain(f, (1, 28, 28))  # both chains: the build time covers what a call builds
        cq = quant_chain(fq, (1, 28, 28))
        build_s = time.perf_counter() - t0
        affine = [layer for layer in cq.layers if isinstance(layer, Affine)]
        size = {
            "layers": len(cq.layers),
            "widest": max(len(layer.b) for layer in affine),
            "stored_weights": sum(layer.nnz for layer in affine),
            "build_s": round(build_s, 2),
        }
        print(f"{name}: float accuracy {acc:.4f} (MNIST test set), trained in {train_s:.0f} s; "
              f"chain of f': {size}", flush=True)  # fmt: skip
        for delta in args.deltas:
            results = tq.verify_equivalence(
                f, fq, xte[: args.images], delta, relation="top1", domain=(0.0, 1.0), timeout=args.timeout
            )
            for i, r in enumerate(results):
                row = {"network": name, "accuracy": acc, **size, "delta": delta, "image": i, **_row(r)}
                rows.append(row)
                print(row, flush=True)
    print("\n| network | delta | proved | refuted | unknown | max time (s) | median time (s) |")
    print("|---|---|---|---|---|---|---|")
    for name in ("lenet", "residual_cnn"):
        for delta in args.deltas:
            sel = [r for r in rows if r["network"] == name and r["delta"] == delta]
            proved, refuted, unknown = (
                sum(r["verdict"] == v for r in sel) for v in ("EQUIVALENT", "NOT_EQUIVALENT", "UNKNOWN")
            )
            times = [r["seconds"] for r in sel]
            print(
                f"| {name} | {delta} | {proved} | {refuted} | {unknown} "
                f"| {max(times):.1f} | {statistics.median(times):.1f} |"
            )
    return rows


def shipping(args: argparse.Namespace) -> list[dict]:
    """Wall time of the same regions per way of shipping the problem, on a warm pool."""
    f, fq, xte = mnist_pair("mnist-net_256x2")
    pts = xte[: args.images]
    common = dict(relation="top1", domain=(0.0, 1.0), timeout=60.0)
    strategies = {
        "serial (this process)": None,
        "1 region per task, problem built once per worker": (1, 2),
        "1 region per task, problem built for every task": (1, 0),
        f"{math.ceil(args.images / args.workers)} regions per task (one chunk per worker)": (
            math.ceil(args.images / args.workers),
            2,
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in strategies}
    reference = [signature(r) for r in tq.verify_equivalence(f, fq, pts, args.delta, **common)]
    t0 = time.perf_counter()
    with process_pool(args.workers) as pool:
        list(pool.map(check_workers, [1] * args.workers))  # start the workers (imports torchqv)
        start = time.perf_counter() - t0
        tq.verify_equivalence(f, fq, pts[: args.workers], args.delta, **common, executor=pool)  # warm
        for _ in range(args.repeats):
            for name, plan in strategies.items():
                if plan is not None:
                    engine.REGIONS_PER_TASK, engine.PROBLEMS_PER_WORKER = plan
                t0 = time.perf_counter()
                res = tq.verify_equivalence(
                    f, fq, pts, args.delta, **common, executor=None if plan is None else pool
                )
                times[name].append(time.perf_counter() - t0)
                assert [signature(r) for r in res] == reference, name
    engine.REGIONS_PER_TASK, engine.PROBLEMS_PER_WORKER = 1, 2
    print(f"pool of {args.workers} spawned workers started in {start:.1f} s")
    print(f"\n| {args.images} regions, delta {args.delta} | median wall (s) | runs (s) |")
    print("|---|---|---|")
    rows = []
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {', '.join(f'{v:.2f}' for v in t)} |")
        rows.append({"strategy": name, "median": statistics.median(t), "runs": t})
    rows.append({"pool_start": start})
    return rows


def acas(args: argparse.Namespace) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name in ACAS:
        calib = ACAS_LO + torch.rand(2048, 5, generator=gen) * (ACAS_HI - ACAS_LO)
        points = ACAS_LO + torch.rand(args.points, 5, generator=gen) * (ACAS_HI - ACAS_LO)
        if name not in args.networks:  # drawn all the same: a subset sees the same points
            continue
        f = tq.from_onnx(ROOT / "onnx" / f"ACASXU_run2a_{name}_batch_2000.onnx")
        for bits in args.bits:
            act = tq.FixedPoint(bits=bits) if args.mode == "full" else None  # weights: the thesis' setting
            fq = tq.quantize(f, tq.QConfig(weight=tq.FixedPoint(bits=bits, per_channel=True), activation=act))
            tq.calibrate(fq, [calib.reshape(-1, 1, 1, 5)], progress=False)
            for delta in args.deltas:
                res = tq.verify_equivalence(
                    f,
                    fq,
                    points.reshape(-1, 1, 1, 5),
                    delta,
                    relation="eps",
                    eps=0.05,
                    domain=(ACAS_LO.reshape(1, 1, 5), ACAS_HI.reshape(1, 1, 5)),
                    timeout=args.timeout,
                )
                for i, r in enumerate(res):
                    row = {"network": name, "bits": bits, "delta": delta, "point": i, **_row(r)}
                    rows.append(row)
                    print(row, flush=True)
    acas_table(rows, args.networks, args.bits, args.deltas)
    return rows


def acas_table(rows: list[dict], networks: list[str], bits_list: list[int], deltas: list[float]) -> None:
    """The Markdown table of ACAS Xu verdicts (also for rows merged from several runs)."""
    print("\n| network | bits | delta | verdicts (EQ / NEQ / UNK) | decided by | max time (s) |")
    print("|---|---|---|---|---|---|")
    for name in networks:
        for bits in bits_list:
            for delta in deltas:
                sel = [r for r in rows if (r["network"], r["bits"], r["delta"]) == (name, bits, delta)]
                counts = [
                    sum(r["verdict"] == v for r in sel) for v in ("EQUIVALENT", "NOT_EQUIVALENT", "UNKNOWN")
                ]
                methods = ", ".join(sorted({r["method"] for r in sel}))
                print(
                    f"| {name} | {bits} | {delta} | {counts[0]} / {counts[1]} / {counts[2]} | {methods} | "
                    f"{max(r['seconds'] for r in sel):.1f} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="bench", required=True)
    m = sub.add_parser("mnist")
    m.add_argument("--images", type=int, default=15)
    m.add_argument("--deltas", type=float, nargs="+", default=[0.005, 0.01, 0.02])
    m.add_argument("--plain", type=int, default=15)
    m.add_argument("--timeout", type=float, default=60.0)
    m.add_argument("--network", default="mnist-net_256x2", choices=[f"mnist-net_256x{k}" for k in (2, 4, 6)])
    m.add_argument("--workers", type=int, default=1, help="also verify with workers=N and compare")
    g = sub.add_parser("graph")
    g.add_argument("--images", type=int, default=10)
    g.add_argument("--deltas", type=float, nargs="+", default=[0.005, 0.01])
    g.add_argument("--timeout", type=float, default=30.0)
    sh = sub.add_parser("shipping")
    sh.add_argument("--images", type=int, default=15)
    sh.add_argument("--delta", type=float, default=0.005)
    sh.add_argument("--workers", type=int, default=2)
    sh.add_argument("--repeats", type=int, default=3)
    a = sub.add_parser("acas")
    a.add_argument("--points", type=int, default=5)
    a.add_argument("--deltas", type=float, nargs="+", default=[0.01, 0.05, 0.1])
    a.add_argument("--bits", type=int, nargs="+", default=[8, 6])
    a.add_argument("--timeout", type=float, default=60.0)
    a.add_argument("--mode", choices=["weights", "full"], default="weights")
    a.add_argument("--networks", nargs="+", choices=ACAS, default=list(ACAS))
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = {"mnist": mnist, "acas": acas, "shipping": shipping, "graph": graph}[args.bench](args)
    print(f"total {time.perf_counter() - t0:.0f} s")
    OUT.mkdir(exist_ok=True)
    name = f"acas_{args.mode}" if args.bench == "acas" else args.bench
    if args.bench == "mnist" and args.network != "mnist-net_256x2":
        name += "_" + args.network.split("_")[-1]
    if args.bench == "mnist" and args.workers > 1:
        name += f"_workers{args.workers}"
    if args.bench == "acas" and args.networks != list(ACAS):
        name += "_" + "_".join(args.networks)
    (OUT / f"verify_{name}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
