"""The quantized graph: one explicit dataflow that every executor interprets.

``tq.quantize`` traces a model once (:mod:`torchqv.tracing`) into a :class:`QuantizedModel`: an
ordinary ``nn.Module`` (ordinary parameters, buffers and state dict; the float model's module
names are kept) plus a list of :class:`QNode`.  Each node is one call of an
:class:`~torchqv.ops.base.Operation`; its arguments refer to other nodes (``Ref``) and its
output has a static kind: codes on the grid of a quantizer (``OnGrid``), a real tensor (only
where the configuration asks for it), or a Python value computed from shapes.

The executors (training/float, exact simulation, integer reference, ONNX emission, the verifier's
chain construction, CEG4N's evaluator) all walk these nodes with :meth:`QuantizedModel.run`; none
keeps its own list of operations.  Operations hold no pointer to each other's quantizers: the
graph hands each call the quantizers of its inputs (``NodeIO``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .fake_quant import FakeQuantize
from .grid import QTensor
from .ops.base import REAL, Kind, NodeIO, OnGrid, Operation, Ref, Several, refs_in, resolve
from .state_dict import check_state_dict, formats_record

Executor = Callable[[Operation, tuple, dict, NodeIO], Any]


@dataclass
class QNode:
    """One call in the graph.  ``path``: where a stateful operation lives in the model's module
    tree; ``op``: a stateless operation held by the node itself (exactly one of the two)."""

    name: str
    args: tuple
    kwargs: dict
    kind: Kind
    path: str | None = None
    op: Operation | None = None
    is_input: bool = False
    refs: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        self.refs = tuple(r.node for r in refs_in((self.args, self.kwargs)))


class QuantizedModel(nn.Module):
    """A model quantized by :func:`torchqv.quantize`: the float model's modules (affine layers
    and activations replaced by their quantized operations) and the graph that runs them.

    ``train()`` mode: fake quantization (QAT); ``eval()`` mode: the exact simulation, whose
    outputs are float64 tensors equal to :func:`torchqv.reference_forward` bit for bit.
    """

    def __init__(self, nodes: list[QNode], output: Any, source: str = "") -> None:
        super().__init__()
        self.nodes = nodes
        self.output_template = output
        self.source = source  # the float model's class name
        self.folded_batchnorm: list[str] = []  # BatchNorm modules folded into the layer before them
        self.source_children: list[str] = []  # the float model's children, in order
        self._float = False
        self._last_use: dict[str, int] | None = None
        self._index: dict[str, QNode] | None = None

    # the float model's children, in order: a quantized nn.Sequential indexes, iterates and
    # counts like the Sequential it came from (the graph's own operations are not among them)
    def __getitem__(self, index: int) -> nn.Module:
        if not isinstance(index, int) or not -len(self) <= index < len(self):
            raise IndexError(f"index {index!r} out of range for the {len(self)} modules of {self.source}")
        return self._modules[self.source_children[index]]  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.source_children)

    def __iter__(self) -> Iterator[nn.Module]:
        return (self._modules[name] for name in self.source_children)  # type: ignore[misc]

    # ------------------------------------------------------------------ graph access
    def op(self, node: QNode) -> Operation:
        if node.op is not None:
            return node.op
        assert node.path is not None  # an operation that is not stored on the node is a submodule
        return self.get_submodule(node.path)  # type: ignore[return-value]  # the submodule is an Operation

    def node(self, name: str) -> QNode:
        if self._index is None:
            self._index = {n.name: n for n in self.nodes}
        return self._index[name]

    def operations(self) -> Iterator[tuple[QNode, Operation]]:
        for n in self.nodes:
            yield n, self.op(n)

    @property
    def input_quant(self) -> FakeQuantize | None:
        """The quantizer of the (first) network input (``None``: the input stays real)."""
        first = next(n for n in self.nodes if n.is_input)
        return self.op(first).out_quant  # type: ignore[attr-defined]

    def quantizer_of(self, kind: Kind) -> FakeQuantize | None:
        """The quantizer that defines the grid of a value of this kind (``None``: real)."""
        if not isinstance(kind, OnGrid):
            return None
        return self.op(self.node(kind.source)).out_quant  # type: ignore[attr-defined]

    def io(self, node: QNode) -> NodeIO:
        quants = (self.quantizer_of(self.node(ref).kind) for ref in node.refs)
        return NodeIO(node.name, tuple(quants))

    def _uses(self) -> dict[str, int]:
        if self._last_use is None:
            last: dict[str, int] = {}
            for i, n in enumerate(self.nodes):
                for r in n.refs:
                    last[r] = i
            for ref in refs_in(self.output_template):
                last[ref.node] = len(self.nodes)
            self._last_use = last
        return self._last_use

    # ------------------------------------------------------------------ interpretation
    def run(
        self,
        inputs: tuple,
        executor: Executor,
        keep: Callable[[QNode, Any], None] | None = None,
        stop_after: str | None = None,
    ) -> Any:
        """Interpret the graph: ``executor(op, args, kwargs, io)`` for every node in order.

        ``keep(node, value)`` sees every node's value; ``stop_after`` ends the run after that
        node (returning its value).  Values are freed after their last use.
        """
        n_inputs = sum(n.is_input for n in self.nodes)
        if len(inputs) != n_inputs:
            raise TypeError(f"the quantized model takes {n_inputs} input(s), got {len(inputs)}")
        env: dict[str, Any] = {}
        last = self._uses()
        feed = iter(inputs)
        for i, node in enumerate(self.nodes):
            if node.is_input:
                args, kwargs = (next(feed),), {}
            else:
                args = resolve(node.args, env.__getitem__)
                kwargs = resolve(node.kwargs, env.__getitem__)
            value = executor(self.op(node), args, kwargs, self.io(node))
            if keep is not None:
                keep(node, value)
            if node.name == stop_after:
                return value
            env[node.name] = value
            for r in node.refs:
                if last.get(r) == i:
                    del env[r]
        return resolve(self.output_template, env.__getitem__)

    def forward(self, *inputs: Any) -> Any:
        if self.training or self._float:
            return self.run(inputs, lambda op, a, k, io: op.qat(a, k, io))
        out = self.run(inputs, lambda op, a, k, io: op.exact(a, k, io))
        return _map_values(out, lambda v: v.values() if isinstance(v, QTensor) else v)

    # ------------------------------------------------------------------ state dict
    def get_extra_state(self) -> torch.Tensor:
        """The format of every quantizer (:mod:`torchqv.state_dict`): loading checks it."""
        return formats_record(self)

    def set_extra_state(self, state: Any) -> None:
        """Checked with the rest of the state dict before anything loads (``_load_from_state_dict``)."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        check_state_dict(self, state_dict, prefix)  # before this module or any child copies a value
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ presentation
    def summary(self) -> str:
        """A Markdown table: every node, its operation, its inputs and its output format."""
        rows = ["| node | operation | inputs | output | steps |", "|---|---|---|---|---|"]
        for node, op in self.operations():
            if node.kind.__class__.__name__ == "PyValue":
                continue
            q = self.quantizer_of(node.kind)
            if isinstance(node.kind, OnGrid):
                fmt = q.fmt.describe() if q is not None else "?"
                steps = _steps_text(q) if q is not None else "-"
            elif isinstance(node.kind, Several):
                fmt, steps = "tuple", "-"
            else:
                fmt, steps = "real", "-"
            if node.kind == OnGrid(node.name) or not isinstance(node.kind, OnGrid):
                where = fmt
            else:
                where = f"{fmt} (grid of {node.kind.source})"
            wq = getattr(op, "weight_quant", None)
            wtext = f"; weights {wq.fmt.describe()}" if wq is not None else ""
            ins = ", ".join(node.refs) if not node.is_input else "-"
            rows.append(f"| {node.name} | {op.describe()}{wtext} | {ins} | {where} | {steps} |")
        return "\n".join(rows)

    def extra_repr(self) -> str:
        real = [n.name for n in self.nodes if n.kind.__class__.__name__ == "Real"]
        text = f"{len(self.nodes)} nodes"
        if real:
            shown = ", ".join(real[:6]) + (", ..." if len(real) > 6 else "")
            text += f"; real-valued (unrounded, as configured): {shown}"
        return text


