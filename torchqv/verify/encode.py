"""z3 encodings: the float network over exact rationals, the quantized one with exact roundings.

A rounding ``q = round(u)`` of ``u = t / step`` becomes an integer variable ``k`` with the format's rule
(the ties away from zero of Park, Park & Hwang, "On expressive power of quantized neural networks under
fixed-point arithmetic", ties to even, floor; binary is a sign), then saturation to ``[kmin, kmax]``; its
value is ``q * step``.  Bounds fix what they decide: a rounding whose interval falls in one cell is a
constant, one whose input already lies on a finer grid is the identity, and a piecewise-linear activation
whose input is on one side of a kink is linear; only the cone of influence of the queried outputs is
encoded. Relations (Matos Júnior, "An automated method for neural network quantization refinement" (PhD
thesis, UFAM, 2025), Definitions 2.4.1-2.4.3) are encoded as their negation, split into small disjuncts
(``queries``), so ``unsat`` for each proves equivalence. The top-1 tie rule is the one of ``torch.argmax``:
the first index of the maximum."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import z3

from .. import activations as A
from ..errors import UnsupportedModelError
from .bounds import LayerBounds
from .network import Affine, Chain, Rounding, cone, constants, rounding_at


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
        self._ints: dict[int, z3.ArithRef] = {}
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
        kmin, kmax = r.code_range
        finite = math.isfinite(lo) and math.isfinite(hi)
        if r.exact_on_input and finite and kmin * step <= Fraction(lo) <= Fraction(hi) <= kmax * step:
            self.fixed += 1  # the input is on a finer grid inside the range: nothing to round
            return t
        u = t / rv(step)
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
    def act(self, a: A.Activation, t: z3.ArithRef, lo: float, hi: float) -> z3.ArithRef:
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
        raise UnsupportedModelError(f"no z3 encoding for {a.name}")

    # ---------------------------------------------------------------- nets
    def network(
        self,
        chain: Chain,
        x: list[z3.ArithRef],
        bounds: list[LayerBounds],
        in_lo: list[float],
        in_hi: list[float],
        outputs: list[int] | None = None,
        fixed: list[Fraction | None] | None = None,
        const: list[list[Fraction | None]] | None = None,
    ) -> list[z3.ArithRef | None]:
        """The chain's outputs as z3 terms.  Only the cone of influence of ``outputs`` (default:
        all) is encoded: neurons that bounds prove constant are constants, and what feeds only
        constants or unrequested outputs is left out (``None`` in the result).  ``fixed``: the
        exact values of the inputs the region fixes; ``const``: ``network.constants``, if known."""
        if const is None:
            const = constants(chain, bounds, in_lo, in_hi, fixed)
        need = cone(chain, const, range(chain.out_features) if outputs is None else outputs)
        v: list = list(x)
        prev_lo, prev_hi = list(in_lo), list(in_hi)
        for li, (layer, lb) in enumerate(zip(chain.layers, bounds, strict=True)):
            out: list = []
            for i in range(len(lb.lo)):
                c = const[li][i]
                if c is not None:
                    out.append(rv(c))
                    continue
                if i not in need[li]:
                    out.append(None)
                    continue
                if isinstance(layer, Affine):
                    t = self.affine_row(layer, i, v)
                else:
                    t = self.act(layer.at(i), v[i], prev_lo[i], prev_hi[i])
                r = rounding_at(layer, i)
                if r is not None:
                    t = self.rounding(r, t, lb.pre_lo[i], lb.pre_hi[i])
                if time.perf_counter() > self.deadline:
                    raise BuildTimeout
                out.append(self._name(t))
            v = out
            prev_lo, prev_hi = lb.lo.tolist(), lb.hi.tolist()
        return v

    def affine_row(self, layer: Affine, i: int, v: list) -> z3.ArithRef:
        """``sum_j W[i, j] v_j + b_i`` as ``scale_i * sum_j ints[i, j] v_j + b_i`` (integer
        coefficients, each distinct one converted once)."""
        cols, vals = layer.row_items(i)
        terms = [self._int(k) * v[j] for j, k in zip(cols, vals, strict=True)]
        body = z3.Sum(terms) if terms else rv(0)
        return rv(layer.scale[i]) * body + rv(layer.b[i])

    def _int(self, k: int) -> z3.ArithRef:
        if k not in self._ints:
            self._ints[k] = z3.RealVal(k)
        return self._ints[k]

    def _name(self, t: z3.ArithRef) -> z3.ArithRef:
        """Give each neuron a variable (keeps the formula a DAG instead of a huge tree)."""
        if z3.is_rational_value(t):
            return t
        y = z3.Real(self.fresh("y"))
        self.s.add(y == t)
        return y


Form = tuple[dict[int, Fraction], dict[int, Fraction], Fraction]  # sum a_i y_i + sum b_i yq_i + c


def _value(form: Form, y: list, yq: list) -> z3.ArithRef:
    a, b, c = form
    return z3.Sum([rv(w) * y[i] for i, w in a.items()] + [rv(w) * yq[i] for i, w in b.items()] + [rv(c)])


@dataclass
class Query:
    """One disjunct of the negated relation, on the outputs ``f_out`` of f and ``q_out`` of f'.

    Most disjuncts are linear: a linear ``objective`` form is ``<= 0`` (``strict``: the relation
    needs it ``> 0``) or ``< 0``, on the part of the region where every ``given`` form is ``> 0``
    (its flag true) or ``>= 0``; the LP search (``lp_branch``) minimises the objective there.
    The others carry a z3 ``formula``."""

    f_out: list[int]
    q_out: list[int]
    what: str
    objective: Form | None = None
    strict: bool = False
    given: list[tuple[Form, bool]] = field(default_factory=list)
    formula: Callable[[list, list], z3.BoolRef] | None = None

    def violated(self, y: list, yq: list) -> z3.BoolRef:
        """The disjunct as a z3 formula over the outputs."""
        if self.formula is not None:
            return self.formula(y, yq)
        assert self.objective is not None  # a query is a formula or an objective
        value = _value(self.objective, y, yq)
        conditions = [_value(g, y, yq) > 0 if gt else _value(g, y, yq) >= 0 for g, gt in self.given]
        return z3.And([value <= 0 if self.strict else value < 0, *conditions])


def _linear(f_coefs: dict, q_coefs: dict, c: Fraction, strict: bool, what: str, given=()) -> Query:
    f_out = sorted({*f_coefs, *(i for g, _ in given for i in g[0])})
    return Query(f_out, sorted(q_coefs), what, (f_coefs, q_coefs, Fraction(c)), strict, list(given))


def queries(
    relation: str,
    n: int,
    eps: Fraction | None,
    norm: str,
    classes: tuple[list[int], list[int]],
    fixed: tuple[int | None, int | None],
    open_outputs: list[int],
) -> list[Query]:
    """The negation of ``y ~ yq`` (Matos Júnior (2025), Definitions 2.4.1-2.4.3) as a disjunction of small
    queries; ``unsat`` for every one proves the relation.

    ``classes``: the classes that can be the argmax of f and of f' (bounds; the others are below
    some class's lower bound, so they never win); ``fixed``: the class that bounds prove to be
    f's (f''s) argmax everywhere, if any.  Top-1 is violated where f's argmax is ``i`` and some
    ``j != i`` beats ``i`` in f' (``torch.argmax``: an earlier class wins a tie, so ``j < i``
    beats ``i`` when ``yq_j >= yq_i``, a later one when ``yq_j > yq_i``): one query per pair.
    ``open_outputs``: the outputs whose ``|y_i - yq_i|`` bounds do not settle the eps or strict
    relation already."""
    one = Fraction(1)
    if relation == "strict":  # y_i != yq_i: one of y_i - yq_i, yq_i - y_i is < 0
        return [
            _linear({i: s * one}, {i: -s * one}, Fraction(0), False, f"output {i}")
            for i in open_outputs
            for s in (1, -1)
        ]
    if relation == "eps" and norm == "inf":  # |y_i - yq_i| > eps: eps -+ (y_i - yq_i) < 0
        assert eps is not None  # the relation eps has a tolerance
        return [
            _linear({i: -s * one}, {i: s * one}, eps, False, f"output {i}")
            for i in open_outputs
            for s in (1, -1)
        ]
    if relation == "eps":
        assert eps is not None  # the relation eps has a tolerance
        everything = list(range(n))
        return [
            Query(
                everything,
                everything,
                "L1 norm",
                formula=lambda y, q: (
                    z3.Sum([z3.If(a >= b, a - b, b - a) for a, b in zip(y, q, strict=True)]) > rv(eps)
                ),
            )
        ]
    cf, cq = classes
    if fixed[1] is not None and fixed[0] is None:  # f' keeps class c: some j must beat c in f
        c = fixed[1]
        return [_linear({c: one, j: -one}, {}, Fraction(0), j < c, f"f class {j}") for j in cf if j != c]
    out = []
    for i in [fixed[0]] if fixed[0] is not None else cf:
        # where f's argmax is i (nothing to state when bounds fix it): y_i > y_k (k < i), >= (k > i)
        given: list[tuple[Form, bool]] = (
            []
            if fixed[0] is not None
            else [(({i: one, k: -one}, {}, Fraction(0)), k < i) for k in cf if k != i]
        )
        out += [
            _linear({}, {i: one, j: -one}, Fraction(0), j < i, f"f class {i}, f' class {j}", given)
            for j in cq
            if j != i
        ]
    return out
