"""``from_onnx``: an ONNX file as an ordinary ``nn.Module`` (an ``fx.GraphModule``).

The model, a file or an in-memory ``ModelProto``, is treated as untrusted (``torchqv.load_onnx`` and
``check_onnx``: parse errors and ``onnx.checker`` failures are clear errors; unsupported operators,
domains and opsets are listed).  Layers with
constant weights become real modules (``Gemm``/``MatMul`` [+ ``Add``] -> ``nn.Linear``, ``Conv``
-> ``nn.Conv2d``, ``Relu`` -> ``nn.ReLU``, ``Flatten`` -> ``nn.Flatten``), so the imported network
can be quantized with ``torchqv.quantize`` and verified, as do ``LeakyRelu`` (``nn.LeakyReLU``) and
``Clip`` with constant bounds (``nn.Hardtanh``; ``nn.ReLU`` for ``[0, inf)``); an ``Identity`` of a
constant is that constant (a Gemm whose weight or bias passes through one is still a layer);
everything else runs as torch functions with ONNX semantics (integer ``Div`` truncates toward zero),
which also reads back torchqv's own exports (QDQ and integer forms).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import ExportError
from ..extras import require

if TYPE_CHECKING:
    import onnx
    from onnx import numpy_helper
else:
    onnx = require("onnx", "torchqv.from_onnx")
    numpy_helper = require("onnx.numpy_helper", "torchqv.from_onnx")

from ..export import check_onnx, load_onnx

OPSETS = range(7, 23)
DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}
INT_RANGES = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int32: (-(2**31), 2**31 - 1)}


# ------------------------------------------------------------ ONNX semantics
def _quantize_linear(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, axis: int) -> torch.Tensor:
    """QuantizeLinear: saturate(round_half_even(x / scale) + zp) in zp's integer type."""
    shape = _axis_shape(x, scale, axis)
    q = torch.round(x / scale.reshape(shape)) + zp.reshape(shape).to(x.dtype)
    lo, hi = INT_RANGES[zp.dtype]
    return q.clamp(lo, hi).to(zp.dtype)


def _dequantize_linear(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, axis: int) -> torch.Tensor:
    shape = _axis_shape(q, scale, axis)
    return (q.to(torch.float32) - zp.reshape(shape).to(torch.float32)) * scale.reshape(shape)


def _axis_shape(x: torch.Tensor, scale: torch.Tensor, axis: int) -> list[int]:
    if scale.numel() == 1:
        return []
    shape = [1] * x.dim()
    shape[axis % x.dim()] = scale.numel()
    return shape


def _gemm(a, b, c, alpha: float, beta: float, trans_a: int, trans_b: int):
    a = a.transpose(0, 1) if trans_a else a
    b = b.transpose(0, 1) if trans_b else b
    y = alpha * (a @ b) if alpha != 1.0 else a @ b
    return y if c is None else y + (beta * c if beta != 1.0 else c)


def _conv(x, w, b, strides, pads, dilations, group):
    pad = _symmetric_pads(pads)
    return F.conv2d(x, w.to(x.dtype), None if b is None else b.to(x.dtype), strides, pad, dilations, group)


def _conv_integer(x, w, xz, wz, strides, pads, dilations, group):
    """ConvInteger: exact integer convolution of (x - x_zero) and (w - w_zero), in int32."""
    xd = x.to(torch.float64) - (xz.to(torch.float64) if xz is not None else 0)
    wd = w.to(torch.float64) - (wz.to(torch.float64) if wz is not None else 0)
    pad = _symmetric_pads(pads)
    return F.conv2d(xd, wd, None, strides, pad, dilations, group).to(torch.int32)


def _matmul_integer(a, b, az=None, bz=None):
    """MatMulInteger: exact integer product of (a - a_zero) and (b - b_zero), in int32 (float64
    products and sums of 8-bit codes are exact)."""
    ad = a.to(torch.float64) - (az.to(torch.float64) if az is not None else 0)
    bd = b.to(torch.float64) - (bz.to(torch.float64) if bz is not None else 0)
    return (ad @ bd).to(torch.int32)


def _symmetric_pads(pads: list[int]) -> list[int]:
    half = len(pads) // 2
    if list(pads[:half]) != list(pads[half:]):
        raise ExportError(f"asymmetric padding {pads} is not supported")
    return list(pads[:half])


