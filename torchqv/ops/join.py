"""Joins: residual ``add``/``sub``, ``mul`` (two tensors, or a tensor and a constant), ``cat``/``stack``.

Each computes the exact result of its inputs' exact values and rounds it once to the node's own
output format (own observer), the rule of Park, Park & Hwang, "On expressive power of quantized neural
networks under fixed-point arithmetic", Eq. 7 generalised to every operation that leaves the grid:

* ``a + alpha b``: ``t = (k_a s_a + alpha k_b s_b + c) / s_out``, an integer combination of the codes
  over a common denominator (:func:`torchqv.grid.requantize`); constants (Python numbers or
  parameters/buffers read by the forward) enter at their exact values;
* ``a * b``: ``t = k_a k_b s_a s_b / s_out``; ``a * c`` and ``a / c`` for a constant number ``c``;
* ``cat``/``stack``: every input is requantized to the output format (its own step), then the
  codes are concatenated.  (Sharing one format across the inputs would make an upstream
  quantizer depend on a downstream join; requantizing keeps every format local.)

A real-valued input can only meet a real-valued output (a configuration that keeps the join
unrounded); ``quantize`` refuses the other combinations with the fix.
"""

from __future__ import annotations

import operator
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

from ..fake_quant import FakeQuantize
from ..formats import round_certified
from ..grid import QTensor, Requantizer, as_codes, requantize
from ..rational import RTensor, combine, fractions, round_fractions
from .base import Call, Const, Kind, NodeIO, OnGrid, Operation, Real, Ref, Unsupported, is_tensor, register

Number = (int, float)


def _is_number(v: Any) -> bool:
    return isinstance(v, Number) and not isinstance(v, bool)


def _out_quant(cfg: Any, name: str) -> FakeQuantize | None:
    if cfg.activation is None:
        return None
    return FakeQuantize(cfg.activation, 1, 0, cfg.activation_observer, cfg.learn_step, f"{name}.out")


def _real_value(v: Any) -> Any:
    """A value's real numbers as float64 (codes dequantized; numbers as they are)."""
    if isinstance(v, QTensor):
        return v.values()
    if isinstance(v, torch.Tensor):
        return v.to(torch.float64)
    return v


def _fractions(t: torch.Tensor) -> np.ndarray:
    return fractions(t.detach().to(torch.float64).cpu().numpy())


def _exact_value(v: Any) -> Any:
    """A reference operand's exact value (Fraction array, or the number itself)."""
    return v.exact() if isinstance(v, RTensor) else Fraction(v)


def _on_grid_or_number(v: Any) -> bool:
    return (isinstance(v, RTensor) and v.grid is not None) or _is_number(v)


def _reference_result(values: Any, out: FakeQuantize | None, where: str) -> RTensor:
    if out is None:
        return RTensor(np.asarray(values, dtype=object))
    grid = out.grid()
    return RTensor(round_fractions(np.asarray(values, dtype=object), grid, where), grid)


def _check_real_inputs(call: Call, operands: list[Any], out: FakeQuantize | None) -> None:
    if out is None:
        return
    real = [a.node for a in operands if isinstance(call.kind(a), Real)]
    if real:
        raise Unsupported(
            f"{call.name}: rounds a result that depends on the real-valued (unquantized) value of "
            f"{', '.join(real)}; give those nodes an output format (QConfig.activation) or keep "
            f"{call.name} real with an override {{'{call.name}': None}}"
        )


class _Join(Operation, nn.Module):
    """Shared parts: an output quantizer and the kinds of the operands."""

    def __init__(self, cfg: Any, name: str, consts: tuple[bool, ...]):
        nn.Module.__init__(self)
        self.qname = name
        self.out_quant = _out_quant(cfg, name)
        self.consts = consts  # which operands are tensors known at build time
        self._requantizers: dict[tuple, Requantizer] = {}

    def requantizer(self, rates: tuple, out: Any, const: Fraction = Fraction(0)) -> Requantizer:
        """The requantizer of these rates (built once per combination of grids)."""
        key = (rates, out, const)
        if key not in self._requantizers:
            self._requantizers[key] = Requantizer(list(rates), out, const)
        return self._requantizers[key]

    def out_kind(self, call: Call) -> Kind:
        return OnGrid(call.name) if self.out_quant is not None else Real()

    def extra_repr(self) -> str:
        return repr(self.qname)


