"""Exact d-QNNT training with z3 (Ganian, Sommer & Sorge, "Tractability via low dimensionality: the
parameterized complexity of training quantized neural networks", sec. 1-2): a network with error <= l, or a
proof of none.

The encoding is exact over the finite domain.  Unknowns: one weight per arc and one bias per
non-source node, each ranging over Z_d.  Per *distinct* input vector x the forward pass of sec. 2
is unrolled once:

* an input neuron's value is the constant x[i], so its products ``x[i] * weight`` are linear;
* a hidden neuron's value a = ReLU_d(pre) lies in {0, ..., max Z_d}; it is kept in order encoding,
  Booleans ``[a >= k] <=> pre >= k`` (k = 1..max Z_d), so ``a * weight = sum_k [a >= k] * weight``;
* an output neuron meets target y iff ``pre <= 0`` (y = 0), ``pre == y`` (0 < y < max Z_d),
  ``pre >= max Z_d`` (y = max Z_d); a negative target is never met.

A distinct data point (x, y) of multiplicity c is misfit iff some output misses its target; the
error bound is the pseudo-Boolean constraint ``sum c * misfit <= l``.  Encodings of a weight:
``"pb"`` (default) one-hot literals with every sum a pseudo-Boolean constraint, ``"bv"`` a
bit-vector wide enough that no sum overflows (both on z3's SAT-based finite-domain solver),
``"int"`` a bounded integer (linear integer arithmetic).  Minimisation is weighted MaxSAT
(``z3.Optimize``, one soft constraint "fits" per distinct point).  Every network is rebuilt from
the model, validated, and its error recomputed by the reference forward pass of ``qnnt`` before
it is returned.
"""

from __future__ import annotations

import ctypes
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import TheoryInputError
from ..extras import require

if TYPE_CHECKING:
    import z3
else:
    z3 = require("z3", "torchqv.theory.train_exact")

from ..z3_deadline import Z3Deadline
from .qnnt import (
    Architecture,
    Network,
    Status,
    TrainResult,
    check_problem,
    conflict_bound,
    z_domain,
)

ENCODINGS = ("pb", "bv", "int")
OVERRUN_S = 1.0  # past the timeout by more than this, the result says by how much


class _BuildTimeout(Exception):
    """The deadline passed while the formula was being built."""


