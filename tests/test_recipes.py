"""The Hydra recipes end to end in test mode (tiny sizes), composed from conf/ with Hydra's compose
API; bad overrides fail with messages that name the culprit; one real multirun sweep."""

from __future__ import annotations

import json
import logging
import re
import runpy
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError
from torch import nn

import torchqv as tq
from tests.test_datamodules import write_cifar, write_idx_set
from torchqv.recipes.ceg4n import critical_points, run_ceg4n, train_full_batch
from torchqv.recipes.config import Ceg4nRecipeConfig, RunConfig, VerifyConfig, as_config
from torchqv.recipes.networks import accuracy, build_model, load_data, tensors
from torchqv.recipes.report import aggregate
from torchqv.recipes.run import NoInputGrid, qconfig, radius, region_centres, run, widths, widths_note
from torchqv.recipes.theory import run_degradation, run_representability
from torchqv.theory.degradation import fit_defined
from torchqv.theory.universality import markdown_table as verdict_table
from torchqv.theory.universality import representability

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def composed(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name=name, overrides=list(overrides))


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    return out, run(composed("run", "+preset=tiny", "quant.bits=[4,2]"), out)


def test_run_recipe_end_to_end(tiny_run: tuple[Path, dict]) -> None:
    out, res = tiny_run
    written = {"results.json", "results.md", "accuracy.png", "rounding.png", "verification.png"}
    assert written | {"float_model.pt"} <= files(out)
    assert set(res["files"]) == written
    assert json.loads((out / "results.json").read_text()) == res
    rows = res["rows"]
    assert [(r["bits"], r["method"]) for r in rows] == [
        (4, "nearest"),
        (4, "qubo"),
        (2, "nearest"),
        (2, "qubo"),
    ]
    assert [r["weight_observer"] for r in rows] == ["mse", "minmax"] * 2  # quant.weight_observer=auto
    # the exact simulation equals the integer reference bit for bit (activations and input quantized)
    assert all(r["reference_match"] is True for r in rows)
    assert all(r["proved"] + r["refuted"] + r["unknown"] == 1 for r in rows)  # verify.points=1 (tiny)
    for r in rows:  # every neuron keeps the better of QUBO and nearest rounding, for the same steps
        assert all(layer["objective"] <= layer["nearest"] for layer in r["layers"])
        if r["method"] == "nearest":
            assert all(layer["objective"] == layer["nearest"] for layer in r["layers"])
    # the float accuracy is that of the saved float network, recomputed here
    cfg = as_config(composed("run", "+preset=tiny"), RunConfig)
    data = load_data(cfg.dataset, cfg.trainer.seed)
    f = build_model(cfg.model, data.input_shape, data.num_classes)
    f.load_state_dict(torch.load(out / "float_model.pt", weights_only=True))
    assert accuracy(f, data.test) == res["float_accuracy"] == rows[0]["float_accuracy"]
    md = (out / "results.md").read_text()
    # low-bit weights, 8-bit activations and input (quant.input_bits follows the activations)
    assert "| digits | mlp 64-16-10 | ptq | 4/8/8 |" in md and "| digits | mlp 64-16-10 | ptq | 2/8/8 |" in md
    # regions of radius 2 input steps (conf/run.yaml): >= 3 grid points in each of the 64 coordinates
    for r in rows:
        assert r["delta"] == 2 * r["input_step"] and r["grid_points"] >= 3**64
        assert all(v["grid_points"] >= 3**64 for v in r["verdicts"])
    assert "grid points / region" in md
    assert re.search(r"\| \d/\d/\d, \d/\d/\d \| >= 10\^3\d \|", md)  # 3^64 > 10^30
    assert "across the rows the weight bits vary (activation 8 bits, input 8 bits)" in md


