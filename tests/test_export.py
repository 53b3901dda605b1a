"""ONNX export: onnxruntime computes exactly what the simulation computes."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchqv as tq

ROUNDINGS = ["half_away", "half_even", "floor"]


@st.composite
def weight_format(draw, power_of_two=False):
    bits = draw(st.integers(1, 8))
    rounding = draw(st.sampled_from(ROUNDINGS))
    per_channel = draw(st.booleans())
    if bits == 1:
        return tq.Binary(rounding=rounding, per_channel=per_channel, power_of_two=power_of_two)
    return tq.FixedPoint(
        bits=bits,
        narrow=draw(st.booleans()),
        rounding=rounding,
        per_channel=per_channel,
        power_of_two=power_of_two,
    )


@st.composite
def act_format(draw, power_of_two=False):
    bits = draw(st.integers(2, 8))
    rounding = draw(st.sampled_from(ROUNDINGS))
    kind = draw(st.sampled_from(["narrow", "full", "unsigned", "affine"]))
    if kind == "affine":
        return tq.FixedPoint(
            bits=bits, signed=False, zero_point=None, rounding=rounding, power_of_two=power_of_two
        )
    return tq.FixedPoint(
        bits=bits,
        narrow=kind == "narrow",
        signed=kind != "unsigned",
        rounding=rounding,
        power_of_two=power_of_two,
    )


def build(draw, acts):
    torch.manual_seed(draw(st.integers(0, 1000)))
    act = draw(st.sampled_from(acts))
    if draw(st.booleans()):
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1),
            act(),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 2, 2, stride=2),
            act(),
            nn.Flatten(),
            nn.Linear(8, 3),
        )
        return model, (1, 8, 8)
    return nn.Sequential(nn.Linear(5, 7), act(), nn.Linear(7, 4), act(), nn.Linear(4, 3)), (5,)


def with_ties(qm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Put a third of the inputs exactly on rounding ties (and integers) of the input grid."""
    q = qm.input_quant
    s = float(q.steps()[0])
    flat = x.flatten().clone()
    n = flat.numel() // 3
    k = torch.randint(-20, 20, (n,)).float()
    flat[:n] = (k + torch.where(torch.rand(n) < 0.5, 0.5, 0.0)) * s
    return flat.view_as(x)


def calibrated(model, cfg, shape, tmp_path, form):
    qm = tq.quantize(model, cfg)
    tq.calibrate(qm, [torch.randn(64, *shape) * 2], progress=False)
    qm.eval()
    path = tmp_path / f"{form}.onnx"
    tq.export_onnx(qm, torch.randn(1, *shape), path, form=form)
    return qm, path


ALL_ACTS = [
    nn.ReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.SiLU,
    lambda: nn.LeakyReLU(0.1),
    nn.ELU,
    nn.Mish,
    nn.Softplus,
    lambda: nn.Hardtanh(-1, 2),
]


@given(st.data())
@settings(max_examples=40)
def test_integer_form_is_bit_exact(tmp_path_factory, data):
    model, shape = build(data.draw, ALL_ACTS)
    cfg = tq.QConfig(
        weight=data.draw(weight_format()),
        activation=data.draw(act_format()),
        input=data.draw(act_format()),
        activation_observer=data.draw(st.sampled_from(["minmax", "mse"])),
    )
    qm, path = calibrated(model, cfg, shape, tmp_path_factory.mktemp("onnx"), "integer")
    x = with_ties(qm, torch.randn(128, *shape) * 2)
    report = tq.check_onnx_parity(qm, path, x)
    assert report.exact and report.max_step_diff == 0.0, report


@given(st.data())
@settings(max_examples=30)
def test_qdq_form_is_bit_exact_for_power_of_two_steps(tmp_path_factory, data):
    model, shape = build(data.draw, [nn.ReLU, lambda: nn.Hardtanh(-1, 2), nn.Identity])
    cfg = tq.QConfig(
        weight=data.draw(weight_format(True)),
        activation=data.draw(act_format(True)),
        input=data.draw(act_format(True)),
    )
    qm, path = calibrated(model, cfg, shape, tmp_path_factory.mktemp("onnx"), "qdq")
    x = with_ties(qm, torch.randn(128, *shape) * 2)
    for optimize in (True, False):
        report = tq.check_onnx_parity(qm, path, x, optimize=optimize)
        assert report.exact, report


