"""Input-splitting branch and bound on the linear bounds (the proof stage for small inputs, such
as ACAS Xu's five).

A node is an input sub-box.  ``bounds.Crown`` bounds both networks on it; the node is *proved*
when the relation follows from them, *refuted* when a concrete point of it (the corner that
minimises the worst bound, and its middle) violates the relation after replay, and otherwise cut
in two along the coordinate with the largest ``|coefficient| * width`` in the worst bound (on an
input grid the codes are halved, so no grid point is lost).  The children cover the node, so
proving every leaf proves the region.  Nodes are explored worst bound first, so a violating part
is found early; a deadline or node limit leaves the search open.

Top-1: a node is proved when one class beats every other in both networks; eps: when the joint
bounds of ``f - f'`` (``bounds.difference_bounds``) are within eps.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from .bounds import Crown, difference_bounds
from .network import Chain, Rounding

INPUT_SPLIT_DIMS = 16  # inputs up to this size are split by coordinates (larger: lp_branch)


@dataclass
class Outcome:
    status: str  # "proved" | "refuted" | "open"
    point: Any = None  # the replayed counterexample (a tensor) when refuted
    nodes: int = 0
    depth: int = 0
    reason: str = ""


def margin_rows(n: int, c: int) -> np.ndarray:
    """Rows of ``y_c - y_j`` for ``j != c``."""
    others = [j for j in range(n) if j != c]
    A = -np.eye(n)[others]
    A[:, c] += 1.0
    return A


def winners(lo: np.ndarray, hi: np.ndarray) -> list[int]:
    """Classes that can be the argmax somewhere: ``hi_i >= max_k lo_k``."""
    floor = lo.max()
    return [i for i in range(len(lo)) if hi[i] >= floor]


class InputBranch:
    """Search over one box; ``falsify(points)`` returns a replayed counterexample or ``None``."""

    def __init__(
        self,
        cf: Chain,
        cq: Chain,
        relation: str,
        eps: float | None,
        norm: str,
        grid: Rounding | None,
        falsify: Callable[[np.ndarray], Any],
    ):
        self.nets = (cf, cq)
        self.relation, self.eps, self.norm = relation, eps, norm
        self.grid = grid
        self.falsify = falsify

    def assess(self, lo: np.ndarray, hi: np.ndarray) -> tuple[float, np.ndarray]:
        """The worst bound of the best attempt (``> 0``, or ``>= 0`` for eps: proved) and the
        input coefficients of that bound."""
        cf, cq = (Crown(net, lo, hi) for net in self.nets)
        if self.relation == "top1":
            best = (-np.inf, np.zeros_like(lo))
            for c in winners(cf.lo[-1], cf.hi[-1]):
                A = margin_rows(len(cf.hi[-1]), c)
                worst = (np.inf, None)
                for crown in (cf, cq):
                    lb, coef = crown.lower_and_inputs(A)
                    lb = np.maximum(lb, crown.lo[-1][c] - np.delete(crown.hi[-1], c))  # intervals too
                    r = int(lb.argmin())
                    worst = min(worst, (float(lb[r]), coef[r]), key=lambda t: t[0])
                best = max(best, worst, key=lambda t: t[0])
            return best
        coefs: list = []
        dlo, dhi = difference_bounds(cf, cq, coefs)
        excess = np.maximum(-dlo, dhi)  # largest possible |f_i - f'_i|
        total = excess.max() if self.norm == "inf" else excess.sum()
        i = int(excess.argmax())
        return float(self.eps - total), (coefs[0][i] if -dlo[i] >= dhi[i] else -coefs[1][i])

    def _middle(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """A point in the middle of the box (a grid point on an input grid)."""
        mid = (lo + hi) / 2
        if self.grid is None:
            return mid
        s = float(self.grid.step)
        return np.clip(np.floor(mid / s) * s, lo, hi)

    def _split(self, lo: np.ndarray, hi: np.ndarray, coef: np.ndarray) -> list[tuple] | None:
        width = hi - lo
        score = np.where(width > 0, (np.abs(coef) + 1e-12) * width, -1.0)
        i = int(score.argmax())
        if score[i] < 0:
            return None
        hi_a, lo_b = hi.copy(), lo.copy()
        if self.grid is not None:  # halve the codes: no grid point is lost or shared
            s = self.grid.step
            klo, khi = round(Fraction(lo[i]) / s), round(Fraction(hi[i]) / s)
            mid = (klo + khi) // 2
            hi_a[i], lo_b[i] = float(mid * s), float((mid + 1) * s)
        else:
            hi_a[i] = lo_b[i] = (lo[i] + hi[i]) / 2
        return [(lo, hi_a), (lo_b, hi)]

    def run(self, lo: np.ndarray, hi: np.ndarray, deadline: float, max_nodes: int = 100_000) -> Outcome:
        order = itertools.count()
        heap = [(-np.inf, next(order), 0, lo, hi)]
        nodes = depth = 0
        while heap:
            if time.perf_counter() > deadline or nodes >= max_nodes:
                return Outcome("open", None, nodes, depth, f"branch and bound stopped after {nodes} nodes")
            _, _, d, lo, hi = heapq.heappop(heap)
            nodes += 1
            depth = max(depth, d)
            worst, coef = self.assess(lo, hi)
            if worst > 0 or (self.relation == "eps" and worst >= 0):
                continue
            corner = np.where(coef > 0, lo, hi)  # minimises the worst linear bound over the box
            x = self.falsify(np.stack([corner, self._middle(lo, hi)]))
            if x is not None:
                return Outcome("refuted", x, nodes, depth)
            children = self._split(lo, hi, coef)
            if children is None:
                return Outcome("open", None, nodes, depth, "a part of the region cannot be split further")
            for child in children:
                heapq.heappush(heap, (worst, next(order), d + 1, *child))
        return Outcome("proved", None, nodes, depth)
