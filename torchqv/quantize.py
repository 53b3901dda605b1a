"""The entry point: ``quantize(model, config)`` builds the quantized graph; ``calibrate`` sets steps.

In the manner of torchao's ``quantize_(model, config)``: one call with a plain dataclass config
returns a quantized copy of an ordinary ``nn.Module`` (a :class:`~torchqv.graph.QuantizedModel`
that keeps the model's module names).  The model is traced once (:mod:`torchqv.tracing`): every
call becomes an operation of the graph, batch norm is folded, and anything that cannot be
quantized exactly is reported up front, every offending call at once.  The semantics is paper
001 Eq. 7: one rounding after every operation that computes new values, none in between.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sized
from typing import Any

import torch
from torch import nn

from .errors import CalibrationError, ConfigError, DataError
from .fake_quant import FakeQuantize
from .graph import QuantizedModel, float_mode, quantized_models
from .ops.affine import QuantAffine
from .progress import progress_bar
from .qconfig import QConfig
from .tracing import build_graph, check_overrides, make_plan


def quantize(
    model: nn.Module,
    config: QConfig | Mapping[str, Any],
    overrides: Mapping[str, QConfig | Mapping[str, Any] | None] | None = None,
) -> QuantizedModel:
    """A quantized copy of ``model`` (see the module docstring).

    ``overrides`` maps fnmatch patterns of node names (module paths such as ``"fc2"`` or
    ``"features.*"``; function calls are named by their module's path and the function,
    e.g. ``"layer1.0.add"``) to a ``QConfig``, or ``None`` to keep those nodes real-valued (float).
    A pattern that matches no node is an error.  ``tq.summary(qm)`` lists the node names.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"quantize expects an nn.Module, got {type(model).__name__}")
    if quantized_models(model) or any(isinstance(m, FakeQuantize) for m in model.modules()):
        raise ConfigError(
            f"quantize: model ({type(model).__name__}) is already quantized; pass the float model "
            "(tq.float_twin(qm) gives it back)"
        )
    plan = make_plan(config, overrides)
    qm = build_graph(model, plan)
    check_overrides(plan, qm)
    return qm


def quantizers(model: nn.Module) -> list[FakeQuantize]:
    return [m for m in model.modules() if isinstance(m, FakeQuantize)]


def batch_input(batch: Any, where: str) -> torch.Tensor:
    """The input of one batch: a tensor, or the first item of an ``(x, y, ...)`` tuple; anything
    else is a ``DataError`` that starts with ``where`` (e.g. ``"calibrate: batch 3"``)."""
    x = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    if not isinstance(x, torch.Tensor):
        raise DataError(
            f"{where} is a {type(x).__name__}, not a tensor (batches are tensors or (x, y) tuples)"
        )
    return x


def batch_inputs(batches: Iterable[Any]) -> Iterator[torch.Tensor]:
    """The input tensor of each batch (tensors or ``(x, y, ...)`` tuples)."""
    if isinstance(batches, torch.Tensor) or not isinstance(batches, Iterable):
        raise ConfigError(
            f"batches must be an iterable of batches (tensors or (x, y) tuples), e.g. a DataLoader or "
            f"[x], got {type(batches).__name__}"
        )
    for batch in batches:
        yield batch[0] if isinstance(batch, (list, tuple)) else batch


def calibrate(model: nn.Module, batches: Iterable[Any], progress: bool | None = None) -> nn.Module:
    """Choose every observed step: activations from ``batches`` (tensors or ``(x, y)`` pairs) run
    through the float model, weights from the weights.  Observers are off afterwards.
    ``progress``: a progress bar (``None``: only for more than a few batches and when stderr is a
    terminal; :mod:`torchqv.progress`)."""
    _quantized(model, "calibrate")
    for m in model.modules():  # per-group weight steps: group_size must divide each reduction (up front)
        if isinstance(m, QuantAffine) and m.weight_quant is not None and m.weight_quant.fmt.group_size:
            shape = m.weight_int.shape if m.frozen else m.weight.shape
            groups = m.weight_quant.fmt.group_count(math.prod(shape[1:]), f"{m.qname}.weight")
            if m.weight_quant.step_num.numel() != shape[0] * groups:
                raise CalibrationError(
                    f"{m.qname}.weight: {m.weight_quant.step_num.numel()} weight steps, but group_size="
                    f"{m.weight_quant.fmt.group_size} needs {shape[0] * groups}; quantize the model again"
                )
    with float_mode(model, observe=True), torch.no_grad():
        seen = 0
        total = len(batches) if isinstance(batches, Sized) and not isinstance(batches, torch.Tensor) else None
        for x in progress_bar(batch_inputs(batches), "calibrate", total, progress, leave=False):
            model(x)
            seen += 1
        for q in quantizers(model):
            if q.observer is not None and not q.is_weight:
                if seen == 0:
                    raise CalibrationError(f"calibrate got no batches, but {q.qname} needs data")
                q.compute_qparams()
        for m in model.modules():
            if isinstance(m, QuantAffine) and m.weight_quant is not None and not m.frozen:
                m.weight_quant.observe(m.weight)
                m.weight_quant.compute_qparams()
    return model


def enable_observers(model: nn.Module, enabled: bool = True) -> None:
    """Let observers keep updating steps during QAT (``False`` freezes them)."""
    for q in quantizers(model):
        q.observer_enabled = enabled and q.observer is not None


def freeze(model: nn.Module) -> nn.Module:
    """Convert in place to integer storage: integer weights (int8/16/32) and integer biases on
    the accumulator grid, next to their exact steps.  A frozen model runs in eval mode only."""
    for qm in _quantized(model, "freeze"):
        for node, op in qm.operations():
            if isinstance(op, QuantAffine):
                op.freeze_(qm.io(node).in_quants[0])
    return model


def summary(model: nn.Module) -> str:
    """A Markdown table of every node of the quantized graph: operation, inputs, output format
    and steps (real-valued nodes say so)."""
    return "\n\n".join(g.summary() for g in _quantized(model, "summary"))


def _quantized(model: Any, call: str) -> list[QuantizedModel]:
    """The quantized graphs in ``model``; none is an error naming ``call``."""
    graphs = quantized_models(model) if isinstance(model, nn.Module) else []
    if not graphs:
        raise ConfigError(
            f"{call} expects a model returned by torchqv.quantize (or one that holds one), got "
            f"{type(model).__name__}; quantize it first: qm = tq.quantize(model, config)"
        )
    return graphs


__all__ = [
    "QConfig",
    "batch_inputs",
    "calibrate",
    "enable_observers",
    "float_mode",
    "freeze",
    "quantize",
    "quantizers",
    "summary",
]
