"""The eval-mode simulation equals the integer reference bit for bit (property tests)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchqv as tq
from torchqv import activations as A

ROUNDINGS = ["half_away", "half_even", "floor"]
ACTS = [
    nn.ReLU,
    lambda: nn.LeakyReLU(0.1),
    lambda: nn.Hardtanh(-0.5, 1.5),
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.SiLU,
    nn.GELU,
    nn.Mish,
    nn.Softplus,
    nn.Identity,
    nn.ReLU6,
]


@st.composite
def weight_formats(draw):
    bits = draw(st.integers(1, 8))
    rounding = draw(st.sampled_from(ROUNDINGS))
    per_channel = draw(st.booleans())
    if bits == 1:
        return tq.Binary(rounding=rounding, per_channel=per_channel)
    step = draw(st.sampled_from([None, None, Fraction(1, 3), Fraction(1, 8), Fraction(2, 5)]))
    return tq.FixedPoint(
        bits=bits,
        narrow=draw(st.booleans()),
        rounding=rounding,
        per_channel=per_channel and step is None,
        step=step,
    )


@st.composite
def act_formats(draw):
    bits = draw(st.integers(2, 8))
    kind = draw(st.sampled_from(["narrow", "full", "affine", "fixed"]))
    rounding = draw(st.sampled_from(ROUNDINGS))
    if kind == "affine":
        return tq.FixedPoint(bits=bits, signed=False, zero_point=None, rounding=rounding)
    if kind == "fixed":
        s = draw(st.integers(1, 7))
        return tq.FixedPoint(bits=bits, step=Fraction(1, s), rounding=rounding)
    return tq.FixedPoint(bits=bits, narrow=kind == "narrow", rounding=rounding)


def _mlp(draw):
    d_in = draw(st.integers(1, 5))
    widths = draw(st.lists(st.integers(1, 5), min_size=1, max_size=2))
    layers, prev = [], d_in
    for w in widths:
        layers += [nn.Linear(prev, w, bias=draw(st.booleans())), draw(st.sampled_from(ACTS))()]
        prev = w
    layers.append(nn.Linear(prev, draw(st.integers(1, 3))))
    return nn.Sequential(*layers), (d_in,)


def _cnn(draw):
    cin, cout = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    k, pad, stride = draw(st.integers(1, 3)), draw(st.integers(0, 1)), draw(st.integers(1, 2))
    size = draw(st.integers(max(k, 3), 5))
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=draw(st.booleans()))
    out = (size + 2 * pad - k) // stride + 1
    pool = draw(st.booleans()) and out >= 2
    layers = [conv, draw(st.sampled_from(ACTS))()]
    if pool:
        layers.append(nn.MaxPool2d(2))
        out //= 2
    layers += [nn.Flatten(), nn.Linear(cout * out * out, 2)]
    return nn.Sequential(*layers), (cin, size, size)


@st.composite
def cases(draw):
    torch.manual_seed(draw(st.integers(0, 10_000)))
    model, shape = _cnn(draw) if draw(st.booleans()) else _mlp(draw)
    cfg = tq.QConfig(
        weight=draw(weight_formats()),
        activation=draw(act_formats()),
        input=draw(st.one_of(st.none(), act_formats())),
        activation_observer=draw(st.sampled_from(["minmax", "moving_average", "percentile", "mse"])),
    )
    x = torch.randn(6, *shape) * draw(st.sampled_from([0.5, 2.0, 8.0]))
    return model, cfg, x


@given(cases())
@settings(max_examples=200)
def test_simulation_equals_integer_reference(case):
    model, cfg, x = case
    qm = tq.quantize(model, cfg)
    tq.calibrate(qm, [x[:3], x[3:]], progress=False)
    qm.eval()
    with torch.no_grad():
        y = qm(x)
    ref = tq.reference_forward(qm, x)
    assert y.dtype == torch.float64
    assert torch.equal(y, ref)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_ties_on_inputs_and_accumulators(rounding):
    """Inputs sitting exactly on rounding ties of a 1/3 grid, through a 1/3-step network."""
    step = Fraction(1, 3)
    fmt = tq.FixedPoint(bits=6, step=step, rounding=rounding)
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, 0.5], [1.0, -0.5]]))
        lin.bias.zero_()
    qm = tq.quantize(
        nn.Sequential(lin), tq.QConfig(weight=tq.FixedPoint(bits=4, step=0.5), activation=fmt, input=fmt)
    )
    # x / (1/3) = 3x; x = 1/6 (double nearest) is not a tie, but 0.5 is one: 3 * 0.5 = 1.5
    x = torch.tensor([[0.5, -0.5], [1.5 / 3, 2.5 / 3]], dtype=torch.float64)
    qm.eval()
    y = qm(x)
    assert torch.equal(y, tq.reference_forward(qm, x))
    for row in range(2):
        k0, k1 = (fmt.round_exact(Fraction(v) / step) for v in x[row].tolist())
        # outputs in units of the step: 0.5 (k0 + k1) and k0 - 0.5 k1, half-integers: ties
        t0, t1 = Fraction(k0 + k1, 2), k0 - Fraction(k1, 2)
        assert y[row].tolist() == [float(fmt.round_exact(t) * step) for t in (t0, t1)]
    assert fmt.round_exact(Fraction(3, 2)) == {"half_away": 2, "half_even": 2, "floor": 1}[rounding]


@pytest.mark.parametrize(
    ("w", "x", "s_out", "rounding", "k_out"),
    [
        # T = 5 * 11 = 55, T * (1/2)(1/3) / (11/9) = 7.5 exactly; 55 * fl(3/22) < 7.5
        (2.5, 11 / 3, Fraction(11, 9), "half_even", 8),
        (2.5, 11 / 3, Fraction(11, 9), "half_away", 8),
        # T = 6 * 9 = 54, T * (1/6) / (1/13) = 117 exactly; 54 * fl(13/6) < 117
        (3.0, 3.0, Fraction(1, 13), "floor", 117),
    ],
)
def test_requantization_ties_are_exact(w, x, s_out, rounding, k_out):
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(w)
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=8, step=Fraction(1, 2)),
        input=tq.FixedPoint(bits=8, step=Fraction(1, 3)),
        activation=tq.FixedPoint(bits=10, step=s_out, rounding=rounding),
    )
    qm = tq.quantize(nn.Sequential(lin), cfg).eval()
    xt = torch.tensor([[x]], dtype=torch.float64)
    y = qm(xt)
    assert y.item() == float(k_out * s_out)
    assert torch.equal(y, tq.reference_forward(qm, xt))


def test_transcendental_rounding_is_exact_at_rational_points():
    """sigmoid(0) = 1/2 is an exact tie on a step-1 grid; the fast path must see it."""
    fmt = tq.FixedPoint(bits=4, step=1)
    act = A.sigmoid()
    assert A.round_activation(act, fmt, Fraction(0), Fraction(1)) == 1  # ties away from zero
    even = tq.FixedPoint(bits=4, step=1, rounding="half_even")
    assert A.round_activation(act, even, Fraction(0), Fraction(1)) == 0
    qm = tq.quantize(nn.Sequential(nn.Sigmoid()), tq.QConfig(activation=fmt, input=fmt))
    qm.eval()
    assert qm(torch.tensor([0.0, 3.0, -3.0])).tolist() == [1.0, 1.0, 0.0]


def test_weight_only_matches_exact_reals():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    qm = tq.quantize(model, tq.QConfig(weight=tq.FixedPoint(bits=4, per_channel=True)))
    tq.calibrate(qm, [], progress=False)
    qm.eval()
    x = torch.randn(5, 4)
    ref = tq.reference_forward(qm, x, exact=True)
    y = qm(x)
    for a, b in zip(y.flatten().tolist(), ref.flatten().tolist(), strict=False):
        assert abs(Fraction(a) - b) <= abs(b) * Fraction(1, 2**45) + Fraction(1, 2**60)


def test_large_accumulators_use_the_certified_float_path():
    """16-bit weights and inputs with fan-in 4096 exceed 2^53: still bit-exact."""
    torch.manual_seed(1)
    lin = nn.Linear(4096, 3)
    fmt16 = tq.FixedPoint(bits=16, narrow=False)
    qm = tq.quantize(
        nn.Sequential(lin),
        tq.QConfig(weight=tq.FixedPoint(bits=24), activation=fmt16, input=tq.FixedPoint(bits=24)),
    )
    x = torch.randn(2, 4096)
    tq.calibrate(qm, [x], progress=False)
    qm.eval()
    assert torch.equal(qm(x), tq.reference_forward(qm, x))
