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
from torchqv.verify.network import Chain, Rounding, quant_chain


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


def _ambiguous(r: Rounding, z: Fraction) -> bool:
    """Does ``z`` (saturated) lie in the closed cells of two codes (a relaxed tie)?"""
    kmin, kmax = r.code_range
    z = min(max(z, kmin * r.step), kmax * r.step)
    e_lo, e_hi = r.error_bounds()
    return -((-(z / r.step + e_lo)) // 1) < (z / r.step + e_hi) // 1


@given(
    rounding=st.sampled_from(["half_away", "half_even", "floor"]),
    bits=st.integers(2, 5),
    q=st.sampled_from([None, 1, 2, 3, 4, 5]),
    ends=st.tuples(st.integers(-160, 160), st.integers(-160, 160)),
)
@settings(max_examples=120, deadline=None)
def test_rounding_rows_admit_every_point_and_pin_the_ends(rounding, bits, q, ends):
    """A rounding's MILP rows (band, saturation, the hull facets next to both ends) admit every
    input of ``[lo, hi]`` (on the ``in_step`` grid when there is one) with its true rounded value,
    and their LP relaxation gives exactly the rounded value at both ends when they are grid
    points and not relaxed ties: the facets cut the band down to the staircase's convex hull."""
    step = Fraction(q or 2, 8)
    fmt = tq.FixedPoint(bits=bits, rounding=rounding, step=step)
    r = Rounding(fmt, step, 0, None if q is None else step / q)
    grid = r.in_step or Fraction(1, 32)
    lo, hi = (Fraction(e, 64) for e in sorted(ends))  # on the grid or not
    model = Model()
    z = model.var(float(lo), float(hi))
    out = model.rounding(r, Lin({z: Fraction(1)}), float(lo), float(hi))
    A, row_lo, row_hi = model.matrices()
    n = len(model.lb)

    def pinned(value: Fraction, integral: bool) -> list:
        """min and max of the output with z = value (MILP or LP)."""
        lb, ub = list(model.lb), list(model.ub)
        lb[z] = ub[z] = float(value)
        found = []
        for sign in (1.0, -1.0):
            c = np.zeros(n)
            for v, w in out.coefs.items():
                c[v] = sign * float(w)
            res = milp(
                c,
                integrality=np.array(model.integer, dtype=int) if integral else None,
                bounds=Bounds(lb, ub),
                constraints=LinearConstraint(A, row_lo, row_hi) if len(row_lo) else (),
            )
            assert res.status == 0, f"infeasible at z = {value}"
            found.append(Fraction(sign * res.fun) + out.const)
        return found

    tol = Fraction(1, 10**9)
    first, last = -((-lo) // grid), hi // grid  # the grid points in [lo, hi]
    points = [grid * k for k in range(first, last + 1)]
    for point in points[:: max(1, len(points) // 12)] + points[-1:]:
        low, high = pinned(point, integral=True)
        assert low - tol <= r.apply(point) <= high + tol
    for end in (lo, hi):
        if end in points[:1] + points[-1:] and not _ambiguous(r, end):
            low, high = pinned(end, integral=False)
            assert abs(low - r.apply(end)) <= tol and abs(high - r.apply(end)) <= tol
