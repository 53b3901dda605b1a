"""Anonymous, "On the expressive power of weight quantization in deep neural networks" (ICLR submission), sec.
4: the expressive-degradation experiments (torchqv.theory.degradation*).

Exact references: weight gaps and output gaps recomputed with Fractions on tiny networks, the
least-squares line against its closed form in rational arithmetic, and end-to-end runs on tiny
configurations (a generated IDX data set for the MNIST part).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from tests.conftest import SHARED_DATA, needs_shared_data
from torchqv.theory.degradation import (
    DegradationConfig,
    degradation_row,
    fit_line,
    float64_forward,
    main,
    network_gap,
    quantize_weights,
    regression_net,
    run_regression,
    sample_regression,
    train_regression,
    weight_gaps,
)
from torchqv.theory.degradation_mnist import (
    MnistDegradationConfig,
    accuracy,
    load_split,
    mnist_cnn,
    mnist_mlp,
    run_mnist,
    train_classifier,
)

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_net(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return regression_net(3, 4).eval()


def ref_code(w: Fraction, step: Fraction, bits: int) -> int:
    """Hand reference of the weight grids: binary sign, else nearest (ties away) and saturate."""
    if bits == 1:
        return 1 if w >= 0 else -1
    t = w / step
    k = math.floor(abs(t) + Fraction(1, 2)) * (1 if t >= 0 else -1)
    kmax = 2 ** (bits - 1) - 1
    return max(-kmax, min(kmax, k))


def exact_matrix(t: torch.Tensor) -> list[list[Fraction]]:
    return [[Fraction(v) for v in row] for row in t.detach().double().tolist()]


# ------------------------------------------------------------------ weight gaps
@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16, 32])
def test_weight_gaps_match_fraction_reference(bits: int) -> None:
    model = tiny_net()
    qmodel = quantize_weights(model, bits)
    gaps = weight_gaps(model, qmodel)
    assert list(gaps) == ["fc1", "fc2"]
    total_sq, total_inf = Fraction(0), Fraction(0)
    for name, gap in gaps.items():
        w = exact_matrix(model.get_submodule(name).weight)
        (step,) = set(qmodel.get_submodule(name).weight_steps())
        wmax = max(abs(v) for row in w for v in row)
        kmax = 1 if bits == 1 else 2 ** (bits - 1) - 1
        # min-max step: covers the largest weight, rounded up by less than 2^-7 (8 significant bits)
        assert wmax / kmax <= step < wmax / kmax * (1 + Fraction(1, 2**7))
        diff = [abs(ref_code(v, step, bits) * step - v) for row in w for v in row]
        # quantized weights are on the grid and equal the hand-rounded ones
        wq = exact_matrix(qmodel.get_submodule(name).dequantized_weight())
        assert [abs(q - v) for rq, rw in zip(wq, w, strict=True) for q, v in zip(rq, rw, strict=True)] == diff
        # the subtraction of two doubles is correctly rounded: delta_inf is exact to the last bit
        assert gap["delta_inf"] == float(max(diff))
        sq = sum(d * d for d in diff)
        assert gap["delta_2"] == pytest.approx(math.sqrt(sq), rel=1e-14)
        assert gap["step"] == float(step)
        if bits > 1:  # nearest rounding inside the range: at most half a step
            assert max(diff) <= step / 2
        total_sq += sq
        total_inf = max(total_inf, max(diff))
    net = network_gap(gaps)
    assert net["delta_inf"] == float(total_inf)
    assert net["delta_2"] == pytest.approx(math.sqrt(total_sq), rel=1e-14)


def exact_forward(w1, b1, w2, b2, x: list[Fraction]) -> Fraction:
    h = [
        max(Fraction(0), sum((a * v for a, v in zip(row, x, strict=True)), b))
        for row, b in zip(w1, b1, strict=True)
    ]
    return sum((a * v for a, v in zip(w2[0], h, strict=True)), b2[0])


@pytest.mark.parametrize("bits", [1, 4, 32])
def test_output_gap_matches_exact_recomputation(bits: int) -> None:
    cfg = DegradationConfig(dim=3, width=4, bits=[bits, 8], progress=False)
    model = tiny_net(1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-8, 9, (6, 3), generator=gen, dtype=torch.float64) / 8  # dyadic: exact inputs
    y = torch.zeros(6, 1, dtype=torch.float64)
    row = degradation_row(model, x, y, float64_forward(model, x), bits, cfg)
    qmodel = quantize_weights(model, bits)
    b1, b2 = ([Fraction(v) for v in model.get_submodule(n).bias.tolist()] for n in ("fc1", "fc2"))
    params = [exact_matrix(model.fc1.weight), b1, exact_matrix(model.fc2.weight), b2]
    qparams = [
        exact_matrix(qmodel.fc1.dequantized_weight()),
        b1,
        exact_matrix(qmodel.fc2.dequantized_weight()),
        b2,
    ]
    points = exact_matrix(x)
    fq = [exact_forward(*qparams, p) for p in points]
    gaps = [q - exact_forward(*params, p) for q, p in zip(fq, points, strict=True)]
    eps_inf = max(abs(g) for g in gaps)
    eps_2_sq = sum(g * g for g in gaps) / len(gaps)
    # float64 evaluation of outputs of size O(1) with a handful of terms: error far below 1e-13
    assert abs(row["eps_inf"] - float(eps_inf)) < 1e-13
    assert abs(row["eps_2"] - math.sqrt(eps_2_sq)) < 1e-13
    assert row["eps_2"] <= row["eps_inf"]  # L^2 of a probability measure <= L^inf (M = 1)
    assert row["ln_ratio_inf"] == pytest.approx(math.log(row["eps_inf"] / row["delta_inf"]), rel=1e-15)
    assert row["mse"] == pytest.approx(float(sum(q * q for q in fq) / len(fq)), rel=1e-12)  # targets 0


# ------------------------------------------------------------------ the fitted line
def exact_fit(x: list[int], y: list[Fraction]) -> tuple[Fraction, Fraction, Fraction]:
    n = len(x)
    mx, my = Fraction(sum(x), n), sum(y) / n
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum((a - mx) ** 2 for a in x)
    intercept = my - slope * mx
    ss_tot = sum((b - my) ** 2 for b in y)
    ss_res = sum((b - slope * a - intercept) ** 2 for a, b in zip(x, y, strict=True))
    return slope, intercept, 1 - ss_res / ss_tot if ss_tot else Fraction(1)


@settings(max_examples=40)
@given(
    st.lists(st.integers(-40, 40), min_size=2, max_size=8, unique=True),
    st.lists(st.fractions(-100, 100, max_denominator=64), min_size=8, max_size=8),
)
def test_fit_line_is_the_least_squares_line(x: list[int], ys: list[Fraction]) -> None:
    y = ys[: len(x)]
    fit = fit_line(x, [float(v) for v in y])
    slope, intercept, r2 = exact_fit(x, y)
    scale = 1 + max(abs(v) for v in y)
    assert fit.n == len(x)
    assert abs(fit.slope - float(slope)) <= 1e-12 * scale
    assert abs(fit.intercept - float(intercept)) <= 1e-10 * scale
    assert abs(fit.r2 - float(r2)) <= 1e-9


def test_fit_line_exact_line_and_errors() -> None:
    fit = fit_line([1, 2, 4, 8, 16, 32], [3 - 0.5 * n for n in (1, 2, 4, 8, 16, 32)])
    assert (fit.slope, fit.intercept, fit.r2) == (-0.5, 3.0, 1.0)
    with pytest.raises(ValueError, match="x values are equal"):
        fit_line([2, 2], [1.0, 3.0])
    with pytest.raises(ValueError, match=">= 2"):
        fit_line([1], [1.0])


# ------------------------------------------------------------------ configs
def test_configs_are_hydra_structured_and_validated() -> None:
    base = OmegaConf.structured(DegradationConfig)
    cfg = OmegaConf.to_object(OmegaConf.merge(base, {"bits": [2, 8], "target": "norm"}))
    assert isinstance(cfg, DegradationConfig) and cfg.bits == [2, 8] and cfg.target == "norm"
    mcfg = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(MnistDegradationConfig), {"test_subset": 10})
    )
    assert (
        isinstance(mcfg, MnistDegradationConfig) and mcfg.test_subset == 10 and mcfg.models == ["mlp", "cnn"]
    )
    with pytest.raises(ValueError, match="target"):
        DegradationConfig(target="cubic")
    with pytest.raises(ValueError, match="distinct"):
        DegradationConfig(bits=[4, 4])
    with pytest.raises(ValueError, match=r"\[1, 32\]"):
        DegradationConfig(bits=[0, 8])
    with pytest.raises(ValueError, match="weight_observer"):
        DegradationConfig(weight_observer="max")
    with pytest.raises(ValueError, match="models"):
        MnistDegradationConfig(models=["resnet"])
    with pytest.raises(ValueError, match="train_subset"):
        MnistDegradationConfig(train_subset=0)


# ------------------------------------------------------------------ end to end
def test_run_regression_end_to_end(tmp_path: Path) -> None:
    cfg = DegradationConfig(n_points=64, dim=3, width=8, bits=[1, 2, 8, 32], epochs=30, progress=False)
    res = run_regression(cfg, tmp_path / "a")
    for name in ("results.json", "results.md", "fig3_gaps.png", "fig4_ratio.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    assert (tmp_path / "a" / "fig4_ratio.png").read_bytes()[:8] == PNG
    assert json.loads((tmp_path / "a" / "results.json").read_text()) == json.loads(json.dumps(res))
    assert "| n | eps_2 | eps_inf |" in (tmp_path / "a" / "results.md").read_text()
    rows = res["rows"]
    assert [r["bits"] for r in rows] == [1, 2, 8, 32]
    for r in rows:
        assert r["ln_ratio_2"] == math.log(r["eps_2"] / r["delta_2"])
        assert r["eps_2"] <= r["eps_inf"]
        for layer, numel in (("fc1", 3 * 8), ("fc2", 8)):
            g = r["layers"][layer]
            assert g["delta_inf"] <= g["delta_2"] <= math.sqrt(numel) * g["delta_inf"] * (1 + 1e-15)
            if r["bits"] > 1:
                assert g["delta_inf"] <= g["step"] / 2
    for norm in ("2", "inf"):
        fit = fit_line([r["bits"] for r in rows], [r[f"ln_ratio_{norm}"] for r in rows])
        assert res["fits"][norm] == {"slope": fit.slope, "intercept": fit.intercept, "r2": fit.r2, "n": 4}
    # deterministic given the seed: the same data, the same trained weights, the same gaps
    x, y = sample_regression(cfg)
    models = [train_regression(cfg, x, y) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*(m.state_dict().values() for m in models), strict=True))
    f = float64_forward(models[1], x)
    assert degradation_row(models[1], x, y, f, 2, cfg) == rows[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    code = {np.uint8: 0x08}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def fake_mnist(root: Path, n_train: int, n_test: int) -> None:
    """A generated IDX data set in torchvision's layout: the label is the row of a bright bar."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 + 2 * c : 4 + 2 * c, 4:24] = 255
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)