def test_qdq_graph_is_standard_qdq(tmp_path):
    import onnx

    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=4, per_channel=True),
        activation=tq.FixedPoint(bits=8),
        input=tq.FixedPoint(bits=8),
    )
    _, path = calibrated(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), cfg, (4,), tmp_path, "qdq")
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weight_dq = next(
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)
    )
    scale = next(i for i in model.graph.initializer if i.name == weight_dq.input[1])
    assert list(scale.dims) == [3]  # per channel
    codes = next(i for i in model.graph.initializer if i.name == weight_dq.input[0])
    stored = onnx.numpy_helper.to_array(codes)
    assert stored.dtype == np.int8 and np.abs(stored).max() <= 7  # the 4-bit range is kept


def test_rational_steps_paper_001(tmp_path):
    fmt = tq.FixedPoint(bits=4, step=Fraction(1, 3))
    qm, path = calibrated(
        nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
        tq.QConfig(weight=fmt, activation=fmt, input=fmt),
        (3,),
        tmp_path,
        "integer",
    )
    x = torch.tensor([[0.5, -0.5, 1.5], [1 / 6, 5 / 6, -7 / 6]]).repeat(10, 1)
    assert tq.check_onnx_parity(qm, path, x).exact


def test_export_errors(tmp_path):
    fmt = tq.FixedPoint(bits=8)
    model = nn.Sequential(nn.Linear(3, 2))
    qm = tq.quantize(model, tq.QConfig(weight=fmt, activation=fmt))  # no input format
    tq.calibrate(qm, [torch.randn(8, 3)], progress=False)
    with pytest.raises(tq.QuantizationError, match="input on a grid"):
        tq.export_onnx(qm.eval(), torch.randn(1, 3), tmp_path / "a.onnx")
    raising = tq.FixedPoint(bits=8, overflow="raise")
    qm = tq.quantize(model, tq.QConfig(weight=fmt, activation=raising, input=fmt))
    tq.calibrate(qm, [torch.randn(8, 3)], progress=False)
    with pytest.raises(tq.QuantizationError, match="overflow"):
        tq.export_onnx(qm.eval(), torch.randn(1, 3), tmp_path / "b.onnx")
    with pytest.raises(tq.QuantizationError, match="form"):
        tq.export_onnx(qm.eval(), torch.randn(1, 3), tmp_path / "c.onnx", form="tflite")
    pooled = tq.quantize(
        nn.Sequential(nn.Conv2d(1, 1, 1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 2)),
        tq.QConfig(weight=fmt, activation=fmt, input=fmt),
    )
    tq.calibrate(pooled, [torch.randn(2, 1, 4, 4)], progress=False)
    tq.export_onnx(pooled.eval(), torch.randn(1, 1, 4, 4), tmp_path / "d.onnx")  # exact average pooling
    assert tq.check_onnx_parity(pooled, tmp_path / "d.onnx", [torch.randn(32, 1, 4, 4)] * 2).exact
    tq.export_onnx(pooled.eval(), torch.randn(1, 1, 4, 4), tmp_path / "d.onnx", form="qdq")
    report = tq.check_onnx_parity(pooled, tmp_path / "d.onnx", torch.randn(64, 1, 4, 4))
    assert report.max_step_diff <= 1  # float32 average pooling: at most one step apart
    with pytest.raises(tq.QuantizationError, match=r"model returned by torchqv\.quantize"):
        tq.export_onnx(model, torch.randn(1, 3), tmp_path / "e.onnx")


def test_untrusted_files_are_checked(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf")
    with pytest.raises(tq.QuantizationError, match=r"not a readable ONNX|fails onnx\.checker"):
        tq.load_onnx(bad)
    with pytest.raises(tq.QuantizationError, match="not found"):
        tq.load_onnx(tmp_path / "missing.onnx")
