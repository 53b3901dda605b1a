"""The format: grid ranges, rounding rules (exact and tensor), saturation, validation."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchqv as tq
from torchqv.formats import as_step, dequantize_f64, round_certified


def test_ranges_match_the_papers():
    assert (tq.FixedPoint(bits=4).qmin, tq.FixedPoint(bits=4).qmax) == (-7, 7)  # Q_{3,s}
    assert (tq.FixedPoint(bits=4, narrow=False).qmin, tq.FixedPoint(bits=4, narrow=False).qmax) == (-8, 7)
    assert (tq.FixedPoint(bits=4, signed=False).qmin, tq.FixedPoint(bits=4, signed=False).qmax) == (0, 15)
    assert tq.Binary(step=0.5).levels() == [-1, 1]
    assert tq.Ternary(step=0.5).levels() == [-1, 0, 1]
    assert tq.FixedPoint(bits=32).qmax == 2**31 - 1
    assert tq.FixedPoint(bits=32, signed=False).qmax == 2**32 - 1
    affine = tq.FixedPoint(bits=8, signed=False, zero_point=128)
    assert affine.code_range(128) == (-128, 127)


def test_q_ps_is_fixedpoint_with_fraction_step():
    p, s = 3, 5
    fmt = tq.FixedPoint(bits=p + 1, step=Fraction(1, s))
    values = [k * fmt.fixed_steps()[0] for k in fmt.levels()]
    assert values == [Fraction(q, s) for q in range(-(2**p) + 1, 2**p)]


@pytest.mark.parametrize(
    ("rounding", "t", "expected"),
    [
        ("half_away", Fraction(1, 2), 1),
        ("half_away", Fraction(-1, 2), -1),
        ("half_away", Fraction(5, 2), 3),
        ("half_away", Fraction(-5, 2), -3),
        ("half_even", Fraction(1, 2), 0),
        ("half_even", Fraction(5, 2), 2),
        ("half_even", Fraction(-3, 2), -2),
        ("half_even", Fraction(7, 5), 1),
        ("floor", Fraction(-1, 2), -1),
        ("floor", Fraction(9, 10), 0),
        ("floor", Fraction(2), 2),
    ],
)
def test_round_exact_ties(rounding, t, expected):
    assert tq.FixedPoint(bits=8, rounding=rounding).round_exact(t) == expected


def test_binary_rounding():
    b = tq.Binary(step=1)
    assert [b.round_exact(Fraction(v)) for v in (-3, -1, 0, Fraction(1, 10), 5)] == [-1, -1, 1, 1, 1]
    bf = tq.Binary(step=1, rounding="floor")
    assert [bf.round_exact(Fraction(v)) for v in (Fraction(1, 2), 1, 2)] == [-1, 1, 1]


fractions = st.fractions(min_value=-1000, max_value=1000, max_denominator=64)


@given(t=fractions, rounding=st.sampled_from(["half_away", "half_even", "floor"]), binary=st.booleans())
def test_tensor_rounding_equals_exact_rounding(t, rounding, binary):
    fmt = tq.Binary(rounding=rounding) if binary else tq.FixedPoint(bits=8, rounding=rounding)
    x = float(t)
    if Fraction(x) != t:
        return  # the tensor rule is exact on the value it is given
    for dtype in (torch.float32, torch.float64):
        if Fraction(float(torch.tensor(x, dtype=dtype))) != t:
            continue
        got = fmt.round_tensor(torch.tensor([x], dtype=dtype)).item()
        assert got == fmt.round_exact(t)


def test_half_away_tensor_has_no_off_by_one_below_one_half():
    x = torch.tensor([0.49999999999999994, -0.49999999999999994, 2.5, -2.5], dtype=torch.float64)
    assert tq.FixedPoint(bits=8).round_tensor(x).tolist() == [0.0, -0.0, 3.0, -3.0]


@given(
    nums=st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=8),
    e=st.integers(0, 3),
    p=st.integers(1, 7),
    s=st.integers(1, 12),
    rounding=st.sampled_from(["half_away", "half_even", "floor"]),
)
def test_certified_rounding_is_exact_for_rational_steps(nums, e, p, s, rounding):
    """Dyadic x = j / 2^e over steps p/s land exactly on ties and integers; the fast path's
    codes equal round_exact's (float64 x / fl(p/s) alone would miss many of them)."""
    fmt = tq.FixedPoint(bits=32, rounding=rounding)
    x = torch.tensor([j / 2**e for j in nums], dtype=torch.float64)
    step = Fraction(p, s)
    q = tq.FakeQuantize(tq.FixedPoint(bits=32, step=step, rounding=rounding))
    codes = q.exact_codes(x)
    for xi, ki in zip(x.tolist(), codes.tolist(), strict=False):
        assert ki == fmt.saturate_exact(fmt.round_exact(Fraction(xi) / step))


