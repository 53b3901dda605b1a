"""ONNX export of quantized models, and the parity check against onnxruntime.

The export interprets the quantized graph like every other executor: each operation emits its
own nodes (``onnx_integer`` / ``onnx_qdq`` methods of :mod:`torchqv.ops`), helped by the
:class:`Emitter` below.  Two forms of the same network (Park, Park & Hwang, "On expressive power of quantized
neural networks under fixed-point arithmetic", Eq. 7 semantics):

``form="integer"`` (default): every tensor between operations holds integer codes (in float64,
exact below 2^53).  Linear maps are double ``MatMul`` on codes, convolutions ``ConvInteger`` (int32
accumulators) or float32 ``Conv`` when the accumulator provably stays below 2^24; biases are
integer codes on the accumulator grid; requantization ``round(N / D)`` is exact rational rounding
built from ``Mod`` (``fmod`` is exact), so ties follow the format's rule; activations are lookup
tables (``Gather``) of the exactly rounded activation over every input code; sums for averages
are exact (a 0/1 pooling matrix or ``ReduceSum`` in float64); data movement is a ``Gather`` of
its index map.  Outputs are the float64 grid values, equal to the eval-mode simulation bit for
bit.  Requirements, checked at export: every operation's input is on a grid (quantize the
network input), the integer combinations stay below 2^53, saturating formats, activation inputs
of at most 16 bits.

``form="qdq"``: the interoperable QDQ form: ``QuantizeLinear``/``DequantizeLinear`` pairs (int8 or
uint8 storage, per-channel weights on axis 0) around float32 operations.  ONNX's QuantizeLinear
rounds ties to even, so other rounding rules are emitted explicitly before it, and narrow or
sub-8-bit ranges are kept by a ``Clip``.  It computes in float32 like any QDQ consumer, so it is
exact only in special cases (power-of-two steps, piecewise-linear activations, float32
accumulators below 2^24); ``check_onnx_parity`` reports how many output steps apart it is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .errors import DataError, ExportError
from .extras import require
from .formats import FixedPoint, fraction_to_float, is_dyadic
from .graph import QNode, QuantizedModel
from .grid import Grid, QTensor
from .ops.base import NodeIO, Unsupported
from .ops.structure import check_input
from .quantize import batch_input

if TYPE_CHECKING:
    import onnx
    from onnx import helper, numpy_helper
else:
    onnx = require("onnx", "torchqv.export")
    helper = require("onnx.helper", "torchqv.export")
    numpy_helper = require("onnx.numpy_helper", "torchqv.export")
TensorProto = onnx.TensorProto
DecodeError = require("google.protobuf.message", "torchqv.export").DecodeError  # installed with onnx

OPSET = 17
MIN_OPSET = 13
EXACT_F64 = 2**53
EXACT_F32 = 2**24
FORMS = ("integer", "qdq")


def int_dtype(codes: np.ndarray) -> Any:
    big = float(np.abs(codes).max()) if codes.size else 0.0
    return np.int8 if big <= 127 else np.int16 if big <= 32767 else np.int32


@dataclass
class OVal:
    """An ONNX value: its name, the grid of its codes (integer form) or values (QDQ form), and
    its shape on the example input (batch first), for shape arithmetic and index maps."""

    name: str
    grid: Grid | None
    example_shape: tuple[int, ...]
    constant: torch.Tensor | None = None  # the exact values of a constant tensor

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.example_shape)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.example_shape)


class OnnxGraph:
    """Nodes and initializers under construction (identical constants are shared)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value: Any, hint: str = "c", dtype: Any = np.float64) -> str:
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


