"""A state dict is checked against the model's configuration when it loads (issue 17, item 2):
formats, bit widths, positive steps, codes on the grid.  A refused dict leaves the model as it was."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import torchqv as tq


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def config(bits: int, activation: bool = True, **weight: object) -> tq.QConfig:
    act = tq.FixedPoint(bits=bits) if activation else None
    return tq.QConfig(weight=tq.FixedPoint(bits=bits, **weight), activation=act, input=act)


def calibrated(cfg: tq.QConfig, model: nn.Module | None = None) -> tq.QuantizedModel:
    qm = tq.quantize(model or mlp(), cfg)
    tq.calibrate(qm, [torch.randn(64, 12)], progress=False)
    return qm


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def refused(target: nn.Module, state: dict, message: str) -> None:
    """Loading ``state`` raises a QuantizationError matching ``message`` and changes nothing."""
    before = snapshot(target)
    with pytest.raises(tq.QuantizationError, match=message):
        target.load_state_dict(state)
    after = target.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_dict_from_another_bit_width_is_refused():
    """8-bit steps used to load into a 2-bit model (top-1 agreement with float 0.70 -> 0.06)."""
    state = calibrated(config(8)).state_dict()
    refused(
        tq.quantize(mlp(), config(2)),
        state,
        r"another quantization configuration: 0.out_quant: saved int8\(step=observed, half_away\), "
        r"this model int2\(step=observed, half_away\).*quantize the float model with the QConfig",
    )
    refused(calibrated(config(2)), state, r"saved int8.*this model int2")  # calibrated or not


def test_a_dict_from_a_weight_only_model_is_refused():
    state = calibrated(config(4, activation=False)).state_dict()
    refused(
        tq.quantize(mlp(), config(4)),
        state,
        r"0.out_quant: saved no quantizer \(real values\), this model int4",
    )


def test_formats_are_checked_under_a_parent_module_and_with_strict_false():
    parent = nn.Sequential(tq.quantize(mlp(), config(2)))
    state = nn.Sequential(calibrated(config(8))).state_dict()
    refused(parent, state, r"0.0.weight_quant: saved int8")
    with pytest.raises(tq.QuantizationError, match=r"saved int8"):
        parent.load_state_dict(state, strict=False)


def corrupt(state: dict, key: str, value: object) -> dict:
    state = {k: v.clone() for k, v in state.items()}
    if isinstance(value, torch.Tensor):
        state[key] = value
    else:
        state[key][...] = value
    return state


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "0.weight_quant.step_num",
            -1,
            r"0.weight_quant.step_num/step_den holds the step -1/\d+ \(channel 0\); steps are positive",
        ),
        ("2.out_quant.step_den", 0, r"2.out_quant.step_num/step_den holds the step \d+/0"),
        (
            "0.weight_quant.step_num",
            torch.tensor([0.5]),
            r"0.weight_quant.step_num must be an integer tensor, got torch.float32",
        ),
        ("input.out_quant.zero_point", 3, r"input.out_quant.zero_point is 3, but int8\(.*\) needs 0"),
        ("0.weight", torch.full((8, 12), float("nan")), r"0.weight contains NaN or inf"),
        (
            "_extra_state",
            torch.tensor([1, 2, 3], dtype=torch.uint8),
            r"_extra_state is not a torchqv format record",
        ),
    ],
)
def test_corrupt_values_are_refused(key, value, message):
    qm = calibrated(config(8))
    refused(calibrated(config(8)), corrupt(qm.state_dict(), key, value), message)


def test_a_step_fixed_by_the_format_must_match():
    fixed = config(4, step=0.25)
    state = calibrated(config(4, step=0.125)).state_dict()
    refused(tq.quantize(mlp(), fixed), state, r"saved int4\(step=1/8, half_away\), this model int4\(step=1/4")
    # same format record, a different stored step: the format fixes it
    good = calibrated(fixed).state_dict()
    bad = corrupt(good, "0.weight_quant.step_den", 8)
    refused(
        tq.quantize(mlp(), fixed),
        bad,
        r"holds the step 1/8 \(channel 0\) but the format int4\(step=1/4.*fixes it to 1/4",
    )


@pytest.mark.parametrize(
    ("weight", "code"), [(tq.FixedPoint(bits=4), -8), (tq.Binary(), 0)], ids=["int4", "binary"]
)
def test_frozen_codes_must_lie_on_the_grid(weight, code):
    cfg = tq.QConfig(weight=weight, activation=tq.FixedPoint(bits=8), input=tq.FixedPoint(bits=8))
    frozen = tq.freeze(calibrated(cfg))
    state = frozen.state_dict()
    state["0.weight_int"] = state["0.weight_int"].clone()
    state["0.weight_int"][0, 0] = code
    refused(
        tq.quantize(mlp(), cfg),
        state,
        r"0.weight_int holds integer weights from -?\d+ to \d+( \(0 among them\))?, off the grid",
    )
    state["0.weight_int"] = state["0.weight_int"].float()
    refused(tq.quantize(mlp(), cfg), state, r"0.weight_int must be an integer tensor")


def test_a_learned_step_must_be_positive():
    cfg = tq.QConfig(weight=tq.FixedPoint(bits=4), activation=tq.FixedPoint(bits=8), learn_step=True)
    state = calibrated(cfg).state_dict()
    refused(
        calibrated(cfg), corrupt(state, "0.weight_quant.step_param", -1.0), r"step_param holds a non-positive"
    )


@pytest.mark.parametrize("freeze", [False, True])
def test_valid_dicts_still_load(freeze):
    cfg = config(4)
    qm = calibrated(cfg)
    if freeze:
        tq.freeze(qm)
    buf = io.BytesIO()
    torch.save(qm.state_dict(), buf)
    buf.seek(0)
    fresh = tq.quantize(mlp(), cfg)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(5, 12)
    assert torch.equal(fresh.eval()(x), qm.eval()(x))
    # a partial dict (steps only, strict=False) is checked entry by entry and loads
    steps = {k: v for k, v in qm.state_dict().items() if k.endswith(("step_num", "step_den"))}
    partial = tq.quantize(mlp(), cfg)
    partial.load_state_dict(steps, strict=False)
    assert partial[0].weight_quant.steps() == qm[0].weight_quant.steps()
