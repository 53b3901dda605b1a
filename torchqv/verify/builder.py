"""Reading a quantized graph into the verifier's exact chain.

The verifier's engine works on chains of exact layers (:mod:`torchqv.verify.network`): each
layer maps one vector to the next.  This module is the graph's executor for it: :func:`read_chain`
interprets a :class:`~torchqv.graph.QuantizedModel` node by node, every operation contributing
through its ``chain`` method and the :class:`ChainBuilder` below (so the verifier keeps no list
of operations of its own).  The float network ``f`` is read the same way, from its graph with
every edge real (``quantize(f, QConfig())``).

A graph is not a chain: a residual add reads a value computed several layers earlier, a
concatenation reads two branches.  The builder lowers the graph to a chain by *carrying*:

* the chain's current vector holds every value that a later node still reads (liveness from the
  graph's last uses); a value is an array of coordinates of that vector (:class:`ChainVal`), so
  reshapes, permutations, slices, splits and concatenations cost no layer at all;
* a linear operation (Linear, Conv, a join, an average) is one affine layer whose first rows
  compute the new value and whose other rows copy the carried coordinates (unrounded: the
  layer's output rounding applies to its new rows only);
* an activation is one elementwise layer active on its input's coordinates only (the identity
  elsewhere), after a copy when a carried value shares them;
* max pooling is its exact piecewise-linear form ``max(a, b) = a + relu(b - a)``, a tree of
  ``ceil(log2 k)`` affine + ReLU layers over each window of ``k`` values.

Every layer keeps the exact rationals of the operation it comes from, so the chain means the
same network as ``reference_forward``.  Large layers (convolutions) are stored as sparse rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .. import activations as A
from ..errors import UnsupportedModelError
from ..formats import QuantizationError
from ..graph import QuantizedModel
from ..grid import Grid
from .network import (
    DENSE_ENTRIES,
    Act,
    Affine,
    Chain,
    Rounding,
    keeps_grid,
    sparse_rows,
    stack,
    supported_activation,
)

MAX_ENTRIES = 50_000_000  # stored weights of one layer (sparse rows count their nonzeros only)
RELU = A.relu()

Entries = list[tuple[int, int, Fraction]]  # (row, coordinate, coefficient)


@dataclass(eq=False)
class ChainVal:
    """A value during chain construction: which coordinates of the current vector hold it
    (an int64 array of its per-sample shape) and the grid step its values lie on, if known."""

    index: np.ndarray
    step: Fraction | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.index.shape)

    def size(self, dim: int | None = None) -> Any:
        full = torch.Size((1, *self.shape))
        return full if dim is None else full[dim]

    @property
    def example_shape(self) -> tuple[int, ...]:
        return (1, *self.shape)

    def dim(self) -> int:
        return len(self.shape) + 1

    @property
    def flat(self) -> np.ndarray:
        return self.index.reshape(-1)


def _values(v: Any) -> Iterator[ChainVal]:
    """The chain values inside a node's value (tuples of a split included)."""
    if isinstance(v, ChainVal):
        yield v
    elif isinstance(v, (tuple, list)):
        for item in v:
            yield from _values(item)


class Form(dict):
    """A linear form ``{coordinate: coefficient}`` of the current vector; ``+`` adds forms (and
    the number 0, a padding), so an operation's own exact sums run on forms unchanged."""

    def __add__(self, other: Any) -> Form:
        out = Form(self)
        if isinstance(other, dict):
            for c, k in other.items():
                out[c] = out.get(c, 0) + k
        elif other != 0:
            raise UnsupportedModelError("a linear form plus a constant")
        return out

    __radd__ = __add__


def grid_gcd(steps: list[Fraction | None]) -> Fraction | None:
    """The coarsest grid containing every grid ``s * Z`` (``None`` if a step is unknown)."""
    if not steps or any(s is None for s in steps):
        return None
    den = math.lcm(*(s.denominator for s in steps if s is not None))
    return Fraction(math.gcd(*(int(s * den) for s in steps if s is not None)), den)