def test_sweep_report_combines_the_jobs(tiny_run: tuple[Path, dict], tmp_path: Path) -> None:
    _, res = tiny_run
    for job, bits in (("0", 4), ("1", 2)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        one = {**res, "rows": [r for r in res["rows"] if r["bits"] == bits]}
        (tmp_path / job / "results.json").write_text(json.dumps(one))
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- +preset=tiny\n- trainer.seed={job}\n")
    combined = aggregate(tmp_path)
    assert {"results.json", "results.md", "accuracy.png", "rounding.png", "verification.png"} <= files(
        tmp_path
    )
    # only what differs between the jobs labels their rows
    assert [r["job"] for r in combined["rows"]] == [["trainer.seed=0"]] * 2 + [["trainer.seed=1"]] * 2
    assert [r["accuracy"] for r in combined["rows"]] == [r["accuracy"] for r in res["rows"]]
    assert "| trainer.seed=1 |" in (tmp_path / "results.md").read_text()
    with pytest.raises(FileNotFoundError, match="no job results"):
        aggregate(tmp_path / "0")


def test_qat_recipe_rounds_one_trained_network(tmp_path: Path) -> None:
    cfg = composed("run", "+preset=tiny", "quant=qat", "quant.bits=4", "verify=disabled")
    rows = run(cfg, tmp_path)["rows"]
    assert [(r["mode"], r["method"], r["weight_observer"]) for r in rows] == [
        ("qat", "nearest", "minmax"),
        ("qat", "qubo", "minmax"),
    ]
    assert all(r["reference_match"] and r["proved"] is None for r in rows)
    # both roundings start from the same QAT network: the first layer's nearest objectives agree
    assert rows[1]["layers"][0]["nearest"] == rows[0]["layers"][0]["objective"]
    assert "verification.png" not in files(tmp_path)


def test_qubo_paper_recipe_on_mnist_files(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "data" / "MNIST" / "raw", "", "t10k", 10)  # 20 + 6 random images
    cfg = composed(
        "qubo_paper",
        "+preset=tiny",
        f"dataset.root={tmp_path / 'data'}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "dataset.verify_md5=false",  # generated files
        "dataset.train_subset=null",  # all 20 + 6 (more than a split holds is an error)
        "dataset.test_subset=null",
    )
    res = run(cfg, tmp_path / "out")
    rows = res["rows"]
    assert [r["bits"] for r in rows[::2]] == [8, 4, 2, 1] and {r["method"] for r in rows} == {
        "nearest",
        "qubo",
    }
    assert all(r["activation_bits"] is None and r["input_bits"] is None for r in rows)  # weight-only
    assert all(r["reference_match"] is None and r["proved"] is None for r in rows)
    assert rows[0]["model"] == "mlp 784-16-10"
    assert (
        "| mnist | mlp 784-16-10 | ptq | 1 (binary)/float/float |"
        in (tmp_path / "out" / "results.md").read_text()
    )


def test_run_recipe_with_resnet20_on_cifar_files(tmp_path: Path) -> None:
    """conf/model/resnet20 (BN, residual adds, global pooling) through the whole recipe (without
    verification, whose 32 x 32 chains take a minute to build here; ResNet-20 verification is
    tested in tests/test_verify_graph.py on 6 x 6 inputs)."""
    write_cifar(tmp_path / "data" / "cifar-10-batches-py")
    cfg = composed(
        "run",
        "+preset=tiny",
        "model=resnet20",
        "dataset=cifar10",
        f"dataset.root={tmp_path / 'data'}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "dataset.verify_md5=false",
        "dataset.train_subset=10",
        "dataset.test_subset=3",
        "quant.bits=[8]",
        "rounding.method=[nearest]",
        "quant.weight_observer=minmax",
        "quant.activation_observer=minmax",
        "trainer.epochs=1",
        "verify.enabled=false",
    )
    rows = run(cfg, tmp_path / "out")["rows"]
    assert rows[0]["model"].startswith("resnet20 (0.27M parameters)")
    assert rows[0]["reference_match"] is True
    assert rows[0]["verify_skipped"] is None and rows[0]["proved"] is None
    with pytest.raises(ValueError, match="cannot be imported"):
        run(composed("run", "+preset=tiny", "model.target=nowhere.Net"), tmp_path / "bad")


def test_model_target_builds_any_module() -> None:
    overrides = (
        "model.target=torch.nn.Linear",
        "+model.kwargs.in_features=4",
        "+model.kwargs.out_features=3",
    )
    cfg = as_config(composed("run", *overrides), RunConfig)
    model = build_model(cfg.model, (4,), 3)
    assert isinstance(model, nn.Linear) and (model.in_features, model.out_features) == (4, 3)


def test_ceg4n_recipe(tmp_path: Path) -> None:
    cfg = composed("ceg4n", "+preset=ceg4n_tiny", "networks=[iris_4x2,mnist_256x2]", f"data_root={tmp_path}")
    res = run_ceg4n(cfg, tmp_path / "out")
    assert {"results.json", "results.md", "ceg4n.png"} <= files(tmp_path / "out")
    iris, mnist = res["rows"]
    assert mnist["status"] == "SKIPPED" and "mnist-net_256x2.onnx not found" in mnist["reason"]
    assert iris["status"] in ("SQ", "QF", "TO", "VF") and iris["iterations"] >= 1
    lo, hi = res["config"]["bits"]
    assert iris["status"] != "SQ" or all(lo <= b <= hi for b in iris["bits"])
    # the same network and critical points, rebuilt directly
    c = as_config(cfg, Ceg4nRecipeConfig)
    data = load_data(as_config(composed("run", "dataset=iris"), RunConfig).dataset, c.seed)
    (xtr, ytr), (xte, yte) = tensors(data.train), tensors(data.test)
    f = train_full_batch([4, 4, 4, 3], xtr, ytr, c.epochs, c.lr, c.seed)
    assert accuracy(f, data.test) == iris["acc_f"]
    points, idx = critical_points(f, xte, yte)
    assert idx == iris["points"] and sorted(yte[idx].tolist()) == [0, 1, 2]
    assert torch.equal(f(points).argmax(1), yte[idx])


def test_degradation_recipe(tmp_path: Path) -> None:
    res = run_degradation(composed("degradation", "+preset=degradation_tiny"), tmp_path)
    assert {"results.json", "results.md", "fig3_gaps.png", "fig4_ratio.png"} <= files(tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["recipe"] == "degradation" and [r["bits"] for r in saved["rows"]] == [1, 2, 8]
    fit = fit_defined([1, 2, 8], [r["ln_ratio_inf"] for r in res["rows"]])
    assert saved["fits"]["inf"]["slope"] == pytest.approx(fit.slope, rel=1e-12)


def test_degradation_recipe_on_mnist_files(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "MNIST" / "raw", "", "t10k", 10)
    cfg = composed(
        "degradation",
        "+preset=degradation_tiny",
        "experiment=mnist",
        f"mnist.data_root={tmp_path}",
        "mnist.train_subset=20",
        "mnist.test_subset=6",
    )
    res = run_degradation(cfg, tmp_path / "out")
    assert [(r["model"], r["bits"]) for r in res["rows"]] == [("mlp", 2), ("mlp", 8)]
    assert {"results.md", "fig5a_accuracy.png", "fig5b_indicator.png"} <= files(tmp_path / "out")


def test_representability_recipe(tmp_path: Path) -> None:
    res = run_representability(composed("representability", "+preset=representability_tiny"), tmp_path)
    assert {"results.json", "results.md", "representability.png"} <= files(tmp_path)
    rows = res["rows"]
    assert len(rows) == 2 * (3 + 7) * 2  # activations x admissible s for p = 2, 3 x weight kinds
    for r in rows[:6]:
        assert r["verdict"] == representability(r["activation"], r["p"], r["s"], r["binary_weights"]).verdict
    assert (tmp_path / "results.md").read_text() == verdict_table(rows) + "\n"


def test_region_centres_are_input_grid_points_inside_the_domain() -> None:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    fmt = tq.FixedPoint(bits=4)
    qm = tq.quantize(f, tq.QConfig(weight=fmt, activation=fmt, input=tq.FixedPoint(bits=2, signed=False)))
    x = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.99, 0.7]])
    tq.calibrate(qm, [x], progress=False)
    (step,) = qm.input_quant.steps()
    assert 3 * step > 1  # min-max step of [0, 1] rounded up: the top code lies outside the domain
    centres = region_centres(qm, x, (0.0, 1.0))
    codes = [Fraction(v) / step for v in centres.flatten().tolist()]
    assert all(k.denominator == 1 for k in codes)
    nearest = [min(range(4), key=lambda k: abs(Fraction(v) - k * step)) for v in x.flatten().tolist()]
    assert [int(k) for k in codes] == [min(k, 2) for k in nearest]  # nearest code, one inward if 3
    assert region_centres(f, x, (0.0, 1.0)) is x  # no input grid: the points themselves


