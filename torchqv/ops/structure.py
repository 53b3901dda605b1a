"""The graph's own nodes: its inputs, the tensors it reads (constants) and Python computations on
shapes.

* :class:`Input`: a network input, quantized to ``QConfig.input`` (its grid is where the exact
  simulation starts) or kept real;
* :class:`Constant`: a parameter or buffer read by the forward (``x + self.mean``); its exact
  value is its float value;
* :class:`PythonCall`: arithmetic on shapes (``x.size(0)``, ``x.shape[1] * 2``), run as written
  in every executor.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError
from ..fake_quant import FakeQuantize
from ..grid import QTensor, as_codes
from ..rational import RTensor, fractions, round_fractions
from .base import PY, Call, Const, Kind, NodeIO, OnGrid, Operation, Real

SHAPE_QUERIES = ("size", "dim", "numel")
SHAPE_ATTRIBUTES = ("shape", "ndim", "dtype", "device")


def check_input(x: Any, where: str) -> torch.Tensor:
    """A floating-point, finite network input (clear errors otherwise)."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{where}: expected a tensor input, got {type(x).__name__}")
    if not x.is_floating_point():
        raise DataError(
            f"{where}: the input has dtype {x.dtype}; quantized models take floating-point inputs "
            "(convert with x.float(), and scale integer pixels as the float model expects)"
        )
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{where}: the input contains NaN or inf")
    return x


class Input(Operation, nn.Module):
    """A network input; ``out_quant`` rounds it to ``QConfig.input`` (``None``: kept real)."""

    def __init__(self, cfg: Any, name: str):
        nn.Module.__init__(self)
        self.qname = name
        self.out_quant = (
            FakeQuantize(cfg.input, 1, 0, cfg.activation_observer, cfg.learn_step, f"{name}.quant")
            if cfg.input is not None
            else None
        )

    def out_kind(self, call: Call) -> Kind:
        return OnGrid(call.name) if self.out_quant is not None else Real()

    def describe(self) -> str:
        return "Input" if self.out_quant is None else "Input (quantized)"

    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = check_input(args[0], self.qname)
        return self.out_quant(x) if self.out_quant is not None else x

    def exact(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = check_input(args[0], self.qname)
        if self.out_quant is None:
            return x.to(torch.float64)
        grid = self.out_quant.grid()
        return QTensor(as_codes(self.out_quant.exact_codes(x), grid), grid)

    def reference(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        if self.out_quant is None:
            return x
        grid = self.out_quant.grid()
        return RTensor(round_fractions(x.data, grid, self.qname), grid)

    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return cb.input(args[0].shape, self.out_quant.grid() if self.out_quant is not None else None)

    def onnx_integer(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        from onnx import TensorProto  # only exports need onnx

        x64 = em.g.op("Cast", [args[0].name], to=TensorProto.DOUBLE, hint="x64")
        if self.out_quant is None:
            return em.value(io, x64, None)
        grid = self.out_quant.grid()
        return em.value(io, em.quantize_real(x64, grid, self.qname), grid)

    def onnx_qdq(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        if self.out_quant is None:
            return em.value(io, args[0].name, None)
        grid = self.out_quant.grid()
        return em.value(io, em.fake_quant(args[0].name, grid, self.qname), grid)

    def extra_repr(self) -> str:
        return repr(self.qname)


class Constant(Operation, nn.Module):
    """A tensor the forward reads (``get_attr``): a copy kept as a buffer."""

    value: torch.Tensor

    def __init__(self, value: torch.Tensor, name: str):
        nn.Module.__init__(self)
        self.qname = name
        self.register_buffer("value", value.detach().clone())

    def out_kind(self, call: Call) -> Kind:
        return Const(call.name)

    def describe(self) -> str:
        return f"Constant{tuple(self.value.shape)}"

    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return self.value

    def exact(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return self.value.to(torch.float64)

    def reference(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return RTensor(fractions(self.value.detach().cpu().numpy()))

    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return self.value.detach().cpu()

    def onnx_integer(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        value = self.value.detach().cpu()
        return em.value(io, em.g.const(value.double().numpy()), None, value)

    def onnx_qdq(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        value = self.value.detach().cpu()
        return em.value(io, em.g.const(value.float().numpy(), dtype=np.float32), None, value)


class PythonCall(Operation):
    """A computation on Python values (shapes, sizes), identical in every executor."""

    def __init__(self, kind: str, target: Any, name: str):
        self.call_kind, self.target, self.qname = kind, target, name

    def out_kind(self, call: Call) -> Kind:
        return PY

    def describe(self) -> str:
        name = self.target if isinstance(self.target, str) else getattr(self.target, "__name__", "?")
        return f"Python({name})"

    def run(self, args: tuple, kwargs: dict) -> Any:
        if self.call_kind == "call_method":
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        if self.target is getattr and args[1] in SHAPE_ATTRIBUTES:
            return getattr(args[0], args[1])
        return self.target(*args, **kwargs)

    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return self.run(args, kwargs)

    exact = qat

    def reference(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return self.run(args, kwargs)

    def onnx_integer(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return self.run(args, kwargs)

    onnx_qdq = onnx_integer

    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return self.run(args, kwargs)


def is_python_call(op_kind: str, target: Any, args: tuple, kinds: list[Kind | None]) -> bool:
    """Is this call a computation on Python values (no tensor in, or a shape query)?"""
    if op_kind == "call_method" and target in SHAPE_QUERIES:
        return True
    if op_kind == "call_function" and target is getattr and len(args) > 1 and args[1] in SHAPE_ATTRIBUTES:
        return True
    if op_kind == "call_function" and target is operator.getitem and kinds and kinds[0] is PY:
        return True
    refs = [k for k in kinds if k is not None]
    return bool(refs) and all(k is PY for k in refs)
