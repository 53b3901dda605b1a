"""Hostile input to the Lightning callbacks: their settings are checked when they are built, before
any fit, with a message that names the argument and the fix."""

from __future__ import annotations

import pytest

import torchqv as tq
from torchqv.lightning import EquivalenceCheck, QuantizationAwareTraining, QUBORounding

CFG = tq.QConfig(weight=tq.FixedPoint(bits=4), activation=tq.FixedPoint(bits=8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"config": "int8"}, r"config must be a QConfig or a dict, got str"),
        ({"config": {"wieght": None}}, r"unknown QConfig field\(s\) \['wieght'\]"),
        ({"calibration_batches": 0}, r"calibration_batches must be an int >= 1, got 0"),
        ({"calibration_batches": 2.5}, r"calibration_batches must be an int >= 1, got 2.5"),
        ({"freeze_observers_epoch": "x"}, r"freeze_observers_epoch must be an int >= 0 or None, got 'x'"),
        ({"freeze_observers_epoch": -1}, r"freeze_observers_epoch must be an int >= 0 or None, got -1"),
        ({"attr": ""}, r"QuantizationAwareTraining: attr must name the LightningModule's attribute .*got ''"),
        ({"attr": "model..fc"}, r"attr must name .*got 'model..fc'"),
        ({"overrides": {"fc": 3}}, r"overrides\['fc'\] = 3: .* a QConfig, a dict of its fields, or None"),
    ],
)
def test_quantization_aware_training(kwargs, message):
    args = {"config": CFG} | kwargs
    with pytest.raises(tq.QuantizationError, match=message):
        QuantizationAwareTraining(**args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"solver": "gurobi"}, r"solver must be one of"),
        ({"method": "adaround"}, r"method must be one of"),
        ({"target": "int"}, r"target must be one of"),
        ({"calibration_batches": 0}, r"calibration_batches must be an int >= 1, got 0"),
        ({"options": {"replicas": 0}}, r"replicas must be an int >= 1, got 0"),
        ({"options": {"time_limit": -1}}, r"time_limit must be a positive number of seconds or None, got -1"),
        ({"options": {"temperature": 1}}, r"unknown rounding option 'temperature'; valid: .*time_limit"),
        ({"options": {"seed": 1}}, r"give the seed as QUBORounding\(seed=...\), not in options"),
        ({"seed": "0"}, r"seed must be an int, got '0'"),
        ({"attr": "0model"}, r"QUBORounding: attr must name"),
    ],
)
def test_qubo_rounding(kwargs, message):
    with pytest.raises(tq.QuantizationError, match=message):
        QUBORounding(**kwargs)


def test_qubo_rounding_accepts_a_time_limit():
    assert QUBORounding(options={"time_limit": 30.0, "sweeps": 10}).options == {
        "time_limit": 30.0,
        "sweeps": 10,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_failure": "explode"}, r"on_failure must be one of \('warn', 'raise'\)"),
        ({"relation": "close"}, r"relation must be one of"),
        ({"delta": -1}, r"delta must be finite and >= 0"),
        ({"points": 0}, r"points must be >= 1, got 0"),
        ({"every_n_epochs": 0}, r"every_n_epochs must be >= 1 or None, got 0"),
    ],
)
def test_equivalence_check(kwargs, message):
    with pytest.raises(tq.QuantizationError, match=message):
        EquivalenceCheck(**kwargs)
