"""From a float model to the quantized graph: trace once, fold, build one operation per call.

1. ``torch.fx`` traces the model once (modules with a registered operation stay leaves).
2. BatchNorm that follows a Conv/Linear is folded (:mod:`torchqv.batchnorm`).
3. Every call gets a qualified name (a module's path; a module called again gets ``path_1``; a
   function or method gets its containing module's path plus its own name: ``layer1.0.add``),
   the ``QConfig`` that applies there (fnmatch overrides on those names), and its operation
   from the registry (:mod:`torchqv.ops.base`).  Kinds of values (on a grid, real, Python) are
   propagated along the way, so every operation knows at build time what it will receive.
4. Every call that cannot be quantized is collected; one error lists them all with the fix.
5. The float model's modules move into a :class:`~torchqv.graph.QuantizedModel`, stateful
   operations take the place of the modules they quantize (or a fresh path next to them).
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from . import ops  # noqa: F401  (registers every operation)
from .batchnorm import fold_in_graph
from .errors import ConfigError, UnsupportedModelError
from .graph import QNode, QuantizedModel
from .ops.base import (
    Call,
    Kind,
    Operation,
    Ref,
    Unknown,
    Unsupported,
    for_function,
    for_method,
    for_module,
    refs_in,
)
from .ops.structure import Constant, Input, PythonCall, is_python_call
from .qconfig import QConfig

WEIGHTED = "a layer with weights called as a function: hold the weights in nn.Linear / nn.Conv2d"
HINTS = {
    "linear": WEIGHTED,
    "conv1d": WEIGHTED,
    "conv2d": WEIGHTED,
    "matmul": WEIGHTED,
    "mm": WEIGHTED,
    "bmm": WEIGHTED,
    "addmm": WEIGHTED,
    "softmax": "softmax's exact value is transcendental and it does not change the argmax: apply it to the "
    "quantized model's output, outside the model",
    "log_softmax": "apply log_softmax to the quantized model's output, outside the model",
    "batch_norm": "use nn.BatchNorm1d/2d modules (folded into the layer before them)",
}


UNKNOWN = Unknown()


@dataclass
class Plan:
    """The configuration of every site: the global config and fnmatch overrides by name."""

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
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        return for_module(m) is not None or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.Graph:
    """The fx graph of ``model`` (registered modules are leaves)."""
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # the user's forward() may raise anything under tracing: named, re-raised
        raise UnsupportedModelError(
            f"torchqv.quantize traces the model with torch.fx, and tracing {type(model).__name__} failed: "
            f"{type(exc).__name__}: {exc}. Make forward() traceable (no control flow on tensor values; "
            "see https://pytorch.org/docs/stable/fx.html#limitations-of-symbolic-tracing)"
        ) from exc


# ------------------------------------------------------------------ naming
class _Names:
    """Unique qualified names for the graph's calls (see the module docstring)."""

    def __init__(self, root: nn.Module):
        self.taken: set[str] = {n for n, _ in root.named_modules() if n}
        self.taken |= {n for n, _ in root.named_parameters()} | {n for n, _ in root.named_buffers()}
        self.calls: dict[str, int] = {}

    RESERVED = frozenset(dir(QuantizedModel))

    def fresh(self, wanted: str) -> str:
        name, i = wanted, 0
        while name in self.taken or name.rpartition(".")[2] in self.RESERVED:
            i += 1
            name = f"{wanted}_{i}"
        self.taken.add(name)
        return name

    def of(self, node: fx.Node, n_inputs: int) -> tuple[str, bool]:
        """The node's name, and whether it is a module's first call (its own path)."""
        if node.op == "placeholder":
            return self.fresh("input" if n_inputs == 1 else f"input_{node.target}"), False
        if node.op == "call_module":
            assert isinstance(node.target, str)  # a call_module's target is the module's path
            count = self.calls.get(node.target, 0)
            self.calls[node.target] = count + 1
            if count == 0:
                return node.target, True
            return self.fresh(f"{node.target}_{count}"), False
        if node.op == "get_attr":
            return self.fresh(f"{node.target}_const"), False
        stack = node.meta.get("nn_module_stack") or {}
        container = next(reversed(stack.values()))[0] if stack else ""
        base = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "call")
        base = base.strip("_") or "call"
        return self.fresh(f"{container}.{base}" if container else base), False


