"""The ``ceg4n`` recipe (``recipes/ceg4n.py``): the counterexample-guided bit-width search
(:func:`torchqv.verify.ceg4n.search_bits`) of Matos Júnior, "An automated method for neural network
quantization refinement" (PhD thesis, UFAM, 2025), on the networks of the thesis' tables.

* Tables 2 and 3 (sec. 4.3.2): Iris 4-h-h-3 (h = 4, 10, 15) and Seeds 7-h-3 (h = 4, 6, 10, 15),
  ReLU, trained here full batch with Adam (fixed seed) on the embedded sets (features in [0, 1]);
* Table 6: VNN-COMP's MNIST networks ``mnist-net_256x{2,4,6}.onnx`` read by ``tq.from_onnx`` from
  ``<data_root>/onnx``, critical points from MNIST's test split (skipped when a file is missing).

Critical points (sec. 4.4.6): one correctly classified test point per class (the thesis draws them
at random; here the one with the largest logit margin, or the first).  Each network and delta
gets one search: top-1 equivalence on the L-infinity balls around the points inside [0, 1], bits
in [2, 32], calibration on the training split.  Outputs: ``results.json`` (one row per network
and delta, with the search history), ``results.md`` (the thesis' columns: iterations,
counterexamples, bits, status, time, with the test accuracy of f and f') and ``ceg4n.png``.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.torchvision_sets import default_root
from ..errors import DataError
from ..jobconfig import plain
from ..progress import progress_bar
from ..verify import from_onnx
from ..verify.ceg4n import search_bits
from ..verify.verdicts import SearchStatus
from .config import Ceg4nRecipeConfig, DatasetConfig, as_config
from .networks import accuracy, load_data, tensors
from .report import Column, Report, job_label, rows_table, save_figure, write_outputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Network:
    """A network of the thesis: hidden widths trained on ``dataset``, or an ONNX file."""

    dataset: str
    hidden: tuple[int, ...] = ()
    onnx: str | None = None


NETWORKS = {
    "iris_4x2": Network("iris", (4, 4)),
    "iris_10x2": Network("iris", (10, 10)),
    "iris_15x2": Network("iris", (15, 15)),
    "seeds_4x1": Network("seeds", (4,)),
    "seeds_6x1": Network("seeds", (6,)),
    "seeds_10x1": Network("seeds", (10,)),
    "seeds_15x1": Network("seeds", (15,)),
    "mnist_256x2": Network("mnist", onnx="mnist-net_256x2.onnx"),
    "mnist_256x4": Network("mnist", onnx="mnist-net_256x4.onnx"),
    "mnist_256x6": Network("mnist", onnx="mnist-net_256x6.onnx"),
}


def train_full_batch(
    widths: list[int], x: torch.Tensor, y: torch.Tensor, epochs: int = 2000, lr: float = 0.01, seed: int = 0
) -> nn.Sequential:
    """A ReLU network of ``widths`` trained full batch with Adam (cross entropy), eval mode.

    A plain loop: thousands of one-batch epochs of a tiny network, where a Lightning Trainer's
    per-epoch hooks would cost more than the training itself."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def critical_points(
    f: nn.Module, x: torch.Tensor, y: torch.Tensor, how: str = "margin"
) -> tuple[torch.Tensor, list[int]]:
    """One correctly classified point per class (``margin``: the largest top-1 margin; ``first``)."""
    with torch.no_grad():
        out = f(x).reshape(len(x), -1)
    top2 = out.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    idx = []
    for c in range(out.shape[1]):
        ok = ((y == c) & (out.argmax(1) == c)).nonzero()[:, 0]
        if len(ok) == 0:
            raise DataError(f"no test point of class {c} is classified correctly: no critical point for it")
        idx.append(int(ok[margin[ok].argmax()] if how == "margin" else ok[0]))
    return x[idx], idx


@dataclass
class _Prepared:
    f: nn.Module
    calibration: torch.Tensor
    test: Any
    points: torch.Tensor
    indices: list[int]


def prepare(name: str, cfg: Ceg4nRecipeConfig) -> _Prepared:
    """The network ``name``, its calibration inputs, test split and critical points."""
    net = NETWORKS[name]
    root = Path(cfg.data_root) if cfg.data_root is not None else default_root()
    if net.onnx is not None and not (root / "onnx" / net.onnx).exists():
        raise FileNotFoundError(
            f"{root / 'onnx' / net.onnx} not found (set data_root to the folder holding onnx/)"
        )
    data = load_data(DatasetConfig(name=net.dataset, root=str(root), cache_dir=cfg.cache_dir), cfg.seed)
    if net.onnx is not None:
        f = from_onnx(root / "onnx" / net.onnx).eval()
        calibration = tensors(data.train, cfg.calibration_samples)[0]
    else:
        xtr, ytr = tensors(data.train)
        f = train_full_batch(
            [xtr.shape[1], *net.hidden, data.num_classes], xtr, ytr, cfg.epochs, cfg.lr, cfg.seed
        )
        calibration = xtr[: cfg.calibration_samples]
    xte, yte = tensors(data.test)
    points, idx = critical_points(f, xte, yte, cfg.points)
    return _Prepared(f, calibration, data.test, points, idx)


