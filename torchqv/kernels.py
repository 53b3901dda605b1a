"""Fused elementwise kernels of the exact and training executors (optional, ``torch.compile``).

* The exact simulation's requantization in float64 (:class:`torchqv.grid.Requantizer`) is a chain
  of about ten elementwise operations: ``t = (sum_i k_i m_i + c) / L``, the format's rounding of
  ``t``, saturation, the code dtype.  Every operation of the chain is exact or correctly rounded
  (the products and sums are exact integers below ``2^52``; the division is one correctly rounded
  operation), so fusing them into one loop -- with or without fused multiply-adds, which only
  combine exact operations here -- computes the same values.
* Fake quantization (training) of a format without a fused torch kernel (ties away from zero,
  floor, binary, a learned step): ``t = x / step``, the rounding, the clamp, the straight-through
  mask and ``k step``, about ten passes, fused into one.

``torch.compile`` (inductor) fuses each chain into one loop, several times faster on large
tensors; the first call in a process compiles (seconds; inductor caches the result on disk).  Off
by default: :func:`use_compiled_kernels` turns it on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .formats import FixedPoint

RECOMPILE_LIMIT = 64
_state: dict[str, object] = {"compiled": False}
_compiled: dict[str, Callable] = {}


def use_compiled_kernels(enabled: bool = True) -> None:
    """Run the exact simulation's requantization through ``torch.compile`` (see the module
    docstring); the results are identical, only faster after the first call."""
    _state["compiled"] = bool(enabled)


def compiled_kernels() -> bool:
    return bool(_state["compiled"])


def requantize_float(
    codes: Sequence[torch.Tensor],
    mults: Sequence[torch.Tensor],
    const: torch.Tensor,
    den: torch.Tensor,
    fmt: FixedPoint,
    bounds: tuple[int | None, int | None],
    dtype: torch.dtype,
) -> torch.Tensor:
    """``round((sum_i k_i m_i + c) / L)`` in float64 with the format's rule, clamped to ``bounds``
    (``None``: unbounded on that side) and stored as ``dtype``.  Exact when the caller's bounds
    on the integers hold (see :class:`torchqv.grid.Requantizer`)."""
    return _kernel(_requantize_float)(list(codes), list(mults), const, den, fmt, bounds, dtype)


def fake_quantize_parts(
    x: torch.Tensor, step: torch.Tensor, fmt: FixedPoint, kmin: float, kmax: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, t, k, inside)``: ``t = x / step``, its saturated codes ``k`` (the format's rounding,
    clamped to ``[kmin, kmax]``), ``y = k step`` and the straight-through mask ``inside`` (``t``
    rounds into the range; binary: ``|t| <= 1``)."""
    return _kernel(_fake_quantize_parts)(x, step, fmt, kmin, kmax)


def _kernel(fn: Callable) -> Callable:
    if not _state["compiled"]:
        return fn
    if fn.__name__ not in _compiled:
        # one specialisation per rank, number of terms, rounding rule and dtype: a network has
        # a few dozen, more than dynamo's default of 8 per function (beyond it, it runs eager)
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        _compiled[fn.__name__] = torch.compile(fn, dynamic=True)
    return _compiled[fn.__name__]


def _fake_quantize_parts(
    x: torch.Tensor, step: torch.Tensor, fmt: FixedPoint, kmin: float, kmax: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    t = x / step
    if fmt.binary:
        k = fmt.round_tensor(t)
        inside = t.abs() <= 1
    else:
        rounded = fmt.round_tensor(t)
        k = torch.clamp(rounded, kmin, kmax)
        inside = k == rounded
    return k * step, t, k, inside


def _requantize_float(
    codes: list[torch.Tensor],
    mults: list[torch.Tensor],
    const: torch.Tensor,
    den: torch.Tensor,
    fmt: FixedPoint,
    bounds: tuple[int | None, int | None],
    dtype: torch.dtype,
) -> torch.Tensor:
    num = const
    for k, m in zip(codes, mults, strict=True):
        num = num + k.to(torch.float64) * m
    k = fmt.round_tensor(num / den)
    if bounds != (None, None):
        k = k.clamp(bounds[0], bounds[1])
    return k.to(dtype)
