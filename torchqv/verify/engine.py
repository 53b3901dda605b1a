"""``verify_equivalence``: prove that f and f' agree near given points, or refute it.

Semantics (one exact meaning for every stage of the engine):

* **Numbers.** Every user number is taken at its exact value: floats (points, ``delta``,
  ``domain``, ``boxes``, ``eps``) at their exact binary value, ``Fraction`` and ``"p/q"`` strings
  as the rationals they are.
* **Regions.** The region of point ``c`` is the closed box ``{x : |x_i - c_i| <= delta}``
  intersected with the domain box ``[lo, hi]``, computed in exact rationals (``boxes=(lo, hi)``:
  the box itself, intersected with the domain).  When f' quantizes its input (step ``s``,
  centered codes ``[kmin, kmax]``), the region is the finite set of grid points ``k * s`` of that
  box (the setting of Park, Park & Hwang, "On expressive power of quantized neural networks under
  fixed-point arithmetic"), exactly: a coordinate with one grid point is that rational (``3/5`` on the step
  ``1/5``).  An empty region (domain ``lo > hi``, a point outside the domain, a box disjoint from the
  domain, a region without a grid point) is a user error: ``QuantizationError`` before any solving, naming
  the regions and the fix.
* **Networks.** f is the real-valued network of its weights' exact values, evaluated exactly at
  rational points (``network.float_chain(f).exact``); f' is the fixed-point network of
  ``torchqv.reference_forward``: on a grid point ``k * s`` its input rounds to the code ``k``,
  so ``f'(k * s)`` is the integer reference run on any double of that code's rounding cell.
* **Relations**, decided exactly on the exact outputs ``y = f(x)`` and ``y' = f'(x)``: ``strict``
  ``y = y'``; ``top1`` equal argmax with ``torch.argmax``'s first-maximum rule; ``eps``
  ``||y - y'|| <= eps`` (``<=`` means ``<=``) in the L-inf or L1 norm.
* **Verdicts.** ``EQUIVALENT`` only with a proof over every point of the region (sound bounds,
  certified LP bounds, z3 unsat: all about the exact networks); ``NOT_EQUIVALENT`` only with an
  exact point of the region whose exact replay violates the relation: f by exact rationals, f'
  by ``reference_forward(..., exact=True)`` (for a continuous region at a point that is not a
  double, which ``reference_forward`` cannot take, by the exact chain of f'); ``UNKNOWN`` with its
  reason otherwise (the time limit, a solver that gave up), never a guess.  The result carries the
  exact point (``counterexample_exact``), its exact outputs, and ``counterexample``: the double
  nearest to it that f' rounds to the same input codes, so ``fq(counterexample)`` reproduces
  ``f'``'s output.
* **Time.** ``timeout`` seconds per region: every stage checks the deadline (z3 through a hard
  watchdog, HiGHS through its own time limit, encodings per neuron); a region may overrun by the
  time of one step that cannot be interrupted (one LP solve past its limit, one exact replay).
* **Determinism.** Region ``i`` draws its random points from its own generator, seeded from
  ``(seed, i)``: its result depends on f, f', the region, the options and ``i`` only, never on the
  other regions or on the order in which they run.  With ``workers=N`` or an ``executor`` the
  regions run elsewhere (:mod:`torchqv.verify.parallel`) and the results are those of the serial
  run, in the input order, except where time decides: the quick z3 pass and the LP search give
  each disjunct a share of the time left, and z3 runs to the deadline, so a region that reaches
  those stages may end otherwise on a machine with another load (another counterexample, another
  open disjunct, UNKNOWN instead of a verdict), serial runs included; regions decided by
  falsification or bounds, and any region whose stages finish within their shares, do not.

The engine, per region:

1. falsification: random points of the region, corners and the centre, then a few steps of
   sign-gradient search on a differentiable surrogate (f' in training mode, STE); float
   evaluation only screens candidates, which are then replayed exactly;
2. linear bounds through both networks (``bounds``, on the region's float box rounded outwards):
   some relations follow from them alone, and they fix stable activations and constant roundings;
3. the disjuncts of the violation left open: their root LP relaxations (certified, ``milp``), a
   quick z3 try, branch and bound (``branch`` for few inputs, then ``lp_branch``), then z3 with
   the time left; every z3 call has a hard deadline (``torchqv.z3_deadline``).
"""

from __future__ import annotations

import copy
import hashlib
import math
import pickle
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import keeps_modes
from ..errors import QuantizationError, UnsupportedModelError, VerificationInputError
from ..extras import require
from ..formats import fraction_to_float, is_dyadic
from ..graph import training_copy
from ..reference import reference_forward

require("z3", "torchqv.verify")  # the engine's solvers: the [verify] extra
require("scipy.sparse", "torchqv.verify")
require("scipy.optimize", "torchqv.verify")

from . import bounds as B  # noqa: E402
from .branch import InputBranch, margin_rows, winners  # noqa: E402
from .config import VerifyConfig  # noqa: E402
from .encode import Query, queries  # noqa: E402
from .network import Affine, Chain, Rounding, float_chain, quant_chain  # noqa: E402
from .parallel import check_executor, in_order, optional_pool  # noqa: E402
from .queries import QuerySolver  # noqa: E402
from .region import Box, Point, exact_number, exact_values, float32_within, grid_box  # noqa: E402
from .verdicts import Decision, Verdict  # noqa: E402

