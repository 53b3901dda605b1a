"""ONNX export of quantized models, and the parity check against onnxruntime.

Two forms of the same network (paper 001 Eq. 7 semantics):

``form="integer"`` (default): the integer form.  Every tensor between layers holds integer codes
(in float64, exact below 2^53).  Linear maps are double ``MatMul`` on codes, convolutions are
``ConvInteger`` (int32 accumulators) or float32 ``Conv`` when the accumulator provably stays below
2^24; biases are integer codes on the accumulator grid; requantization ``round(T * P / Q)`` is
exact rational rounding built from ``Mod`` (``fmod`` is exact), so ties follow the format's rule;
activations are lookup tables (``Gather``) of the exactly rounded activation over every input
code, which makes sigmoid, GELU and the rest exact too.  Outputs are the float64 grid values,
equal to the eval-mode simulation bit for bit.  Requirements, checked at export: every affine
map's input is on a grid (quantize the network input), ``|T| * P < 2^53`` for the rational
multipliers ``s_w s_x / s_out = P / Q`` (true for the observers' 8-significant-bit steps and for
paper 001's ``1/s``), saturating formats, activation inputs of at most 16 bits.

``form="qdq"``: the interoperable QDQ form: ``QuantizeLinear``/``DequantizeLinear`` pairs (int8 or
uint8 storage, per-channel weights on axis 0) around float32 ``MatMul``/``Conv``/activation ops.
ONNX's QuantizeLinear rounds ties to even, so other rounding rules are emitted explicitly
before it, and narrow or sub-8-bit ranges are kept by a ``Clip``.  It computes in float32 like
any QDQ consumer, so it equals the simulation exactly when every step is a power of two, the
activations are piecewise linear and the float32 accumulators stay below 2^24; otherwise
``check_onnx_parity`` reports how many output steps apart they are.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn

from .activations import round_activation
from .fake_quant import FakeQuantize
from .formats import FixedPoint, QuantizationError, fraction_to_float, is_dyadic
from .modules import QuantAct, QuantConv2d, QuantLinear, QuantModule, _QuantAffine
from .quantize import _producer, trace

OPSET = 17
EXACT_F64 = 2**53
EXACT_F32 = 2**24
FORMS = ("integer", "qdq")


def _int_dtype(codes: np.ndarray) -> Any:
    big = float(np.abs(codes).max()) if codes.size else 0.0
    return np.int8 if big <= 127 else np.int16 if big <= 32767 else np.int32


@dataclass
class _Val:
    """An ONNX value: integer codes on ``grid`` (float64 tensor) or real numbers."""

    name: str
    grid: FakeQuantize | None = None


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value: Any, hint: str = "c", dtype: Any = np.float64) -> str:
        """An initializer (identical constants are shared)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.fresh(hint)
            self.inits.append(numpy_helper.from_array(arr, self._consts[key]))
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs: Any) -> str:
        out = self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


# --------------------------------------------------------------------- rounding
def _round_ratio(g: _Graph, n: str, den: str, fmt: FixedPoint) -> str:
    """Exact ``round(n / den)`` with the format's rule (``den > 0`` per element; float64 ops).

    ``fmod`` is exact, so ``q0 = (n - r) / den`` with the floor remainder ``r`` is exact, and the
    rounding decision compares ``2 r`` with ``den`` exactly.
    """
    zero = g.const(0.0)
    if fmt.binary:
        thr = den if fmt.rounding == "floor" else zero
        return g.op("Where", [g.op("GreaterOrEqual", [n, thr]), g.const(1.0), g.const(-1.0)], "bin")
    r = g.op("Mod", [n, den], fmod=1)
    r = g.op("Add", [r, g.op("Mul", [den, g.op("Cast", [g.op("Less", [r, zero])], to=TensorProto.DOUBLE)])])
    q0 = g.op("Div", [g.op("Sub", [n, r]), den], "q0")
    if fmt.rounding == "floor":
        return q0
    two = g.const(2.0)
    twice = g.op("Mul", [r, two])
    above = g.op("Greater", [twice, den])
    tie = g.op("Equal", [twice, den])
    if fmt.rounding == "half_away":
        tie_up = g.op("GreaterOrEqual", [n, zero])
    else:  # half_even: up when q0 is odd
        tie_up = g.op("Not", [g.op("Equal", [g.op("Mod", [q0, two], fmod=1), zero])])
    up = g.op("Or", [above, g.op("And", [tie, tie_up])])
    return g.op("Add", [q0, g.op("Cast", [up], to=TensorProto.DOUBLE)], "k")


