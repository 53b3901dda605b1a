"""Mixed-integer linear encoding of f and f' on a region, and certified LP bounds.

The same networks the z3 encoding describes, as a MILP: every rounding is an integer code ``k``
with ``e_lo * s <= z - s k <= e_hi * s`` (``Rounding.error_bounds``: ``|e| <= 1/2`` for nearest,
``[0, 1]`` for floor; a closed band, so a tie allows both neighbours: a relaxation, which is
sound for proofs) tightened by the two facets of the staircase's convex hull next to the ends
of the input interval (``k <= k_lo + (z - lo) / d``, and its mirror image at ``hi``: without
them the relaxation of a rounding whose input spans few cells is a loose band), and every
piecewise-linear function is written with ReLUs
(``clamp(t, a, b) = a + relu(t - a) - relu(t - b)``, ``leaky(t) = s t + (1 - s) relu(t)``); a
ReLU whose input interval ``[l, u]`` straddles 0 gets a binary ``d`` with ``y >= t``,
``y <= t - l (1 - d)``, ``y <= u d``, ``y >= 0``.  Only the cone of influence of the queried
outputs is built, with the bounds of ``bounds.Crown`` (so stable ReLUs and constant roundings
need no variable).

Dropping integrality gives the LP relaxation.  ``certified_lower`` turns any (approximate) LP
dual into a *rigorous* lower bound of the relaxation (Neumaier and Shcherbina, "Safe bounds in
linear and mixed-integer programming", Math. Prog. 2004), evaluated with a float64 error term.
Row and variable bounds are rounded outwards when built, so the float model contains the exact
one (weights enter as the doubles they are; the error term covers the rest).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import scipy.sparse as sp

from ..errors import UnsupportedModelError
from .bounds import LayerBounds
from .encode import BuildTimeout
from .network import Affine, Chain, Rounding, cone, constants, rounding_at
from .region import down, up

U = 2.0**-53


class InexactModel(Exception):
    """The chain's numbers are not all doubles, so the float LP would not be the exact model."""


@dataclass
class Lin:
    """A linear expression ``sum coefs[v] * x_v + const`` with exact rational numbers (they become
    doubles once, when the matrices are built: the certificate covers that rounding)."""

    coefs: dict[int, Fraction] = field(default_factory=dict)
    const: Fraction = Fraction(0)

    def scaled(self, a: Fraction) -> Lin:
        return Lin({v: a * w for v, w in self.coefs.items()}, a * self.const)

    @staticmethod
    def combination(weights: list[Fraction], terms: list, const: Fraction = Fraction(0)) -> Lin:
        """``sum_j weights[j] * terms[j] + const`` (terms that are ``None`` must have weight 0)."""
        coefs: dict[int, Fraction] = {}
        for w, term in zip(weights, terms, strict=True):
            if w:
                const += w * term.const
                for v, c in term.coefs.items():
                    coefs[v] = coefs.get(v, 0) + w * c
        return Lin(coefs, const)

    @staticmethod
    def sparse(weights: list[tuple[int, Fraction]], terms: list, const: Fraction = Fraction(0)) -> Lin:
        """``sum_j w * terms[j] + const`` over the pairs ``(j, w)``."""
        coefs: dict[int, Fraction] = {}
        for j, w in weights:
            term = terms[j]
            const += w * term.const
            for v, c in term.coefs.items():
                coefs[v] = coefs.get(v, 0) + w * c
        return Lin(coefs, const)

    def plus(self, other: Lin, a: Fraction | int = 1) -> Lin:
        coefs = dict(self.coefs)
        for v, w in other.coefs.items():
            coefs[v] = coefs.get(v, 0) + a * w
        return Lin(coefs, self.const + a * other.const)