def _maxpool(x, kernel, strides, pads, dilations, ceil_mode):
    return F.max_pool2d(x, kernel, strides, _symmetric_pads(pads), dilations, bool(ceil_mode))


def _avgpool(x, kernel, strides, pads, ceil_mode):
    return F.avg_pool2d(x, kernel, strides, _symmetric_pads(pads), bool(ceil_mode), count_include_pad=True)


def _global_avgpool(x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _flatten(x, axis: int):
    axis = axis % x.dim() if x.dim() else 0
    return x.reshape(int(math.prod(x.shape[:axis])), -1)


def _reshape(x, shape):
    dims = [int(d) for d in shape.tolist()]
    dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _clip(x, lo=None, hi=None):
    if lo is not None:
        x = torch.maximum(x, lo.to(x.dtype))
    if hi is not None:
        x = torch.minimum(x, hi.to(x.dtype))
    return x


def _int_div(a, b):
    """ONNX Div of integers: the quotient truncated toward zero (as C and onnxruntime)."""
    return torch.div(a, b, rounding_mode="trunc")


def _div(a, b):
    """ONNX Div of values whose type the model does not state: decided by the tensors' dtypes."""
    if not (torch.as_tensor(a).is_floating_point() or torch.as_tensor(b).is_floating_point()):
        return _int_div(a, b)
    return torch.div(a, b)


def _mod(a, b, fmod: int):
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


def _transpose(x, perm):
    return x.permute(*(perm if perm is not None else reversed(range(x.dim()))))


def _cast(x, dtype: torch.dtype):
    return x.to(dtype)


def _gather(data, idx, axis: int):
    return torch.index_select(data, axis, idx.reshape(-1).long()).reshape(
        (*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :])
    )


class _Importer:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[str, Any] = {}
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in model.graph.initializer
        }
        inferred = onnx.shape_inference.infer_shapes(model)
        self.types: dict[str, int] = {
            v.name: v.type.tensor_type.elem_type
            for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
        }
        self.uses: dict[str, int] = {}
        for node in model.graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        self._n = 0

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const_node(self, name: str) -> fx.Node:
        attr = self.fresh("const")
        self.root.register_buffer(attr, torch.from_numpy(np.array(self.consts[name])))
        return self.graph.get_attr(attr)

    def value(self, name: str) -> Any:
        if name == "":
            return None
        if name in self.env:
            return self.env[name]
        if name in self.consts:
            self.env[name] = self.const_node(name)
            return self.env[name]
        raise ExportError(f"ONNX graph uses {name!r} before it is defined")

    def is_integer(self, name: str) -> bool | None:
        """Does the value hold integers (``None``: the model does not say)?"""
        if name in self.consts:
            return np.asarray(self.consts[name]).dtype.kind in "iub"
        dtype = DTYPES.get(self.types.get(name, 0))
        return None if dtype is None else not dtype.is_floating_point

    def module(self, mod: nn.Module, hint: str, x: Any) -> fx.Node:
        name = self.fresh(hint)
        self.root.add_module(name, mod)
        return self.graph.call_module(name, (x,))

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> fx.Node:
        return self.graph.call_function(fn, args, kwargs)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _linear_from(w: np.ndarray, b: np.ndarray | None) -> nn.Linear:
    """``y = x @ w (+ b)`` as nn.Linear (weight ``w.T``; ``b`` a row bias, see :func:`_row_bias`)."""
    lin = nn.Linear(w.shape[0], w.shape[1], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.array(w.T, dtype=np.float32)))
        if b is not None:
            lin.bias.copy_(
                torch.from_numpy(np.array(np.broadcast_to(b.reshape(-1), (w.shape[1],)), dtype=np.float32))
            )
    return lin


def _row_bias(c: np.ndarray, n: int | None) -> bool:
    """Is ``c`` the same bias for every row of an ``(M, n)`` result (shape ``()``, ``(1,)``, ``(n,)``,
    ``(1, 1)`` or ``(1, n)``), so that the product is an ``nn.Linear``?"""
    return c.ndim <= 2 and (c.ndim < 2 or c.shape[0] == 1) and c.size in (1, n)


