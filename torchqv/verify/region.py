"""Regions as exact sets of points: boxes of rationals, or of grid points of f''s input format.

A region is a box ``lo <= x <= hi`` whose ends are exact rationals (a ball ``|x - c| <= delta``
with ``c`` and ``delta`` at their exact values, intersected with the domain).  When f' quantizes
its input with step ``s`` and codes ``[kmin, kmax]``, the region is the finite set of grid points
``k * s`` in it: per coordinate the codes ``klo = max(kmin, ceil(lo / s))`` to
``khi = min(kmax, floor(hi / s))``, and its ends become ``klo * s`` and ``khi * s``, exactly (so a
coordinate with one grid point, e.g. ``3/5`` on the step ``1/5``, is that rational, never the
double ``0.6000000000000001``).  Float64 views of a box are rounded outwards (``floats``), so
bounds computed on them hold for every exact point of the box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from ..errors import VerificationInputError

Point = Any  # a point of a region: an int64 code vector on a grid, a list of Fraction otherwise


def up(x: Fraction | float) -> float:
    """The smallest double >= x."""
    f = float(x)
    return f if Fraction(f) >= Fraction(x) else float(np.nextafter(f, np.inf))


def down(x: Fraction | float) -> float:
    """The largest double <= x."""
    f = float(x)
    return f if Fraction(f) <= Fraction(x) else float(np.nextafter(f, -np.inf))


def float32_within(t: Fraction, a: Fraction, b: Fraction) -> Fraction | None:
    """The float32 nearest to ``t`` moved inside ``[a, b]`` by one float32 step if it fell out,
    or ``None`` when no float32 near ``t`` lies in ``[a, b]``."""
    f = np.float32(float(t))
    if not np.isfinite(f):
        return None
    if Fraction(float(f)) < a:
        f = np.nextafter(f, np.float32(np.inf))
    elif Fraction(float(f)) > b:
        f = np.nextafter(f, np.float32(-np.inf))
    v = Fraction(float(f))
    return v if a <= v <= b else None


def exact_number(value: Any, what: str) -> Fraction:
    """A user number at its exact value: ints, floats (their exact binary value), ``Fraction``,
    ``"p/q"`` or decimal strings, 0-d tensors.  NaN, infinities and booleans are errors."""
    if isinstance(value, bool):
        raise VerificationInputError(f"{what} must be a finite number, got {value!r}")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise VerificationInputError(f"{what} must be a finite number, got {value!r}")
    try:
        return Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise VerificationInputError(
            f"{what} must be a finite number or a 'p/q' string, got {value!r}"
        ) from None


def exact_values(value: Any, shape: tuple[int, ...] | None, what: str) -> np.ndarray:
    """A number, array or tensor at its exact values, as an object array of ``Fraction``
    (broadcast to ``shape`` when given)."""
    if isinstance(value, torch.Tensor):
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        arr = value.detach().cpu().numpy()
    elif isinstance(value, (Fraction, str)):
        arr = np.array(exact_number(value, what), dtype=object)
    else:
        arr = np.asarray(value)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise VerificationInputError(f"{what} contains NaN or infinity")
    if arr.dtype.kind not in "fiuO":
        raise VerificationInputError(f"{what} must be numbers, got {arr.dtype}")
    flat = [exact_number(v, what) for v in arr.reshape(-1).tolist()]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    out = out.reshape(arr.shape)
    if shape is not None:
        try:
            out = np.broadcast_to(out, shape)
        except ValueError:
            raise VerificationInputError(
                f"{what} of shape {arr.shape} does not broadcast to the inputs' shape {shape}"
            ) from None
    return out


def ceil_div(a: Fraction, b: Fraction) -> int:
    return -((-a) // b)


@dataclass
class Box:
    """An exact box; on an input grid (``step``) its points are the grid points ``k * step`` with
    codes ``klo <= k <= khi`` (inclusive, per coordinate)."""

    lo: list[Fraction]
    hi: list[Fraction]
    step: Fraction | None = None
    klo: np.ndarray | None = None
    khi: np.ndarray | None = None
    _floats: tuple | None = field(default=None, repr=False)

    @classmethod
    def of_codes(cls, klo: np.ndarray, khi: np.ndarray, step: Fraction) -> Box:
        klo, khi = np.asarray(klo, dtype=np.int64), np.asarray(khi, dtype=np.int64)
        lo = [int(k) * step for k in klo.tolist()]
        hi = [int(k) * step for k in khi.tolist()]
        return cls(lo, hi, step, klo, khi)

    @property
    def d(self) -> int:
        return len(self.lo)

    @property
    def grid(self) -> bool:
        return self.step is not None

    def floats(self) -> tuple[np.ndarray, np.ndarray]:
        """Float64 ends rounded outwards: ``flo <= lo`` and ``hi <= fhi`` exactly."""
        if self._floats is None:
            self._floats = (
                np.array([down(v) for v in self.lo], dtype=np.float64),
                np.array([up(v) for v in self.hi], dtype=np.float64),
            )
        return self._floats

    def fixed(self) -> list[Fraction | None]:
        """The exact value of every coordinate the box fixes, else ``None``."""
        return [a if a == b else None for a, b in zip(self.lo, self.hi, strict=True)]

    def free(self) -> int:
        """The number of coordinates that vary."""
        return sum(a != b for a, b in zip(self.lo, self.hi, strict=True))

    def points(self) -> int | None:
        """How many grid points the box holds (``None``: a continuous box)."""
        if not self.grid:
            return None
        assert self.klo is not None and self.khi is not None  # on a grid
        return math.prod(int(b - a + 1) for a, b in zip(self.klo.tolist(), self.khi.tolist(), strict=True))

    def contains(self, x: list[Fraction]) -> bool:
        """Is ``x`` a point of the region (in the box, and on the grid when there is one)?"""
        if len(x) != self.d:
            return False
        if any(not a <= t <= b for a, t, b in zip(self.lo, x, self.hi, strict=True)):
            return False
        step = self.step
        return step is None or all((t / step).denominator == 1 for t in x)

    def point_of_codes(self, codes: np.ndarray) -> list[Fraction]:
        assert self.step is not None  # on a grid
        return [int(k) * self.step for k in np.asarray(codes).reshape(-1).tolist()]

    def exact(self, point: Point) -> list[Fraction]:
        """The exact coordinates of a point of the region (grid points are code vectors)."""
        return self.point_of_codes(point) if self.grid else list(point)

    def snap(self, x: np.ndarray) -> Point:
        """A point of the region near the float point ``x`` (coordinate-wise): its grid code
        rounded and clipped, or its value clipped to the box (a float32 when one is near: the
        models' input type)."""
        x = np.nan_to_num(np.asarray(x, dtype=np.float64).reshape(-1), nan=0.0, posinf=1e300, neginf=-1e300)
        if self.step is not None:
            return np.clip(np.rint(x / float(self.step)), self.klo, self.khi).astype(np.int64)
        out = []
        for t, a, b in zip(x.tolist(), self.lo, self.hi, strict=True):
            v = min(max(Fraction(t), a), b)
            w = float32_within(v, a, b)
            out.append(v if w is None else w)
        return out

    def corner(self, upper: np.ndarray) -> Point:
        """The corner with ``hi`` where ``upper`` is true, ``lo`` elsewhere."""
        if self.grid:
            assert self.klo is not None and self.khi is not None  # on a grid
            return np.where(np.asarray(upper, dtype=bool), self.khi, self.klo)
        return [b if u else a for u, a, b in zip(np.asarray(upper).tolist(), self.lo, self.hi, strict=True)]

    def low(self) -> Point:
        return self.klo.copy() if self.klo is not None else list(self.lo)  # codes on a grid

    def high(self) -> Point:
        return self.khi.copy() if self.khi is not None else list(self.hi)  # codes on a grid

    def middle(self) -> Point:
        """A point in the middle (a grid point on a grid, else a double when one is inside)."""
        if self.grid:
            assert self.klo is not None and self.khi is not None  # on a grid
            return (self.klo + self.khi) // 2
        out = []
        for a, b in zip(self.lo, self.hi, strict=True):
            m = Fraction(float((a + b) / 2))
            out.append(m if a <= m <= b else (a + b) / 2)
        return out

    def sample(self, n: int, gen: torch.Generator) -> list[Point]:
        """``n`` random points of the region (uniform codes on a grid, floats in a box)."""
        if n <= 0:
            return []
        u = torch.rand(n, self.d, generator=gen, dtype=torch.float64).numpy()
        if self.grid:
            assert self.klo is not None and self.khi is not None  # on a grid
            span = (self.khi - self.klo + 1).astype(np.float64)
            codes = self.klo + np.minimum(np.floor(u * span), span - 1).astype(np.int64)
            return list(codes)
        flo, fhi = self.floats()
        return [self.snap(flo + (fhi - flo) * row) for row in u]

    def split(self, i: int) -> tuple[Box, Box] | None:
        """Two boxes that cover this one, cut along coordinate ``i`` (on a grid the codes are
        halved, so no grid point is lost or shared); ``None`` if it cannot be cut."""
        if self.lo[i] == self.hi[i]:
            return None
        if self.grid:
            assert self.klo is not None and self.khi is not None and self.step is not None  # on a grid
            mid = (int(self.klo[i]) + int(self.khi[i])) // 2
            khi_a, klo_b = self.khi.copy(), self.klo.copy()
            khi_a[i], klo_b[i] = mid, mid + 1
            return Box.of_codes(self.klo, khi_a, self.step), Box.of_codes(klo_b, self.khi, self.step)
        m = Fraction(float((self.lo[i] + self.hi[i]) / 2))
        if not self.lo[i] < m < self.hi[i]:
            m = (self.lo[i] + self.hi[i]) / 2
        hi_a, lo_b = list(self.hi), list(self.lo)
        hi_a[i], lo_b[i] = m, m
        return Box(list(self.lo), hi_a), Box(lo_b, list(self.hi))


def grid_box(lo: list[Fraction], hi: list[Fraction], step: Fraction, kmin: int, kmax: int) -> Box | None:
    """The grid points ``k * step`` (``kmin <= k <= kmax``) of the exact box, or ``None`` if the
    box holds none."""
    klo = [max(kmin, ceil_div(a, step)) for a in lo]
    khi = [min(kmax, math.floor(b / step)) for b in hi]
    if any(a > b for a, b in zip(klo, khi, strict=True)):
        return None
    return Box.of_codes(np.array(klo, dtype=np.int64), np.array(khi, dtype=np.int64), step)
