"""The network representation the verifier works on: a chain of exact layers.

``float_chain(f)`` reads a float model (``nn.Sequential`` or any fx-traceable chain of Linear,
piecewise-linear activations, Flatten, Dropout and Identity); ``quant_chain(fq)`` reads a torchqv
quantized model, with every node's output format.  Weights are kept as exact rationals (the
float values' binary expansions), so the z3 encoding, the bounds and the exact replay all mean
the same network.  Rounding steps use the format's own rule (``FixedPoint.round_exact``).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import activations as A
from ..formats import FixedPoint, QuantizationError, dequantize_f64, round_certified
from ..modules import QuantAct, QuantConv2d, QuantLinear, QuantModule
from ..quantize import trace


@dataclass
class Rounding:
    """Round a real value to ``fmt``'s grid with ``step`` and zero point ``zp``: value ``k * step``.

    ``in_step``: when known, the rounding's input always lies on the grid ``in_step * Z`` (e.g. a
    ReLU's output, whose input was already rounded); with ``in_step / step = p / q`` in lowest
    terms, ``x / step`` is a multiple of ``1 / q``, so the rounding error is at most
    ``floor(q / 2) / q`` steps (nearest) or ``(q - 1) / q`` steps (floor): none when ``q = 1``.
    """

    fmt: FixedPoint
    step: Fraction
    zp: int = 0
    in_step: Fraction | None = None

    @property
    def code_range(self) -> tuple[int, int]:
        return self.fmt.code_range(self.zp)

    def apply(self, v: Fraction) -> Fraction:
        return self.fmt.saturate_exact(self.fmt.round_exact(v / self.step), self.zp) * self.step

    def apply_floats(self, v: np.ndarray) -> np.ndarray:
        """``apply`` on every float64 value, decided exactly (``round_certified``: float64 where the
        value is provably away from a rounding boundary, Fractions elsewhere); the results are the
        doubles nearest to the grid values.  Infinite values saturate."""
        v = np.asarray(v, dtype=np.float64)
        kmin, kmax = self.code_range
        finite = np.where(np.isfinite(v), v, 0.0)
        t_hat = torch.from_numpy(finite / float(self.step))
        flat = finite.reshape(-1)
        codes = round_certified(
            self.fmt,
            t_hat,
            t_hat.abs() * 2.0**-50 + 2.0**-1000,  # float(step) and the division: < 3 ulps
            lambda idx: [self.fmt.round_exact(Fraction(float(flat[i])) / self.step) for i in idx],
        ).numpy()
        codes = np.where(np.isposinf(v), kmax, np.where(np.isneginf(v), kmin, codes))
        codes = self.fmt.saturate_tensor(torch.from_numpy(codes), kmin, kmax).reshape(-1)
        return dequantize_f64(codes, [self.step]).numpy().reshape(v.shape)

    @property
    def exact_on_input(self) -> bool:
        """The input grid is a subgrid of the output grid: unsaturated inputs are kept as they are."""
        return (
            self.in_step is not None and not self.fmt.binary and (self.in_step / self.step).denominator == 1
        )

    def error_bounds(self) -> tuple[Fraction, Fraction]:
        """``(lo, hi)`` with ``lo <= round(x) - x <= hi`` (in steps) for unsaturated inputs."""
        q = (self.in_step / self.step).denominator if self.in_step is not None else None
        if self.fmt.rounding == "floor":
            return (Fraction(1 - q, q) if q else Fraction(-1)), Fraction(0)
        half = Fraction(q // 2, q) if q else Fraction(1, 2)
        return -half, half


@dataclass
class Affine:
    """``y = W x + b`` with exact rational ``W`` (rows: outputs) and ``b``; optional output rounding."""

    W: list[list[Fraction]]
    b: list[Fraction]
    out: Rounding | None = None
    Wf: np.ndarray = field(default=None, repr=False)  # float64 copies for bounds and sampling
    bf: np.ndarray = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.Wf = np.array([[float(v) for v in row] for row in self.W], dtype=np.float64)
        self.bf = np.array([float(v) for v in self.b], dtype=np.float64)


@dataclass
class Act:
    act: A.Activation
    out: Rounding | None = None


@dataclass
class Chain:
    """A network ``x -> layers`` on flat input vectors; ``inp`` rounds the input (quantized nets)."""

    layers: list[Affine | Act]
    in_features: int
    inp: Rounding | None = None

    @property
    def floats_exact(self) -> bool:
        """Are every weight, bias and step exactly doubles (so float64 models are exact)?"""
        if not hasattr(self, "_floats_exact"):
            values = [r.step for r in self.roundings()]
            for layer in self.layers:
                if isinstance(layer, Affine):
                    values += [v for row in layer.W for v in row] + list(layer.b)
            self._floats_exact = all(Fraction(float(v)) == v for v in values)
        return self._floats_exact

    def roundings(self) -> list[Rounding]:
        return [r for r in [self.inp, *(layer.out for layer in self.layers)] if r is not None]

    @property
    def out_features(self) -> int:
        return next(len(layer.b) for layer in reversed(self.layers) if isinstance(layer, Affine))

    def exact(self, x: list[Fraction]) -> list[Fraction]:
        """Evaluate with exact rational arithmetic (the semantics the encodings describe)."""
        v = [self.inp.apply(Fraction(t)) for t in x] if self.inp else [Fraction(t) for t in x]
        for layer in self.layers:
            if isinstance(layer, Affine):
                v = [
                    sum((w * t for w, t in zip(row, v, strict=True) if w and t), start=b)
                    for row, b in zip(layer.W, layer.b, strict=True)
                ]
            else:
                v = [layer.act.exact(t) for t in v]
            if layer.out is not None:
                v = [layer.out.apply(t) for t in v]
        return v


def _fractions(t: torch.Tensor) -> list:
    return (
        [[Fraction(v) for v in row] for row in t.detach().double().tolist()]
        if t.dim() == 2
        else [Fraction(v) for v in t.detach().double().tolist()]
    )


class Shift(nn.Module):
    """``x + offset`` (a constant Add or Sub in an imported graph, e.g. input normalisation)."""

    def __init__(self, offset: torch.Tensor):
        super().__init__()
        self.offset = offset.detach().reshape(-1).clone()


def _modules_in_order(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, (nn.Linear, nn.Conv2d, QuantModule)):
        return [model]
    gm = trace(model)
    mods, prev = [], None
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            prev = node if node.op == "placeholder" else prev
            continue
        if node.op == "output":
            break
        src = node.args[0] if node.args else None
        if src is not prev:
            raise QuantizationError("the verifier handles chains of layers (each layer feeds the next)")
        if node.op == "call_module":
            mods.append(model.get_submodule(node.target))
        elif node.op == "call_function" and node.target is torch.flatten:
            mods.append(nn.Flatten())
        elif node.op == "call_method" and node.target in ("flatten", "view", "reshape"):
            mods.append(nn.Flatten())
        elif (
            node.op == "call_function"
            and node.target in (operator.add, operator.sub)
            and isinstance(node.args[1], fx.Node)
            and node.args[1].op == "get_attr"
        ):
            const = gm.get_buffer(node.args[1].target)
            sign = 1.0 if node.target is operator.add else -1.0
            mods.append(Shift(sign * const.double()))
        else:
            raise QuantizationError(f"the verifier does not support the operation {node.op} {node.target}")
        prev = node
    return mods


def _shift(m: Shift) -> Affine:
    n = m.offset.numel()
    eye = [[Fraction(int(i == j)) for j in range(n)] for i in range(n)]
    return Affine(eye, _fractions(m.offset))


def _unsupported(m: nn.Module) -> QuantizationError:
    return QuantizationError(
        f"the verifier does not support {type(m).__name__}: chains of Linear, Conv2d, piecewise-linear "
        "activations, Flatten, Dropout and constant Add/Sub are supported"
    )


MAX_DENSE = 4_000_000  # entries of a convolution expanded into a dense matrix


def _dense(m: nn.Module, weight: torch.Tensor, shape: tuple[int, ...]) -> tuple[np.ndarray, list[int], tuple]:
    """The layer as a dense matrix over flat vectors (rows: outputs), each row's output channel,
    and the output shape.  A convolution is expanded by applying it to the unit vectors: every
    entry is one weight (or 0), so the expansion is exact for exact float64 weights."""
    if isinstance(m, (nn.Linear, QuantLinear)):
        W = weight.detach().double().reshape(weight.shape[0], -1)
        return W.numpy(), list(range(W.shape[0])), (W.shape[0],)
    n = int(np.prod(shape))
    if len(shape) != 3:
        raise QuantizationError(f"{type(m).__name__}: expected a (C, H, W) input, the chain gives {shape}")
    out_shape = F.conv2d(
        torch.zeros(1, *shape, dtype=torch.float64),
        weight.detach().double(),
        None,
        m.stride,
        m.padding,
        m.dilation,
        m.groups,
    ).shape[1:]
    if n * int(np.prod(out_shape)) > MAX_DENSE:
        raise QuantizationError(
            f"{type(m).__name__}: its dense expansion has {n} x {int(np.prod(out_shape))} entries, more "
            f"than the verifier's limit {MAX_DENSE}; verify a network with smaller inputs or fewer channels"
        )
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    out = F.conv2d(eye, weight.detach().double(), None, m.stride, m.padding, m.dilation, m.groups)
    channels = [c for c in range(out_shape[0]) for _ in range(out_shape[1] * out_shape[2])]
    return out.reshape(n, -1).T.numpy(), channels, tuple(out_shape)


def _affine_layer(
    m: nn.Module, values: torch.Tensor, row_scale: list[Fraction], bias: list[Fraction], shape: tuple
) -> tuple[Affine, tuple]:
    """``Affine`` with weights ``values * row_scale[channel]`` (exact) and per-channel bias."""
    D, channels, out_shape = _dense(m, values, shape)
    W = [
        [Fraction(v) * row_scale[c] if v else Fraction(0) for v in row]
        for row, c in zip(D.tolist(), channels, strict=True)
    ]
    return Affine(W, [bias[c] for c in channels]), out_shape


def _as_shape(inputs: int | tuple[int, ...]) -> tuple[int, ...]:
    return (inputs,) if isinstance(inputs, int) else tuple(inputs)


def float_chain(model: nn.Module, inputs: int | tuple[int, ...]) -> Chain:
    """The float network as an exact chain (piecewise-linear activations only); ``inputs``: the
    input's size or shape (without the batch dimension)."""
    layers: list[Affine | Act] = []
    shape = _as_shape(inputs)
    for m in _modules_in_order(model):
        if isinstance(m, Shift):
            layers.append(_shift(m))
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            channels = m.weight.shape[0]
            b = _fractions(m.bias) if m.bias is not None else [Fraction(0)] * channels
            layer, shape = _affine_layer(m, m.weight, [Fraction(1)] * channels, b, shape)
            layers.append(layer)
        elif isinstance(m, (nn.Flatten, nn.Dropout)):
            shape = (int(np.prod(shape)),) if isinstance(m, nn.Flatten) else shape
        elif (act := A.from_module(m)) is not None:
            if not act.piecewise_linear:
                raise QuantizationError(f"the verifier supports piecewise-linear activations, not {act.name}")
            layers.append(Act(act))
        else:
            raise _unsupported(m)
    return Chain(layers, int(np.prod(_as_shape(inputs))))


