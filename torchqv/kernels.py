"""Fused elementwise kernels of the exact executor (optional, through ``torch.compile``).

The exact simulation's requantization in float64 (:class:`torchqv.grid.Requantizer`) is a chain
of about ten elementwise operations: ``t = (sum_i k_i m_i + c) / L``, the format's rounding of
``t``, saturation, the code dtype.  Every operation of the chain is exact or correctly rounded
(the products and sums are exact integers below ``2^52``; the division is one correctly rounded
operation), so fusing them into one loop -- with or without fused multiply-adds, which only
combine exact operations here -- computes the same values.  ``torch.compile`` (inductor) fuses
them, which is an order of magnitude faster on large activations; the first call in a process
compiles (seconds; inductor caches the result on disk).  Off by default:
:func:`use_compiled_kernels` turns it on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .formats import FixedPoint

_state: dict[str, object] = {"compiled": False, "kernel": None}


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
    kernel: Callable = _requantize_float
    if _state["compiled"]:
        if _state["kernel"] is None:
            _state["kernel"] = torch.compile(_requantize_float, dynamic=True)
        kernel = _state["kernel"]  # type: ignore[assignment]
    return kernel(list(codes), list(mults), const, den, fmt, bounds, dtype)


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
