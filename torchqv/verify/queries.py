"""Deciding a region one disjunct of the violation at a time (``encode.queries``).

All disjuncts of a region share one z3 encoding (each is asserted behind a literal of its own and
checked under that assumption)
and one MILP model (each adds its own objective and rows); both are built lazily for the union
of the outputs the disjuncts read, with the bounds fixing what they decide.  ``QuerySolver``
runs z3 with a per-query time cap and the LP search (``lp_branch``) with a shared deadline; the
engine schedules the passes.  A z3 model is an exact point of the region (integer input codes on
a grid, rationals otherwise); it is replayed exactly (``engine._Problem.confirm``).  z3 answering
``sat`` just as the deadline watchdog interrupts it may leave no model, or a model that is not
one (outside the region, or not a violation on replay): that is ``unknown`` at the time limit.
"""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Any

import numpy as np
import scipy.sparse as sp
import z3

from ..z3_deadline import Z3Deadline
from .encode import BuildTimeout, Encoder, Query, rv
from .lp_branch import LPBranch
from .milp import Lin, Model
from .network import constants
from .region import Box
from .verdicts import Decision


class QuerySolver:
    """The disjuncts of one region (``p``: the engine's problem; ``box``: the exact region;
    ``bounds``: per network, valid on the box)."""

    def __init__(
        self,
        p: Any,
        box: Box,
        bounds: tuple,
        todo: list[Query],
        stats: dict,
        deadline: float,
    ):
        self.p, self.box, self.bounds, self.stats = p, box, bounds, stats
        self.lo, self.hi = box.floats()  # outward: bounds for encodings
        self.deadline = deadline  # the region's: building the encodings may take until then
        self.f_out = sorted({i for q in todo for i in q.f_out})
        self.q_out = sorted({i for q in todo for i in q.q_out})
        self._z3: tuple | None = None
        self._guards: dict[int, tuple[Query, z3.BoolRef]] = {}
        self._lp: tuple | None = None
        self._const: tuple | None = None
        self._failed: set[str] = set()  # encodings whose building ran out of time: never retried

    # ------------------------------------------------------------------ the shared encodings
    def _constants(self) -> tuple:
        """``network.constants`` of both chains on this region (shared by both encodings)."""
        if self._const is None:
            p, (bf, bq) = self.p, self.bounds
            lo, hi, fixed = self.lo.tolist(), self.hi.tolist(), self.box.fixed()
            self._const = (
                constants(p.cf, bf, lo, hi, fixed) if self.f_out else None,
                constants(p.cq_body, bq, lo, hi, fixed) if self.q_out else None,
            )
        return self._const

    def _networks(self, builder: Any, xs: list) -> tuple[list, list]:
        p, (bf, bq) = self.p, self.bounds
        lo, hi, fixed = self.lo.tolist(), self.hi.tolist(), self.box.fixed()
        cf, cq = self._constants()
        y = builder.network(p.cf, xs, bf, lo, hi, self.f_out, fixed, cf) if self.f_out else []
        yq = builder.network(p.cq_body, xs, bq, lo, hi, self.q_out, fixed, cq) if self.q_out else []
        return y, yq

    def _building(self, what: str) -> None:
        """Raise ``BuildTimeout`` when an encoding may not be (re)built: its building already ran
        out of time on this region, or the region's deadline has passed."""
        if what in self._failed or time.perf_counter() > self.deadline:
            self._failed.add(what)
            raise BuildTimeout

    def _z3_encoding(self) -> tuple:
        if self._z3 is None:
            self._building("z3")
            s = z3.SolverFor("QF_LIRA")
            enc = Encoder(s, self.deadline)
            xs, read = self._z3_inputs(s)
            y, yq = self._networks(enc, xs)
            self.stats["neurons_fixed"] += enc.fixed
            self.stats["neurons"] += enc.total
            self._z3 = (s, y, yq, read)
        return self._z3

    def _z3_inputs(self, s: z3.Solver) -> tuple[list, Any]:
        """Inputs over the exact region (its grid codes when f' quantizes its input) and a reader
        of the point from a model (codes on a grid, exact rationals otherwise)."""
        box = self.box
        if box.grid:
            step = box.step
            assert step is not None and box.klo is not None and box.khi is not None  # on a grid
            ks = [z3.Int(f"x{i}") for i in range(self.p.d)]
            for k, a, b in zip(ks, box.klo.tolist(), box.khi.tolist(), strict=True):
                s.add(k >= a, k <= b)
            xs = [z3.ToReal(k) * rv(step) for k in ks]
            return xs, lambda m: np.array(
                [m.eval(k, model_completion=True).as_long() for k in ks], dtype=np.int64
            )
        xs = [z3.Real(f"x{i}") for i in range(self.p.d)]
        for x, a, b in zip(xs, box.lo, box.hi, strict=True):
            s.add(x >= rv(a), x <= rv(b))
        return xs, lambda m: [m.eval(x, model_completion=True).as_fraction() for x in xs]

    def _lp_model(self) -> tuple:
        if self._lp is None:
            self._building("lp")
            model = Model(deadline=self.deadline)
            xs, to_point, input_vars = self._lp_inputs(model)
            y, yq = self._networks(model, xs)
            self._lp = (model, y, yq, to_point, input_vars, model.matrices())
        return self._lp

    def _lp_inputs(self, model: Model) -> tuple[list[Lin], Any, list[int]]:
        """Input expressions over the exact region (integer codes on an input grid; a fixed
        coordinate is its exact value) and the map from an LP point to an exact point of the
        region (codes rounded, values clipped)."""
        xs: list[Lin]
        cols: list[int | None]
        box, xs, cols = self.box, [], []
        for i, (a, b) in enumerate(zip(box.lo, box.hi, strict=True)):
            if a == b:
                xs.append(Lin(const=a))
                cols.append(None)
            elif box.grid:
                assert box.step is not None and box.klo is not None and box.khi is not None  # on a grid
                v = model.var(float(box.klo[i]), float(box.khi[i]), True)
                xs.append(Lin({v: box.step}))
                cols.append(v)
            else:
                lo, hi = self.lo[i], self.hi[i]
                v = model.var(lo, hi)
                xs.append(Lin({v: Fraction(1)}))
                cols.append(v)

        def to_point(sol: np.ndarray) -> Any:
            if box.grid:
                assert box.klo is not None  # on a grid
                codes = np.array([box.klo[i] if c is None else np.rint(sol[c]) for i, c in enumerate(cols)])
                return np.clip(codes, box.klo, box.khi).astype(np.int64)
            return [
                a if c is None else min(max(Fraction(float(sol[c])), a), b)
                for c, a, b in zip(cols, box.lo, box.hi, strict=True)
            ]

        return xs, to_point, [c for c in cols if c is not None]

    # ------------------------------------------------------------------ deciding queries
    def z3(self, query: Query, deadline: float) -> tuple[Decision, Any]:
        """``(PROVED, None)`` (unsat), ``(REFUTED, counterexample)`` or ``(OPEN, reason)``."""
        try:
            s, y, yq, read = self._z3_encoding()
        except BuildTimeout:
            self._failed.add("z3")
            return Decision.OPEN, "no decision within the timeout (building the z3 formula)"
        left = deadline - time.perf_counter()
        if left <= 0:
            return Decision.OPEN, f"no decision within the timeout (z3 on {query.what})"
        if id(query) not in self._guards:  # each disjunct behind its own literal: no push/pop,
            guard = z3.Bool(f"disjunct{len(self._guards)}")  # which can take minutes
            s.add(z3.Implies(guard, query.violated(y, yq)))
            self._guards[id(query)] = (query, guard)  # the query kept alive: its id stays its own
        guard = self._guards[id(query)][1]
        timeout_ms = max(1, int(left * 1000))
        s.set("timeout", timeout_ms)
        self.stats["solver_calls"] += 1
        start = time.perf_counter()
        with Z3Deadline(s.ctx, deadline):  # z3's own timeout can be overrun by minutes
            answer = s.check(guard)
        # z3's own timer (up to 1 ms before the deadline: whole milliseconds) or the watchdog may
        # have cut the answer short; an interrupted call can answer sat with a model of nothing
        interrupted = time.perf_counter() >= min(deadline, start + timeout_ms / 1000)
        if answer == z3.unsat:
            return Decision.PROVED, None
        point = sat_point(s, read) if answer == z3.sat else None
        if point is None:
            return Decision.OPEN, f"no decision within the timeout (z3 on {query.what})"
        self.stats["replays"] += 1
        cex = self.p.confirm(point) if self.box.contains(self.p.grid_exact(point)) else None
        if cex is not None:
            return Decision.REFUTED, cex
        if interrupted:  # a model built as the watchdog interrupted z3 is not trusted
            return Decision.OPEN, f"no decision within the timeout (z3 on {query.what}, interrupted at sat)"
        return (
            Decision.OPEN,
            f"internal: z3's model for {query.what} does not violate the relation on exact replay",
        )

    def lp(self, query: Query, deadline: float, max_nodes: int = 20_000) -> tuple[Decision, Any]:
        """``(PROVED, None)``, ``(REFUTED, counterexample)`` or ``(OPEN, reason)`` from the LP search."""
        p = self.p
        if query.objective is None or not (p.cf.floats_exact and p.cq_body.floats_exact):
            return Decision.OPEN, "no LP form"
        try:
            model, y, yq, to_point, input_vars, base = self._lp_model()
        except BuildTimeout:
            self._failed.add("lp")
            return Decision.OPEN, "building the MILP took the whole time share"
        if time.perf_counter() >= deadline:
            return Decision.OPEN, "no time left for the LP"

        def linear(form: tuple) -> Lin:
            a, b, c = form
            e = Lin(const=Fraction(c))
            for outs, coefs in ((y, a), (yq, b)):
                for i, w in coefs.items():
                    e = e.plus(outs[i], w)
            return e

        rows = len(model.rows)
        for form, _ in query.given:  # the part of the region the query is about (closed: a relaxation)
            model.row(linear(form), 0.0, np.inf)
        A, lo, hi = model.matrices(start=rows)  # the query's own rows, below the shared ones
        del model.rows[rows:]
        matrices = (
            sp.vstack([base[0], A]).tocsr(),
            np.concatenate([base[1], lo]),
            np.concatenate([base[2], hi]),
        )

        def candidate(sol: np.ndarray) -> Any:
            return p.falsify([to_point(sol)], self.stats)

        search = LPBranch(model, matrices, linear(query.objective), query.strict, candidate, input_vars)
        out = search.run(deadline, max_nodes)
        self.stats["nodes"] += out.nodes
        return out.status, (out.point if out.status is Decision.REFUTED else out.reason)


def sat_point(s: z3.Solver, read: Any) -> list | None:
    """The model's point after ``sat``, or ``None`` when z3 has none (an interrupt from the
    deadline watchdog can land after the search found ``sat`` but before the model was built:
    ``Z3Exception: model is not available``)."""
    try:
        return read(s.model())
    except z3.Z3Exception:
        return None