class Emitter:
    """What operations use to emit themselves: the graph, the form, example shapes and the
    exact rounding/requantization building blocks."""

    def __init__(self, form: str, shapes: dict[str, Any]):
        self.form = form
        self.g = OnnxGraph()
        self.shapes = shapes

    # ------------------------------------------------------------ values
    def value(self, io: NodeIO, name: str, grid: Grid | None, constant: torch.Tensor | None = None) -> OVal:
        return OVal(name, grid, tuple(self.shapes[io.name]), constant)

    @staticmethod
    def check_format(grid: Grid, where: str) -> None:
        if grid.fmt.overflow == "raise":
            raise ExportError(f"{where}: overflow='raise' has no ONNX equivalent; export needs 'saturate'")

    @staticmethod
    def need_grid(v: Any, where: str) -> OVal:
        if not isinstance(v, OVal) or v.grid is None:
            raise ExportError(
                f"{where}: the integer form needs this operation's input on a grid; quantize the network "
                "input (QConfig.input) and give every operation an output format, or export form='qdq'"
            )
        return v

    # ------------------------------------------------------------ integer form: exact rounding
    def round_ratio(self, n: str, den: str, fmt: FixedPoint) -> str:
        """Exact ``round(n / den)`` with the format's rule (``den > 0`` per element; float64
        ops): ``fmod`` is exact, so ``q0 = (n - r) / den`` with the floor remainder ``r`` is
        exact, and the rounding decision compares ``2 r`` with ``den`` exactly."""
        g = self.g
        zero = g.const(0.0)
        if fmt.binary:
            thr = den if fmt.rounding == "floor" else zero
            return g.op("Where", [g.op("GreaterOrEqual", [n, thr]), g.const(1.0), g.const(-1.0)], "bin")
        r = g.op("Mod", [n, den], fmod=1)
        r = g.op(
            "Add", [r, g.op("Mul", [den, g.op("Cast", [g.op("Less", [r, zero])], to=TensorProto.DOUBLE)])]
        )
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

    def clip(self, x: str, grid: Grid, dtype: Any = np.float64) -> str:
        kmin, kmax = grid.code_range
        return self.g.op(
            "Clip", [x, self.g.const(float(kmin), dtype=dtype), self.g.const(float(kmax), dtype=dtype)]
        )

    def requantize(
        self,
        terms: Sequence[tuple[str, Sequence[Fraction], int]],
        out: Grid,
        where: str,
        channel_shape: list[int] | None = None,
        const: Sequence[Fraction] | np.ndarray | None = None,
    ) -> str:
        """Saturated codes of ``t = sum_i k_i r_i + c`` (the integer form of
        :func:`torchqv.grid.requantize`): ``N = sum_i k_i (r_i L) + c L`` over the common
        denominator ``L`` (per channel along ``channel_shape``), exact in float64 while
        ``sum_i max|k_i| |r_i L| + |c L| < 2^53`` (``terms`` carry that bound of ``|k_i|``).
        Below ``2^52`` the rounding is decided from ``fl(N / L)`` as in
        :class:`torchqv.grid.Requantizer` (one division and the format's rounding); up to
        ``2^53`` by the exact remainder (:meth:`round_ratio`)."""
        self.check_format(out, where)
        g = self.g
        rows = [list(r) for _, r, _ in terms]
        consts = None if const is None else np.asarray(const, dtype=object)
        channels = max(len(r) for r in rows)
        extra = math.lcm(*(v.denominator for v in consts.flat)) if consts is not None and consts.size else 1
        common = [
            math.lcm(extra, *(r[ch if len(r) > 1 else 0].denominator for r in rows)) for ch in range(channels)
        ]
        shape = channel_shape if channels > 1 else [1]
        bound = 0
        num = None
        for (name, _, kmax), r in zip(terms, rows, strict=True):
            ints = [int(r[ch if len(r) > 1 else 0] * common[ch]) for ch in range(channels)]
            bound += kmax * max(abs(v) for v in ints)
            part = g.op("Mul", [name, g.const(np.array(ints, dtype=np.float64).reshape(shape))])
            num = part if num is None else g.op("Add", [num, part])
        assert num is not None  # terms is not empty
        if consts is not None:
            c_ints = np.vectorize(lambda v: int(v * common[0]), otypes=[object])(consts)
            bound += max((abs(int(v)) for v in c_ints.flat), default=0)
            num = g.op("Add", [num, g.const(c_ints.astype(np.float64))])
        if bound >= EXACT_F64 or max(common) >= EXACT_F64:
            raise ExportError(
                f"{where}: requantization needs integers up to {bound:.3g} >= 2^53, beyond exact float64 "
                "arithmetic; use steps with few significant bits (the observers' default) or power-of-two "
                "steps"
            )
        den = g.const(np.array(common, dtype=np.float64).reshape(shape))
        if bound < EXACT_F64 // 2:  # one correctly rounded division decides (see grid.Requantizer)
            return self.clip(self.round_float64(g.op("Div", [num, den]), out.fmt), out)
        return self.clip(self.round_ratio(num, den, out.fmt), out)

    def quantize_real(self, x: str, grid: Grid, where: str) -> str:
        """Codes of real values: ``round(x / (P/Q)) = round(x Q / P)``, exact for float32 ``x``."""
        self.check_format(grid, where)
        step = grid.step
        if step.denominator >= 2**29 or step.numerator >= EXACT_F64:
            raise ExportError(f"{where}: step {step} is too fine for exact float64 quantization")
        n = self.g.op("Mul", [x, self.g.const(float(step.denominator))])
        k = self.round_ratio(n, self.g.const(float(step.numerator)), grid.fmt)
        return self.clip(k, grid)

    def values(self, codes: str, grid: Grid) -> str:
        """The float64 values of codes (the double nearest to ``k * step``)."""
        step = grid.step
        if is_dyadic(step):
            return self.g.op("Mul", [codes, self.g.const(fraction_to_float(step))], "y")
        num = self.g.op("Mul", [codes, self.g.const(float(step.numerator))])
        return self.g.op("Div", [num, self.g.const(float(step.denominator))], "y")

    # ------------------------------------------------------------ QDQ form
    @staticmethod
    def storage(grid: Grid, where: str) -> Any:
        kmin, kmax = grid.code_range
        lo, hi = kmin + grid.zp, kmax + grid.zp
        if -128 <= lo and hi <= 127:
            return np.int8
        if 0 <= lo and hi <= 255:
            return np.uint8
        raise ExportError(f"{where}: the QDQ form stores 8-bit codes; {grid.fmt.describe()} is wider")

    def round_float64(self, t: str, fmt: FixedPoint) -> str:
        """``FixedPoint.round_tensor`` on a float64 ratio (values computed in float64)."""
        return self.round_float(t, fmt, np.float64)

    def round_float(self, t: str, fmt: FixedPoint, dtype: Any = np.float32) -> str:
        """``FixedPoint.round_tensor`` with ONNX ops on a float ratio (QDQ form: float32)."""
        g = self.g
        f32 = dtype
        to = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
        if fmt.binary:
            thr = g.const(1.0 if fmt.rounding == "floor" else 0.0, dtype=f32)
            return g.op(
                "Where", [g.op("GreaterOrEqual", [t, thr]), g.const(1.0, dtype=f32), g.const(-1.0, dtype=f32)]
            )
        if fmt.rounding == "half_even":
            return g.op("Round", [t])
        if fmt.rounding == "floor":
            return g.op("Floor", [t])
        mag = g.op("Abs", [t])
        whole = g.op("Floor", [mag])
        half = g.op("GreaterOrEqual", [g.op("Sub", [mag, whole]), g.const(0.5, dtype=f32)])
        whole = g.op("Add", [whole, g.op("Cast", [half], to=to)])
        return g.op("Mul", [whole, g.op("Sign", [t])])

    def fake_quant(self, x: str, grid: Grid, where: str) -> str:
        """QuantizeLinear/DequantizeLinear with the format's rounding and range."""
        self.check_format(grid, where)
        g = self.g
        dtype = self.storage(grid, where)
        s = g.const(np.float32(fraction_to_float(grid.step)), dtype=np.float32)
        kmin, kmax = grid.code_range
        if grid.fmt.rounding != "half_even" or grid.fmt.binary:  # round explicitly, then Q is exact
            k = self.clip(self.round_float(g.op("Div", [x, s]), grid.fmt), grid, np.float32)
            x = g.op("Mul", [k, s])
        else:
            lo = g.op("Mul", [g.const(float(kmin), dtype=np.float32), s])
            x = g.op("Clip", [x, lo, g.op("Mul", [g.const(float(kmax), dtype=np.float32), s])])
        zpc = g.const(np.array(grid.zp, dtype=dtype), dtype=dtype)
        return g.op("DequantizeLinear", [g.op("QuantizeLinear", [x, s, zpc], "q"), s, zpc], "dq")

    # ------------------------------------------------------------ data movement
    def gather(self, x: OVal, index: torch.Tensor, io: NodeIO) -> OVal:
        """``x`` moved by a per-sample index map (computed on the example batch)."""
        per_in = int(np.prod(x.example_shape[1:]))
        batch = x.example_shape[0]
        out_shape = tuple(index.shape)
        flat = index.reshape(out_shape[0] if index.dim() else 1, -1) if index.dim() else index.reshape(1, 1)
        if (
            index.dim() == 0
            or out_shape[0] != batch
            or not bool((flat - flat[:1] == (torch.arange(batch) * per_in).unsqueeze(1)).all())
        ):
            raise ExportError(
                f"{io.name}: this reshape or indexing mixes samples of the batch; ONNX export "
                "keeps the batch dimension dynamic"
            )
        g = self.g
        rows = g.op("Reshape", [x.name, g.const(np.array([0, -1], dtype=np.int64), dtype=np.int64)])
        first = flat[0]
        if first.numel() != per_in or not bool((first == torch.arange(per_in)).all()):
            rows = g.op("Gather", [rows, g.const(first.numpy().astype(np.int64), dtype=np.int64)], axis=1)
        target = np.array([-1, *out_shape[1:]], dtype=np.int64)
        return OVal(g.op("Reshape", [rows, g.const(target, dtype=np.int64)]), x.grid, out_shape)