def test_input_bits_follow_the_activations_not_the_weights() -> None:
    """``quant.bits=2,8 quant.activation_bits=8`` used to round the input to 2 bits too (input_bits
    followed the weights); the plots and tables name what varies with the bits."""
    cfg = as_config(composed("run", "quant.bits=[2,8]", "quant.activation_bits=8"), RunConfig)
    qc = qconfig(cfg.quant, 2, "nearest")
    assert (qc.weight.bits, qc.activation.bits, qc.input.bits) == (2, 8, 8)
    quant = lambda *o: as_config(composed("run", *o), RunConfig).quant  # noqa: E731
    assert widths(quant("quant.activation_bits=same"), 2) == (2, 2)  # input follows activations = weights
    assert widths(quant("quant.input_bits=4"), 2) == (8, 4)
    assert widths(quant("quant.input_bits=same"), 2) == (8, 2)
    assert widths(quant("quant.activation_bits=null", "verify.delta=0.01"), 2) == (None, None)

    def rows(a, i):
        return [{"bits": b, "activation_bits": a(b), "input_bits": i(b)} for b in (2, 8)]

    assert widths_note(rows(lambda b: 8, lambda b: 8)) == ("weight bits", "activation 8 bits, input 8 bits")
    assert widths_note(rows(lambda b: b, lambda b: b)) == ("weight = activation = input bits", "")
    assert widths_note(rows(lambda b: b, lambda b: 8)) == ("weight = activation bits", "input 8 bits")
    assert widths_note(rows(lambda b: None, lambda b: None)) == (
        "weight bits",
        "activation float, input float",
    )


