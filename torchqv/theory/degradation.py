"""Expressive degradation under weight quantization (Anonymous, "On the expressive power of weight
quantization in deep neural networks" (ICLR submission), sec. 3.3 and 4.1).

The anonymous ICLR submission's Theorem 5 and Corollary 6 say: if every weight moves by at most ``delta`` when
it is quantized to n bits, ``max_theta |Q_n(theta) - theta| <= delta``, the network's output
moves by at most ``eps`` with ``delta = O(C^-1 n^-L eps)`` (``C = D L N_w^L``).  Section 4.1
tests this on a regression network: 1000 points of ``[-1, 1]^10``, one hidden ReLU layer of
width 100, weights quantized to n = 1, 2, 4, 8, 16, 32 bits; Fig. 3 shows the gaps, Fig. 4 the
indicator ``ln(eps / delta)`` against n, which the paper finds below a line ``a n + b`` with
``a < 0``, ``b > 0``.

The gaps, with ``mu`` the empirical (uniform probability) measure on the P sample points and
the norms of Anonymous (ICLR submission), sec. 2.1 (matrix 2-norm = Frobenius, infinity norm = largest entry):

* ``eps_inf = ||f_Q - f||_{L^inf_mu} = max_p ||f_Q(x_p) - f(x_p)||_inf`` (the norm of Thm 5);
* ``eps_2 = ||f_Q - f||_{L^2_mu} = (1/P sum_p ||f_Q(x_p) - f(x_p)||_2^2)^(1/2)`` (Cor. 6);
* per layer l: ``delta_2^(l) = ||W_Q^(l) - W^(l)||_2`` and ``delta_inf^(l) = ||W_Q^(l) - W^(l)||_inf``
  (Fig. 3's "1st/2nd layer weight gaps");
* for the whole network: ``delta_inf = max_theta |Q_n(theta) - theta| = max_l delta_inf^(l)``
  (the hypothesis of Thm 5 and Cor. 6) and ``delta_2 = (sum_l (delta_2^(l))^2)^(1/2)``, the
  2-norm of all weight gaps together; Fig. 4's indicator is ``ln(eps_2 / delta_2)`` and
  ``ln(eps_inf / delta_inf)``.

``f`` is the float network evaluated in float64 (its float32 weights are exact reals) and
``f_Q`` the torchqv weight-only quantized network (``QConfig(weight=..., activation=None)``,
eval mode: float64 values of the codes times the exact steps).  Biases keep their float values
in torchqv's weight-only mode, so the gaps are those of the weight matrices.  The n-bit grid is
torchqv's signed narrow fixed point ``{-(2^(n-1)-1), ..., 2^(n-1)-1} * step`` and 1 bit is
``tq.Binary``'s ``{-1, +1} * step`` (Anonymous (ICLR submission), sec. 2.2 uses ``{0, +-1, ..., +-(n-1)}`` and
``{0, 1}``).  At 32 bits the step is about ``max|w| 2^-31``: codes and grid values are exact in
float64 and ``delta_inf <= step / 2`` (about ``2^-32 max|w|``), the paper's float baseline.

The regression target (the paper does not name one) is ``TARGETS[cfg.target]``, by default
``"sine"``: ``f(x) = N^-1/2 sum_i sin(pi x_i) + 2 N^-1 sum_i x_i x_{(i+1) mod N}`` (smooth, with
every input and neighbouring pairs interacting).  The MNIST counterpart of sec. 4.2 is in
:mod:`torchqv.theory.degradation_mnist`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import TheoryInputError
from ..extras import require
from ..formats import Binary, FixedPoint
from ..observers import OBSERVERS
from ..ops.affine import QuantConv, QuantLinear
from ..progress import progress_bar
from ..quantize import QConfig, calibrate, quantize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PAPER_BITS = (1, 2, 4, 8, 16, 32)


def _sine(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[1]
    pairs = (x * torch.roll(x, -1, dims=1)).sum(1)
    return torch.sin(math.pi * x).sum(1) / math.sqrt(n) + 2.0 * pairs / n


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=1)


TARGETS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"sine": _sine, "norm": _norm}


def check_bits(bits: Sequence[int]) -> None:
    """Bit widths must be distinct ints in [1, 32] (at least two for a fitted line)."""
    if len(bits) < 2 or len(set(bits)) != len(bits):
        raise TheoryInputError(f"bits must hold at least two distinct widths, got {list(bits)}")
    bad = [b for b in bits if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 32]
    if bad:
        raise TheoryInputError(f"bits must be ints in [1, 32], got {bad}")


def check_observer(kind: str) -> None:
    if kind not in OBSERVERS:
        raise TheoryInputError(f"weight_observer must be one of {OBSERVERS}, got {kind!r}")


@dataclass
class DegradationConfig:
    """Anonymous (ICLR submission), sec. 4.1: ``n_points`` uniform points of ``[-1, 1]^dim``, a
    ``dim``-``width``-1
    ReLU network trained in float (full-batch Adam), weights quantized to each of ``bits``."""

    n_points: int = 1000
    dim: int = 10
    width: int = 100
    bits: list[int] = field(default_factory=lambda: list(PAPER_BITS))
    target: str = "sine"
    epochs: int = 3000
    lr: float = 0.01
    weight_observer: str = "minmax"
    per_channel: bool = False
    seed: int = 0
    progress: bool | None = None

    def __post_init__(self) -> None:
        self.bits = list(self.bits)
        check_bits(self.bits)
        check_observer(self.weight_observer)
        if self.target not in TARGETS:
            raise TheoryInputError(f"target must be one of {sorted(TARGETS)}, got {self.target!r}")
        if self.n_points < 2 or self.dim < 1 or self.width < 1 or self.epochs < 0 or self.lr <= 0:
            raise TheoryInputError(
                "need n_points >= 2, dim >= 1, width >= 1, epochs >= 0 and lr > 0; got "
                f"{self.n_points}, {self.dim}, {self.width}, {self.epochs}, {self.lr}"
            )


# ----------------------------------------------------------------- the gaps
def weight_format(bits: int, per_channel: bool = False) -> FixedPoint:
    """n-bit signed narrow fixed point; 1 bit is the binary grid ``{-1, +1} * step``."""
    return Binary(per_channel=per_channel) if bits == 1 else FixedPoint(bits=bits, per_channel=per_channel)


def quantize_weights(
    model: nn.Module, bits: int, weight_observer: str = "minmax", per_channel: bool = False
) -> nn.Module:
    """Weight-only quantized copy of ``model`` in eval mode (steps from the weights' observer)."""
    cfg = QConfig(weight=weight_format(bits, per_channel), activation=None, weight_observer=weight_observer)
    qmodel = quantize(model, cfg)
    calibrate(qmodel, [], progress=False)  # weight-only: the observers read the weights
    return qmodel.eval()


def affine_layers(qmodel: nn.Module) -> list[tuple[str, QuantLinear | QuantConv]]:
    return [(n, m) for n, m in qmodel.named_modules() if isinstance(m, (QuantLinear, QuantConv))]


def weight_gaps(model: nn.Module, qmodel: nn.Module) -> OrderedDict[str, dict[str, float]]:
    """Per layer (in order): ``delta_2``, ``delta_inf`` of ``W_Q - W`` and the largest step."""
    gaps: OrderedDict[str, dict[str, float]] = OrderedDict()
    for name, qlayer in affine_layers(qmodel):
        weight = model.get_submodule(name).weight
        assert isinstance(weight, torch.Tensor)  # the float layer's weight
        diff = qlayer.dequantized_weight() - weight.detach().double()
        gaps[name] = {
            "delta_2": torch.linalg.vector_norm(diff).item(),
            "delta_inf": diff.abs().max().item(),
            "step": float(max(qlayer.weight_steps())),
        }
    return gaps


def network_gap(layers: dict[str, dict[str, float]]) -> dict[str, float]:
    """Whole-network ``delta_2`` (2-norm of all gaps) and ``delta_inf`` (largest gap)."""
    return {
        "delta_2": math.sqrt(math.fsum(g["delta_2"] ** 2 for g in layers.values())),
        "delta_inf": max(g["delta_inf"] for g in layers.values()),
    }


def output_gap(f: torch.Tensor, fq: torch.Tensor) -> dict[str, float]:
    """``eps_2`` (L^2 of the empirical measure) and ``eps_inf`` from outputs ``(P, M)``."""
    diff = (fq.double() - f.double()).reshape(f.shape[0], -1)
    return {
        "eps_2": math.sqrt((diff**2).sum(1).mean().item()),
        "eps_inf": diff.abs().max().item(),
    }


def log_ratio(num: float, den: float) -> float | None:
    """``ln(num / den)``; ``None`` when a gap is 0 (the indicator is undefined there)."""
    return math.log(num / den) if num > 0 and den > 0 else None


@dataclass(frozen=True)
class LineFit:
    """Least-squares line ``y = slope x + intercept`` over ``n`` points and its R^2."""

    slope: float
    intercept: float
    r2: float
    n: int


def fit_line(x: Sequence[float], y: Sequence[float]) -> LineFit:
    """Ordinary least squares: ``slope = S_xy / S_xx``, ``intercept = mean(y) - slope mean(x)``,
    ``R^2 = 1 - SS_res / SS_tot`` (1 when every y is equal: the line is exact)."""
    if len(x) != len(y) or len(x) < 2:
        raise TheoryInputError(
            f"fit_line needs two equally long sequences of >= 2 values, got {len(x)}, {len(y)}"
        )
    n = len(x)
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    sxx = math.fsum((a - mx) ** 2 for a in x)
    if sxx == 0:
        raise TheoryInputError("fit_line: all x values are equal, the slope is undefined")
    slope = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx
    intercept = my - slope * mx
    ss_tot = math.fsum((b - my) ** 2 for b in y)
    ss_res = math.fsum((b - slope * a - intercept) ** 2 for a, b in zip(x, y, strict=True))
    return LineFit(slope, intercept, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, n)


def fit_defined(x: Sequence[float], y: Sequence[float | None]) -> LineFit | None:
    """``fit_line`` over the points whose value is defined (``None`` if fewer than two)."""
    pts = [(a, b) for a, b in zip(x, y, strict=True) if b is not None]
    return fit_line([a for a, _ in pts], [b for _, b in pts]) if len(pts) >= 2 else None


# ------------------------------------------------------------ the experiment
def sample_regression(cfg: DegradationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_points`` uniform points of ``[-1, 1]^dim`` and their targets (float64)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.rand(cfg.n_points, cfg.dim, generator=gen, dtype=torch.float64) * 2 - 1
    return x, TARGETS[cfg.target](x).unsqueeze(1)


def regression_net(dim: int, width: int) -> nn.Sequential:
    """The one-hidden-layer FCN of sec. 4.1 (L = 1 hidden layer, ReLU)."""
    return nn.Sequential(OrderedDict(fc1=nn.Linear(dim, width), relu=nn.ReLU(), fc2=nn.Linear(width, 1)))


def train_regression(cfg: DegradationConfig, x: torch.Tensor, y: torch.Tensor) -> nn.Sequential:
    """Full-batch Adam on the mean squared error, in float32 (deterministic given the seed)."""
    torch.manual_seed(cfg.seed)
    model = regression_net(cfg.dim, cfg.width)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x32, y32 = x.float(), y.float()
    for _ in progress_bar(range(cfg.epochs), "train", progress=cfg.progress, leave=False):
        opt.zero_grad()
        nn.functional.mse_loss(model(x32), y32).backward()
        opt.step()
    return model.eval()


def float64_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The float network ``f_theta`` evaluated in float64 (on a copy; ``model`` is untouched)."""
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double())


def degradation_row(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, bits: int, cfg: DegradationConfig
) -> dict[str, Any]:
    """Gaps, indicators and MSE of one bit width (``x``: the points of the empirical measure,
    ``y`` their targets, ``f = float64_forward(model, x)``)."""
    qmodel = quantize_weights(model, bits, cfg.weight_observer, cfg.per_channel)
    with torch.no_grad():
        fq = qmodel(x.double())
    layers = weight_gaps(model, qmodel)
    row: dict[str, Any] = {"bits": bits, **output_gap(f, fq), **network_gap(layers)}
    row["ln_ratio_2"] = log_ratio(row["eps_2"], row["delta_2"])
    row["ln_ratio_inf"] = log_ratio(row["eps_inf"], row["delta_inf"])
    row["mse"] = (fq - y).pow(2).mean().item()
    row["layers"] = layers
    return row


def run_regression(cfg: DegradationConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train, quantize at every bit width, measure the gaps, fit ``ln(eps/delta)`` against n and
    write ``results.json``, ``results.md``, ``fig3_gaps.png`` and ``fig4_ratio.png``."""
    x, y = sample_regression(cfg)
    model = train_regression(cfg, x, y)
    f = float64_forward(model, x)
    bar = progress_bar(cfg.bits, "bits", progress=cfg.progress, leave=False)
    rows = [degradation_row(model, x, y, f, bits, cfg) for bits in bar]
    bits = [r["bits"] for r in rows]
    fits = {norm: fit_defined(bits, [r[f"ln_ratio_{norm}"] for r in rows]) for norm in ("2", "inf")}
    results = {
        "experiment": "Anonymous (ICLR submission) sec. 4.1: simulation regression",
        "config": asdict(cfg),
        "float_mse": (f - y).pow(2).mean().item(),
        "rows": rows,
        "fits": {k: asdict(v) if v is not None else None for k, v in fits.items()},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / "results.json")
    (out / "results.md").write_text(regression_markdown(results))
    plot_gaps(rows, out / "fig3_gaps.png")
    plot_fits(
        bits,
        {NORM_LABEL[k]: ([r[f"ln_ratio_{k}"] for r in rows], v) for k, v in fits.items()},
        "ln(eps / delta)",
        "Anonymous (ICLR submission) Fig. 4: ln(eps/delta) against n",
        out / "fig4_ratio.png",
    )
    return results


# ------------------------------------------------------------------- output
NORM_LABEL = {"2": "2-norm", "inf": "inf-norm"}


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "undefined"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fits_markdown(fits: dict[str, dict[str, float] | None], what: str) -> str:
    rows = [
        [k, *(["undefined"] * 3 if v is None else [v["slope"], v["intercept"], v["r2"]])]
        for k, v in fits.items()
    ]
    return f"Least-squares line of {what} against n:\n\n" + markdown_table(
        ["", "slope a", "intercept b", "R^2"], rows
    )


def regression_markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    names = list(rows[0]["layers"])
    header = ["n", "eps_2", "eps_inf"]
    header += [f"delta_2 {n}" for n in names] + [f"delta_inf {n}" for n in names]
    header += ["delta_2", "delta_inf", "ln(eps_2/delta_2)", "ln(eps_inf/delta_inf)", "MSE"]
    body = [
        [r["bits"], r["eps_2"], r["eps_inf"]]
        + [r["layers"][n]["delta_2"] for n in names]
        + [r["layers"][n]["delta_inf"] for n in names]
        + [r["delta_2"], r["delta_inf"], r["ln_ratio_2"], r["ln_ratio_inf"], r["mse"]]
        for r in rows
    ]
    cfg = results["config"]
    head = (
        "# Expressive degradation, Anonymous (ICLR submission) sec. 4.1\n\n"
        f"{cfg['n_points']} points of [-1, 1]^{cfg['dim']}, "
        f"target `{cfg['target']}`, {cfg['dim']}-{cfg['width']}-1 ReLU network, float MSE "
        f"{results['float_mse']:.4g}; weights quantized with the `{cfg['weight_observer']}` observer"
        f"{' per channel' if cfg['per_channel'] else ''}.\n\n"
    )
    fits = {NORM_LABEL[k]: v for k, v in results["fits"].items()}
    return head + markdown_table(header, body) + "\n" + fits_markdown(fits, "ln(eps/delta)")


def new_figure(**kwargs: Any) -> Figure:
    """A matplotlib ``Figure`` (the plots need matplotlib: the ``[recipes]`` extra)."""
    return require("matplotlib.figure", "torchqv.theory's plots").Figure(**kwargs)


def save_png(fig: Figure, path: Path) -> None:
    """Render with the Agg canvas (no pyplot, no global backend switch) and write a PNG."""
    require("matplotlib.backends.backend_agg", "torchqv.theory's plots").FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_gaps(rows: list[dict[str, Any]], path: Path) -> None:
    """Fig. 3-like bars: output and per-layer weight gaps per bit width (log scale, no rescaling)."""
    names = list(rows[0]["layers"])
    fig = new_figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, norm in zip(axes, ("2", "inf"), strict=True):
        series = [("output gap eps", [r[f"eps_{norm}"] for r in rows])]
        series += [(f"{n} weight gap", [r["layers"][n][f"delta_{norm}"] for r in rows]) for n in names]
        width = 0.8 / len(series)
        for i, (label, vals) in enumerate(series):
            pos = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
            ax.bar(pos, [max(v, 1e-300) for v in vals], width, label=label)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)), [str(r["bits"]) for r in rows])
        ax.set_xlabel("bits n")
        ax.set_title(f"gaps, {NORM_LABEL[norm]}")
        ax.legend(fontsize=8)
    fig.suptitle("Anonymous (ICLR submission) Fig. 3: output and weight gaps")
    save_png(fig, path)


