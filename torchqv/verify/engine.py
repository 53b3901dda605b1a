"""``verify_equivalence``: prove that f and f' agree near given points, or refute it.

For each point the region is the L-infinity ball of radius ``delta`` intersected with the input
domain box (or a box given directly).  When f' quantizes its input, the region's inputs are the
grid points of that format inside it, for f and f' alike (paper 001's setting).  The engine:

1. falsification: random points of the region (grid-snapped), corners and the centre, then a few
   steps of sign-gradient search on a differentiable surrogate (f' in training mode, STE);
2. interval bounds through both networks (``bounds.propagate``): some relations follow from them
   alone, and they fix stable activations and constant roundings;
3. z3 on what is left, with a per-query timeout.

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
import z3
from torch import nn

from ..formats import QuantizationError
from ..reference import reference_forward
from . import bounds as B
from .branch import INPUT_SPLIT_DIMS, InputBranch, margin_rows, winners
from .encode import BuildTimeout, Encoder, Query, queries, rv
from .lp_branch import LPBranch, LPOutcome
from .milp import Lin, Model
from .network import Chain, float_chain, quant_chain

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


def _input_terms(p: _Problem, s: z3.Solver, lo: np.ndarray, hi: np.ndarray) -> tuple[list, Any]:
    """z3 inputs ranging over the box (its grid points when f' quantizes its input) and a
    function reading the point from a model."""
    grid = p.cq.inp
    if grid is not None:
        step = grid.step
        ks = [z3.Int(f"x{i}") for i in range(p.d)]
        for k, a, b in zip(ks, lo, hi, strict=True):
            s.add(k >= round(Fraction(a) / step), k <= round(Fraction(b) / step))
        xs = [z3.ToReal(k) * rv(step) for k in ks]
        return xs, lambda m: [m.eval(k, model_completion=True).as_long() * step for k in ks]
    xs = [z3.Real(f"x{i}") for i in range(p.d)]
    for x, a, b in zip(xs, lo, hi, strict=True):
        s.add(x >= rv(a), x <= rv(b))
    return xs, lambda m: [m.eval(x, model_completion=True).as_fraction() for x in xs]


def _lp_inputs(
    p: _Problem, model: Model, lo: np.ndarray, hi: np.ndarray
) -> tuple[list[Lin], list, np.ndarray]:
    """MILP input expressions (integer codes on an input grid), their variables and the fixed values."""
    grid, xs, inputs, fixed = p.cq.inp, [], [], np.zeros(p.d)
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        if a == b:
            xs.append(Lin(const=float(a)))
            inputs.append(None)
            fixed[i] = a
        elif grid is not None:
            scale = float(grid.step)
            v = model.var(float(round(Fraction(a) / grid.step)), float(round(Fraction(b) / grid.step)), True)
            xs.append(Lin({v: scale}))
            inputs.append((v, scale))
        else:
            v = model.var(float(a), float(b))
            xs.append(Lin({v: 1.0}))
            inputs.append((v, 1.0))
    return xs, inputs, fixed


def _lp_search(
    p: _Problem, query: Query, lo: np.ndarray, hi: np.ndarray, bounds: tuple, deadline: float, stats: dict
) -> LPOutcome | None:
    """Branch and bound with certified LP bounds on one linear query (``None``: not applicable)."""
    if query.objective is None or not (p.cf.floats_exact and p.cq_body.floats_exact):
        return None
    model = Model()
    xs, inputs, fixed = _lp_inputs(p, model, lo, hi)
    bf, bq = bounds
    y = model.network(p.cf, xs, bf, lo.tolist(), hi.tolist(), query.f_out) if query.f_out else []
    yq = model.network(p.cq_body, xs, bq, lo.tolist(), hi.tolist(), query.q_out) if query.q_out else []

    def linear(form: tuple) -> Lin:
        a, b, c = form
        e = Lin(const=float(c))
        for outs, coefs in ((y, a), (yq, b)):
            for i, w in coefs.items():
                e = e.plus(outs[i], float(w))
        return e

    for form, _ in query.given:  # the part of the region the query is about (closed: a relaxation)
        model.row(linear(form), 0.0, np.inf)
    out = LPBranch(model, linear(query.objective), query.strict, inputs, fixed, p.falsify).run(deadline)
    stats["nodes"] += out.nodes
    return out


def _z3_query(
    p: _Problem, query: Query, lo: np.ndarray, hi: np.ndarray, bounds: tuple, deadline: float, stats: dict
) -> Result | None:
    """One query with z3: ``None`` when unsat (the disjunct cannot happen)."""
    s = z3.SolverFor("QF_LIRA")
    enc = Encoder(s, deadline)
    xs, read = _input_terms(p, s, lo, hi)
    bf, bq = bounds
    try:
        y = enc.network(p.cf, xs, bf, lo.tolist(), hi.tolist(), query.f_out) if query.f_out else []
        yq = enc.network(p.cq_body, xs, bq, lo.tolist(), hi.tolist(), query.q_out) if query.q_out else []
    except BuildTimeout:
        return Result("UNKNOWN", None, "no decision within the timeout (building the z3 formula)", stats)
    s.add(query.violated(y, yq))
    stats["solver_calls"] += 1
    stats["neurons_fixed"] += enc.fixed
    stats["neurons"] += enc.total
    left = deadline - time.perf_counter()  # building the formula counts against the timeout
    if left <= 0:
        return Result("UNKNOWN", None, f"no decision within the timeout ({query.what})", stats)
    s.set("timeout", max(1, int(left * 1000)))
    answer = s.check()
    if answer == z3.unsat:
        return None
    if answer == z3.unknown:
        return Result("UNKNOWN", None, f"no decision within the timeout (z3 on {query.what})", stats)
    x = torch.tensor([float(v) for v in read(s.model())], dtype=torch.float32).double()
    stats["replays"] += 1
    if p.confirmed(x):
        return Result("NOT_EQUIVALENT", x.reshape(p.shape), f"z3 model ({query.what}), replayed", stats)
    return Result(
        "UNKNOWN",
        None,
        "z3's model did not replay on the concrete models (a float32/float64 knife edge)",
        stats,
    )


def _by_queries(
    p: _Problem,
    lo: np.ndarray,
    hi: np.ndarray,
    crowns: tuple[B.Crown, B.Crown],
    lp_deadline: float,
    deadline: float,
    stats: dict,
) -> Result:
    """Decide the region one disjunct of the violation at a time: LP branch and bound on the
    MILP encoding (many inputs), then z3.  The bounds fix neurons in both encodings."""
    cf, cq = crowns
    bounds = (cf.layer_bounds(), cq.layer_bounds())
    use_bounds = stats["use_bounds"]
    if not use_bounds:  # plain encoding: only the input box bounds each layer
        bounds = (_loose(bounds[0]), _loose(bounds[1]))
    n = p.cf.out_features
    if p.relation == "top1":
        classes = (winners(bounds[0][-1].lo, bounds[0][-1].hi), winners(bounds[1][-1].lo, bounds[1][-1].hi))
        fixed = (_fixed_class(cf), _fixed_class(cq)) if use_bounds else (None, None)
        todo = []
    else:
        classes, fixed = ([], []), (None, None)
        todo = _open_outputs(p, cf, cq) if use_bounds else list(range(n))
    eps = Fraction(p.eps) if p.eps is not None else None
    todo_queries = queries(p.relation, n, eps, p.norm, classes, fixed, todo)
    left = list(todo_queries)
    if use_bounds:  # first the LP search on every query ...
        left = []
        for i, query in enumerate(todo_queries):
            share = (lp_deadline - time.perf_counter()) / (len(todo_queries) - i)
            out = _lp_search(p, query, lo, hi, bounds, time.perf_counter() + max(share, 0.0), stats)
            if out is not None and out.status == "refuted":
                return Result(
                    "NOT_EQUIVALENT", out.point.reshape(p.shape), "LP branch and bound, replayed", stats
                )
            if out is None or out.status == "open":
                left.append(query)
    if left:
        stats["method"] = "z3"
    unknown = None
    for i, query in enumerate(left):  # ... then z3 on what is left, sharing the time
        share = (deadline - time.perf_counter()) / (len(left) - i)
        res = _z3_query(p, query, lo, hi, bounds, time.perf_counter() + max(share, 0.0), stats)
        if res is not None and res.verdict == "NOT_EQUIVALENT":
            return res
        unknown = unknown or res
    if unknown is not None:
        return unknown
    return Result("EQUIVALENT", None, f"all {len(todo_queries)} disjuncts of the violation ruled out", stats)


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
    """One region: falsification, bounds, branch and bound, z3 (in that order)."""
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
    crowns = (B.Crown(p.cf, lo, hi), B.Crown(p.cq_body, lo, hi))
    few_inputs = int((hi > lo).sum()) <= input_split  # split the box; else LP branch and bound
    if stats["use_bounds"]:
        stats["method"] = "bounds"
        if _prove_by_bounds(p, *crowns):
            return Result("EQUIVALENT", None, "linear bounds", stats)
        if p.relation != "strict" and few_inputs and bab_deadline > time.perf_counter():
            stats["method"] = "branch and bound"
            bab = InputBranch(p.cf, p.cq_body, p.relation, p.eps, p.norm, p.cq.inp, p.falsify)
            out = bab.run(lo, hi, (time.perf_counter() + bab_deadline) / 2)  # half; the LP search next
            stats["nodes"], stats["depth"] = out.nodes, out.depth
            if out.status == "proved":
                return Result("EQUIVALENT", None, f"branch and bound, {out.nodes} nodes", stats)
            if out.status == "refuted":
                return Result(
                    "NOT_EQUIVALENT", out.point.reshape(p.shape), "branch and bound, replayed", stats
                )
        stats["method"] = "LP branch and bound"
    return _by_queries(p, lo, hi, crowns, bab_deadline, deadline, stats)


def _loose(bounds: list) -> list:
    """Bounds that fix nothing (for the plain z3 baseline)."""
    out = []
    for b in bounds:
        inf = np.full_like(b.lo, np.inf)
        out.append(B.LayerBounds(-inf, inf, -inf, inf))
    return out
