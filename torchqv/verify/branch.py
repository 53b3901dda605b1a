"""Input-splitting branch and bound on the linear bounds (the proof stage for small inputs, such
as ACAS Xu's five).

A node is an input sub-box.  ``bounds.Crown`` bounds both networks on it; the node is *proved*
when the relation follows from them, *refuted* when a concrete point of it (the corner that
minimises the worst bound, and its middle) violates the relation after replay, and otherwise cut
in two along the coordinate with the largest ``|coefficient| * width`` in the worst bound (on an
input grid the codes are halved, so no grid point is lost).  Boxes are exact (``region.Box``);
the bounds are computed on their float ends rounded outwards.  The children cover the node, so
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
from .network import Chain
from .region import Box, down
from .verdicts import Decision


@dataclass
class Outcome:
    status: Decision
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
    """Search over one region; ``falsify(points)`` returns a counterexample (exact points,
    replayed exactly) or ``None``."""

    def __init__(
        self,
        cf: Chain,
        cq: Chain,
        relation: str,
        eps: Fraction | None,
        norm: str,
        falsify: Callable[[list], Any],
    ):
        self.nets = (cf, cq)
        self.relation, self.eps, self.norm = relation, eps, norm
        self.falsify = falsify

    def assess(self, box: Box) -> tuple[float, np.ndarray]:
        """The worst bound of the best attempt (``> 0``, or ``>= 0`` for eps: proved) and the
        input coefficients of that bound; the bounds hold on the box's float ends rounded
        outwards, so for every exact point of it."""
        lo, hi = box.floats()
        cf, cq = (Crown(net, lo, hi) for net in self.nets)
        if self.relation == "top1":
            best = (-np.inf, np.zeros_like(lo))
            for c in winners(cf.lo[-1], cf.hi[-1]):
                A = margin_rows(len(cf.hi[-1]), c)
                worst: tuple[float, Any] = (np.inf, None)
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
        i = int(excess.argmax())
        coef = coefs[0][i] if -dlo[i] >= dhi[i] else -coefs[1][i]
        if not np.isfinite(excess).all():
            return -np.inf, coef
        total = (
            max(Fraction(v) for v in excess.tolist())
            if self.norm == "inf"
            else sum((Fraction(v) for v in excess.tolist()), Fraction(0))
        )
        assert self.eps is not None  # the relation eps has a tolerance
        return down(self.eps - total), coef  # exact slack, rounded down: its sign is kept

    def _split(self, box: Box, coef: np.ndarray) -> list[Box] | None:
        lo, hi = box.floats()
        width = np.array([float(b - a) for a, b in zip(box.lo, box.hi, strict=True)])
        score = np.where(width > 0, (np.abs(coef) + 1e-12) * np.maximum(width, hi - lo), -1.0)
        i = int(score.argmax())
        if score[i] < 0:
            return None
        parts = box.split(i)
        return list(parts) if parts is not None else None

    def run(self, box: Box, deadline: float, max_nodes: int = 100_000) -> Outcome:
        order = itertools.count()
        heap = [(-np.inf, next(order), 0, box)]
        nodes = depth = 0
        while heap:
            if time.perf_counter() > deadline or nodes >= max_nodes:
                return Outcome(
                    Decision.OPEN, None, nodes, depth, f"branch and bound stopped after {nodes} nodes"
                )
            _, _, d, node = heapq.heappop(heap)
            nodes += 1
            depth = max(depth, d)
            worst, coef = self.assess(node)
            if worst > 0 or (self.relation == "eps" and worst >= 0):
                continue
            corner = node.corner(coef <= 0)  # minimises the worst linear bound over the box
            x = self.falsify([corner, node.middle()])
            if x is not None:
                return Outcome(Decision.REFUTED, x, nodes, depth)
            children = self._split(node, coef)
            if children is None:
                return Outcome(
                    Decision.OPEN, None, nodes, depth, "a part of the region cannot be split further"
                )
            for child in children:
                heapq.heappush(heap, (worst, next(order), d + 1, child))
        return Outcome(Decision.PROVED, None, nodes, depth)