CONFIRM = 4  # exact replays per batch of screened candidates
REFERENCE_WEIGHTS = 20_000  # up to this many weights replays also run reference_forward (slow: ~40 us each)
REGIONS_PER_TASK = 1  # regions per executor task (BENCHMARKS: the best for regions of uneven cost)
PROBLEMS_PER_WORKER = 2  # problems a worker process keeps built (a problem is rebuilt per task at 0)


@dataclass
class Result:
    """``verdict``: a :class:`Verdict` (``EQUIVALENT``, ``NOT_EQUIVALENT`` or ``UNKNOWN``; equal to
    those strings).

    ``counterexample`` (float64, shaped like one input): the double nearest to the exact point
    that f' rounds to the same input codes; ``counterexample_exact``: the exact point (an object
    array of ``Fraction``, same shape); ``outputs_exact``: ``(f(x), f'(x))`` there, exactly."""

    verdict: Verdict
    counterexample: torch.Tensor | None = None
    reason: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    counterexample_exact: np.ndarray | None = None
    outputs_exact: tuple[list[Fraction], list[Fraction]] | None = None


def holds(relation: str, y: torch.Tensor, yq: torch.Tensor, eps: float | None, norm: str) -> bool:
    """Does ``y ~ yq`` hold for one pair of output vectors (float64; a screen, not a decision)?"""
    if relation == "strict":
        return bool(torch.equal(y, yq))
    if relation == "top1":
        return int(y.argmax()) == int(yq.argmax())
    d = (y - yq).abs()
    assert eps is not None  # the relation "close" has a tolerance
    return bool((d.max() if norm == "inf" else d.sum()) <= eps)


def first_argmax(y: list[Fraction]) -> int:
    """``torch.argmax``'s rule: the first index of the maximum."""
    best = 0
    for i in range(1, len(y)):
        if y[i] > y[best]:
            best = i
    return best


def holds_exact(
    relation: str, y: list[Fraction], yq: list[Fraction], eps: Fraction | None, norm: str
) -> bool:
    """Does ``y ~ yq`` hold, decided exactly on rational outputs?"""
    if relation == "strict":
        return list(y) == list(yq)
    if relation == "top1":
        return first_argmax(y) == first_argmax(yq)
    d = [abs(a - b) for a, b in zip(y, yq, strict=True)]
    assert eps is not None  # the relation "close" has a tolerance
    return (max(d) if norm == "inf" else sum(d, Fraction(0))) <= eps


@dataclass
class Counterexample:
    """An exact point of the region where the exact replay violates the relation."""

    x: list[Fraction]
    y: list[Fraction]
    yq: list[Fraction]
    double: np.ndarray  # what the concrete f' was run on (its input codes are x's)
    oracle: str


class OracleMismatch(Exception):
    """The exact chain of f' and ``reference_forward`` disagree (an internal error)."""


