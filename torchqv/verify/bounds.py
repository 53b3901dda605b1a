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
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .network import Act, Affine, Chain, Rounding

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


def round_interval(r: Rounding, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval of the rounded values (exact decisions at the float endpoints, then saturation)."""

    def grid(v: np.ndarray) -> np.ndarray:
        return np.array([float(r.apply(Fraction(float(t)))) for t in v], dtype=np.float64)

    return _widen(grid(lo), grid(hi))


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
            r = np.abs(W) @ rad
            n = W.shape[1] + 2
            err = 2 * n * U * (np.abs(W) @ np.maximum(np.abs(lo), np.abs(hi)) + np.abs(layer.bf))
            plo, phi = _widen(c - r, c + r, err + 2 * U * r)
        else:
            plo, phi = _act_interval(layer, lo, hi)
        if layer.out is not None:
            lo, hi = round_interval(layer.out, plo, phi)
        else:
            lo, hi = plo, phi
        out.append(LayerBounds(plo, phi, lo, hi))
    return out


def _act_interval(layer: Act, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = layer.act
    if a.name == "relu":
        return np.maximum(lo, 0), np.maximum(hi, 0)
    if a.name == "identity":
        return lo, hi
    if a.name == "leaky_relu":
        s = a.param("negative_slope")
        f = lambda v: np.where(v >= 0, v, s * v)  # noqa: E731 - monotone for s >= 0
        if s < 0:
            raise ValueError("negative LeakyReLU slopes are not supported")
        return _widen(f(lo), f(hi))
    if a.name == "hardtanh":
        return np.clip(lo, a.param("min_val"), a.param("max_val")), np.clip(
            hi, a.param("min_val"), a.param("max_val")
        )
    raise ValueError(f"no interval rule for {a.name}")


def is_finite(b: list[LayerBounds]) -> bool:
    return all(math.isfinite(float(x.lo.min())) and math.isfinite(float(x.hi.max())) for x in b)