class _Clock:
    """The encoding's share of the time limit: ``tick()`` between z3 calls raises
    :class:`_BuildTimeout` once the deadline has passed, so building never runs past it by more
    than one z3 call (every call below builds one term, or one constraint from a prepared array)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def tick(self) -> None:
        if time.perf_counter() > self.deadline:
            raise _BuildTimeout

    def each(self, items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            self.tick()
            yield item


def _asts(exprs: Sequence[z3.ExprRef], clock: _Clock) -> Any:
    """A C array of the expressions (for z3's C API: no per-argument coercion in Python)."""
    arr = (z3.Ast * len(exprs))()
    for i, e in enumerate(exprs):
        if i % 4096 == 0:
            clock.tick()
        arr[i] = e.as_ast()
    return arr


def _and(ctx: z3.Context, a: z3.BoolRef, b: z3.BoolRef) -> z3.BoolRef:
    return z3.BoolRef(z3.Z3_mk_and(ctx.ref(), 2, (z3.Ast * 2)(a.as_ast(), b.as_ast())), ctx)


class _Arithmetic:
    """Weights as integers: bit-vectors wide enough for every sum (``bv``) or integers (``int``)."""

    hard: list[z3.BoolRef]

    def __init__(self, arch: Architecture, d: int, kind: str, ctx: z3.Context, clock: _Clock) -> None:
        dom = z_domain(d)
        self.d, self.lo, self.hi, self.kind, self.hard, self.ctx = d, dom[0], dom[-1], kind, [], ctx
        self.clock = clock
        if kind == "bv":
            # |pre-activation| <= fan-in * max|value| * max|weight| + max|bias|
            bound = (max(len(src) for src, _ in arch.plan) * self.hi + 1) * self.hi
            self.width = max(2, bound.bit_length() + 1)
            self.logic, self.zero = "QF_FD", z3.BitVecVal(0, self.width, ctx)
        else:
            self.width, self.logic, self.zero = 0, "QF_LIA", z3.IntVal(0, ctx)

    def unknown(self, name: str) -> tuple[z3.ExprRef, z3.ExprRef]:
        """(value, raw variable): a narrow bit-vector offset by min Z_d, or a bounded integer."""
        if self.kind == "int":
            v = z3.Int(name, self.ctx)
            self.hard += [v >= self.lo, v <= self.hi]
            return v, v
        nb = max(1, (self.d - 1).bit_length())
        raw = z3.BitVec(name, nb, self.ctx)
        if 2**nb != self.d:
            self.hard.append(z3.ULE(raw, self.d - 1))
        return z3.ZeroExt(self.width - nb, raw) + self.lo, raw

    def decode(self, model: z3.ModelRef, unknown: tuple[z3.ExprRef, z3.ExprRef]) -> int:
        v = model.eval(unknown[1], model_completion=True).as_long()
        return v + self.lo if self.kind == "bv" else v

    def scale(self, unknown: tuple[z3.ExprRef, z3.ExprRef], c: int) -> list[z3.ExprRef]:
        return [] if c == 0 else [unknown[0] if c == 1 else c * unknown[0]]

    def gate(self, unknown: tuple[z3.ExprRef, z3.ExprRef], g: z3.BoolRef) -> list[z3.ExprRef]:
        self.clock.tick()
        return [z3.If(g, unknown[0], self.zero)]

    def compare(self, terms: list[z3.ExprRef], op: str, k: int) -> z3.BoolRef:
        self.clock.tick()
        pre = z3.Sum(terms) if terms else self.zero
        return pre >= k if op == ">=" else pre <= k if op == "<=" else pre == k


PB = {">=": z3.Z3_mk_pbge, "<=": z3.Z3_mk_pble, "==": z3.Z3_mk_pbeq}


class _PseudoBoolean:
    """Weights one-hot: a literal [w = v] per non-zero v of Z_d (at most one true); sums are
    pseudo-Boolean constraints, solved by z3's SAT-based finite-domain solver."""

    hard: list[z3.BoolRef]

    def __init__(self, arch: Architecture, d: int, kind: str, ctx: z3.Context, clock: _Clock) -> None:
        self.values, self.ctx, self.clock = [v for v in z_domain(d) if v != 0], ctx, clock
        self.logic, self.width, self.hard = "QF_FD", 0, []

    def unknown(self, name: str) -> list[tuple[z3.BoolRef, int]]:
        lits = [(z3.Bool(f"{name}={v}", self.ctx), v) for v in self.clock.each(self.values)]
        if len(lits) > 1:
            arr = _asts([lit for lit, _ in lits], self.clock)
            self.hard.append(z3.BoolRef(z3.Z3_mk_atmost(self.ctx.ref(), len(lits), arr, 1), self.ctx))
        return lits

    def decode(self, model: z3.ModelRef, unknown: list[tuple[z3.BoolRef, int]]) -> int:
        return sum(v for lit, v in unknown if z3.is_true(model.eval(lit, model_completion=True)))

    def scale(self, unknown: list[tuple[z3.BoolRef, int]], c: int) -> list[tuple[z3.BoolRef, int]]:
        return [(lit, c * v) for lit, v in unknown if c]

    def gate(self, unknown: list[tuple[z3.BoolRef, int]], g: z3.BoolRef) -> list[tuple[z3.BoolRef, int]]:
        return [(_and(self.ctx, g, lit), v) for lit, v in self.clock.each(unknown)]

    def compare(self, terms: list[tuple[z3.BoolRef, int]], op: str, k: int) -> z3.BoolRef:
        self.clock.tick()
        if not terms:
            return z3.BoolVal(0 >= k if op == ">=" else 0 <= k if op == "<=" else k == 0, self.ctx)
        arr = _asts([lit for lit, _ in terms], self.clock)
        coeffs = (ctypes.c_int * len(terms))(*(c for _, c in terms))
        return z3.BoolRef(PB[op](self.ctx.ref(), len(terms), arr, coeffs, k), self.ctx)


class _Encoding:
    """The unknowns (weights, biases), their domain constraints ``hard`` and the misfit literal
    of every distinct data point."""

    def __init__(self, arch: Architecture, d: int, counts: Counter, encoding: str, clock: _Clock) -> None:
        self.arch, self.d, self.hi, self.ctx = arch, d, z_domain(d)[-1], z3.Context()
        self.clock = clock
        self.ops = (_PseudoBoolean if encoding == "pb" else _Arithmetic)(arch, d, encoding, self.ctx, clock)
        self.logic, self.width, self.hard = self.ops.logic, self.ops.width, self.ops.hard
        # the unknowns of self.ops's encoding (a pair of terms, or a list of weighted literals)
        self.w: list[Any] = [self.ops.unknown(f"w_{u}_{v}") for u, v in arch.arcs]
        self.b: list[Any] = [self.ops.unknown(f"b_{v}") for v in arch.non_sources]
        self._pre = {x: self._forward(x) for x in {x for x, _ in counts}}
        self._meets_cache: dict[tuple[tuple[int, ...], int, int], z3.BoolRef] = {}
        self.misfits = [(z3.Not(self._fits(x, y)), c) for (x, y), c in counts.items()]

    def _forward(self, x: tuple[int, ...]) -> list[list[Any]]:
        """Pre-activations (as term lists) of the output neurons on x; hidden values in order encoding."""
        arch, ops = self.arch, self.ops
        vals: list[Any] = list(x)  # int for inputs, list of Booleans [a >= k] for hidden neurons
        n_hidden = len(arch.nodes) - len(arch.inputs) - len(arch.outputs)
        outs = []
        for j, (src, arc_ix) in enumerate(arch.plan):
            terms: list[Any] = []
            for p, k in zip(src, arc_ix, strict=True):
                a = vals[p]
                if isinstance(a, int):
                    terms += ops.scale(self.w[k], a)
                else:
                    terms += [t for g in a for t in ops.gate(self.w[k], g)]
            terms += ops.scale(self.b[j], -1)
            if j < n_hidden:
                vals.append([ops.compare(terms, ">=", k) for k in range(1, self.hi + 1)])
            else:
                outs.append(terms)
        return outs

    def _meets(self, x: tuple[int, ...], j: int, t: int) -> z3.BoolRef:
        """Output j on input x equals t (cached: points sharing an input share these literals)."""
        key = (x, j, t)
        if key not in self._meets_cache:
            terms = self._pre[x][j]
            if t < 0:
                cond = z3.BoolVal(False, self.ctx)
            elif t == self.hi:
                cond = self.ops.compare(terms, ">=", t) if t > 0 else z3.BoolVal(True, self.ctx)
            else:
                cond = self.ops.compare(terms, "<=" if t == 0 else "==", t)
            self._meets_cache[key] = cond
        return self._meets_cache[key]

    def _fits(self, x: tuple[int, ...], y: tuple[int, ...]) -> z3.BoolRef:
        conds = [self._meets(x, j, t) for j, t in enumerate(y)]
        if not conds:
            return z3.BoolVal(True, self.ctx)
        # z3.And coerces argument by argument (slow for wide outputs); the C call takes them as they are
        args = (z3.Ast * len(conds))(*(c.as_ast() for c in conds))
        return z3.BoolRef(z3.Z3_mk_and(conds[0].ctx.ref(), len(conds), args), conds[0].ctx)

    def bound(self, cap: int) -> z3.BoolRef:
        return z3.PbLe(self.misfits, cap) if self.misfits else z3.BoolVal(True, self.ctx)

    def network(self, model: z3.ModelRef) -> Network:
        n_w = len(self.arch.arcs)
        vals = [self.ops.decode(model, u) for u in self.w + self.b]
        return Network(
            self.arch,
            self.d,
            dict(zip(self.arch.arcs, vals[:n_w], strict=True)),
            dict(zip(self.arch.non_sources, vals[n_w:], strict=True)),
        )


def train_exact(
    architecture: Architecture,
    data: Iterable[Any],
    d: int,
    max_error: int | None = None,
    *,
    minimize: bool = False,
    timeout: float = 60.0,
    encoding: str = "pb",
) -> TrainResult:
    """Solve d-QNNT (Ganian et al., sec. 1): weights and biases in Z_d with error <= ``max_error``.

    ``data`` is a multiset of pairs (x, y), x in Z_d^alpha and y in Z_d^omega.  Decision mode
    returns FOUND (a network, error recomputed by the reference forward pass) or INFEASIBLE (z3
    proved unsat, or the data's conflict bound exceeds ``max_error``).  ``minimize=True`` returns
    OPTIMAL with the minimum error (``max_error``, if given, caps it: INFEASIBLE above the cap).
    Past ``timeout`` seconds (formula construction included) the status is UNKNOWN, carrying the
    best network z3 had found (minimisation only) and the proven ``lower_bound``.  Building the
    formula checks the clock between z3 calls and a watchdog interrupts z3's search, so the call
    returns within about a second of ``timeout``; the one known exception is z3's bit-blasting of
    large ``encoding="bv"`` formulas, which does not answer interrupts (the reason then says how
    long z3 took).
    """
    points, cap = check_problem(architecture, data, d, max_error, minimize)
    if encoding not in ENCODINGS:
        raise TheoryInputError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise TheoryInputError(f"timeout must be a positive number of seconds, got {timeout!r}")
    t0 = time.perf_counter()
    floor = conflict_bound(points, d)
    stats: dict[str, Any] = {"encoding": encoding, "parameters": architecture.n_parameters()}
    stats["conflict_bound"] = floor

    def result(status: Status, net: Network | None, lower: int, **extra: Any) -> TrainResult:
        stats.update(extra, seconds=time.perf_counter() - t0)
        return TrainResult(status, net, None if net is None else net.error(points), lower, stats)

    if floor > cap:
        return result(Status.INFEASIBLE, None, floor, proof="conflict_bound")
    try:
        enc = _Encoding(architecture, d, Counter(points), encoding, _Clock(t0 + timeout))
    except _BuildTimeout:
        return result(Status.UNKNOWN, None, floor, reason=f"timeout after {timeout} s (while encoding)")
    stats.update(encode_seconds=time.perf_counter() - t0, distinct_points=len(enc.misfits))
    if enc.width:
        stats["bv_width"] = enc.width
    s = z3.Optimize(ctx=enc.ctx) if minimize else z3.SolverFor(enc.logic, ctx=enc.ctx)
    s.add(enc.hard)
    objective = [s.add_soft(z3.Not(m), c, id="error") for m, c in enc.misfits][-1:] if minimize else []
    if max_error is not None:
        s.add(enc.bound(cap))
    with Z3Deadline(enc.ctx, t0 + timeout):
        answer = s.check()
    stats["z3"] = {k: v for k, v in s.statistics()}  # Statistics is not a mapping
    if answer == z3.unsat:
        return result(Status.INFEASIBLE, None, cap + 1, proof="unsat")
    if answer == z3.sat:
        net = enc.network(s.model())
        err = net.error(points)  # the reference semantics, not the solver's claim
        if err > cap or (objective and err != objective[0].value().as_long()):
            raise RuntimeError(f"z3's network has error {err} under the reference semantics: an encoding bug")
        if not minimize:
            return result(Status.FOUND, net, floor)
        return result(Status.OPTIMAL, net, err, proof="maxsat")
    best = None
    if objective:  # z3 keeps the best model of an interrupted optimisation, and a proven lower bound
        floor = max(floor, objective[0].lower().as_long())
        try:
            best = enc.network(s.model())
        except z3.Z3Exception:
            best = None
    elapsed = time.perf_counter() - t0
    reason = (
        f"timeout after {timeout} s" if elapsed >= timeout else f"z3 answered unknown: {s.reason_unknown()}"
    )
    if elapsed > timeout + OVERRUN_S:
        reason += f" (z3 answered the interrupt only after {elapsed:.1f} s, in a step it cannot stop in)"
    return result(Status.UNKNOWN, best, floor, reason=reason)
