"""The network representation the verifier works on: a chain of exact layers.

``float_chain(f)`` reads a float model and ``quant_chain(fq)`` a torchqv quantized model, with
every node's output format, both through the quantized graph (:mod:`torchqv.verify.builder`).
Weights are kept as exact rationals (the float values' binary expansions), so the z3 encoding,
the bounds and the exact replay all mean the same network.  Rounding steps use the format's own
rule (``FixedPoint.round_exact``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from .. import activations as A
from ..formats import FixedPoint, dequantize_f64, round_certified


@dataclass
class Rounding:
    """Round a real value to ``fmt``'s grid with ``step`` and zero point ``zp``: value ``k * step``.

    ``in_step``: when known, the rounding's input always lies on the grid ``in_step * Z`` (e.g. a
    ReLU's output, whose input was already rounded); with ``in_step / step = p / q`` in lowest
    terms, ``x / step`` is a multiple of ``1 / q``, so the rounding error is at most
    ``floor(q / 2) / q`` steps (nearest) or ``(q - 1) / q`` steps (floor): none when ``q = 1``.
    """

    fmt: FixedPoint
    step: Fraction
    zp: int = 0
    in_step: Fraction | None = None

    @property
    def code_range(self) -> tuple[int, int]:
        return self.fmt.code_range(self.zp)

    def apply(self, v: Fraction) -> Fraction:
        return self.fmt.saturate_exact(self.fmt.round_exact(v / self.step), self.zp) * self.step

    def apply_floats(self, v: np.ndarray) -> np.ndarray:
        """``apply`` on every float64 value, decided exactly (``round_certified``: float64 where the
        value is provably away from a rounding boundary, Fractions elsewhere); the results are the
        doubles nearest to the grid values.  Infinite values saturate."""
        v = np.asarray(v, dtype=np.float64)
        kmin, kmax = self.code_range
        finite = np.where(np.isfinite(v), v, 0.0)
        t_hat = torch.from_numpy(finite / float(self.step))
        flat = finite.reshape(-1)
        codes = round_certified(
            self.fmt,
            t_hat,
            t_hat.abs() * 2.0**-50 + 2.0**-1000,  # float(step) and the division: < 3 ulps
            lambda idx: [self.fmt.round_exact(Fraction(float(flat[i])) / self.step) for i in idx],
        ).numpy()
        codes = np.where(np.isposinf(v), kmax, np.where(np.isneginf(v), kmin, codes))
        codes = self.fmt.saturate_tensor(torch.from_numpy(codes), kmin, kmax).reshape(-1)
        return dequantize_f64(codes, [self.step]).numpy().reshape(v.shape)

    @property
    def exact_on_input(self) -> bool:
        """The input grid is a subgrid of the output grid: unsaturated inputs are kept as they are."""
        return (
            self.in_step is not None and not self.fmt.binary and (self.in_step / self.step).denominator == 1
        )

    def error_bounds(self) -> tuple[Fraction, Fraction]:
        """``(lo, hi)`` with ``lo <= round(x) - x <= hi`` (in steps) for unsaturated inputs."""
        q = (self.in_step / self.step).denominator if self.in_step is not None else None
        if self.fmt.rounding == "floor":
            return (Fraction(1 - q, q) if q else Fraction(-1)), Fraction(0)
        half = Fraction(q // 2, q) if q else Fraction(1, 2)
        return -half, half


@dataclass
class Affine:
    """``y = W x + b`` with exact rational ``W`` (rows: outputs) and ``b``; optional output rounding."""

    W: list[list[Fraction]]
    b: list[Fraction]
    out: Rounding | None = None
    Wf: np.ndarray = field(default=None, repr=False)  # float64 copies for bounds and sampling
    bf: np.ndarray = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.Wf = np.array([[float(v) for v in row] for row in self.W], dtype=np.float64)
        self.bf = np.array([float(v) for v in self.b], dtype=np.float64)


@dataclass
class Act:
    act: A.Activation
    out: Rounding | None = None


@dataclass
class Chain:
    """A network ``x -> layers`` on flat input vectors; ``inp`` rounds the input (quantized nets)."""

    layers: list[Affine | Act]
    in_features: int
    inp: Rounding | None = None

    @property
    def floats_exact(self) -> bool:
        """Are every weight, bias and step exactly doubles (so float64 models are exact)?"""
        if not hasattr(self, "_floats_exact"):
            values = [r.step for r in self.roundings()]
            for layer in self.layers:
                if isinstance(layer, Affine):
                    values += [v for row in layer.W for v in row] + list(layer.b)
            self._floats_exact = all(Fraction(float(v)) == v for v in values)
        return self._floats_exact

    def roundings(self) -> list[Rounding]:
        return [r for r in [self.inp, *(layer.out for layer in self.layers)] if r is not None]

    @property
    def out_features(self) -> int:
        return next(len(layer.b) for layer in reversed(self.layers) if isinstance(layer, Affine))

    def exact(self, x: list[Fraction]) -> list[Fraction]:
        """Evaluate with exact rational arithmetic (the semantics the encodings describe)."""
        v = [self.inp.apply(Fraction(t)) for t in x] if self.inp else [Fraction(t) for t in x]
        for layer in self.layers:
            if isinstance(layer, Affine):
                v = [
                    sum((w * t for w, t in zip(row, v, strict=True) if w and t), start=b)
                    for row, b in zip(layer.W, layer.b, strict=True)
                ]
            else:
                v = [layer.act.exact(t) for t in v]
            if layer.out is not None:
                v = [layer.out.apply(t) for t in v]
        return v


def _as_shape(inputs: int | tuple[int, ...]) -> tuple[int, ...]:
    return (inputs,) if isinstance(inputs, int) else tuple(inputs)


def float_chain(model: nn.Module, inputs: int | tuple[int, ...]) -> Chain:
    """The float network as an exact chain (its graph with every edge real; piecewise-linear
    activations only); ``inputs``: the input's size or shape (without the batch dimension)."""
    from .builder import as_graph, read_chain

    return read_chain(as_graph(model, "the float network"), _as_shape(inputs))