def test_run_mnist_on_generated_idx(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "data", 48, 20)
    cfg = MnistDegradationConfig(
        data_root=str(tmp_path / "data"), bits=[1, 4, 32], epochs=1, batch_size=16, progress=False
    )
    res = run_mnist(cfg, tmp_path / "out")
    for name in ("results.json", "results.md", "fig5a_accuracy.png", "fig5b_indicator.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert (tmp_path / "out" / "fig5b_indicator.png").read_bytes()[:8] == PNG
    assert res["train_images"] == 48 and res["test_images"] == 20
    # parameter counts by hand: 784*256+256 + 256*128+128 + 128*10+10; 1*16*25+16 + 16*32*25+32 + 512*10+10
    assert res["models"]["mlp"]["parameters"] == 235146 == sum(p.numel() for p in mnist_mlp().parameters())
    assert res["models"]["cnn"]["parameters"] == 18378 == sum(p.numel() for p in mnist_cnn().parameters())
    for m in res["models"].values():
        for r in m["rows"]:
            assert r["accuracy"] * 20 / 100 == pytest.approx(round(r["accuracy"] * 20 / 100), abs=1e-9)
            expect = math.log(r["accuracy"] / (m["parameters"] / 1e6)) if r["accuracy"] > 0 else None
            assert r["indicator"] == expect
        defined = [(r["bits"], r["indicator"]) for r in m["rows"] if r["indicator"] is not None]
        if len(defined) >= 2:
            fit = fit_line([b for b, _ in defined], [v for _, v in defined])
            assert m["fit"]["slope"] == fit.slope and m["fit"]["intercept"] == fit.intercept
    x, y = load_split(cfg, "train")
    nets = [train_classifier("cnn", x, y, cfg) for _ in range(2)]  # deterministic given the seed
    assert all(torch.equal(a, b) for a, b in zip(*(n.state_dict().values() for n in nets), strict=True))
    xte, yte = load_split(cfg, "test")
    assert accuracy(nets[0], xte, yte) == res["models"]["cnn"]["float_accuracy"]
    q4 = quantize_weights(nets[0], 4, cfg.weight_observer, cfg.per_channel)
    assert accuracy(q4, xte, yte) == res["models"]["cnn"]["rows"][1]["accuracy"]
    with pytest.raises(ValueError, match="test_subset=21"):
        run_mnist(MnistDegradationConfig(data_root=str(tmp_path / "data"), test_subset=21), tmp_path / "x")


@needs_shared_data("MNIST")
def test_run_mnist_real_data_slice(tmp_path: Path) -> None:
    cfg = MnistDegradationConfig(
        data_root=str(SHARED_DATA),
        bits=[2, 8],
        models=["mlp"],
        epochs=2,
        batch_size=32,
        train_subset=512,
        test_subset=200,
        progress=False,
    )
    res = run_mnist(cfg, tmp_path)
    mlp = res["models"]["mlp"]
    assert res["test_images"] == 200
    assert mlp["float_accuracy"] > 50  # 512 real digits suffice for far better than chance (10 %)
    assert (tmp_path / "results.md").read_text().count("| 8 |") == 1


def test_cli_regression_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = main(["regression", "--quick", "--out", str(tmp_path), "--no-progress"])
    assert res["config"]["n_points"] == 200 and [r["bits"] for r in res["rows"]] == [1, 2, 4, 8, 16, 32]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fig3_gaps.png",
        "fig4_ratio.png",
        "results.json",
        "results.md",
    ]
    assert "Least-squares line" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["imagenet"])
