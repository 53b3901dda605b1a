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
        ({"replicas": 0}, r"RoundingConfig.replicas must be an int >= 1, got 0"),
        ({"time_limit": -1}, r"time_limit must be a positive number of seconds or None, got -1"),
        ({"temperature": 1}, r"unknown RoundingConfig option\(s\) \['temperature'\]; valid: .*time_limit"),
        ({"config": {"solver": "gurobi"}}, r"RoundingConfig.solver must be one of \('auto', 'neal'"),
        ({"config": "fast"}, r"QUBORounding: config must be a RoundingConfig \(or a dict of its fields\)"),
        ({"seed": "0"}, r"seed must be an int, got '0'"),
        ({"attr": "0model"}, r"QUBORounding: attr must name"),
    ],
)
def test_qubo_rounding(kwargs, message):
    with pytest.raises(tq.QuantizationError, match=message):
        QUBORounding(**kwargs)


def test_qubo_rounding_accepts_a_time_limit():
    cfg = QUBORounding(time_limit=30.0, sweeps=10).config
    assert (cfg.time_limit, cfg.sweeps) == (30.0, 10)
    base = tq.RoundingConfig(solver="neal", seed=3)
    assert QUBORounding(config=base, seed=4).config == base.updated(seed=4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_failure": "explode"}, r"on_failure must be one of \('warn', 'raise'\)"),
        ({"relation": "close"}, r"VerifyConfig.relation must be one of \('strict', 'top1', 'eps'\)"),
        ({"delta": -1}, r"VerifyConfig.delta must be a finite number >= 0"),
        ({"config": tq.VerifyConfig()}, r"EquivalenceCheck: give delta"),
        ({"radius": 1}, r"unknown VerifyConfig option\(s\) \['radius'\]"),
        ({"points": 0}, r"points must be >= 1, got 0"),
        ({"every_n_epochs": 0}, r"every_n_epochs must be >= 1 or None, got 0"),
    ],
)
def test_equivalence_check(kwargs, message):
    with pytest.raises(tq.QuantizationError, match=message):
        EquivalenceCheck(**kwargs)
