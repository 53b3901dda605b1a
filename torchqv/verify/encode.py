"""z3 encodings: the float network over exact rationals, the quantized one with exact roundings.

A rounding ``q = round(u)`` of ``u = t / step`` becomes an integer variable ``k`` with the
format's rule (paper 001's ties away from zero, ties to even, floor; binary is a sign), then
saturation to ``[kmin, kmax]``; its value is ``q * step``.  Interval bounds fix what they decide:
a rounding whose interval falls in one cell is a constant and a piecewise-linear activation whose
input is on one side of a kink is linear.  Relations (paper 003, Definitions 2.4.1-2.4.3) are
encoded as their negation, so ``unsat`` proves equivalence.  The top-1 tie rule is the one of
``torch.argmax``: the first index of the maximum.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction

import z3

from .bounds import LayerBounds
from .network import Act, Affine, Chain, Rounding


def rv(x: Fraction | int | float) -> z3.ArithRef:
    x = Fraction(x)
    return z3.RealVal(f"{x.numerator}/{x.denominator}")


class BuildTimeout(Exception):
    """Building the formula alone took longer than the query's time budget."""


class Encoder:
    def __init__(self, solver: z3.Solver, deadline: float = math.inf):
        self.s = solver
        self.fixed = 0
        self.total = 0
        self._n = 0
        self.deadline = deadline

    def fresh(self, kind: str) -> str:
        self._n += 1
        return f"{kind}{self._n}"

    # ----------------------------------------------------------- rounding
    def rounding(self, r: Rounding, t: z3.ArithRef, lo: float, hi: float) -> z3.ArithRef:
        """``r.apply(t)`` for ``lo <= t <= hi`` (bounds from ``bounds.propagate``)."""
        self.total += 1
        if math.isfinite(lo) and math.isfinite(hi) and r.apply(Fraction(lo)) == r.apply(Fraction(hi)):
            self.fixed += 1  # monotone: the whole interval rounds to one value
            return rv(r.apply(Fraction(lo)))
        fmt, step = r.fmt, r.step
        u = t / rv(step)
        kmin, kmax = r.code_range
        if fmt.binary:
            thr = 1 if fmt.rounding == "floor" else 0
            return z3.If(u >= thr, rv(step), rv(-step))
        k = z3.Int(self.fresh("k"))
        ku = z3.ToReal(k)
        half = rv(Fraction(1, 2))
        if fmt.rounding == "floor":
            self.s.add(ku <= u, u < ku + 1)
        elif fmt.rounding == "half_away":
            self.s.add(
                z3.If(
                    u >= 0,
                    z3.And(ku <= u + half, u + half < ku + 1),
                    z3.And(ku - 1 < u - half, u - half <= ku),
                )
            )
        else:  # half_even
            self.s.add(ku - half <= u, u <= ku + half)
            even = k % 2 == 0
            self.s.add(z3.Implies(u == ku + half, even), z3.Implies(u == ku - half, even))
        q = z3.If(k < kmin, kmin, z3.If(k > kmax, kmax, k))
        return z3.ToReal(q) * rv(step)

    # ---------------------------------------------------------- activations
    def act(self, layer: Act, t: z3.ArithRef, lo: float, hi: float) -> z3.ArithRef:
        a = layer.act
        self.total += 1
        if a.name == "identity":
            self.fixed += 1
            return t
        if a.name in ("relu", "leaky_relu"):
            slope = rv(Fraction(a.param("negative_slope"))) if a.name == "leaky_relu" else rv(0)
            if lo >= 0:
                self.fixed += 1
                return t
            if hi <= 0:
                self.fixed += 1
                return slope * t
            return z3.If(t >= 0, t, slope * t)
        if a.name == "hardtanh":
            mn, mx = a.param("min_val"), a.param("max_val")
            if mn <= lo and hi <= mx:
                self.fixed += 1
                return t
            if hi <= mn or lo >= mx:
                self.fixed += 1
                return rv(Fraction(mn if hi <= mn else mx))
            return z3.If(
                t <= rv(Fraction(mn)), rv(Fraction(mn)), z3.If(t >= rv(Fraction(mx)), rv(Fraction(mx)), t)
            )
        raise ValueError(f"no z3 encoding for {a.name}")

    # ---------------------------------------------------------------- nets
    def network(
        self,
        chain: Chain,
        x: list[z3.ArithRef],
        bounds: list[LayerBounds],
        in_lo: list[float],
        in_hi: list[float],
    ) -> list[z3.ArithRef]:
        v = list(x)
        prev_lo, prev_hi = list(in_lo), list(in_hi)
        for layer, lb in zip(chain.layers, bounds, strict=True):
            if isinstance(layer, Affine):
                v = [
                    z3.Sum([rv(w) * xi for w, xi in zip(row, v, strict=True) if w != 0] + [rv(b)])
                    for row, b in zip(layer.W, layer.b, strict=True)
                ]
            else:
                v = [self.act(layer, t, lo, hi) for t, lo, hi in zip(v, prev_lo, prev_hi, strict=True)]
            if layer.out is not None:
                v = [
                    self.rounding(layer.out, t, lo, hi)
                    for t, lo, hi in zip(v, lb.pre_lo, lb.pre_hi, strict=True)
                ]
            v = [self._name(t) for t in v]
            if time.perf_counter() > self.deadline:
                raise BuildTimeout
            prev_lo, prev_hi = lb.lo.tolist(), lb.hi.tolist()
        return v

    def _name(self, t: z3.ArithRef) -> z3.ArithRef:
        """Give each neuron a variable (keeps the formula a DAG instead of a huge tree)."""
        if z3.is_rational_value(t):
            return t
        y = z3.Real(self.fresh("y"))
        self.s.add(y == t)
        return y


def argmax_is(y: list[z3.ArithRef], i: int) -> z3.BoolRef:
    """``torch.argmax(y) == i``: ``y_i`` beats every earlier entry and ties no later one."""
    return z3.And([y[i] > y[k] for k in range(i)] + [y[i] >= y[k] for k in range(i + 1, len(y))])


def violation(
    relation: str,
    y: list[z3.ArithRef],
    yq: list[z3.ArithRef],
    eps: Fraction | None,
    norm: str,
    classes: tuple[list[int], list[int]] | None = None,
) -> z3.BoolRef:
    """The negation of ``y ~ yq`` under ``relation``; for top-1, ``classes`` restricts the pairs to
    the classes that can be the argmax of each network (from bounds)."""
    if relation == "strict":
        return z3.Or([a != b for a, b in zip(y, yq, strict=True)])
    if relation == "top1":
        cf, cq = classes if classes is not None else (range(len(y)), range(len(yq)))
        return z3.Or([z3.And(argmax_is(y, i), argmax_is(yq, j)) for i in cf for j in cq if i != j])
    e = rv(eps)
    if norm == "inf":
        return z3.Or([z3.Or(a - b > e, b - a > e) for a, b in zip(y, yq, strict=True)])
    return z3.Sum([z3.If(a >= b, a - b, b - a) for a, b in zip(y, yq, strict=True)]) > e
