"""The operation protocol and its registry.

Every node of a quantized graph is an :class:`Operation`: one class per operation, registered for
the torch modules, functions and tensor methods it handles (in the manner of torchao's handler
registry and auto_LiRPA's operator classes).  The class holds the operation's semantics once,
with one method per executor:

* ``qat``: the training path (fake quantization with a straight-through estimator) on float
  tensors; with every quantizer disabled it is the float network (calibration);
* ``exact``: the exact simulation on :class:`~torchqv.grid.QTensor` codes (eval mode);
* ``reference``: the integer reference on :class:`~torchqv.reference.RTensor` values (the
  oracle: integer codes and exact rationals, no floating point);
* ``onnx``: the ONNX emission, integer or QDQ form (:mod:`torchqv.export`);
* ``chain``: what the verifier's exact chain needs (:mod:`torchqv.verify.network`).

Executors receive the call's arguments with graph values resolved (``args``, ``kwargs``) and a
:class:`NodeIO` with the static facts the graph knows about the call.  An operation that an
executor cannot run raises :class:`Unsupported` with the fix; ``quantize`` collects these for
every node before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from ..errors import UnsupportedModelError


class Unsupported(UnsupportedModelError):
    """An operation (or one of its variants) that torchqv cannot execute exactly."""


# ------------------------------------------------------------------ kinds of values
@dataclass(frozen=True)
class OnGrid:
    """A tensor of codes on the grid of node ``source``'s output quantizer."""

    source: str


@dataclass(frozen=True)
class Real:
    """A real-valued tensor (only where the configuration asks for real values)."""


@dataclass(frozen=True)
class Const:
    """A tensor known when the model is built (a parameter or buffer read by the forward)."""

    source: str


@dataclass(frozen=True)
class PyValue:
    """A Python value computed from shapes (``x.size(0)``, ``x.shape[1] * 2``)."""


@dataclass(frozen=True)
class Several:
    """A tuple of values of one kind (``torch.chunk``, ``torch.split``)."""

    item: Kind


@dataclass(frozen=True)
class Unknown:
    """The value of a call that could not be built (its error is reported once, there)."""


Kind = OnGrid | Real | Const | PyValue | Several | Unknown
REAL = Real()
PY = PyValue()


def is_tensor(kind: Kind | None) -> bool:
    return isinstance(kind, (OnGrid, Real, Const))


@dataclass(frozen=True)
class Ref:
    """A reference to another node's value inside a node's argument template."""

    node: str


def refs_in(template: Any) -> Iterator[Ref]:
    """Every :class:`Ref` in an argument template, in order."""
    if isinstance(template, Ref):
        yield template
    elif isinstance(template, (tuple, list)):
        for item in template:
            yield from refs_in(item)
    elif isinstance(template, dict):
        for item in template.values():
            yield from refs_in(item)


def resolve(template: Any, value_of: Callable[[str], Any]) -> Any:
    """The template with every :class:`Ref` replaced by ``value_of(ref.node)``."""
    if isinstance(template, Ref):
        return value_of(template.node)
    if isinstance(template, tuple):
        return tuple(resolve(t, value_of) for t in template)
    if isinstance(template, list):
        return [resolve(t, value_of) for t in template]
    if isinstance(template, dict):
        return {k: resolve(v, value_of) for k, v in template.items()}
    return template


# ------------------------------------------------------------------ build-time facts
@dataclass
class Call:
    """What an operation is built from: one traced call and its context."""

    name: str  # the node's qualified name (module path, or container path + function name)
    target: Any  # the module, function or method name that was called
    module: nn.Module | None
    args: tuple
    kwargs: dict
    kinds: dict[str, Kind]  # kind of every graph value the call reads
    config: Any  # the QConfig that applies at this site

    def kind(self, arg: Any) -> Kind | None:
        """The kind of an argument (``None`` for a literal)."""
        return self.kinds[arg.node] if isinstance(arg, Ref) else None

    def arg(self, pos: int, key: str, default: Any = None) -> Any:
        if key in self.kwargs:
            return self.kwargs[key]
        return self.args[pos] if len(self.args) > pos else default


