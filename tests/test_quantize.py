"""quantize / calibrate / freeze: module swap, overrides, fx, errors, state dicts, observers."""

from __future__ import annotations

import io
import warnings
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchqv as tq
from torchqv.formats import is_dyadic

W4 = tq.FixedPoint(bits=4)
A8 = tq.FixedPoint(bits=8)
CFG = tq.QConfig(weight=W4, activation=A8, input=A8)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)).sigmoid())


class BranchyNet(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def calibrated(model, cfg=CFG, shape=(3, 4), **kw):
    qm = tq.quantize(model, cfg, **kw)
    tq.calibrate(qm, [torch.randn(16, *shape) for _ in range(2)], progress=False)
    return qm


def input_quant(qm, name):
    """The quantizer that defines the grid of node ``name``'s (first) input (``None``: real)."""
    return qm.io(qm.node(name)).in_quants[0]


def test_quantize_builds_the_graph_and_keeps_module_names():
    model = mlp()
    qm = calibrated(model)
    assert isinstance(qm, tq.QuantizedModel)
    assert isinstance(qm[1], tq.QuantLinear) and isinstance(qm[2], tq.QuantAct)
    assert isinstance(model[1], nn.Linear)  # the original is untouched
    assert [n.name for n in qm.nodes] == ["input", "0", "1", "2", "3"]
    # every edge knows its grid: Flatten keeps the input's, the others are their producers'
    assert input_quant(qm, "1") is qm.input_quant is not None
    assert input_quant(qm, "2") is qm[1].out_quant and input_quant(qm, "3") is qm[2].out_quant
    assert "| 0 | Flatten | input |" in tq.summary(qm)
    x = torch.randn(5, 3, 4)
    y = qm.eval()(x)
    assert torch.equal(y, tq.reference_forward(qm, x))
    # every output is on the output grid
    s = float(qm[3].out_quant.steps()[0])
    assert torch.equal(torch.round(y / s) * s, y)


def test_overrides_by_pattern():
    cfg8 = tq.QConfig(weight=tq.FixedPoint(bits=8, per_channel=True), activation=A8)
    qm = calibrated(mlp(), overrides={"3": cfg8, "2": None})
    assert qm[1].weight_quant.fmt.bits == 4 and qm[3].weight_quant.fmt.bits == 8
    assert qm[3].weight_quant.step_num.numel() == 3  # per channel
    assert qm[2].out_quant is None  # kept in float
    assert input_quant(qm, "3") is None  # its input (the float ReLU) is real-valued
    assert "real-valued (unrounded, as configured): 2" in repr(qm)
    x = torch.randn(4, 3, 4)
    assert torch.equal(qm.eval()(x), tq.reference_forward(qm, x))


def test_override_for_missing_module_is_an_error():
    with pytest.raises(tq.QuantizationError, match=r"match no node.*'1'"):
        tq.quantize(mlp(), CFG, overrides={"fc9": None})


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        y = self.bn(self.conv(x)).flatten(1)
        return torch.softmax(y[:, :4], 1) + y[:, :4] @ self.w + torch.sort(y, 1).values[:, :4]


def test_unsupported_calls_are_all_listed_up_front():
    with pytest.raises(tq.UnsupportedModelError) as err:
        tq.quantize(Unsupported(), CFG)
    text = str(err.value)
    assert "3 unsupported call(s)" in text  # matmul, softmax and sort; the folded BN is fine
    assert "matmul (call_function matmul)" in text and "hold the weights in nn.Linear" in text
    assert "softmax (call_function softmax)" in text and "outside the model" in text
    assert "sort (call_function sort)" in text
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.LSTM(3, 3))
    with pytest.raises(tq.UnsupportedModelError, match=r"(?s)1 unsupported call.*2 \(call_module LSTM\)"):
        tq.quantize(model, CFG)


def test_nan_weights_are_rejected():
    model = mlp()
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    with pytest.raises(tq.QuantizationError, match="3: weight contains NaN"):
        tq.quantize(model, CFG)


def test_nan_inputs_are_rejected():
    qm = calibrated(mlp()).eval()
    x = torch.randn(2, 3, 4)
    x[0, 0, 0] = float("inf")
    with pytest.raises(tq.QuantizationError, match="NaN or inf"):
        qm(x)


def test_uncalibrated_model_says_what_to_do():
    qm = tq.quantize(mlp(), CFG).eval()
    with pytest.raises(tq.QuantizationError, match="calibrate"):
        qm(torch.randn(2, 3, 4))