def _rounding(q) -> Rounding | None:
    return Rounding(q.fmt, q.steps()[0], q.zp) if q is not None else None


def quant_chain(model: nn.Module, inputs: int | tuple[int, ...]) -> Chain:
    """A torchqv quantized model as an exact chain with its roundings (eval-mode semantics)."""
    layers: list[Affine | Act] = []
    inp = None
    shape = _as_shape(inputs)
    for m in _modules_in_order(model):
        if isinstance(m, QuantModule) and m.in_quant is not None:
            if layers:
                raise QuantizationError(f"{m.qname}: input quantizer inside the network")
            inp = _rounding(m.in_quant)
        if isinstance(m, Shift):
            layers.append(_shift(m))
        elif isinstance(m, (QuantLinear, QuantConv2d)):
            channels = m.weight.shape[0]
            if m.weight_quant is not None or m.frozen:
                steps = m.weight_steps()
                steps = steps * channels if len(steps) == 1 else steps
                values = m.weight_codes().double()
                inq = m.input_quantizer
                if inq is not None and (m.bias is not None or "bias_int" in m._buffers):
                    scale = [s * inq.steps()[0] for s in steps]
                    b = [int(k) * s for k, s in zip(m.bias_codes(scale).tolist(), scale, strict=True)]
                else:
                    b = _fractions(m.bias) if m.bias is not None else [Fraction(0)] * channels
            else:
                steps, values = [Fraction(1)] * channels, m.weight
                b = _fractions(m.bias) if m.bias is not None else [Fraction(0)] * channels
            layer, shape = _affine_layer(m, values, steps, b, shape)
            layer.out = _rounding(m.out_quant)
            layers.append(layer)
        elif isinstance(m, QuantAct):
            if not m.act.piecewise_linear:
                raise QuantizationError(
                    f"the verifier supports piecewise-linear activations, not {m.act.name}"
                )
            layers.append(Act(m.act, _rounding(m.out_quant)))
        elif isinstance(m, (nn.Flatten, nn.Dropout)):
            shape = (int(np.prod(shape)),) if isinstance(m, nn.Flatten) else shape
        else:
            raise _unsupported(m)
    _mark_input_grids(layers, inp)
    return Chain(layers, int(np.prod(_as_shape(inputs))), inp)


