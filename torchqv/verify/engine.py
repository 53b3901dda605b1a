"""``verify_equivalence``: prove that f and f' agree near given points, or refute it.

For each point the region is the L-infinity ball of radius ``delta`` intersected with the input
domain box (or a box given directly).  When f' quantizes its input, the region's inputs are the
grid points of that format inside it, for f and f' alike (paper 001's setting).  The engine:

1. falsification: random points of the region (grid-snapped), corners and the centre, then a few
   steps of sign-gradient search on a differentiable surrogate (f' in training mode, STE);
2. interval bounds through both networks (``bounds.propagate``): some relations follow from them
   alone, and they fix stable activations and constant roundings;
3. the disjuncts of the violation left open: their root LP relaxations (certified, ``milp``), a
   quick z3 try, branch and bound (``branch`` for few inputs, then ``lp_branch``), then z3 with
   the time left; every z3 call has a hard deadline (``torchqv.z3_deadline``).

A counterexample is reported only after it is replayed on the concrete float model (float64)
and on the integer reference of f' (``torchqv.reference_forward``) and still violates the
relation; anything undecided is ``UNKNOWN`` with its reason, never a guess.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

from ..formats import QuantizationError
from ..reference import reference_forward
from . import bounds as B
from .branch import INPUT_SPLIT_DIMS, InputBranch, margin_rows, winners
from .encode import Query, queries
from .network import Chain, float_chain, quant_chain
from .queries import QuerySolver

RELATIONS = ("strict", "top1", "eps")
NORMS = ("inf", "l1")


@dataclass
class Result:
    """``verdict``: ``"EQUIVALENT"``, ``"NOT_EQUIVALENT"`` or ``"UNKNOWN"``."""

    verdict: str
    counterexample: torch.Tensor | None = None
    reason: str = ""
    stats: dict[str, Any] = field(default_factory=dict)


def holds(relation: str, y: torch.Tensor, yq: torch.Tensor, eps: float | None, norm: str) -> bool:
    """Does ``y ~ yq`` hold for one pair of output vectors (float64)?"""
    if relation == "strict":
        return bool(torch.equal(y, yq))
    if relation == "top1":
        return int(y.argmax()) == int(yq.argmax())
    d = (y - yq).abs()
    return bool((d.max() if norm == "inf" else d.sum()) <= eps)


class _Problem:
    def __init__(
        self, f: nn.Module, fq: nn.Module, shape: tuple[int, ...], relation: str, eps: float | None, norm: str
    ):
        self.f64 = copy.deepcopy(f).double().eval()
        self.fq = fq.eval()
        self.shape = shape
        self.d = int(np.prod(shape))
        self.relation, self.eps, self.norm = relation, eps, norm
        self.surrogate = copy.deepcopy(fq).train()  # differentiable f' (STE) for the search
        for prm in self.surrogate.parameters():
            prm.requires_grad_(False)
        self.cf = float_chain(f, shape)
        self.cq = quant_chain(fq, shape)
        if self.cf.out_features != self.cq.out_features:
            raise QuantizationError("f and f' have different output sizes")
        # the input rounding of f' is the identity on grid points; bounds start from the box
        self.cq_body = Chain(self.cq.layers, self.d)

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both models on the float32 points (the models' input type)."""
        xs = x.reshape(-1, *self.shape).float()
        with torch.no_grad():
            return self.f64(xs.double()).reshape(len(xs), -1), self.fq(xs).reshape(len(xs), -1)

    def confirmed(self, x: torch.Tensor) -> bool:
        """Replay on the float model (float64) and on the integer reference of f'."""
        xs = x.reshape(1, *self.shape).float()
        with torch.no_grad():
            y = self.f64(xs.double()).reshape(-1)
        yq = reference_forward(self.fq, xs).reshape(-1)
        return not holds(self.relation, y, yq, self.eps, self.norm)

    def falsify(self, points: np.ndarray | torch.Tensor, stats: dict | None = None) -> torch.Tensor | None:
        """The first of the points (rows) where the relation fails, replayed; else ``None``."""
        x = torch.as_tensor(points).reshape(len(points), -1).float().double()  # the models' inputs
        y, yq = self.outputs(x)
        for i in range(len(x)):
            if not holds(self.relation, y[i], yq[i], self.eps, self.norm):
                if stats is not None:
                    stats["replays"] += 1
                if self.confirmed(x[i]):
                    return x[i]
        return None