def quant_chain(model: nn.Module, inputs: int | tuple[int, ...]) -> Chain:
    """A torchqv quantized model as an exact chain with its roundings (eval-mode semantics)."""
    from .builder import as_graph, read_chain

    return read_chain(as_graph(model, "the quantized network"), _as_shape(inputs))


def _keeps_grid(act: A.Activation, step: Fraction) -> bool:
    """Does the activation map the grid ``step * Z`` into itself?"""
    if act.name in ("relu", "identity"):
        return True
    if act.name == "hardtanh":
        return all((Fraction(act.param(k)) / step).denominator == 1 for k in ("min_val", "max_val"))
    return False


def mark_input_grids(layers: list[Affine | Act], inp: Rounding | None) -> None:
    """Record ``Rounding.in_step`` where a rounding's input is known to lie on a grid."""
    grid = inp.step if inp is not None else None
    for layer in layers:
        if isinstance(layer, Act):
            grid = grid if grid is not None and _keeps_grid(layer.act, grid) else None
        else:
            grid = None
        if layer.out is not None:
            layer.out.in_step = grid
            grid = layer.out.step


# ------------------------------------------------------------------ what bounds decide
def _const_act(layer: Act, value: Fraction | None, lo: float, hi: float) -> Fraction | None:
    """The activation's value when bounds (or a constant input) decide it."""
    a = layer.act
    if value is not None:
        return a.exact(value)
    if a.name == "relu" and hi <= 0:
        return Fraction(0)
    if a.name == "hardtanh" and (hi <= a.param("min_val") or lo >= a.param("max_val")):
        return Fraction(a.param("min_val") if hi <= a.param("min_val") else a.param("max_val"))
    return None


def constants(
    chain: Chain, bounds: list, in_lo: list[float], in_hi: list[float]
) -> list[list[Fraction | None]]:
    """Per layer and neuron: the exact value if the bounds make it constant, else ``None``."""
    prev = [Fraction(a) if a == b else None for a, b in zip(in_lo, in_hi, strict=True)]
    prev_lo, prev_hi = in_lo, in_hi
    out = []
    for layer, lb in zip(chain.layers, bounds, strict=True):
        if isinstance(layer, Affine):
            cur = [
                sum((w * t for w, t in zip(row, prev, strict=True) if w), start=b)
                if all(t is not None for w, t in zip(row, prev, strict=True) if w)
                else None
                for row, b in zip(layer.W, layer.b, strict=True)
            ]
        else:
            cur = [_const_act(layer, t, a, b) for t, a, b in zip(prev, prev_lo, prev_hi, strict=True)]
        r = layer.out
        if r is not None:
            cur = [
                r.apply(t)
                if t is not None
                else (
                    r.apply(Fraction(a))
                    if math.isfinite(a) and math.isfinite(b) and r.apply(Fraction(a)) == r.apply(Fraction(b))
                    else None
                )
                for t, a, b in zip(cur, lb.pre_lo.tolist(), lb.pre_hi.tolist(), strict=True)
            ]
        out.append(cur)
        prev, prev_lo, prev_hi = cur, lb.lo.tolist(), lb.hi.tolist()
    return out


def cone(chain: Chain, const: list[list], outputs) -> list[set[int]]:
    """Per layer: the non-constant neurons that the requested outputs depend on."""
    need: list[set[int]] = [set() for _ in chain.layers]
    want = set(outputs)
    for li in range(len(chain.layers) - 1, -1, -1):
        layer = chain.layers[li]
        need[li] = {i for i in want if const[li][i] is None}
        if isinstance(layer, Affine):
            want = {j for i in need[li] for j, w in enumerate(layer.W[i]) if w != 0}
        else:
            want = set(need[li])
    return need
