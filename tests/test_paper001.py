"""Park, Park & Hwang, "On expressive power of quantized neural networks under fixed-point arithmetic",
section 4.1: naive rounding of real weights flips the network's outputs."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

import torchqv as tq


def section_4_1_network(s: int) -> tuple[nn.Sequential, list[list[Fraction]]]:
    """f(x) = 2 ReLU(w1.x) + ReLU(w2.x) - 3 ReLU(w3.x) - 2 ReLU(w4.x) on R^(4s+1), written as a
    two-layer network with 8 hidden neurons (the repeated sums of the paper)."""
    d = 4 * s + 1

    def row(first: int, value: Fraction, count: int) -> list[Fraction]:
        return [Fraction(first)] + [value] * count + [Fraction(0)] * (d - 1 - count)

    w1 = row(1, Fraction(-1, 4 * s), 2 * s)
    w2 = row(-1, Fraction(1, 4 * s), 4 * s)
    w3 = row(-1, Fraction(1, 2 * s), 2 * s)
    w4 = row(-1, Fraction(1, 2 * s), s)
    rows = [w1, w1, w2, w3, w3, w3, w4, w4]
    hidden = nn.Linear(d, 8, bias=False, dtype=torch.float64)
    out = nn.Linear(8, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        hidden.weight.copy_(torch.tensor([[float(v) for v in r] for r in rows], dtype=torch.float64))
        out.weight.copy_(torch.tensor([[1.0, 1, 1, -1, -1, -1, -1, -1]]))
    return nn.Sequential(hidden, nn.ReLU(), out), rows


def q_ps(p: int, s: int) -> tq.FixedPoint:
    return tq.FixedPoint(bits=p + 1, step=Fraction(1, s))


@pytest.mark.parametrize("s", [1, 2, 3, 4, 5, 8])
def test_naive_quantization_flips_outputs(s):
    p = max(2, math.ceil(math.log2(s + 1)))  # s <= 2^p - 1
    model, rows = section_4_1_network(s)
    ones = torch.ones(1, 4 * s + 1, dtype=torch.float64)
    # the real network: exact for dyadic s, within float rounding otherwise
    assert model(ones).item() == pytest.approx(1.0, abs=1e-12)
    assert model(-ones).item() == pytest.approx(-1.0, abs=1e-12)

    fmt = q_ps(p, s)
    step = Fraction(1, s)
    # naive quantization of the *real* weights (exact rationals; 1/(2s) is a tie -> 1/s)
    naive = [[fmt.quantize_exact(v, step) * step for v in r] for r in rows]
    assert naive[0][:2] == [1, 0] and naive[3][:2] == [-1, Fraction(1, s)]
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[float(v) for v in r] for r in naive], dtype=torch.float64))
    qm = tq.quantize(model.float(), tq.QConfig(weight=fmt, activation=fmt, input=fmt))
    qm.eval()
    y = qm(torch.cat([ones, -ones]).float())
    assert y.flatten().tolist() == [-1.0, 1.0]
    assert torch.equal(y, tq.reference_forward(qm, torch.cat([ones, -ones]).float()))
    # the quantized weights are exactly the naive ones (codes recovered from the floats)
    codes = qm[0].weight_codes()
    assert [[int(k) * step for k in r] for r in codes.tolist()] == naive


@pytest.mark.parametrize("s", [1, 2, 4, 8])
def test_quantize_real_weights_directly_for_dyadic_s(s):
    """For dyadic s the float weights are the real ones: tq.quantize reproduces section 4.1."""
    p = max(2, math.ceil(math.log2(s + 1)))
    model, _ = section_4_1_network(s)
    fmt = q_ps(p, s)
    qm = tq.quantize(model, tq.QConfig(weight=fmt, activation=fmt, input=fmt)).eval()
    x = torch.stack([torch.ones(4 * s + 1), -torch.ones(4 * s + 1)]).double()
    assert model(x).flatten().tolist() == [1.0, -1.0]
    assert qm(x).flatten().tolist() == [-1.0, 1.0]
