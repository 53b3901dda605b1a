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
from .encode import BuildTimeout, Encoder, rv, violation
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
        self.cf = float_chain(f, self.d)
        self.cq = quant_chain(fq, self.d)
        if self.cf.out_features != self.cq.out_features:
            raise QuantizationError("f and f' have different output sizes")

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


def _region(
    center: torch.Tensor, delta: float, domain: tuple[float, float] | None, grid: Any
) -> tuple[np.ndarray, np.ndarray] | None:
    """The input box, shrunk to its extreme grid points when f' quantizes its input (``None``:
    the box holds no grid point)."""
    c = center.reshape(-1).double().numpy()
    lo, hi = c - delta, c + delta
    if domain is not None:
        lo, hi = np.maximum(lo, domain[0]), np.minimum(hi, domain[1])
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
        y, yq = p.outputs(x)
        for i in range(len(x)):
            if not holds(p.relation, y[i], yq[i], p.eps, p.norm):
                stats["replays"] += 1
                if p.confirmed(x[i]):
                    return x[i]
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
    n = crown.hi[-1].shape[0]
    others = [j for j in range(n) if j != c]
    A = -np.eye(n)[others]
    A[:, c] += 1.0
    interval = crown.lo[-1][c] - crown.hi[-1][others]  # sometimes the tighter of the two
    return bool((np.maximum(crown.linear_lower(A), interval) > 0).all())


def _prove_by_bounds(p: _Problem, cf: B.Crown, cq: B.Crown) -> bool:
    ylo, yhi, qlo, qhi = cf.lo[-1], cf.hi[-1], cq.lo[-1], cq.hi[-1]
    if p.relation == "top1":
        # a class that can win for f (its upper bound reaches every lower bound) is tried
        for c in _candidates(ylo, yhi):
            if _margins_positive(cf, c) and _margins_positive(cq, c):
                return True
        return False
    if p.relation == "strict":
        return bool((ylo == yhi).all() and (qlo == qhi).all() and (ylo == qlo).all())
    dlo, dhi = B.difference_bounds(cf, cq)
    gap = np.maximum(np.abs(dlo), np.abs(dhi))
    return bool((gap.max() if p.norm == "inf" else gap.sum()) <= p.eps)


def _candidates(lo: np.ndarray, hi: np.ndarray) -> list[int]:
    """Classes that can be the argmax somewhere: hi_i >= max_k lo_k."""
    floor = lo.max()
    return [i for i in range(len(lo)) if hi[i] >= floor]


def _z3(
    p: _Problem, lo: np.ndarray, hi: np.ndarray, bf: list, bq: list, timeout: float, stats: dict
) -> Result | None:
    deadline = time.perf_counter() + timeout
    s = z3.SolverFor("QF_LIRA")
    enc = Encoder(s, deadline)
    grid = p.cq.inp
    if grid is not None:
        step = grid.step
        ks = [z3.Int(f"x{i}") for i in range(p.d)]
        for k, a, b in zip(ks, lo, hi, strict=True):
            s.add(k >= round(Fraction(a) / step), k <= round(Fraction(b) / step))
        xs = [z3.ToReal(k) * z3.RealVal(f"{step.numerator}/{step.denominator}") for k in ks]
    else:
        xs = [z3.Real(f"x{i}") for i in range(p.d)]
        for x, a, b in zip(xs, lo, hi, strict=True):
            s.add(x >= rv(a), x <= rv(b))
    try:
        y = enc.network(p.cf, xs, bf, lo.tolist(), hi.tolist())
        # the input rounding of f' is the identity on grid points, and its bounds start from the box
        yq = enc.network(Chain(p.cq.layers, p.d), xs, bq, lo.tolist(), hi.tolist())
    except BuildTimeout:
        return None
    classes = (_candidates(bf[-1].lo, bf[-1].hi), _candidates(bq[-1].lo, bq[-1].hi))
    eps = Fraction(p.eps) if p.eps is not None else None
    s.add(violation(p.relation, y, yq, eps, p.norm, classes if p.relation == "top1" else None))
    stats["solver_calls"] += 1
    stats["neurons_fixed"] = enc.fixed
    stats["neurons"] = enc.total
    left = deadline - time.perf_counter()  # building the formula counts against the timeout
    if left <= 0:
        return None
    s.set("timeout", max(1, int(left * 1000)))
    answer = s.check()
    if answer == z3.unsat:
        return Result("EQUIVALENT", stats={**stats, "method": "z3"})
    if answer == z3.sat:
        m = s.model()
        if grid is not None:
            vals = [m.eval(k, model_completion=True).as_long() * grid.step for k in ks]
        else:
            vals = [m.eval(x, model_completion=True).as_fraction() for x in xs]
        x = torch.tensor([float(v) for v in vals], dtype=torch.float32).double()  # the models' inputs
        stats["replays"] += 1
        if p.confirmed(x):
            return Result(
                "NOT_EQUIVALENT", x.reshape(p.shape), "z3 model, replayed", {**stats, "method": "z3"}
            )
        return Result(
            "UNKNOWN",
            None,
            "z3's model did not replay on the concrete models (a float32/float64 knife edge)",
            {**stats, "method": "z3"},
        )
    return None


