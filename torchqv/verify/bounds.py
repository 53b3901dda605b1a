"""Sound interval bounds through a chain (interval bound propagation), roundings included.

Bounds are computed in float64 and widened by a rigorous bound on their own rounding error
(Higham's ``gamma_n`` for the dot products, plus a relative margin), so ``lo <= value <= hi``
holds for the exact rational network.  Rounding to a grid is monotone, so an interval maps to
the interval of its rounded endpoints; a rounding whose whole interval falls in one cell is a
constant, and a ReLU whose input interval is on one side of 0 is linear: both remove case splits
before z3 sees the problem.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .. import activations as A
from ..errors import UnsupportedModelError
from .network import Affine, Chain, Rounding, masked

U = 2.0**-53
REL = 2.0**-40  # margin for float64 evaluation of piecewise-linear activations and roundings


@dataclass
class LayerBounds:
    pre_lo: np.ndarray  # before the layer's output rounding
    pre_hi: np.ndarray
    lo: np.ndarray  # after it
    hi: np.ndarray


def _widen(lo: np.ndarray, hi: np.ndarray, err: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    pad = err + (np.abs(lo) + np.abs(hi)) * REL + 1e-300
    return lo - pad, hi + pad


def rounded_ends(r: Rounding, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grid values that the interval's ends round to (exact decisions; doubles of ``k * step``)."""
    return r.apply_floats(lo), r.apply_floats(hi)