@dataclass
class Model:
    """Variables with bounds and integrality; rows ``lo <= expression <= hi``."""

    lb: list[float] = field(default_factory=list)
    ub: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    rows: list[tuple[dict[int, Fraction], float, float]] = field(default_factory=list)
    binaries: list[int] = field(default_factory=list)  # the ReLU phase variables
    deadline: float = math.inf  # building past it raises BuildTimeout

    def var(self, lb: float, ub: float, integer: bool = False) -> int:
        self.lb.append(lb)
        self.ub.append(ub)
        self.integer.append(integer)
        return len(self.lb) - 1

    def row(self, e: Lin, lo: Fraction | float, hi: Fraction | float) -> None:
        """``lo <= e <= hi`` (the constant moves to the bounds, rounded outwards)."""
        c = Fraction(e.const)
        lo = down(Fraction(lo) - c) if lo > -np.inf else -np.inf
        hi = up(Fraction(hi) - c) if hi < np.inf else np.inf
        self.rows.append((e.coefs, lo, hi))

    def matrices(self, start: int = 0) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """``(A, lo, hi)`` of the rows from ``start`` on (the Fractions become doubles here)."""
        rows = self.rows[start:]
        data, ri, ci = [], [], []
        for r, (coefs, _, _) in enumerate(rows):
            ri += [r] * len(coefs)
            ci += list(coefs)
            data += [float(c) for c in coefs.values()]
        A = sp.csr_matrix((data, (ri, ci)), shape=(len(rows), len(self.lb)))
        return A, np.array([r[1] for r in rows]), np.array([r[2] for r in rows])

    # ----------------------------------------------------------------- building blocks
    def named(self, t: Lin, lo: float, hi: float) -> Lin:
        """``t`` itself, or a new variable ``z`` in ``[lo, hi]`` with the row ``z = t`` when ``t``
        has more than two terms and finite bounds (which must hold for every value of ``t``)."""
        if len(t.coefs) <= 2 or not (math.isfinite(lo) and math.isfinite(hi)):
            return t
        z = self.var(float(lo), float(hi))
        self.row(Lin({z: Fraction(1)}).plus(t, -1), 0.0, 0.0)  # z - t = 0 (constant to the bounds)
        return Lin({z: Fraction(1)})

    def relu(self, t: Lin, lo: float, hi: float) -> Lin:
        """``max(t, 0)`` for ``lo <= t <= hi``."""
        if lo >= 0:
            return t
        if hi <= 0:
            return Lin()
        y, d = self.var(0.0, up(hi)), self.var(0.0, 1.0, integer=True)
        self.binaries.append(d)
        one, lo_, hi_ = Fraction(1), Fraction(lo), Fraction(hi)
        self.row(Lin({y: one}).plus(t, -1), 0.0, np.inf)  # y >= t
        self.row(Lin({y: one, d: -lo_}).plus(t, -1), -np.inf, -lo_)  # y <= t - lo (1 - d)
        self.row(Lin({y: one, d: -hi_}), -np.inf, 0.0)  # y <= hi d
        return Lin({y: one})

    def clamp(
        self, t: Lin, lo: float | Fraction, hi: float | Fraction, a: Fraction | float, b: Fraction | float
    ) -> Lin:
        """``min(max(t, a), b)`` for ``lo <= t <= hi`` (a hardtanh, or saturation)."""
        a, b = Fraction(a), Fraction(b)
        low = self.relu(t.plus(Lin(const=-a)), down(lo - a), up(hi - a))
        high = self.relu(t.plus(Lin(const=-b)), down(lo - b), up(hi - b))
        return Lin(const=a).plus(low).plus(high, -1)

    def rounding(self, r: Rounding, t: Lin, lo: float | Fraction, hi: float | Fraction) -> Lin:
        """``r.apply(t)`` for ``lo <= t <= hi``: saturation as a clamp, then an integer code."""
        s = r.step
        kmin, kmax = r.code_range
        if r.fmt.binary:  # two levels: -s below the threshold, +s from it on
            thr = (1 if r.fmt.rounding == "floor" else 0) * s
            d = self.var(0.0, 1.0, integer=True)
            self.binaries.append(d)
            self.row(t.plus(Lin({d: -(Fraction(hi) - thr)})), -np.inf, thr)  # d = 0 -> t <= thr
            self.row(t.plus(Lin({d: -(thr - Fraction(lo))})), lo, np.inf)  # d = 1 -> t >= thr
            return Lin({d: 2 * s}, -s)
        a, b = kmin * s, kmax * s
        if lo < a or hi > b:  # saturation: round(clamp(t)) equals clamp(round(t)) on the grid
            t = self.clamp(t, lo, hi, a, b)
            lo, hi = min(max(lo, a), b), min(max(hi, a), b)
        if r.exact_on_input:
            return t
        e_lo, e_hi = r.error_bounds()  # code k covers z in [s (k - e_hi), s (k - e_lo)]
        lo_, hi_ = Fraction(lo), Fraction(hi)
        k_lo = max(kmin, math.ceil(lo_ / s + e_lo))  # the smallest code of some z >= lo
        k_hi = min(kmax, math.floor(hi_ / s + e_hi))  # the largest code of some z <= hi
        k = self.var(float(k_lo), float(k_hi), integer=True)
        self.row(t.plus(Lin({k: -s})), -e_hi * s, -e_lo * s)  # z - s k
        if k_hi > k_lo:  # the two facets of the staircase's convex hull next to its ends
            first = min(s * (k_lo + 1 - e_hi) - lo_, s)  # k <= k_lo + (z - lo) / first
            if first > 0:
                self.row(Lin({k: first}).plus(t, -1), -np.inf, k_lo * first - lo_)
            last = min(hi_ - s * (k_hi - 1 - e_lo), s)  # k >= k_hi - (hi - z) / last
            if last > 0:
                self.row(Lin({k: last}).plus(t, -1), k_hi * last - hi_, np.inf)
        return Lin({k: s})

    # ----------------------------------------------------------------- networks
    def network(
        self,
        chain: Chain,
        x: list[Lin],
        bounds: list[LayerBounds],
        in_lo: list[float],
        in_hi: list[float],
        outputs: list[int],
        fixed: list[Fraction | None] | None = None,
        const: list[list[Fraction | None]] | None = None,
    ) -> list[Lin | None]:
        """The chain's requested outputs as expressions (cone of influence only; ``fixed``: the
        exact values of the inputs the region fixes; ``const``: ``network.constants``, if known).
        An affine neuron with more than two terms gets a variable of its own (bounded by its
        pre-activation bounds), so the rows of its activation and rounding stay short."""
        if not chain.floats_exact:
            raise InexactModel("a weight, bias or step is not a double (e.g. step 1/3): no LP model")
        if const is None:
            const = constants(chain, bounds, in_lo, in_hi, fixed)
        need = cone(chain, const, outputs)
        v: list = list(x)
        prev_lo, prev_hi = list(in_lo), list(in_hi)
        for li, (layer, lb) in enumerate(zip(chain.layers, bounds, strict=True)):
            out: list = []
            for i in range(len(lb.lo)):
                c = const[li][i]
                if c is not None:
                    out.append(Lin(const=c))
                elif i not in need[li]:
                    out.append(None)
                else:
                    if isinstance(layer, Affine):
                        t = self.named(Lin.sparse(layer.row(i), v, layer.b[i]), lb.pre_lo[i], lb.pre_hi[i])
                    else:
                        t = self.activation(layer.at(i), v[i], prev_lo[i], prev_hi[i])
                    r = rounding_at(layer, i)
                    if r is not None:
                        t = self.rounding(r, t, lb.pre_lo[i], lb.pre_hi[i])
                    if time.perf_counter() > self.deadline:
                        raise BuildTimeout
                    out.append(t)
            v = out
            prev_lo, prev_hi = lb.lo.tolist(), lb.hi.tolist()
        return v

    def activation(self, act, t: Lin, lo: float, hi: float) -> Lin:
        if act.name == "identity":
            return t
        if act.name == "relu":
            return self.relu(t, lo, hi)
        if act.name == "leaky_relu":
            a = act.param("negative_slope")
            return t.scaled(Fraction(a)).plus(self.relu(t, lo, hi), 1 - Fraction(a))
        if act.name == "hardtanh":
            return self.clamp(t, lo, hi, act.param("min_val"), act.param("max_val"))
        raise UnsupportedModelError(f"no MILP encoding for {act.name}")