def _round_float(g: _Graph, t: str, fmt: FixedPoint) -> str:
    """``FixedPoint.round_tensor`` with ONNX ops on an already computed ratio (QDQ form)."""
    if fmt.binary:
        thr = g.const(1.0 if fmt.rounding == "floor" else 0.0, dtype=np.float32)
        return g.op(
            "Where",
            [
                g.op("GreaterOrEqual", [t, thr]),
                g.const(1.0, dtype=np.float32),
                g.const(-1.0, dtype=np.float32),
            ],
        )
    if fmt.rounding == "half_even":
        return g.op("Round", [t])
    if fmt.rounding == "floor":
        return g.op("Floor", [t])
    mag = g.op("Abs", [t])
    whole = g.op("Floor", [mag])
    half = g.op("GreaterOrEqual", [g.op("Sub", [mag, whole]), g.const(0.5, dtype=np.float32)])
    whole = g.op("Add", [whole, g.op("Cast", [half], to=TensorProto.FLOAT)])
    return g.op("Mul", [whole, g.op("Sign", [t])])


def _clip(g: _Graph, x: str, q: FakeQuantize, dtype: Any = np.float64) -> str:
    kmin, kmax = q.code_range()
    return g.op("Clip", [x, g.const(float(kmin), dtype=dtype), g.const(float(kmax), dtype=dtype)])


def _check_format(q: FakeQuantize) -> None:
    if q.fmt.overflow == "raise":
        raise QuantizationError(
            f"{q.qname}: overflow='raise' has no ONNX equivalent; export needs 'saturate'"
        )


