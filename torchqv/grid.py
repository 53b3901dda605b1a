"""Values on a grid: the exact executor's currency.

An edge of the quantized graph carries either a tensor of integer codes on a known grid
(:class:`QTensor`: centered codes ``k`` with real values ``k * step``) or a real-valued tensor
(float64, only where the configuration asked for real values).  A :class:`Grid` is one
per-tensor format with its exact step and zero point (Park, Park & Hwang, "On expressive power of quantized
neural networks under fixed-point arithmetic", sec. 2.2, Eq. 4: ``Q = {k * step : k in [kmin, kmax]}``).

:func:`requantize` is the one integer implementation of "round an exact rational to a grid" that
every exact operation uses: the value is written as ``N / D`` with integers ``N`` (a tensor) and
``D > 0``, and ``FixedPoint.round_ratio`` decides it in int64 arithmetic; when the bounds say that
int64 could overflow, the few tensors concerned are decided with Python integers instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from .formats import FixedPoint, dequantize_f64, fits_int64
from .kernels import requantize_float


@dataclass(frozen=True)
class Grid:
    """The grid ``{(q - zp) * step : q in [qmin, qmax]}`` of a per-tensor format."""

    fmt: FixedPoint
    step: Fraction
    zp: int = 0

    @property
    def code_range(self) -> tuple[int, int]:
        """Centered codes ``[kmin, kmax]``."""
        return self.fmt.code_range(self.zp)

    @property
    def max_abs_code(self) -> int:
        kmin, kmax = self.code_range
        return max(abs(kmin), abs(kmax))

    def describe(self) -> str:
        zp = f", zp={self.zp}" if self.zp else ""
        return f"{self.fmt.describe().split('(')[0]}(step={self.step}{zp}, {self.fmt.rounding})"


@dataclass
class QTensor:
    """Centered integer codes on ``grid``: the real values are ``codes * grid.step``.

    The codes are whole numbers held exactly: float32 when the grid's codes stay below ``2^24``
    (every format of at most 24 bits; convolutions and matrix products take them as they are),
    int64 otherwise (:func:`code_dtype`)."""

    codes: torch.Tensor
    grid: Grid

    def values(self) -> torch.Tensor:
        """The doubles nearest to the real values (one correct rounding each)."""
        return dequantize_f64(self.codes, [self.grid.step])

    # shape queries, so that ``x.size(0)`` and ``x.shape`` in a traced forward work on codes
    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.codes.size() if dim is None else self.codes.size(dim)

    def dim(self) -> int:
        return self.codes.dim()

    def with_codes(self, codes: torch.Tensor) -> QTensor:
        return QTensor(codes, self.grid)


F32_EXACT = 2**24
F64_EXACT = 2**52  # integer sums below this, divided by denominators, round exactly in float64


def code_dtype(grid: Grid) -> torch.dtype:
    """How codes of ``grid`` are stored: float32 (exact below 2^24), else int64."""
    return torch.float32 if grid.max_abs_code < F32_EXACT else torch.int64


def as_codes(codes: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Whole-number codes in the storage dtype of ``grid``."""
    return codes.to(code_dtype(grid))


def tensor_max_abs(t: torch.Tensor) -> int:
    """``max |t|`` of whole numbers, as a Python int (one pass: ``aminmax``)."""
    if not t.numel():
        return 0
    lo, hi = torch.aminmax(t.detach())
    return int(max(-lo.item(), hi.item()))


def saturate(codes: torch.Tensor, grid: Grid, where: str) -> torch.Tensor:
    kmin, kmax = grid.code_range
    return grid.fmt.saturate_tensor(codes, kmin, kmax, where)


