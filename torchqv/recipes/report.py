"""Outputs of the recipes: ``results.json``, ``results.md`` and PNG plots in the run directory,
and after a sweep the same files for all of its jobs together in the sweep directory.

Every recipe's ``results.json`` holds ``recipe`` (its name), ``config`` and ``rows`` (flat dicts,
one per measurement).  A recipe module gives its Markdown summary and its plots as a
:class:`Report` of rows, so one code path writes a run's files and a sweep's combined files
(:func:`aggregate`, run by the Hydra callback :class:`SweepReport` when a multirun ends; each
combined row carries its job's overrides as ``job``).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError

log = logging.getLogger(__name__)

# recipe name -> the module whose REPORTS[name] summarizes and plots its rows
RECIPE_MODULES = {
    "run": "torchqv.recipes.run",
    "ceg4n": "torchqv.recipes.ceg4n",
    "degradation": "torchqv.recipes.theory",
    "representability": "torchqv.recipes.theory",
}


@dataclass(frozen=True)
class Report:
    """``markdown(rows)``: the Markdown summary; ``plot(rows, folder)``: writes PNGs, returns their names."""

    markdown: Callable[[list[dict[str, Any]]], str]
    plot: Callable[[list[dict[str, Any]], Path], list[str]]


def report_for(recipe: str) -> Report:
    if recipe not in RECIPE_MODULES:
        raise ConfigError(f"unknown recipe {recipe!r} in results.json; known: {sorted(RECIPE_MODULES)}")
    return importlib.import_module(RECIPE_MODULES[recipe]).REPORTS[recipe]


def write_outputs(
    out_dir: str | Path, recipe: str, config: Any, rows: list[dict[str, Any]], note: str = "", **extra: Any
) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` (ending with ``note``, if any) and the recipe's plots
    into ``out_dir``; return the results (``files`` lists what was written)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = report_for(recipe)
    markdown = report.markdown(rows) + (f"\n\n{note}" if note else "")
    (out / "results.md").write_text(markdown + "\n")
    plots = report.plot(rows, out)
    results = {"recipe": recipe, "config": config, **extra, "rows": rows}
    results["files"] = ["results.json", "results.md", *plots]
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    log.info("%s\nresults in %s", markdown, out.resolve())
    return results


def _job_order(folder: Path) -> tuple[bool, int, str]:
    return (not folder.name.isdigit(), int(folder.name) if folder.name.isdigit() else 0, folder.name)


def aggregate(sweep_dir: str | Path) -> dict[str, Any]:
    """Combine the ``results.json`` of every job folder of a sweep into the sweep folder's own
    ``results.json``, ``results.md`` and plots.  Job folders without results (a job that failed,
    was interrupted or is still running) are listed as ``unfinished``."""
    sweep = Path(sweep_dir)
    jobs = sorted((p.parent for p in sweep.glob("*/results.json")), key=_job_order)
    if not jobs:
        raise FileNotFoundError(f"no job results (*/results.json) in the sweep folder {sweep}")
    started = {p.parent for p in sweep.glob("*/.hydra")}
    unfinished = [d.name for d in sorted(started - set(jobs), key=_job_order)]
    results = [json.loads((job / "results.json").read_text()) for job in jobs]
    overrides = [_overrides(job) for job in jobs]
    common = set.intersection(*(set(o) for o in overrides))  # shared by every job: not a label
    rows, recipes, summary = [], {res["recipe"] for res in results}, []
    for job, res, over in zip(jobs, results, overrides, strict=True):
        summary.append({"folder": job.name, "overrides": over})
        rows += [{**row, "job": [o for o in over if o not in common]} for row in res["rows"]]
    if len(recipes) != 1:
        raise ConfigError(f"the jobs in {sweep} come from different recipes: {sorted(recipes)}")
    note = f"Jobs without results (failed, interrupted or running): {', '.join(unfinished)}."
    return write_outputs(
        sweep,
        recipes.pop(),
        {"sweep": str(sweep)},
        rows,
        note if unfinished else "",
        jobs=summary,
        unfinished=unfinished,
    )


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.exists() else []


class SweepReport(Callback):
    """Hydra callback (``hydra.callbacks``): after every job of a multirun, :func:`aggregate` its
    sweep folder, so the combined report always holds the jobs that finished (a failed or
    interrupted sweep keeps it)."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep = Path(config.hydra.sweep.dir)
        if any(sweep.glob("*/results.json")):
            aggregate(sweep)
        else:
            log.warning("no job of the sweep in %s has finished yet: no combined report", sweep)


def unique_folder(base: str) -> str:
    """``base``, or ``base_1``, ``base_2``, ... when taken: the first free one, created here (an
    atomic ``mkdir``), so two runs never share an output folder, even when started in the same
    second.  Registered as the OmegaConf resolver ``torchqv.unique_folder`` (cached: one folder per
    run), which conf/outputs.yaml wraps around Hydra's run and sweep folders."""
    path = Path(base)
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, i = path, 0
    while True:
        try:
            candidate.mkdir()
            return str(candidate)
        except FileExistsError:
            i += 1
            candidate = path.with_name(f"{path.name}_{i}")


OmegaConf.register_new_resolver("torchqv.unique_folder", unique_folder, use_cache=True, replace=True)


# ------------------------------------------------------------------------------ helpers
def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return (
            f"{value:.4g}"
            if abs(value) < 1e-3 or abs(value) >= 1e5
            else f"{value:.4f}".rstrip("0").rstrip(".")
        )
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "-"
    return str(value).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


Column = tuple[str, str | Callable[[dict[str, Any]], Any]]


def rows_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A Markdown table of ``rows``, one column per ``(header, key or function of the row)``."""
    get = [(lambda r, k=k: r[k]) if isinstance(k, str) else k for _, k in columns]
    return markdown_table([h for h, _ in columns], [[g(r) for g in get] for r in rows])


def job_label(row: dict[str, Any], skip: Sequence[str] = ()) -> str:
    """The row's sweep overrides (``key=value``), leaving out the keys in ``skip``."""
    return " ".join(o for o in row.get("job", []) if o.split("=", 1)[0].lstrip("+~") not in skip)


def save_figure(fig: Figure, path: Path) -> str:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


def line_plot(
    ax: Any, rows: Sequence[dict[str, Any]], x: str, y: str, series: Callable[[dict[str, Any]], str]
) -> None:
    """One line per series label: ``y`` against ``x`` (rows without a ``y`` value left out)."""
    groups: dict[str, list[tuple[Any, Any]]] = {}
    for r in rows:
        if r.get(y) is not None:
            groups.setdefault(series(r), []).append((r[x], r[y]))
    for label, points in groups.items():
        points.sort(key=lambda p: p[0])
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
    if groups:
        ax.legend(fontsize=7)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
