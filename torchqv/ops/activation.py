"""Pointwise activations ``[sigma](x) = round(sigma(x) / s_out)`` (Park, Park & Hwang, "On expressive power of
quantized neural networks under fixed-point arithmetic", Eq. 5).

The exact value of ``sigma`` at the exact input is rounded (:mod:`torchqv.activations` holds each
function's float64, rational and arbitrary-precision forms).  On a grid input of at most
``2^16`` codes the exact executor uses a lookup table of every input code's rounded output
(computed once per pair of grids, certified); wider or real inputs use the certified float64 path
with exact fall-back.  A module called at several places gets one operation (and one output
quantizer) per call site.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import activations as A
from ..errors import UnsupportedModelError
from ..fake_quant import DIV_ERR, FakeQuantize
from ..formats import fraction_to_float, is_dyadic, round_certified
from ..grid import Grid, QTensor, Requantizer, as_codes
from ..rational import RTensor, as_ints, saturate
from .base import Call, Kind, NodeIO, OnGrid, Operation, Real, Unsupported, register

U64 = 2.0**-53
MAX_TABLE = 2**16 + 1

ACTIVATION_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.SiLU,
    nn.GELU,
    nn.Mish,
    nn.Softplus,
    nn.Hardsigmoid,
    nn.Hardswish,
)


@register(modules=ACTIVATION_MODULES, functions=tuple(A.FUNCTIONAL), methods=tuple(A.METHODS))
class QuantAct(Operation, nn.Module):
    """A pointwise activation whose output is rounded to its format."""

    def __init__(self, act: A.Activation, cfg: Any, name: str = ""):
        nn.Module.__init__(self)
        self.qname = name
        self.act = act
        self.out_quant = (
            FakeQuantize(cfg.activation, 1, 0, cfg.activation_observer, cfg.learn_step, f"{name}.out")
            if cfg.activation is not None
            else None
        )
        self._tables: dict[tuple[Grid, Grid], torch.Tensor] = {}
        self._requantizers: dict[tuple[Grid, Grid], tuple[Requantizer, tuple]] = {}

    @classmethod
    def build(cls, call: Call) -> Operation:
        if call.module is not None:
            act = A.from_module(call.module)
        elif isinstance(call.target, str):
            act = A.METHODS[call.target](call.args, call.kwargs)
        else:
            act = A.FUNCTIONAL[call.target](call.args, call.kwargs)
        if act is None:
            raise Unsupported(f"{call.name}: unsupported activation variant {call.kwargs}")
        return cls(act, call.config, call.name)

    def out_kind(self, call: Call) -> Kind:
        return OnGrid(call.name) if self.out_quant is not None else Real()

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.act.params)
        return f"QuantAct({self.act.name}{', ' + params if params else ''})"

    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> torch.Tensor:
        y = self.act.train_fn(args[0])
        return self.out_quant(y) if self.out_quant is not None else y

    # ------------------------------------------------------------ exact path
    def exact(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        if self.out_quant is None:  # a real output, as configured
            return self.act.f64(x.values() if isinstance(x, QTensor) else x.to(torch.float64))
        out = self.out_quant.grid()
        if isinstance(x, QTensor) and self.act.clamp is not None:
            return QTensor(self._clamped(x, out), out)
        if isinstance(x, QTensor):
            kmin, kmax = x.grid.code_range
            if kmax - kmin < MAX_TABLE:
                table = self.table(x.grid, out).to(x.codes.device)
                return QTensor(table[(x.codes - kmin).long()], out)
            return QTensor(self._certified(x.values(), x.codes, x.grid.step, out), out)
        return QTensor(self._certified(x.to(torch.float64), None, None, out), out)

    def _clamped(self, x: QTensor, out: Grid) -> torch.Tensor:
        """ReLU, ReLU6, Hardtanh, identity: ``round(min(max(x, a), b)) = min(max(round(x),
        round(a)), round(b))`` (rounding is monotone), one fused requantization of the codes."""
        key = (x.grid, out)
        if key not in self._requantizers:
            lo, hi = self.act.clamp  # type: ignore[misc]
            clip: tuple = tuple(None if v is None else out.fmt.round_exact(v / out.step) for v in (lo, hi))
            self._requantizers = {key: (Requantizer([x.grid.step / out.step], out), clip)}  # keep one
        requant, clip = self._requantizers[key]
        return requant([x.codes], self.qname, clip)

    def table(self, inp: Grid, out: Grid) -> torch.Tensor:
        """Output codes for every input code ``kmin..kmax`` (saturated, the output's code dtype),
        cached."""
        key = (inp, out)
        if key not in self._tables:
            kmin, kmax = inp.code_range
            codes = torch.arange(kmin, kmax + 1, dtype=torch.int64)
            values = QTensor(codes, inp).values()
            self._tables = {key: self._certified(values, codes, inp.step, out)}  # keep one pair
        return self._tables[key]

    def _certified(
        self, x64: torch.Tensor, codes: torch.Tensor | None, step: Fraction | None, out: Grid
    ) -> torch.Tensor:
        """Saturated output codes of ``sigma`` at the exact inputs (``codes * step``, or the
        float values themselves), decided from float64 with an error bound and exactly near
        boundaries."""
        y = self.act.f64(x64)
        if codes is not None:
            flat_codes = codes.flatten()
            x_err = 0.0 if is_dyadic(step) else self.act.lipschitz * 2 * U64  # type: ignore[arg-type]

            def exact_x(i: int) -> Fraction:
                return Fraction(int(flat_codes[i].item())) * step  # type: ignore[operator]

        else:
            flat, x_err = x64.flatten(), 0.0

            def exact_x(i: int) -> Fraction:
                return Fraction(flat[i].item())

        sof = fraction_to_float(out.step)
        t_hat = y / sof
        err = ((y.abs() * A.REL_ERR + A.ABS_ERR + x64.abs() * x_err) / sof) * (1 + DIV_ERR)
        err = err + t_hat.abs() * DIV_ERR
        fmt = out.fmt
        k = round_certified(
            fmt,
            t_hat,
            err,
            lambda idx: [A.round_activation(self.act, fmt, exact_x(i), out.step) for i in idx],
            self.qname,
        )
        kmin, kmax = out.code_range
        return as_codes(fmt.saturate_tensor(k, kmin, kmax, self.qname), out)

    def reference(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        if x.grid is not None and self.out_quant is not None:  # once per distinct input code
            grid = self.out_quant.grid()
            step, out_fmt, out_step = x.grid.step, grid.fmt, grid.step
            codes = x.map_codes(lambda k: A.round_activation(self.act, out_fmt, k * step, out_step))
            return RTensor(saturate(as_ints(codes), grid, self.qname), grid)
        values = x.exact()
        if self.out_quant is None:  # a real-valued activation: exact only where it is rational
            if not self.act.rational_everywhere:
                raise UnsupportedModelError(
                    f"reference: {self.qname} ({self.act.name}) has no output format, so its real value "
                    "is transcendental; give QConfig.activation a format"
                )
            return RTensor(np.vectorize(self.act.exact, otypes=[object])(values))
        grid = self.out_quant.grid()
        fmt, step = grid.fmt, grid.step

        def one(v: Fraction) -> int:
            return A.round_activation(self.act, fmt, v, step)

        codes = (
            np.vectorize(one, otypes=[object])(values)
            if values.size
            else np.zeros(values.shape, dtype=object)
        )
        return RTensor(saturate(as_ints(codes), grid, self.qname), grid)

    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = cb.consume(args[0], self.qname)
        return cb.act(self.act, self.out_quant.grid() if self.out_quant is not None else None, x, self.qname)

    def onnx_integer(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        from onnx import TensorProto  # only exports need onnx

        x = em.need_grid(args[0], self.qname)
        if self.out_quant is None:
            raise Unsupported(f"{self.qname}: the integer form needs an output format (QConfig.activation)")
        out = self.out_quant.grid()
        em.check_format(out, self.qname)
        kmin, kmax = x.grid.code_range
        if kmax - kmin >= MAX_TABLE:
            raise Unsupported(f"{self.qname}: activation lookup tables are limited to 16-bit inputs")
        g = em.g
        table = g.const(self.table(x.grid, out).numpy().astype(np.float64))
        idx = g.op("Cast", [g.op("Sub", [x.name, g.const(float(kmin))])], to=TensorProto.INT64)
        return em.value(io, g.op("Gather", [table, idx], "act"), out)

    def onnx_qdq(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        g, a, v = em.g, self.act, args[0].name
        f32 = np.float32
        if a.name == "relu":
            y = g.op("Relu", [v])
        elif a.name == "sigmoid":
            y = g.op("Sigmoid", [v])
        elif a.name == "tanh":
            y = g.op("Tanh", [v])
        elif a.name == "leaky_relu":
            y = g.op("LeakyRelu", [v], alpha=a.param("negative_slope"))
        elif a.name == "elu":
            y = g.op("Elu", [v], alpha=a.param("alpha"))
        elif a.name == "hardtanh":
            lo, hi = g.const(f32(a.param("min_val")), dtype=f32), g.const(f32(a.param("max_val")), dtype=f32)
            y = g.op("Clip", [v, lo, hi])
        elif a.name == "hardsigmoid":
            y = g.op("HardSigmoid", [v], alpha=1 / 6, beta=0.5)
        elif a.name == "hardswish":
            y = g.op("HardSwish", [v])
        elif a.name == "silu":
            y = g.op("Mul", [v, g.op("Sigmoid", [v])])
        elif a.name == "gelu":  # 0.5 x (1 + erf(x / sqrt 2)); opset 17 has no Gelu
            erf = g.op("Erf", [g.op("Mul", [v, g.const(f32(2**-0.5), dtype=f32)])])
            y = g.op(
                "Mul",
                [
                    g.op("Mul", [v, g.const(f32(0.5), dtype=f32)]),
                    g.op("Add", [erf, g.const(f32(1), dtype=f32)]),
                ],
            )
        elif a.name == "softplus":
            beta = g.const(f32(a.param("beta")), dtype=f32)
            y = g.op("Div", [g.op("Softplus", [g.op("Mul", [v, beta])]), beta])
        elif a.name == "mish":
            y = g.op("Mul", [v, g.op("Tanh", [g.op("Softplus", [v])])])
        else:
            raise Unsupported(f"{self.qname}: {a.name} has no QDQ export; use form='integer'")
        if self.out_quant is None:
            return em.value(io, y, None)
        out = self.out_quant.grid()
        return em.value(io, em.fake_quant(y, out, self.qname), out)

    def extra_repr(self) -> str:
        return f"{self.qname!r}, {self.act.name}"