class Requantizer:
    """Saturated codes on ``out`` of ``t = sum_i k_i * r_i + c`` (exact), rounded once.

    Built once per combination of grids (the rationals do not depend on the data): ``rates``
    holds each term's rational multiplier ``r_i`` (one, or one per channel along ``axis``); ``c`` is
    a rational constant (or one per channel, or an object array of them broadcastable against the
    codes, with per-tensor rates), in units of ``out.step``.  With ``L`` the common denominator of
    every rate and constant (per channel), ``t = N / L`` for the integer tensor
    ``N = sum k_i (r_i L) + c L`` (bounded at each call from the codes' actual maxima), rounded:

    * in float64 when ``|N| < 2^52``: every product and partial sum is then an exact integer, and
      ``fl(N / L)`` decides the rounding exactly -- a value off a boundary ``(2j+1)/2`` (or ``j``
      for ``floor``) is at least ``1/(2L)`` from it while ``fl(N/L)`` errs by less than
      ``2^-53 |N| / L < 1/(2L)``, and a value on it is a representable double, found exactly;
    * else by ``FixedPoint.round_ratio`` in int64 when ``2|N| + L < 2^62``;
    * else with Python integers.

    The result has the output grid's code dtype (:func:`code_dtype`).
    """

    def __init__(
        self,
        rates: Sequence[Sequence[Fraction] | Fraction],
        out: Grid,
        const: Sequence[Fraction] | Fraction | np.ndarray = Fraction(0),
        axis: int = 1,
    ):
        per_channel = [list(r) if isinstance(r, Sequence) else [r] for r in rates]
        elementwise = const if isinstance(const, np.ndarray) else None
        consts = (
            [Fraction(0)]
            if isinstance(const, np.ndarray)  # elementwise
            else list(const)
            if isinstance(const, Sequence)
            else [const]
        )
        channels = max([len(c) for c in per_channel] + [len(consts)])
        if elementwise is not None and channels > 1:
            raise ValueError("elementwise constants go with per-tensor multipliers")
        extra = math.lcm(*(v.denominator for v in elementwise.flat)) if elementwise is not None else 1
        self.common = [
            math.lcm(extra, *(r[ch if len(r) > 1 else 0].denominator for r in [*per_channel, consts]))
            for ch in range(channels)
        ]

        def scaled(r: list[Fraction]) -> list[int]:
            return [int(r[ch if len(r) > 1 else 0] * self.common[ch]) for ch in range(channels)]

        self.out, self.axis, self.channels = out, axis, channels
        self.term_ints = [scaled(r) for r in per_channel]
        self.c_ints = scaled(consts) if elementwise is None else [0]
        self.c_elem = (
            np.vectorize(int, otypes=[object])(elementwise * self.common[0])
            if elementwise is not None
            else None
        )
        self.mult_max = [max(map(abs, m)) for m in self.term_ints]
        self.float_ok = all(m < F64_EXACT for m in self.mult_max) and max(self.common) < F64_EXACT
        if self.c_elem is None:
            self.const_max = max(map(abs, self.c_ints))
        else:
            self.const_max = max((abs(int(v)) for v in self.c_elem.flat), default=0)
        self._columns: dict[tuple, tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = {}

    def _shape(self, ndim: int) -> list[int]:
        shape = [1] * ndim
        if self.channels > 1:
            shape[self.axis] = self.channels
        return shape

    def _tensors(
        self, device: torch.device, ndim: int, dtype: torch.dtype
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        key = (device, ndim, dtype)
        if key not in self._columns:
            shape = self._shape(ndim)

            def column(values: list[int]) -> torch.Tensor:
                t = torch.tensor(values, dtype=dtype, device=device)
                return t.view(shape) if self.channels > 1 else t.reshape(())

            const = column(self.c_ints)
            if self.c_elem is not None:
                const = const + torch.tensor(self.c_elem.astype(np.int64), device=device).to(dtype)
            self._columns[key] = ([column(m) for m in self.term_ints], const, column(self.common))
        return self._columns[key]

    def __call__(
        self, codes: Sequence[torch.Tensor], where: str, clip: tuple[int | None, int | None] = (None, None)
    ) -> torch.Tensor:
        """The codes on the output grid; ``clip``: bounds on the rounded codes applied before
        saturation (``None``: unbounded).  Rounding is monotone, so ``round(min(max(t, a), b))
        = min(max(round(t), round(a)), round(b))``: an activation that clamps its input (ReLU,
        Hardtanh) fuses into the requantization with ``clip = (round(a), round(b))``."""
        bound = sum(tensor_max_abs(k) * m for k, m in zip(codes, self.mult_max, strict=True))
        device = codes[0].device if codes else torch.device("cpu")
        ndim = max((k.dim() for k in codes), default=1)
        kmin, kmax = self.out.code_range
        fmt = self.out.fmt
        if self.float_ok and bound + self.const_max < F64_EXACT:  # exact in float64 (see above)
            mults, const, den = self._tensors(device, ndim, torch.float64)
            if fmt.overflow == "saturate" or fmt.binary:  # saturation is one more clamp
                lo, hi = (
                    (kmin if clip[0] is None else max(kmin, clip[0])),
                    (kmax if clip[1] is None else min(kmax, clip[1])),
                )
                return requantize_float(codes, mults, const, den, fmt, (lo, hi), code_dtype(self.out))
            k = requantize_float(codes, mults, const, den, fmt, clip, torch.float64)
            return as_codes(saturate(k, self.out, where), self.out)
        if not fits_int64(2 * (bound + self.const_max) + max(self.common)):
            parts = list(zip(codes, self.term_ints, strict=True))
            base = self.c_elem if self.c_elem is not None else self.c_ints
            shape = self._shape(ndim)
            k = _python_requantize(parts, base, self.common, shape, self.channels, fmt).to(device)
        else:
            mults, num, den = self._tensors(device, ndim, torch.int64)
            for k, m in zip(codes, mults, strict=True):
                num = num + k.to(torch.int64) * m
            k = fmt.round_ratio(num, den)
        if clip != (None, None):
            k = k.clamp(*clip)
        return as_codes(saturate(k, self.out, where), self.out)


def requantize(
    terms: Sequence[tuple[torch.Tensor, Sequence[Fraction] | Fraction]],
    out: Grid,
    where: str,
    const: Sequence[Fraction] | Fraction | np.ndarray = Fraction(0),
    axis: int = 1,
) -> torch.Tensor:
    """:class:`Requantizer` built and applied once (for one-off combinations)."""
    return Requantizer([r for _, r in terms], out, const, axis)([k for k, _ in terms], where)


def _python_requantize(
    parts: list[tuple[torch.Tensor, list[int]]],  # codes of any whole-number dtype
    c_ints: list[int] | np.ndarray,
    common: list[int],
    shape: list[int],
    channels: int,
    fmt: FixedPoint,
) -> torch.Tensor:
    """The same sum with Python integers (object arrays), for values beyond int64."""
    tensors = [k for k, _ in parts]
    full = torch.broadcast_shapes(*(t.shape for t in tensors)) if tensors else torch.Size(shape)

    def col(values: list[int]) -> np.ndarray:
        arr = np.empty(channels, dtype=object)
        arr[:] = values
        return arr.reshape(shape) if channels > 1 else arr.reshape(())

    base = c_ints if isinstance(c_ints, np.ndarray) else col(c_ints)
    full = torch.broadcast_shapes(full, base.shape)
    num = np.zeros(tuple(full), dtype=object) + base
    for k, ints in parts:
        obj = np.empty(k.numel(), dtype=object)
        obj[:] = [int(v) for v in k.flatten().tolist()]
        num = num + obj.reshape(tuple(k.shape)) * col(ints)
    den = np.broadcast_to(col(common), num.shape)
    # clipped beyond every centered code range of the format: saturation (or its error) comes after
    low, high = fmt.qmin - fmt.qmax - 1, fmt.qmax - fmt.qmin + 1
    out = [
        min(max(fmt.round_exact(Fraction(int(a), int(b))), low), high)
        for a, b in zip(num.flat, den.flat, strict=True)
    ]
    return torch.tensor(out, dtype=torch.int64).reshape(tuple(full))


def requantize_quotient(
    num: torch.Tensor, den: torch.Tensor, mult: Fraction, out: Grid, where: str
) -> torch.Tensor:
    """Saturated codes on ``out`` of ``t = num * mult / den`` for int64 tensors ``num`` and
    ``den > 0`` (e.g. a window's sum of codes over its element count): with ``mult = P / Q``,
    ``t = (num P) / (den Q)``, rounded once in int64 when it fits, else with Python integers."""
    p, q = mult.numerator, mult.denominator
    n_max = tensor_max_abs(num)
    d_max = int(den.max()) if den.numel() else 1
    if n_max * abs(p) < F64_EXACT and d_max * q < F64_EXACT:  # exact in float64 (see Requantizer)
        t = (num.to(torch.float64) * p) / (den.to(torch.float64) * q)
        return as_codes(saturate(out.fmt.round_tensor(t), out, where), out)
    if fits_int64(2 * n_max * abs(p) + d_max * q):
        return as_codes(saturate(out.fmt.round_ratio(num * p, den * q), out, where), out)
    den = torch.broadcast_to(den, num.shape)
    low, high = out.fmt.qmin - out.fmt.qmax - 1, out.fmt.qmax - out.fmt.qmin + 1  # beyond any code range
    flat = [
        min(max(out.fmt.round_exact(Fraction(int(a) * p, int(b) * q)), low), high)
        for a, b in zip(num.flatten().tolist(), den.flatten().tolist(), strict=True)
    ]
    exact = torch.tensor(flat, dtype=torch.int64, device=num.device).reshape(num.shape)
    return as_codes(saturate(exact, out, where), out)
