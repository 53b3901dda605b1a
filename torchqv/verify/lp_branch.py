"""Branch and bound on the MILP encoding with certified LP bounds (the proof stage for networks
with many inputs, such as MNIST).

One query at a time: prove ``min objective > 0`` (or ``>= 0``) over the region, where the
objective is a margin (``f'_c - f'_j``) or an eps slack (``eps - (f_i - f'_i)``).  Each node of
the search is the MILP (``milp.Model``) with tightened bounds on its integer variables: ReLU
phases first, then rounding codes, then input codes.  Its LP relaxation is solved by HiGHS
(scipy) in elastic form (every row may be violated at a cost, so the LP is always feasible and
its dual always exists), and the dual's multipliers of the original rows become a rigorous lower
bound of the original LP (``milp.certified_lower``): HiGHS is trusted for nothing.  A node whose
certified bound is positive is proved; the LP's optimal point, snapped to the region (input codes
rounded), is replayed exactly as a counterexample candidate; otherwise the most fractional
integer variable of the highest priority is split (``v <= floor(v*)`` and ``v >= ceil(v*)``,
which cover every integer value).  Every LP solve gets the time left as HiGHS's own time limit
(an LP stopped by it proves nothing), and no node starts after the deadline.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from .milp import Lin, Model, certified_lower, down
from .verdicts import Decision


@dataclass
class LPOutcome:
    status: Decision
    point: Any = None
    nodes: int = 0
    reason: str = ""


class LPBranch:
    """Branch and bound for one objective over a built ``Model``.

    ``rows``: the model's rows as ``Model.matrices`` gives them (built once, shared by queries);
    ``candidate(v)`` maps an LP point to a replayed counterexample or ``None``; ``input_vars``:
    the variables of the input coordinates (branched on last).
    """

    def __init__(
        self,
        model: Model,
        rows: tuple[sp.csr_matrix, np.ndarray, np.ndarray],
        objective: Lin,
        strict: bool,
        candidate: Callable[[np.ndarray], Any],
        input_vars: list[int] | None = None,
    ):
        self.strict = strict
        self.candidate = candidate
        n = len(model.lb)
        A, row_lo, row_hi = rows
        up, lo = np.isfinite(row_hi), np.isfinite(row_lo)
        A_ub = sp.vstack([A[up], -A[lo]]).tocsr()  # rows A v <= b
        self.b = np.concatenate([row_hi[up], -row_lo[lo]])
        m = A_ub.shape[0]
        c = np.zeros(n)
        for v, w in objective.coefs.items():
            c[v] += float(w)
        self.const = objective.const
        penalty = 1e3 * (1.0 + np.abs(c).sum())  # elastic rows: a violation costs this much per unit
        self.A_ub, self.c_v = A_ub, c  # the certificate is for these: without the elastic slacks
        self.A = sp.hstack([A_ub, -sp.identity(m, format="csr")]).tocsr()
        self.c = np.concatenate([c, np.full(m, penalty)])
        self.slack_ub = np.full(m, 1e6 * (1.0 + np.abs(self.b).max(initial=0.0)))
        self.lb0, self.ub0 = np.array(model.lb), np.array(model.ub)
        self.integer = np.array(model.integer, dtype=bool)
        priority = np.zeros(n)  # ReLU phases, then rounding codes, then inputs
        priority[model.binaries] = 2
        priority[self.integer & (priority == 0)] = 1
        priority[np.array(input_vars or [], dtype=int)] = 0.5
        self.priority = priority

    def _solve(self, lb: np.ndarray, ub: np.ndarray, deadline: float) -> tuple[float, np.ndarray | None]:
        if len(self.c) == 0:  # nothing varies: the objective is its constant
            return down(self.const), lb
        lo = np.concatenate([lb, np.zeros(len(self.b))])
        hi = np.concatenate([ub, self.slack_ub])
        left = deadline - time.perf_counter()
        if left <= 0:
            return -np.inf, None
        res = linprog(
            self.c,
            A_ub=self.A,
            b_ub=self.b,
            bounds=np.column_stack([lo, hi]),
            method="highs",
            options={"time_limit": max(left, 1e-3)},
        )
        if res.status != 0 or res.x is None:
            return -np.inf, None
        # any multipliers y <= 0 of A_ub v <= b bound the unrelaxed LP; the slack columns are
        # left out of the certificate, whose error term would otherwise scale with their bounds
        bound = certified_lower(self.c_v, self.A_ub, self.b, lb, ub, res.ineqlin.marginals)
        return (down(Fraction(bound) + self.const) if np.isfinite(bound) else bound), res.x[: len(lb)]

    def run(self, deadline: float, max_nodes: int = 20_000) -> LPOutcome:
        order = itertools.count()
        heap: list = [(-np.inf, next(order), self.lb0.copy(), self.ub0.copy())]
        nodes = 0
        while heap:
            if time.perf_counter() > deadline or nodes >= max_nodes:
                return LPOutcome(
                    Decision.OPEN, None, nodes, f"LP branch and bound stopped after {nodes} nodes"
                )
            _, _, lb, ub = heapq.heappop(heap)
            nodes += 1
            bound, v = self._solve(lb, ub, deadline)
            if v is None:
                return LPOutcome(
                    Decision.OPEN, None, nodes, "the LP solver failed or ran out of time on a node"
                )
            if bound > 0 or (not self.strict and bound >= 0):
                continue
            x = self.candidate(v)
            if x is not None:
                return LPOutcome(Decision.REFUTED, x, nodes)
            frac = np.abs(v - np.rint(v))
            candidates = np.where(self.integer & (frac > 1e-6) & (ub > lb), self.priority + frac, -1.0)
            if candidates.size == 0 or candidates.max() < 0:
                return LPOutcome(Decision.OPEN, None, nodes, "an integral LP point that does not replay")
            k = int(candidates.argmax())
            for side in (0, 1):
                lb2, ub2 = lb.copy(), ub.copy()
                if side == 0:
                    ub2[k] = math.floor(v[k])
                else:
                    lb2[k] = math.ceil(v[k])
                heapq.heappush(heap, (bound, next(order), lb2, ub2))
        return LPOutcome(Decision.PROVED, None, nodes)
