"""Fixed-point formats: the grid, its rounding rules and its saturation.

A format is the grid ``{k * step : k integer in [kmin, kmax]}`` (Park, Park & Hwang, "On expressive power of
quantized neural networks under fixed-point arithmetic", sec. 2.2, Eq. 4). Stored codes are ``q = k +
zero_point`` with ``q`` in ``[qmin, qmax]``; the real value of a code is ``(q - zero_point) * step`` (Matos
Júnior, "An automated method for neural network quantization refinement" (PhD thesis, UFAM, 2025), Eq.
2.10-2.12, the affine form).  Everything below works on the *centered* code ``k = q - zero_point``, so
symmetric and affine formats share one implementation.

This module is the single home of the rounding semantics.  Every executor reads it:

* ``round_exact`` decides one exact rational ``t = x / step`` (the integer reference, the
  fall-back of the fast path and the z3 encoding's specification);
* ``round_tensor`` is the same rule on floating-point tensors (fake quantization, STE);
* ``round_certified`` runs ``round_tensor`` on a float64 approximation with an error bound and
  hands the few elements whose bound straddles a rounding boundary to an exact callback, so
  the fast path returns exactly what ``round_exact`` returns, ties included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any

import torch

from .errors import ConfigError, DataError, FormatError, OverflowToGridError, QuantizationError

ROUNDINGS = ("half_away", "half_even", "floor")
FLAGS = ("signed", "narrow", "binary", "per_channel", "power_of_two")
OVERFLOWS = ("saturate", "raise")
MAX_BITS = 32
# Denominators of stored steps live in int64 buffers.
MAX_STEP_DEN = 2**62


def as_step(value: Any, what: str = "step") -> Fraction:
    """Convert a user step to an exact positive ``Fraction``.

    Floats are taken at their exact binary value (``0.25`` is exactly 1/4; ``0.1`` is the double
    nearest to 1/10, not 1/10: pass ``Fraction(1, 10)`` or the string ``"1/10"`` for that).
    Strings such as ``"1/3"`` or ``"0.125"`` are parsed exactly (handy in Hydra configs).
    """
    if isinstance(value, bool):
        raise FormatError(f"{what} must be a positive number, got {value!r}")
    try:
        if isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            raise FormatError(f"{what} must be finite and positive, got {value!r}")
        frac = Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        if isinstance(exc, QuantizationError):
            raise
        raise FormatError(f"{what} must be a positive number or 'p/q' string, got {value!r}") from exc
    if frac <= 0:
        raise FormatError(f"{what} must be positive, got {value!r}")
    if frac.denominator > MAX_STEP_DEN or frac.numerator > MAX_STEP_DEN:
        raise FormatError(
            f"{what}={value!r} has numerator or denominator above 2**62 and cannot be stored "
            "exactly; use a coarser step or frac_bits <= 62"
        )
    return frac


def is_dyadic(x: Fraction) -> bool:
    """Is the denominator a power of two (so the value is exact in binary floating point)?"""
    return x.denominator & (x.denominator - 1) == 0


def fraction_to_float(x: Fraction) -> float:
    """The double nearest to ``x`` (Python's int true division is correctly rounded)."""
    return x.numerator / x.denominator


_PRED_HALF: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _pred_half(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The largest float below 1/2 in ``dtype`` (a 0-d tensor on ``device``), cached."""
    key = (dtype, device)
    if key not in _PRED_HALF:
        half = torch.tensor(0.5, dtype=dtype, device=device)
        _PRED_HALF[key] = torch.nextafter(half, torch.zeros_like(half))
    return _PRED_HALF[key]


@dataclass(frozen=True)
class FixedPoint:
    """A fixed-point (integer-grid) number format.

    Parameters
    ----------
    bits
        Total bits, 1 to 32.  Signed narrow range ``[-(2^(b-1)-1), 2^(b-1)-1]`` is Park et al.'s
        ``Q_{p,s}`` with ``p = bits - 1`` and ``step = 1/s``.
    step
        The grid step; ``None`` lets an observer choose it at calibration.  An exact rational
        (``Fraction`` or ``"p/q"``) or a float (taken at its exact binary value).  A tuple gives
        one step per output channel.
    frac_bits
        Shorthand for ``step = 2**-frac_bits``.
    signed, narrow
        Signed narrow (default), signed full range (``narrow=False``) or unsigned
        ``[0, 2^b-1]`` (``signed=False``).
    binary
        The two-level grid ``{-1, +1} * step`` (Park et al., sec. 3.3); requires ``bits=1``.
    zero_point
        The affine offset (activations only); ``None`` lets the observer choose it.
    rounding
        ``"half_away"`` (Park et al., default), ``"half_even"`` (torch.round, ONNX) or ``"floor"``.
    overflow
        ``"saturate"`` to the end of the grid (default) or ``"raise"``.
    per_channel
        One step per output channel (weights).
    power_of_two
        Observers round the step up to a power of two.
    group_size
        Per-group weight steps (implies ``per_channel``): one step per output channel and group
        of ``group_size`` consecutive elements of the reduction dimension, as in torchao's
        ``Int4WeightOnlyConfig(group_size=...)`` and Brevitas' group-wise scaling (block
        floating-point groups: Darvish Rouhani et al., "Microscaling Data Formats for Deep
        Learning"; grouped integer weights: Frantar et al., "GPTQ: Accurate Post-Training
        Quantization for Generative Pre-trained Transformers").  The reduction dimension of a
        weight ``W`` of shape ``[out, *rest]`` is ``rest`` flattened in the weight's own
        (row-major) order: ``in_features`` for ``Linear``; ``in_channels / groups * kh * kw`` for
        a convolution, so a group runs over the kernel window first and then over input channels
        (``group_size = kh * kw`` is one step per (output channel, input channel)).  Element
        ``j`` of row ``o`` of ``W.reshape(out, -1)`` has the step ``steps[o * G + j // group_size]``
        with ``G = R / group_size`` groups per row (:meth:`group_count` validates that
        ``group_size`` divides ``R``).  A fixed ``step`` is one step or a tuple of ``out * G``.
        The affine map then computes ``sum_g s_w[o, g] s_x (k_w[o, g] . k_x[g])`` exactly and
        rounds once; the bias sits on the grid ``s_x * min_g s_w[o, g]`` (the finest step of its
        row).  Layers without a reduction (a standalone batch norm) keep per-channel steps.
    """

    bits: int = 8
    step: Any = None
    frac_bits: int | None = None
    signed: bool = True
    narrow: bool = True
    binary: bool = False
    zero_point: int | None = 0
    rounding: str = "half_away"
    overflow: str = "saturate"
    per_channel: bool = False
    power_of_two: bool = False
    group_size: int | None = None

    def __post_init__(self) -> None:
        self._check_bits_and_flags()
        self._check_levels()
        self._check_step()
        self._check_zero_point()

    def _check_bits_and_flags(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise FormatError(f"bits must be an int, got {self.bits!r}")
        for flag in FLAGS:
            if not isinstance(getattr(self, flag), bool):
                raise FormatError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if not 1 <= self.bits <= MAX_BITS:
            raise FormatError(f"bits must be in [1, {MAX_BITS}], got {self.bits}")
        if self.group_size is not None:
            if (
                isinstance(self.group_size, bool)
                or not isinstance(self.group_size, int)
                or self.group_size < 1
            ):
                raise FormatError(
                    "group_size must be a positive int (or None for per-channel steps), got "
                    f"{self.group_size!r}"
                )
            object.__setattr__(self, "per_channel", True)
        if self.rounding not in ROUNDINGS:
            raise FormatError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.overflow not in OVERFLOWS:
            raise FormatError(f"overflow must be one of {OVERFLOWS}, got {self.overflow!r}")

    def _check_levels(self) -> None:
        """Binary and one-bit grids: the level sets their flags allow."""
        if self.binary:
            if self.bits != 1:
                raise FormatError("binary formats have bits=1 (levels {-1, +1} * step)")
            if self.zero_point != 0:
                raise FormatError("binary formats are symmetric: zero_point must be 0")
            if not (self.signed and self.narrow):
                raise FormatError(
                    "binary formats are the levels {-1, +1} * step: signed=False and narrow=False do not "
                    "apply; use FixedPoint(bits=1, signed=False) for the levels {0, 1} * step"
                )
        elif self.bits == 1 and self.signed and self.narrow:
            raise FormatError(
                "a signed narrow 1-bit grid has the single level 0; use tq.Binary(step) for "
                "{-1, +1} * step, or signed=False for {0, 1}"
            )

    def _check_step(self) -> None:
        """``step`` / ``frac_bits``: exact positive rationals (normalised to ``Fraction``)."""
        if self.frac_bits is not None:
            if self.step is not None:
                raise FormatError("give either step or frac_bits, not both")
            if (
                isinstance(self.frac_bits, bool)
                or not isinstance(self.frac_bits, int)
                or not (-62 <= self.frac_bits <= 62)
            ):
                raise FormatError(f"frac_bits must be an int in [-62, 62], got {self.frac_bits!r}")
        if self.step is None:
            return
        steps = self.step if isinstance(self.step, (tuple, list)) else (self.step,)
        if len(steps) == 0:
            raise FormatError("a per-channel step tuple must not be empty")
        parsed = tuple(as_step(s) for s in steps)
        if isinstance(self.step, (tuple, list)):  # normalise: exact steps compare equal
            object.__setattr__(self, "step", parsed)
            object.__setattr__(self, "per_channel", True)
        else:
            object.__setattr__(self, "step", parsed[0])
        if not all(is_dyadic(s) for s in parsed) and any(
            s.numerator * (2**self.bits) >= 2**53 or s.denominator >= 2**53 for s in parsed
        ):
            raise FormatError(
                f"step {self.step!r}: a non-dyadic rational step needs numerator * 2^bits < 2^53 "
                "and denominator < 2^53 so that grid values round to doubles exactly once"
            )

    def _check_zero_point(self) -> None:
        if self.zero_point is not None:
            if isinstance(self.zero_point, bool) or not isinstance(self.zero_point, int):
                raise FormatError(f"zero_point must be an int or None, got {self.zero_point!r}")
            if not self.qmin <= self.zero_point <= self.qmax:
                raise FormatError(
                    f"zero_point={self.zero_point} lies outside the code range [{self.qmin}, {self.qmax}]"
                )
        elif self.per_channel:
            raise FormatError("affine (zero_point=None) formats are per-tensor (activations)")

    def group_count(self, reduction: int, where: str = "") -> int:
        """Groups per output channel of a weight whose reduction dimension has ``reduction``
        elements (1 without ``group_size``); raises unless ``group_size`` divides it."""
        if self.group_size is None:
            return 1
        if reduction % self.group_size:
            divisors = [d for d in range(1, reduction + 1) if reduction % d == 0]
            group = self.group_size
            near = sorted(divisors, key=lambda d: (abs(d - group), d))[:3]
            raise FormatError(
                f"{where or 'weight'}: group_size={self.group_size} does not divide the reduction size "
                f"{reduction} (in_features, or in_channels/groups * kernel size for a convolution); "
                f"use a divisor of {reduction} (e.g. {', '.join(map(str, sorted(near)))}) or override "
                "this layer's weight format"
            )
        return reduction // self.group_size

    # ---------------------------------------------------------------- the grid
    @property
    def qmin(self) -> int:
        """Smallest stored code."""
        if self.binary:
            return -1
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        """Largest stored code."""
        if self.binary:
            return 1
        return 2**self.bits - 1 if not self.signed else 2 ** (self.bits - 1) - 1

    @property
    def affine(self) -> bool:
        return self.zero_point is None

    def fixed_steps(self) -> tuple[Fraction, ...] | None:
        """The steps given in the format (``None`` when an observer must choose them)."""
        if self.frac_bits is not None:
            return (Fraction(1, 2**self.frac_bits) if self.frac_bits >= 0 else Fraction(2**-self.frac_bits),)
        if self.step is None:
            return None
        return self.step if isinstance(self.step, tuple) else (as_step(self.step),)

    def code_range(self, zero_point: int = 0) -> tuple[int, int]:
        """The centered code range ``[kmin, kmax] = [qmin - z, qmax - z]``."""
        return self.qmin - zero_point, self.qmax - zero_point

    def levels(self, zero_point: int = 0) -> list[int]:
        """All centered codes of the grid (the real levels are ``k * step``)."""
        if self.binary:
            return [-1, 1]
        kmin, kmax = self.code_range(zero_point)
        return list(range(kmin, kmax + 1))

    # ----------------------------------------------------- exact (one rational)
    def round_exact(self, t: Fraction | int) -> int:
        """Round the exact rational ``t = x / step`` to an (unsaturated) centered code.

        ``half_away``: nearest, ties away from zero (Park et al., sec. 2.2); ``half_even``: nearest,
        ties to even; ``floor``: largest integer <= t.  Binary: nearest of {-1, +1}; the tie at
        0 goes to +1 (``floor``: +1 iff t >= 1).
        """
        t = Fraction(t)
        if self.binary:
            return 1 if t >= (1 if self.rounding == "floor" else 0) else -1
        if self.rounding == "floor":
            return math.floor(t)
        if self.rounding == "half_even":
            return round(t)  # Fraction.__round__ rounds half to even
        mag = math.floor(abs(t) + Fraction(1, 2))
        return mag if t >= 0 else -mag

    def boundary_gap(self, t: Fraction) -> Fraction:
        """Distance from ``t`` to the nearest point where the rounding decision changes."""
        if self.binary:
            return abs(t - (1 if self.rounding == "floor" else 0))
        frac = t - math.floor(t)
        if self.rounding == "floor":
            return min(frac, 1 - frac)
        return abs(frac - Fraction(1, 2))

    def saturate_exact(self, k: int, zero_point: int = 0, where: str = "") -> int:
        """Clamp a centered code to the grid, or raise if ``overflow="raise"``."""
        kmin, kmax = self.code_range(zero_point)
        if kmin <= k <= kmax:
            return k
        if self.overflow == "raise" and not self.binary:
            raise OverflowToGridError(f"{where or 'value'}: code {k} outside [{kmin}, {kmax}]")
        return min(max(k, kmin), kmax)

    def quantize_exact(self, x: Fraction | int | float, step: Fraction, zero_point: int = 0) -> int:
        """Centered code of the real number ``x`` (exact): saturate(round(x / step))."""
        return self.saturate_exact(self.round_exact(Fraction(x) / step), zero_point)

    def integer_rounding(self) -> FixedPoint:
        """The integer grid with this format's rounding rule (for biases on the accumulator
        grid: high precision, never saturated)."""
        return FixedPoint(bits=MAX_BITS, rounding=self.rounding)

    # ------------------------------------------------------------ tensor rules
    def round_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """``round_exact`` applied to every element of a float tensor (result in t's dtype)."""
        if self.binary:
            thr = 1.0 if self.rounding == "floor" else 0.0
            return torch.where(t >= thr, torch.ones_like(t), -torch.ones_like(t))
        if self.rounding == "floor":
            return torch.floor(t)
        if self.rounding == "half_even":
            return torch.round(t)
        # half away from zero: trunc(t + sign(t) * pred(1/2)), with pred(1/2) the largest float
        # below 1/2 in t's dtype.  Exact in round-to-nearest arithmetic: for |t| = j + f, f < 1/2,
        # the sum stays below j + 1 (it is at most j + 1 - ulp/2 and rounds down or to a float
        # below j + 1); at f = 1/2 it is j + 1 - u with u below half an ulp of j + 1, so it rounds
        # up to j + 1; for f > 1/2 it exceeds j + 1; whole |t| >= 2^p (p the mantissa width) gain
        # less than half an ulp and stay.  (Adding 1/2 itself would round 1/2 - u up to 1.)
        return torch.trunc(t + torch.copysign(_pred_half(t.dtype, t.device), t))

    def round_ratio(self, num: torch.Tensor, den: torch.Tensor | int) -> torch.Tensor:
        """``round_exact(num / den)`` for integer tensors (int64, ``den > 0``), in integer arithmetic.

        ``half_away``: ``sign(n) * floor((2|n| + d) / 2d)``; ``half_even``: ``q = floor(n / d)`` plus
        one when ``2r > d`` or ``2r == d`` and ``q`` is odd (``r = n - q d``); ``floor``:
        ``floor(n / d)``.  The caller keeps ``2|num| + den < 2^63`` (:func:`fits_int64`).
        """
        if self.binary:
            thr = den if self.rounding == "floor" else 0
            return torch.where(num >= thr, 1, -1).to(torch.int64)
        if self.rounding == "floor":
            return torch.div(num, den, rounding_mode="floor")
        if self.rounding == "half_away":
            mag = torch.div(2 * num.abs() + den, 2 * den, rounding_mode="floor")
            return torch.where(num < 0, -mag, mag)
        q = torch.div(num, den, rounding_mode="floor")
        twice = 2 * (num - q * den)
        return q + ((twice > den) | ((twice == den) & (q % 2 == 1))).to(torch.int64)

    def boundary_gap_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """``boundary_gap`` applied elementwise (computed exactly from the float value)."""
        if self.binary:
            return (t - (1.0 if self.rounding == "floor" else 0.0)).abs()
        frac = t - torch.floor(t)
        if self.rounding == "floor":
            return torch.minimum(frac, 1.0 - frac)
        return (frac - 0.5).abs()

    def saturate_tensor(
        self, k: torch.Tensor, kmin: torch.Tensor | float, kmax: torch.Tensor | float, where: str = ""
    ) -> torch.Tensor:
        """Clamp centered codes to ``[kmin, kmax]`` or raise if ``overflow="raise"``."""
        if self.overflow == "raise" and not self.binary:
            bad = (k < kmin) | (k > kmax)
            if bool(bad.any()):
                val = k[bad].flatten()[0].item()
                raise OverflowToGridError(
                    f"{where or 'tensor'}: {int(bad.sum())} value(s) outside the grid (first code "
                    f"{val:g}); widen the format or use overflow='saturate'"
                )
        return torch.clamp(k, kmin, kmax)  # type: ignore[arg-type]  # the stubs take both tensors or both numbers

    # -------------------------------------------------------------- utilities
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (Hydra/JSON friendly; exact steps become ``"p/q"`` strings)."""
        out = asdict(self)
        if isinstance(self.step, tuple):
            out["step"] = [str(s) for s in self.step]
        elif isinstance(self.step, Fraction):
            out["step"] = str(self.step)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FixedPoint:
        data = checked_fields(cls, data)
        if isinstance(data.get("step"), list):
            data["step"] = tuple(data["step"])
        return cls(**data)

    def describe(self) -> str:
        kind = "binary" if self.binary else ("int" if self.signed else "uint")
        steps = self.fixed_steps()
        step = "observed" if steps is None else (str(steps[0]) if len(steps) == 1 else "per-channel")
        group = f", group_size={self.group_size}" if self.group_size is not None else ""
        return f"{kind}{self.bits}(step={step}{group}, {self.rounding})"


def checked_fields(cls: type, data: Any) -> dict[str, Any]:
    """``dict(data)`` after checking that every key is a field of the dataclass ``cls``."""
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; valid: {sorted(names)}")
    return dict(data)


def Binary(step: Any = None, **kwargs: Any) -> FixedPoint:
    """The binary format ``{-1, +1} * step`` (Park et al., sec. 3.3)."""
    return _named_grid(
        "Binary", "{-1, +1}", {"bits": 1, "binary": True, "signed": True, "narrow": True}, step, kwargs
    )


def Ternary(step: Any = None, **kwargs: Any) -> FixedPoint:
    """The ternary format ``{-1, 0, +1} * step`` (a signed narrow 2-bit grid)."""
    return _named_grid(
        "Ternary", "{-1, 0, +1}", {"bits": 2, "binary": False, "signed": True, "narrow": True}, step, kwargs
    )


def _named_grid(name: str, levels: str, defining: dict[str, Any], step: Any, kwargs: dict) -> FixedPoint:
    """A format whose levels are fixed by its name: arguments that would change them are errors."""
    other = {k: kwargs[k] for k in defining if k in kwargs and kwargs[k] != defining[k]}
    if other:
        raise FormatError(
            f"{name} is the grid {levels} * step, so {other} does not apply; for another grid use "
            "FixedPoint(bits=..., signed=..., narrow=...) (bits=2, signed=False: the levels {0, 1, 2, 3})"
        )
    return FixedPoint(**{**kwargs, **defining, "step": step})


# ------------------------------------------------------------------ certified
ExactCodes = Callable[[list[int]], Sequence[int]]


def round_certified(
    fmt: FixedPoint,
    t_hat: torch.Tensor,
    err: torch.Tensor | float,
    exact_codes: ExactCodes,
    where: str = "",
) -> torch.Tensor:
    """Exact unsaturated codes from a float64 approximation.

    ``t_hat`` approximates the exact ratios ``t = x / step`` with ``|t - t_hat| <= err``.  Where
    the interval ``[t_hat - err, t_hat + err]`` contains no rounding boundary, ``round_tensor``
    decides exactly; elsewhere ``exact_codes(flat_indices)`` supplies ``round_exact`` of the
    exact values.  Returns a float64 tensor of integer codes.
    """
    if not bool(torch.isfinite(t_hat).all()):
        raise DataError(
            f"{where or 'tensor'}: NaN or infinite value reached quantization; check the input data "
            "and the model parameters"
        )
    codes = fmt.round_tensor(t_hat)
    uncertain = fmt.boundary_gap_tensor(t_hat) <= err
    if bool(uncertain.any()):
        flat_idx = uncertain.flatten().nonzero().flatten().tolist()
        exact = exact_codes(flat_idx)
        flat = codes.flatten().clone()
        flat[flat_idx] = torch.tensor([float(k) for k in exact], dtype=codes.dtype, device=codes.device)
        codes = flat.view_as(codes)
    return codes


def round_approx(fmt: FixedPoint, approx: Callable[[int], Fraction], where: str = "") -> int:
    """Exact rounding of a value only known through arbitrary-precision approximations.

    ``approx(prec)`` returns a rational within relative error ``2**-(prec - 8)`` of the exact ratio
    ``t`` (e.g. a transcendental activation evaluated with mpmath).  The precision grows until the
    approximation is provably on one side of every rounding boundary.  Exact ties must be
    resolved by the caller (they occur only at rational points, e.g. sigmoid(0) = 1/2).
    """
    for prec in (96, 192, 384, 768, 1536):
        t = approx(prec)
        slack = (abs(t) + 1) * Fraction(1, 2 ** (prec - 16))
        if fmt.boundary_gap(t) > slack:
            return fmt.round_exact(t)
    raise ArithmeticError(f"{where}: cannot separate a value from a rounding boundary at 1536 bits")


def dequantize_f64(codes: torch.Tensor, steps: Sequence[Fraction], axis: int = 0) -> torch.Tensor:
    """The doubles nearest to ``codes * step`` (one correct rounding; per-channel along ``axis``).

    A dyadic step is exact in float64, so ``k * step`` rounds once.  A non-dyadic step ``n/d``
    (validated so that ``|k| * n < 2**53``) is computed as ``(k * n) / d``, again one rounding.
    """
    codes = codes.to(torch.float64)
    shape = [1] * codes.dim()
    if len(steps) > 1:
        shape[axis] = len(steps)
    if all(is_dyadic(s) for s in steps):
        s = torch.tensor([fraction_to_float(x) for x in steps], dtype=torch.float64, device=codes.device)
        return codes * s.view(shape) if len(steps) > 1 else codes * s
    num = torch.tensor([float(x.numerator) for x in steps], dtype=torch.float64, device=codes.device)
    den = torch.tensor([float(x.denominator) for x in steps], dtype=torch.float64, device=codes.device)
    if len(steps) > 1:
        num, den = num.view(shape), den.view(shape)
    return (codes * num) / den


def expand_groups(values: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """One value per (output channel, group) (``values`` of ``out * G`` elements, in that order)
    repeated over the group's elements: a tensor of the weight's ``shape`` (differentiable)."""
    n = values.numel()
    total = math.prod(shape)
    return values.reshape(n, 1).expand(n, total // n).reshape(tuple(shape))


def dequantize_groups(codes: torch.Tensor, steps: Sequence[Fraction]) -> torch.Tensor:
    """:func:`dequantize_f64` of weight codes with one step per (output channel, group): the
    codes viewed as ``[out * G, group_size]`` rows, one step per row."""
    if len(steps) == 1:
        return dequantize_f64(codes, steps)
    return dequantize_f64(codes.reshape(len(steps), -1), steps, 0).reshape(codes.shape)


INT64_LIMIT = 2**62  # headroom below 2^63 for the doubled numerators of ``round_ratio``


def fits_int64(*bounds: int) -> bool:
    """Do the products of these non-negative integer bounds stay below ``2^62``?"""
    total = 1
    for b in bounds:
        total *= int(b)
    return total < INT64_LIMIT


def round_by_comparison(fmt: FixedPoint, t_hat: float, compare: Callable[[Fraction], int]) -> int:
    """``round_exact(t)`` for a value ``t`` known through an approximation ``t_hat`` and an exact
    comparison oracle ``compare(r) = sign(t - r)`` for rationals ``r``.

    For values that are not rational but can be compared exactly with rationals (e.g. the
    ``a / sqrt(R) + b`` of a layer norm, by squaring).  ``floor(t)`` is found by comparing with
    integers near ``t_hat``, then the tie rule by comparing with ``floor(t) + 1/2``.
    """
    if fmt.binary:
        thr = 1 if fmt.rounding == "floor" else 0
        return 1 if compare(Fraction(thr)) >= 0 else -1
    lo = math.floor(t_hat)
    while compare(Fraction(lo)) < 0:
        lo -= 1
    while compare(Fraction(lo + 1)) >= 0:
        lo += 1
    if fmt.rounding == "floor":
        return lo
    side = compare(Fraction(2 * lo + 1, 2))
    if side != 0:
        return lo + (side > 0)
    if fmt.rounding == "half_even":
        return lo + (lo % 2)
    return lo + 1 if lo >= 0 else lo  # ties away from zero: lo + 1/2 > 0 iff lo >= 0
