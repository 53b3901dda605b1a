"""Runs never overwrite each other (issue 17, item 7): every recipe run claims its own output folder
(two runs started in the same second used to share one, and one run's results were lost), and a
sweep keeps the combined report of the jobs that finished when a later job fails or is interrupted."""

from __future__ import annotations

import json
import runpy
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from torchqv.recipes.report import unique_folder

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes" / "representability.py")
TINY = ["+preset=representability_tiny", "activations=[ReLU]"]


def test_unique_folder_never_hands_out_a_folder_twice(tmp_path):
    base = str(tmp_path / "outputs" / "run" / "2030-01-01_00-00-00")
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(unique_folder(base))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 16 and base in got and all(Path(g).is_dir() for g in got)
    assert unique_folder(base) == base + "_16"


def test_a_run_never_writes_into_a_folder_another_run_has_claimed(tmp_path, monkeypatch):
    """Every folder a run could be given for the next two minutes is already taken by another run
    started in the same second: this run gets its own (``_1``)."""
    monkeypatch.chdir(tmp_path)
    parent = tmp_path / "outputs" / "representability"
    now = datetime.now()
    for k in range(120):
        taken = parent / (now + timedelta(seconds=k)).strftime("%Y-%m-%d_%H-%M-%S")
        taken.mkdir(parents=True, exist_ok=True)
        (taken / "other-run.txt").write_text("another run's results")
    before = {p.name for p in parent.iterdir()}
    monkeypatch.setattr(sys, "argv", [RECIPE, *TINY])
    runpy.run_path(RECIPE, run_name="__main__")
    (mine,) = [p for p in parent.iterdir() if p.name not in before]
    assert mine.name.endswith("_1") and mine.name[:-2] in before
    assert json.loads((mine / "results.json").read_text())["recipe"] == "representability"
    for name in before:  # the other runs' folders are untouched
        assert [p.name for p in (parent / name).iterdir()] == ["other-run.txt"]


def test_a_sweep_keeps_the_report_of_the_jobs_that_finished(tmp_path, monkeypatch, capsys):
    """The second job fails (p = 0): Hydra reports its error and exits when the sweep ends, and the
    combined report of the first job is there, with the failed job listed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        sys, "argv", [RECIPE, "-m", *TINY, "ps=[2],[0]", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    )
    with pytest.raises(SystemExit):
        runpy.run_path(RECIPE, run_name="__main__")
    assert "representability needs activations and ps >= 1" in capsys.readouterr().err
    combined = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert [job["folder"] for job in combined["jobs"]] == ["0"] and combined["unfinished"] == ["1"]
    assert combined["rows"] and all(r["p"] == 2 for r in combined["rows"])
    assert (
        "Jobs without results (failed, interrupted or running): 1."
        in (tmp_path / "sweep" / "results.md").read_text()
    )