def verify_equivalence(
    f: nn.Module,
    fq: nn.Module,
    points: torch.Tensor,
    delta: float,
    relation: str = "top1",
    eps: float | None = None,
    norm: str = "inf",
    domain: tuple[float, float] | None = None,
    timeout: float = 60.0,
    samples: int = 256,
    seed: int = 0,
    use_bounds: bool = True,
) -> list[Result]:
    """Check ``f(x) ~ fq(x)`` for every input within ``delta`` (L-infinity) of each point.

    ``points``: a batch shaped like the models' input.  ``relation``: ``"strict"``, ``"top1"``
    (same argmax, ``torch.argmax``'s first-maximum rule) or ``"eps"`` (``||f - fq|| <= eps`` in
    ``norm`` ``"inf"`` or ``"l1"``).  ``domain``: the input box every coordinate stays in.
    ``use_bounds=False`` skips the bound stage (the plain z3 encoding, for comparison).
    """
    if relation not in RELATIONS:
        raise QuantizationError(f"relation must be one of {RELATIONS}, got {relation!r}")
    if norm not in NORMS:
        raise QuantizationError(f"norm must be one of {NORMS}, got {norm!r}")
    if relation == "eps" and (eps is None or not eps > 0):
        raise QuantizationError("relation='eps' needs eps > 0")
    if not delta >= 0 or not math.isfinite(delta):
        raise QuantizationError(f"delta must be a finite non-negative number, got {delta}")
    if not bool(torch.isfinite(points).all()):
        raise QuantizationError("points contain NaN or inf")
    p = _Problem(f, fq, tuple(points.shape[1:]), relation, eps, norm)
    gen = torch.Generator().manual_seed(seed)
    results = []
    for center in points:
        t0 = time.perf_counter()
        stats: dict[str, Any] = {"solver_calls": 0, "replays": 0, "neurons_fixed": 0, "neurons": 0}
        box = _region(center, delta, domain, p.cq.inp)
        if box is None:
            res = Result(
                "EQUIVALENT",
                None,
                "vacuous: the region holds no grid point of the input format",
                {**stats, "method": "vacuous", "seconds": time.perf_counter() - t0},
            )
            results.append(res)
            continue
        lo, hi = box
        cex = _falsify(p, lo, hi, samples, gen, stats)
        if cex is not None:
            res = Result(
                "NOT_EQUIVALENT",
                cex.reshape(p.shape),
                "found by sampling, replayed",
                {**stats, "method": "falsification"},
            )
        else:
            crown_f, crown_q = B.Crown(p.cf, lo, hi), B.Crown(Chain(p.cq.layers, p.d), lo, hi)
            bf, bq = crown_f.layer_bounds(), crown_q.layer_bounds()
            if use_bounds and _prove_by_bounds(p, crown_f, crown_q):
                res = Result("EQUIVALENT", stats={**stats, "method": "bounds"})
            else:
                if not use_bounds:  # plain encoding: only the input box bounds each layer
                    bf = _loose(bf)
                    bq = _loose(bq)
                remaining = timeout - (time.perf_counter() - t0)
                res = _z3(p, lo, hi, bf, bq, remaining, stats) if remaining > 0 else None
                if res is None:
                    res = Result(
                        "UNKNOWN", None, f"z3 gave no answer within {timeout} s", {**stats, "method": "z3"}
                    )
        res.stats["seconds"] = time.perf_counter() - t0
        results.append(res)
    return results


def _loose(bounds: list) -> list:
    """Bounds that fix nothing (for the plain z3 baseline)."""
    out = []
    for b in bounds:
        inf = np.full_like(b.lo, np.inf)
        out.append(B.LayerBounds(-inf, inf, -inf, inf))
    return out