def _describe_target(node: fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        return type(module).__name__
    if isinstance(node.target, str):
        return f".{node.target}()"
    module_name = getattr(node.target, "__module__", None) or ""
    prefix = "torch.nn.functional." if module_name.endswith("functional") else ""
    return prefix + getattr(node.target, "__name__", str(node.target))


def _template(arg: Any, names: dict[str, str]) -> Any:
    return fx.node.map_arg(arg, lambda n: Ref(names[n.name]))  # type: ignore[arg-type, return-value]  # any value


# ------------------------------------------------------------------ building
def build_graph(model: nn.Module, plan: Plan) -> QuantizedModel:
    """The quantized graph of ``model`` (a deep copy; see the module docstring)."""
    root = copy.deepcopy(model)
    if for_module(root) is not None:  # a single layer: its graph has one call, named "0"
        root = nn.Sequential(root)
    graph = trace(root)
    folded = fold_in_graph(graph, root)
    names = _Names(root)
    n_inputs = sum(n.op == "placeholder" for n in graph.nodes)
    fx_names: dict[str, str] = {}
    kinds: dict[str, Kind] = {}
    nodes: list[QNode] = []
    stateful: dict[str, tuple[Operation, bool]] = {}
    errors: list[str] = []
    output: Any = None
    for node in graph.nodes:
        if node.op == "output":
            output = _template(node.args[0], fx_names)
            continue
        name, own_path = names.of(node, n_inputs)
        fx_names[node.name] = name
        module = root.get_submodule(node.target) if node.op == "call_module" else None
        args, kwargs = _template(node.args, fx_names), _template(node.kwargs, fx_names)
        call = Call(
            name,
            node.target if module is None else module,
            module,
            args,
            kwargs,
            kinds,
            plan.config_for(name),
        )
        if any(kinds[r.node] is UNKNOWN for r in refs_in((args, kwargs))):
            kinds[name] = UNKNOWN  # downstream of an unsupported call: reported there
            continue
        try:
            op = _operation(node, call, root)
            kinds[name] = op.out_kind(call)
        except Unsupported as exc:
            errors.append(f"{name} ({node.op} {_describe_target(node, module)}): {exc}")
            kinds[name] = UNKNOWN
            continue
        qnode = QNode(name, args, kwargs, kinds[name], is_input=node.op == "placeholder")
        if isinstance(op, nn.Module):
            qnode.path = name
            stateful[name] = (op, own_path)
        else:
            qnode.op = op
        nodes.append(qnode)
    if errors:
        raise UnsupportedModelError(
            f"torchqv.quantize cannot quantize {type(model).__name__}: "
            f"{len(errors)} unsupported call(s):\n  - "
            + "\n  - ".join(errors)
            + "\n(calls that only depend on these are checked once they are fixed)"
        )
    qm = _assemble(root, nodes, output, stateful, type(model).__name__)
    qm.folded_batchnorm = folded
    return qm


def _operation(node: fx.Node, call: Call, root: nn.Module) -> Operation:
    if node.op == "placeholder":
        return Input(call.config, call.name)
    if node.op == "get_attr":
        assert isinstance(node.target, str)  # a get_attr's target is the attribute's path
        value = _attribute(root, node.target)
        if not isinstance(value, torch.Tensor):
            raise Unsupported(f"reads {type(value).__name__} attribute {node.target!r}")
        return Constant(value, call.name)
    arg_kinds = [call.kinds.get(r.node) for r in refs_in(call.args)]
    if node.op in ("call_function", "call_method") and is_python_call(
        node.op, node.target, call.args, arg_kinds
    ):
        return PythonCall(node.op, node.target, call.name)
    if node.op == "call_module":
        assert call.module is not None  # the called module
        cls = for_module(call.module)
        if cls is None:
            raise Unsupported(
                f"no torchqv operation for {type(call.module).__name__} modules; write it with supported "
                "modules and functions (torchqv.ops.registered() lists them), or apply it outside the "
                "quantized model"
            )
    elif node.op == "call_method":
        assert isinstance(node.target, str)  # a call_method's target is the method's name
        cls = for_method(node.target)
        if cls is None:
            hint = f"; {HINTS[node.target]}" if node.target in HINTS else ""
            raise Unsupported(f"no torchqv operation for the tensor method .{node.target}(){hint}")
    else:
        cls = for_function(node.target)
        if cls is None:
            name = getattr(node.target, "__name__", str(node.target))
            raise Unsupported(
                f"no torchqv operation for {name}(){'; ' + HINTS[name] if name in HINTS else ''}"
            )
    return cls.build(call)


def _attribute(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _assemble(
    root: nn.Module, nodes: list[QNode], output: Any, stateful: dict[str, tuple[Operation, bool]], source: str
) -> QuantizedModel:
    qm = QuantizedModel(nodes, output, source)
    for name, child in root.named_children():
        qm.add_module(name, child)
    qm.source_children = [name for name, _ in root.named_children()]
    for name, p in root.named_parameters(recurse=False):
        qm.register_parameter(name, p)
    for name, b in root.named_buffers(recurse=False):
        qm.register_buffer(name, b)
    for path, (op, _) in stateful.items():
        parent, _, attr = path.rpartition(".")
        setattr(qm.get_submodule(parent) if parent else qm, attr, op)
    qm.train(root.training)
    return qm


def check_overrides(plan: Plan, qm: QuantizedModel) -> None:
    """Every override pattern must match a node name."""
    names = [n.name for n in qm.nodes]
    missing = [p for p in plan.overrides if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if missing:
        raise ConfigError(f"override pattern(s) {missing} match no node; node names are: {names}")


def make_plan(config: QConfig | Mapping[str, Any], overrides: Mapping[str, Any] | None) -> Plan:
    if isinstance(config, Mapping):
        config = QConfig.from_dict(config)
    if not isinstance(config, QConfig):
        raise ConfigError(f"config must be a torchqv.QConfig, got {type(config).__name__}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(
            f"overrides must map node-name patterns to QConfigs, got {type(overrides).__name__}"
        )
    plan = Plan(config)
    for pattern, over in (overrides or {}).items():
        over = QConfig.from_dict(over) if isinstance(over, Mapping) else over
        if not isinstance(pattern, str) or not (over is None or isinstance(over, QConfig)):
            raise ConfigError(
                f"overrides[{pattern!r}] = {over!r}: overrides map node-name patterns (str) to a QConfig, "
                "a dict of its fields, or None (keep those nodes real-valued)"
            )
        plan.overrides[pattern] = over
    return plan
