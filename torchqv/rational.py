"""The integer reference's arithmetic: exact integers and rationals in numpy, no floating point.

Values of the reference (:class:`RTensor`) are integer codes on a grid (numpy int64 arrays where
the bounds prove that int64 cannot overflow, object arrays of Python ints otherwise) or exact
real numbers (object arrays of ``Fraction``).  This module shares nothing with the exact
executor's torch code but the format's definitions (``FixedPoint.round_exact`` and saturation);
:func:`round_ratio` is a second, independent implementation of the rounding rules on integer
arrays, tested against ``round_exact``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from .formats import FixedPoint, OverflowToGridError
from .grid import Grid

INT64_SAFE = 2**62


def as_ints(values: np.ndarray, bound: int | None = None) -> np.ndarray:
    """Integers as int64 when ``bound`` (or their actual maximum) proves it safe, else objects."""
    if bound is None:
        bound = max((abs(int(v)) for v in values.flat), default=0) if values.dtype == object else None
        if bound is None:
            return values.astype(np.int64)
    if bound < INT64_SAFE:
        return np.asarray(values).astype(np.int64)
    return np.asarray(values).astype(object)


def max_abs(values: np.ndarray) -> int:
    if values.size == 0:
        return 0
    if values.dtype == object:
        return max(abs(int(v)) for v in values.flat)
    return int(np.abs(values).max())


def fractions(values: np.ndarray) -> np.ndarray:
    """Exact values of a float array (every double is a dyadic rational)."""
    out = np.empty(values.size, dtype=object)
    out[:] = [Fraction(v) for v in np.asarray(values, dtype=np.float64).flat]
    return out.reshape(values.shape)


def round_ratio(fmt: FixedPoint, num: np.ndarray, den: np.ndarray | int) -> np.ndarray:
    """``round_exact(num / den)`` elementwise on integer arrays (``den > 0``).

    Works on int64 arrays (the caller keeps ``2|num| + den < 2^62``) and on object arrays of
    Python ints alike: numpy's ``//`` is floor division for both.
    """
    num, den = np.asarray(num), np.asarray(den)
    if fmt.binary:
        thr = den if fmt.rounding == "floor" else 0
        return np.where(num >= thr, 1, -1).astype(num.dtype if num.dtype == object else np.int64)
    if fmt.rounding == "floor":
        return num // den
    if fmt.rounding == "half_away":
        mag = (2 * abs(num) + den) // (2 * den)
        return np.where(num < 0, -mag, mag)
    q = num // den
    twice = 2 * (num - q * den)
    up = (twice > den) | ((twice == den) & (q % 2 == 1))
    return q + up.astype(np.int64 if q.dtype != object else object)


def saturate(codes: np.ndarray, grid: Grid, where: str) -> np.ndarray:
    kmin, kmax = grid.code_range
    if grid.fmt.overflow == "raise" and not grid.fmt.binary:
        bad = (codes < kmin) | (codes > kmax)
        if bool(np.any(bad)):
            raise OverflowToGridError(f"reference: {where}: {int(np.sum(bad))} value(s) outside the grid")
    return np.clip(codes, kmin, kmax)


def combine(terms: list[tuple[np.ndarray, Fraction]], const: Fraction, grid: Grid, where: str) -> np.ndarray:
    """Saturated codes on ``grid`` of ``sum_i k_i r_i + c`` for integer arrays ``k_i`` and rationals
    ``r_i``, ``c`` (in units of ``grid.step``): ``N / L`` over the common denominator ``L``."""
    common = 1
    for _, r in terms:
        common = common * r.denominator // math.gcd(common, r.denominator)
    common = common * const.denominator // math.gcd(common, const.denominator)
    num: Any = int(const * common)
    for k, r in terms:
        num = num + k.astype(object) * int(r * common)
    num = np.asarray(num, dtype=object)
    bound = 2 * max_abs(num) + common
    ints = num.astype(np.int64) if bound < INT64_SAFE else num
    return saturate(as_ints(round_ratio(grid.fmt, ints, common)), grid, where)


def round_fractions(values: np.ndarray, grid: Grid, where: str) -> np.ndarray:
    """Saturated codes of exact rationals (object array) on ``grid``."""
    t = values / grid.step if values.size else values
    num = np.vectorize(lambda v: v.numerator, otypes=[object])(t) if t.size else t
    den = np.vectorize(lambda v: v.denominator, otypes=[object])(t) if t.size else t
    codes = round_ratio(grid.fmt, num, den) if t.size else np.zeros(values.shape, dtype=object)
    return saturate(as_ints(codes), grid, where)


def round_scaled(
    num: np.ndarray, mult: list[Fraction] | Fraction, grid: Grid, axis: int, where: str
) -> np.ndarray:
    """Saturated codes of ``num * mult`` (integer array times a rational, per channel along
    ``axis``) on ``grid``: ``round((num * P) / Q)`` with Python integers where int64 could overflow."""
    mults = mult if isinstance(mult, list) else [mult]
    shape = [1] * num.ndim
    if len(mults) > 1:
        shape[axis] = len(mults)
    p = np.array([m.numerator for m in mults], dtype=object).reshape(shape)
    q = np.array([m.denominator for m in mults], dtype=object).reshape(shape)
    bound = 2 * max_abs(num) * max(abs(m.numerator) for m in mults) + max(m.denominator for m in mults)
    if bound < INT64_SAFE:
        codes = round_ratio(grid.fmt, num.astype(np.int64) * p.astype(np.int64), q.astype(np.int64))
    else:
        codes = round_ratio(grid.fmt, num.astype(object) * p, q)
    return saturate(as_ints(codes), grid, where)


def _split_two(n: int) -> tuple[int, int]:
    """``n = odd * 2^j`` -> ``(odd, j)``."""
    j = (n & -n).bit_length() - 1
    return n >> j, j


def float_codes(values: np.ndarray, steps: list[Fraction], fmt: FixedPoint, axis: int = 0) -> np.ndarray:
    """Exact unsaturated codes ``round(x / step)`` of float values (one step, or one per channel
    along ``axis``), vectorised.  ``x = m 2^e`` exactly (``frexp`` in the values' own precision:
    ``|m| < 2^24`` for float32, ``2^53`` for float64) and ``step = (p 2^a) / (q 2^b)`` with odd
    ``p``, ``q``, so ``x / step = (m q 2^E) / p`` with ``E = e + b - a``: numerator
    ``m q 2^max(E, 0)`` over denominator ``p 2^max(-E, 0)``, rounded with int64 arithmetic where
    the bit lengths allow (both below ``2^59``) and with Python integers for the other elements."""
    v = np.asarray(values)
    if v.dtype not in (np.float32, np.float64):
        v = v.astype(np.float64)
    digits = 24 if v.dtype == np.float32 else 53
    mant, ex = np.frexp(v)
    m = (mant.astype(np.float64) * 2.0**digits).astype(np.int64)
    shape = [1] * v.ndim
    if len(steps) > 1:
        shape[axis] = len(steps)
    parts = [(_split_two(s.numerator), _split_two(s.denominator)) for s in steps]
    p = np.array([pa[0] for pa, _ in parts], dtype=object).reshape(shape)
    q = np.array([qb[0] for _, qb in parts], dtype=object).reshape(shape)
    shift = np.array([qb[1] - pa[1] - digits for pa, qb in parts], dtype=np.int64).reshape(shape)
    pbits = np.array([pa[0].bit_length() for pa, _ in parts]).reshape(shape)
    qbits = np.array([qb[0].bit_length() for _, qb in parts]).reshape(shape)
    big_e = ex.astype(np.int64) + shift
    pos, neg = np.maximum(big_e, 0), np.maximum(-big_e, 0)
    fit = np.broadcast_to((digits + qbits + pos <= 59) & (pbits + neg <= 59), v.shape)
    if bool(fit.all()):  # (the fit bounds make p, q and the shifts int64 values)
        q64, p64 = q.astype(np.int64), p.astype(np.int64)
        num = m * q64 * np.left_shift(np.int64(1), pos)
        return round_ratio(fmt, num, p64 * np.left_shift(np.int64(1), neg))
    out = np.zeros(v.shape, dtype=object)
    pb, qb = np.broadcast_to(p, v.shape), np.broadcast_to(q, v.shape)
    pos, neg = np.broadcast_to(pos, v.shape), np.broadcast_to(neg, v.shape)
    if bool(fit.any()):
        num = m[fit] * qb[fit].astype(np.int64) * np.left_shift(np.int64(1), pos[fit])
        out[fit] = round_ratio(fmt, num, pb[fit].astype(np.int64) * np.left_shift(np.int64(1), neg[fit]))
    for idx in zip(*np.nonzero(~fit), strict=True):
        num = int(m[idx]) * qb[idx] * 2 ** int(pos[idx])
        out[idx] = fmt.round_exact(Fraction(num, pb[idx] * 2 ** int(neg[idx])))
    return as_ints(out)


@dataclass
class RTensor:
    """A reference value: integer codes on ``grid``, or exact reals (``grid is None``)."""

    data: np.ndarray
    grid: Grid | None = None

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.data.shape)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.data.ndim

    def exact(self) -> np.ndarray:
        """The exact values (object array of Fractions)."""
        if self.grid is None:
            return self.data
        step = self.grid.step
        return self.map_codes(lambda k: k * step)

    def map_codes(self, fn: Any) -> np.ndarray:
        """``fn(code)`` for every element (object array), evaluated once per distinct code."""
        codes, inverse = np.unique(self.data, return_inverse=True)
        table = np.empty(len(codes), dtype=object)
        table[:] = [fn(int(k)) for k in codes]
        return table[inverse.reshape(-1)].reshape(self.data.shape)

    def with_data(self, data: np.ndarray) -> RTensor:
        return RTensor(data, self.grid)

    def to_tensor(self) -> torch.Tensor:
        """The doubles nearest to the exact values."""
        values = [float(v) for v in self.exact().flat]
        return torch.tensor(values, dtype=torch.float64).reshape(self.data.shape)


def from_tensor(x: torch.Tensor) -> RTensor:
    """A real-valued reference value holding the exact values of a float tensor."""
    return RTensor(fractions(x.detach().to(torch.float64).cpu().numpy()))


def conv_int(
    x: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, ...],
    pads: list[tuple[int, int]],
    dilation: tuple[int, ...],
    groups: int,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """An N-d convolution of integer (or Fraction) arrays, exactly: ``x`` is ``(N, C, *S)``,
    ``w`` is ``(O, C / groups, *K)``."""
    dims = x.ndim - 2
    mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}[padding_mode]
    width = [(0, 0), (0, 0), *pads]
    xp = np.pad(x, width, mode=mode) if any(a or b for a, b in pads) else x  # type: ignore[call-overload]  # mode: a str
    kernel = w.shape[2:]
    extent = [d * (k - 1) + 1 for d, k in zip(dilation, kernel, strict=True)]
    windows = np.lib.stride_tricks.sliding_window_view(xp, extent, axis=tuple(range(2, 2 + dims)))
    index = (
        slice(None),
        slice(None),
        *(slice(None, None, s) for s in stride),
        *(slice(None, None, d) for d in dilation),
    )
    windows = windows[index]  # N, C, *out, *K
    out_channels = w.shape[0]
    per = out_channels // groups
    cin = x.shape[1] // groups
    parts = []
    for g in range(groups):
        xg = windows[:, g * cin : (g + 1) * cin]
        wg = w[g * per : (g + 1) * per]
        axes_x = [1, *range(2 + dims, 2 + 2 * dims)]
        axes_w = list(range(1, 2 + dims))
        part = np.tensordot(xg, wg, axes=(axes_x, axes_w))  # N, *out, per
        parts.append(np.moveaxis(part, -1, 1))
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def pool_windows(
    size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool
) -> list[tuple[int, ...]]:
    """The input positions (possibly in the padding) of every pooling window along one axis,
    with torch's output-size rule (a ``ceil_mode`` window must start inside the input or the
    left padding)."""
    span = dilation * (kernel - 1) + 1
    length = size + 2 * pad - span
    out = (-(-length // stride) if ceil_mode else length // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return [tuple(i * stride - pad + j * dilation for j in range(kernel)) for i in range(out)]


__all__ = [
    "RTensor",
    "as_ints",
    "conv_int",
    "float_codes",
    "fractions",
    "from_tensor",
    "max_abs",
    "pool_windows",
    "round_fractions",
    "round_ratio",
    "round_scaled",
    "saturate",
]
