"""Data movement: reshapes, permutations, slicing, splitting, and dropout.

These operations move values without computing new ones (``flatten``, ``view``/``reshape``,
``permute``/``transpose`` and channel shuffles, ``squeeze``/``unsqueeze``, indexing with ints and
slices, ``chunk``/``split``/``unbind``, ``expand``/``repeat``), so their output is on their
input's grid and they need no rounding.  Their meaning in every executor is their *index map*:
the function applied to a tensor of element indices (:meth:`Movement.index_map`), which the
integer reference, the ONNX emission and the verifier all read.  Dropout is the identity outside
training.
"""

from __future__ import annotations

import operator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..grid import QTensor
from .base import Call, Kind, NodeIO, Operation, Several, Unsupported, is_tensor, refs_in, register

IDENTITY_METHODS = ("contiguous", "clone", "detach", "float")


@register(
    modules=(nn.Flatten, nn.Unflatten, nn.Identity, nn.ChannelShuffle),
    functions=(
        torch.flatten,
        torch.reshape,
        torch.squeeze,
        torch.unsqueeze,
        torch.permute,
        torch.transpose,
        torch.movedim,
        torch.narrow,
        torch.chunk,
        torch.split,
        torch.unbind,
        operator.getitem,
    ),
    methods=(
        "view",
        "reshape",
        "flatten",
        "unflatten",
        "squeeze",
        "unsqueeze",
        "permute",
        "transpose",
        "movedim",
        "narrow",
        "chunk",
        "split",
        "unbind",
        "expand",
        "repeat",
        "t",
        *IDENTITY_METHODS,
    ),
)
class Movement(Operation):
    """A stateless data-movement call (see the module docstring)."""

    def __init__(self, target: Any, module: nn.Module | None, name: str):
        self.target, self.module, self.qname = target, module, name

    @classmethod
    def build(cls, call: Call) -> Operation:
        x = call.args[0] if call.args else None
        kind = call.kind(x)
        if call.target is operator.getitem and isinstance(kind, Several):
            return cls(call.target, None, call.name)
        if not is_tensor(kind):
            raise Unsupported(f"{call.name}: {cls._text(call.target)} of a non-tensor value")
        others = [r.node for r in refs_in((call.args[1:], call.kwargs)) if is_tensor(call.kinds[r.node])]
        if others:
            raise Unsupported(
                f"{call.name}: {cls._text(call.target)} indexed or shaped by a tensor ({', '.join(others)}); "
                "only ints, slices and shapes are supported"
            )
        module = call.module if call.module is not None and not isinstance(call.module, nn.Identity) else None
        target = "identity" if isinstance(call.module, nn.Identity) else call.target
        return cls(target, module, call.name)

    @staticmethod
    def _text(target: Any) -> str:
        return target if isinstance(target, str) else getattr(target, "__name__", str(target))

    def out_kind(self, call: Call) -> Kind:
        kind = call.kind(call.args[0])
        if isinstance(kind, Several):  # selecting one item of a tuple
            return kind.item
        if self.target in (torch.chunk, torch.split, torch.unbind, "chunk", "split", "unbind"):
            return Several(kind)  # type: ignore[arg-type]
        return kind  # type: ignore[return-value]

    def describe(self) -> str:
        if self.module is not None:
            return type(self.module).__name__
        return f"Movement({self._text(self.target)})"

    @property
    def identity(self) -> bool:
        return self.target == "identity" or self.target in IDENTITY_METHODS

    def apply(self, x: Any, args: tuple, kwargs: dict) -> Any:
        """The call on the tensor (or tuple) ``x`` in place of its first argument."""
        if self.identity:
            return x
        if self.module is not None:
            return self.module(x)
        if isinstance(self.target, str):
            return getattr(x, self.target)(*args[1:], **kwargs)
        return self.target(x, *args[1:], **kwargs)

    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return self.apply(args[0], args, kwargs)

    def exact(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        if isinstance(x, QTensor):
            return _wrap(self.apply(x.codes, args, kwargs), x)
        return self.apply(x, args, kwargs)

    def reference(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        if isinstance(x, tuple):  # an item of a split
            return x[args[1]]
        where = self.index_map(tuple(x.shape), args, kwargs)
        flat = x.data.reshape(-1)
        if isinstance(where, (tuple, list)):
            return tuple(x.with_data(flat[w.numpy()]) for w in where)
        return x.with_data(flat[where.numpy()])

    def onnx_integer(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        if isinstance(x, tuple):  # an item of a split
            return x[args[1]]
        if self.identity:
            return x
        where = self.index_map(x.example_shape, args, kwargs)
        if isinstance(where, (tuple, list)):
            return tuple(em.gather(x, w, io) for w in where)
        return em.gather(x, where, io)

    onnx_qdq = onnx_integer

    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        if isinstance(x, tuple):
            return x[args[1]]
        x = cb.consume(x, self.qname)
        where = self.index_map(x.example_shape, args, kwargs)
        pieces = list(where) if isinstance(where, (tuple, list)) else [where]
        if any(w.dim() == 0 or w.shape[0] != 1 for w in pieces):
            raise Unsupported(f"{self.qname}: this reshape mixes samples of the batch")
        moved = [cb.move(x, w[0]) for w in pieces]
        return tuple(moved) if isinstance(where, (tuple, list)) else moved[0]

    def index_map(self, shape: tuple[int, ...], args: tuple, kwargs: dict) -> Any:
        """Where each output element comes from: the call applied to ``arange`` (flat indices of
        an input of ``shape``); a tensor, or a tuple of them for splitting calls."""
        idx = torch.arange(int(torch.Size(shape).numel()), dtype=torch.int64).reshape(shape)
        return self.apply(idx, args, kwargs)


def _wrap(out: Any, like: QTensor) -> Any:
    if isinstance(out, (tuple, list)):
        return tuple(like.with_codes(o) for o in out)
    return like.with_codes(out)


@register(
    modules=(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout), functions=(F.dropout,)
)
class Dropout(Operation, nn.Module):
    """Dropout: active on the training path while the model trains, the identity otherwise (the
    exact simulation is an inference-time semantics)."""

    def __init__(self, p: float, name: str, kind: type | None):
        nn.Module.__init__(self)
        self.p, self.qname, self.kind = p, name, kind

    @classmethod
    def build(cls, call: Call) -> Operation:
        if call.module is not None:
            return cls(cast(float, call.module.p), call.name, type(call.module))
        return cls(call.arg(1, "p", 0.5), call.name, None)

    def out_kind(self, call: Call) -> Kind:
        return call.kind(call.args[0])  # type: ignore[return-value]

    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        if not self.training or self.p == 0:
            return x
        if self.kind in (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout):
            return self.kind(self.p)(x)
        return F.dropout(x, self.p, True)

    def exact(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return args[0]

    reference = exact

    def onnx_integer(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return args[0]

    onnx_qdq = onnx_integer

    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return args[0]

    def describe(self) -> str:
        return f"Dropout(p={self.p})"