def from_onnx(source: str | Path | onnx.ModelProto) -> fx.GraphModule:
    """Import an ONNX model, a file or a ``ModelProto`` (both checked by ``onnx.checker`` as
    untrusted input), as a ``torch.fx.GraphModule``."""
    if not isinstance(source, (str, Path, onnx.ModelProto)):
        raise ExportError(
            f"from_onnx(source): expected a file path or an onnx.ModelProto, got {type(source).__name__}"
        )
    model = (
        check_onnx(source, "from_onnx(source)") if isinstance(source, onnx.ModelProto) else load_onnx(source)
    )
    opsets = {o.domain or "": o.version for o in model.opset_import}
    if set(opsets) - {"", "ai.onnx"}:
        raise ExportError(f"unsupported operator domains {sorted(set(opsets) - {'', 'ai.onnx'})}")
    version = opsets.get("", opsets.get("ai.onnx", 0))
    if version not in OPSETS:
        raise ExportError(
            f"ONNX opset {version} is not supported (supported: {OPSETS.start}-{OPSETS.stop - 1})"
        )
    known = set(HANDLERS)
    unsupported = sorted({n.op_type for n in model.graph.node} - known)
    if unsupported:
        raise ExportError(f"unsupported ONNX operators {unsupported}; supported: {sorted(known)}")
    imp = _Importer(model)
    inputs = [i for i in model.graph.input if i.name not in imp.consts]
    for k, i in enumerate(inputs):
        imp.env[i.name] = imp.graph.placeholder("x" if len(inputs) == 1 else f"x{k}")
    nodes = list(model.graph.node)
    k = 0
    while k < len(nodes):
        node = nodes[k]
        consumed = HANDLERS[node.op_type](imp, node, nodes[k + 1 :])
        k += 1 + consumed
    outs = [imp.value(o.name) for o in model.graph.output]
    imp.graph.output(outs[0] if len(outs) == 1 else tuple(outs))
    gm = fx.GraphModule(imp.root, imp.graph, class_name="OnnxModel")
    gm.graph.lint()
    return gm


# ----------------------------------------------------------------- handlers
def _h_gemm(imp: _Importer, node, rest) -> int:
    a = _attrs(node)
    x_name, w_name = node.input[0], node.input[1]
    c_name = node.input[2] if len(node.input) > 2 else ""
    ta, tb = a.get("transA", 0), a.get("transB", 0)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    w_const = imp.consts.get(w_name)
    n_out = None if w_const is None else w_const.shape[0 if tb else 1]
    c_const = imp.consts.get(c_name) if c_name else None
    if w_const is not None and not ta and (not c_name or (c_const is not None and _row_bias(c_const, n_out))):
        w = (w_const.T if tb else w_const) * alpha
        b = c_const * beta if c_const is not None else None  # c_const is given with c_name
        imp.env[node.output[0]] = imp.module(_linear_from(w, b), "gemm", imp.value(x_name))
        return 0
    imp.env[node.output[0]] = imp.call(
        _gemm, imp.value(x_name), imp.value(w_name), imp.value(c_name), alpha, beta, ta, tb
    )
    return 0


def _h_matmul(imp: _Importer, node, rest) -> int:
    x_name, w_name = node.input
    if w_name in imp.consts and imp.consts[w_name].ndim == 2:
        w = imp.consts[w_name]
        bias, consumed = None, 0
        nxt = rest[0] if rest else None
        if (
            nxt is not None
            and nxt.op_type == "Add"
            and node.output[0] in nxt.input
            and imp.uses.get(node.output[0], 0) == 1
        ):
            other = [n for n in nxt.input if n != node.output[0]]
            if other and other[0] in imp.consts and imp.consts[other[0]].size == w.shape[1]:
                bias, consumed = imp.consts[other[0]].reshape(-1), 1
        out = imp.module(_linear_from(w, bias), "matmul", imp.value(x_name))
        imp.env[(nxt.output[0] if nxt is not None and consumed else node.output[0])] = out
        return consumed
    imp.env[node.output[0]] = imp.call(torch.matmul, imp.value(x_name), imp.value(w_name))
    return 0


