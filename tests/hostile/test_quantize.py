"""Hostile input to quantize / calibrate / the simulation / the reference (issue 17, items 3, 4, 8):
integer batches are refused (they used to cast the weights to int64), NaN inputs are named, float
leftovers are refused up front with every offending call listed and its fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchqv as tq

W2 = tq.FixedPoint(bits=2)
A8 = tq.FixedPoint(bits=8)
FULL = tq.QConfig(weight=W2, activation=A8, input=A8)
WEIGHT_ONLY = tq.QConfig(weight=W2)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def calibrated(cfg: tq.QConfig) -> tq.QuantizedModel:
    qm = tq.quantize(mlp(), cfg)
    tq.calibrate(qm, [torch.randn(32, 12)], progress=False)
    return qm


INT_MESSAGE = (
    r"input has dtype torch.int64; quantized models take floating-point inputs \(convert with x.float\(\)"
)


@pytest.mark.parametrize("cfg", [FULL, WEIGHT_ONLY], ids=["full", "weight_only"])
def test_integer_batches_are_refused_and_the_weights_stay_float(cfg):
    ints = torch.randint(0, 5, (8, 12))
    qm = tq.quantize(mlp(), cfg)
    with pytest.raises(tq.QuantizationError, match=INT_MESSAGE):
        tq.calibrate(qm, [ints], progress=False)
    assert qm[0].weight.dtype == torch.float32
    qm = calibrated(cfg)
    before = [p.clone() for p in qm.parameters()]
    with pytest.raises(tq.QuantizationError, match=INT_MESSAGE):
        qm.train()(ints)
    with pytest.raises(tq.QuantizationError, match=INT_MESSAGE):
        qm.eval()(ints)
    with pytest.raises(tq.QuantizationError, match=INT_MESSAGE):
        tq.reference_forward(qm, ints)
    with pytest.raises(tq.QuantizationError, match=INT_MESSAGE):
        tq.round_weights(qm, [ints], progress=False)
    assert all(
        torch.equal(a, b) and b.dtype == torch.float32 for a, b in zip(before, qm.parameters(), strict=True)
    )


@pytest.mark.parametrize("cfg", [FULL, WEIGHT_ONLY], ids=["full", "weight_only"])
def test_nan_inputs_are_named_in_every_executor(cfg):
    qm = calibrated(cfg)
    x = torch.randn(4, 12)
    x[1, 3] = float("nan")
    for run in (qm.eval(), qm.train(), lambda v: tq.reference_forward(qm, v)):
        with pytest.raises(tq.QuantizationError, match=r"input contains NaN or inf"):
            run(x)
    with pytest.raises(tq.QuantizationError, match=r"input contains NaN or inf"):
        tq.calibrate(tq.quantize(mlp(), cfg), [x], progress=False)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y, _ = self.att(x, x, x)
        return self.fc(y)


class FloatLeftovers(nn.Module):
    """``x @ self.w`` and a functional softmax: both ran in float after quantize (issue 17, item 4)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(12, 3))
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return x @ self.w, F.softmax(self.fc(x), -1)


class RealSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(x) + torch.sum(x, -1, keepdim=True)


@pytest.mark.parametrize("cfg", [FULL, WEIGHT_ONLY], ids=["full", "weight_only"])
def test_multihead_attention_is_refused_with_the_fix(cfg):
    with pytest.raises(
        tq.UnsupportedModelError, match=r"att \(call_module MultiheadAttention\).*apply it outside"
    ):
        tq.quantize(Attention(), cfg)


def test_every_float_leftover_is_listed_up_front():
    with pytest.raises(tq.UnsupportedModelError) as info:
        tq.quantize(FloatLeftovers(), FULL)
    message = str(info.value)
    assert "2 unsupported call(s)" in message
    assert "matmul (call_function matmul)" in message and "hold the weights in nn.Linear" in message
    assert (
        "softmax (call_function torch.nn.functional.softmax)" in message
        and "apply it to the quantized model's output" in message
    )
    with pytest.raises(tq.UnsupportedModelError, match=r"1 \(call_module Softmax\).*apply it outside"):
        tq.quantize(nn.Sequential(nn.Linear(4, 3), nn.Softmax(-1)), FULL)
    # a sum of the unquantized input cannot be rounded exactly: refused, with both fixes
    with pytest.raises(tq.UnsupportedModelError, match=r"sum.*give input an output format.*or keep .* real"):
        tq.quantize(RealSum(), tq.QConfig(weight=W2, activation=A8))


def test_quantize_names_its_arguments():
    qm = calibrated(FULL)
    with pytest.raises(
        tq.QuantizationError, match=r"quantize: model \(QuantizedModel\) is already quantized.*float_twin"
    ):
        tq.quantize(qm, FULL)
    with pytest.raises(tq.QuantizationError, match=r"quantize expects an nn.Module, got str"):
        tq.quantize("mlp", FULL)
    with pytest.raises(
        tq.QuantizationError, match=r"overrides\['2'\] = 3: .* a QConfig, a dict of its fields, or None"
    ):
        tq.quantize(mlp(), FULL, overrides={"2": 3})
    with pytest.raises(
        tq.QuantizationError, match=r"overrides must map node-name patterns to QConfigs, got list"
    ):
        tq.quantize(mlp(), FULL, overrides=["2"])
    with pytest.raises(tq.QuantizationError, match=r"override pattern\(s\) \['fc9'\] match no node"):
        tq.quantize(mlp(), FULL, overrides={"fc9": None})


@pytest.mark.parametrize("call", [tq.calibrate, tq.freeze, tq.summary])
def test_calls_on_a_float_model_say_quantize_first(call):
    args = (mlp(), [torch.randn(2, 12)]) if call is tq.calibrate else (mlp(),)
    with pytest.raises(
        tq.QuantizationError,
        match=rf"{call.__name__} expects a model returned by torchqv.quantize.*tq.quantize\(model, config\)",
    ):
        call(*args)


@pytest.mark.parametrize("batches", [None, 3, torch.randn(4, 12)], ids=["None", "int", "bare tensor"])
def test_batches_must_be_an_iterable_of_batches(batches):
    with pytest.raises(tq.QuantizationError, match=r"batches must be an iterable of batches .*\[x\]"):
        tq.calibrate(tq.quantize(mlp(), FULL), batches, progress=False)
