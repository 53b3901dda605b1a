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
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .. import activations as A
from ..errors import UnsupportedModelError, VerificationInputError
from ..formats import FixedPoint, dequantize_f64, round_certified

DENSE_ENTRIES = 1_000_000  # larger layers are stored as sparse rows


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


def _dyadic_rows(D: Any) -> tuple[Any, list[Fraction]]:
    """Exact integer rows of a float64 matrix (dense or CSR): ``D[i, j] = ints[i, j] * scale[i]``
    with ``scale[i]`` a power of two (numpy's ``frexp``: every double is ``M * 2^E`` with
    ``|M| < 2^53``).  Dense ``ints`` are int64 when they fit, else Python ints."""
    if sp.issparse(D):
        D = sp.csr_matrix(D, dtype=np.float64)
        vals, rows = D.data, np.repeat(np.arange(D.shape[0]), np.diff(D.indptr))
    else:
        D = np.asarray(D, dtype=np.float64)
        vals, rows = D.reshape(-1), np.repeat(np.arange(D.shape[0]), D.shape[1] if D.ndim == 2 else 0)
    ints, scale = _dyadic(vals, rows, D.shape[0])
    if not sp.issparse(D):
        return ints.reshape(D.shape), scale
    if ints.dtype == object:
        raise UnsupportedModelError(
            "a float layer's weights span more than 2^62 within a row of a sparse layer; rescale the weights"
        )
    return sp.csr_matrix((ints, D.indices.copy(), D.indptr.copy()), shape=D.shape), scale


def _dyadic(vals: np.ndarray, rows: np.ndarray, n_rows: int) -> tuple[np.ndarray, list[Fraction]]:
    """Integers ``ints`` and per-row powers of two with ``vals = ints * scale[rows]``."""
    if not np.isfinite(vals).all():
        raise VerificationInputError("the verifier got a weight or bias that is NaN or infinite")
    if vals.size == 0:
        return vals.astype(np.int64), [Fraction(1)] * n_rows
    mant, exp = np.frexp(vals)
    M = (mant * 2.0**53).astype(np.int64)  # exact: |mant| < 1 has 53 significant bits
    E = exp.astype(np.int64) - 53
    tz = np.zeros_like(M)
    nz = M != 0
    low = (M & -M)[nz]
    tz[nz] = np.round(np.log2(low.astype(np.float64))).astype(np.int64)  # exact for powers of two
    M = np.where(nz, M >> tz, 0)
    top = np.iinfo(np.int64).max
    E = np.where(nz, E + tz, top)
    emin = np.full(n_rows, top, dtype=np.int64)
    np.minimum.at(emin, rows, E)
    emin = np.where(emin == top, 0, emin)
    shift = np.where(nz, E - emin[rows], 0)
    bits = np.where(nz, np.ceil(np.log2(np.abs(M).astype(np.float64) + 1)), 0) + shift
    if bits.max(initial=0) < 62:
        ints = M << shift
    else:  # exponents spread too far for int64: Python ints
        ints = np.empty(vals.shape, dtype=object)
        ints[:] = [m << sh for m, sh in zip(M.tolist(), shift.tolist(), strict=True)]
    return ints, [Fraction(2) ** int(e) for e in emin.tolist()]