def plot_fits(
    bits: Sequence[int],
    panels: dict[str, tuple[list[float | None], LineFit | None]],
    ylabel: str,
    title: str,
    path: Path,
) -> None:
    """Fig. 4-like panels: the indicator against n and its least-squares line."""
    fig = new_figure(figsize=(5.5 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, (vals, fit)) in zip(axes[0], panels.items(), strict=True):
        pts = [(b, v) for b, v in zip(bits, vals, strict=True) if v is not None]
        ax.plot([b for b, _ in pts], [v for _, v in pts], "o", label="measured")
        if fit is not None:
            xs = [min(bits), max(bits)]
            ax.plot(
                xs,
                [fit.slope * t + fit.intercept for t in xs],
                "-",
                label=f"{fit.slope:.4g} n {'-' if fit.intercept < 0 else '+'} {abs(fit.intercept):.4g} "
                f"(R^2 {fit.r2:.3f})",
            )
        ax.set_xlabel("bits n")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save_png(fig, path)


# ---------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m torchqv.theory.degradation {regression,mnist} [--out DIR] [--quick]``."""
    parser = argparse.ArgumentParser(
        description="Anonymous (ICLR submission) sec. 4: expressive degradation experiments"
    )
    parser.add_argument("experiment", choices=("regression", "mnist"))
    parser.add_argument("--out", default=None, help="output folder (default: outputs/degradation/EXPERIMENT)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw (mnist only)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out or f"outputs/degradation/{args.experiment}")
    progress = False if args.no_progress else None
    t0 = time.perf_counter()
    if args.experiment == "regression":
        quick: dict[str, Any] = {"n_points": 200, "epochs": 200} if args.quick else {}
        cfg = DegradationConfig(seed=args.seed, progress=progress, **quick)
        results = run_regression(cfg, out)
        text = regression_markdown(results)
    else:
        from .degradation_mnist import MnistDegradationConfig, mnist_markdown, run_mnist

        quick = {"epochs": 1, "train_subset": 5000, "test_subset": 2000} if args.quick else {}
        mcfg = MnistDegradationConfig(data_root=args.data_root, seed=args.seed, progress=progress, **quick)
        results = run_mnist(mcfg, out)
        text = mnist_markdown(results)
    print(text)
    print(f"wrote {out}/results.json, results.md and plots in {time.perf_counter() - t0:.1f} s")
    return results


if __name__ == "__main__":
    main()
