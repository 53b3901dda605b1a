"""The theory recipes: ``degradation`` (Anonymous, "On the expressive power of weight quantization in deep
neural networks" (ICLR submission), sec. 4, ``recipes/degradation.py``) and ``representability`` (Park, Park &
Hwang, "On expressive power of quantized neural networks under fixed-point arithmetic", sec. 3,
``recipes/representability.py``).

``degradation`` runs :func:`~torchqv.theory.degradation.run_regression` or
:func:`~torchqv.theory.degradation_mnist.run_mnist`, which write their own ``results.json``,
``results.md`` and figures into the run folder; the recipe adds ``recipe`` and flat ``rows`` to
that ``results.json``, from which a sweep's combined table and plot (``degradation.png``: the
indicator against bits, one line per job) are made.  ``representability`` writes the verdict
table of :func:`~torchqv.theory.universality.representability_table` (``results.md``), every
verdict (``results.json``) and the heatmap (``representability.png``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..progress import show_progress
from ..theory.degradation import fit_defined, run_regression
from ..theory.degradation_mnist import run_mnist
from ..theory.universality import markdown_table as verdict_table
from ..theory.universality import plot_verdicts, representability_table
from .config import DegradationRecipeConfig, RepresentabilityRecipeConfig, as_config
from .report import (
    Column,
    Report,
    job_label,
    line_plot,
    markdown_table,
    rows_table,
    save_figure,
    write_outputs,
)

log = logging.getLogger(__name__)


def run_degradation(cfg: DegradationRecipeConfig | Any, out_dir: str | Path) -> dict[str, Any]:
    """The anonymous ICLR submission's experiment ``cfg.experiment``; returns its results (with ``recipe`` and
    ``rows``)."""
    cfg = as_config(cfg, DegradationRecipeConfig)
    if cfg.experiment == "regression":
        results = run_regression(cfg.regression, out_dir)
        rows = [{"experiment": "regression", **r} for r in results["rows"]]
    else:
        results = run_mnist(cfg.mnist, out_dir)
        rows = [
            {"experiment": "mnist", "model": name, "parameters": m["parameters"], **r}
            for name, m in results["models"].items()
            for r in m["rows"]
        ]
    results |= {"recipe": "degradation", "recipe_config": asdict(cfg), "rows": rows}
    out = Path(out_dir)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    log.info("%s\nresults in %s", (out / "results.md").read_text(), out.resolve())
    return results


def _label(r: dict[str, Any]) -> str:
    return " ".join(p for p in (r["experiment"], r.get("model", ""), job_label(r)) if p)


REGRESSION: list[Column] = [
    ("series", _label),
    ("n", "bits"),
    ("eps_2", "eps_2"),
    ("eps_inf", "eps_inf"),
    ("delta_2", "delta_2"),
    ("delta_inf", "delta_inf"),
    ("ln(eps_2/delta_2)", "ln_ratio_2"),
    ("ln(eps_inf/delta_inf)", "ln_ratio_inf"),
]
MNIST: list[Column] = [
    ("series", _label),
    ("n", "bits"),
    ("accuracy", "accuracy"),
    ("parameters", "parameters"),
    ("indicator", "indicator"),
]


def degradation_markdown(rows: list[dict[str, Any]]) -> str:
    """The indicators of every bit width and, per series (experiment, model, job), the
    least-squares line of the indicator against n (Anonymous (ICLR submission), Fig. 4 and 5(b))."""
    series = list(dict.fromkeys(_label(r) for r in rows))
    reg = [r for r in rows if r["experiment"] == "regression"]
    cls = [r for r in rows if r["experiment"] == "mnist"]
    out = []
    if reg:
        out += ["### Regression (sec. 4.1): ln(eps/delta) against n", "", rows_table(reg, REGRESSION), ""]
    if cls:
        out += [
            "### MNIST (sec. 4.2): ln(accuracy % / parameters in millions) against n",
            "",
            rows_table(cls, MNIST),
            "",
        ]
    fits = []
    for s in series:
        sel = [r for r in rows if _label(r) == s]
        keys = ("ln_ratio_2", "ln_ratio_inf") if sel[0]["experiment"] == "regression" else ("indicator",)
        for k in keys:
            fit = fit_defined([r["bits"] for r in sel], [r[k] for r in sel])
            fits.append([s, k, *((fit.slope, fit.intercept, fit.r2) if fit else (None, None, None))])
    out += [
        "### Least-squares lines a n + b",
        "",
        markdown_table(["series", "indicator", "a", "b", "R^2"], fits),
    ]
    return "\n".join(out)


def degradation_plot(rows: list[dict[str, Any]], out: Path) -> list[str]:
    from matplotlib.figure import Figure

    keys = [("regression", "ln_ratio_2"), ("regression", "ln_ratio_inf"), ("mnist", "indicator")]
    keys = [(e, k) for e, k in keys if any(r["experiment"] == e for r in rows)]
    fig = Figure(figsize=(5 * len(keys), 4))
    for i, (experiment, key) in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        line_plot(ax, [r for r in rows if r["experiment"] == experiment], "bits", key, _label)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{experiment}: {key} against n")
    return [save_figure(fig, out / "degradation.png")]


def run_representability(cfg: RepresentabilityRecipeConfig | Any, out_dir: str | Path) -> dict[str, Any]:
    """Park et al.'s verdict table for ``cfg.activations`` x ``cfg.ps``; returns the written results."""
    cfg = as_config(cfg, RepresentabilityRecipeConfig)
    start = time.perf_counter()
    rows = representability_table(cfg.activations, cfg.ps, None, cfg.exact, show_progress(cfg.progress))
    return write_outputs(out_dir, "representability", asdict(cfg), rows, seconds=time.perf_counter() - start)


def _by_job(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(job_label(r), []).append(r)
    return groups


def representability_markdown(rows: list[dict[str, Any]]) -> str:
    """The verdict counts per activation and p (one table per sweep job)."""
    groups = _by_job(rows)
    if len(groups) == 1:
        return verdict_table(rows)
    return "\n".join(f"## job: {job}\n\n{verdict_table(sub)}" for job, sub in groups.items())


def representability_plot(rows: list[dict[str, Any]], out: Path) -> list[str]:
    """``representability.png`` (``representability_<i>.png`` for the i-th job of a sweep)."""
    groups = list(_by_job(rows).values())
    names = (
        ["representability.png"]
        if len(groups) == 1
        else [f"representability_{i}.png" for i in range(len(groups))]
    )
    for name, sub in zip(names, groups, strict=True):
        plot_verdicts(sub, out / name)
    return names


REPORTS = {
    "degradation": Report(degradation_markdown, degradation_plot),
    "representability": Report(representability_markdown, representability_plot),
}
