"""Deciding a region one disjunct of the violation at a time (``encode.queries``).

All disjuncts of a region share one z3 encoding (each is asserted behind a literal of its own and
checked under that assumption)
and one MILP model (each adds its own objective and rows); both are built lazily for the union
of the outputs the disjuncts read, with the bounds fixing what they decide.  ``QuerySolver``
runs z3 with a per-query time cap and the LP search (``lp_branch``) with a shared deadline; the
engine schedules the passes.  A z3 model is replayed on the concrete models; when its exact
point sits on a knife edge that float32 inputs cannot reach, nearby float32 points of the box are
tried before giving up.
"""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import z3

from ..z3_deadline import Z3Deadline
from .encode import BuildTimeout, Encoder, Query, rv
from .lp_branch import LPBranch
from .milp import Lin, Model

NEAR = 256  # float32 points tried around a z3 model that does not replay


class QuerySolver:
    """The disjuncts of one region (``p``: the engine's problem; ``bounds``: per network)."""

    def __init__(
        self,
        p: Any,
        lo: np.ndarray,
        hi: np.ndarray,
        bounds: tuple,
        todo: list[Query],
        stats: dict,
        deadline: float,
    ):
        self.p, self.lo, self.hi, self.bounds, self.stats = p, lo, hi, bounds, stats
        self.deadline = deadline  # the region's: building the encodings may take until then
        self.f_out = sorted({i for q in todo for i in q.f_out})
        self.q_out = sorted({i for q in todo for i in q.q_out})
        self._z3: tuple | None = None
        self._guards: dict[int, tuple[Query, z3.BoolRef]] = {}
        self._lp: tuple | None = None

    # ------------------------------------------------------------------ the shared encodings
    def _networks(self, builder: Any, xs: list) -> tuple[list, list]:
        p, (bf, bq) = self.p, self.bounds
        lo, hi = self.lo.tolist(), self.hi.tolist()
        y = builder.network(p.cf, xs, bf, lo, hi, self.f_out) if self.f_out else []
        yq = builder.network(p.cq_body, xs, bq, lo, hi, self.q_out) if self.q_out else []
        return y, yq

    def _z3_encoding(self) -> tuple:
        if self._z3 is None:
            s = z3.SolverFor("QF_LIRA")
            enc = Encoder(s, self.deadline)
            xs, read = self._z3_inputs(s)
            y, yq = self._networks(enc, xs)
            self.stats["neurons_fixed"] += enc.fixed
            self.stats["neurons"] += enc.total
            self._z3 = (s, y, yq, read)
        return self._z3

    def _z3_inputs(self, s: z3.Solver) -> tuple[list, Any]:
        """Inputs over the box (its grid points when f' quantizes its input) and a model reader."""
        grid = self.p.cq.inp
        if grid is not None:
            step = grid.step
            ks = [z3.Int(f"x{i}") for i in range(self.p.d)]
            for k, a, b in zip(ks, self.lo, self.hi, strict=True):
                s.add(k >= round(Fraction(a) / step), k <= round(Fraction(b) / step))
            xs = [z3.ToReal(k) * rv(step) for k in ks]
            return xs, lambda m: [m.eval(k, model_completion=True).as_long() * step for k in ks]
        xs = [z3.Real(f"x{i}") for i in range(self.p.d)]
        for x, a, b in zip(xs, self.lo, self.hi, strict=True):
            s.add(x >= rv(a), x <= rv(b))
        return xs, lambda m: [m.eval(x, model_completion=True).as_fraction() for x in xs]

    def _lp_model(self) -> tuple:
        if self._lp is None:
            model = Model(deadline=self.deadline)
            xs, inputs, fixed = self._lp_inputs(model)
            y, yq = self._networks(model, xs)
            self._lp = (model, y, yq, inputs, fixed, model.matrices())
        return self._lp

    def _lp_inputs(self, model: Model) -> tuple[list[Lin], list, np.ndarray]:
        """Input expressions (integer codes on an input grid), their variables, fixed values."""
        grid, xs, inputs, fixed = self.p.cq.inp, [], [], np.zeros(self.p.d)
        for i, (a, b) in enumerate(zip(self.lo, self.hi, strict=True)):
            if a == b:
                xs.append(Lin(const=Fraction(a)))
                inputs.append(None)
                fixed[i] = a
            elif grid is not None:
                v = model.var(
                    float(round(Fraction(a) / grid.step)), float(round(Fraction(b) / grid.step)), True
                )
                xs.append(Lin({v: grid.step}))
                inputs.append((v, float(grid.step)))
            else:
                v = model.var(float(a), float(b))
                xs.append(Lin({v: Fraction(1)}))
                inputs.append((v, 1.0))
        return xs, inputs, fixed

    # ------------------------------------------------------------------ deciding queries
    def z3(self, query: Query, deadline: float) -> tuple[str, Any]:
        """``("unsat", None)``, ``("refuted", x)``, ``("unknown", reason)``."""
        try:
            s, y, yq, read = self._z3_encoding()
        except BuildTimeout:
            return "unknown", "no decision within the timeout (building the z3 formula)"
        left = deadline - time.perf_counter()
        if left <= 0:
            return "unknown", f"no decision within the timeout (z3 on {query.what})"
        if id(query) not in self._guards:  # each disjunct behind its own literal: no push/pop,
            guard = z3.Bool(f"disjunct{len(self._guards)}")  # which can take minutes
            s.add(z3.Implies(guard, query.violated(y, yq)))
            self._guards[id(query)] = (query, guard)  # the query kept alive: its id stays its own
        guard = self._guards[id(query)][1]
        s.set("timeout", max(1, int(left * 1000)))
        self.stats["solver_calls"] += 1
        with Z3Deadline(s.ctx, deadline):  # z3's own timeout can be overrun by minutes
            answer = s.check(guard)
        model = s.model() if answer == z3.sat else None
        if answer == z3.unsat:
            return "unsat", None
        if answer == z3.unknown:
            return "unknown", f"no decision within the timeout (z3 on {query.what})"
        x = self._replay([float(v) for v in read(model)])
        if x is not None:
            return "refuted", x
        return "unknown", f"z3's model for {query.what} did not replay on the concrete float32 inputs"

    def _replay(self, values: list[float]) -> torch.Tensor | None:
        """The z3 point as float32 (the models' input type), else float32 points a few ulps
        around it inside the box (continuous regions only), replayed."""
        x = torch.tensor(values, dtype=torch.float32)
        self.stats["replays"] += 1
        if self.p.confirmed(x.double()):
            return x.double()
        if self.p.cq.inp is not None:
            return None
        gen = torch.Generator().manual_seed(0)
        ulp = torch.finfo(torch.float32).eps * x.abs().clamp_min(1e-30)
        near = x + ulp * torch.randint(-4, 5, (NEAR, len(x)), generator=gen)
        lo, hi = torch.from_numpy(self.lo).float(), torch.from_numpy(self.hi).float()
        near = torch.minimum(torch.maximum(near, lo), hi)
        near = near[
            (near.double() >= torch.from_numpy(self.lo)).all(1)
            & (near.double() <= torch.from_numpy(self.hi)).all(1)
        ]
        return self.p.falsify(near.double(), self.stats) if len(near) else None

    def lp(self, query: Query, deadline: float, max_nodes: int = 20_000) -> tuple[str, Any]:
        """``("proved", None)``, ``("refuted", x)``, ``("open", reason)`` from the LP search."""
        p = self.p
        if query.objective is None or not (p.cf.floats_exact and p.cq_body.floats_exact):
            return "open", "no LP form"
        try:
            model, y, yq, inputs, fixed, base = self._lp_model()
        except BuildTimeout:
            return "open", "building the MILP took the whole time share"

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
        search = LPBranch(model, matrices, linear(query.objective), query.strict, inputs, fixed, p.falsify)
        out = search.run(deadline, max_nodes)
        self.stats["nodes"] += out.nodes
        return out.status, (out.point if out.status == "refuted" else out.reason)