def test_bad_config_types():
    with pytest.raises(tq.QuantizationError, match="QConfig"):
        tq.quantize(mlp(), {"weight": W4, "bogus": 1})
    with pytest.raises(tq.QuantizationError, match=r"nn\.Module"):
        tq.quantize("model", CFG)
    with pytest.raises(tq.QuantizationError, match="symmetric"):
        tq.QConfig(weight=tq.FixedPoint(bits=4, signed=False, zero_point=None))
    with pytest.raises(tq.QuantizationError, match="weights only"):
        tq.QConfig(activation=tq.FixedPoint(bits=4, per_channel=True))
    with pytest.raises(tq.QuantizationError, match="observer kind"):
        tq.QConfig(weight=W4, weight_observer="median")


def test_functional_activations_are_operations_of_the_graph():
    model = FunctionalNet()
    qm = calibrated(model, shape=(6,))
    assert isinstance(qm.relu, tq.QuantAct) and isinstance(qm.sigmoid, tq.QuantAct)
    assert (qm.relu.act.name, qm.sigmoid.act.name) == ("relu", "sigmoid")
    assert input_quant(qm, "fc2") is qm.sigmoid.out_quant
    x = torch.randn(7, 6)
    assert torch.equal(qm.eval()(x), tq.reference_forward(qm, x))


def test_functional_layers_are_an_error():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(2, 3))

        def forward(self, x):
            return F.linear(x, self.w)

    with pytest.raises(tq.UnsupportedModelError, match=r"linear \(call_function linear\).*nn\.Linear"):
        tq.quantize(Bad(), CFG)


def test_untraceable_model_is_a_clear_error():
    with pytest.raises(tq.QuantizationError, match=r"tracing BranchyNet failed.*traceable"):
        tq.quantize(BranchyNet(), tq.QConfig(weight=W4, activation=A8))


def test_single_module_model():
    qm = tq.quantize(nn.Linear(3, 2), CFG)
    assert isinstance(qm[0], tq.QuantLinear)
    tq.calibrate(qm, [torch.randn(8, 3)], progress=False)
    x = torch.randn(4, 3)
    assert torch.equal(qm.eval()(x), tq.reference_forward(qm, x))


def test_cnn_with_pooling():
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 2, 3, stride=2, groups=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(2, 2),
    )
    qm = calibrated(
        model,
        tq.QConfig(weight=tq.FixedPoint(bits=4, per_channel=True), activation=A8, input=A8),
        shape=(1, 6, 6),
    )
    assert input_quant(qm, "3") is qm[1].out_quant  # through the max pool
    x = torch.randn(3, 1, 6, 6)
    assert torch.equal(qm.eval()(x), tq.reference_forward(qm, x))


def test_state_dict_round_trip_with_weights_only():
    qm = calibrated(mlp())
    x = torch.randn(6, 3, 4)
    y = qm.eval()(x)
    buf = io.BytesIO()
    torch.save(qm.state_dict(), buf)
    buf.seek(0)
    fresh = tq.quantize(mlp(), CFG)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(fresh.eval()(x), y)


def test_freeze_stores_integers_and_round_trips():
    qm = calibrated(mlp())
    x = torch.randn(6, 3, 4)
    y = qm.eval()(x)
    tq.freeze(qm)
    assert qm[1].weight_int.dtype == torch.int8 and "weight" not in dict(qm[1].named_parameters())
    assert qm[1].bias_int.dtype == torch.int64
    assert torch.equal(qm(x), y)
    assert torch.equal(qm(x), tq.reference_forward(qm, x))
    buf = io.BytesIO()
    torch.save(qm.state_dict(), buf)
    buf.seek(0)
    fresh = tq.quantize(mlp(), CFG)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh[1].frozen and torch.equal(fresh.eval()(x), y)
    with pytest.raises(tq.QuantizationError, match="frozen"):
        qm.train()(x)


@pytest.mark.parametrize("kind", ["minmax", "moving_average", "percentile", "mse"])
def test_observers_give_grids_that_cover_the_data(kind):
    torch.manual_seed(3)
    q = tq.FakeQuantize(tq.FixedPoint(bits=8), observer=tq.ObserverConfig(kind=kind))
    data = torch.randn(4000)
    q.observe(data)
    q.compute_qparams()
    step = q.steps()[0]
    amax = data.abs().max().item()
    if kind == "minmax":  # covers the range, rounded up to 8 significant bits
        assert amax / 127 <= float(step) <= amax / 127 * (1 + 2**-7)
    else:
        assert float(step) <= amax / 127 * (1 + 2**-7)
    assert is_dyadic(step)
    assert step.numerator < 2**8  # 8 significant bits


