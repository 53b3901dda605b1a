"""Per-group weight steps (``FixedPoint(group_size=...)``): one step per (output channel, group of
``group_size`` consecutive elements of the flattened reduction dimension), honoured by every
executor with one semantics."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from torch import nn

import torchqv as tq
from torchqv.formats import QuantizationError
from torchqv.observers import finalize_step
from torchqv.ops.affine import QuantConv, QuantLinear, affine_ops
from torchqv.reference import reference_forward
from torchqv.verify.network import quant_chain

A8 = tq.FixedPoint(bits=8)
W4 = tq.FixedPoint(bits=4, group_size=4)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


def cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=2),  # grouped conv: reduction 4 * 3 * 3 = 36
        nn.ReLU(),
        nn.Conv2d(8, 8, 1, groups=8),  # depthwise 1x1: reduction 1 per output (group_size 1)
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 3),
    )


def calibrated(model: nn.Module, cfg: tq.QConfig, x: torch.Tensor, overrides=None) -> nn.Module:
    qm = tq.quantize(model, cfg, overrides) if overrides else tq.quantize(model, cfg)
    tq.calibrate(qm, [x], progress=False)
    return qm.eval()


def group_steps(op) -> list[list[Fraction]]:
    return op.weight_step_groups()


# ------------------------------------------------------------------ the format
def test_format_fields_and_validation():
    fmt = tq.FixedPoint(bits=4, group_size=32)
    assert fmt.per_channel and fmt.group_size == 32
    assert "group_size=32" in fmt.describe()
    assert fmt.group_count(128) == 4 and tq.FixedPoint(bits=4).group_count(128) == 1
    for bad in (0, -4, True, 2.5, "8"):
        with pytest.raises(QuantizationError, match="group_size must be a positive int"):
            tq.FixedPoint(bits=4, group_size=bad)
    with pytest.raises(QuantizationError, match="per-tensor"):
        tq.FixedPoint(bits=4, group_size=4, zero_point=None)
    with pytest.raises(QuantizationError, match="per-channel steps are for weights only"):
        tq.QConfig(weight=W4, activation=tq.FixedPoint(bits=8, group_size=4))
    with pytest.raises(
        QuantizationError, match=r"fc\.weight.*group_size=5.*reduction size 12.*divisor of 12"
    ):
        tq.FixedPoint(bits=4, group_size=5).group_count(12, "fc.weight")


def test_quantize_rejects_non_dividing_group_size_naming_the_layer():
    with pytest.raises(
        QuantizationError, match=r"^0\.weight: group_size=5 does not divide the reduction size 12"
    ):
        tq.quantize(mlp(), tq.QConfig(weight=tq.FixedPoint(bits=4, group_size=5), activation=A8, input=A8))
    # a convolution's reduction is in_channels / groups * kh * kw (8 / 2 * 9 = 36 for layer 2)
    with pytest.raises(QuantizationError, match=r"^2\.weight: .*reduction size 36"):
        tq.quantize(
            cnn(),
            tq.QConfig(weight=tq.FixedPoint(bits=4), activation=A8, input=A8),
            {"2": tq.QConfig(weight=tq.FixedPoint(bits=4, group_size=8), activation=A8)},
        )


def test_calibrate_checks_group_size_up_front():
    qm = tq.quantize(mlp(), tq.QConfig(weight=W4, activation=A8, input=A8))
    op = dict(affine_ops(qm))["0"]
    op.weight_quant.fmt = tq.FixedPoint(bits=4, group_size=5)  # e.g. edited after quantize
    with pytest.raises(QuantizationError, match=r"0\.weight: group_size=5 .*reduction size 12"):
        tq.calibrate(qm, [torch.randn(4, 12)], progress=False)


def test_to_dict_from_dict_and_hydra_round_trip():
    fmt = tq.FixedPoint(bits=4, group_size=64, rounding="half_even")
    assert fmt.to_dict()["group_size"] == 64
    assert tq.FixedPoint.from_dict(fmt.to_dict()) == fmt
    cfg = tq.QConfig(weight=fmt, activation=A8, weight_observer="mse")
    assert tq.QConfig.from_dict(cfg.to_dict()) == cfg
    yaml = OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict()))  # as a Hydra config file holds it
    back = tq.QConfig.from_dict(OmegaConf.to_container(OmegaConf.create(yaml), resolve=True))
    assert back == cfg and back.weight.group_size == 64
    fixed = tq.FixedPoint(bits=4, step=("1/8", "1/4"), group_size=2)
    assert tq.FixedPoint.from_dict(fixed.to_dict()) == fixed


# ------------------------------------------------------------------ observers
@pytest.mark.parametrize("kind", ["minmax", "moving_average", "percentile", "mse"])
def test_observers_give_one_step_per_group(kind):
    lin = nn.Linear(8, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 8))
        lin.weight[:, 4:] *= 100  # the second group of every row is 100 times wider
    qm = calibrated(
        nn.Sequential(lin),
        tq.QConfig(weight=W4, activation=A8, input=A8, weight_observer=kind),
        torch.randn(16, 8),
    )
    op = dict(affine_ops(qm))["0"]
    steps = group_steps(op)
    assert len(steps) == 3 and all(len(row) == 2 for row in steps)
    w = lin.weight.detach().double()
    for o in range(3):
        for g in range(2):
            amax = w[o, 4 * g : 4 * g + 4].abs().max()
            minmax = Fraction(float(finalize_step(W4, amax / 7)))
            if kind in ("minmax", "moving_average"):
                assert steps[o][g] == minmax  # the group's own range, rounded up to 8 bits
            else:
                assert steps[o][g] <= minmax  # clipping never widens the group's range
        assert steps[o][1] > 20 * steps[o][0]


# ------------------------------------------------------------------ exact path == reference
def test_mlp_eval_equals_reference_bit_for_bit():
    x = torch.randn(64, 12) * 2
    qm = calibrated(mlp(), tq.QConfig(weight=W4, activation=A8, input=A8), x)
    op = dict(affine_ops(qm))["0"]
    assert op.weight_quant.step_num.numel() == 16 * 3
    assert len({s for row in group_steps(op) for s in row}) > 16  # steps differ within rows
    assert torch.equal(qm(x), reference_forward(qm, x))
    # the per-group semantics differs from per-channel steps
    per_channel = calibrated(
        mlp(), tq.QConfig(weight=tq.FixedPoint(bits=4, per_channel=True), activation=A8, input=A8), x
    )
    assert not torch.equal(per_channel(x), qm(x))


@pytest.mark.parametrize("group_size", [1, 4, 9])
def test_conv_eval_equals_reference_bit_for_bit(group_size):
    # group_size=9: one step per (output channel, input channel) of a 3x3 kernel; 4: groups that
    # cut across kernel windows (the flattened weight order); the depthwise 1x1 conv takes 1
    x = torch.randn(32, 4, 6, 6)
    w = tq.FixedPoint(bits=4, group_size=group_size)
    dw = tq.QConfig(weight=tq.FixedPoint(bits=4, group_size=1), activation=A8)
    qm = calibrated(cnn(), tq.QConfig(weight=w, activation=A8, input=A8), x, {"4": dw, "6": dw})
    ops = dict(affine_ops(qm))
    assert isinstance(ops["2"], QuantConv) and ops["2"].groups == 2
    assert ops["2"].weight_quant.step_num.numel() == 8 * 36 // group_size
    assert torch.equal(qm(x), reference_forward(qm, x))


def test_real_inputs_real_outputs_and_frozen_models():
    x = torch.randn(48, 12)
    real_in = calibrated(mlp(), tq.QConfig(weight=W4, activation=A8), x)  # certified path
    assert torch.equal(real_in(x), reference_forward(real_in, x))
    real_out = calibrated(mlp(), tq.QConfig(weight=W4, activation=None, input=A8), x)
    assert torch.equal(real_out(x), reference_forward(real_out, x))
    qm = calibrated(mlp(), tq.QConfig(weight=W4, activation=A8, input=A8), x)
    want = qm(x)
    tq.freeze(qm)
    assert torch.equal(qm(x), want) and torch.equal(reference_forward(qm, x), want)


def test_qat_fake_quantizes_each_weight_with_its_group_step():
    x = torch.randn(32, 12)
    qm = calibrated(mlp(), tq.QConfig(weight=W4, activation=A8, input=A8), x)
    op = dict(affine_ops(qm))["0"]
    qm.train()
    fq = op.weight_quant(op.weight)
    assert torch.equal(fq.double(), op.dequantized_weight())
    assert (qm(x) - qm.eval()(x)).abs().max() < 0.2  # training surrogate close to the exact path
    lsq = tq.quantize(mlp(), tq.QConfig(weight=W4, activation=A8, input=A8, learn_step=True))
    tq.calibrate(lsq, [x], progress=False)
    lsq.train()
    lsq(x).square().sum().backward()
    grad = dict(affine_ops(lsq))["0"].weight_quant.step_param.grad
    assert grad is not None and grad.shape == (16 * 3,) and bool(grad.abs().sum() > 0)


def test_state_dict_round_trip():
    x = torch.randn(32, 12)
    cfg = tq.QConfig(weight=W4, activation=A8, input=A8)
    qm = calibrated(mlp(), cfg, x)
    fresh = tq.quantize(mlp(), cfg)
    fresh.load_state_dict(qm.state_dict())
    fresh.eval()
    assert torch.equal(fresh(x), qm(x))
    assert group_steps(dict(affine_ops(fresh))["2"]) == group_steps(dict(affine_ops(qm))["2"])
    other = tq.quantize(
        mlp(), tq.QConfig(weight=tq.FixedPoint(bits=4, group_size=2), activation=A8, input=A8)
    )
    with pytest.raises(QuantizationError, match="group_size=2"):
        other.load_state_dict(qm.state_dict())


# ------------------------------------------------------------------ ONNX
@pytest.mark.parametrize("model_fn,shape", [(mlp, (12,)), (cnn, (4, 6, 6))])
def test_onnx_integer_and_qdq_agree_with_eval(tmp_path, model_fn, shape):
    pytest.importorskip("onnxruntime")
    x = torch.randn(64, *shape) * 2
    dw = tq.QConfig(weight=tq.FixedPoint(bits=4, group_size=1), activation=A8)
    overrides = {"4": dw} if model_fn is cnn else None
    qm = calibrated(model_fn(), tq.QConfig(weight=W4, activation=A8, input=A8), x, overrides)
    tq.export_onnx(qm, x[:1], tmp_path / "int.onnx", form="integer")
    report = tq.check_onnx_parity(qm, tmp_path / "int.onnx", x)
    assert report.exact, report
    ops = [n.op_type for n in tq.load_onnx(tmp_path / "int.onnx").graph.node]
    # one exact 8-bit integer product per group (the codes of the other groups masked to zero)
    layer = dict(affine_ops(qm))["0"]
    groups = layer.weight_quant.step_num.numel() // layer.out_channels_
    assert ops.count("MatMulInteger" if model_fn is mlp else "ConvInteger") >= groups > 1
    if model_fn is mlp:  # torchqv's own ONNX reader takes the file back: same outputs
        from torchqv.verify.onnx_import import from_onnx

        back = from_onnx(tmp_path / "int.onnx")
        assert torch.equal(back(x).double(), qm(x).double())
    # QDQ (float32 maps) is bit-exact with power-of-two steps, as for per-channel steps
    p2w, p2a = (
        tq.FixedPoint(bits=4, group_size=4, power_of_two=True),
        tq.FixedPoint(bits=8, power_of_two=True),
    )
    dw2 = tq.QConfig(weight=tq.FixedPoint(bits=4, group_size=1, power_of_two=True), activation=p2a)
    qdq = calibrated(
        model_fn(),
        tq.QConfig(weight=p2w, activation=p2a, input=p2a),
        x,
        {"4": dw2} if model_fn is cnn else None,
    )
    tq.export_onnx(qdq, x[:1], tmp_path / "qdq.onnx", form="qdq")
    for optimize in (True, False):
        report = tq.check_onnx_parity(qdq, tmp_path / "qdq.onnx", x, optimize=optimize)
        assert report.exact, report


# ------------------------------------------------------------------ QUBO rounding
def test_qubo_rounding_uses_each_weights_own_step():
    x = torch.randn(256, 12)
    qm = calibrated(mlp(), tq.QConfig(weight=W4, activation=A8, input=A8), x)
    steps = {name: op.weight_step_tensor() for name, op in affine_ops(qm)}
    report = tq.round_weights(qm, [x], progress=False)
    for layer in report.layers:
        assert layer.objective <= layer.nearest + 1e-12, layer
    assert any(layer.objective < layer.nearest for layer in report.layers)
    for name, op in affine_ops(qm):
        # every weight stays on its own group's grid (a whole multiple of its step), within one step
        ratio = op.weight.detach().double() / steps[name]
        assert torch.equal(ratio, torch.round(ratio))
        assert bool(((op.weight.detach().double() - ratio * steps[name]).abs() == 0).all())
    qm.eval()
    assert torch.equal(qm(x), reference_forward(qm, x))


# ------------------------------------------------------------------ verifier
def test_verifier_chain_reads_per_group_steps_exactly():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(16, 4)
    qm = calibrated(model, tq.QConfig(weight=tq.FixedPoint(bits=4, group_size=2), activation=A8, input=A8), x)
    chain = quant_chain(qm, 4)
    want = qm(x)
    for i in range(len(x)):
        got = chain.exact([Fraction(float(v)) for v in x[i]])
        assert [float(v) for v in got] == want[i].tolist()
    (res,) = tq.verify_equivalence(model, qm, x[:1], 0.01, relation="top1", timeout=60)
    assert res.verdict in ("EQUIVALENT", "NOT_EQUIVALENT", "UNKNOWN")


# ------------------------------------------------------------------ exact path vs Fractions
STEPS = st.builds(
    Fraction,
    st.integers(1, 40),
    st.sampled_from([1, 3, 7, 2**3, 2**10, 3 * 2**20, 2**40]),
)


def half_away(t: Fraction) -> int:
    mag = math.floor(abs(t) + Fraction(1, 2))
    return mag if t >= 0 else -mag


@given(st.data())
@settings(max_examples=40, deadline=None)
def test_exact_path_equals_fraction_arithmetic(data):
    out_f = data.draw(st.integers(1, 4))
    gs = data.draw(st.integers(1, 4))
    groups = data.draw(st.integers(1, 4))
    in_f = gs * groups
    bits = data.draw(st.integers(2, 6))
    steps = [data.draw(STEPS) for _ in range(out_f * groups)]
    sx, so = data.draw(STEPS), data.draw(STEPS)
    seed = data.draw(st.integers(0, 2**16))
    with_bias = data.draw(st.booleans())
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=with_bias)
    kmax = 2 ** (bits - 1) - 1
    with torch.no_grad():  # weights around the grid, some beyond it (saturation)
        scale = torch.tensor([float(s) for s in steps]).repeat_interleave(gs).view(out_f, in_f)
        lin.weight.copy_(torch.randn(out_f, in_f, generator=gen) * kmax * scale)
        if with_bias:
            lin.bias.copy_(torch.randn(out_f, generator=gen) * float(so) * 20)
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=bits, step=tuple(steps), group_size=gs),
        activation=tq.FixedPoint(bits=8, step=so),
        input=tq.FixedPoint(bits=8, step=sx),
    )
    qm = tq.quantize(nn.Sequential(lin), cfg).eval()
    x = torch.randn(5, in_f, generator=gen) * 60 * float(sx)
    got = qm(x)
    assert torch.equal(got, reference_forward(qm, x))

    def sat(k: int, lim: int) -> int:
        return max(-lim, min(lim, k))

    w = lin.weight.detach().tolist()
    kw = [
        [sat(half_away(Fraction(w[o][j]) / steps[o * groups + j // gs]), kmax) for j in range(in_f)]
        for o in range(out_f)
    ]
    for n in range(x.shape[0]):
        kx = [sat(half_away(Fraction(float(v)) / sx), 127) for v in x[n].tolist()]
        for o in range(out_f):
            acc = sum(kw[o][j] * steps[o * groups + j // gs] * sx * kx[j] for j in range(in_f))
            if with_bias:
                sb = min(steps[o * groups : (o + 1) * groups]) * sx
                acc += half_away(Fraction(lin.bias[o].item()) / sb) * sb
            k = sat(half_away(acc / so), 127)
            assert got[n, o].item() == float(k * so), (n, o)


def test_weight_steps_refuses_group_formats():
    qm = calibrated(mlp(), tq.QConfig(weight=W4, activation=A8, input=A8), torch.randn(8, 12))
    op = dict(affine_ops(qm))["0"]
    assert isinstance(op, QuantLinear)
    with pytest.raises(QuantizationError, match="per-group steps"):
        op.weight_steps()
    assert op.row_steps() == [min(row) for row in op.weight_step_groups()]


def test_standalone_batch_norm_keeps_per_channel_steps():
    torch.manual_seed(4)
    bn = nn.BatchNorm1d(8)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), bn, nn.Linear(8, 4)).eval()
    x = torch.randn(32, 12)
    qm = calibrated(model, tq.QConfig(weight=W4, activation=A8, input=A8), x)
    ops = dict(affine_ops(qm))
    assert ops["2"].group_size is None and ops["2"].weight_quant.step_num.numel() == 8
    assert ops["3"].group_size == 4
    assert torch.equal(qm(x), reference_forward(qm, x))