class ChainBuilder:
    """Collects the layers of a chain while the graph runs (``node``: the running node's position,
    ``env``: every node's value, ``last``: each node's last use, for liveness)."""

    def __init__(self, last: dict[str, int]) -> None:
        self.layers: list[Affine | Act] = []
        self.inp: Rounding | None = None
        self.in_features = 0
        self.width = 0
        self.last = last
        self.node = 0
        self.env: dict[str, Any] = {}

    # ------------------------------------------------------------------ values
    @staticmethod
    def rounding(grid: Grid | None, in_step: Fraction | None = None) -> Rounding | None:
        return Rounding(grid.fmt, grid.step, grid.zp, in_step) if grid is not None else None

    def consume(self, v: Any, where: str) -> ChainVal:
        """The value an operation reads (a tensor computed from the network's input)."""
        if not isinstance(v, ChainVal):
            raise UnsupportedModelError(f"{where}: the verifier expected a tensor computed from the input")
        return v

    def input(self, shape: tuple[int, ...], grid: Grid | None) -> ChainVal:
        self.in_features = self.width = int(np.prod(shape))
        self.inp = self.rounding(grid)
        return ChainVal(np.arange(self.width).reshape(shape), grid.step if grid is not None else None)

    def _carried(self) -> list[ChainVal]:
        """The values that nodes after the running one still read (each object once)."""
        seen: dict[int, ChainVal] = {}
        for name, value in self.env.items():
            if self.last.get(name, -1) > self.node:
                for v in _values(value):
                    seen.setdefault(id(v), v)
        return list(seen.values())

    # ------------------------------------------------------------------ layers
    def _emit(
        self, head: Affine, out: Grid | None, shape: tuple[int, ...], in_step: Fraction | None = None
    ) -> ChainVal:
        """Append the affine layer ``head`` (rows over the current vector) followed by copies of
        the carried coordinates; returns the new value (the head's rows, in order)."""
        m = len(head.b)
        carried = self._carried()
        keep = np.unique(np.concatenate([v.flat for v in carried])) if carried else np.zeros(0, np.int64)
        layer = head
        if len(keep):
            copies = sp.csr_matrix(
                (np.ones(len(keep), dtype=np.int64), (np.arange(len(keep)), keep)),
                shape=(len(keep), self.width),
            )
            layer = stack(
                [head, Affine.from_ints(copies, [Fraction(1)] * len(keep), [Fraction(0)] * len(keep))]
            )
            position = np.zeros(self.width, dtype=np.int64)
            position[keep] = m + np.arange(len(keep))
            for v in carried:
                v.index = position[v.index]
        self.check_entries(layer.nnz, "a layer")
        layer.out = self.rounding(out, in_step)
        if layer.out is not None and len(keep):
            layer.rounded = np.arange(len(layer.b)) < m
        self.layers.append(layer)
        self.width = len(layer.b)
        return ChainVal(np.arange(m).reshape(shape), out.step if out is not None else None)

    def _scatter(self, x: ChainVal, matrix: np.ndarray | sp.spmatrix) -> np.ndarray | sp.csr_matrix:
        """A matrix over ``x``'s elements as a matrix over the current vector's coordinates."""
        flat = x.flat
        if (
            not sp.issparse(matrix)
            and len(flat) == self.width
            and bool((flat == np.arange(self.width)).all())
        ):
            return matrix
        coo = sp.coo_matrix(matrix)
        return sp.csr_matrix((coo.data, (coo.row, flat[coo.col])), shape=(matrix.shape[0], self.width))

    def linear(
        self,
        x: ChainVal,
        matrix: np.ndarray | sp.spmatrix,
        row_scale: list[Fraction],
        bias: list[Fraction],
        out: Grid | None,
        shape: tuple[int, ...],
    ) -> ChainVal:
        """``y = diag(row_scale) D x + b`` over ``x``'s elements: ``D`` (dense or sparse) holds
        exact doubles (integer codes times the row scales, or float weights)."""
        D = self._scatter(x, matrix)
        data: Any = D.data if sp.issparse(D) else D
        if bool((data == np.round(data)).all()):  # integer codes or 0/1 moves, times the row scales
            head = Affine.from_ints(D, list(row_scale), list(bias))
        else:  # float weights at their exact binary values
            if any(s != 1 for s in row_scale):
                raise UnsupportedModelError("a layer of float weights takes no row scales")
            head = Affine.from_floats(D, list(bias))
        return self._emit(head, out, shape)

    @staticmethod
    def check_entries(count: int, where: str) -> None:
        """Refuse a layer of more stored weights than the verifier's limit, before building it."""
        if count > MAX_ENTRIES:
            raise UnsupportedModelError(
                f"{where}: a layer of {count} weights is beyond the verifier's limit {MAX_ENTRIES}; "
                "verify a network with smaller inputs or fewer channels"
            )

    def rows(
        self,
        entries: tuple[np.ndarray, np.ndarray, np.ndarray],
        bias: list[Fraction],
        out: Grid | None,
        shape: tuple[int, ...],
        in_step: Fraction | None = None,
    ) -> ChainVal:
        """A layer of exact rows given as arrays ``(row, coordinate, coefficient)`` (ints or
        Fractions; repeated entries add up) plus ``bias``."""
        ints, scale = sparse_rows(*entries, (len(bias), self.width))
        dense = len(bias) * self.width <= DENSE_ENTRIES // 10
        head = Affine.from_ints(ints.toarray() if dense else ints, scale, list(bias))
        return self._emit(head, out, shape, in_step)

    def _listed(
        self, entries: Entries, bias: list[Fraction], out: Grid | None, shape: tuple[int, ...]
    ) -> ChainVal:
        """:meth:`rows` from a list of ``(row, coordinate, coefficient)`` triples."""
        row, col, coef = (list(t) for t in zip(*entries, strict=True)) if entries else ([], [], [])
        array = np.empty(len(coef), dtype=object)
        array[:] = coef
        return self.rows(
            (np.array(row, dtype=np.int64), np.array(col, dtype=np.int64), array), bias, out, shape
        )

    @staticmethod
    def forms(x: ChainVal) -> np.ndarray:
        """``x`` as an object array of linear forms (one coordinate each)."""
        out = np.empty(x.shape, dtype=object)
        out.reshape(-1)[:] = [Form({int(c): 1}) for c in x.flat.tolist()]
        return out

    def averages(self, sums: np.ndarray, counts: np.ndarray, out: Grid | None) -> ChainVal:
        """``sums / counts`` elementwise (linear forms over whole divisors), rounded to ``out``."""
        entries = [
            (r, c, Fraction(k, int(n)))
            for r, (form, n) in enumerate(zip(sums.reshape(-1), counts.reshape(-1), strict=True))
            for c, k in form.items()
        ]
        return self._listed(entries, [Fraction(0)] * sums.size, out, tuple(sums.shape))

    def act(self, act: A.Activation, out: Grid | None, x: ChainVal, where: str) -> ChainVal:
        """An elementwise activation on ``x`` (a copy of ``x`` first when a carried value shares
        its coordinates), then ``out``'s rounding of those coordinates."""
        try:
            supported_activation(act)
        except QuantizationError as exc:
            raise UnsupportedModelError(f"{where}: {exc}") from None
        coords = np.unique(x.flat)
        if any(np.isin(v.flat, coords).any() for v in self._carried()):
            x = self.copy(x)
            coords = np.unique(x.flat)
        if act.name == "identity" and out is None:
            return x
        mask = np.zeros(self.width, dtype=bool)
        mask[coords] = True
        full = bool(mask.all())
        in_step = x.step if x.step is not None and keeps_grid(act, x.step) else None
        rounding = self.rounding(out, in_step)
        self.layers.append(
            Act(
                act,
                rounding,
                None if full else mask,
                None if full or rounding is None else mask,
            )
        )
        return ChainVal(x.index, out.step if out is not None else in_step)

    def copy(self, x: ChainVal, out: Grid | None = None, in_step: Fraction | None = None) -> ChainVal:
        """``x`` in new coordinates (rounded to ``out`` when given)."""
        n = len(x.flat)
        entries = (np.arange(n), x.flat, np.ones(n, dtype=np.int64))
        return self.rows(entries, [Fraction(0)] * n, out, x.shape, in_step)

    def move(self, x: ChainVal, index: torch.Tensor) -> ChainVal:
        """A data movement by its per-sample index map (flat element indices of ``x``): no layer."""
        return ChainVal(x.flat[index.numpy()], x.step)

    def combine(
        self,
        terms: list[tuple[ChainVal, np.ndarray]],
        offset: np.ndarray,
        out: Grid | None,
        where: str,
    ) -> ChainVal:
        """``sum_t coef_t * x_t + offset`` elementwise with broadcasting (exact rational ``coef``
        and ``offset`` arrays of Fractions), rounded to ``out`` when set."""
        shapes = [v.shape for v, _ in terms] + [np.shape(c) for _, c in terms] + [np.shape(offset)]
        try:
            shape = tuple(np.broadcast_shapes(*shapes))
        except ValueError:
            raise UnsupportedModelError(f"{where}: operands of shapes {shapes} do not broadcast") from None
        n = int(np.prod(shape))
        rows, cols, coefs = [], [], []
        for v, coef in terms:
            cf = np.broadcast_to(np.asarray(coef, dtype=object), shape).reshape(-1)
            scalar = np.asarray(coef, dtype=object)
            if scalar.ndim == 0 and Fraction(scalar.item()).denominator == 1:
                cf = np.full(
                    n, int(Fraction(scalar.item())), dtype=np.int64
                )  # the common case: whole numbers
            rows.append(np.arange(n))
            cols.append(np.broadcast_to(v.index, shape).reshape(-1))
            coefs.append(cf)
        coef_all = (
            np.concatenate(coefs)
            if all(c.dtype.kind == "i" for c in coefs)
            else np.concatenate([c.astype(object) for c in coefs])
        )
        entries = (np.concatenate(rows), np.concatenate(cols), coef_all)
        bias = [Fraction(b) for b in np.broadcast_to(np.asarray(offset, dtype=object), shape).reshape(-1)]
        whole = all(Fraction(k).denominator == 1 for _, c in terms for k in np.asarray(c).reshape(-1))
        steps = [v.step for v, _ in terms]
        step = grid_gcd(steps) if whole else None
        if step is not None and any((b / step).denominator != 1 for b in bias):
            step = None
        return self.rows(entries, bias, out, shape, step) if n else ChainVal(np.zeros(shape, np.int64))

    def cat(self, parts: list[ChainVal], dim: int, stack_: bool, out: Grid | None) -> ChainVal:
        """``torch.cat``/``torch.stack`` (``dim`` counts the batch dimension): the coordinates
        joined, then each rounded to ``out`` when set."""
        idx = [torch.from_numpy(p.index).unsqueeze(0) for p in parts]
        joined = (torch.stack(idx, dim) if stack_ else torch.cat(idx, dim))[0].numpy()
        value = ChainVal(joined, grid_gcd([p.step for p in parts]))
        if out is None:
            return value
        return self.copy(value, out, value.step)

    def maximum(self, x: ChainVal, windows: list[list[int]], shape: tuple[int, ...]) -> ChainVal:
        """``y_o = max(x[w] for w in windows[o])`` (flat element indices of ``x``), exactly, by
        ``max(a, b) = a + relu(b - a)`` level by level; the result stays on ``x``'s grid."""
        one = Fraction(1)
        groups = [[[(int(x.flat[w]), one)] for w in window] for window in windows]  # linear forms
        value = x
        while any(len(g) > 1 for g in groups):
            entries: Entries = []
            nxt, relu_rows = [], []
            row = 0
            for g in groups:
                level = []
                for a in range(0, len(g) - 1, 2):  # a, then b - a (through a ReLU below)
                    entries += [(row, c, k) for c, k in g[a]]
                    entries += [(row + 1, c, k) for c, k in g[a + 1]] + [(row + 1, c, -k) for c, k in g[a]]
                    level.append([row, row + 1])
                    relu_rows.append(row + 1)
                    row += 2
                if len(g) % 2:
                    entries += [(row, c, k) for c, k in g[-1]]
                    level.append([row])
                    row += 1
                nxt.append(level)
            value = self._listed(entries, [Fraction(0)] * row, None, (row,))
            mask = np.zeros(self.width, dtype=bool)
            mask[value.flat[relu_rows]] = True
            self.layers.append(Act(RELU, None, mask, None))
            groups = [[[(int(value.flat[r]), one) for r in pair] for pair in level] for level in nxt]
        entries = [(o, c, k) for o, g in enumerate(groups) for c, k in g[0]]
        result = self._listed(entries, [Fraction(0)] * len(groups), None, shape)
        return ChainVal(result.index, x.step)

    def output(self, v: Any) -> None:
        """End the chain on the network's output (a selection layer unless it is the vector)."""
        if not isinstance(v, ChainVal):
            raise UnsupportedModelError("the verifier reads networks with one tensor output")
        if len(v.flat) != self.width or not bool((v.flat == np.arange(self.width)).all()):
            self.node = max(self.last.values(), default=0)  # nothing is carried past the output
            self.copy(v)

    def chain(self) -> Chain:
        return Chain(self.layers, self.in_features, self.inp)


def read_chain(qm: QuantizedModel, shape: tuple[int, ...]) -> Chain:
    """The exact chain of a quantized graph for inputs of per-sample ``shape``."""
    cb = ChainBuilder(qm._uses())
    names = [n.name for n in qm.nodes]
    position = iter(range(len(names)))

    def run(op: Any, a: tuple, k: dict, io: Any) -> Any:
        cb.node = next(position)
        return op.chain(cb, a, k, io)

    def keep(node: Any, value: Any) -> None:
        cb.env[node.name] = value

    out = qm.run((ChainVal(np.arange(int(np.prod(shape))).reshape(shape)),), run, keep)
    cb.output(out)
    return cb.chain()


def as_graph(model: nn.Module, what: str) -> QuantizedModel:
    """The graph of a model: a quantized model as it is, a float model with every edge real."""
    from ..qconfig import QConfig
    from ..quantize import quantize

    if isinstance(model, QuantizedModel):
        return model
    try:
        return quantize(model, QConfig())
    except QuantizationError as exc:
        raise UnsupportedModelError(f"the verifier cannot read {what}: {exc}") from exc