def test_region_radius_in_input_steps() -> None:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(3, 2))
    cfg = tq.QConfig(weight=tq.FixedPoint(bits=4), input=tq.FixedPoint(bits=8, signed=False))
    qm = tq.calibrate(tq.quantize(f, cfg), [torch.rand(16, 3)], progress=False)
    (step,) = qm.input_quant.steps()
    steps = as_config({"delta": "2 steps"}, VerifyConfig)
    assert radius(qm, steps) == (2 * step, step)
    assert radius(qm, as_config({"delta": 0.01}, VerifyConfig)) == (0.01, step)
    weight_only = tq.quantize(f, tq.QConfig(weight=tq.FixedPoint(bits=4), input=None))
    with pytest.raises(NoInputGrid, match="counts input grid steps, but f' has a float input"):
        radius(weight_only, steps)  # recorded as verify_skipped by the recipe, not a crash


def test_cnn_with_the_default_config_is_verified(tmp_path: Path) -> None:
    """``model=cnn`` (conv + max pooling, digits read as 1 x 8 x 8 images) used to have its
    verification skipped at max pooling: the verifier now reads it (max as a + relu(b - a))."""
    cfg = composed("run", "+preset=tiny", "model=cnn", "quant.bits=[4]", "rounding.method=[nearest]")
    (row,) = run(cfg, tmp_path)["rows"]
    assert row["model"] == "cnn 1-4-10"
    assert row["verify_skipped"] is None and row["proved"] + row["refuted"] + row["unknown"] == 1
    assert row["reference_match"] is True and 0 <= row["accuracy"] <= 1
    md = (tmp_path / "results.md").read_text()
    assert "| 4/8/8 |" in md and "skipped" not in md


