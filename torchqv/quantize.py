"""The entry point: ``quantize(model, config)`` swaps modules; ``calibrate`` sets the steps.

In the manner of torchao's ``quantize_(model, config)``: one call with a plain dataclass config
returns a quantized copy of an ordinary ``nn.Module``.

1. Every ``nn.Linear``, ``nn.Conv2d`` and activation module is replaced by its quantized
   version (per-module configs through ``overrides``: fnmatch patterns on module names).
2. The model is traced with ``torch.fx``.  Activations applied functionally (``F.relu(x)``,
   ``x.sigmoid()``) are rewritten into ``QuantAct`` modules (the result is then an
   ``fx.GraphModule``), and every quantized module is linked to the quantizer that produced its
   input, so the exact path knows the input grid (paper 001 Eq. 7: one rounding after every
   affine map and every activation, none in between).
3. ``QConfig.input`` gives every quantized module that reads the network input (through
   grid-preserving ops such as Flatten) an input quantizer ``in_quant`` (like torch.ao's
   ``QuantStub``), so module names and ``Sequential`` indices stay as they were.
"""

from __future__ import annotations

import copy
import fnmatch
import operator
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm.auto import tqdm

from . import activations as A
from .fake_quant import FakeQuantize
from .formats import FixedPoint, QuantizationError, checked_fields
from .modules import QuantAct, QuantConv2d, QuantLinear, QuantModule, _QuantAffine
from .observers import ObserverConfig, as_observer_config


@dataclass
class QConfig:
    """What to quantize and how.

    ``weight``: format of the weights (``None``: float weights); ``activation``: format of the
    outputs of affine maps and activations (``None``: weight-only); ``input``: format of the
    network input (``None``: not quantized).  Observers choose steps left as ``None``;
    ``learn_step`` makes steps trainable (LSQ) for QAT.
    """

    weight: FixedPoint | None = None
    activation: FixedPoint | None = None
    input: FixedPoint | None = None
    weight_observer: ObserverConfig | str = "minmax"
    activation_observer: ObserverConfig | str = "minmax"
    learn_step: bool = False

    def __post_init__(self) -> None:
        for name in ("weight", "activation", "input"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                value = FixedPoint.from_dict(dict(value))
                setattr(self, name, value)
            if value is not None and not isinstance(value, FixedPoint):
                raise QuantizationError(f"QConfig.{name} must be a FixedPoint or None, got {value!r}")
        self.weight_observer = as_observer_config(self.weight_observer)
        self.activation_observer = as_observer_config(self.activation_observer)
        if self.weight is not None and self.weight.affine:
            raise QuantizationError(
                "weight formats are symmetric: give zero_point=0 (affine is for activations)"
            )
        for name in ("activation", "input"):
            fmt = getattr(self, name)
            if fmt is not None and fmt.per_channel:
                raise QuantizationError(f"QConfig.{name}: per-channel steps are for weights only")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QConfig:
        return cls(**checked_fields(cls, data))


# Modules and ops that keep values on their input's grid (a link passes through them).
GRID_MODULES = (nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d)
# Modules allowed in a quantized model whose outputs are real numbers (no grid).
FLOAT_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
GRID_FUNCTIONS = {
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.permute,
    torch.transpose,
    F.dropout,
    F.max_pool1d,
    F.max_pool2d,
    operator.getitem,
}
GRID_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "permute", "transpose"}
FUNCTIONAL_LAYERS = {
    F.linear,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.batch_norm,
    F.layer_norm,
    torch.matmul,
    torch.mm,
    torch.addmm,
}
HINTS = {
    "BatchNorm": "fold it into the preceding layer first (torch.nn.utils.fusion.fuse_conv_bn_eval)",
}