@pytest.mark.parametrize(
    ("step", "x", "rounding", "expected"),
    [
        # cases where float64 x / fl(step) lands on the wrong side (found by enumeration)
        (Fraction(3, 11), -136.5, "half_even", -500),
        (Fraction(3, 11), -279.0, "floor", -1023),
        (Fraction(7, 3), -73.5, "half_away", -32),
    ],
)
def test_float_noise_does_not_decide_ties(step, x, rounding, expected):
    fmt = tq.FixedPoint(bits=16, step=step, rounding=rounding)
    q = tq.FakeQuantize(fmt)
    assert fmt.round_tensor(torch.tensor([x], dtype=torch.float64) / float(step)).item() != expected
    assert q.exact_codes(torch.tensor([x], dtype=torch.float64)).item() == expected


def test_round_certified_uses_exact_fallback_only_near_boundaries():
    fmt = tq.FixedPoint(bits=8)
    calls = []

    def exact(idx):
        calls.extend(idx)
        return [7 for _ in idx]

    t = torch.tensor([0.2, 0.5, 1.7], dtype=torch.float64)
    out = round_certified(fmt, t, torch.full_like(t, 1e-9), exact)
    assert calls == [1] and out.tolist() == [0.0, 7.0, 2.0]
    with pytest.raises(tq.QuantizationError, match="NaN"):
        round_certified(fmt, torch.tensor([float("nan")]), 0.0, exact, "layer")


def test_saturation_and_raise():
    sat = tq.FixedPoint(bits=3)
    assert sat.saturate_exact(9) == 3 and sat.saturate_exact(-9) == -3
    raising = tq.FixedPoint(bits=3, overflow="raise")
    with pytest.raises(tq.OverflowToGridError, match="outside"):
        raising.saturate_exact(4, where="fc1")
    q = tq.FakeQuantize(tq.FixedPoint(bits=3, step=1, overflow="raise"), name="fc1.out")
    with pytest.raises(tq.OverflowToGridError, match=r"fc1\.out"):
        q.exact_codes(torch.tensor([3.6]))
    assert q.exact_codes(torch.tensor([3.4])).item() == 3


@pytest.mark.parametrize("bits", [0, 33, -1, 2.5, True])
def test_bits_out_of_range(bits):
    with pytest.raises(tq.QuantizationError, match="bits"):
        tq.FixedPoint(bits=bits)


@pytest.mark.parametrize("step", [0, -0.5, float("nan"), float("inf"), "abc", Fraction(-1, 3)])
def test_bad_steps(step):
    with pytest.raises(tq.QuantizationError, match="step"):
        tq.FixedPoint(bits=4, step=step)


def test_single_level_grid_points_to_binary():
    with pytest.raises(tq.QuantizationError, match="Binary"):
        tq.FixedPoint(bits=1)
    assert tq.FixedPoint(bits=1, signed=False).levels() == [0, 1]


def test_other_validation():
    with pytest.raises(tq.QuantizationError, match="rounding"):
        tq.FixedPoint(rounding="up")
    with pytest.raises(tq.QuantizationError, match="overflow"):
        tq.FixedPoint(overflow="wrap")
    with pytest.raises(tq.QuantizationError, match="zero_point"):
        tq.FixedPoint(bits=4, signed=False, zero_point=99)
    with pytest.raises(tq.QuantizationError, match="frac_bits"):
        tq.FixedPoint(step=0.5, frac_bits=2)