# ------------------------------------------------------------------ integer form
class _IntegerForm:
    """Emits the integer form (see module docstring)."""

    def __init__(self, g: _Graph):
        self.g = g

    def quantize_real(self, x: _Val, q: FakeQuantize) -> _Val:
        """Codes of real values: ``round(x / (P/Q)) = round(x Q / P)``, exact."""
        _check_format(q)
        step = q.steps()[0]
        if step.denominator >= 2**29 or step.numerator >= EXACT_F64:
            raise QuantizationError(f"{q.qname}: step {step} is too fine for exact float64 quantization")
        n = self.g.op("Mul", [x.name, self.g.const(float(step.denominator))])
        k = _round_ratio(self.g, n, self.g.const(float(step.numerator)), q.fmt)
        return _Val(_clip(self.g, k, q), q)

    def affine(self, m: _QuantAffine, x: _Val) -> _Val:
        g = self.g
        if x.grid is None:
            raise QuantizationError(
                f"{m.qname}: the integer form needs this layer's input on a grid; quantize the "
                "network input (QConfig.input) or use form='qdq'"
            )
        if m.weight_quant is None and not m.frozen:
            raise QuantizationError(f"{m.qname}: the integer form needs quantized weights (QConfig.weight)")
        sx = x.grid.steps()[0]
        kw = m.weight_codes().numpy()
        scale = [s * sx for s in m.weight_steps()]
        bias = m.bias_codes(scale)
        conv = isinstance(m, QuantConv2d)
        ch = [1, -1, 1, 1] if conv else [-1]
        kx_max = max(abs(v) for v in x.grid.code_range())
        bmax = float(bias.abs().max()) if bias is not None else 0.0
        t_max = kw[0].size * float(np.abs(kw).max()) * kx_max + bmax
        if conv:
            acc = self._conv(m, x, kw, t_max)
        else:  # integer initializer (small file), cast to float64 (exact) for MatMul
            wt = g.op("Cast", [g.const(kw.T, dtype=_int_dtype(kw))], to=TensorProto.DOUBLE)
            acc = g.op("MatMul", [x.name, wt])
        if bias is not None:
            acc = g.op("Add", [acc, g.const(bias.numpy().reshape(ch))])
        if m.out_quant is None:
            raise QuantizationError(
                f"{m.qname}: the integer form needs an output format (QConfig.activation)"
            )
        _check_format(m.out_quant)
        so = m.out_quant.steps()[0]
        mult = [s / so for s in scale]
        p_max = max(f.numerator for f in mult)
        if t_max * p_max >= EXACT_F64 or max(f.denominator for f in mult) >= EXACT_F64:
            raise QuantizationError(
                f"{m.qname}: requantization multipliers s_w*s_x/s_out need |T|*P < 2^53 for exact "
                f"integer arithmetic (here |T| <= {t_max:.3g}, P <= {p_max}); use steps with few "
                "significant bits (the observers' default) or power-of-two steps"
            )
        num = g.const(np.array([float(f.numerator) for f in mult]).reshape(ch))
        den = g.const(np.array([float(f.denominator) for f in mult]).reshape(ch))
        k = _round_ratio(g, g.op("Mul", [acc, num]), den, m.out_quant.fmt)
        return _Val(_clip(g, k, m.out_quant), m.out_quant)

    def _conv(self, m: QuantConv2d, x: _Val, kw: np.ndarray, t_max: float) -> str:
        g = self.g
        attrs = {
            "strides": list(m.stride),
            "pads": [m.padding[0], m.padding[1], m.padding[0], m.padding[1]],
            "dilations": list(m.dilation),
            "group": m.groups,
        }
        kmin_x, kmax_x = x.grid.code_range()
        if kmax_x - kmin_x <= 255 and float(np.abs(kw).max()) <= 127:
            # ConvInteger: uint8 codes shifted by -kmin, int8 weights, exact int32 accumulators
            # every grid holds 0, so kmin <= 0 and the shifted zero point -kmin is in [0, 255]
            xu = g.op("Cast", [g.op("Sub", [x.name, g.const(float(kmin_x))])], to=TensorProto.UINT8)
            zp = g.const(-kmin_x, dtype=np.uint8)
            out = g.op(
                "ConvInteger",
                [xu, g.const(kw, dtype=np.int8), zp, g.const(np.int8(0), dtype=np.int8)],
                **attrs,
            )
            return g.op("Cast", [out], to=TensorProto.DOUBLE)
        if t_max >= EXACT_F32:
            raise QuantizationError(
                f"{m.qname}: codes wider than 8 bits with accumulators up to {t_max:.3g} >= 2^24 have "
                "no exact ONNX convolution (ConvInteger is 8-bit, Conv float32)"
            )
        xf = g.op("Cast", [x.name], to=TensorProto.FLOAT)
        out = g.op("Conv", [xf, g.const(kw, dtype=np.float32)], **attrs)
        return g.op("Cast", [out], to=TensorProto.DOUBLE)

    def act(self, m: QuantAct, x: _Val) -> _Val:
        g = self.g
        if m.out_quant is None or x.grid is None:
            raise QuantizationError(
                f"{m.qname}: the integer form needs the activation's input and output on grids"
            )
        _check_format(m.out_quant)
        kmin, kmax = x.grid.code_range()
        if kmax - kmin >= 2**16:
            raise QuantizationError(f"{m.qname}: activation lookup tables are limited to 16-bit inputs")
        s_in, s_out, out = x.grid.steps()[0], m.out_quant.steps()[0], m.out_quant
        table = [
            out.fmt.saturate_exact(round_activation(m.act, out.fmt, k * s_in, s_out), out.zp)
            for k in range(kmin, kmax + 1)
        ]
        idx = g.op("Cast", [g.op("Sub", [x.name, g.const(float(kmin))])], to=TensorProto.INT64)
        return _Val(g.op("Gather", [g.const(np.array(table, dtype=np.float64)), idx], "act"), out)

    def output(self, v: _Val) -> str:
        if v.grid is None:
            return v.name
        step = v.grid.steps()[0]
        if is_dyadic(step):
            return self.g.op("Mul", [v.name, self.g.const(fraction_to_float(step))], "y")
        return self.g.op(
            "Div",
            [
                self.g.op("Mul", [v.name, self.g.const(float(step.numerator))]),
                self.g.const(float(step.denominator)),
            ],
            "y",
        )

    def input(self, name: str) -> _Val:
        return _Val(self.g.op("Cast", [name], to=TensorProto.DOUBLE, hint="x64"))

    def maxpool(self, v: _Val, **attrs: Any) -> _Val:
        return _Val(self.g.op("MaxPool", [v.name], **attrs), v.grid)

    def avgpool(self, v: _Val, op: str, **attrs: Any) -> _Val:
        raise QuantizationError(
            "average pooling leaves the grid, so the next layer's input has no integer codes; "
            "export with form='qdq' (or use max pooling)"
        )


