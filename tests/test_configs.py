"""One config per job (VerifyConfig, RoundingConfig, BitSearchConfig), typed outcomes, errors."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from torch import nn

import torchqv as tq
from torchqv.enums import Choice
from torchqv.rounding import Method, Solver, Target
from torchqv.verify import Decision, Norm, Relation


def tiny() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    fq = tq.quantize(f, tq.QConfig(weight=tq.FixedPoint(bits=3)))
    x = torch.rand(16, 3)
    tq.calibrate(fq, [x], progress=False)
    return f, fq.eval(), x


# ------------------------------------------------------------------ VerifyConfig
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"relation": "same"}, r"VerifyConfig.relation must be one of \('strict', 'top1', 'eps'\), got 'sa"),
        ({"norm": "l2"}, r"VerifyConfig.norm must be one of \('inf', 'l1'\), got 'l2'"),
        ({"relation": "eps"}, r"relation='eps' needs eps > 0"),
        ({"relation": "eps", "eps": float("nan")}, r"relation='eps' needs eps > 0"),
        ({"relation": "eps", "eps": "0/1"}, r"relation='eps' needs eps > 0"),
        ({"delta": -1}, r"VerifyConfig.delta must be a finite number >= 0"),
        ({"delta": "a/b"}, r"VerifyConfig.delta must be a finite number >= 0"),
        ({"domain": (0, 1, 2)}, r"VerifyConfig.domain must be a pair \(lo, hi\)"),
        ({"timeout": 0}, r"VerifyConfig.timeout must be > 0 seconds, got 0"),
        ({"timeout": True}, r"VerifyConfig.timeout must be > 0 seconds, got True"),
        ({"branching": 1.5}, r"VerifyConfig.branching must be in \[0, 1\]"),
        ({"use_bounds": 1}, r"VerifyConfig.use_bounds must be True or False"),
        ({"samples": -1}, r"VerifyConfig.samples must be an int >= 0"),
        ({"seed": 1.5}, r"VerifyConfig.seed must be an int, got 1.5"),
        ({"workers": 0}, r"VerifyConfig.workers must be an int >= 1"),
    ],
)
def test_verify_config_names_the_field_and_the_fix(fields, message):
    with pytest.raises(tq.VerificationInputError, match=message):
        tq.VerifyConfig(**fields)


def test_verify_config_round_trips_through_json_and_hydra():
    cfg = tq.VerifyConfig(relation="eps", eps=Fraction(1, 3), norm="l1", delta="1/10", domain=(0, 1))
    assert cfg.relation is Relation.EPS and cfg.norm is Norm.L1
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["eps"] == "1/3" and data["relation"] == "eps"
    again = tq.VerifyConfig.from_dict(data)
    assert again.exact_eps == Fraction(1, 3) and again.to_dict() == cfg.to_dict()
    built = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(tq.VerifyConfig), data))
    assert isinstance(built, tq.VerifyConfig) and built.to_dict() == cfg.to_dict()
    with pytest.raises(tq.VerificationInputError, match=r"unknown VerifyConfig field\(s\) \['radius'\]"):
        tq.VerifyConfig.from_dict({"radius": 1})
    with pytest.raises(tq.VerificationInputError, match=r"unknown VerifyConfig option\(s\) \['radius'\]"):
        cfg.updated(radius=1)


def test_keywords_and_config_give_the_same_verification():
    f, fq, x = tiny()
    cfg = tq.VerifyConfig(delta=0.05, relation="eps", eps=0.5, timeout=30, samples=16)
    by_config = tq.verify_equivalence(f, fq, x[:3], config=cfg)
    by_keywords = tq.verify_equivalence(f, fq, x[:3], 0.05, relation="eps", eps=0.5, timeout=30, samples=16)
    assert [r.verdict for r in by_config] == [r.verdict for r in by_keywords]
    assert all(isinstance(r.verdict, tq.Verdict) for r in by_config)
    with pytest.raises(tq.VerificationInputError, match=r"unknown VerifyConfig option\(s\) \['radius'\]"):
        tq.verify_equivalence(f, fq, x[:1], 0.05, radius=1)
    with pytest.raises(tq.VerificationInputError, match="config must be a VerifyConfig"):
        tq.verify_equivalence(f, fq, x[:1], config=3)


# ------------------------------------------------------------------ RoundingConfig
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "gptq"}, r"RoundingConfig.method must be one of \('qubo', 'nearest'\), got 'gptq'"),
        ({"solver": "gurobi"}, r"RoundingConfig.solver must be one of"),
        ({"target": "int"}, r"RoundingConfig.target must be one of \('float', 'quantized'\)"),
        ({"sweeps": -1}, r"RoundingConfig.sweeps must be an int >= 0, got -1"),
        ({"replicas": 0}, r"RoundingConfig.replicas must be an int >= 1, got 0"),
        ({"seed": "1"}, r"RoundingConfig.seed must be an int, got '1'"),
        ({"bound": "yes"}, r"RoundingConfig.bound must be True or False"),
        ({"time_limit": float("inf")}, r"RoundingConfig.time_limit must be a positive number of seconds"),
    ],
)
def test_rounding_config_names_the_field_and_the_fix(fields, message):
    with pytest.raises(tq.RoundingError, match=message):
        tq.RoundingConfig(**fields)


def test_rounding_config_is_what_round_weights_runs():
    f, _, x = tiny()
    cfg = tq.RoundingConfig(solver="exact", bound=False, seed=3)
    assert tq.RoundingConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.updated(method="nearest").effective_solver is Solver.NEAREST

    def rounded(*args, **kwargs):
        qm = tq.quantize(f, tq.QConfig(weight=tq.FixedPoint(bits=3)))
        tq.calibrate(qm, [x], progress=False)
        tq.round_weights(qm, [x], *args, progress=False, **kwargs)
        return [p.detach().clone() for p in qm.parameters()]

    a, b = rounded(cfg), rounded(solver="exact", bound=False, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    with pytest.raises(tq.RoundingError, match=r"unknown RoundingConfig option\(s\) \['temperature'\]"):
        rounded(temperature=1.0)


# ------------------------------------------------------------------ typed outcomes
CHOICES = [*tq.Verdict, *tq.SearchStatus, *Decision, *Relation, *Norm, *Method, *Solver, *Target]


@given(st.sampled_from(CHOICES))
@settings(max_examples=40, deadline=None)
def test_choices_behave_as_their_strings(member: Choice):
    value = member.value
    assert member == value and str(member) == value and f"{member}" == value
    assert json.dumps({"v": member}) == json.dumps({"v": value})
    assert type(member).parse(value, "x") is member
    with pytest.raises(tq.ConfigError, match=r"x must be one of"):
        type(member).parse(value + "?", "x")


def test_search_status_is_typed():
    f = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    r = tq.search_bits(f, torch.rand(2, 2), 0.01, config=tq.BitSearchConfig(time_limit=1e-9), progress=False)
    assert r.status is tq.SearchStatus.TO and r.to_dict()["status"] == "TO"


# ------------------------------------------------------------------ errors
def test_every_error_is_a_quantization_error_and_a_value_error():
    kinds = [
        tq.FormatError, tq.OverflowToGridError, tq.ConfigError, tq.UnsupportedModelError,
        tq.CalibrationError, tq.CheckpointError, tq.DataError, tq.ExportError, tq.RoundingError,
        tq.VerificationInputError, tq.TheoryInputError,
    ]  # fmt: skip
    for kind in kinds:
        assert issubclass(kind, tq.QuantizationError) and issubclass(kind, ValueError)
    assert issubclass(tq.OverflowToGridError, tq.FormatError)
