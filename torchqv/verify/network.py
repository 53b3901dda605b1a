"""The network representation the verifier works on: a chain of exact layers.

``float_chain(f)`` reads a float model (``nn.Sequential`` or any fx-traceable chain of Linear,
piecewise-linear activations, Flatten, Dropout and Identity); ``quant_chain(fq)`` reads a torchqv
quantized model, with every node's output format.  Weights are kept as exact rationals (the
float values' binary expansions), so the z3 encoding, the bounds and the exact replay all mean
the same network.  Rounding steps use the format's own rule (``FixedPoint.round_exact``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from torch import fx, nn

from .. import activations as A
from ..formats import FixedPoint, QuantizationError
from ..modules import QuantAct, QuantConv2d, QuantLinear
from ..quantize import trace


@dataclass
class Rounding:
    """Round a real value to ``fmt``'s grid with ``step`` and zero point ``zp``: value ``k * step``."""

    fmt: FixedPoint
    step: Fraction
    zp: int = 0

    @property
    def code_range(self) -> tuple[int, int]:
        return self.fmt.code_range(self.zp)

    def apply(self, v: Fraction) -> Fraction:
        return self.fmt.saturate_exact(self.fmt.round_exact(v / self.step), self.zp) * self.step


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
    if isinstance(model, (nn.Linear, QuantLinear, QuantAct)):
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
    if isinstance(m, (nn.Conv2d, QuantConv2d)):
        return QuantizationError("the verifier handles Linear layers; Conv2d is not supported yet")
    return QuantizationError(f"the verifier does not support {type(m).__name__}")


def float_chain(model: nn.Module, in_features: int) -> Chain:
    """The float network as an exact chain (piecewise-linear activations only)."""
    layers: list[Affine | Act] = []
    for m in _modules_in_order(model):
        if isinstance(m, Shift):
            layers.append(_shift(m))
        elif isinstance(m, nn.Linear):
            b = m.bias if m.bias is not None else torch.zeros(m.out_features)
            layers.append(Affine(_fractions(m.weight), _fractions(b)))
        elif isinstance(m, (nn.Flatten, nn.Dropout)):
            continue
        elif (act := A.from_module(m)) is not None:
            if not act.piecewise_linear:
                raise QuantizationError(f"the verifier supports piecewise-linear activations, not {act.name}")
            layers.append(Act(act))
        else:
            raise _unsupported(m)
    return Chain(layers, in_features)


def quant_chain(model: nn.Module, in_features: int) -> Chain:
    """A torchqv quantized model as an exact chain with its roundings (eval-mode semantics)."""
    layers: list[Affine | Act] = []
    inp = None
    for m in _modules_in_order(model):
        if isinstance(m, (QuantLinear, QuantAct)) and m.in_quant is not None:
            if layers:
                raise QuantizationError(f"{m.qname}: input quantizer inside the network")
            inp = Rounding(m.in_quant.fmt, m.in_quant.steps()[0], m.in_quant.zp)
        if isinstance(m, Shift):
            layers.append(_shift(m))
        elif isinstance(m, QuantLinear):
            out = Rounding(m.out_quant.fmt, m.out_quant.steps()[0], m.out_quant.zp) if m.out_quant else None
            if m.weight_quant is not None or m.frozen:
                steps = m.weight_steps()
                W = [
                    [int(k) * s for k in row] for row, s in zip(m.weight_codes().tolist(), steps, strict=True)
                ]
                inq = m.input_quantizer
                if inq is not None and (m.bias is not None or "bias_int" in m._buffers):
                    scale = [s * inq.steps()[0] for s in steps]
                    b = [int(k) * s for k, s in zip(m.bias_codes(scale).tolist(), scale, strict=True)]
                else:
                    b = _fractions(m.bias) if m.bias is not None else [Fraction(0)] * len(W)
            else:
                W = _fractions(m.weight)
                b = _fractions(m.bias) if m.bias is not None else [Fraction(0)] * len(W)
            layers.append(Affine(W, b, out))
        elif isinstance(m, QuantAct):
            if not m.act.piecewise_linear:
                raise QuantizationError(
                    f"the verifier supports piecewise-linear activations, not {m.act.name}"
                )
            out = Rounding(m.out_quant.fmt, m.out_quant.steps()[0], m.out_quant.zp) if m.out_quant else None
            layers.append(Act(m.act, out))
        elif isinstance(m, (nn.Flatten, nn.Dropout)):
            continue
        else:
            raise _unsupported(m)
    return Chain(layers, in_features, inp)