def _steps_text(q: FakeQuantize) -> str:
    if not q.calibrated:
        return "not calibrated"
    steps = q.steps()
    return str(steps[0]) if len(steps) == 1 else f"{len(steps)} per-channel"


def _map_values(out: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(out, tuple):
        return tuple(_map_values(o, fn) for o in out)
    if isinstance(out, list):
        return [_map_values(o, fn) for o in out]
    if isinstance(out, dict):
        return {k: _map_values(v, fn) for k, v in out.items()}
    return fn(out)


def float_twin(qmodel: nn.Module) -> QuantizedModel:
    """The float network f behind a quantized f': a copy of the graph with every quantizer removed
    (the same float weights, exact activations, every edge real; batch norm stays folded).  Its
    eval mode computes f in float64, and the verifier reads it as f."""
    if not isinstance(qmodel, QuantizedModel):
        raise ConfigError(
            f"float_twin expects a model returned by torchqv.quantize, got {type(qmodel).__name__}"
        )
    twin = copy.deepcopy(qmodel)
    for node, op in twin.operations():
        if getattr(op, "frozen", False):
            raise ConfigError(f"{node.name} is frozen (integer weights only): its float twin is lost")
        for attr in ("weight_quant", "out_quant"):
            if getattr(op, attr, None) is not None:
                setattr(op, attr, None)
        node.kind = _real_kind(node.kind)
    return twin.eval()


def training_copy(model: nn.Module, where: str) -> nn.Module:
    """A copy of ``model`` in training mode: for a quantized model, fake quantization with the
    straight-through estimator (a differentiable surrogate of the exact simulation).  A frozen
    model holds integer weights only and has none: an error names ``where`` and the fix."""
    frozen = [n for n, op in model.named_modules() if getattr(op, "frozen", False)]
    if frozen:
        names = ", ".join(frozen[:3]) + (", ..." if len(frozen) > 3 else "")
        raise ConfigError(
            f"{where}: the model is frozen (tq.freeze: integer weights only, in layer(s) {names}), and "
            "this needs its training mode; pass the model before tq.freeze (freezing does not change "
            "its eval-mode outputs)"
        )
    return copy.deepcopy(model).train()


def _real_kind(kind: Kind) -> Kind:
    if isinstance(kind, OnGrid):
        return REAL
    if isinstance(kind, Several):
        return Several(_real_kind(kind.item))
    return kind


def quantized_models(model: nn.Module) -> list[QuantizedModel]:
    return [m for m in model.modules() if isinstance(m, QuantizedModel)]


@contextmanager
def float_mode(model: nn.Module, observe: bool = False) -> Iterator[nn.Module]:
    """Run the float network inside (every quantizer off, activation observers recording when
    ``observe``); every flag is restored afterwards."""
    graphs = quantized_models(model)
    fqs = [m for m in model.modules() if isinstance(m, FakeQuantize)]
    was_training = model.training
    model.eval()
    for g in graphs:
        g._float = True
    for q in fqs:
        q.observer_enabled = observe and q.observer is not None and not q.is_weight
        q.fake_quant_enabled = False
    try:
        yield model
    finally:
        for g in graphs:
            g._float = False
        for q in fqs:
            q.observer_enabled = False
            q.fake_quant_enabled = True
        model.train(was_training)


__all__ = ["QNode", "QuantizedModel", "Ref", "float_mode", "float_twin", "quantized_models", "training_copy"]
