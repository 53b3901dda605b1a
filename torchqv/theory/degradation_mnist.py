"""Expressive degradation on MNIST (Anonymous, "On the expressive power of weight quantization in deep neural
networks" (ICLR submission), sec. 4.2, with MNIST in place of ImageNet).

For large models sec. 4.2 cannot measure the weight gap delta layer by layer, so it replaces the
output gap eps by the classification accuracy and the model complexity by the parameter count:
the indicator ``ln(accuracy / parameters)``, accuracy in percent and parameters in millions
(8-bit ResNet-18: ``ln(71.43 / 11.69)``).  By Theorem 5 it should grow with the number of bits n;
Fig. 5(b) finds it below a line ``a n + b`` with ``a > 0``, ``b > 0``.

Here an MLP (784-256-128-10) and a small CNN (two 5x5 convolutions with 16 and 32 channels,
max pooling, one linear layer) are trained in float on MNIST, their weights quantized to each
bit width with torchqv (weight-only, as in :func:`torchqv.theory.degradation.quantize_weights`)
and the accuracy measured on the test split.  The parameter count does not change with n, so the
fitted slope is that of ``ln(accuracy)`` alone; the count only shifts the intercept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import load_mnist
from ..errors import TheoryInputError
from ..progress import progress_bar
from .degradation import (
    PAPER_BITS,
    check_bits,
    check_observer,
    fit_defined,
    fits_markdown,
    log_ratio,
    markdown_table,
    new_figure,
    plot_fits,
    quantize_weights,
    save_png,
    write_json,
)


def mnist_mlp() -> nn.Sequential:
    """784-256-128-10 ReLU MLP (235,146 parameters)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def mnist_cnn() -> nn.Sequential:
    """conv5x5(16)-pool-conv5x5(32)-pool-linear(10) ReLU CNN (18,378 parameters)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


MODELS: dict[str, Callable[[], nn.Sequential]] = {"mlp": mnist_mlp, "cnn": mnist_cnn}


@dataclass
class MnistDegradationConfig:
    """Anonymous (ICLR submission), sec. 4.2 on MNIST.  ``data_root`` holds ``MNIST/raw`` (``None``:
    ``$TORCHQV_DATA`` or ``./data``); ``train_subset`` / ``test_subset`` keep the first images of a split
    (``None``: all)."""

    data_root: str | None = None
    bits: list[int] = field(default_factory=lambda: list(PAPER_BITS))
    models: list[str] = field(default_factory=lambda: list(MODELS))
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.001
    train_subset: int | None = None
    test_subset: int | None = None
    weight_observer: str = "minmax"
    per_channel: bool = True
    seed: int = 0
    progress: bool | None = None

    def __post_init__(self) -> None:
        self.bits, self.models = list(self.bits), list(self.models)
        check_bits(self.bits)
        check_observer(self.weight_observer)
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise TheoryInputError(
                f"models must be a non-empty list from {sorted(MODELS)}, got {self.models}"
            )
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TheoryInputError(f"{name} must be None (all) or a positive count, got {value}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise TheoryInputError(
                "need epochs >= 0, batch_size >= 1 and lr > 0; got "
                f"{self.epochs}, {self.batch_size}, {self.lr}"
            )


def load_split(cfg: MnistDegradationConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a split, cut to its subset size."""
    x, y = load_mnist(cfg.data_root, split)
    keep = cfg.train_subset if split == "train" else cfg.test_subset
    if keep is not None:
        if keep > len(x):
            raise TheoryInputError(f"{split}_subset={keep} exceeds the {len(x)} images of the {split} split")
        x, y = x[:keep], y[:keep]
    return x, y


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_classifier(
    name: str, x: torch.Tensor, y: torch.Tensor, cfg: MnistDegradationConfig
) -> nn.Sequential:
    """Adam on the cross-entropy, shuffled mini-batches (deterministic given the seed)."""
    torch.manual_seed(cfg.seed)
    model = MODELS[name]()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = cfg.epochs * -(-len(x) // cfg.batch_size)
    with progress_bar(total=steps, desc=f"train {name}", progress=cfg.progress, leave=False) as bar:
        for _ in range(cfg.epochs):
            for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
                bar.update()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy in percent."""
    with torch.no_grad():
        pairs = zip(x.split(batch), y.split(batch), strict=True)
        hits = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in pairs)
    return 100.0 * hits / len(x)


def run_mnist(cfg: MnistDegradationConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train every model, quantize its weights at every bit width, measure the test accuracy and
    ``ln(accuracy / parameters)``, fit the indicator against n; write ``results.json``,
    ``results.md``, ``fig5a_accuracy.png`` and ``fig5b_indicator.png``."""
    xtr, ytr = load_split(cfg, "train")
    xte, yte = load_split(cfg, "test")
    models: dict[str, Any] = {}
    for name in cfg.models:
        model = train_classifier(name, xtr, ytr, cfg)
        params = param_count(model)
        float_acc = accuracy(model, xte, yte)
        rows = []
        for bits in progress_bar(cfg.bits, f"bits {name}", progress=cfg.progress, leave=False):
            acc = accuracy(quantize_weights(model, bits, cfg.weight_observer, cfg.per_channel), xte, yte)
            rows.append({"bits": bits, "accuracy": acc, "indicator": log_ratio(acc, params / 1e6)})
        fit = fit_defined(cfg.bits, [r["indicator"] for r in rows])
        models[name] = {
            "parameters": params,
            "float_accuracy": float_acc,
            "float_indicator": log_ratio(float_acc, params / 1e6),
            "rows": rows,
            "fit": asdict(fit) if fit is not None else None,
        }
    results = {
        "experiment": "Anonymous (ICLR submission) sec. 4.2 on MNIST: ln(accuracy / parameters) against bits",
        "config": asdict(cfg),
        "train_images": len(xtr),
        "test_images": len(xte),
        "models": models,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / "results.json")
    (out / "results.md").write_text(mnist_markdown(results))
    plot_accuracy(results, out / "fig5a_accuracy.png")
    plot_fits(
        cfg.bits,
        {
            f"{name} ({m['parameters']:,} parameters)": (
                [r["indicator"] for r in m["rows"]],
                fit_defined(cfg.bits, [r["indicator"] for r in m["rows"]]),
            )
            for name, m in models.items()
        },
        "ln(accuracy % / parameters in millions)",
        "Anonymous (ICLR submission) Fig. 5(b) on MNIST",
        out / "fig5b_indicator.png",
    )
    return results


def mnist_markdown(results: dict[str, Any]) -> str:
    models = results["models"]
    header = ["n"] + [f"{k} {col}" for k in models for col in ("accuracy %", "ln(acc/params)")]
    body = [
        [
            r["bits"],
            *(v for m in models.values() for v in (m["rows"][i]["accuracy"], m["rows"][i]["indicator"])),
        ]
        for i, r in enumerate(next(iter(models.values()))["rows"])
    ]
    body.append(["float", *(v for m in models.values() for v in (m["float_accuracy"], m["float_indicator"]))])
    cfg = results["config"]
    head = (
        "# Expressive degradation on MNIST, Anonymous (ICLR submission) sec. 4.2\n\n"
        f"{results['train_images']} training / "
        f"{results['test_images']} test images, {cfg['epochs']} epochs; weights quantized with the "
        f"`{cfg['weight_observer']}` observer{' per channel' if cfg['per_channel'] else ''}. Parameters: "
        + ", ".join(f"{k} {m['parameters']:,}" for k, m in models.items())
        + " (indicator: accuracy in percent over parameters in millions).\n\n"
    )
    fits = fits_markdown({k: m["fit"] for k, m in models.items()}, "ln(accuracy/parameters)")
    return head + markdown_table(header, body) + "\n" + fits


def plot_accuracy(results: dict[str, Any], path: Path) -> None:
    """Fig. 5(a)-like bars: test accuracy per bit width and model (float as a dashed line)."""
    models = results["models"]
    bits = [r["bits"] for r in next(iter(models.values()))["rows"]]
    fig = new_figure(figsize=(7, 4))
    ax = fig.subplots()
    width = 0.8 / len(models)
    for i, (name, m) in enumerate(models.items()):
        pos = [j + (i - (len(models) - 1) / 2) * width for j in range(len(bits))]
        bars = ax.bar(pos, [r["accuracy"] for r in m["rows"]], width, label=name)
        ax.axhline(m["float_accuracy"], ls="--", lw=0.8, color=bars.patches[0].get_facecolor())
    ax.set_xticks(range(len(bits)), [str(b) for b in bits])
    ax.set_xlabel("bits n")
    ax.set_ylabel("test accuracy %")
    ax.set_title("Anonymous (ICLR submission) Fig. 5(a) on MNIST (dashed: float)")
    ax.legend()
    save_png(fig, path)