def _keeps_grid(act: A.Activation, step: Fraction) -> bool:
    """Does the activation map the grid ``step * Z`` into itself?"""
    if act.name in ("relu", "identity"):
        return True
    if act.name == "hardtanh":
        return all((Fraction(act.param(k)) / step).denominator == 1 for k in ("min_val", "max_val"))
    return False


def _mark_input_grids(layers: list[Affine | Act], inp: Rounding | None) -> None:
    """Record ``Rounding.in_step`` where a rounding's input is known to lie on a grid."""
    grid = inp.step if inp is not None else None
    for layer in layers:
        if isinstance(layer, Act):
            grid = grid if grid is not None and _keeps_grid(layer.act, grid) else None
        else:
            grid = None
        if layer.out is not None:
            layer.out.in_step = grid
            grid = layer.out.step


# ------------------------------------------------------------------ what bounds decide
def _const_act(layer: Act, value: Fraction | None, lo: float, hi: float) -> Fraction | None:
    """The activation's value when bounds (or a constant input) decide it."""
    a = layer.act
    if value is not None:
        return a.exact(value)
    if a.name == "relu" and hi <= 0:
        return Fraction(0)
    if a.name == "hardtanh" and (hi <= a.param("min_val") or lo >= a.param("max_val")):
        return Fraction(a.param("min_val") if hi <= a.param("min_val") else a.param("max_val"))
    return None


