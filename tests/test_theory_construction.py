"""Park, Park & Hwang, "On expressive power of quantized neural networks under fixed-point arithmetic",
Theorem 6 / Lemma 5: the indicator-function network computes f* exactly, checked on
every input with the eval-mode simulation and the integer reference."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import torchqv as tq
from torchqv.formats import QuantizationError
from torchqv.theory.construction import (
    all_inputs,
    build_representing_network,
    decompose,
    lemma20_bound,
    parameter_count,
)


def outputs(qm: nn.Module, p: int, s: int, d: int) -> tuple[list[Fraction], list[Fraction]]:
    """Eval-mode and integer-reference outputs on all of Q_{p,s}^d (exact values)."""
    x = torch.tensor([[float(c) for c in pt] for pt in all_inputs(p, s, d)], dtype=torch.float64)
    ev = [Fraction(round(v * s), s) for v in qm(x).flatten().tolist()]
    ref = [v for v in tq.reference_forward(qm, x, exact=True).flatten().tolist()]
    return ev, ref


def random_table(p: int, s: int, d: int, seed: int, density: float = 1.0) -> dict:
    """Random values; with ``density < 1`` most points map to 0 (fewer indicators, a smaller net)."""
    rng, kmax = random.Random(seed), 2**p - 1
    value = lambda: rng.randint(-kmax, kmax) if rng.random() < density else 0  # noqa: E731
    return {x: Fraction(value(), s) for x in all_inputs(p, s, d)}


CASES = [(1, 1, 2, 1.0), (2, 1, 1, 1.0), (2, 2, 1, 1.0), (2, 3, 1, 1.0), (2, 1, 2, 0.1), (2, 3, 2, 0.05)]


@pytest.mark.parametrize("activation", ["relu", "identity"])
@pytest.mark.parametrize(("p", "s", "d", "density"), CASES)
def test_represents_random_functions_exhaustively(activation, p, s, d, density):
    table = random_table(p, s, d, seed=p * 100 + s * 10 + d, density=density)
    qm = build_representing_network(activation, p, s, table)
    ev, ref = outputs(qm, p, s, d)
    want = [table[x] for x in all_inputs(p, s, d)]
    assert ev == want and ref == want
    assert (
        parameter_count(qm) > 0
        and lemma20_bound(p, s, d) == 2 ** (2 * p) * s**2 * d * (2 ** (p + 1) - 1) ** d
    )


def test_represents_the_non_monotone_bijection_of_theorem_1():
    """The proof of Theorem 1: i/s -> (i+1)/s for odd i != 2^p - 1, (i-1)/s for even i; one affine
    layer cannot represent it, the four-layer ReLU network does."""
    p, s = 2, 3
    kmax = 2**p - 1

    def f(x: tuple[Fraction, ...]) -> Fraction:
        i = int(x[0] * s)
        return Fraction(kmax if i == kmax else (i + 1 if i % 2 else i - 1), s)

    qm = build_representing_network(nn.ReLU(), p, s, f, d=1)
    ev, ref = outputs(qm, p, s, 1)
    want = [f(x) for x in all_inputs(p, s, 1)]
    assert ev == want and ref == want and sorted(want) == [Fraction(k, s) for k in range(-kmax, kmax + 1)]


@pytest.mark.parametrize("activation", [nn.Sigmoid(), nn.Tanh(), nn.Hardtanh(0.0, 1.0), nn.GELU()])
def test_other_universal_activations(activation):
    p, s = 2, 2
    table = random_table(p, s, 1, seed=7)
    qm = build_representing_network(activation, p, s, table)
    ev, ref = outputs(qm, p, s, 1)
    assert ev == ref == [table[x] for x in all_inputs(p, s, 1)]


def test_network_semantics_are_the_papers():
    """Weights in Q_{p,s}, biases in Q_{inf,s}, a rounding after every affine map and activation."""
    p, s = 2, 3
    qm = build_representing_network("relu", p, s, random_table(p, s, 1, seed=3))
    kinds = [type(m).__name__ for m in qm]
    assert kinds == [
        "QuantLinear",
        "QuantAct",
        "QuantLinear",
        "QuantAct",
        "QuantLinear",
        "QuantAct",
        "QuantLinear",
    ]
    fmt = tq.FixedPoint(bits=p + 1, step=Fraction(1, s))
    for m in qm:
        assert m.out_quant.fmt == fmt and m.out_quant.steps() == [Fraction(1, s)]
        if isinstance(m, tq.QuantLinear):
            assert m.weight_quant.fmt == fmt and float(m.weight_codes().abs().max()) <= 2**p - 1
            codes = m.bias_codes([Fraction(1, s * s)] * m.out_features)  # accumulator grid 1/s^2
            assert all(c % s == 0 for c in codes.tolist())  # b in (1/s) Z
    assert qm.input_quant.fmt == fmt


def test_constant_function_is_one_affine_map():
    qm = build_representing_network("relu", 2, 1, lambda x: Fraction(-2), d=2)
    assert len(qm) == 1 and parameter_count(qm) == 1
    ev, ref = outputs(qm, 2, 1, 2)
    assert set(ev) == set(ref) == {-2}


def test_decompose_examples():
    assert decompose(0, [1, 2], 3) == []
    assert decompose(17, [1, 2, 3], 3) == [(3, 3), (2, 3), (1, 2)]
    assert decompose(-8, [4, 6], 7) == [(-1, 6), (1, 4), (-1, 6)]  # -8 = -6 - (6 - 4): Bezout for 2
    with pytest.raises(ValueError, match="not a multiple"):
        decompose(3, [4, 6], 7)


@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=4, unique=True),
    st.integers(1, 9),
    st.integers(-300, 300),
)
def test_decompose_is_a_lattice_decomposition(gaps, kmax, k):
    """Lemma 25: every element of gcd(gaps) Z is a sum of a * g with |a| <= 2^p - 1."""
    total = k * math.gcd(*gaps)
    terms = decompose(total, gaps, kmax)
    assert sum(a * g for a, g in terms) == total
    assert all(0 < abs(a) <= kmax and g in gaps for a, g in terms)


def test_bad_input_is_named():
    with pytest.raises(QuantizationError, match="NOT_UNIVERSAL"):
        build_representing_network(nn.Hardtanh(0.0, 0.1), 2, 1, lambda x: x[0], d=1)  # [sigma] = 0
    with pytest.raises(QuantizationError, match="UNDETERMINED"):
        build_representing_network(nn.Hardtanh(0.0, 1.0), 2, 4, lambda x: x[0], d=1)  # s > 2^p - 1
    with pytest.raises(QuantizationError, match="misses 1 of 7 inputs"):
        build_representing_network("relu", 2, 1, {(Fraction(k),): Fraction(0) for k in range(-3, 3)})
    with pytest.raises(QuantizationError, match="is not in Q_2,1"):
        build_representing_network("relu", 2, 1, lambda x: Fraction(1, 2), d=1)
    with pytest.raises(QuantizationError, match="needs the input dimension"):
        build_representing_network("relu", 2, 1, lambda x: x[0])
    with pytest.raises(QuantizationError, match="torch activation module"):
        build_representing_network("swish", 2, 1, lambda x: x[0], d=1)
