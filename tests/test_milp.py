"""The MILP encoding and the certified LP bounds behind the LP branch and bound."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from torch import nn

import torchqv as tq
from torchqv.verify.bounds import Crown
from torchqv.verify.milp import Lin, Model, certified_lower
from torchqv.verify.network import Chain, quant_chain


@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 5),
    m=st.integers(1, 6),
)
@settings(max_examples=80)
def test_certified_bound_is_below_every_feasible_point(seed, n, m):
    """Any multipliers y <= 0 give a bound below c.v for every feasible v (checked exactly)."""
    rng = np.random.default_rng(seed)
    A = rng.integers(-4, 5, (m, n)).astype(float)
    lb, ub = rng.integers(-3, 1, n).astype(float), rng.integers(1, 4, n).astype(float)
    v0 = rng.uniform(lb, ub)
    b = A @ v0 + rng.uniform(0, 2, m)  # v0 is feasible
    c = rng.normal(size=n)
    As = sp.csr_matrix(A)
    res = linprog(c, A_ub=A, b_ub=b, bounds=np.column_stack([lb, ub]), method="highs")
    duals = [np.minimum(res.ineqlin.marginals, 0.0), -rng.exponential(size=m), np.zeros(m)]
    points = [rng.uniform(lb, ub) for _ in range(200)] + [v0, res.x]
    feasible = [
        v
        for v in points
        if all(
            sum(Fraction(a) * Fraction(x) for a, x in zip(row, v, strict=True)) <= Fraction(bi)
            for row, bi in zip(A, b, strict=True)
        )
        and all(Fraction(lo) <= Fraction(x) <= Fraction(hi) for lo, x, hi in zip(lb, v, ub, strict=True))
    ]
    assert feasible
    for y in duals:
        bound = Fraction(certified_lower(c, As, b, lb, ub, y))
        for v in feasible:
            assert bound <= sum(Fraction(ci) * Fraction(x) for ci, x in zip(c, v, strict=True))
    tight = certified_lower(c, As, b, lb, ub, duals[0])
    assert abs(tight - res.fun) <= 1e-6 * (1 + abs(res.fun))  # the optimal dual certifies the optimum


def _tiny_quantized(seed: int, act: nn.Module, rounding: str):
    torch.manual_seed(seed)
    f = nn.Sequential(nn.Linear(3, 5), act, nn.Linear(5, 3))
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=4, rounding=rounding, per_channel=True),
        activation=tq.FixedPoint(bits=5, rounding=rounding),
        input=tq.FixedPoint(bits=5, rounding=rounding),
    )
    fq = tq.quantize(f, cfg)
    tq.calibrate(fq, [torch.randn(128, 3) * 1.5], progress=False)
    return fq.eval()


@given(
    seed=st.integers(0, 10_000),
    act=st.sampled_from([nn.ReLU, lambda: nn.LeakyReLU(0.25), lambda: nn.Hardtanh(-1.0, 1.5), nn.Identity]),
    rounding=st.sampled_from(["half_away", "half_even", "floor"]),
)
@settings(max_examples=40)
def test_milp_outputs_contain_the_reference(seed, act, rounding):
    """With the input pinned to a grid point, every output's MILP range holds the integer
    reference's value (soundness), and is that single value unless a rounding tie is relaxed."""
    fq = _tiny_quantized(seed, act(), rounding)
    chain = quant_chain(fq, 3)
    body = Chain(chain.layers, 3)
    s = chain.inp.step
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randint(-12, 13, (3,), generator=gen) * float(s)).double().numpy()
    crown = Crown(body, x - float(s), x + float(s))  # bounds of a small box around the point
    model = Model()
    xs = [Lin(const=float(v)) for v in x]
    outs = model.network(body, xs, crown.layer_bounds(), list(x - float(s)), list(x + float(s)), [0, 1, 2])
    ref = tq.reference_forward(fq, torch.tensor(x, dtype=torch.float32)[None], exact=True)[0].tolist()
    A, lo, hi = model.matrices()
    for i, out in enumerate(outs):
        values = []
        for sign in (1.0, -1.0):
            c = np.zeros(len(model.lb))
            for v, w in out.coefs.items():
                c[v] = sign * w
            if not out.coefs:
                values.append(Fraction(out.const))
                continue
            res = milp(
                c,
                integrality=np.array(model.integer, dtype=int),
                bounds=Bounds(model.lb, model.ub),
                constraints=LinearConstraint(A, lo, hi),
            )
            assert res.status == 0
            values.append(Fraction(sign * res.fun + out.const))
        low, high = min(values), max(values)
        assert low - Fraction(1, 10**9) <= ref[i] <= high + Fraction(1, 10**9)