def certified_lower(
    c: np.ndarray, A: sp.csr_matrix, b: np.ndarray, lb: np.ndarray, ub: np.ndarray, y: np.ndarray
) -> float:
    """A rigorous lower bound of ``min c.v`` over ``A v <= b``, ``lb <= v <= ub`` (finite bounds)
    from any multipliers ``y <= 0`` of the rows: for every feasible ``v``,
    ``c.v = y.(A v) + r.v >= y.b + sum_i min(r_i lb_i, r_i ub_i)`` with ``r = c - A^T y``.  The
    float64 evaluation error (of ``r`` and both sums) is below ``gamma_{n+2}`` times the same sums
    of absolute values; four times that is subtracted, plus ``2 u`` times the ``|y|.|A||v|`` sum
    for the entries of ``A`` themselves: the exact model's coefficients (an input step such as
    ``1/5``, a hull facet's slope) are within a relative ``u`` of the doubles in ``A``, so a point
    feasible for the exact rows satisfies ``y.(A v) >= y.b`` up to that term."""
    y = np.minimum(y, 0.0)
    r = c - A.T @ y
    value = y @ b + np.minimum(r * lb, r * ub).sum()
    size = np.maximum(np.abs(lb), np.abs(ub))
    err = 4 * (max(A.shape) + 2) * U * ((np.abs(c) + abs(A).T @ np.abs(y)) @ size + np.abs(y) @ np.abs(b))
    err = err + 2 * U * ((abs(A).T @ np.abs(y)) @ size)  # the doubles of A vs the exact coefficients
    return float(value - err - 1e-300)