# ---------------------------------------------------------------------------- add / sub
@register(
    functions=(operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub),
    methods=("add", "sub", "add_", "sub_"),
)
class QuantAdd(_Join):
    """``a + alpha * b`` (``sub``: ``alpha = -1``), rounded once to the node's format."""

    def __init__(self, cfg: Any, name: str, alpha: Fraction, consts: tuple[bool, ...]):
        super().__init__(cfg, name, consts)
        self.alpha = alpha

    @classmethod
    def build(cls, call: Call) -> Operation:
        target = call.target
        a, b = call.arg(0, "input"), call.arg(1, "other")
        alpha = call.kwargs.get("alpha", 1)
        if not _is_number(alpha):
            raise Unsupported(f"{call.name}: alpha must be a number")
        sub = target in (operator.sub, operator.isub, torch.sub) or target in ("sub", "sub_")
        operands = [a, b]
        for v in operands:
            if not (is_tensor(call.kind(v)) or _is_number(v)):
                raise Unsupported(
                    f"{call.name}: adds {type(v).__name__} values; tensors and numbers are supported"
                )
        return cls(call.config, call.name, Fraction(-alpha if sub else alpha), _const_flags(call, operands))

    def _operands(self, args: tuple, kwargs: dict) -> list[tuple[Any, Fraction]]:
        a = kwargs.get("input", args[0] if args else None)
        b = kwargs.get("other", args[1] if len(args) > 1 else None)
        return [(a, Fraction(1)), (b, self.alpha)]

    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        (a, _), (b, alpha) = self._operands(args, kwargs)
        y = a + b * float(alpha) if alpha != 1 else a + b
        return self.out_quant(y) if self.out_quant is not None else y

    def exact(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        operands = self._operands(args, kwargs)
        if self.out_quant is None:
            (a, _), (b, alpha) = operands
            return _real_value(a) + _real_value(b) * float(alpha)
        out = self.out_quant.grid()
        if any(
            isinstance(v, torch.Tensor) and not c for (v, _), c in zip(operands, self.consts, strict=True)
        ):
            return QTensor(self._certified(operands, out), out)
        terms, const, elementwise = [], Fraction(0), None
        for (v, coef), is_const in zip(operands, self.consts, strict=True):
            if isinstance(v, QTensor):
                terms.append((v.codes, v.grid.step * coef / out.step))
            elif is_const:
                part = _fractions(v) * (coef / out.step)
                elementwise = part if elementwise is None else elementwise + part
            else:
                const += Fraction(v) * coef / out.step
        if elementwise is not None:  # constant tensors: built for this call
            codes = requantize(terms, out, self.qname, elementwise + const)
        else:
            requant = self.requantizer(tuple(r for _, r in terms), out, const)
            codes = requant([k for k, _ in terms], self.qname)
        return QTensor(codes, out)

    def _certified(self, operands: list[tuple[Any, Fraction]], out: Any) -> torch.Tensor:
        """A real-valued operand (e.g. an unquantized network input shifted by a constant): the
        float64 sum carries at most a few rounding errors relative to its terms, so only values
        that close to a rounding boundary are recomputed with exact rationals."""
        values = [(_real_value(v), coef) for v, coef in operands]
        total = sum(v * float(c) for v, c in values)
        magnitude = sum(abs(v) * abs(float(c)) for v, c in values)
        so = float(out.step)
        t_hat = total / so
        err = (magnitude * 2.0**-50 + t_hat.abs() * so * 2.0**-50) / so + t_hat.abs() * 2.0**-50
        shape = t_hat.shape
        flat = [
            (torch.broadcast_to(v, shape).reshape(-1) if isinstance(v, torch.Tensor) else v, c)
            for v, c in values
        ]

        def exact(idx: list[int]) -> list[int]:
            codes = []
            for i in idx:
                t = sum(
                    (Fraction(float(v[i])) if isinstance(v, torch.Tensor) else Fraction(v)) * c
                    for v, c in flat
                )
                codes.append(out.fmt.round_exact(t / out.step))
            return codes

        k = round_certified(out.fmt, t_hat, err, exact, self.qname)
        kmin, kmax = out.code_range
        return as_codes(out.fmt.saturate_tensor(k, kmin, kmax, self.qname), out)

    def reference(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        operands = self._operands(args, kwargs)
        if self.out_quant is not None and all(_on_grid_or_number(v) for v, _ in operands):
            grid = self.out_quant.grid()
            terms = [
                (v.data, v.grid.step * c / grid.step)
                for v, c in operands
                if isinstance(v, RTensor) and v.grid is not None  # every RTensor is on a grid (checked)
            ]
            const = sum((Fraction(v) * c for v, c in operands if not isinstance(v, RTensor)), Fraction(0))
            return RTensor(combine(terms, const / grid.step, grid, self.qname), grid)
        (a, _), (b, alpha) = operands
        return _reference_result(_exact_value(a) + _exact_value(b) * alpha, self.out_quant, self.qname)

    def onnx_integer(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        out = _onnx_out(self)
        terms, const = [], np.full((), Fraction(0), dtype=object)
        for v, coef in self._operands(args, kwargs):
            if getattr(v, "constant", None) is not None:
                const = const + _fractions(v.constant) * (coef / out.step)
            elif hasattr(v, "name"):
                em.need_grid(v, self.qname)
                terms.append((v.name, [v.grid.step * coef / out.step], v.grid.max_abs_code))
            else:
                const = const + Fraction(v) * coef / out.step
        return em.value(io, em.requantize(terms, out, self.qname, const=const), out)

    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        """``sum coef * x + constants``, exact, rounded once to the node's format."""
        return _chain_combine(self, cb, self._operands(args, kwargs))

    def onnx_qdq(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        (a, _), (b, alpha) = self._operands(args, kwargs)
        g = em.g
        na, nb = _onnx_float(em, a), _onnx_float(em, b)
        if alpha != 1:
            nb = g.op("Mul", [nb, g.const(np.float32(float(alpha)), dtype=np.float32)])
        return _onnx_qdq_out(self, em, g.op("Add", [na, nb]), io)

    def describe(self) -> str:
        return "QuantAdd" if self.alpha == 1 else f"QuantAdd(alpha={self.alpha})"


def _onnx_out(op: _Join) -> Any:
    if op.out_quant is None:
        raise Unsupported(f"{op.qname}: the integer form needs an output format (QConfig.activation)")
    return op.out_quant.grid()


def _onnx_float(em: Any, v: Any) -> str:
    return v.name if hasattr(v, "name") else em.g.const(np.float32(float(v)), dtype=np.float32)


def _onnx_qdq_out(op: _Join, em: Any, y: str, io: NodeIO) -> Any:
    if op.out_quant is None:
        return em.value(io, y, None)
    out = op.out_quant.grid()
    return em.value(io, em.fake_quant(y, out, op.qname), out)


def _const_flags(call: Call, operands: list[Any]) -> tuple[bool, ...]:
    return tuple(isinstance(call.kind(v), Const) for v in operands)


def _chain_combine(op: _Join, cb: Any, operands: list[tuple[Any, Any]]) -> Any:
    """The verifier's layer for ``sum coef * operand``: tensors computed from the input enter as
    chain values, constant tensors and numbers at their exact values (``coef``: a Fraction, or a
    Fraction array for a constant factor)."""
    terms, offset = [], np.full((), Fraction(0), dtype=object)
    for v, coef in operands:
        if isinstance(v, torch.Tensor):
            offset = offset + _fractions(v) * coef
        elif _is_number(v):
            offset = offset + Fraction(v) * coef
        else:
            terms.append((cb.consume(v, op.qname), np.asarray(coef, dtype=object)))
    return cb.combine(terms, offset, op.out_quant.grid() if op.out_quant is not None else None, op.qname)


# ---------------------------------------------------------------------------- mul / div
@register(
    functions=(operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div),
    methods=("mul", "mul_", "div", "div_"),
)
class QuantMul(_Join):
    """``a * b`` of two tensors, ``a * c`` or ``a / c`` for a constant number ``c``."""

    def __init__(self, cfg: Any, name: str, divide: bool, consts: tuple[bool, ...]):
        super().__init__(cfg, name, consts)
        self.divide = divide

    @classmethod
    def build(cls, call: Call) -> Operation:
        divide = call.target in (operator.truediv, operator.itruediv, torch.div) or call.target in (
            "div",
            "div_",
        )
        if divide and call.kwargs.get("rounding_mode") is not None:
            raise Unsupported(f"{call.name}: division with rounding_mode is not supported")
        a, b = call.arg(0, "input"), call.arg(1, "other")
        if not is_tensor(call.kind(a)):
            a, b = b, a
        if not is_tensor(call.kind(a)):
            raise Unsupported(f"{call.name}: multiplies no tensor")
        if divide and not (_is_number(b) and b != 0):
            raise Unsupported(
                f"{call.name}: divides by a tensor; only division by a non-zero number is exact here"
            )
        if not (is_tensor(call.kind(b)) or _is_number(b)):
            raise Unsupported(f"{call.name}: multiplies by {type(b).__name__}")
        op = cls(call.config, call.name, divide, _const_flags(call, [a, b]))
        if op.out_quant is not None and any(op.consts):
            raise Unsupported(
                f"{call.name}: multiplies by a parameter tensor; hold the weights in a layer (nn.Linear, "
                f"nn.Conv2d), or keep {call.name} real with an override {{'{call.name}': None}}"
            )
        _check_real_inputs(call, [v for v in (a, b) if isinstance(v, Ref)], op.out_quant)
        return op

    def _operands(self, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        a = kwargs.get("input", args[0] if args else None)
        b = kwargs.get("other", args[1] if len(args) > 1 else None)
        return (b, a) if _is_number(a) else (a, b)

    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        a, b = self._operands(args, kwargs)
        y = a / b if self.divide else a * b
        return self.out_quant(y) if self.out_quant is not None else y

    def exact(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        a, b = self._operands(args, kwargs)
        if self.out_quant is None:
            ra, rb = _real_value(a), _real_value(b)
            return ra / rb if self.divide else ra * rb
        out = self.out_quant.grid()
        if isinstance(b, QTensor):
            if not _products_fit(a, b):
                raise Unsupported(
                    f"{self.qname}: products of codes reach 2^62; use formats of at most 31 bits"
                )
            rate = a.grid.step * b.grid.step / out.step
            codes = self.requantizer((rate,), out)([a.codes.long() * b.codes.long()], self.qname)
        else:
            c = Fraction(b)
            rate = a.grid.step / (c * out.step) if self.divide else a.grid.step * c / out.step
            codes = self.requantizer((rate,), out)([a.codes], self.qname)
        return QTensor(codes, out)

    def reference(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        a, b = self._operands(args, kwargs)
        if self.out_quant is not None and a.grid is not None and _on_grid_or_number(b):
            grid = self.out_quant.grid()
            if isinstance(b, RTensor):
                assert b.grid is not None  # _on_grid_or_number(b)
                term = (a.data.astype(object) * b.data.astype(object), a.grid.step * b.grid.step / grid.step)
            else:
                c = Fraction(b)
                term = (a.data, a.grid.step / (c * grid.step) if self.divide else a.grid.step * c / grid.step)
            return RTensor(combine([term], Fraction(0), grid, self.qname), grid)
        ea, eb = _exact_value(a), _exact_value(b)
        return _reference_result(ea / eb if self.divide else ea * eb, self.out_quant, self.qname)

    def onnx_integer(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        out = _onnx_out(self)
        a, b = self._operands(args, kwargs)
        em.need_grid(a, self.qname)
        if hasattr(b, "name"):
            em.need_grid(b, self.qname)
            prod = em.g.op("Mul", [a.name, b.name])
            term = (prod, [a.grid.step * b.grid.step / out.step], a.grid.max_abs_code * b.grid.max_abs_code)
        else:
            c = Fraction(b)
            term = (
                a.name,
                [a.grid.step / (c * out.step) if self.divide else a.grid.step * c / out.step],
                a.grid.max_abs_code,
            )
        return em.value(io, em.requantize([term], out, self.qname), out)

    def onnx_qdq(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        a, b = self._operands(args, kwargs)
        y = em.g.op("Div" if self.divide else "Mul", [_onnx_float(em, a), _onnx_float(em, b)])
        return _onnx_qdq_out(self, em, y, io)

    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        """A product with a constant (a number or a constant tensor) is a linear layer; a product
        of two tensors computed from the input is not piecewise linear."""
        a, b = self._operands(args, kwargs)
        if isinstance(a, torch.Tensor):
            a, b = b, a
        if not (isinstance(b, torch.Tensor) or _is_number(b)):
            raise Unsupported(f"{self.qname}: the verifier handles products with constants only")
        factor = _fractions(b) if isinstance(b, torch.Tensor) else Fraction(b)
        if self.divide:
            factor = 1 / factor
        return _chain_combine(self, cb, [(a, factor)])

    def describe(self) -> str:
        return "QuantDiv" if self.divide else "QuantMul"


def _products_fit(a: QTensor, b: QTensor) -> bool:
    return a.grid.max_abs_code * b.grid.max_abs_code < 2**62


# ---------------------------------------------------------------------------- cat / stack
@register(functions=(torch.cat, torch.concat, torch.stack))
class QuantCat(_Join):
    """``torch.cat`` / ``torch.stack``: every input requantized to the output format."""

    def __init__(self, cfg: Any, name: str, dim: int, stack: bool):
        super().__init__(cfg, name, ())
        self.dim, self.stack = dim, stack

    @classmethod
    def build(cls, call: Call) -> Operation:
        tensors, dim = call.arg(0, "tensors"), call.arg(1, "dim", 0)
        if not isinstance(tensors, (list, tuple)) or not all(is_tensor(call.kind(t)) for t in tensors):
            raise Unsupported(f"{call.name}: concatenates something other than a list of tensors")
        if not isinstance(dim, int):
            raise Unsupported(f"{call.name}: the dimension must be a constant int")
        op = cls(call.config, call.name, dim, call.target is torch.stack)
        if any(isinstance(call.kind(t), Const) for t in tensors):
            raise Unsupported(f"{call.name}: concatenates a parameter tensor")
        _check_real_inputs(call, list(tensors), op.out_quant)
        return op

    def _join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(parts, self.dim) if self.stack else torch.cat(parts, self.dim)

    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        y = self._join(list(kwargs.get("tensors", args[0] if args else ())))
        return self.out_quant(y) if self.out_quant is not None else y

    def exact(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        parts = list(kwargs.get("tensors", args[0] if args else ()))
        if self.out_quant is None:
            return self._join([_real_value(p) for p in parts])
        out = self.out_quant.grid()
        codes = [self.requantizer((p.grid.step / out.step,), out)([p.codes], self.qname) for p in parts]
        return QTensor(self._join(codes), out)

    def reference(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        parts = [p.exact() for p in kwargs.get("tensors", args[0] if args else ())]
        if self.out_quant is None:
            joined = np.stack(parts, self.dim) if self.stack else np.concatenate(parts, self.dim)
            return RTensor(joined)
        grid = self.out_quant.grid()
        tensors = kwargs.get("tensors", args[0] if args else ())
        codes = [combine([(p.data, p.grid.step / grid.step)], Fraction(0), grid, self.qname) for p in tensors]
        return RTensor(np.stack(codes, self.dim) if self.stack else np.concatenate(codes, self.dim), grid)

    def _onnx_join(self, em: Any, names: list[str]) -> str:
        g = em.g
        if self.stack:
            axes = g.const(np.array([self.dim], dtype=np.int64), dtype=np.int64)
            names = [g.op("Unsqueeze", [n, axes]) for n in names]
        return g.op("Concat", names, axis=self.dim)

    def onnx_integer(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        out = _onnx_out(self)
        parts = [em.need_grid(p, self.qname) for p in kwargs.get("tensors", args[0] if args else ())]
        codes = [
            em.requantize([(p.name, [p.grid.step / out.step], p.grid.max_abs_code)], out, self.qname)
            for p in parts
        ]
        return em.value(io, self._onnx_join(em, codes), out)

    def onnx_qdq(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        parts = [p.name for p in kwargs.get("tensors", args[0] if args else ())]
        return _onnx_qdq_out(self, em, self._onnx_join(em, parts), io)

    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        parts = [cb.consume(t, self.qname) for t in kwargs.get("tensors", args[0] if args else ())]
        out = self.out_quant.grid() if self.out_quant is not None else None
        return cb.cat(parts, self.dim, self.stack, out)

    def describe(self) -> str:
        return "QuantStack" if self.stack else "QuantCat"