def test_mse_observer_minimises_error_among_its_candidates():
    torch.manual_seed(0)
    data = torch.cat([torch.randn(2000), torch.tensor([40.0])])  # one outlier
    errs = {}
    for kind in ("minmax", "percentile", "mse"):
        q = tq.FakeQuantize(tq.FixedPoint(bits=4), observer=tq.ObserverConfig(kind=kind))
        q.observe(data)
        q.compute_qparams()
        q.eval()
        errs[kind] = ((q(data) - data.double()) ** 2).mean().item()
    assert errs["mse"] <= min(errs["minmax"], errs["percentile"])
    assert errs["mse"] < 0.7 * errs["minmax"]


def test_affine_observer_and_power_of_two():
    q = tq.FakeQuantize(tq.FixedPoint(bits=8, signed=False, zero_point=None))
    q.observe(torch.tensor([-1.0, 3.0]))
    q.compute_qparams()
    assert q.zp == 64 and float(q.steps()[0]) == pytest.approx(4 / 255, rel=2**-7)
    p2 = tq.FakeQuantize(tq.FixedPoint(bits=8, power_of_two=True))
    p2.observe(torch.tensor([-1.0, 3.0]))
    p2.compute_qparams()
    assert p2.steps()[0] == Fraction(1, 32)  # 3/127 rounded up to a power of two


def test_ste_gradients():
    fmt = tq.FixedPoint(bits=3)  # codes [-3, 3]
    x = torch.tensor([-5.0, -3.4, -1.2, 0.2, 2.9, 3.6, 4.0], requires_grad=True)
    y = tq.fake_quantize(x, torch.tensor(1.0), fmt, -3, 3)
    y.backward(torch.ones_like(y))
    assert y.tolist() == [-3.0, -3.0, -1.0, 0.0, 3.0, 3.0, 3.0]
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    xb = torch.tensor([-2.0, -0.5, 0.5, 1.5], requires_grad=True)
    tq.fake_quantize(xb, torch.tensor(1.0), tq.Binary(), -1, 1).sum().backward()
    assert xb.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_lsq_step_gradient_matches_formula():
    fmt = tq.FixedPoint(bits=3)
    x = torch.tensor([-5.0, -1.2, 0.3, 2.6])
    s = torch.tensor(1.0, requires_grad=True)
    tq.fake_quantize(x, s, fmt, -3, 3).sum().backward()
    t = x / 1.0
    k = torch.clamp(torch.where(t >= 0, torch.floor(t + 0.5), torch.ceil(t - 0.5)), -3, 3)
    inside = (t >= -3.5) & (t <= 3.5)
    expected = torch.where(inside, k - t, k).sum() / (4 * 3) ** 0.5
    assert s.grad.item() == pytest.approx(expected.item())


def test_qat_with_learned_steps_trains_and_stays_exact():
    torch.manual_seed(0)
    cfg = tq.QConfig(weight=W4, activation=A8, input=A8, learn_step=True)
    qm = calibrated(mlp(), cfg)
    opt = torch.optim.SGD(qm.parameters(), lr=0.01)
    x, target = torch.randn(32, 3, 4), torch.randint(0, 3, (32,))
    qm.train()
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(qm(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert qm[1].weight_quant.step_param.grad is not None
    qm.eval()
    assert torch.equal(qm(x), tq.reference_forward(qm, x))


def test_training_path_is_close_to_exact_path_for_power_of_two_steps():
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=8, power_of_two=True),
        activation=tq.FixedPoint(bits=8, power_of_two=True),
        input=tq.FixedPoint(bits=8, power_of_two=True),
    )
    qm = calibrated(mlp(), cfg)
    x = torch.randn(16, 3, 4)
    with torch.no_grad():
        y_train = qm.train()(x)
        y_eval = qm.eval()(x)
    assert torch.equal(y_train.double(), y_eval)


def test_calibrate_reports_layers_without_data():
    with pytest.raises(tq.QuantizationError, match="no batches"):
        tq.calibrate(tq.quantize(mlp(), CFG), [], progress=False)


def test_enable_observers_updates_steps_during_training():
    qm = calibrated(mlp())
    before = qm[1].out_quant.steps()[0]
    tq.enable_observers(qm, True)
    qm.train()(torch.randn(8, 3, 4) * 10)
    tq.enable_observers(qm, False)
    assert qm[1].out_quant.steps()[0] > before


def test_no_warnings_on_normal_use():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrated(mlp()).eval()(torch.randn(2, 3, 4))