class Affine:
    """``y = W x + b`` with the exact rational matrix ``W[i, j] = ints[i, j] * scale[i]`` (integer
    rows with one exact rational scale per row: a quantized layer's codes and step, or a float
    layer's doubles over a common power of two) and exact bias ``b``; optional output rounding of
    the coordinates in ``rounded`` (all of them when ``None``).

    ``ints`` is a dense array (int64, or Python ints when a row's exponents spread beyond 2^62) or,
    for convolutions and the verifier's own copy and join rows, a ``scipy.sparse`` CSR matrix of
    int64: every consumer reads it through :meth:`row`, :meth:`columns`, :meth:`rows_within`,
    :meth:`exact` and the float64 copy ``Wf`` (same storage), so no layer is ever expanded into a
    dense matrix that its size does not allow.  ``Wf``/``bf`` are float64 copies for bounds and
    sampling (exact when ``floats_exact``; else within a relative ``2^-52``, which the bounds'
    error terms cover).  ``Affine(W, b)`` takes ``W`` as rows of rationals.
    """

    def __init__(
        self,
        W: list[list[Fraction]] | None = None,
        b: list[Fraction] | None = None,
        out: Rounding | None = None,
        *,
        ints: Any = None,
        scale: list[Fraction] | None = None,
        rounded: np.ndarray | None = None,
    ) -> None:
        if ints is None:
            if W is None:
                raise VerificationInputError("Affine needs W or ints and scale")
            ints, scale = _fraction_rows([[Fraction(v) for v in row] for row in W])
        if ints.ndim != 2 or scale is None or len(scale) != ints.shape[0]:
            raise VerificationInputError("Affine: ints must be (outputs, inputs) with one scale per row")
        self.ints: Any = ints.tocsr() if sp.issparse(ints) else ints  # dense array or CSR matrix
        self.scale = [s if type(s) is Fraction else Fraction(s) for s in scale]
        self.b = [
            v if type(v) is Fraction else Fraction(v) for v in (b if b is not None else [0] * ints.shape[0])
        ]
        if len(self.b) != ints.shape[0]:
            raise VerificationInputError("Affine: one bias per output row")
        self.out = out
        self.rounded = rounded
        sf = _doubles(self.scale)
        if self.sparse:
            self.Wf = sp.diags(sf) @ self.ints.astype(np.float64)
        else:
            self.Wf = ints.astype(np.float64) * sf[:, None]
        self.bf = _doubles(self.b)
        self._obj: np.ndarray | None = None

    @classmethod
    def from_floats(
        cls, D: np.ndarray | sp.csr_matrix, b: list[Fraction], out: Rounding | None = None
    ) -> Affine:
        """The float64 matrix ``D`` at its exact binary values."""
        ints, scale = _dyadic_rows(D)
        return cls(None, b, out, ints=ints, scale=scale)

    @classmethod
    def from_ints(cls, codes: np.ndarray | sp.csr_matrix, scale: list[Fraction], b: list[Fraction]) -> Affine:
        """Integer ``codes`` (a float64 or integer array of whole numbers) times a per-row scale."""
        if sp.issparse(codes):
            return cls(None, b, None, ints=_whole(sp.csr_matrix(codes)), scale=scale)
        return cls(None, b, None, ints=_whole(np.asarray(codes)), scale=scale)

    @property
    def sparse(self) -> bool:
        return sp.issparse(self.ints)

    @property
    def in_features(self) -> int:
        return self.ints.shape[1]

    @property
    def nnz(self) -> int:
        """Stored weights (nonzero ones for sparse layers)."""
        return int(self.ints.nnz) if self.sparse else int(self.ints.size)

    def row_items(self, i: int) -> tuple[list[int], list[int]]:
        """The nonzero integer entries of row ``i``: their columns and values."""
        if self.sparse:
            lo, hi = self.ints.indptr[i], self.ints.indptr[i + 1]
            cols, vals = self.ints.indices[lo:hi], self.ints.data[lo:hi]
            keep = vals != 0
            return cols[keep].tolist(), vals[keep].tolist()
        r = self.ints[i]
        cols = np.flatnonzero(r)
        return cols.tolist(), [int(v) for v in r[cols]]

    def row(self, i: int) -> list[tuple[int, Fraction]]:
        """The nonzero weights of row ``i`` as ``(column, exact weight)``."""
        s = self.scale[i]
        return [(j, Fraction(v) * s) for j, v in zip(*self.row_items(i), strict=True)]

    def columns(self, rows: list[int] | set[int]) -> set[int]:
        """The inputs that some of ``rows`` reads (nonzero weight)."""
        if not rows:
            return set()
        part = self.ints[sorted(rows)]
        if self.sparse:
            return set(part.indices[part.data != 0].tolist())
        return set(np.flatnonzero((part != 0).any(axis=0)).tolist())

    def rows_within(self, known: np.ndarray) -> np.ndarray:
        """The rows that read only the inputs marked in ``known`` (a bool mask)."""
        if self.sparse:
            rows = np.repeat(np.arange(self.ints.shape[0]), np.diff(self.ints.indptr))
            bad = (self.ints.data != 0) & ~known[self.ints.indices]
            return np.flatnonzero(np.bincount(rows[bad], minlength=self.ints.shape[0]) == 0)
        return np.flatnonzero(~(self.ints[:, ~known] != 0).any(axis=1))

    def exact(self, v: list[Fraction], rows: list[int] | None = None) -> list[Fraction]:
        """``W v + b`` exactly (only ``rows`` when given): one integer dot product per row over
        the inputs' common denominator, one Fraction per output."""
        v = [Fraction(t) for t in v]
        den = math.lcm(1, *(t.denominator for t in v))
        nums = [t.numerator * (den // t.denominator) for t in v]
        idx = list(range(self.ints.shape[0])) if rows is None else list(rows)
        if not idx:
            return []
        if self.sparse:
            acc = _sparse_dot(self.ints[idx], nums)
        elif len(v):
            arr = np.empty(len(nums), dtype=object)
            arr[:] = nums
            acc = self._objects()[idx].dot(arr)
        else:
            acc = [0] * len(idx)
        return [Fraction(int(a)) * self.scale[i] / den + self.b[i] for a, i in zip(acc, idx, strict=True)]

    def _objects(self) -> np.ndarray:
        if self._obj is None:
            self._obj = self.ints.astype(object)  # Python ints: exact dot products
        return self._obj

    def doubles_exact(self) -> bool:
        """Is every weight and bias a double (so ``Wf``/``bf`` are the exact layer)?"""
        if any(Fraction(float(v)) != v for v in self.b):
            return False
        for i, s in enumerate(self.scale):
            if s.denominator & (s.denominator - 1):
                return False  # a non-dyadic scale (e.g. 1/3): the weights are not doubles
            p = s.numerator
            while p % 2 == 0:
                p //= 2
            row = (
                self.ints.data[self.ints.indptr[i] : self.ints.indptr[i + 1]] if self.sparse else self.ints[i]
            )
            if row.dtype == object:
                odd = max((abs(int(v)) // (abs(int(v)) & -abs(int(v))) for v in row if v), default=0)
            else:
                odd = int(_odd_part(row).max(initial=0))
            if odd * p >= 2**53:
                return False
        return True


def _doubles(values: list[Fraction]) -> np.ndarray:
    """The nearest doubles of exact values (each value object converted once: rows share them)."""
    memo: dict[int, float] = {}
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        key = id(v)
        if key not in memo:
            memo[key] = float(v)
        out[i] = memo[key]
    return out


def _sparse_dot(m: sp.csr_matrix, nums: list[int]) -> list[int]:
    """``m @ nums`` exactly: int64 when a bound on every partial sum allows it, else Python ints
    (object arrays, one product per stored entry)."""
    if not len(nums):
        return [0] * m.shape[0]
    top = max(abs(min(nums)), abs(max(nums)))
    longest = int(np.diff(m.indptr).max(initial=0))
    biggest = int(np.abs(m.data).max(initial=0))
    if float(top) * biggest * max(longest, 1) < 2.0**62:
        return (m @ np.array(nums, dtype=np.int64)).tolist()
    values = np.empty(len(nums), dtype=object)
    values[:] = nums
    products = m.data.astype(object) * values[m.indices]
    acc = np.zeros(m.shape[0], dtype=object)
    filled = np.diff(m.indptr) > 0
    if products.size:
        acc[filled] = np.add.reduceat(products, m.indptr[:-1][filled])
    return [int(a) for a in acc.tolist()]


def _whole(codes: Any) -> Any:
    """Whole-number codes as int64 (dense or sparse), checked."""
    data = codes.data if sp.issparse(codes) else codes
    if data.dtype.kind == "f":
        if not bool((data == np.round(data)).all()):
            raise VerificationInputError("Affine.from_ints: the codes are not whole numbers")
        if np.abs(data).max(initial=0) >= 2**62:
            raise VerificationInputError("Affine.from_ints: codes beyond 2^62")
        return codes.astype(np.int64)
    return codes


def _fraction_rows(rows: list[list[Fraction]]) -> tuple[np.ndarray, list[Fraction]]:
    """Rows of rationals as integer rows times one scale each (int64 when it fits)."""
    scale = [Fraction(1, math.lcm(1, *(v.denominator for v in row))) for row in rows]
    flat = [int(v / s) for row, s in zip(rows, scale, strict=True) for v in row]
    n = len(rows[0]) if rows else 0
    ints: np.ndarray = np.empty(len(flat), dtype=object)
    ints[:] = flat
    ints = ints.reshape(len(rows), n)
    if all(abs(v) < 2**62 for v in flat):
        ints = ints.astype(np.int64)
    return ints, scale


def sparse_rows(
    row: np.ndarray, col: np.ndarray, coef: np.ndarray, shape: tuple[int, int]
) -> tuple[sp.csr_matrix, list[Fraction]]:
    """Sparse rows of exact coefficients (entry ``e``: ``coef[e]`` at ``(row[e], col[e])``; an int
    array, or Fractions; repeated entries add up) as int64 rows times one scale per row (the
    reciprocal of the row's common denominator)."""
    row, col = np.asarray(row, dtype=np.int64), np.asarray(col, dtype=np.int64)
    coef = np.asarray(coef)
    if coef.dtype.kind in "iu":
        nums, dens = coef.astype(np.int64), np.ones(len(coef), dtype=np.int64)
    else:
        fr = [k if type(k) is Fraction else Fraction(k) for k in coef.tolist()]
        if any(abs(k.numerator) >= 2**62 or k.denominator >= 2**62 for k in fr):
            raise UnsupportedModelError("a coefficient beyond 2^62 over its denominator")
        nums = np.array([k.numerator for k in fr], dtype=np.int64)
        dens = np.array([k.denominator for k in fr], dtype=np.int64)
    row_den = np.ones(shape[0], dtype=np.int64)
    np.lcm.at(row_den, row, dens)
    factor = row_den[row] // dens
    if len(nums) and float(np.max(np.abs(nums.astype(np.float64)) * factor)) * max(shape[1], 1) >= 2.0**62:
        raise UnsupportedModelError("a combination's coefficients exceed 2^62 over their common denominator")
    m = sp.csr_matrix((nums * factor, (row, col)), shape=shape)
    m.sum_duplicates()
    m.eliminate_zeros()
    scales = {int(d): Fraction(1, int(d)) for d in np.unique(row_den).tolist()}  # shared objects
    return m, [scales[d] for d in row_den.tolist()]


def stack(parts: list[Affine]) -> Affine:
    """The rows of ``parts`` one after the other, as one layer (sparse unless every part is dense
    and small); output roundings are set by the caller."""
    if all(not p.sparse for p in parts) and sum(p.ints.size for p in parts) <= DENSE_ENTRIES:
        dtype = object if any(p.ints.dtype == object for p in parts) else np.int64
        ints = np.concatenate([p.ints.astype(dtype) for p in parts], axis=0)
    else:
        if any(not p.sparse and p.ints.dtype == object for p in parts):
            raise UnsupportedModelError(
                "a float layer's weights span more than 2^62 within a row and the layer is too large "
                "for exact dense rows; rescale the weights"
            )
        ints = sp.vstack([sp.csr_matrix(p.ints) for p in parts], format="csr")
    return Affine(
        None,
        [v for p in parts for v in p.b],
        None,
        ints=ints,
        scale=[s for p in parts for s in p.scale],
    )


IDENTITY = A.identity()


@dataclass
class Act:
    """An elementwise activation, applied to the coordinates in ``active`` (all when ``None``;
    the others pass unchanged), then the output rounding of the coordinates in ``rounded``."""

    act: A.Activation
    out: Rounding | None = None
    active: np.ndarray | None = None
    rounded: np.ndarray | None = None

    def at(self, i: int) -> A.Activation:
        """The function coordinate ``i`` goes through."""
        return self.act if self.active is None or self.active[i] else IDENTITY


def rounding_at(layer: Affine | Act, i: int) -> Rounding | None:
    """The output rounding of coordinate ``i`` (``None``: it passes unrounded)."""
    if layer.out is None or (layer.rounded is not None and not layer.rounded[i]):
        return None
    return layer.out


def masked(mask: np.ndarray | None, changed: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``changed`` where ``mask`` (everywhere when ``None``), ``kept`` elsewhere."""
    return changed if mask is None else np.where(mask, changed, kept)


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
        return next(
            (len(layer.b) for layer in reversed(self.layers) if isinstance(layer, Affine)), self.in_features
        )

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
                v = [layer.at(i).exact(t) for i, t in enumerate(v)]
            if layer.out is not None:
                v = [r.apply(t) if (r := rounding_at(layer, i)) is not None else t for i, t in enumerate(v)]
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


def keeps_grid(act: A.Activation, step: Fraction) -> bool:
    """Does the activation map the grid ``step * Z`` into itself?"""
    if act.name in ("relu", "identity"):
        return True
    if act.name == "hardtanh":
        return all((Fraction(act.param(k)) / step).denominator == 1 for k in ("min_val", "max_val"))
    return False


# ------------------------------------------------------------------ what bounds decide
def _const_act(a: A.Activation, value: Fraction | None, lo: float, hi: float) -> Fraction | None:
    """The activation's value when bounds (or a constant input) decide it."""
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
            rows = layer.rows_within(known) if len(prev) else np.arange(len(layer.b))
            cur: list = [None] * len(layer.b)
            if len(rows):
                values = layer.exact([t if t is not None else Fraction(0) for t in prev], rows.tolist())
                for i, v in zip(rows.tolist(), values, strict=True):
                    cur[i] = v
        else:
            cur = [
                _const_act(layer.at(i), t, a, b)
                for i, (t, a, b) in enumerate(zip(prev, prev_lo, prev_hi, strict=True))
            ]
        if layer.out is not None:
            cur = [
                _const_round(rounding_at(layer, i), t, a, b)
                for i, (t, a, b) in enumerate(zip(cur, lb.pre_lo.tolist(), lb.pre_hi.tolist(), strict=True))
            ]
        out.append(cur)
        prev, prev_lo, prev_hi = cur, lb.lo.tolist(), lb.hi.tolist()
    return out


def _const_round(r: Rounding | None, value: Fraction | None, lo: float, hi: float) -> Fraction | None:
    """A rounding's value when its input is constant or its whole interval rounds to one value."""
    if r is None:
        return value
    if value is not None:
        return r.apply(value)
    if math.isfinite(lo) and math.isfinite(hi) and r.apply(Fraction(lo)) == r.apply(Fraction(hi)):
        return r.apply(Fraction(lo))
    return None


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