@dataclass
class NodeIO:
    """Run-time facts the graph hands an executor: the node's name and the quantizers that
    define the grids of its tensor inputs (``None`` for real inputs), in argument order."""

    name: str
    in_quants: tuple[Any, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------ the protocol
class Operation:
    """Base of every graph operation (a mixin: stateful operations are also ``nn.Module``)."""

    #: what the class handles (filled by :func:`register`; named ``handles_*`` so that they do not
    #: shadow ``nn.Module.modules()`` on the operations that are also modules)
    handles_modules: ClassVar[tuple[type, ...]] = ()
    handles_functions: ClassVar[tuple[Callable, ...]] = ()
    handles_methods: ClassVar[tuple[str, ...]] = ()

    qname: str = ""

    @classmethod
    def build(cls, call: Call) -> Operation:
        """The operation for ``call`` (raise :class:`Unsupported` with the fix if it cannot be)."""
        raise NotImplementedError

    def out_kind(self, call: Call) -> Kind:
        """The kind of the output value."""
        raise NotImplementedError

    def quantizers(self) -> list[Any]:
        """The quantizers this operation owns (for observers and summaries)."""
        return [q for q in (getattr(self, "out_quant", None),) if q is not None]

    def describe(self) -> str:
        return type(self).__name__

    # executors -------------------------------------------------------------
    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        raise NotImplementedError

    def exact(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        raise NotImplementedError

    def reference(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        raise NotImplementedError

    def onnx(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        raise Unsupported(f"{self.qname}: {self.describe()} has no ONNX export")

    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        raise Unsupported(
            f"{self.qname}: the verifier does not support {self.describe()} yet (it reads chains of "
            "Linear/Conv, piecewise-linear activations, reshapes and constant shifts)"
        )


# ------------------------------------------------------------------ the registry
_MODULES: dict[type, type[Operation]] = {}
_FUNCTIONS: dict[Any, type[Operation]] = {}
_METHODS: dict[str, type[Operation]] = {}


def register(
    *, modules: tuple[type, ...] = (), functions: tuple[Any, ...] = (), methods: tuple[str, ...] = ()
) -> Callable[[type[Operation]], type[Operation]]:
    """Class decorator: ``cls`` handles these module types, functions and tensor methods."""

    def deco(cls: type[Operation]) -> type[Operation]:
        tables: tuple[tuple[dict[Any, type[Operation]], tuple[Any, ...]], ...] = (
            (_MODULES, modules),
            (_FUNCTIONS, functions),
            (_METHODS, methods),
        )
        for table, keys in tables:
            for key in keys:
                if key in table:
                    raise RuntimeError(f"{key} is registered twice ({table[key].__name__}, {cls.__name__})")
                table[key] = cls
        cls.handles_modules, cls.handles_functions = tuple(modules), tuple(functions)
        cls.handles_methods = tuple(methods)
        return cls

    return deco


def for_module(module: nn.Module) -> type[Operation] | None:
    """The operation class of a module (by exact type, then by base class)."""
    for klass in type(module).__mro__:
        if klass in _MODULES:
            return _MODULES[klass]
    return None


def for_function(target: Any) -> type[Operation] | None:
    try:
        return _FUNCTIONS.get(target)
    except TypeError:  # unhashable target
        return None


def for_method(name: str) -> type[Operation] | None:
    return _METHODS.get(name)


def registered() -> list[type[Operation]]:
    """Every registered operation class (once each)."""
    seen: dict[type, None] = {}
    for table in (_MODULES, _FUNCTIONS, _METHODS):
        for cls in table.values():
            seen.setdefault(cls, None)
    return list(seen)
