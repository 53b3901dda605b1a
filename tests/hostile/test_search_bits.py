"""Hostile input to search_bits / BitSearchConfig / quantize_bits: every bad value is refused before
any search, with a message that names the argument and the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchqv as tq


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


POINTS = torch.rand(2, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "fast"}, r"BitSearchConfig.mode must be one of"),
        ({"verify": {"timeout": "5"}}, r"VerifyConfig.timeout must be > 0 seconds, got '5'"),
        ({"time_limit": 0}, r"BitSearchConfig.time_limit must be > 0 seconds, got 0"),
        ({"verify": {"timeout": True}}, r"VerifyConfig.timeout must be > 0 seconds, got True"),
        ({"verify": {"radius": 1}}, r"unknown VerifyConfig field\(s\) \['radius'\]"),
        ({"verify": 3}, r"BitSearchConfig.verify must be a VerifyConfig"),
        ({"max_iterations": 0}, r"BitSearchConfig.max_iterations must be an int >= 1, got 0"),
        ({"input_bits": 1}, r"BitSearchConfig.input_bits must be None or in \[2, 32\]"),
        ({"on_unknown": "ignore"}, r"BitSearchConfig.on_unknown must be one of"),
    ],
)
def test_bad_configs(kwargs, message):
    with pytest.raises(tq.QuantizationError, match=message):
        tq.BitSearchConfig(**kwargs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"f": "net"}, r"f must be an nn.Module, got str"),
        ({"points": POINTS * float("nan")}, r"points contain NaN or inf"),
        ({"points": torch.rand(4)}, r"points must be a non-empty batch tensor shaped \(n, \*input_shape\)"),
        ({"points": torch.rand(2, 6)}, r"points have 6 features per point .* pass points shaped \(n, 4\)"),
        ({"delta": -0.1}, r"delta must be a finite number >= 0 \(or 'p/q'\), got -0.1"),
        ({"delta": None}, r"search_bits needs delta"),
        ({"timeout": 0}, r"VerifyConfig.timeout must be > 0 seconds, got 0"),
        ({"bits": (1, 8)}, r"bits must be a range \(lo, hi\) of ints with 2 <= lo <= hi <= 32, got \(1, 8\)"),
        ({"relation": "eps"}, r"relation='eps' needs eps > 0"),
        ({"config": {"mode": "weights"}}, r"config must be a BitSearchConfig, got dict"),
    ],
)
def test_bad_searches_fail_before_any_work(change, message):
    args = {"f": net(), "points": POINTS, "delta": 0.05, "progress": False} | change
    with pytest.raises(tq.QuantizationError, match=message):
        tq.search_bits(**args)


def test_a_quantized_f_is_refused_with_the_fix():
    qm = tq.quantize(net(), tq.QConfig(weight=tq.FixedPoint(bits=4)))
    with pytest.raises(
        tq.QuantizationError,
        match=r"search_bits: f is already quantized; pass the float model \(tq.float_twin\)",
    ):
        tq.search_bits(qm, POINTS, 0.05, progress=False)
