"""Hostile input to the formats and QConfig: every bad value is a QuantizationError that names the
argument and the fix (issue 17, item 8: Ternary(signed=False) silently gave four levels)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

import torchqv as tq


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: tq.Ternary(signed=False),
            r"Ternary is the grid \{-1, 0, \+1\}.*'signed': False.*FixedPoint\(bits=\.\.\.",
        ),
        (lambda: tq.Ternary(narrow=False), r"Ternary.*'narrow': False.*FixedPoint"),
        (lambda: tq.Ternary(bits=3), r"Ternary.*'bits': 3"),
        (lambda: tq.Binary(bits=2), r"Binary is the grid \{-1, \+1\}.*'bits': 2"),
        (lambda: tq.Binary(signed=False), r"Binary.*'signed': False"),
        (
            lambda: tq.FixedPoint(bits=1, binary=True, signed=False),
            r"signed=False.*do not apply.*signed=False",
        ),
        (lambda: tq.FixedPoint(bits=1, binary=True, narrow=False), r"narrow=False do not apply"),
        (lambda: tq.FixedPoint(signed="no"), r"signed must be True or False, got 'no'"),
        (lambda: tq.FixedPoint(per_channel=1), r"per_channel must be True or False, got 1"),
        (lambda: tq.FixedPoint(power_of_two="yes"), r"power_of_two must be True or False"),
        (lambda: tq.FixedPoint(frac_bits=True), r"frac_bits must be an int in \[-62, 62\], got True"),
        (lambda: tq.FixedPoint(bits=8.0), r"bits must be an int, got 8.0"),
        (lambda: tq.FixedPoint(bits=0), r"bits must be in \[1, 32\], got 0"),
        (lambda: tq.FixedPoint(step=math.nan), r"step must be finite and positive, got nan"),
        (lambda: tq.FixedPoint(step=-0.5), r"step must be positive, got -0.5"),
        (lambda: tq.FixedPoint(step="1/0"), r"step must be a positive number or 'p/q' string"),
        (lambda: tq.FixedPoint(step=(0.5, 0)), r"step must be positive, got 0"),
        (lambda: tq.FixedPoint(rounding="nearest"), r"rounding must be one of"),
        (lambda: tq.FixedPoint(overflow="wrap"), r"overflow must be one of"),
        (lambda: tq.FixedPoint(bits=4, zero_point=9), r"zero_point=9 lies outside the code range"),
        (lambda: tq.FixedPoint(bits=1), r"single level 0; use tq.Binary"),
        (lambda: tq.FixedPoint.from_dict({"bitz": 4}), r"unknown FixedPoint field\(s\) \['bitz'\]"),
    ],
)
def test_bad_formats_name_the_argument_and_the_fix(make, message):
    with pytest.raises(tq.QuantizationError, match=message):
        make()


def test_named_grids_keep_their_levels_and_accept_their_own_values():
    assert tq.Ternary(signed=True, narrow=True, per_channel=True).levels() == [-1, 0, 1]
    assert tq.Ternary(step=Fraction(1, 3)).fixed_steps() == (Fraction(1, 3),)
    assert tq.Binary(bits=1, rounding="floor").levels() == [-1, 1]
    assert tq.FixedPoint(bits=2, signed=False).levels() == [0, 1, 2, 3]  # the grid the error points to


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight": 8}, r"QConfig.weight must be a FixedPoint or None, got 8"),
        (
            {"weight": tq.FixedPoint(bits=8, zero_point=None)},
            r"weight formats are symmetric: give zero_point=0",
        ),
        ({"activation": tq.FixedPoint(bits=8, per_channel=True)}, r"QConfig.activation: per-channel"),
        ({"weight_observer": "maxmin"}, r"observer kind must be one of"),
        ({"input": {"bits": 8, "signd": False}}, r"unknown FixedPoint field\(s\) \['signd'\]"),
    ],
)
def test_bad_qconfigs(kwargs, message):
    with pytest.raises(tq.QuantizationError, match=message):
        tq.QConfig(**kwargs)