def test_an_unreadable_network_skips_verification_up_front(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A network the verifier cannot read (here a sigmoid, not piecewise linear): verification
    is skipped with its reason, said before training and recorded in the results."""
    caplog.set_level(logging.INFO, logger="torchqv.recipes.run")
    cfg = composed(
        "run", "+preset=tiny", "model.activation=sigmoid", "quant.bits=[4]", "rounding.method=[nearest]"
    )
    (row,) = run(cfg, tmp_path)["rows"]
    assert "sigmoid" in row["verify_skipped"] and row["proved"] is None
    messages = [r.getMessage() for r in caplog.records]
    said = next(i for i, m in enumerate(messages) if m.startswith("verification will be skipped: "))
    assert said < next(i for i, m in enumerate(messages) if m.startswith("float network"))
    md = (tmp_path / "results.md").read_text()
    assert "| skipped |" in md and "verification skipped: " in md


def test_a_short_recipe_run_prints_no_progress_bars_when_captured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """Lightning's bar and the recipe's own printed 2,600 lines for ``make demo`` into a log."""
    assert as_config(composed("run"), RunConfig).trainer.progress is None  # automatic: a terminal only
    argv = [
        "recipes/run.py",
        "+preset=tiny",
        "quant.bits=[4]",
        "rounding.method=[nearest]",
        "verify=disabled",
    ]
    monkeypatch.setattr(sys, "argv", [*argv, f"hydra.run.dir={tmp_path}"])
    runpy.run_path(str(REPO / "recipes" / "run.py"), run_name="__main__")
    out, err = capfd.readouterr()
    lines = (out + err).replace("\r", "\n").splitlines()
    assert not [line for line in lines if "it/s" in line or "Epoch" in line or "s/it" in line]
    assert len(lines) < 30, lines  # the log lines and the report's tables
    assert (tmp_path / "results.md").exists()


# ------------------------------------------------------------------------ bad overrides
def test_unknown_keys_and_bad_types_are_composition_errors() -> None:
    with pytest.raises(ConfigCompositionException) as err:
        composed("run", "quant.bitz=4")
    assert "Key 'bitz' not in 'QuantConfig'" in str(err.value.__cause__)
    with pytest.raises(ConfigCompositionException) as err:
        composed("run", "trainer.epochs=ten")
    assert isinstance(err.value.__cause__, ValidationError)
    assert "'ten'" in str(err.value.__cause__) and "trainer.epochs" in str(err.value.__cause__)
    with pytest.raises(MissingConfigException, match="Could not find 'dataset/mnst'") as err:
        composed("run", "dataset=mnst")
    assert "fashion_mnist" in str(err.value)  # the available options are listed
    with pytest.raises(ConfigCompositionException) as err:
        composed("run", "+preset=ceg4n_tiny")
    assert "In 'preset/ceg4n_tiny'" in str(err.value) and "Key 'networks' not in 'RunConfig'" in str(
        err.value
    )


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("run", ["+quant.bitz=4"], r"unknown config key\(s\) \['quant.bitz'\]"),
        (
            "run",
            ["rounding.method=qubbo"],
            r"rounding.method must be one of \('qubo', 'nearest'\), got 'qubbo'",
        ),
        ("run", ["quant.bits=[9,0]"], r"quant.bits must be an int in \[1, 32\], got 0"),
        ("run", ["quant.bits=1", "quant.activation_bits=same"], r"set quant.activation_bits to an int >= 2"),
        ("run", ["quant.input_bits=null"], r"verify.delta='2 steps' counts steps of the input grid, but the"),
        ("run", ["verify.delta=-0.1"], r"verify.delta must be a finite number >= 0 or '<k> steps'"),
        ("run", ["verify.delta=2stepz"], r"verify.delta must be a finite number >= 0 or '<k> steps'"),
        ("run", ["dataset.train_subset=0"], r"dataset.train_subset must be a positive int or null"),
        ("run", ["model=cnn", "dataset=iris"], r"model.kind='cnn' needs images; dataset 'iris' is tabular"),
        ("run", ["verify.relation=eps"], r"relation='eps' needs eps > 0"),
        ("run", ["verify.workers=0"], r"VerifyConfig.workers must be an int >= 1 .*got 0"),
        (
            "ceg4n",
            ["networks=[iris_5x2]"],
            r"ceg4n.networks must be one of \[.*'iris_4x2'.*\], got 'iris_5x2'",
        ),
        ("ceg4n", ["search.mode=fast"], r"BitSearchConfig.mode must be one of"),
        ("ceg4n", ["search.verify.workers=0"], r"VerifyConfig.workers must be an int >= 1 .*got 0"),
        ("ceg4n", ["search.verify.relation=close"], r"relation"),
        ("degradation", ["regression.bits=[3,0]"], r"bits"),
    ],
)
def test_bad_values_fail_before_any_work(name: str, overrides: list[str], message: str) -> None:
    job = {"run": run, "ceg4n": run_ceg4n, "degradation": run_degradation}[name]
    with pytest.raises(ValueError, match=message):
        job(composed(name, *overrides), "/nonexistent/never-written")


def test_multirun_sweep_writes_a_combined_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python recipes/run.py -m ...``: Hydra's own launcher runs the two jobs (in this process) and
    its callback writes the combined report into the sweep folder."""
    argv = ["recipes/run.py", "-m", "+preset=tiny", "verify=disabled", "rounding=qubo", "quant.bits=2,4"]
    monkeypatch.setattr(sys, "argv", [*argv, f"hydra.sweep.dir={tmp_path}"])
    runpy.run_path(str(REPO / "recipes" / "run.py"), run_name="__main__")
    assert {"0", "1", "multirun.yaml", "results.json", "results.md", "accuracy.png", "rounding.png"} <= files(
        tmp_path
    )
    combined = json.loads((tmp_path / "results.json").read_text())
    assert [r["job"] for r in combined["rows"]] == [["quant.bits=2"], ["quant.bits=4"]]
    for job, r in zip(("0", "1"), combined["rows"], strict=True):
        assert (tmp_path / job / ".hydra" / "overrides.yaml").exists()
        (one,) = json.loads((tmp_path / job / "results.json").read_text())["rows"]
        assert r["accuracy"] == one["accuracy"] and r["bits"] == one["bits"]


def test_joblib_launcher_sweep_runs_the_jobs_in_processes_with_the_same_verdicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-m hydra/launcher=joblib``: the two jobs of a sweep run in two joblib (loky) processes;
    one of them decides its regions on 2 worker processes of its own (``verify.workers=2``, which
    needs the spawn start method restored inside a loky worker) and gets the serial job's verdicts."""
    argv = [
        "recipes/run.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "+preset=tiny",
        "rounding=nearest", "quant.bits=8", "verify.points=4", "verify.delta=0.02", "verify.workers=1,2",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", [*argv, f"hydra.sweep.dir={tmp_path}"])
    runpy.run_path(str(REPO / "recipes" / "run.py"), run_name="__main__")
    combined = json.loads((tmp_path / "results.json").read_text())
    serial, pooled = combined["rows"]
    assert (serial["job"], pooled["job"]) == (["verify.workers=1"], ["verify.workers=2"])
    assert pooled["verdicts"] == serial["verdicts"]
    assert {"EQUIVALENT", "NOT_EQUIVALENT"} <= {v["verdict"] for v in serial["verdicts"]}
    for job in ("0", "1"):
        assert (tmp_path / job / "results.json").exists()