# --------------------------------------------------------------------- QDQ form
class _QDQForm:
    """Emits the QDQ form (see module docstring): float32 values between Q/DQ pairs."""

    def __init__(self, g: _Graph):
        self.g = g

    def _storage(self, q: FakeQuantize) -> tuple[Any, int]:
        kmin, kmax = q.code_range()
        zp = q.zp
        lo, hi = kmin + zp, kmax + zp
        if -128 <= lo and hi <= 127:
            return np.int8, zp
        if 0 <= lo and hi <= 255:
            return np.uint8, zp
        raise QuantizationError(f"{q.qname}: the QDQ form stores 8-bit codes; {q.fmt.describe()} is wider")

    def fake_quant(self, x: str, q: FakeQuantize) -> str:
        """QuantizeLinear/DequantizeLinear with the format's rounding and range."""
        _check_format(q)
        g = self.g
        dtype, zp = self._storage(q)
        s = g.const(np.float32(fraction_to_float(q.steps()[0])), dtype=np.float32)
        if q.fmt.rounding != "half_even" or q.fmt.binary:  # round explicitly, then Q is exact
            k = _clip(g, _round_float(g, g.op("Div", [x, s]), q.fmt), q, np.float32)
            x = g.op("Mul", [k, s])
        else:
            kmin, kmax = q.code_range()
            x = g.op(
                "Clip",
                [
                    x,
                    g.op("Mul", [g.const(float(kmin), dtype=np.float32), s]),
                    g.op("Mul", [g.const(float(kmax), dtype=np.float32), s]),
                ],
            )
        zpc = g.const(np.array(zp, dtype=dtype), dtype=dtype)
        return g.op("DequantizeLinear", [g.op("QuantizeLinear", [x, s, zpc], "q"), s, zpc], "dq")

    def quantize_real(self, x: _Val, q: FakeQuantize) -> _Val:
        return _Val(self.fake_quant(x.name, q), q)

    def affine(self, m: _QuantAffine, x: _Val) -> _Val:
        g = self.g
        if m.weight_quant is not None or m.frozen:
            kw = m.weight_codes().numpy()
            if np.abs(kw).max() > 127:
                raise QuantizationError(f"{m.qname}: the QDQ form stores 8-bit weights")
            steps = np.array([fraction_to_float(f) for f in m.weight_steps()], dtype=np.float32)
            w = g.op(
                "DequantizeLinear",
                [
                    g.const(kw, dtype=np.int8),
                    g.const(steps, dtype=np.float32),
                    g.const(np.zeros(len(steps)), dtype=np.int8),
                ],
                "w",
                axis=0,
            )
        else:
            w = g.const(m.weight.detach().numpy(), dtype=np.float32)
        conv = isinstance(m, QuantConv2d)
        ch = [1, -1, 1, 1] if conv else [-1]
        if x.grid is not None and (m.weight_quant is not None or m.frozen):
            scale = [s * x.grid.steps()[0] for s in m.weight_steps()]
            codes = m.bias_codes(scale)
            bias = (
                None
                if codes is None
                else (codes * torch.tensor([float(f) for f in scale], dtype=torch.float64)).numpy()
            )
        else:
            bias = None if m.bias is None else m.bias.detach().double().numpy()
        if conv:
            attrs = {
                "strides": list(m.stride),
                "dilations": list(m.dilation),
                "group": m.groups,
                "pads": [m.padding[0], m.padding[1], m.padding[0], m.padding[1]],
            }
            y = g.op("Conv", [x.name, w], **attrs)
        else:
            y = g.op("Gemm", [x.name, w], transB=1)
        if bias is not None:
            y = g.op("Add", [y, g.const(bias.reshape(ch), dtype=np.float32)])
        if m.out_quant is None:
            return _Val(y)
        return _Val(self.fake_quant(y, m.out_quant), m.out_quant)

    def act(self, m: QuantAct, x: _Val) -> _Val:
        g, a = self.g, m.act
        ops = {
            "relu": lambda v: g.op("Relu", [v]),
            "identity": lambda v: v,
            "sigmoid": lambda v: g.op("Sigmoid", [v]),
            "tanh": lambda v: g.op("Tanh", [v]),
            "leaky_relu": lambda v: g.op("LeakyRelu", [v], alpha=a.param("negative_slope")),
            "elu": lambda v: g.op("Elu", [v], alpha=a.param("alpha")),
            "hardtanh": lambda v: g.op(
                "Clip",
                [
                    v,
                    g.const(np.float32(a.param("min_val")), dtype=np.float32),
                    g.const(np.float32(a.param("max_val")), dtype=np.float32),
                ],
            ),
        }
        if a.name not in ops:
            raise QuantizationError(f"{m.qname}: {a.name} has no QDQ export; use form='integer'")
        y = ops[a.name](x.name)
        return _Val(self.fake_quant(y, m.out_quant), m.out_quant) if m.out_quant is not None else _Val(y)

    def output(self, v: _Val) -> str:
        return self.g.op("Cast", [v.name], to=TensorProto.DOUBLE, hint="y")

    def input(self, name: str) -> _Val:
        return _Val(name)

    def maxpool(self, v: _Val, **attrs: Any) -> _Val:
        return _Val(self.g.op("MaxPool", [v.name], **attrs), v.grid)

    def avgpool(self, v: _Val, op: str, **attrs: Any) -> _Val:
        """Average pooling in float32 (its output is a real number, as in the simulation)."""
        return _Val(self.g.op(op, [v.name], **attrs))