def test_steps_are_exact():
    assert as_step(0.25) == Fraction(1, 4)
    assert as_step("1/3") == Fraction(1, 3)
    assert as_step(0.1) != Fraction(1, 10)  # a float is its binary value
    assert tq.FixedPoint(frac_bits=3).fixed_steps() == (Fraction(1, 8),)
    fmt = tq.FixedPoint(bits=4, step=(0.5, "1/3"))
    assert fmt.per_channel and fmt.fixed_steps() == (Fraction(1, 2), Fraction(1, 3))


def test_dict_round_trip():
    fmt = tq.FixedPoint(bits=5, step=Fraction(1, 3), rounding="half_even", overflow="raise")
    d = fmt.to_dict()
    assert d["step"] == "1/3"
    assert tq.FixedPoint.from_dict(d) == fmt
    with pytest.raises(tq.QuantizationError, match="unknown"):
        tq.FixedPoint.from_dict({"bitz": 3})


def test_dequantize_is_correctly_rounded():
    codes = torch.tensor([1.0, 2.0, -7.0, 100.0])
    got = dequantize_f64(codes, [Fraction(1, 3)])
    assert got.tolist() == [1 / 3, 2 / 3, -7 / 3, 100 / 3]
    assert dequantize_f64(codes, [Fraction(1, 4)]).tolist() == [0.25, 0.5, -1.75, 25.0]
    assert math.isclose(
        dequantize_f64(torch.tensor([[1.0], [1.0]]), [Fraction(1), Fraction(1, 3)]).sum().item(), 4 / 3
    )


@given(
    xs=st.lists(st.integers(-4000, 4000), min_size=1, max_size=20),
    bits=st.integers(2, 8),
    frac_bits=st.integers(-2, 6),
    rounding=st.sampled_from(["half_away", "half_even", "floor"]),
    narrow=st.booleans(),
)
def test_fake_quant_saturates_and_passes_gradients_exactly(xs, bits, frac_bits, rounding, narrow):
    """Property: with a power-of-two step the float32 fake quantizer returns the exact saturated
    grid value, and its STE gradient is 1 exactly where x / step rounds into the grid."""
    fmt = tq.FixedPoint(bits=bits, frac_bits=frac_bits, rounding=rounding, narrow=narrow)
    step = fmt.fixed_steps()[0]
    x = torch.tensor([v / 64 for v in xs], dtype=torch.float32, requires_grad=True)
    y = tq.fake_quantize(x, torch.tensor(float(step)), fmt, fmt.qmin, fmt.qmax)
    y.sum().backward()
    for xi, yi, gi in zip(x.tolist(), y.tolist(), x.grad.tolist(), strict=True):
        k = fmt.round_exact(Fraction(xi) / step)
        assert Fraction(yi) == fmt.saturate_exact(k) * step
        assert gi == (1.0 if fmt.qmin <= k <= fmt.qmax else 0.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rounding", ["half_away", "half_even", "floor"])
def test_round_tensor_is_round_exact_on_ties_and_their_neighbours(dtype, rounding):
    """Every tensor rounding equals the exact rational rounding of the float it is given: at the
    ties j + 1/2 and one ulp either side, over every magnitude of the dtype, both signs."""
    fmt = tq.FixedPoint(bits=8, rounding=rounding)
    info = torch.finfo(dtype)
    ties = [j + 0.5 for j in range(0, 40)] + [2.0**e + 0.5 for e in range(5, info.bits)]
    base = torch.tensor(ties + [2.0**e for e in range(-30, info.bits + 2)], dtype=torch.float64).to(dtype)
    near = torch.cat([base, torch.nextafter(base, base * 0), torch.nextafter(base, base * 4)])
    near = near[torch.isfinite(near)]  # float16 ends at 65504
    t = torch.cat([near, -near, torch.zeros(1, dtype=dtype)])
    got = fmt.round_tensor(t)
    assert got.dtype == dtype
    for value, k in zip(t.tolist(), got.tolist(), strict=True):
        assert k == fmt.round_exact(Fraction(value)), (value, k)