class _Problem:
    def __init__(
        self,
        f: nn.Module,
        fq: nn.Module,
        shape: tuple[int, ...],
        relation: str,
        eps: Fraction | None,
        norm: str,
    ):
        self.f64 = copy.deepcopy(f).double().eval()
        self.fq = fq.eval()
        self.shape = shape
        self.d = int(np.prod(shape))
        self.relation, self.eps, self.norm = relation, eps, norm
        self.surrogate = training_copy(fq, "verify_equivalence(fq)")  # differentiable f' (STE) for the search
        for prm in self.surrogate.parameters():
            prm.requires_grad_(False)
        for module in self.surrogate.modules():  # its steps stay f''s whatever it sees (no state
            if hasattr(module, "observer_enabled"):  # carried from one region to the next)
                module.observer_enabled = False  # type: ignore[assignment]  # torch's stubs: tensors and modules only
        self.cf = float_chain(f, shape)
        self.cq = quant_chain(fq, shape)
        if self.cf.out_features != self.cq.out_features:
            raise VerificationInputError("f and f' have different output sizes")
        self.grid: Rounding | None = self.cq.inp
        if self.grid is not None and self.grid.fmt.binary:
            raise UnsupportedModelError(
                "the verifier does not support a binary input format (its grid {-s, +s} is not a "
                "range of codes); give QConfig.input a FixedPoint with bits >= 2"
            )
        # the input rounding of f' is the identity on grid points; bounds start from the box
        self.cq_body = Chain(self.cq.layers, self.d)
        self.weights = sum(layer.nnz for layer in self.cq.layers if isinstance(layer, Affine))
        self._cells: dict[int, float] = {}
        self.box: Box | None = None  # the region being decided

    # ------------------------------------------------------------------ exact points as doubles
    def _cell_double(self, k: int) -> float:
        """A double that f''s input rounding maps to the code ``k`` (the nearest such double)."""
        if k not in self._cells:
            g = self.grid
            assert g is not None  # only on a grid
            f = float(k * g.step)
            for cand in (f, float(np.nextafter(f, np.inf)), float(np.nextafter(f, -np.inf))):
                if g.fmt.saturate_exact(g.fmt.round_exact(Fraction(cand) / g.step), g.zp) == k:
                    f = cand
                    break
            else:  # pragma: no cover - a cell narrower than three doubles
                raise VerificationInputError(f"input step {g.step}: no double rounds to code {k}")
            self._cells[k] = f
        return self._cells[k]

    def doubles(self, points: list[Point]) -> tuple[np.ndarray, np.ndarray]:
        """Float64 inputs for the concrete f (the doubles nearest to the exact points) and f' (the
        nearest doubles with the same input codes), one row per point."""
        if self.grid is None:
            near: np.ndarray = np.array([[float(t) for t in x] for x in points], dtype=np.float64)
            return near.reshape(len(points), self.d), near.reshape(len(points), self.d)
        codes = np.stack([np.asarray(c, dtype=np.int64).reshape(-1) for c in points])
        s = self.grid.step
        if is_dyadic(s) and s.numerator * int(np.abs(codes).max(initial=0)) < 2**53:
            near = codes * float(s)  # k * s is a double: its own cell's representative
            return near, near
        near = (codes * float(s.numerator)) / float(s.denominator)  # one rounding: the nearest double
        keys, inverse = np.unique(codes, return_inverse=True)
        cells = np.array([self._cell_double(int(k)) for k in keys], dtype=np.float64)[inverse]
        return near, cells.reshape(codes.shape)

    # ------------------------------------------------------------------ replay
    def confirm(self, point: Point) -> Counterexample | None:
        """Exact replay at a point of the region (on a continuous region a float32 point next to
        it is tried first: the models' input type, for a counterexample users can rerun)."""
        if self.grid is None and self.box is not None:
            near = [float32_within(t, a, b) for t, a, b in zip(point, self.box.lo, self.box.hi, strict=True)]
            if None not in near and near != list(point):
                cex = self._confirm(near)
                if cex is not None:
                    return cex
        return self._confirm(point)

    def _confirm(self, point: Point) -> Counterexample | None:
        """Exact replay: f by exact rationals (its chain); f' by its exact chain, which must
        agree with ``reference_forward(..., exact=True)`` (small networks) or else with the
        eval-mode simulation's doubles (the nearest doubles of the exact values); at a point that
        is not a double on a continuous region, the chain alone."""
        x = self.grid_exact(point)
        if self.box is not None and not self.box.contains(x):
            return None  # never a counterexample outside the region
        y = self.cf.exact(x)
        yq = self.cq.exact(x)
        _, xq = self.doubles([point])
        oracle = "exact chain of f' (the point is not a double)"
        if self.grid is not None or all(Fraction(float(t)) == t for t in x):
            xt = torch.from_numpy(xq).reshape(1, *self.shape)
            if self.weights <= REFERENCE_WEIGHTS:
                ref = [
                    Fraction(v)
                    for v in np.asarray(reference_forward(self.fq, xt, exact=True)).reshape(-1).tolist()
                ]
                oracle = "reference_forward"
                same = ref == yq
            else:
                with torch.no_grad():
                    sim = self.fq(xt).reshape(-1).double().tolist()
                oracle = "exact chain of f', checked against fq's eval-mode simulation"
                same = sim == [fraction_to_float(v) for v in yq]
            if not same:
                raise OracleMismatch(
                    f"internal error: the verifier's exact chain of f' and {oracle.split(',')[0]} "
                    f"disagree at x = {[str(t) for t in x]}; please report it"
                )
        if holds_exact(self.relation, y, yq, self.eps, self.norm):
            return None
        return Counterexample(x, y, yq, xq[0], oracle)

    def grid_exact(self, point: Point) -> list[Fraction]:
        if self.grid is None:
            return [Fraction(t) for t in point]
        return [int(k) * self.grid.step for k in np.asarray(point).reshape(-1).tolist()]

    def _scores(self, y: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
        """Float violation scores (> 0: looks violated; near 0: too close to tell)."""
        if self.relation == "strict":  # every point: the most different first
            return (y - yq).abs().amax(1)
        if self.relation == "top1":
            c = y.argmax(1)
            own = yq.gather(1, c[:, None]).squeeze(1)
            other = yq.scatter(1, c[:, None], -torch.inf).amax(1)
            fc = y.gather(1, c[:, None]).squeeze(1)
            f_gap = fc - y.scatter(1, c[:, None], -torch.inf).amax(1)  # f's own margin
            return torch.maximum(other - own, -f_gap.abs())
        d = (y - yq).abs()
        total = d.amax(1) if self.norm == "inf" else d.sum(1)
        assert self.eps is not None  # the relation "close" has a tolerance
        return total - float(self.eps)

    def screen(self, points: list[Point]) -> list[int]:
        """Indices of the points worth an exact replay: those violated on the concrete models (in
        order), then those within float64's error of violated."""
        if not points:
            return []
        xf, xq = self.doubles(points)
        with torch.no_grad():
            y = self.f64(torch.from_numpy(xf).reshape(-1, *self.shape)).reshape(len(points), -1)
            yq = self.fq(torch.from_numpy(xq).reshape(-1, *self.shape)).reshape(len(points), -1).double()
        score = self._scores(y, yq)
        scale = 1e-9 * (1.0 + y.abs().amax(1) + yq.abs().amax(1))
        violated = (y != yq).any(1) if self.relation == "strict" else score > 0
        near = ~violated & (score > -scale)
        return torch.nonzero(violated).reshape(-1).tolist() + torch.nonzero(near).reshape(-1).tolist()

    def falsify(
        self, points: list[Point], stats: dict | None = None, limit: int = CONFIRM
    ) -> Counterexample | None:
        """The first screened point whose exact replay violates the relation (at most ``limit``
        replays), else ``None``."""
        for i in self.screen(points)[:limit]:
            if stats is not None:
                stats["replays"] += 1
            cex = self.confirm(points[i])
            if cex is not None:
                return cex
        return None


def _falsify(
    p: _Problem, box: Box, samples: int, gen: torch.Generator, stats: dict, deadline: float = math.inf
) -> Counterexample | None:
    pts = [*box.sample(samples, gen), box.middle(), box.low(), box.high()]
    cex = p.falsify(pts, stats)
    if cex is not None:
        return cex
    until = time.perf_counter() + 0.1 * max(deadline - time.perf_counter(), 0.0)  # a tenth at most
    return p.falsify(_gradient_search(p, pts[:16], box, until=until), stats)


def _gradient_search(
    p: _Problem, starts: list[list[Fraction]], box: Box, steps: int = 10, until: float = math.inf
) -> list[list[Fraction]]:
    """Sign-gradient ascent of a violation score on f (float) and f' (training mode, STE); the
    end points snapped to the region (fewer steps when ``until`` passes: large networks)."""
    flo, fhi = box.floats()
    xf, _ = p.doubles(starts)
    x = torch.from_numpy(xf).float()
    step = torch.from_numpy((fhi - flo) / 4).float()
    with torch.no_grad():
        y0 = p.f64(torch.from_numpy(xf).reshape(-1, *p.shape)).reshape(len(starts), -1)
    target = y0.argmax(1)
    for i in range(steps):
        if i and time.perf_counter() > until:
            break
        x.requires_grad_(True)
        yq = p.surrogate(x.reshape(-1, *p.shape)).reshape(len(x), -1)
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
    return [box.snap(row) for row in x.detach().double().numpy()]


def _margins_positive(crown: B.Crown, c: int) -> bool:
    """Is ``y_c - y_j > 0`` for every ``j != c`` on the whole region (linear bounds)?"""
    hi = crown.hi[-1]
    interval = crown.lo[-1][c] - np.delete(hi, c)  # sometimes the tighter of the two
    return bool((np.maximum(crown.linear_lower(margin_rows(len(hi), c)), interval) > 0).all())


def _fixed_class(crown: B.Crown) -> int | None:
    """The class that is the argmax everywhere on the region, if the bounds prove one (one
    back-substitution for the margins of every candidate class)."""
    lo, hi = crown.lo[-1], crown.hi[-1]
    candidates = list(winners(lo, hi))
    if not candidates:
        return None
    n = len(hi)
    lows = crown.linear_lower(np.vstack([margin_rows(n, c) for c in candidates])).reshape(len(candidates), -1)
    for c, low in zip(candidates, lows, strict=True):
        if bool((np.maximum(low, lo[c] - np.delete(hi, c)) > 0).all()):
            return c
    return None


def _within(lo: float, hi: float, eps: Fraction) -> bool:
    """``-eps <= lo`` and ``hi <= eps``, exactly (Python compares floats and Fractions exactly)."""
    return -eps <= float(lo) and float(hi) <= eps


def _open_outputs(p: _Problem, cf: B.Crown, cq: B.Crown) -> list[int]:
    """Outputs whose difference bounds do not settle the strict / inf-norm eps relation."""
    dlo, dhi = B.difference_bounds(cf, cq)
    if p.relation == "strict":
        return [i for i in range(len(dlo)) if not (dlo[i] == dhi[i] == 0)]
    eps = p.eps
    assert eps is not None  # the relation "close" has a tolerance
    return [i for i in range(len(dlo)) if not _within(dlo[i], dhi[i], eps)]


def _prove_by_bounds(p: _Problem, cf: B.Crown, cq: B.Crown) -> bool:
    if p.relation == "top1":
        c = _fixed_class(cf)
        return c is not None and _margins_positive(cq, c)
    if p.relation == "strict":
        ylo, yhi, qlo, qhi = cf.lo[-1], cf.hi[-1], cq.lo[-1], cq.hi[-1]
        return bool((ylo == yhi).all() and (qlo == qhi).all() and (ylo == qlo).all())
    dlo, dhi = B.difference_bounds(cf, cq)
    if not (np.isfinite(dlo).all() and np.isfinite(dhi).all()):
        return False
    gap = [max(-Fraction(a), Fraction(b)) for a, b in zip(dlo.tolist(), dhi.tolist(), strict=True)]
    assert p.eps is not None  # the relation "close" has a tolerance
    return (max(gap) if p.norm == "inf" else sum(gap, Fraction(0))) <= p.eps  # exact sums


def _describe(values: list[int], limit: int = 12) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def _regions(
    points: Any,
    delta: Any,
    domain: tuple[Any, Any] | None,
    boxes: tuple[Any, Any] | None,
    grid: Rounding | None,
) -> tuple[tuple[int, ...], list[Box]]:
    """The regions, exactly (see the module docstring), and the shape of one input.  Raises
    ``VerificationInputError`` for bad arguments and for empty regions, naming them."""
    if (boxes is None) == (points is None):
        raise VerificationInputError("give either points and delta, or boxes=(lo, hi)")
    if boxes is not None:
        shape, lo, hi = _given_boxes(boxes)
        centres = None
    else:
        shape, centres, lo, hi = _balls(points, delta)
    if domain is not None:
        lo, hi = _clip_to_domain(lo, hi, centres, domain, shape)
    n = lo.shape[0] if lo.ndim == 2 else 0
    if grid is None:
        return shape, [Box(list(lo[i]), list(hi[i])) for i in range(n)]
    kmin, kmax = grid.code_range
    regions = [grid_box(list(lo[i]), list(hi[i]), grid.step, kmin, kmax) for i in range(n)]
    empty = [i for i, box in enumerate(regions) if box is None]
    if empty:
        i = empty[0]
        far = _grid_distance(grid, centres[i] if centres is not None else None)
        where = f"the ball of radius delta={delta} around point(s)" if centres is not None else "box(es)"
        raise VerificationInputError(
            f"{where} {_describe(empty)} hold(s) no grid point of f''s input format (step {grid.step}, "
            f"values {kmin * grid.step} to {kmax * grid.step}){far}: such a region is empty; "
            + (
                "increase delta (or round the points to the input grid)"
                if centres is not None
                else "widen the boxes to hold a grid point"
            )
        )
    return shape, [box for box in regions if box is not None]  # (none is None)


def _given_boxes(boxes: Any) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """``boxes=(lo, hi)`` at their exact values: (input shape, lo, hi), one row per box."""
    if not isinstance(boxes, (tuple, list)) or len(boxes) != 2:
        raise VerificationInputError("boxes must be a pair (lo, hi) of batches shaped like the input")
    lo_t, hi_t = (torch.as_tensor(b) for b in boxes)
    if lo_t.shape != hi_t.shape:
        raise VerificationInputError(
            f"boxes: lo {tuple(lo_t.shape)} and hi {tuple(hi_t.shape)} differ in shape"
        )
    if lo_t.dim() < 2:
        raise VerificationInputError("boxes: lo and hi are batches (n, *input_shape)")
    lo = exact_values(lo_t, None, "boxes lo").reshape(len(lo_t), -1)
    hi = exact_values(hi_t, None, "boxes hi").reshape(len(hi_t), -1)
    bad = [i for i in range(len(lo)) if any(a > b for a, b in zip(lo[i], hi[i], strict=True))]
    if bad:
        raise VerificationInputError(
            f"boxes {_describe(bad)}: some lo > hi; give lo <= hi in every coordinate"
        )
    return tuple(lo_t.shape[1:]), lo, hi


def _balls(points: Any, delta: Any) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """The closed L-infinity balls of radius ``delta`` around ``points``, exactly: (input shape,
    centres, lo, hi), one row per point."""
    if delta is None:
        raise VerificationInputError("delta must be a finite non-negative number, got None")
    try:
        d = exact_number(delta, "delta")
    except QuantizationError:
        raise VerificationInputError(f"delta must be a finite non-negative number, got {delta}") from None
    if d < 0:
        raise VerificationInputError(f"delta must be a finite non-negative number, got {delta}")
    pts = torch.as_tensor(points)
    if pts.dim() < 2:
        raise VerificationInputError("points must be a batch (n, *input_shape)")
    try:
        centres = exact_values(pts, None, "points").reshape(len(pts), -1)
    except QuantizationError:
        raise VerificationInputError("points or boxes contain NaN or inf") from None
    lo = np.vectorize(lambda c: c - d, otypes=[object])(centres) if centres.size else centres
    hi = np.vectorize(lambda c: c + d, otypes=[object])(centres) if centres.size else centres
    return tuple(pts.shape[1:]), centres, lo, hi


def _clip_to_domain(
    lo: np.ndarray, hi: np.ndarray, centres: np.ndarray | None, domain: Any, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The regions intersected with ``domain``; points outside it and regions left empty are errors."""
    n, dim = lo.shape if lo.ndim == 2 else (0, 0)
    if not isinstance(domain, (tuple, list)) or len(domain) != 2:
        raise VerificationInputError("domain must be a pair (lo, hi) of numbers or tensors")
    d_lo = exact_values(domain[0], shape, "domain lo").reshape(-1)
    d_hi = exact_values(domain[1], shape, "domain hi").reshape(-1)
    named = f"domain=({domain[0]}, {domain[1]})"
    wrong = [j for j in range(dim) if d_lo[j] > d_hi[j]]
    if wrong:
        raise VerificationInputError(
            f"{named} is empty: lo > hi at input coordinate(s) {_describe(wrong)}; give the domain as "
            "(lo, hi) with lo <= hi"
        )
    if centres is not None:
        outside = [
            i
            for i in range(n)
            if any(not a <= c <= b for a, c, b in zip(d_lo, centres[i], d_hi, strict=True))
        ]
        if outside:
            i = outside[0]
            j = next(j for j in range(dim) if not d_lo[j] <= centres[i][j] <= d_hi[j])
            raise VerificationInputError(
                f"points {_describe(outside)} lie outside {named} (point {i}, "
                f"coordinate {j} is {float(centres[i][j])!r}): their regions would be empty or cut; "
                "scale the points to the domain's range (e.g. pixels 0-255 to [0, 1]) or widen the domain"
            )
    lo = np.array([[max(a, b) for a, b in zip(row, d_lo, strict=True)] for row in lo], dtype=object)
    hi = np.array([[min(a, b) for a, b in zip(row, d_hi, strict=True)] for row in hi], dtype=object)
    disjoint = [i for i in range(n) if any(a > b for a, b in zip(lo[i], hi[i], strict=True))]
    if disjoint:
        raise VerificationInputError(
            f"boxes {_describe(disjoint)} are disjoint from {named}: their regions are empty; give boxes "
            "that meet the domain"
        )
    return lo, hi


def _grid_distance(grid: Rounding, centre: Any) -> str:
    """For a message: the L-inf distance from the centre to the nearest grid point."""
    if centre is None:
        return ""
    s = grid.step
    kmin, kmax = grid.code_range
    far = max((abs(min(max(round(c / s), kmin), kmax) * s - c) for c in centre), default=Fraction(0))
    return f"; the nearest grid point is at L-inf distance {float(far):.6g} from the first such point"


@keeps_modes("f", "fq")
def verify_equivalence(
    f: nn.Module,
    fq: nn.Module,
    points: torch.Tensor | None = None,
    delta: float | Fraction | str | None = None,
    *,
    config: VerifyConfig | Mapping[str, Any] | None = None,
    boxes: tuple[torch.Tensor, torch.Tensor] | None = None,
    executor: Executor | Any | None = None,
    **options: Any,
) -> list[Result]:
    """Check ``f(x) ~ fq(x)`` for every input within ``delta`` (L-infinity) of each point.

    ``points``: a batch shaped like the models' input; ``boxes=(lo, hi)``: regions given directly
    (batches shaped like the input) instead of points and delta.  ``config``: a
    :class:`~torchqv.verify.VerifyConfig` (relation, eps, norm, delta, domain, timeout, samples,
    seed, use_bounds, branching, input_split, workers: see its docstring); keyword ``options``
    with the same names, and ``delta``, override its fields (``verify_equivalence(f, fq, x, 0.01,
    relation="eps", eps=0.1)``).  ``relation``: ``"strict"``, ``"top1"`` (same argmax,
    ``torch.argmax``'s first-maximum rule) or ``"eps"`` (``||f - fq|| <= eps`` in ``norm``
    ``"inf"`` or ``"l1"``).  Regions with at most ``input_split`` free input coordinates are first
    branched by splitting the box; then the LP search on the MILP encoding takes over.  The exact
    semantics of regions, networks, relations and verdicts is in the module docstring.  Empty
    regions raise ``VerificationInputError`` before any solving.

    Many regions at once: ``workers=N`` (N > 1) decides them on a local pool of N processes
    (started for this call and ended before it returns, also on an error or Ctrl-C);
    ``executor``: any ``concurrent.futures.Executor`` or object with ``submit(fn, *args)`` (a Dask
    ``distributed.Client`` or its ``client.get_executor()``, a process pool you reuse across
    calls, e.g. :func:`torchqv.verify.parallel.process_pool`) decides them wherever it runs its
    tasks.  f and fq must then be picklable (torchqv's quantized models and ONNX imports are;
    classes defined at module level); they are pickled once per call and built into the
    verifier's chains once per worker process.  The results are the serial run's (same verdicts,
    reasons and counterexamples, time-boxed stages aside: see "Determinism"), in the input order;
    ``timeout`` holds per region in the workers (from the moment a worker starts the region); an
    exception raised while deciding a region is raised here with its type and message (the first
    one in input order; regions not started are then cancelled).  Regions in one process run one
    at a time (z3's context is per process), so a thread pool gives no speed-up.
    """
    for name, model in (("f", f), ("fq", fq)):
        if not isinstance(model, nn.Module):
            raise VerificationInputError(f"{name} must be an nn.Module, got {type(model).__name__}")
    if delta is not None:
        options["delta"] = delta
    cfg = VerifyConfig.coerce(config, "verify_equivalence", **options)
    workers = cfg.workers
    check_executor(executor, workers)
    p = _Problem(f, fq, _input_shape(points, boxes), cfg.relation, cfg.exact_eps, cfg.norm)
    _, regions = _regions(points, cfg.delta, cfg.domain, boxes, p.grid)
    opts = _Options(
        float(cfg.timeout),
        float(cfg.branching),
        int(cfg.samples),
        int(cfg.seed),
        cfg.use_bounds,
        int(cfg.input_split),
    )
    if executor is None and (workers == 1 or len(regions) <= 1):
        results = []
        for i, box in enumerate(regions):
            with _SOLVING:
                results.append(_solve_region(p, box, i, opts))
        return results
    job = _Job(f, fq, p, opts)
    per_task = max(1, REGIONS_PER_TASK)
    numbered = list(enumerate(regions))
    tasks = [(job, numbered[k : k + per_task]) for k in range(0, len(numbered), per_task)]
    _PROBLEMS[job.token] = p  # an executor running tasks in this process uses the problem built here
    try:
        with optional_pool(min(workers, len(tasks))) as pool:
            chunks = in_order(executor if executor is not None else pool, _solve_chunk, tasks)
    finally:
        _PROBLEMS.pop(job.token, None)
    return [res for chunk in chunks for res in chunk]


@dataclass(frozen=True)
class _Options:
    """The per-region options of ``verify_equivalence``."""

    timeout: float
    branching: float
    samples: int
    seed: int
    use_bounds: bool
    input_split: int


def region_generator(seed: int, index: int) -> torch.Generator:
    """The random generator of region ``index``: seeded from ``(seed, index)`` alone (a hash, the
    same on every machine), so that a region's points do not depend on where or after what it runs."""
    key = f"torchqv.verify region {int(seed)} {int(index)}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


_SOLVING = threading.Lock()  # one region at a time per process: z3's context and watchdog are per process


def _solve_region(p: _Problem, box: Box, index: int, opts: _Options) -> Result:
    """Decide region ``index`` (the caller holds ``_SOLVING``); its ``timeout`` starts now."""
    t0 = time.perf_counter()
    stats: dict[str, Any] = {
        "solver_calls": 0,
        "replays": 0,
        "neurons_fixed": 0,
        "neurons": 0,
        "nodes": 0,
        "use_bounds": opts.use_bounds,
        "grid_points": box.points(),
    }
    gen = region_generator(opts.seed, index)
    deadline, bab_deadline = t0 + opts.timeout, t0 + opts.branching * opts.timeout
    try:
        res = _decide(p, box, deadline, bab_deadline, opts.samples, gen, stats, opts.input_split)
    except OracleMismatch as err:
        res = Result(Verdict.UNKNOWN, None, str(err), stats)
    del res.stats["use_bounds"]
    res.stats["seconds"] = time.perf_counter() - t0
    return res


class _Job:
    """What a worker needs to decide regions: f and f' pickled once (in the caller), the input
    shape, the relation and the options.  ``token`` names the job: a worker process builds its
    problem (the exact chains) at its first task and keeps it for the next ones."""

    def __init__(self, f: nn.Module, fq: nn.Module, p: _Problem, opts: _Options):
        try:
            self.blob = pickle.dumps((f, fq), protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise VerificationInputError(
                f"f and f' must be picklable to be sent to workers ({type(err).__name__}: {err}); define "
                "their classes at module level (not inside a function), or verify with workers=1 and "
                "no executor"
            ) from err
        self.token = uuid.uuid4().hex
        self.shape, self.relation, self.eps, self.norm = p.shape, p.relation, p.eps, p.norm
        self.opts = opts
        self.keep = PROBLEMS_PER_WORKER > 0

    def problem(self) -> _Problem:
        """This process's problem for the job (built at the first call unless it is kept)."""
        p = _PROBLEMS.get(self.token)
        if p is not None:
            _PROBLEMS.move_to_end(self.token)
            return p
        f, fq = pickle.loads(self.blob)
        p = _Problem(f, fq, self.shape, self.relation, self.eps, self.norm)
        if self.keep:
            _PROBLEMS[self.token] = p
            while len(_PROBLEMS) > max(PROBLEMS_PER_WORKER, 1):
                _PROBLEMS.popitem(last=False)
        return p


_PROBLEMS: OrderedDict[str, _Problem] = OrderedDict()  # built problems by job token (per process)


def _solve_chunk(job: _Job, chunk: list[tuple[int, Box]]) -> list[Result]:
    """An executor task: the regions ``chunk`` (index, region) of ``job``."""
    out = []
    for index, box in chunk:
        with _SOLVING:
            out.append(_solve_region(job.problem(), box, index, job.opts))
    return out


def _input_shape(points: Any, boxes: Any) -> tuple[int, ...]:
    """One input's shape from the points or boxes (for reading f' before the regions)."""
    src = points if points is not None else (boxes[0] if isinstance(boxes, (tuple, list)) and boxes else None)
    t = torch.as_tensor(src) if src is not None else None
    if t is None or t.dim() < 2:
        raise VerificationInputError(
            "give either points (a batch (n, *input_shape)) and delta, or boxes=(lo, hi) of such batches"
        )
    return tuple(t.shape[1:])


def _refuted(p: _Problem, cex: Counterexample, reason: str, stats: dict) -> Result:
    x = np.empty(len(cex.x), dtype=object)
    x[:] = cex.x
    stats["oracle"] = cex.oracle
    return Result(
        Verdict.NOT_EQUIVALENT,
        torch.from_numpy(cex.double.copy()).reshape(p.shape),
        reason,
        stats,
        x.reshape(p.shape),
        (cex.y, cex.yq),
    )


def _decide(
    p: _Problem,
    box: Box,
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
    p.box = box
    stats["method"] = "falsification"
    cex = _falsify(p, box, samples, gen, stats, deadline)
    if cex is not None:
        return _refuted(p, cex, "found by sampling, replayed exactly", stats)
    lo, hi = box.floats()
    share = time.perf_counter() + 0.25 * (deadline - time.perf_counter())  # bounds: a quarter at most
    cf, cq = B.Crown(p.cf, lo, hi, share), B.Crown(p.cq_body, lo, hi, share)
    use_bounds = stats["use_bounds"]
    if use_bounds:
        stats["method"] = "bounds"
        if _prove_by_bounds(p, cf, cq):
            return Result(Verdict.EQUIVALENT, None, "linear bounds", stats)
    todo, solver = _disjuncts(p, box, cf, cq, deadline, stats)
    lp = use_bounds and p.relation != "strict"
    if lp:  # the root LP of every disjunct: cheap, and it settles most of them
        stats["method"] = "LP branch and bound"
        found, todo = _lp_pass(p, solver, todo, bab_deadline, 1, stats)
        if found is not None or not todo:
            return found or Result(
                Verdict.EQUIVALENT, None, "LP bounds on every disjunct of the violation", stats
            )
    stats["method"] = "z3"
    quick = min(0.02, 0.25 / max(len(todo), 1)) * (deadline - time.perf_counter())  # a quarter at most
    found, todo, reason = _z3_pass(p, solver, todo, deadline, quick)
    if found is not None or not todo:
        return found or Result(
            Verdict.EQUIVALENT, None, "z3: every disjunct of the violation is unsat", stats
        )
    if lp:
        if box.free() <= input_split and bab_deadline > time.perf_counter():
            stats["method"] = "branch and bound"
            bab = InputBranch(p.cf, p.cq_body, p.relation, p.eps, p.norm, p.falsify)
            t = time.perf_counter()
            out = bab.run(box, t + 0.75 * (bab_deadline - t))  # most of it; the LP search next
            stats["depth"] = out.depth
            stats["nodes"] += out.nodes
            if out.status is Decision.PROVED:
                return Result(Verdict.EQUIVALENT, None, f"input branch and bound, {out.nodes} nodes", stats)
            if out.status is Decision.REFUTED:
                return _refuted(p, out.point, "branch and bound, replayed exactly", stats)
        stats["method"] = "LP branch and bound"
        found, todo = _lp_pass(p, solver, todo, bab_deadline, 20_000, stats)
        if found is not None or not todo:
            return found or Result(
                Verdict.EQUIVALENT, None, "LP branch and bound on every disjunct of the violation", stats
            )
        stats["method"] = "z3"
    found, todo, reason = _z3_pass(p, solver, todo, deadline, np.inf)
    if found is not None:
        return found
    if todo:
        return Result(Verdict.UNKNOWN, None, reason, stats)
    return Result(Verdict.EQUIVALENT, None, "z3: every disjunct of the violation is unsat", stats)


def _lp_pass(
    p: _Problem, solver: QuerySolver, todo: list[Query], deadline: float, max_nodes: int, stats: dict
) -> tuple[Result | None, list[Query]]:
    """The LP search on each disjunct (at most ``max_nodes`` nodes, equal shares of the time
    left; a disjunct whose share is spent is left open without solving): a replayed
    counterexample, or the disjuncts still open."""
    left = []
    for i, query in enumerate(todo):
        now = time.perf_counter()
        if now >= deadline:
            left.extend(todo[i:])
            break
        share = (deadline - now) / (len(todo) - i)
        status, info = solver.lp(query, now + share, max_nodes)
        if status is Decision.REFUTED:
            return _refuted(p, info, "LP branch and bound, replayed exactly", stats), []
        if status is Decision.OPEN:
            left.append(query)
    return None, left


def _disjuncts(
    p: _Problem, box: Box, cf: B.Crown, cq: B.Crown, deadline: float, stats: dict
) -> tuple[list[Query], QuerySolver]:
    """The disjuncts of the violation left open by the bounds, and their solver."""
    bounds = (cf.layer_bounds(), cq.layer_bounds())
    n = p.cf.out_features
    fixed: tuple[int | None, int | None]
    if not stats["use_bounds"]:  # plain encoding: only the input box bounds each layer
        bounds = (_loose(bounds[0]), _loose(bounds[1]))
        classes, fixed, todo = (list(range(n)), list(range(n))), (None, None), list(range(n))
    elif p.relation == "top1":
        classes = (winners(bounds[0][-1].lo, bounds[0][-1].hi), winners(bounds[1][-1].lo, bounds[1][-1].hi))
        fixed, todo = (_fixed_class(cf), _fixed_class(cq)), []
    else:
        classes, fixed, todo = ([], []), (None, None), _open_outputs(p, cf, cq)
    disjuncts = queries(p.relation, n, p.eps, p.norm, classes, fixed, todo)
    return disjuncts, QuerySolver(p, box, bounds, disjuncts, stats, deadline)


def _z3_pass(
    p: _Problem, solver: QuerySolver, todo: list[Query], deadline: float, cap: float
) -> tuple[Result | None, list[Query], str]:
    """z3 on each disjunct, sharing the time left (at most ``cap`` seconds each): a replayed
    counterexample, or the disjuncts still open and why.  Without a cap, the time that decided
    disjuncts leave is shared again among the open ones, round after round, until the deadline
    (a disjunct that ran out of its share gets a longer one), so an open disjunct means the
    region's time is spent."""
    reason = ""
    while True:
        left, stopped = [], False
        for i, query in enumerate(todo):
            now = time.perf_counter()
            budget = max(min(cap, (deadline - now) / (len(todo) - i)), 0.0)
            status, info = solver.z3(query, now + budget)
            if status is Decision.REFUTED:
                return _refuted(p, info, f"z3 ({query.what}), replayed exactly", solver.stats), [], ""
            if status is Decision.OPEN:
                left.append(query)
                reason = info
                stopped |= budget > 0 and time.perf_counter() - now >= 0.9 * budget  # ran out of its share
        if (
            not left
            or cap != np.inf
            or not stopped
            or deadline - time.perf_counter() < 0.05
            or len(left) == len(todo)
        ):
            return None, left, reason
        todo = left


def _loose(bounds: list) -> list:
    """Bounds that fix nothing (for the plain z3 baseline)."""
    out = []
    for b in bounds:
        inf = np.full_like(b.lo, np.inf)
        out.append(B.LayerBounds(-inf, inf, -inf, inf))
    return out