def constants(
    chain: Chain, bounds: list, in_lo: list[float], in_hi: list[float]
) -> list[list[Fraction | None]]:
    """Per layer and neuron: the exact value if the bounds make it constant, else ``None``."""
    prev = [Fraction(a) if a == b else None for a, b in zip(in_lo, in_hi, strict=True)]
    prev_lo, prev_hi = in_lo, in_hi
    out = []
    for layer, lb in zip(chain.layers, bounds, strict=True):
        if isinstance(layer, Affine):
            cur = [
                sum((w * t for w, t in zip(row, prev, strict=True) if w), start=b)
                if all(t is not None for w, t in zip(row, prev, strict=True) if w)
                else None
                for row, b in zip(layer.W, layer.b, strict=True)
            ]
        else:
            cur = [_const_act(layer, t, a, b) for t, a, b in zip(prev, prev_lo, prev_hi, strict=True)]
        r = layer.out
        if r is not None:
            cur = [
                r.apply(t)
                if t is not None
                else (
                    r.apply(Fraction(a))
                    if math.isfinite(a) and math.isfinite(b) and r.apply(Fraction(a)) == r.apply(Fraction(b))
                    else None
                )
                for t, a, b in zip(cur, lb.pre_lo.tolist(), lb.pre_hi.tolist(), strict=True)
            ]
        out.append(cur)
        prev, prev_lo, prev_hi = cur, lb.lo.tolist(), lb.hi.tolist()
    return out


def cone(chain: Chain, const: list[list], outputs) -> list[set[int]]:
    """Per layer: the non-constant neurons that the requested outputs depend on."""
    need: list[set[int]] = [set() for _ in chain.layers]
    want = set(outputs)
    for li in range(len(chain.layers) - 1, -1, -1):
        layer = chain.layers[li]
        need[li] = {i for i in want if const[li][i] is None}
        if isinstance(layer, Affine):
            want = {j for i in need[li] for j, w in enumerate(layer.W[i]) if w != 0}
        else:
            want = set(need[li])
    return need