# ------------------------------------------------------------------------ export
def _graph_of(model: nn.Module) -> QuantizedModel:
    if isinstance(model, QuantizedModel):
        return model
    raise ExportError(f"export expects a model returned by torchqv.quantize, got {type(model).__name__}")


def _example_shapes(qm: QuantizedModel, x: torch.Tensor) -> dict[str, Any]:
    """Every node's value shape on the example input (batch of at least two, so that index maps
    show how samples move)."""
    shapes: dict[str, Any] = {}

    def shape_of(v: Any) -> Any:
        if isinstance(v, QTensor):
            return tuple(v.codes.shape)
        if isinstance(v, torch.Tensor):
            return tuple(v.shape)
        if isinstance(v, (tuple, list)):
            return tuple(shape_of(i) for i in v)
        return None

    def keep(node: QNode, value: Any) -> None:
        shapes[node.name] = shape_of(value)

    batch = x if x.shape[0] >= 2 else torch.cat([x, x])
    was = qm.training
    qm.eval()
    try:
        with torch.no_grad():
            qm.run((batch.float(),), lambda op, a, k, io: op.exact(a, k, io), keep=keep)
    finally:
        qm.train(was)
    return shapes


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
        raise ExportError(f"form must be one of {FORMS}, got {form!r}")
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ExportError(
            f"opset must be an int in [{MIN_OPSET}, {newest}] (per-channel QuantizeLinear needs "
            f"{MIN_OPSET}), got {opset!r}; the default is {OPSET}"
        )
    if not Path(path).parent.is_dir():
        raise ExportError(
            f"path={str(path)!r}: the folder {Path(path).parent} does not exist; create it first"
        )
    qm = _graph_of(qmodel)
    em = Emitter(form, _example_shapes(qm, example_input))
    method = f"onnx_{form}"
    x_in = OVal("x", None, tuple(em.shapes[next(n.name for n in qm.nodes if n.is_input)]))

    def emit(op: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        try:
            return getattr(op, method)(em, args, kwargs, io)
        except Unsupported as exc:
            raise ExportError(str(exc)) from None

    out = qm.run((x_in,), emit)
    if not isinstance(out, OVal):
        raise ExportError("export_onnx supports models with a single tensor output")
    if form == "integer":
        y = em.values(out.name, out.grid) if out.grid is not None else out.name
    else:
        y = em.g.op("Cast", [out.name], to=TensorProto.DOUBLE, hint="y")
    shape = ["batch", *example_input.shape[1:]]
    graph = helper.make_graph(
        em.g.nodes,
        "torchqv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(y, TensorProto.DOUBLE, None)],
        em.g.inits,
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
        raise ExportError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
    except (DecodeError, OSError, ValueError, RuntimeError, onnx.checker.ValidationError) as exc:
        raise ExportError(f"{path}: not a readable ONNX model ({exc})") from exc
    return check_onnx(model, str(path))


def check_onnx(model: onnx.ModelProto, where: str = "the ONNX model") -> onnx.ModelProto:
    """``onnx.checker`` (full check, shape inference included) on an untrusted model; a failure is a
    ``QuantizationError`` that names the model and the checker's finding."""
    if not isinstance(model, onnx.ModelProto):
        raise ExportError(f"{where}: expected an onnx.ModelProto, got {type(model).__name__}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{where}: fails onnx.checker (fix or re-export the model): {exc}") from exc
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


def _parity_inputs(inputs: Any) -> torch.Tensor:
    """One input tensor from ``inputs``: a batch (tensor), a list or tuple of batches, or an
    iterable of batches such as a DataLoader (tensors or ``(x, y, ...)`` pairs, whose first entry
    is taken); anything else is an error naming the argument."""
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Iterable):
        raise DataError(
            "check_onnx_parity: inputs must be a tensor, a list or tuple of tensors, or an iterable of "
            f"batches (a DataLoader of tensors or (x, y) pairs), got {type(inputs).__name__}"
        )
    batches = []
    for i, batch in enumerate(inputs):
        batches.append(batch_input(batch, f"check_onnx_parity: inputs: batch {i}"))
    if not batches:
        raise DataError("check_onnx_parity: inputs holds no batches")
    if len({tuple(b.shape[1:]) for b in batches}) > 1:
        shapes = sorted({tuple(b.shape) for b in batches})
        raise DataError(f"check_onnx_parity: inputs: the batches have different shapes {shapes[:3]}")
    return torch.cat(batches)


def check_onnx_parity(
    qmodel: nn.Module, path: str | Path, inputs: torch.Tensor | Iterable[Any], optimize: bool = True
) -> ParityReport:
    """Run the exported file in onnxruntime (CPU) and the simulation on ``inputs`` (a batch, a
    list or tuple of batches, or a DataLoader-like iterable of batches: tensors or ``(x, y)``
    pairs); report the maximum difference in output steps (of the model's output format;
    absolute if it has none)."""
    ort = require("onnxruntime", "check_onnx_parity")

    inputs = _parity_inputs(inputs)
    check_input(inputs, "check_onnx_parity: inputs")
    qm = _graph_of(qmodel)
    model = load_onnx(path)
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: inputs.float().numpy()})[0])
    was = qm.training
    with torch.no_grad():
        want = qm.eval()(inputs.float())
    qm.train(was)
    diff = (got.double() - want.double()).abs()
    step = _output_step(qm)
    return ParityReport(
        float(diff.max()), float(diff.max() / step) if step else math.nan, int((diff > 0).sum()), diff.numel()
    )


def _output_step(qm: QuantizedModel) -> float | None:
    """The step of the model's output grid (``None`` if the output is real-valued)."""
    out = qm.output_template
    q = qm.quantizer_of(qm.node(out.node).kind) if hasattr(out, "node") else None
    return fraction_to_float(q.steps()[0]) if q is not None else None


__all__ = [
    "Emitter",
    "ExportError",
    "OVal",
    "ParityReport",
    "check_onnx",
    "check_onnx_parity",
    "export_onnx",
    "load_onnx",
]