def _h_conv(imp: _Importer, node, rest) -> int:
    a = _attrs(node)
    kernel = imp.consts.get(node.input[1])
    strides = list(a.get("strides", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    dil = list(a.get("dilations", [1, 1]))
    group = a.get("group", 1)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ExportError(f"Conv {node.name!r}: auto_pad is not supported; give explicit pads")
    bias_name = node.input[2] if len(node.input) > 2 else ""
    if kernel is not None and kernel.ndim == 4 and (not bias_name or bias_name in imp.consts):
        conv = nn.Conv2d(
            kernel.shape[1] * group,
            kernel.shape[0],
            kernel.shape[2:],
            tuple(strides),
            tuple(_symmetric_pads(pads)),  # type: ignore[arg-type]  # two pads (a 2-d kernel)
            tuple(dil),
            group,
            bias=bool(bias_name),
        )
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(kernel).float())
            if bias_name:
                assert conv.bias is not None  # bias=True
                conv.bias.copy_(torch.from_numpy(imp.consts[bias_name]).float())
        imp.env[node.output[0]] = imp.module(conv, "conv", imp.value(node.input[0]))
        return 0
    imp.env[node.output[0]] = imp.call(
        _conv,
        imp.value(node.input[0]),
        imp.value(node.input[1]),
        imp.value(bias_name),
        strides,
        pads,
        dil,
        group,
    )
    return 0


def _simple(fn: Callable, n_in: int | None = None, **fixed: Any) -> Callable:
    def handler(imp: _Importer, node, rest) -> int:
        args = [imp.value(i) for i in node.input[: n_in or len(node.input)]]
        imp.env[node.output[0]] = imp.call(fn, *args, **fixed)
        return 0

    return handler


def _h_div(imp, node, rest) -> int:
    integer = imp.is_integer(node.input[0])
    if integer is None:
        integer = imp.is_integer(node.input[1])
    fn = _div if integer is None else _int_div if integer else torch.div
    imp.env[node.output[0]] = imp.call(fn, imp.value(node.input[0]), imp.value(node.input[1]))
    return 0


def _h_relu(imp, node, rest) -> int:
    imp.env[node.output[0]] = imp.module(nn.ReLU(), "relu", imp.value(node.input[0]))
    return 0


def _h_flatten(imp, node, rest) -> int:
    axis = _attrs(node).get("axis", 1)
    x = imp.value(node.input[0])
    imp.env[node.output[0]] = (
        imp.module(nn.Flatten(axis), "flatten", x) if axis == 1 else imp.call(_flatten, x, axis)
    )
    return 0


def _h_identity(imp, node, rest) -> int:
    src = node.input[0]
    if src in imp.consts and src not in imp.env:  # a constant stays a constant (Gemm weights, biases)
        imp.consts[node.output[0]] = imp.consts[src]
        return 0
    imp.env[node.output[0]] = imp.value(src)
    return 0


def _h_leaky_relu(imp, node, rest) -> int:
    alpha = float(_attrs(node).get("alpha", 0.01))
    imp.env[node.output[0]] = imp.module(nn.LeakyReLU(alpha), "leaky_relu", imp.value(node.input[0]))
    return 0


def _scalar_const(imp: _Importer, name: str) -> float | None:
    """The value of a constant scalar input (``None``: absent or not a constant scalar)."""
    if not name or name not in imp.consts or np.asarray(imp.consts[name]).size != 1:
        return None
    value = float(np.asarray(imp.consts[name]).reshape(()))
    return value if math.isfinite(value) else None


def _h_clip(imp, node, rest) -> int:
    """``Clip`` with constant bounds is a module (``nn.Hardtanh``, or ``nn.ReLU`` for ``[0, inf)``),
    so the verifier and the integer reference read it; anything else runs as a function."""
    a = _attrs(node)
    if len(node.input) > 1 or not a:  # opset >= 11: bounds as inputs
        names = list(node.input[1:3]) + [""] * (3 - len(node.input))
        lo, hi = (_scalar_const(imp, n) for n in names[:2])
        lo_given, hi_given = bool(names[0]), bool(names[1])
    else:  # opset < 11: attributes
        lo, hi = a.get("min"), a.get("max")
        lo_given, hi_given = lo is not None, hi is not None
        lo = float(lo) if lo is not None else None
        hi = float(hi) if hi is not None else None
    x = imp.value(node.input[0])
    fits = (lo is not None or not lo_given) and (hi is not None or not hi_given)
    if fits and lo is not None and hi is not None and lo <= hi:
        imp.env[node.output[0]] = imp.module(nn.Hardtanh(lo, hi), "clip", x)
        return 0
    if fits and lo == 0.0 and not hi_given:
        imp.env[node.output[0]] = imp.module(nn.ReLU(), "clip", x)
        return 0
    imp.env[node.output[0]] = imp.call(_clip, *[imp.value(i) for i in node.input])
    return 0


def _h_constant(imp, node, rest) -> int:
    imp.consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
    return 0


def _h_attrs(fn: Callable, *names: tuple[str, Any]) -> Callable:
    def handler(imp: _Importer, node, rest) -> int:
        a = _attrs(node)
        extra = [a.get(k, d) for k, d in names]
        args = [imp.value(i) for i in node.input]
        imp.env[node.output[0]] = imp.call(fn, *args, *extra)
        return 0

    return handler


def _h_cast(imp, node, rest) -> int:
    to = _attrs(node)["to"]
    if to not in DTYPES:
        raise ExportError(f"Cast {node.name!r}: unsupported target type {to}")
    imp.env[node.output[0]] = imp.call(_cast, imp.value(node.input[0]), DTYPES[to])
    return 0


def _h_quant(fn: Callable) -> Callable:
    def handler(imp: _Importer, node, rest) -> int:
        args = [imp.value(i) for i in node.input]
        if len(args) < 3:
            raise ExportError(f"{node.op_type} {node.name!r} needs an explicit zero point")
        imp.env[node.output[0]] = imp.call(fn, *args[:3], _attrs(node).get("axis", 1))
        return 0

    return handler


def _h_maxpool(imp, node, rest) -> int:
    a = _attrs(node)
    imp.env[node.output[0]] = imp.call(
        _maxpool,
        imp.value(node.input[0]),
        list(a["kernel_shape"]),
        list(a.get("strides", a["kernel_shape"])),
        list(a.get("pads", [0, 0, 0, 0])),
        list(a.get("dilations", [1, 1])),
        a.get("ceil_mode", 0),
    )
    return 0


def _h_conv_integer(imp, node, rest) -> int:
    a = _attrs(node)
    args = [imp.value(i) for i in node.input] + [None] * (4 - len(node.input))
    imp.env[node.output[0]] = imp.call(
        _conv_integer,
        *args[:4],
        list(a.get("strides", [1, 1])),
        list(a.get("pads", [0, 0, 0, 0])),
        list(a.get("dilations", [1, 1])),
        a.get("group", 1),
    )
    return 0


HANDLERS: dict[str, Callable] = {
    "Gemm": _h_gemm,
    "MatMul": _h_matmul,
    "Conv": _h_conv,
    "Relu": _h_relu,
    "Flatten": _h_flatten,
    "Identity": _h_identity,
    "Constant": _h_constant,
    "Reshape": _simple(_reshape),
    "Add": _simple(operator.add),
    "Sub": _simple(operator.sub),
    "Mul": _simple(operator.mul),
    "Div": _h_div,
    "Abs": _simple(torch.abs),
    "Sign": _simple(torch.sign),
    "Floor": _simple(torch.floor),
    "Round": _simple(torch.round),
    "Clip": _h_clip,
    "Sigmoid": _simple(torch.sigmoid),
    "Tanh": _simple(torch.tanh),
    "Where": _simple(torch.where),
    "Greater": _simple(torch.gt),
    "GreaterOrEqual": _simple(torch.ge),
    "Less": _simple(torch.lt),
    "Equal": _simple(torch.eq),
    "Not": _simple(torch.logical_not),
    "And": _simple(torch.logical_and),
    "Or": _simple(torch.logical_or),
    "Transpose": _h_attrs(_transpose, ("perm", None)),
    "LeakyRelu": _h_leaky_relu,
    "Elu": _h_attrs(F.elu, ("alpha", 1.0)),
    "Mod": _h_attrs(_mod, ("fmod", 0)),
    "Gather": _h_attrs(_gather, ("axis", 0)),
    "Cast": _h_cast,
    "QuantizeLinear": _h_quant(_quantize_linear),
    "DequantizeLinear": _h_quant(_dequantize_linear),
    "MaxPool": _h_maxpool,
    "ConvInteger": _h_conv_integer,
    "MatMulInteger": _simple(_matmul_integer),
    "GlobalAveragePool": _simple(_global_avgpool),
    "AveragePool": _h_attrs(
        _avgpool, ("kernel_shape", None), ("strides", None), ("pads", [0, 0, 0, 0]), ("ceil_mode", 0)
    ),
}