def _grid_box(lo_t: torch.Tensor, hi_t: torch.Tensor, grid: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The input box (flat), shrunk to its extreme grid points when f' quantizes its input
    (``None``: the box holds no grid point)."""
    lo, hi = lo_t.reshape(-1).numpy(), hi_t.reshape(-1).numpy()
    if grid is not None:  # grid points inside the box: the box shrinks to its extreme grid points
        s = grid.step
        kmin, kmax = grid.code_range
        klo = np.array([max(kmin, math.ceil(Fraction(v) / s)) for v in lo])
        khi = np.array([min(kmax, math.floor(Fraction(v) / s)) for v in hi])
        if bool((klo > khi).any()):
            return None
        lo, hi = klo * float(s), khi * float(s)
    return lo, hi


def _snap(x: torch.Tensor, grid: Any, lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
    x = torch.minimum(torch.maximum(x, torch.from_numpy(lo)), torch.from_numpy(hi))
    if grid is None:
        return x
    s = float(grid.step)
    return torch.clamp(torch.round(x / s) * s, torch.from_numpy(lo), torch.from_numpy(hi))


def _falsify(
    p: _Problem, lo: np.ndarray, hi: np.ndarray, samples: int, gen: torch.Generator, stats: dict
) -> torch.Tensor | None:
    grid = p.cq.inp
    lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)
    pts = [lo_t + (hi_t - lo_t) * torch.rand(samples, p.d, generator=gen, dtype=torch.float64)]
    pts += [((lo_t + hi_t) / 2).unsqueeze(0), lo_t.unsqueeze(0), hi_t.unsqueeze(0)]
    pts = _snap(torch.cat(pts), grid, lo, hi).float().double()
    for x in (pts, _gradient_search(p, pts[:16], lo, hi, grid)):
        cex = p.falsify(x, stats)
        if cex is not None:
            return cex
    return None


def _gradient_search(
    p: _Problem, starts: torch.Tensor, lo: np.ndarray, hi: np.ndarray, grid: Any, steps: int = 10
) -> torch.Tensor:
    """Sign-gradient ascent of a violation score on f (float) and f' (training mode, STE)."""
    surrogate = p.surrogate
    x = starts.clone().float()
    step = torch.from_numpy((hi - lo) / 4).float()
    with torch.no_grad():
        y0 = p.f64(starts.reshape(-1, *p.shape).double()).reshape(len(starts), -1)
    target = y0.argmax(1)
    for _ in range(steps):
        x.requires_grad_(True)
        yq = surrogate(x.reshape(-1, *p.shape)).reshape(len(x), -1)
        if p.relation == "top1":
            own = yq.gather(1, target[:, None]).squeeze(1)
            other = (
                yq.masked_fill(torch.nn.functional.one_hot(target, yq.shape[1]).bool(), -1e9).max(1).values
            )
            score = other - own
        else:
            with torch.no_grad():
                yf = p.f64(x.detach().reshape(-1, *p.shape).double()).reshape(len(x), -1).float()
            score = (yq - yf).abs().sum(1)
        (g,) = torch.autograd.grad(score.sum(), x)
        x = x.detach() + step * g.sign()
        step = step * 0.7
    return _snap(x.detach().double(), grid, lo, hi).float().double()


def _margins_positive(crown: B.Crown, c: int) -> bool:
    """Is ``y_c - y_j > 0`` for every ``j != c`` on the whole region (linear bounds)?"""
    hi = crown.hi[-1]
    interval = crown.lo[-1][c] - np.delete(hi, c)  # sometimes the tighter of the two
    return bool((np.maximum(crown.linear_lower(margin_rows(len(hi), c)), interval) > 0).all())


def _fixed_class(crown: B.Crown) -> int | None:
    """The class that is the argmax everywhere on the region, if the bounds prove one."""
    return next((c for c in winners(crown.lo[-1], crown.hi[-1]) if _margins_positive(crown, c)), None)


def _open_outputs(p: _Problem, cf: B.Crown, cq: B.Crown) -> list[int]:
    """Outputs whose difference bounds do not settle the strict / inf-norm eps relation."""
    dlo, dhi = B.difference_bounds(cf, cq)
    if p.relation == "strict":
        return [i for i in range(len(dlo)) if not (dlo[i] == dhi[i] == 0)]
    return [i for i in range(len(dlo)) if not (-p.eps <= dlo[i] and dhi[i] <= p.eps)]


def _prove_by_bounds(p: _Problem, cf: B.Crown, cq: B.Crown) -> bool:
    if p.relation == "top1":
        c = _fixed_class(cf)
        return c is not None and _margins_positive(cq, c)
    if p.relation == "strict":
        ylo, yhi, qlo, qhi = cf.lo[-1], cf.hi[-1], cq.lo[-1], cq.hi[-1]
        return bool((ylo == yhi).all() and (qlo == qhi).all() and (ylo == qlo).all())
    dlo, dhi = B.difference_bounds(cf, cq)
    gap = np.maximum(np.abs(dlo), np.abs(dhi))
    return bool((gap.max() if p.norm == "inf" else gap.sum()) <= p.eps)


def _boxes(
    points: torch.Tensor | None,
    delta: float | None,
    domain: tuple[Any, Any] | None,
    boxes: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The regions as ``(lo, hi)`` batches: L-inf balls around points intersected with the domain,
    or boxes given directly (also intersected with the domain)."""
    if (boxes is None) == (points is None):
        raise QuantizationError("give either points and delta, or boxes=(lo, hi)")
    if boxes is not None:
        lo, hi = (torch.as_tensor(b, dtype=torch.float64) for b in boxes)
        if lo.shape != hi.shape:
            raise QuantizationError(f"boxes: lo {tuple(lo.shape)} and hi {tuple(hi.shape)} differ in shape")
        if bool((lo > hi).any()):
            raise QuantizationError("boxes: some lo > hi")
    else:
        if delta is None or not delta >= 0 or not math.isfinite(delta):
            raise QuantizationError(f"delta must be a finite non-negative number, got {delta}")
        points = torch.as_tensor(points, dtype=torch.float64)
        lo, hi = points - delta, points + delta
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise QuantizationError("points or boxes contain NaN or inf")
    if domain is not None:
        d_lo, d_hi = (torch.as_tensor(v, dtype=torch.float64) for v in domain)
        try:
            lo, hi = torch.maximum(lo, d_lo), torch.minimum(hi, d_hi)
        except RuntimeError as err:
            raise QuantizationError(f"domain does not broadcast to the inputs' shape: {err}") from None
    return lo, hi


def verify_equivalence(
    f: nn.Module,
    fq: nn.Module,
    points: torch.Tensor | None = None,
    delta: float | None = None,
    relation: str = "top1",
    eps: float | None = None,
    norm: str = "inf",
    domain: tuple[Any, Any] | None = None,
    timeout: float = 60.0,
    samples: int = 256,
    seed: int = 0,
    use_bounds: bool = True,
    boxes: tuple[torch.Tensor, torch.Tensor] | None = None,
    branching: float = 0.5,
    input_split: int = INPUT_SPLIT_DIMS,
) -> list[Result]:
    """Check ``f(x) ~ fq(x)`` for every input within ``delta`` (L-infinity) of each point.

    ``points``: a batch shaped like the models' input.  ``relation``: ``"strict"``, ``"top1"``
    (same argmax, ``torch.argmax``'s first-maximum rule) or ``"eps"`` (``||f - fq|| <= eps`` in
    ``norm`` ``"inf"`` or ``"l1"``).  ``domain``: ``(lo, hi)``, numbers or tensors broadcastable
    to one input, the box every input stays in.  ``boxes=(lo, hi)``: regions given directly
    (batches shaped like the input) instead of points and delta.  ``timeout``: seconds per region;
    ``branching``: the share of it that branch and bound may use before z3 gets the rest.
    Regions with at most ``input_split`` free input coordinates are first branched by splitting
    the box; then the LP search on the MILP encoding takes over.  ``use_bounds=False`` skips bounds
    and branching (the plain z3 encoding, for comparison).
    """
    if relation not in RELATIONS:
        raise QuantizationError(f"relation must be one of {RELATIONS}, got {relation!r}")
    if norm not in NORMS:
        raise QuantizationError(f"norm must be one of {NORMS}, got {norm!r}")
    if relation == "eps" and (eps is None or not eps > 0):
        raise QuantizationError("relation='eps' needs eps > 0")
    if not timeout > 0 or not 0 <= branching <= 1:
        raise QuantizationError(f"timeout must be > 0 and branching in [0, 1], got {timeout}, {branching}")
    lo_all, hi_all = _boxes(points, delta, domain, boxes)
    p = _Problem(f, fq, tuple(lo_all.shape[1:]), relation, eps, norm)
    gen = torch.Generator().manual_seed(seed)
    results = []
    for box_lo, box_hi in zip(lo_all, hi_all, strict=True):
        t0 = time.perf_counter()
        stats: dict[str, Any] = {
            "solver_calls": 0,
            "replays": 0,
            "neurons_fixed": 0,
            "neurons": 0,
            "nodes": 0,
            "use_bounds": use_bounds,
        }
        res = _decide(
            p, box_lo, box_hi, t0 + timeout, t0 + branching * timeout, samples, gen, stats, input_split
        )
        del res.stats["use_bounds"]
        res.stats["seconds"] = time.perf_counter() - t0
        results.append(res)
    return results


def _decide(
    p: _Problem,
    box_lo: torch.Tensor,
    box_hi: torch.Tensor,
    deadline: float,
    bab_deadline: float,
    samples: int,
    gen: torch.Generator,
    stats: dict,
    input_split: int,
) -> Result:
    """One region: falsification, bounds, the root LP of every disjunct, a quick z3 try of each
    (a quarter of the time at most), branch and bound (input splitting for few inputs, then the LP
    search), z3 with the time left (in that order)."""
    box = _grid_box(box_lo, box_hi, p.cq.inp)
    if box is None:
        stats["method"] = "vacuous"
        return Result(
            "EQUIVALENT", None, "vacuous: the region holds no grid point of the input format", stats
        )
    lo, hi = box
    stats["method"] = "falsification"
    cex = _falsify(p, lo, hi, samples, gen, stats)
    if cex is not None:
        return Result("NOT_EQUIVALENT", cex.reshape(p.shape), "found by sampling, replayed", stats)
    cf, cq = B.Crown(p.cf, lo, hi), B.Crown(p.cq_body, lo, hi)
    use_bounds = stats["use_bounds"]
    if use_bounds:
        stats["method"] = "bounds"
        if _prove_by_bounds(p, cf, cq):
            return Result("EQUIVALENT", None, "linear bounds", stats)
    todo, solver = _disjuncts(p, lo, hi, cf, cq, deadline, stats)
    lp = use_bounds and p.relation != "strict"
    if lp:  # the root LP of every disjunct: cheap, and it settles most of them
        stats["method"] = "LP branch and bound"
        found, todo = _lp_pass(p, solver, todo, bab_deadline, 1, stats)
        if found is not None or not todo:
            return found or Result("EQUIVALENT", None, "LP bounds on every disjunct of the violation", stats)
    stats["method"] = "z3"
    quick = min(0.02, 0.25 / max(len(todo), 1)) * (deadline - time.perf_counter())  # a quarter at most
    found, todo, reason = _z3_pass(solver, todo, deadline, quick)
    if found is not None or not todo:
        return found or Result("EQUIVALENT", None, "z3: every disjunct of the violation is unsat", stats)
    if lp:
        if int((hi > lo).sum()) <= input_split and bab_deadline > time.perf_counter():
            stats["method"] = "branch and bound"
            bab = InputBranch(p.cf, p.cq_body, p.relation, p.eps, p.norm, p.cq.inp, p.falsify)
            t = time.perf_counter()
            out = bab.run(lo, hi, t + 0.75 * (bab_deadline - t))  # most of it; the LP search next
            stats["depth"] = out.depth
            stats["nodes"] += out.nodes
            if out.status == "proved":
                return Result("EQUIVALENT", None, f"input branch and bound, {out.nodes} nodes", stats)
            if out.status == "refuted":
                return Result(
                    "NOT_EQUIVALENT", out.point.reshape(p.shape), "branch and bound, replayed", stats
                )
        stats["method"] = "LP branch and bound"
        found, todo = _lp_pass(p, solver, todo, bab_deadline, 20_000, stats)
        if found is not None or not todo:
            return found or Result(
                "EQUIVALENT", None, "LP branch and bound on every disjunct of the violation", stats
            )
        stats["method"] = "z3"
    found, todo, reason = _z3_pass(solver, todo, deadline, np.inf)
    if found is not None:
        return found
    if todo:
        return Result("UNKNOWN", None, reason, stats)
    return Result("EQUIVALENT", None, "z3: every disjunct of the violation is unsat", stats)


def _lp_pass(
    p: _Problem, solver: QuerySolver, todo: list[Query], deadline: float, max_nodes: int, stats: dict
) -> tuple[Result | None, list[Query]]:
    """The LP search on each disjunct (at most ``max_nodes`` nodes, equal shares of the time
    left): a replayed counterexample, or the disjuncts still open."""
    left = []
    for i, query in enumerate(todo):
        share = (deadline - time.perf_counter()) / (len(todo) - i)
        status, info = solver.lp(query, time.perf_counter() + max(share, 0.0), max_nodes)
        if status == "refuted":
            return Result("NOT_EQUIVALENT", info.reshape(p.shape), "LP branch and bound, replayed", stats), []
        if status == "open":
            left.append(query)
    return None, left


def _disjuncts(
    p: _Problem, lo: np.ndarray, hi: np.ndarray, cf: B.Crown, cq: B.Crown, deadline: float, stats: dict
) -> tuple[list[Query], QuerySolver]:
    """The disjuncts of the violation left open by the bounds, and their solver."""
    bounds = (cf.layer_bounds(), cq.layer_bounds())
    n = p.cf.out_features
    if not stats["use_bounds"]:  # plain encoding: only the input box bounds each layer
        bounds = (_loose(bounds[0]), _loose(bounds[1]))
        classes, fixed, todo = (list(range(n)), list(range(n))), (None, None), list(range(n))
    elif p.relation == "top1":
        classes = (winners(bounds[0][-1].lo, bounds[0][-1].hi), winners(bounds[1][-1].lo, bounds[1][-1].hi))
        fixed, todo = (_fixed_class(cf), _fixed_class(cq)), []
    else:
        classes, fixed, todo = ([], []), (None, None), _open_outputs(p, cf, cq)
    eps = Fraction(p.eps) if p.eps is not None else None
    disjuncts = queries(p.relation, n, eps, p.norm, classes, fixed, todo)
    return disjuncts, QuerySolver(p, lo, hi, bounds, disjuncts, stats, deadline)


def _z3_pass(
    solver: QuerySolver, todo: list[Query], deadline: float, cap: float
) -> tuple[Result | None, list[Query], str]:
    """z3 on each disjunct, sharing the time left (at most ``cap`` seconds each): a replayed
    counterexample, or the disjuncts still open and why."""
    left, reason = [], ""
    for i, query in enumerate(todo):
        budget = min(cap, (deadline - time.perf_counter()) / (len(todo) - i))
        status, info = solver.z3(query, time.perf_counter() + max(budget, 0.0))
        if status == "refuted":
            stats = solver.stats
            return (
                Result("NOT_EQUIVALENT", info.reshape(solver.p.shape), f"z3 ({query.what}), replayed", stats),
                [],
                "",
            )
        if status == "unknown":
            left.append(query)
            reason = info
    return None, left, reason


def _loose(bounds: list) -> list:
    """Bounds that fix nothing (for the plain z3 baseline)."""
    out = []
    for b in bounds:
        inf = np.full_like(b.lo, np.inf)
        out.append(B.LayerBounds(-inf, inf, -inf, inf))
    return out
