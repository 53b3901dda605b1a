"""The network representation the verifier works on: a chain of exact layers.

``float_chain(f)`` reads a float model and ``quant_chain(fq)`` a torchqv quantized model, with
every node's output format, both through the quantized graph (:mod:`torchqv.verify.builder`).
Weights are kept as exact rationals (the float values' binary expansions), so the z3 encoding,
the bounds and the exact replay all mean the same network.  Rounding steps use the format's own
rule (``FixedPoint.round_exact``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from .. import activations as A
from ..errors import UnsupportedModelError, VerificationInputError
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
        k = self.fmt.saturate_tensor(torch.from_numpy(codes), kmin, kmax).reshape(-1)
        return dequantize_f64(k, [self.step]).numpy().reshape(v.shape)

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


def _odd_part(a: np.ndarray) -> np.ndarray:
    """``|a|`` without its trailing zero bits (int64 arrays; 0 stays 0)."""
    a = np.abs(a)
    low = a & -a
    return np.where(a == 0, 0, a // np.where(low == 0, 1, low))


def _dyadic_rows(D: np.ndarray) -> tuple[np.ndarray, list[Fraction]]:
    """Exact integer rows of a float64 matrix: ``D[i, j] = ints[i, j] * scale[i]`` with
    ``scale[i]`` a power of two (numpy's ``frexp``: every double is ``M * 2^E`` with ``|M| < 2^53``).
    ``ints`` is int64 when it fits, else an object array of Python ints."""
    D = np.asarray(D, dtype=np.float64)
    if D.size == 0:
        return D.astype(np.int64), [Fraction(1)] * D.shape[0]
    if not np.isfinite(D).all():
        raise VerificationInputError("the verifier got a weight or bias that is NaN or infinite")
    mant, exp = np.frexp(D)
    M = (mant * 2.0**53).astype(np.int64)  # exact: |mant| < 1 has 53 significant bits
    E = exp.astype(np.int64) - 53
    tz = np.zeros_like(M)
    nz = M != 0
    low = (M & -M)[nz]
    tz[nz] = np.round(np.log2(low.astype(np.float64))).astype(np.int64)  # exact for powers of two
    M = np.where(nz, M >> tz, 0)
    E = np.where(nz, E + tz, np.iinfo(np.int64).max)
    emin = E.min(axis=1)
    emin = np.where(emin == np.iinfo(np.int64).max, 0, emin)
    shift = np.where(nz, E - emin[:, None], 0)
    bits = np.where(nz, np.ceil(np.log2(np.abs(M).astype(np.float64) + 1)), 0) + shift
    if bits.max(initial=0) < 62:
        ints = M << shift
    else:  # exponents spread too far for int64: Python ints
        ints = np.empty(D.shape, dtype=object)
        for idx, (m, sh) in enumerate(zip(M.reshape(-1).tolist(), shift.reshape(-1).tolist(), strict=True)):
            ints.reshape(-1)[idx] = m << sh
    scale = [Fraction(2) ** int(e) for e in emin.tolist()]
    return ints, scale


class Affine:
    """``y = W x + b`` with the exact rational matrix ``W[i, j] = ints[i, j] * scale[i]`` (integer
    rows with one exact rational scale per row: a quantized layer's codes and step, or a float
    layer's doubles over a common power of two) and exact bias ``b``; optional output rounding.

    ``Affine(W, b)`` takes ``W`` as rows of rationals (converted once); ``Affine.from_ints`` and
    ``Affine.from_floats`` build the integer form directly.  ``Wf``/``bf`` are float64 copies for
    bounds and sampling (exact when ``floats_exact``; else within a relative ``2^-52``, which the
    bounds' error terms cover).  ``W`` (rows of ``Fraction``) is built lazily, for small layers.
    """

    def __init__(
        self,
        W: list[list[Fraction]] | None = None,
        b: list[Fraction] | None = None,
        out: Rounding | None = None,
        *,
        ints: np.ndarray | None = None,
        scale: list[Fraction] | None = None,
    ) -> None:
        if ints is None:
            if W is None:
                raise VerificationInputError("Affine needs W or ints and scale")
            rows = [[Fraction(v) for v in row] for row in W]
            scale = [Fraction(1, math.lcm(1, *(v.denominator for v in row))) for row in rows]
            flat = [int(v / s) for row, s in zip(rows, scale, strict=True) for v in row]
            n = len(rows[0]) if rows else 0
            ints = np.empty(len(flat), dtype=object)
            ints[:] = flat
            ints = ints.reshape(len(rows), n)
            if all(abs(v) < 2**62 for v in flat):
                ints = ints.astype(np.int64)
        if ints.ndim != 2 or scale is None or len(scale) != ints.shape[0]:
            raise VerificationInputError("Affine: ints must be (outputs, inputs) with one scale per row")
        self.ints = ints
        self.scale = [Fraction(s) for s in scale]
        self.b = [Fraction(v) for v in (b if b is not None else [0] * ints.shape[0])]
        if len(self.b) != ints.shape[0]:
            raise VerificationInputError("Affine: one bias per output row")
        self.out = out
        sf = np.array([float(s) for s in self.scale], dtype=np.float64)
        self.Wf = ints.astype(np.float64) * sf[:, None]  # float64 copies for bounds and sampling
        self.bf = np.array([float(v) for v in self.b], dtype=np.float64)
        self._obj: np.ndarray | None = None
        self._W: list[list[Fraction]] | None = None

    @classmethod
    def from_floats(cls, D: np.ndarray, b: list[Fraction], out: Rounding | None = None) -> Affine:
        """The float64 matrix ``D`` at its exact binary values."""
        ints, scale = _dyadic_rows(D)
        return cls(None, b, out, ints=ints, scale=scale)

    @classmethod
    def from_ints(cls, codes: np.ndarray, scale: list[Fraction], b: list[Fraction]) -> Affine:
        """Integer ``codes`` (a float64 or integer array of whole numbers) times a per-row scale."""
        codes = np.asarray(codes)
        if codes.dtype.kind == "f":
            if not bool((codes == np.round(codes)).all()):
                raise VerificationInputError("Affine.from_ints: the codes are not whole numbers")
            if np.abs(codes).max(initial=0) >= 2**62:
                raise VerificationInputError("Affine.from_ints: codes beyond 2^62")
            codes = codes.astype(np.int64)
        return cls(None, b, None, ints=codes, scale=scale)

    @property
    def in_features(self) -> int:
        return self.ints.shape[1]

    @property
    def W(self) -> list[list[Fraction]]:
        """The rows as exact rationals (built on first use: a Fraction per weight)."""
        if self._W is None:
            self._W = [
                [Fraction(int(v)) * s for v in row]
                for row, s in zip(self.ints.tolist(), self.scale, strict=True)
            ]
        return self._W

    def row(self, i: int) -> list[tuple[int, Fraction]]:
        """The nonzero weights of row ``i`` as ``(column, exact weight)``."""
        r, s = self.ints[i], self.scale[i]
        return [(int(j), Fraction(int(r[j])) * s) for j in np.flatnonzero(r)]

    def columns(self, rows: list[int] | set[int]) -> set[int]:
        """The inputs that some of ``rows`` reads (nonzero weight)."""
        if not rows:
            return set()
        return set(np.flatnonzero((self.ints[sorted(rows)] != 0).any(axis=0)).tolist())

    def _objects(self) -> np.ndarray:
        if self._obj is None:
            self._obj = self.ints.astype(object)  # Python ints: exact dot products
        return self._obj

    def exact(self, v: list[Fraction], rows: list[int] | None = None) -> list[Fraction]:
        """``W v + b`` exactly (only ``rows`` when given): one integer dot product per row over
        the inputs' common denominator, one Fraction per output."""
        v = [Fraction(t) for t in v]
        den = math.lcm(1, *(t.denominator for t in v))
        nums = np.empty(len(v), dtype=object)
        nums[:] = [t.numerator * (den // t.denominator) for t in v]
        idx = list(range(self.ints.shape[0])) if rows is None else list(rows)
        if not idx:
            return []
        acc = self._objects()[idx].dot(nums) if len(v) else [0] * len(idx)
        return [Fraction(int(a)) * self.scale[i] / den + self.b[i] for a, i in zip(acc, idx, strict=True)]

    def doubles_exact(self) -> bool:
        """Is every weight and bias a double (so ``Wf``/``bf`` are the exact layer)?"""
        if any(Fraction(float(v)) != v for v in self.b):
            return False
        for row, s in zip(self.ints, self.scale, strict=True):
            if s.denominator & (s.denominator - 1):
                return False  # a non-dyadic scale (e.g. 1/3): the weights are not doubles
            p = s.numerator
            while p % 2 == 0:
                p //= 2
            if row.dtype == object:
                odd = max((abs(int(v)) // (abs(int(v)) & -abs(int(v))) for v in row if v), default=0)
            else:
                odd = int(_odd_part(row).max(initial=0))
            if odd * p >= 2**53:
                return False
        return True


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
            self._floats_exact = all(Fraction(float(r.step)) == r.step for r in self.roundings()) and all(
                layer.doubles_exact() for layer in self.layers if isinstance(layer, Affine)
            )
        return self._floats_exact

    def roundings(self) -> list[Rounding]:
        return [r for r in [self.inp, *(layer.out for layer in self.layers)] if r is not None]

    @property
    def out_features(self) -> int:
        return next(len(layer.b) for layer in reversed(self.layers) if isinstance(layer, Affine))

    def exact(self, x: list[Fraction], body: bool = False) -> list[Fraction]:
        """Evaluate with exact rational arithmetic (the semantics the encodings describe); the
        input rounding is applied unless ``body`` (the input is then taken as it is)."""
        v = [Fraction(t) for t in x]
        if self.inp is not None and not body:
            v = [self.inp.apply(t) for t in v]
        for layer in self.layers:
            if isinstance(layer, Affine):
                v = layer.exact(v)
            else:
                v = [layer.act.exact(t) for t in v]
            if layer.out is not None:
                v = [layer.out.apply(t) for t in v]
        return v


def supported_activation(act: A.Activation) -> A.Activation:
    """The activation, if the verifier's bounds and encodings handle it (piecewise linear and
    monotone); else a clear error before any work."""
    if not act.piecewise_linear:
        raise UnsupportedModelError(f"the verifier supports piecewise-linear activations, not {act.name}")
    if act.name == "leaky_relu" and act.param("negative_slope") < 0:
        raise UnsupportedModelError(
            f"the verifier supports LeakyReLU with negative_slope >= 0 (monotone), got "
            f"{act.param('negative_slope')}; use a slope >= 0"
        )
    return act


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
    chain: Chain,
    bounds: list,
    in_lo: list[float],
    in_hi: list[float],
    fixed: list[Fraction | None] | None = None,
) -> list[list[Fraction | None]]:
    """Per layer and neuron: the exact value if the bounds make it constant, else ``None``.

    ``fixed``: the exact value of every input coordinate that the region fixes (``None`` for the
    others); by default the coordinates whose float bounds coincide (sound only when those bounds
    are the exact values, which outward-rounded bounds of a non-double point never are)."""
    prev = (
        fixed
        if fixed is not None
        else [Fraction(a) if a == b else None for a, b in zip(in_lo, in_hi, strict=True)]
    )
    prev_lo, prev_hi = in_lo, in_hi
    out = []
    for layer, lb in zip(chain.layers, bounds, strict=True):
        if isinstance(layer, Affine):
            known = np.array([t is not None for t in prev], dtype=bool)
            rows = (
                np.flatnonzero(~(layer.ints[:, ~known] != 0).any(axis=1))
                if len(prev)
                else np.arange(len(layer.b))
            )
            cur: list = [None] * len(layer.b)
            if len(rows):
                values = layer.exact([t if t is not None else Fraction(0) for t in prev], rows.tolist())
                for i, v in zip(rows.tolist(), values, strict=True):
                    cur[i] = v
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
            want = layer.columns(need[li])
        else:
            want = set(need[li])
    return need