def run_ceg4n(cfg: Ceg4nRecipeConfig | Any, out_dir: str | Path) -> dict[str, Any]:
    """Every network x delta of ``cfg`` (see the module docstring); returns the written results."""
    cfg = as_config(cfg, Ceg4nRecipeConfig)
    start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    rows = []
    for name in progress_bar(cfg.networks, "networks", progress=cfg.progress):
        base = {"network": name, "mode": cfg.search.mode, "relation": str(cfg.search.verify.relation)}
        try:
            p = prepare(name, cfg)
        except FileNotFoundError as e:
            log.warning("%s skipped: %s", name, e)
            rows += [{**base, "delta": d, "status": "SKIPPED", "reason": str(e)} for d in cfg.deltas]
            continue
        weights = [m.weight.numel() for m in p.f.modules() if isinstance(m, nn.Linear)]
        acc_f = accuracy(p.f, p.test)
        for delta in cfg.deltas:
            r = search_bits(
                p.f, p.points, delta, (cfg.bits[0], cfg.bits[1]), domain=(0.0, 1.0),
                config=cfg.search, calibration=p.calibration, progress=False,
            )  # fmt: skip
            result = r.to_dict()
            sq = r.status is SearchStatus.SQ
            rows.append(
                {
                    **base,
                    "delta": delta,
                    "points": p.indices,
                    "weights_per_layer": weights,
                    "acc_f": acc_f,
                    "acc_fq": accuracy(r.fq, p.test) if sq and r.fq is not None else None,
                    "bits_per_weight": _bits_per_weight(r.bits, weights) if sq else None,
                    **result,
                    "counterexamples": len(r.counterexamples),
                    "counterexample_points": result["counterexamples"],
                }
            )
            log.info(
                "%s delta=%s %s: %s bits=%s (%.1f s)",
                name,
                delta,
                cfg.search.mode,
                r.status,
                r.bits,
                r.seconds,
            )
    return write_outputs(out_dir, "ceg4n", plain(cfg), rows, seconds=time.perf_counter() - start)


# ------------------------------------------------------------------------------ report
def _bits_per_weight(bits: Any, weights: list[int]) -> float:
    return sum(b * n for b, n in zip(bits, weights, strict=True)) / sum(weights)


def _status(r: dict[str, Any]) -> str:
    if r["status"] == "SKIPPED":
        return f"SKIPPED ({r['reason']})"
    return r["status"] + (f" ({len(r['skipped'])} skipped)" if r["skipped"] else "")


COLUMNS: list[Column] = [
    ("network", "network"),
    ("delta", "delta"),
    ("mode", "mode"),
    ("No. Iter.", lambda r: r.get("iterations")),
    ("No. CEs", lambda r: r.get("counterexamples")),
    ("candidates", lambda r: r.get("candidates")),
    ("bits", lambda r: r["bits"] if r["status"] not in ("QF", "SKIPPED") else None),
    ("status", _status),
    ("time (s)", lambda r: r.get("seconds")),
    ("acc f", lambda r: r.get("acc_f")),
    ("acc f'", lambda r: r.get("acc_fq")),
]


def markdown(rows: list[dict[str, Any]]) -> str:
    """The thesis' table (Tables 2-6) with the test accuracy of f and of the final f'."""
    jobs: list[Column] = [("job", job_label)] if any(job_label(r) for r in rows) else []
    return "\n".join(
        [
            "### CEG4N (Matos Júnior 2025): cheapest per-layer bits proved equivalent",
            "",
            "SQ: proved equivalent on every region; QF: every bit vector refuted by a counterexample; "
            "TO: time or iteration limit; VF: a region undecided.",
            "",
            rows_table(rows, COLUMNS + jobs),
        ]
    )


STATUS_COLORS = {"SQ": "#4caf50", "QF": "#e53935", "TO": "#9e9e9e", "VF": "#ffc107", "SKIPPED": "#bbdefb"}


def plot(rows: list[dict[str, Any]], out: Path) -> list[str]:
    from matplotlib.figure import Figure

    nets = list(dict.fromkeys(r["network"] for r in rows))
    fig = Figure(figsize=(11, 4.5))
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r.get("bits_per_weight") is not None:
            label = f"delta={r['delta']} {r['mode']} {job_label(r)}".strip()
            series.setdefault(label, []).append((nets.index(r["network"]), r["bits_per_weight"]))
    for label, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    ax.set_xticks(range(len(nets)), nets, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("average bits per weight of f'")
    ax.set_title("SQ runs: bits of the cheapest proved f'")
    if series:
        ax.legend(fontsize=7)
    bottom = [0] * len(nets)
    for status, color in STATUS_COLORS.items():
        counts = [sum(r["network"] == n and r["status"] == status for r in rows) for n in nets]
        bx.bar(range(len(nets)), counts, bottom=bottom, color=color, label=status)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    bx.set_xticks(range(len(nets)), nets, rotation=45, ha="right", fontsize=8)
    bx.set_ylabel("searches")
    bx.set_title("termination status")
    bx.legend(fontsize=7)
    return [save_figure(fig, out / "ceg4n.png")]


REPORTS = {"ceg4n": Report(markdown, plot)}
