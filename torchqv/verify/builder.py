"""Reading a quantized graph into the verifier's exact chain.

The verifier works on chains of exact layers (:mod:`torchqv.verify.network`).  This module is the
graph's executor for it: :func:`read_chain` interprets a :class:`~torchqv.graph.QuantizedModel`
node by node, every operation contributing its layers through its ``chain`` method and the
:class:`ChainBuilder` below (so the verifier keeps no list of operations of its own).  The float
network ``f`` is read the same way, from its graph with every edge real
(``quantize(f, QConfig())``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import activations as A
from ..errors import UnsupportedModelError, VerificationInputError
from ..formats import QuantizationError
from ..graph import QuantizedModel
from ..grid import Grid
from .network import Act, Affine, Chain, Rounding, mark_input_grids, supported_activation

MAX_DENSE = 4_000_000  # entries of a layer expanded into a dense matrix


@dataclass
class ChainVal:
    """A value during chain construction: its per-sample shape and the layer that produced it."""

    shape: tuple[int, ...]
    position: int  # number of layers when it was produced

    def size(self, dim: int | None = None) -> Any:
        full = torch.Size((1, *self.shape))
        return full if dim is None else full[dim]

    @property
    def example_shape(self) -> tuple[int, ...]:
        return (1, *self.shape)

    def dim(self) -> int:
        return len(self.shape) + 1


class ChainBuilder:
    """Collects the layers of a chain; every operation reads the latest value only."""

    def __init__(self) -> None:
        self.layers: list[Affine | Act] = []
        self.inp: Rounding | None = None
        self.in_features = 0

    @staticmethod
    def rounding(grid: Grid | None) -> Rounding | None:
        return Rounding(grid.fmt, grid.step, grid.zp) if grid is not None else None

    def consume(self, v: Any, where: str) -> ChainVal:
        """The value an operation reads: it must be the latest one (the network is a chain)."""
        if not isinstance(v, ChainVal) or v.position != len(self.layers):
            raise UnsupportedModelError(
                f"{where}: the verifier handles chains of operations (each reads the previous one's "
                "output); residual adds and other joins are not supported yet"
            )
        return v

    def input(self, shape: tuple[int, ...], grid: Grid | None) -> ChainVal:
        self.in_features = int(np.prod(shape))
        self.inp = self.rounding(grid)
        return ChainVal(shape, 0)

    @staticmethod
    def check_size(inputs: int, outputs: int, where: str) -> None:
        if inputs * outputs > MAX_DENSE:
            raise UnsupportedModelError(
                f"{where}: its dense expansion has {outputs} x {inputs} entries, more than the verifier's "
                f"limit {MAX_DENSE}; verify a network with smaller inputs or fewer channels"
            )

    def dense(
        self,
        matrix: np.ndarray,
        row_scale: list[Fraction],
        bias: list[Fraction],
        out: Grid | None,
        shape: tuple[int, ...],
    ) -> ChainVal:
        """``y = diag(row_scale) D x + b``: ``D`` holds exact doubles (codes or float weights)."""
        self.check_size(matrix.shape[1], matrix.shape[0], "a layer")
        if bool((matrix == np.round(matrix)).all()):  # integer codes or 0/1 moves, times the row scales
            layer = Affine.from_ints(matrix, list(row_scale), list(bias))
        else:  # float weights at their exact binary values
            if any(s != 1 for s in row_scale):
                raise VerificationInputError("a layer of float weights takes no row scales")
            layer = Affine.from_floats(matrix, list(bias))
        layer.out = self.rounding(out)
        self.layers.append(layer)
        return ChainVal(shape, len(self.layers))

    def act(self, act: A.Activation, out: Grid | None, v: ChainVal, where: str) -> ChainVal:
        try:
            supported_activation(act)
        except QuantizationError as exc:
            raise UnsupportedModelError(f"{where}: {exc}") from None
        self.layers.append(Act(act, self.rounding(out)))
        return ChainVal(v.shape, len(self.layers))

    def move(self, v: ChainVal, index: torch.Tensor) -> ChainVal:
        """A data movement by its per-sample index map (the identity adds no layer)."""
        n_in = int(np.prod(v.shape))
        flat = index.reshape(-1)
        if flat.numel() == n_in and bool((flat == torch.arange(n_in)).all()):
            return ChainVal(tuple(index.shape), v.position)
        matrix = np.zeros((flat.numel(), n_in))
        matrix[np.arange(flat.numel()), flat.numpy()] = 1.0
        return self.dense(
            matrix, [Fraction(1)] * flat.numel(), [Fraction(0)] * flat.numel(), None, tuple(index.shape)
        )

    def shift(self, v: ChainVal, offset: np.ndarray, out: Grid | None) -> ChainVal:
        """``x + offset`` (exact per-element constants), rounded when ``out`` is set."""
        n = int(np.prod(v.shape))
        offsets = np.broadcast_to(offset, (1, *v.shape)).reshape(-1)  # constants broadcast over the batch
        return self.dense(np.eye(n), [Fraction(1)] * n, list(offsets), out, v.shape)

    def chain(self) -> Chain:
        mark_input_grids(self.layers, self.inp)
        return Chain(self.layers, self.in_features, self.inp)


def read_chain(qm: QuantizedModel, shape: tuple[int, ...]) -> Chain:
    """The exact chain of a quantized graph for inputs of per-sample ``shape``."""
    cb = ChainBuilder()
    x = ChainVal(tuple(shape), 0)
    out = qm.run((x,), lambda op, a, k, io: op.chain(cb, a, k, io))
    cb.consume(out, "the output")
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
