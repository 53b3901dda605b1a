"""The integer requantization every exact operation uses, against the format's definition.

``Requantizer`` rounds ``sum_i k_i r_i + c`` (exact rationals) once; it takes one of three paths
(float64 below 2^52, int64 below 2^62, Python integers beyond), each checked here against
``FixedPoint.round_exact`` element by element, ties included."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torchqv as tq
from torchqv.grid import Grid, Requantizer, requantize_quotient
from torchqv.rational import round_ratio as reference_round_ratio

ROUNDINGS = ["half_away", "half_even", "floor"]


@st.composite
def cases(draw):
    rounding = draw(st.sampled_from(ROUNDINGS))
    fmt = (
        tq.Binary(rounding=rounding)
        if draw(st.booleans()) and draw(st.booleans())
        else tq.FixedPoint(bits=draw(st.integers(2, 12)), rounding=rounding)
    )
    grid = Grid(fmt, Fraction(1))
    magnitude = draw(st.sampled_from([1, 2**20, 2**40, 2**70]))  # float64, int64 and Python paths
    rate = st.builds(
        Fraction,
        st.integers(-magnitude, magnitude).filter(bool),
        st.sampled_from([1, 2, 3, 4, 6, 10, 2**12, 7 * 2**30]),
    )
    channels = draw(st.sampled_from([1, 3]))
    terms = draw(st.integers(1, 3))
    rates = [draw(st.lists(rate, min_size=channels, max_size=channels)) for _ in range(terms)]
    const = draw(st.lists(rate, min_size=channels, max_size=channels))
    codes = [
        torch.tensor(draw(st.lists(st.integers(-300, 300), min_size=2 * channels, max_size=2 * channels)))
        .reshape(2, channels)
        .to(draw(st.sampled_from([torch.float32, torch.int64])))
        for _ in range(terms)
    ]
    return grid, rates, const, codes


@given(cases())
@settings(max_examples=300)
def test_requantizer_is_the_exact_rounding(case):
    grid, rates, const, codes = case
    channels = len(const)
    got = Requantizer(
        [r if channels > 1 else r[0] for r in rates], grid, const if channels > 1 else const[0], 1
    )(codes, "test")
    _kmin, _kmax = grid.code_range
    for i in range(2):
        for c in range(channels):
            t = sum(Fraction(int(k[i, c])) * r[c] for k, r in zip(codes, rates, strict=True)) + const[c]
            want = grid.fmt.saturate_exact(grid.fmt.round_exact(t))
            assert int(got[i, c]) == want, (t, want, got[i, c])
    assert got.dtype == torch.float32  # codes of a grid below 2^24 are stored as float32


def test_ties_in_every_path():
    """Exact ties ``(2j+1)/2`` and values one ulp of the rational away, in each arithmetic path."""
    for rounding in ROUNDINGS:
        fmt = tq.FixedPoint(bits=16, rounding=rounding)
        grid = Grid(fmt, Fraction(1))
        for scale in (1, 2**30, 2**62):  # float64, int64, Python integers
            den = 2 * scale
            codes = torch.tensor([-5, -3, -1, 1, 3, 5], dtype=torch.int64)
            got = Requantizer([Fraction(scale, den)], grid, Fraction(0))([codes], "ties")  # k / 2: ties
            want = [fmt.round_exact(Fraction(int(k), 2)) for k in codes]
            assert got.tolist() == want
            near = Requantizer([Fraction(1, 2)], grid, Fraction(1, den))([codes], "near")  # just above
            assert near.tolist() == [fmt.round_exact(Fraction(int(k), 2) + Fraction(1, den)) for k in codes]


@given(
    st.sampled_from(ROUNDINGS),
    st.lists(st.integers(-(10**6), 10**6), min_size=1, max_size=12),
    st.integers(1, 9),
    st.builds(Fraction, st.integers(1, 2**40), st.integers(1, 2**40)),
)
def test_quotient_and_the_references_own_rounding(rounding, sums, count, mult):
    fmt = tq.FixedPoint(bits=24, rounding=rounding)
    grid = Grid(fmt, Fraction(1))
    num = torch.tensor(sums, dtype=torch.int64)
    got = requantize_quotient(num, torch.full((), count, dtype=torch.int64), mult, grid, "q")
    want = [fmt.saturate_exact(fmt.round_exact(Fraction(s) * mult / count)) for s in sums]
    assert [int(v) for v in got.tolist()] == want
    # the integer reference's independent numpy rounding agrees with the definition too
    ref = reference_round_ratio(
        fmt, np.array([s * mult.numerator for s in sums], dtype=object), count * mult.denominator
    )
    assert [fmt.saturate_exact(int(v)) for v in ref] == want


@given(
    rounding=st.sampled_from(ROUNDINGS),
    bits=st.integers(2, 8),
    steps=st.tuples(*[st.sampled_from([Fraction(1, 4), Fraction(1, 3), Fraction(2, 5), Fraction(3, 7)])] * 2),
    bounds=st.sampled_from([(0.0, None), (-1.0, 1.0), (0.0, 6.0), (-0.3, 0.7), (None, None)]),
    codes=st.lists(st.integers(-130, 130), min_size=1, max_size=40),
)
@settings(max_examples=200, deadline=None)
def test_clamping_activations_fuse_into_the_requantization(rounding, bits, steps, bounds, codes):
    """ReLU / Hardtanh / identity on codes: the fused requantization with ``clip`` equals
    ``round(min(max(k s_in, a), b) / s_out)`` computed with exact rationals, then saturated."""
    from torchqv import activations as A
    from torchqv.ops.activation import QuantAct

    lo, hi = bounds
    act = A.relu() if bounds == (0.0, None) else A.identity() if lo is None else A.hardtanh(lo, hi)
    fmt_in, fmt_out = tq.FixedPoint(bits=9), tq.FixedPoint(bits=bits, rounding=rounding)
    inp, out = Grid(fmt_in, steps[0]), Grid(fmt_out, steps[1])
    op = QuantAct(act, tq.QConfig(activation=fmt_out), "act")
    got = op._clamped(tq.grid.QTensor(torch.tensor(codes, dtype=torch.float32), inp), out)
    kmin, kmax = out.code_range
    for k, g in zip(codes, got.tolist(), strict=True):
        v = Fraction(k) * steps[0]
        if lo is not None:
            v = max(v, Fraction(lo))
        if hi is not None:
            v = min(v, Fraction(hi))
        want = min(max(fmt_out.round_exact(v / steps[1]), kmin), kmax)
        assert int(g) == want, (k, v, want, g)


def test_compiled_kernels_compute_the_same_codes_and_fake_quantization():
    """``tq.use_compiled_kernels(True)``: the exact simulation (== the integer reference) and
    the training forward are the eager ones, value for value (torch.compile fuses exact steps)."""
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    fmt = tq.FixedPoint(bits=6)
    cfg = tq.QConfig(weight=tq.FixedPoint(bits=4, per_channel=True), activation=fmt, input=fmt)
    qm = tq.quantize(model, cfg)
    x = torch.randn(5, 2, 4, 4)
    tq.calibrate(qm, [x], progress=False)
    eager_eval, eager_train = qm.eval()(x), qm.train()(x)
    tq.use_compiled_kernels(True)
    try:
        compiled_eval, compiled_train = qm.eval()(x), qm.train()(x)
    finally:
        tq.use_compiled_kernels(False)
    assert torch.equal(compiled_eval, eager_eval)
    assert torch.equal(compiled_eval, tq.reference_forward(qm, x))
    assert torch.equal(compiled_train, eager_train)