# ------------------------------------------------------------------------ export
def _pair(v: Any) -> list[int]:
    return list(v) if isinstance(v, tuple) else [v, v]


def export_onnx(
    qmodel: nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    form: str = "integer",
    opset: int = OPSET,
) -> onnx.ModelProto:
    """Write ``qmodel`` (eval semantics) to ``path`` as ONNX and return the checked model.

    The graph input ``x`` has ``example_input``'s shape with a dynamic batch dimension; the
    output ``y`` is float64.  See the module docstring for the two forms.
    """
    if form not in FORMS:
        raise QuantizationError(f"form must be one of {FORMS}, got {form!r}")
    g = _Graph()
    emit = _IntegerForm(g) if form == "integer" else _QDQForm(g)
    gm = trace(qmodel) if not isinstance(qmodel, QuantModule) else None
    env: dict[str, Any] = {}
    out_val: _Val | None = None

    def run_module(mod: nn.Module, v: _Val) -> _Val:
        if isinstance(mod, QuantModule) and mod.in_quant is not None:
            v = emit.quantize_real(v, mod.in_quant)
        if isinstance(mod, (QuantLinear, QuantConv2d)):
            return emit.affine(mod, v)
        if isinstance(mod, QuantAct):
            return emit.act(mod, v)
        if isinstance(mod, nn.Flatten):
            return _flatten(v, mod.start_dim, mod.end_dim)
        if isinstance(mod, (nn.Dropout, nn.Identity)):
            return v
        if isinstance(mod, nn.MaxPool2d):
            if mod.ceil_mode or mod.return_indices:
                raise QuantizationError("MaxPool2d(ceil_mode/return_indices) is not exported")
            k, s, p, d = (
                _pair(mod.kernel_size),
                _pair(mod.stride or mod.kernel_size),
                _pair(mod.padding),
                _pair(mod.dilation),
            )
            return emit.maxpool(v, kernel_shape=k, strides=s, pads=p + p, dilations=d)
        if isinstance(mod, nn.AvgPool2d) and not mod.ceil_mode and mod.count_include_pad:
            k, s, p = _pair(mod.kernel_size), _pair(mod.stride or mod.kernel_size), _pair(mod.padding)
            return emit.avgpool(v, "AveragePool", kernel_shape=k, strides=s, pads=p + p)
        if isinstance(mod, nn.AdaptiveAvgPool2d) and _pair(mod.output_size) == [1, 1]:
            return emit.avgpool(v, "GlobalAveragePool")
        raise QuantizationError(f"export_onnx: unsupported module {type(mod).__name__}")

    def _flatten(v: _Val, start: int, end: int) -> _Val:
        if end != -1:
            raise QuantizationError("export_onnx: flatten with end_dim != -1 is not supported")
        return _Val(g.op("Flatten", [v.name], axis=start), v.grid)

    x_in = emit.input("x")
    if gm is None:
        out_val = run_module(qmodel, x_in)
    else:
        for node in gm.graph.nodes:
            args = fx.node.map_arg(node.args, lambda n: env[n.name])
            if node.op == "placeholder":
                env[node.name] = x_in
            elif node.op == "call_module":
                env[node.name] = run_module(qmodel.get_submodule(node.target), args[0])
            elif node.op == "call_function" and node.target is torch.flatten:
                env[node.name] = _flatten(args[0], *(list(args[1:]) + [1, -1][len(args) - 1 :]))
            elif node.op == "call_method" and node.target == "flatten":
                env[node.name] = _flatten(args[0], *(list(args[1:]) + [0, -1][len(args) - 1 :]))
            elif node.op == "call_method" and node.target in ("view", "reshape"):
                dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
                shape = [0 if isinstance(d, tuple) else int(d) for d in dims]
                env[node.name] = _Val(
                    g.op("Reshape", [args[0].name, g.const(shape, dtype=np.int64)]), args[0].grid
                )
            elif node.op == "call_method" and node.target == "size":
                env[node.name] = (0,)  # a batch-size placeholder: Reshape's 0 copies the dimension
            elif (
                node.op == "call_function" and node.target is operator.getitem and isinstance(args[0], tuple)
            ):
                env[node.name] = args[0]
            elif node.op == "output":
                out_val = args[0]
            else:
                raise QuantizationError(f"export_onnx: unsupported operation {node.op} {node.target}")
    y = emit.output(out_val)
    shape = ["batch", *example_input.shape[1:]]
    graph = helper.make_graph(
        g.nodes,
        "torchqv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(y, TensorProto.DOUBLE, None)],
        g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="torchqv",
        doc_string=f"torchqv {form} form",
    )
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return model


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file as untrusted input: parse errors and checker failures become clear errors."""
    path = Path(path)
    if not path.is_file():
        raise QuantizationError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise QuantizationError(f"{path}: not a readable ONNX model ({exc})") from exc
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise QuantizationError(f"{path}: fails onnx.checker: {exc}") from exc
    return model


@dataclass
class ParityReport:
    """How far onnxruntime's outputs are from the eval-mode simulation's."""

    max_abs_diff: float
    max_step_diff: float
    mismatched: int
    total: int

    @property
    def exact(self) -> bool:
        return self.mismatched == 0


def check_onnx_parity(
    qmodel: nn.Module, path: str | Path, inputs: torch.Tensor, optimize: bool = True
) -> ParityReport:
    """Run the exported file in onnxruntime (CPU) and the simulation on ``inputs``; report the
    maximum difference in output steps (of the model's output format; absolute if it has none)."""
    import onnxruntime as ort

    model = load_onnx(path)
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: inputs.float().numpy()})[0])
    was = qmodel.training
    with torch.no_grad():
        want = qmodel.eval()(inputs.float())
    qmodel.train(was)
    diff = (got.double() - want.double()).abs()
    step = _output_step(qmodel)
    return ParityReport(
        float(diff.max()), float(diff.max() / step) if step else math.nan, int((diff > 0).sum()), diff.numel()
    )


def _output_step(qmodel: nn.Module) -> float | None:
    """The step of the model's output grid (``None`` if the output is real-valued)."""
    if isinstance(qmodel, QuantModule):
        out = qmodel.out_quant
    else:
        gm = trace(qmodel)
        result = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        src = _producer(result, gm) if isinstance(result, fx.Node) else None
        mod = qmodel.get_submodule(src.target) if src is not None and src.op == "call_module" else None
        out = mod.out_quant if isinstance(mod, QuantModule) else None
    return fraction_to_float(out.steps()[0]) if out is not None else None