@dataclass
class _Plan:
    config: QConfig
    overrides: dict[str, QConfig | None] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    def config_for(self, name: str) -> QConfig:
        cfg = self.config
        for pattern, over in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                self.used.add(pattern)
                cfg = over if over is not None else QConfig()
        return cfg


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (QuantModule, FakeQuantize)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` trace that keeps torchqv's modules as leaves."""
    graph = _Tracer().trace(model)
    return fx.GraphModule(model, graph)


def _swap(model: nn.Module, plan: _Plan) -> nn.Module:
    unsupported = []
    for name, mod in list(model.named_modules()):
        if any(True for _ in mod.children()) or isinstance(mod, (QuantModule, FakeQuantize)):
            continue
        if isinstance(mod, nn.Linear):
            new: nn.Module = QuantLinear(mod, plan.config_for(name), name)
        elif isinstance(mod, nn.Conv2d):
            new = QuantConv2d(mod, plan.config_for(name), name)
        elif (act := A.from_module(mod)) is not None:
            new = QuantAct(act, plan.config_for(name), name)
        elif isinstance(mod, GRID_MODULES + FLOAT_MODULES) or name == "":
            continue  # a custom root without children: its forward is checked by fx below
        else:
            kind = type(mod).__name__
            hint = next((h for k, h in HINTS.items() if k in kind), "unsupported layer type")
            unsupported.append(f"{name or '<model>'} ({kind}: {hint})")
            continue
        if name == "":
            return new
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, new)
    if unsupported:
        raise QuantizationError(
            "torchqv.quantize cannot quantize: "
            + "; ".join(unsupported)
            + ". Supported: Linear, Conv2d, ReLU, LeakyReLU, Hardtanh/ReLU6, Sigmoid, Tanh, ELU, "
            "SiLU, GELU, Mish, Softplus, Identity, Flatten, Dropout, MaxPool, AvgPool."
        )
    return model


def _producer(node: fx.Node, gm: fx.GraphModule) -> fx.Node:
    """Walk back through grid-preserving nodes to the node that produced the values."""
    while True:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), GRID_MODULES):
            node = node.args[0]  # type: ignore[assignment]
        elif node.op == "call_function" and node.target in GRID_FUNCTIONS:
            node = node.args[0]  # type: ignore[assignment]
        elif node.op == "call_method" and node.target in GRID_METHODS:
            node = node.args[0]  # type: ignore[assignment]
        else:
            return node


def _rewrite_functional(gm: fx.GraphModule, plan: _Plan) -> bool:
    """Replace functional activations by QuantAct modules; reject functional layers."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in FUNCTIONAL_LAYERS:
            raise QuantizationError(
                f"node {node.name!r} calls {getattr(node.target, '__name__', node.target)} "
                "functionally; torchqv quantizes layers held as modules (nn.Linear, nn.Conv2d)"
            )
        builder = None
        if node.op == "call_function":
            builder = A.FUNCTIONAL.get(node.target)
        elif node.op == "call_method":
            builder = A.METHODS.get(node.target)
        if builder is None:
            continue
        act = builder(tuple(node.args), dict(node.kwargs))
        if act is None:
            raise QuantizationError(f"node {node.name!r}: unsupported activation variant {node.kwargs}")
        name = f"act_{node.name}"
        gm.add_submodule(name, QuantAct(act, plan.config_for(name), name))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed


def _link(gm: fx.GraphModule, model: nn.Module, config: QConfig) -> None:
    """Link every quantized module to the quantizer of its input's grid."""
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = model.get_submodule(node.target)
        if not isinstance(mod, QuantModule) or not node.args:
            continue
        src = _producer(node.args[0], gm)
        if src.op == "placeholder" and config.input is not None:
            mod.add_input_quantizer(_input_quantizer(config, f"{node.target}.in_quant"))
        elif src.op == "call_module":
            prod = model.get_submodule(src.target)
            if isinstance(prod, QuantModule) and prod.out_quant is not None:
                mod.link_input(prod.out_quant, src.target)


def _input_quantizer(config: QConfig, name: str) -> FakeQuantize:
    return FakeQuantize(config.input, 1, 0, config.activation_observer, config.learn_step, name)


def quantize(
    model: nn.Module,
    config: QConfig,
    overrides: Mapping[str, QConfig | None] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """A quantized copy of ``model`` (module swap; see the module docstring).

    ``overrides`` maps fnmatch patterns of module names (``"fc2"``, ``"features.*"``) to a
    ``QConfig``, or ``None`` to keep that module in float (high precision).  A pattern that
    matches no module is an error.
    """
    if not isinstance(model, nn.Module):
        raise QuantizationError(f"quantize expects an nn.Module, got {type(model).__name__}")
    if isinstance(config, Mapping):
        config = QConfig.from_dict(config)
    if not isinstance(config, QConfig):
        raise QuantizationError(f"config must be a torchqv.QConfig, got {type(config).__name__}")
    plan = _Plan(
        config,
        {k: (QConfig.from_dict(v) if isinstance(v, Mapping) else v) for k, v in (overrides or {}).items()},
    )
    names = [n for n, _ in model.named_modules() if n]
    missing = [p for p in plan.overrides if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if missing:
        raise QuantizationError(f"override pattern(s) {missing} match no module; module names are: {names}")
    qmodel = _swap(model if inplace else copy.deepcopy(model), plan)
    if isinstance(qmodel, QuantModule):
        if config.input is not None:
            qmodel.add_input_quantizer(_input_quantizer(config, "in_quant"))
        return qmodel
    try:
        gm = trace(qmodel)
    except Exception as exc:
        if config.input is not None:
            raise QuantizationError(
                f"QConfig.input needs a torch.fx-traceable model to find the layers that read the "
                f"input, but tracing {type(model).__name__} failed: {exc}"
            ) from exc
        warnings.warn(
            f"torch.fx could not trace {type(model).__name__} ({exc}); modules were swapped, but "
            "functional activations are not quantized and layer inputs are treated as the real "
            "numbers they hold (exact for dyadic steps)",
            stacklevel=2,
        )
        return qmodel
    if _rewrite_functional(gm, plan):
        qmodel = gm
    _link(gm, qmodel, config)
    return qmodel


def quantizers(model: nn.Module) -> list[FakeQuantize]:
    return [m for m in model.modules() if isinstance(m, FakeQuantize)]


@contextmanager
def float_mode(model: nn.Module, observe: bool = False) -> Iterator[nn.Module]:
    """Run the float network inside (eval mode, every quantizer off); with ``observe`` the
    activation observers record what they see.  Restores every flag afterwards."""
    qmods = [m for m in model.modules() if isinstance(m, QuantModule)]
    fqs = quantizers(model)
    was_training = model.training
    model.eval()
    for m in qmods:
        m._calibrating = True
    for q in fqs:
        q.observer_enabled = observe and q.observer is not None and not q.is_weight
        q.fake_quant_enabled = False
    try:
        yield model
    finally:
        for m in qmods:
            m._calibrating = False
        for q in fqs:
            q.observer_enabled = False
            q.fake_quant_enabled = True
        model.train(was_training)


def batch_inputs(batches: Iterable[Any]) -> Iterator[torch.Tensor]:
    """The input tensor of each batch (tensors or ``(x, y, ...)`` tuples)."""
    for batch in batches:
        yield batch[0] if isinstance(batch, (list, tuple)) else batch


def calibrate(model: nn.Module, batches: Iterable[Any], progress: bool = True) -> nn.Module:
    """Choose every observed step: activations from ``batches`` (tensors or ``(x, y)`` pairs) run
    through the float model, weights from the weights.  Observers are off afterwards."""
    with float_mode(model, observe=True), torch.no_grad():
        seen = 0
        for x in tqdm(batch_inputs(batches), desc="calibrate", disable=not progress, leave=False):
            model(x)
            seen += 1
        for q in quantizers(model):
            if q.observer is not None and not q.is_weight:
                if seen == 0:
                    raise QuantizationError(f"calibrate got no batches, but {q.qname} needs data")
                q.compute_qparams()
        for m in model.modules():
            if isinstance(m, _QuantAffine) and m.weight_quant is not None and not m.frozen:
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
    for m in model.modules():
        if isinstance(m, _QuantAffine):
            m.freeze_()
    return model