def round_interval(r: Rounding, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval of the rounded values (monotone rounding and saturation), padded."""
    return _widen(*rounded_ends(r, lo, hi))


def propagate(chain: Chain, lo: np.ndarray, hi: np.ndarray) -> list[LayerBounds]:
    """Bounds of every layer's output for inputs in the box ``[lo, hi]``."""
    if chain.inp is not None:
        lo, hi = round_interval(chain.inp, lo, hi)
    out = []
    for layer in chain.layers:
        if isinstance(layer, Affine):
            W = layer.Wf
            mid, rad = (lo + hi) / 2, (hi - lo) / 2
            c = W @ mid + layer.bf
            r = abs(W) @ rad
            n = W.shape[1] + 2
            err = 2 * n * U * (abs(W) @ np.maximum(np.abs(lo), np.abs(hi)) + np.abs(layer.bf))
            plo, phi = _widen(c - r, c + r, err + 2 * U * r)
        else:
            alo, ahi = _act_interval(layer.act, lo, hi)
            plo, phi = masked(layer.active, alo, lo), masked(layer.active, ahi, hi)
        if layer.out is not None:
            rlo, rhi = round_interval(layer.out, plo, phi)
            lo, hi = masked(layer.rounded, rlo, plo), masked(layer.rounded, rhi, phi)
        else:
            lo, hi = plo, phi
        out.append(LayerBounds(plo, phi, lo, hi))
    return out


def _act_interval(a: A.Activation, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.name == "relu":
        return np.maximum(lo, 0), np.maximum(hi, 0)
    if a.name == "identity":
        return lo, hi
    if a.name == "leaky_relu":
        s = a.param("negative_slope")
        f = lambda v: np.where(v >= 0, v, s * v)  # noqa: E731 - monotone for s >= 0
        if s < 0:
            raise UnsupportedModelError("negative LeakyReLU slopes are not supported")
        return _widen(f(lo), f(hi))
    if a.name == "hardtanh":
        return np.clip(lo, a.param("min_val"), a.param("max_val")), np.clip(
            hi, a.param("min_val"), a.param("max_val")
        )
    raise UnsupportedModelError(f"no interval rule for {a.name}")


# ------------------------------------------------------------------------------------------
# Linear bound propagation (CROWN / DeepPoly style back-substitution)
#
# The chain is flattened into operations: affine maps and elementwise functions (activations and
# roundings).  Each elementwise function phi on an input interval [l, u] gets linear lower and
# upper relaxations  a_L x + b_L <= phi(x) <= a_U x + b_U ; a linear function of any layer is then
# bounded by substituting backwards down to the input box.  Roundings to nearest satisfy
# x - s/2 <= round(x) <= x + s/2 inside the grid's range (floor: x - s < floor(x) <= x), and a
# saturating or binary rounding is bounded by its values at the interval's ends.  Every bound is
# padded by a relative margin far above float64's error, so it holds for the exact network.
PAD = 1e-9
CROWN_WIDTH = 2048  # wider layers keep their interval bounds (no back-substitution from them)
WORK = 2e8  # multiply-adds of one intermediate layer's back-substitution


def _ops(chain: Chain) -> list[tuple]:
    """``("affine", W, b)``, ``("act", activation, mask)``, ``("round", rounding, mask)``: the
    masks say which coordinates the function applies to (``None``: all; the others pass)."""
    ops: list[tuple] = []
    for layer in chain.layers:
        if isinstance(layer, Affine):
            ops.append(("affine", layer.Wf, layer.bf))
        else:
            ops.append(("act", layer.act, layer.active))
        if layer.out is not None:
            ops.append(("round", layer.out, layer.rounded))
    return ops


def _relax(op: tuple, l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, ...]:
    """(a_L, b_L, a_U, b_U) with a_L x + b_L <= phi(x) <= a_U x + b_U on [l, u] (the identity on
    the coordinates the op's mask leaves out)."""
    relax = _relax_all(op, l, u)
    mask = op[2]
    if mask is None:
        return relax
    one, zero = np.ones_like(l), np.zeros_like(l)
    return tuple(masked(mask, r, keep) for r, keep in zip(relax, (one, zero, one, zero), strict=True))


def _relax_all(op: tuple, l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, ...]:
    """(a_L, b_L, a_U, b_U) with a_L x + b_L <= phi(x) <= a_U x + b_U on [l, u]."""
    kind = op[0]
    zero = np.zeros_like(l)
    if kind == "act":
        a = op[1]
        if a.name == "identity":
            return np.ones_like(l), zero, np.ones_like(l), zero
        if a.name in ("relu", "leaky_relu"):
            s = a.param("negative_slope") if a.name == "leaky_relu" else 0.0
            pos, neg = l >= 0, u <= 0
            width = np.where(u > l, u - l, 1.0)
            chord = (u - s * l) / width  # through (l, s l) and (u, u)
            aU = np.where(pos, 1.0, np.where(neg, s, chord))
            bU = np.where(pos | neg, 0.0, s * l - chord * l)
            aL = np.where(pos, 1.0, np.where(neg, s, np.where(u > -l, 1.0, s)))
            return aL, zero, aU, bU
        vl, vu = _act_interval(a, l, u)  # monotone: constant bounds, or exact where linear
        linear = np.zeros_like(l, dtype=bool)
        if a.name == "hardtanh":
            linear = (l >= a.param("min_val")) & (u <= a.param("max_val"))
        slope = linear.astype(np.float64)
        return slope, np.where(linear, 0.0, vl), slope, np.where(linear, 0.0, vu)
    r: Rounding = op[1]
    s = float(r.step)
    kmin, kmax = r.code_range
    if r.fmt.rounding == "floor":  # floor(x) in (x - s, x] while no saturation happens
        inside = (l >= kmin * s) & (u < (kmax + 1) * s)
    else:  # nearest: |round(x) - x| <= s/2 while no saturation happens
        inside = (l >= (kmin - 0.5) * s) & (u <= (kmax + 0.5) * s)
    lo_b, hi_b = (float(e * r.step) for e in r.error_bounds())
    el, eu = rounded_ends(r, l, u)
    vl, vu = _widen(el, eu)  # otherwise: the values at the ends (monotone)
    # a single rounded value is a constant; binary grids are bounded by their ends
    inside = inside & (eu > el) & (not r.fmt.binary)
    slope = np.where(inside, 1.0, 0.0)
    return slope, np.where(inside, lo_b, vl), slope, np.where(inside, hi_b, vu)


def _back(
    ops, relax, A: np.ndarray, c: np.ndarray, upto: int, xl, xu, lower: bool, stop: int = 0
) -> np.ndarray:
    """Bound of ``A y_upto + c`` (y_upto: output of op ``upto - 1``; 0 = the input) over the box
    ``[xl, xu]`` of ``y_stop`` (the input by default)."""
    A, c = _substitute(ops, relax, A, c, upto, lower, stop)
    return _minimize(A, c, xl, xu, lower)


def _minimize(A: np.ndarray, c: np.ndarray, xl, xu, lower: bool) -> np.ndarray:
    """min (or max) of ``A x + c`` over the box, padded outwards."""
    mid, rad = (xl + xu) / 2, (xu - xl) / 2
    val = A @ mid + c + (-1 if lower else 1) * (np.abs(A) @ rad)
    pad = PAD * (np.abs(A) @ np.maximum(np.abs(xl), np.abs(xu)) + np.abs(c) + 1.0)
    return val - pad if lower else val + pad


def _substitute(ops, relax, A: np.ndarray, c: np.ndarray, upto: int, lower: bool, stop: int = 0):
    """Linear lower (or upper) bound ``A' y_stop + c'`` of ``A y_upto + c`` in terms of the value
    ``y_stop`` (the input by default)."""
    for k in range(upto - 1, stop - 1, -1):
        op = ops[k]
        if op[0] == "affine":
            c = c + A @ op[2]
            A = np.asarray(A @ op[1])
        else:
            aL, bL, aU, bU = relax[k]
            pos, neg = np.maximum(A, 0), np.minimum(A, 0)
            if lower:
                c = c + pos @ bL + neg @ bU
                A = pos * aL + neg * aU
            else:
                c = c + pos @ bU + neg @ bL
                A = pos * aU + neg * aL
    return A, c


def _cost(op: tuple, width: int) -> int:
    """Multiply-adds per row of back-substituting through ``op`` (its output has ``width``)."""
    if op[0] == "affine":
        W = op[1]
        return int(W.nnz) if sp.issparse(W) else int(W.size)
    return width


class Crown:
    """Back-substitution bounds of a chain over an input box (input rounding already applied).

    The bounds of every intermediate layer come from substituting back from it; to keep deep or
    wide chains (lowered residual networks) affordable, a layer's substitution stops where its
    work would pass ``WORK`` multiply-adds and is concretised on the interval bounds of the value
    reached (sound: those bounds hold); layers wider than ``CROWN_WIDTH``, and every layer after
    ``deadline``, keep their interval bounds.  The output's bounds always go down to the input."""

    def __init__(self, chain: Chain, xl: np.ndarray, xu: np.ndarray, deadline: float = math.inf):
        self._layers = chain.layers
        self.ops = _ops(chain)
        self.xl, self.xu = xl, xu
        ibp = propagate(chain, xl, xu)
        self.lo, self.hi = [xl], [xu]  # bounds of each value (index 0: the input, k: op k-1's output)
        self.relax: list = []
        widths = [len(xl)] + [len(op[2]) if op[0] == "affine" else 0 for op in self.ops]
        for k in range(1, len(widths)):
            widths[k] = widths[k] or widths[k - 1]
        costs = [_cost(op, widths[k + 1]) for k, op in enumerate(self.ops)]
        layer = -1
        for k, op in enumerate(self.ops):
            l, u = self.lo[-1], self.hi[-1]
            if op[0] == "affine":
                n = len(op[2])
                self.relax.append(None)
                if n > CROWN_WIDTH or time.perf_counter() > deadline:  # intervals only
                    nl, nu = np.full(n, -np.inf), np.full(n, np.inf)
                else:
                    stop, work = k, n * costs[k]
                    while stop > 0 and work + n * costs[stop - 1] <= WORK:
                        stop -= 1
                        work += n * costs[stop]
                    box = (self.lo[stop], self.hi[stop])
                    nl = _back(self.ops, self.relax, np.eye(n), np.zeros(n), k + 1, *box, True, stop)
                    nu = _back(self.ops, self.relax, np.eye(n), np.zeros(n), k + 1, *box, False, stop)
            else:
                self.relax.append(_relax(op, l, u))
                a_lo, b_lo, a_hi, b_hi = self.relax[-1]
                nl = np.minimum(a_lo * l, a_lo * u) + b_lo
                nu = np.maximum(a_hi * l, a_hi * u) + b_hi
                vl, vu = round_interval(op[1], l, u) if op[0] == "round" else _act_interval(op[1], l, u)
                nl, nu = np.maximum(nl, masked(op[2], vl, l)), np.minimum(nu, masked(op[2], vu, u))
            if op[0] != "round":  # a layer's main operation: intersect with interval bounds too
                layer += 1
                nl, nu = np.maximum(nl, ibp[layer].pre_lo), np.minimum(nu, ibp[layer].pre_hi)
            self.lo.append(nl)
            self.hi.append(nu)

    def linear_lower(self, A: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
        """Lower bounds of ``A y + c`` for the chain's output ``y``."""
        c = np.zeros(A.shape[0]) if c is None else c
        return _back(self.ops, self.relax, A, c, len(self.ops), self.xl, self.xu, True)

    def lower_and_inputs(self, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``linear_lower(A)`` and the input coefficients of those bounds (for input splitting)."""
        Ax, c = _substitute(self.ops, self.relax, A, np.zeros(A.shape[0]), len(self.ops), True)
        return _minimize(Ax, c, self.xl, self.xu, True), Ax

    def layer_bounds(self) -> list[LayerBounds]:
        """Per chain layer: bounds before and after its output rounding (tightened)."""
        out, k = [], 1
        for layer in self._layers:
            pre_lo, pre_hi = self.lo[k], self.hi[k]
            if layer.out is not None:
                k += 1
            out.append(LayerBounds(pre_lo, pre_hi, self.lo[k], self.hi[k]))
            k += 1
        return out


def difference_bounds(f: Crown, g: Crown, inputs: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of ``f(x) - g(x)`` over the shared input box: both networks are substituted down to
    the input before minimising, so their correlation through ``x`` is kept (much tighter than
    subtracting separate bounds).  ``inputs`` (optional) receives the input coefficients of the
    lower and of the upper bounds."""
    n = f.hi[-1].shape[0]
    eye = np.eye(n)
    zero = np.zeros(n)
    out = []
    for lower in (True, False):
        Af, cf = _substitute(f.ops, f.relax, eye, zero, len(f.ops), lower)
        Ag, cg = _substitute(g.ops, g.relax, -eye, zero, len(g.ops), lower)
        if inputs is not None:
            inputs.append(Af + Ag)
        out.append(_minimize(Af + Ag, cf + cg, f.xl, f.xu, lower))
    sep_lo, sep_hi = f.lo[-1] - g.hi[-1], f.hi[-1] - g.lo[-1]
    return np.maximum(out[0], sep_lo), np.minimum(out[1], sep_hi)
