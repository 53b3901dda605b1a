"""Soundness campaign: the verifier's verdicts against an independent exhaustive ground truth.

Random small networks (Linear/ReLU chains with other piecewise-linear activations, a tiny Conv2d
net, tiny networks imported from ONNX, and graphs that are not chains: residual adds, concatenated
branches, max and average pooling), random formats (dyadic and non-dyadic input steps such as
1/3, 1/5, 1/10, every rounding rule, saturating small ranges, binary and ternary weights, affine
activations), every relation and norm (eps placed exactly on a difference that the region
reaches), regions with 0, 1 and many grid points, clipped by a domain or not.  Every verdict is
compared with an enumeration of the region's grid points written here, in exact rationals
(``fractions.Fraction``), that shares nothing with the engine: the region, the rounding rules,
the quantized weights and biases, both networks and the relations are all computed below from
the models' parameters and formats (and, for ONNX nets, f from the ONNX initializers).

Asserted for every case: EQUIVALENT only when the enumeration finds no violation; every
NOT_EQUIVALENT counterexample is a point of the region (in the ball, in the domain, on the grid)
that violates the relation under this module's exact evaluation; an empty region is a
``QuantizationError``; no other exception; UNKNOWN only at a time limit (its reason says so and
the region ran at least 80% of its timeout).

``TORCHQV_SOUNDNESS_CASES`` sets the number of cases (default 240, spread over ``BATCHES``
tests); ``TORCHQV_SOUNDNESS_OUT`` names a folder for per-batch JSON counts, which
``python tests/test_soundness.py summarize FOLDER`` adds up (``make soundness``).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import torchqv as tq
from torchqv.ops.movement import Dropout, Movement
from torchqv.ops.structure import Constant, PythonCall
from torchqv.verify import from_onnx

CASES = int(os.environ.get("TORCHQV_SOUNDNESS_CASES", "240"))
BATCHES = 8
TIMEOUT = 20.0  # per region; UNKNOWN is allowed only when this (or a tiny case timeout) ran out
MAX_POINTS = 400  # grid points per region enumerated


# ------------------------------------------------------------------ exact rounding (the spec)
def round_code(t: Fraction, rule: str, binary: bool) -> int:
    """Round ``t = x / step`` to an integer code: half_away (ties away from zero), half_even
    (ties to even), floor; a binary grid is {-1, +1}: +1 iff t >= 0 (floor: iff t >= 1)."""
    if binary:
        return 1 if t >= (1 if rule == "floor" else 0) else -1
    lo = t.numerator // t.denominator  # floor
    rest = t - lo
    if rule == "floor":
        return lo
    if rest > Fraction(1, 2):
        return lo + 1
    if rest < Fraction(1, 2):
        return lo
    if rule == "half_even":
        return lo if lo % 2 == 0 else lo + 1
    return lo + 1 if t > 0 else lo  # half_away: a tie goes away from zero


def code_range(fmt: tq.FixedPoint, zp: int) -> tuple[int, int]:
    """Centered codes ``[qmin - zp, qmax - zp]`` of a format (the grids of Park, Park & Hwang,
    "On expressive power of quantized neural networks under fixed-point arithmetic")."""
    if fmt.binary:
        return -1, 1
    if not fmt.signed:
        qmin, qmax = 0, 2**fmt.bits - 1
    else:
        qmin = -(2 ** (fmt.bits - 1)) + (1 if fmt.narrow else 0)
        qmax = 2 ** (fmt.bits - 1) - 1
    return qmin - zp, qmax - zp


def quantize(x: Fraction, fmt: tq.FixedPoint, step: Fraction, zp: int) -> Fraction:
    """``saturate(round(x / step)) * step``."""
    k = round_code(x / step, fmt.rounding, fmt.binary)
    kmin, kmax = code_range(fmt, zp)
    return min(max(k, kmin), kmax) * step


def act_value(m: nn.Module | str, x: Fraction) -> Fraction:
    """Piecewise-linear activations, exactly (modules or their names)."""
    if isinstance(m, nn.ReLU) or m == "relu":
        return max(x, Fraction(0))
    if isinstance(m, nn.LeakyReLU):
        return x if x >= 0 else Fraction(m.negative_slope) * x
    if isinstance(m, nn.Hardtanh):
        return min(max(x, Fraction(m.min_val)), Fraction(m.max_val))
    if isinstance(m, nn.Identity):
        return x
    raise AssertionError(f"no exact rule for {m}")


def act_of_quant(m: tq.QuantAct, x: Fraction) -> Fraction:
    a = m.act
    if a.name == "relu":
        return max(x, Fraction(0))
    if a.name == "identity":
        return x
    if a.name == "leaky_relu":
        return x if x >= 0 else Fraction(a.param("negative_slope")) * x
    if a.name == "hardtanh":
        return min(max(x, Fraction(a.param("min_val"))), Fraction(a.param("max_val")))
    raise AssertionError(f"no exact rule for {a.name}")


def fr(t: torch.Tensor) -> list:
    """Exact values of a tensor (nested lists of Fraction)."""
    return np.vectorize(Fraction, otypes=[object])(t.detach().double().numpy()).tolist()


# ------------------------------------------------------------------ exact networks
def linear(W: list, b: list | None, x: list) -> list:
    return [
        sum((w * v for w, v in zip(row, x, strict=True)), b[i] if b else Fraction(0))
        for i, row in enumerate(W)
    ]


def conv2d(x: np.ndarray, W: np.ndarray, b: list, stride: int, pad: int) -> np.ndarray:
    """Exact 2-d convolution of a (C, H, W) object array."""
    c, h, w = x.shape
    xp = np.full((c, h + 2 * pad, w + 2 * pad), Fraction(0), dtype=object)
    xp[:, pad : pad + h, pad : pad + w] = x
    co, _, kh, kw = W.shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    out = np.empty((co, ho, wo), dtype=object)
    for o in range(co):
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kw]
                out[o, i, j] = sum(
                    (a * v for a, v in zip(W[o].reshape(-1), patch.reshape(-1), strict=True)), b[o]
                )
    return out


def float_forward(f: nn.Module, x: np.ndarray) -> list:
    """f (an nn.Sequential) in exact rationals from its parameters."""
    v = x
    for m in f:
        if isinstance(m, nn.Linear):
            v = np.array(
                linear(fr(m.weight), fr(m.bias) if m.bias is not None else None, list(v.reshape(-1))),
                dtype=object,
            )
        elif isinstance(m, nn.Conv2d):
            b = fr(m.bias) if m.bias is not None else [Fraction(0)] * m.out_channels
            v = conv2d(
                v.reshape(m.in_channels, *v.shape[-2:]),
                np.array(fr(m.weight), dtype=object),
                b,
                m.stride[0],
                m.padding[0],
            )
        elif isinstance(m, nn.Flatten):
            v = v.reshape(-1)
        else:
            v = np.vectorize(lambda t, m=m: act_value(m, t), otypes=[object])(v)
    return list(np.asarray(v, dtype=object).reshape(-1))


def steps_of(q) -> list[Fraction]:
    """A quantizer's exact steps (model state: int64 numerator and denominator buffers)."""
    return [Fraction(int(n), int(d)) for n, d in zip(q.step_num.tolist(), q.step_den.tolist(), strict=True)]


def zp_of(q) -> int:
    return int(q.zero_point.item())


def quant_affine(m, x: np.ndarray, in_step: Fraction | None) -> np.ndarray:
    """A QuantLinear / QuantConv in exact rationals, from its float parameters and formats."""
    wq = m.weight_quant
    w = np.array(fr(m.weight), dtype=object)
    co = w.shape[0]
    if wq is not None:
        steps = steps_of(wq)
        steps = steps * co if len(steps) == 1 else steps
        for o in range(co):
            w[o] = np.vectorize(lambda t, s=steps[o]: quantize(t, wq.fmt, s, 0), otypes=[object])(w[o])
    if m.bias is None:
        b = [Fraction(0)] * co
    elif wq is not None and in_step is not None:  # the accumulator grid s_w * s_x, unsaturated
        b = [
            round_code(v / (steps[o] * in_step), wq.fmt.rounding, False) * steps[o] * in_step
            for o, v in enumerate(fr(m.bias))
        ]
    else:
        b = fr(m.bias)
    if isinstance(m, tq.QuantConv):
        y = conv2d(x.reshape(m.in_channels, *x.shape[-2:]), w, b, m.stride[0], m.pads[0][0])
    else:
        y = np.array(linear(w.tolist(), b, list(x.reshape(-1))), dtype=object)
    if m.out_quant is not None:
        q = m.out_quant
        y = np.vectorize(lambda t: quantize(t, q.fmt, steps_of(q)[0], zp_of(q)), otypes=[object])(y)
    return y


def quantize_array(v: np.ndarray, q) -> np.ndarray:
    """Every element of ``v`` rounded to the quantizer ``q``'s grid (its exact step and zero point)."""
    return np.vectorize(lambda t: quantize(t, q.fmt, steps_of(q)[0], zp_of(q)), otypes=[object])(v)


def pool2(x: np.ndarray, reduce: str) -> np.ndarray:
    """2x2 pooling with stride 2 of a (C, H, W) array, exactly: max, or the mean of the window."""
    c, h, w = x.shape
    out = np.empty((c, h // 2, w // 2), dtype=object)
    for k in range(c):
        for i in range(h // 2):
            for j in range(w // 2):
                cells = list(x[k, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(-1))
                out[k, i, j] = max(cells) if reduce == "max" else sum(cells, Fraction(0)) / len(cells)
    return out


def quant_forward(fq: nn.Module, x: np.ndarray) -> list:
    """f' in exact rationals: every operation of its quantized graph in order, each reading the
    values its node's arguments name (per-sample arrays, no batch dimension), the input quantized
    first.  Joins and averages round their exact result once to their own format."""
    from torchqv.ops.base import resolve
    from torchqv.ops.join import QuantAdd, QuantCat
    from torchqv.ops.pool import AvgPool, MaxPool

    env: dict[str, tuple[np.ndarray, Fraction | None]] = {}  # value and the grid step it lies on
    out = None
    for node, m in fq.operations():
        if node.is_input:
            q = m.out_quant
            env[node.name] = (quantize_array(x, q), steps_of(q)[0]) if q is not None else (x, None)
            continue
        args = resolve(node.args, lambda name: env[name])
        q = getattr(m, "out_quant", None)
        if isinstance(m, (tq.QuantLinear, tq.QuantConv)):
            v, grid = args[0]
            value = quant_affine(m, v, grid)
        elif isinstance(m, tq.QuantAct):
            value = np.vectorize(lambda t, m=m: act_of_quant(m, t), otypes=[object])(args[0][0])
            value = quantize_array(value, q) if q is not None else value
        elif isinstance(m, QuantAdd):
            value = args[0][0] + args[1][0] * m.alpha
            value = quantize_array(value, q) if q is not None else value
        elif isinstance(m, QuantCat):
            parts = [quantize_array(v, q) if q is not None else v for v, _ in args[0]]
            value = np.concatenate(parts, axis=m.dim - 1)
        elif isinstance(m, (MaxPool, AvgPool)):
            value = pool2(args[0][0], "max" if isinstance(m, MaxPool) else "mean")
            if isinstance(m, AvgPool) and q is not None:
                value = quantize_array(value, q)
        elif isinstance(m, Movement) and m.describe() in ("Flatten", "Movement(flatten)"):
            value = args[0][0].reshape(-1)
        elif isinstance(m, (Dropout, Movement)) and (isinstance(m, Dropout) or m.identity):
            value = args[0][0]
        elif isinstance(m, (Constant, PythonCall)):
            continue
        else:
            raise AssertionError(f"unexpected operation {m.describe()} at {node.name}")
        if isinstance(m, MaxPool):
            grid = args[0][1]  # the maximum of grid values is a grid value
        elif isinstance(m, (Dropout, Movement)):
            grid = args[0][1]
        else:
            grid = steps_of(q)[0] if q is not None else None
        env[node.name] = out = (value, grid)
    assert out is not None
    return list(np.asarray(out[0], dtype=object).reshape(-1))


def holds(relation: str, norm: str, eps: Fraction | None, y: list, yq: list) -> bool:
    if relation == "strict":
        return y == yq
    if relation == "top1":
        first = lambda v: min(range(len(v)), key=lambda i: (-v[i], i))  # noqa: E731 - torch.argmax
        return first(y) == first(yq)
    d = [abs(a - b) for a, b in zip(y, yq, strict=True)]
    return (max(d) if norm == "inf" else sum(d)) <= eps


# ------------------------------------------------------------------ graph nets (not chains)
def _act_array(act: nn.Module, v: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda t: act_value(act, t), otypes=[object])(v)


def _linear_of(m: nn.Linear, v: list) -> list:
    return linear(fr(m.weight), fr(m.bias), list(v))


class ResidualMLP(nn.Module):
    """``out(relu(l2(act(l1 x)) + x))``: a residual add around two layers."""

    def __init__(self, d: int, h: int, k: int, act: nn.Module):
        super().__init__()
        self.l1, self.act, self.l2, self.out = nn.Linear(d, h), act, nn.Linear(h, d), nn.Linear(d, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.l2(self.act(self.l1(x))) + x))

    def exact(self, v: np.ndarray) -> list:
        x = list(v.reshape(-1))
        h = list(_act_array(self.act, np.array(_linear_of(self.l1, x), dtype=object)))
        y = [max(a + b, Fraction(0)) for a, b in zip(_linear_of(self.l2, h), x, strict=True)]
        return _linear_of(self.out, y)


class ConcatMLP(nn.Module):
    """``out(relu(cat(l1 x, act(l2 x))))``: two branches joined."""

    def __init__(self, d: int, h1: int, h2: int, k: int, act: nn.Module):
        super().__init__()
        self.l1, self.l2, self.act, self.out = nn.Linear(d, h1), nn.Linear(d, h2), act, nn.Linear(h1 + h2, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(torch.cat([self.l1(x), self.act(self.l2(x))], dim=1)))

    def exact(self, v: np.ndarray) -> list:
        x = list(v.reshape(-1))
        b = list(_act_array(self.act, np.array(_linear_of(self.l2, x), dtype=object)))
        z = [max(t, Fraction(0)) for t in _linear_of(self.l1, x) + b]
        return _linear_of(self.out, z)


class PoolNet(nn.Module):
    """``fc(flatten(pool(act(conv x [+ x]))))`` on (1, 2, 2) inputs: max or average pooling,
    optionally with a residual add around the convolution."""

    def __init__(self, channels: int, k: int, act: nn.Module, pool: str, residual: bool):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3 if residual else 1, padding=1 if residual else 0)
        self.act, self.residual, self.kind = act, residual, pool
        self.pool = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
        self.fc = nn.Linear(channels, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.residual:
            h = h + x
        return self.fc(torch.flatten(self.pool(self.act(h)), 1))

    def exact(self, v: np.ndarray) -> list:
        x = v.reshape(1, 2, 2)
        h = conv2d(
            x, np.array(fr(self.conv.weight), dtype=object), fr(self.conv.bias), 1, self.conv.padding[0]
        )
        if self.residual:
            h = h + x
        return _linear_of(self.fc, list(pool2(_act_array(self.act, h), self.kind).reshape(-1)))


def graph_net(rng: random.Random, kind: str, acts: list) -> tuple[nn.Module, tuple[int, ...]]:
    """A random residual, concatenating or pooling network and its input shape."""
    if kind == "residual":
        d = rng.randint(1, 3)
        return ResidualMLP(d, rng.randint(1, 3), rng.randint(2, 3), rng.choice(acts)()), (d,)
    if kind == "concat":
        d = rng.randint(1, 3)
        return ConcatMLP(d, rng.randint(1, 2), rng.randint(1, 2), rng.randint(2, 3), rng.choice(acts)()), (d,)
    residual = rng.random() < 0.4
    channels = 1 if residual else rng.randint(1, 3)
    return PoolNet(channels, rng.randint(2, 3), rng.choice(acts)(), rng.choice(["max", "avg"]), residual), (
        1,
        2,
        2,
    )


# ------------------------------------------------------------------ ONNX nets (f from the proto)
def onnx_chain(rng: random.Random, d: int, widths: list[int]):
    """A Gemm / MatMul+Add / Relu / LeakyRelu / Clip chain as an ONNX model, its exact meaning
    (read from the proto's initializers and attributes) and the imported nn.Module."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, spec, x = [], [], [], "x"
    sizes = [d, *widths]
    for li, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        W = (np.random.default_rng(rng.randrange(10**6)).standard_normal((n_out, n_in)) * 0.8).astype(
            np.float32
        )
        b = (np.random.default_rng(rng.randrange(10**6)).standard_normal(n_out) * 0.3).astype(np.float32)
        y = f"h{li}"
        if rng.random() < 0.5:
            inits += [numpy_helper.from_array(W, f"W{li}"), numpy_helper.from_array(b, f"b{li}")]
            nodes.append(helper.make_node("Gemm", [x, f"W{li}", f"b{li}"], [y], transB=1))
        else:
            inits += [
                numpy_helper.from_array(np.ascontiguousarray(W.T), f"W{li}"),
                numpy_helper.from_array(b, f"b{li}"),
            ]
            nodes += [
                helper.make_node("MatMul", [x, f"W{li}"], [y + "m"]),
                helper.make_node("Add", [y + "m", f"b{li}"], [y]),
            ]
        spec.append(
            (
                "affine",
                [[Fraction(float(v)) for v in row] for row in W.tolist()],
                [Fraction(float(v)) for v in b.tolist()],
            )
        )
        x = y
        if li < len(widths) - 1:
            kind = rng.choice(["Relu", "LeakyRelu", "Clip"])
            a = f"a{li}"
            if kind == "Relu":
                nodes.append(helper.make_node("Relu", [x], [a]))
                spec.append(("act", lambda t: max(t, Fraction(0))))
            elif kind == "LeakyRelu":
                alpha = rng.choice([0.25, 0.125])
                nodes.append(helper.make_node("LeakyRelu", [x], [a], alpha=alpha))
                spec.append(("act", lambda t, s=Fraction(alpha): t if t >= 0 else s * t))
            else:
                lo, hi = np.float32(-1.0), np.float32(rng.choice([1.0, 1.5, 6.0]))
                inits += [
                    numpy_helper.from_array(np.array(lo), f"lo{li}"),
                    numpy_helper.from_array(np.array(hi), f"hi{li}"),
                ]
                nodes.append(helper.make_node("Clip", [x, f"lo{li}", f"hi{li}"], [a]))
                spec.append(
                    ("act", lambda t, lo=Fraction(float(lo)), hi=Fraction(float(hi)): min(max(t, lo), hi))
                )
            x = a
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    buf = io.BytesIO()
    onnx.save(model, buf)

    def exact(v: np.ndarray) -> list:
        out = list(v.reshape(-1))
        for kind, *rest in spec:
            out = linear(rest[0], rest[1], out) if kind == "affine" else [rest[0](t) for t in out]
        return out

    path = (
        Path(os.environ.get("TMPDIR", "/tmp"))
        / f"torchqv_soundness_{os.getpid()}_{rng.randrange(10**9)}.onnx"
    )
    path.write_bytes(buf.getvalue())
    try:
        f = from_onnx(path)
    finally:
        path.unlink()
    return f, exact


# ------------------------------------------------------------------ random cases
INPUT_STEPS = ["1/3", "1/5", "1/10", Fraction(1, 4), Fraction(1, 2), Fraction(3, 8), None]


@dataclass
class Case:
    seed: int
    kind: str
    relation: str
    norm: str
    eps: Fraction | None
    delta: Fraction | float
    points: int  # grid points of the region (0: empty)
    domain: bool
    boxes: bool
    samples: int
    input_split: int
    use_bounds: bool
    timeout: float
    input_step: str
    roundings: str


@dataclass
class Tally:
    instances: int = 0
    regions: int = 0
    empty_regions: int = 0
    single_point_regions: int = 0
    continuous_regions: int = 0  # f' with a real-valued input (checked on samples, see above)
    verdicts: dict = field(default_factory=lambda: {"EQUIVALENT": 0, "NOT_EQUIVALENT": 0, "UNKNOWN": 0})
    unsound: int = 0
    invalid_counterexamples: int = 0
    crashes: int = 0
    unknown_not_at_time_limit: int = 0
    kinds: dict = field(default_factory=dict)
    relations: dict = field(default_factory=dict)
    seconds: float = 0.0
    failures: list = field(default_factory=list)


def _fmt(rng: random.Random, kind: str, rounding: str) -> tq.FixedPoint | None:
    if kind == "weight":
        pick = rng.random()
        if pick < 0.12:
            return tq.Binary(rounding=rounding, per_channel=rng.random() < 0.5)
        if pick < 0.24:
            return tq.Ternary(rounding=rounding, per_channel=rng.random() < 0.5)
        return tq.FixedPoint(bits=rng.randint(2, 5), rounding=rounding, per_channel=rng.random() < 0.5)
    if rng.random() < 0.15:
        return None  # real-valued (weight-only f')
    bits = rng.randint(2, 6)
    if rng.random() < 0.2:  # affine (zero point chosen by the observer), unsigned codes
        return tq.FixedPoint(bits=bits, signed=False, zero_point=None, rounding=rounding)
    if rng.random() < 0.2:
        return tq.FixedPoint(
            bits=max(bits, 3), step=rng.choice(["1/3", "1/4", "1/5", "1/2"]), rounding=rounding
        )
    return tq.FixedPoint(bits=max(bits, 2), rounding=rounding)


def build(rng: random.Random, continuous: bool = False):
    """A random pair (f, f'), the exact evaluator of f, the input shape and a description
    (``continuous``: f' does not quantize its input)."""
    kind = rng.choices(["mlp", "mlp", "mlp", "conv", "onnx", "residual", "concat", "pool"])[0]
    d = rng.randint(1, 3)
    rules = [rng.choice(["half_away", "half_even", "floor"]) for _ in range(3)]
    step = rng.choice(INPUT_STEPS)
    in_bits = rng.randint(3, 6)
    signed = rng.random() < 0.7
    inp = (
        tq.FixedPoint(bits=in_bits, step=step, signed=signed, rounding=rules[2])
        if step
        else tq.FixedPoint(bits=in_bits, signed=signed, rounding=rules[2])
    )
    cfg = tq.QConfig(
        weight=_fmt(rng, "weight", rules[0]),
        activation=_fmt(rng, "act", rules[1]),
        input=None if continuous else inp,
    )
    torch.manual_seed(rng.randrange(10**6))
    acts = [nn.ReLU, lambda: nn.LeakyReLU(0.25), lambda: nn.Hardtanh(-1.0, 1.5), nn.Identity, nn.ReLU6]
    if kind in ("residual", "concat", "pool"):
        f, shape = graph_net(rng, kind, acts)
        exact = f.exact
    elif kind == "conv":
        shape = (1, 2, 2)
        f = nn.Sequential(nn.Conv2d(1, 2, 2, padding=rng.choice([0, 1])), rng.choice(acts)(), nn.Flatten())
        with torch.no_grad():
            n = f(torch.zeros(1, *shape)).numel()
        f.append(nn.Linear(n, rng.randint(2, 3)))
        exact = lambda v: float_forward(f, v)  # noqa: E731
    elif kind == "onnx":
        shape = (d,)
        f, exact = onnx_chain(rng, d, [rng.randint(2, 4), rng.randint(2, 3)])
    else:
        shape = (d,)
        layers: list[nn.Module] = [nn.Linear(d, rng.randint(1, 4))]
        for _ in range(rng.randint(0, 1)):
            layers += [rng.choice(acts)(), nn.Linear(layers[-1].out_features, rng.randint(2, 4))]
        layers += [
            rng.choice(acts)(),
            nn.Linear(
                layers[-1].out_features if isinstance(layers[-1], nn.Linear) else layers[-2].out_features,
                rng.randint(2, 3),
            ),
        ]
        f = nn.Sequential(*layers)
        exact = lambda v: float_forward(f, v)  # noqa: E731
    fq = tq.quantize(f, cfg)
    scale = rng.choice([0.5, 1.0, 2.0])
    tq.calibrate(fq, [torch.randn(64, *shape) * scale], progress=False)
    fq.eval()
    return (
        f,
        fq,
        exact,
        shape,
        kind,
        f"w={cfg.weight and cfg.weight.describe()} a={cfg.activation and cfg.activation.describe()} "
        f"in={'real' if continuous else inp.describe()}",
    )


def input_quant(fq: nn.Module):
    return fq.input_quant


def region_codes(lo: list[Fraction], hi: list[Fraction], q) -> list[range]:
    """Per coordinate, the codes k with lo <= k * s <= hi inside the input format's range."""
    s = steps_of(q)[0]
    kmin, kmax = code_range(q.fmt, zp_of(q))
    return [range(max(kmin, -((-a) // s)), min(kmax, b // s) + 1) for a, b in zip(lo, hi, strict=True)]


def as_float_tensor(values: list[Fraction], shape: tuple) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32).reshape(1, *shape)


def centre_and_radius(
    rng: random.Random, codes: list[int], centre: list[Fraction], s: Fraction, dim: int
) -> tuple[list[Fraction], Fraction | float]:
    """The region's size: one grid point, many, its boundary on grid points, or none."""
    size = rng.choice(["one", "one", "many", "many", "many", "edge", "empty"])
    if size == "one":
        delta: Fraction | float = rng.choice([s / 3, float(s) / 4, Fraction(0)])
        if delta == 0 and all(Fraction(float(np.float32(float(k * s)))) == k * s for k in codes):
            centre = [k * s for k in codes]  # exactly on the grid (dyadic steps)
        elif delta == 0:
            delta = s / 3
    elif size == "edge":  # the closed ball's boundary on grid points (Park et al.'s odd steps)
        delta = rng.choice([s, 2 * s, float(s)])
    elif size == "empty":
        delta = Fraction(0)
        centre = [k * s + s / 2 for k in codes]  # between grid points (not a float for odd steps)
        centre = [Fraction(float(np.float32(float(c)))) for c in centre]
    else:
        delta = (
            rng.choice([s, 3 * s / 2, float(s) * 2.5, 3 * s]) if dim < 3 else rng.choice([s, float(s) * 1.5])
        )
    return centre, delta


def maybe_domain(
    rng: random.Random, centre: list[Fraction], s: Fraction, lo: list[Fraction], hi: list[Fraction]
) -> tuple[tuple[float, float] | None, list[Fraction], list[Fraction]]:
    """A domain around the centre one time in three (float32 ends), and the region clipped to it."""
    use_domain = rng.random() < 0.35
    domain = None
    if use_domain:
        a = min(centre) - Fraction(rng.choice([0, 1, 2])) * s / 2
        b = max(centre) + Fraction(rng.choice([0, 1, 3])) * s / 2
        domain = (float(np.float32(float(a))), float(np.float32(float(b))))
        domain = (min(domain[0], float(min(centre))), max(domain[1], float(max(centre))))
        lo = [max(v, Fraction(domain[0])) for v in lo]
        hi = [min(v, Fraction(domain[1])) for v in hi]
    return domain, lo, hi


def reachable_eps(rng: random.Random, norm: str, outs: list) -> Fraction | float:
    """Mostly a difference that some grid point reaches exactly (the relation's edge)."""
    norms = sorted(
        {(max if norm == "inf" else sum)(abs(a - b) for a, b in zip(y, yq, strict=True)) for _, y, yq in outs}
        - {0}
    )
    eps: Fraction | float = (
        rng.choice(norms) if norms and rng.random() < 0.8 else Fraction(rng.choice([1, 3, 7]), 8)
    )
    if rng.random() < 0.3 and Fraction(float(eps)) == eps:
        eps = float(eps)  # the same number as a float
    return eps


@dataclass
class Region:
    """What ``judge`` compares a verdict with: the networks and the enumerated region."""

    f: nn.Module
    fq: nn.Module
    exact_f: Any
    q: Any
    shape: tuple[int, ...]
    lo: list[Fraction]
    hi: list[Fraction]
    ranges: list
    outs: list


def judge(res: Any, case: Case, tally: Tally, r: Region, spec: tuple) -> None:
    """The verdict against the exhaustive ground truth: EQUIVALENT needs every grid point to
    agree, a counterexample must be a violating grid point of the region (with the same input
    codes as its float), UNKNOWN only at the time limit."""
    relation, norm, eps, timeout = spec
    fq, exact_f, q, shape, lo, hi, ranges, outs = r.fq, r.exact_f, r.q, r.shape, r.lo, r.hi, r.ranges, r.outs
    s = steps_of(q)[0]
    dim = len(lo)
    eps_x = Fraction(eps) if eps is not None else None
    truth = all(holds(relation, norm, eps_x, y, yq) for _, y, yq in outs)
    if res.verdict == "EQUIVALENT" and not truth:
        tally.unsound += 1
        tally.failures.append({"case": asdict(case), "unsound": res.reason})
    elif res.verdict == "NOT_EQUIVALENT":
        x = [Fraction(v) for v in np.asarray(res.counterexample_exact, dtype=object).reshape(-1).tolist()]
        inside = (
            len(x) == dim
            and all(a <= v <= b for a, v, b in zip(lo, x, hi, strict=True))
            and all((v / s).denominator == 1 and (v / s) in r for v, r in zip(x, ranges, strict=True))
        )
        xs = np.array(x, dtype=object).reshape(shape)
        violated = inside and not holds(relation, norm, eps_x, exact_f(xs), quant_forward(fq, xs))
        # the float tensor reported with it has the same input codes (rounded, then saturated)
        same_codes = inside and all(
            quantize(Fraction(float(v)), q.fmt, s, zp_of(q)) == c
            for v, c in zip(res.counterexample.reshape(-1).tolist(), x, strict=True)
        )
        if not (violated and same_codes):
            tally.invalid_counterexamples += 1
            tally.failures.append({"case": asdict(case), "invalid": res.reason, "x": [str(v) for v in x]})
    elif res.verdict == "UNKNOWN":
        at_limit = "timeout" in res.reason and res.stats["seconds"] >= 0.8 * timeout
        if not at_limit:
            tally.unknown_not_at_time_limit += 1
            tally.failures.append({"case": asdict(case), "unknown": res.reason})


def one_case(seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    if rng.random() < 0.12:
        return continuous_case(seed, rng, tally)
    f, fq, exact_f, shape, kind, desc = build(rng)
    q = input_quant(fq)
    s = steps_of(q)[0]
    kmin, kmax = code_range(q.fmt, zp_of(q))
    dim = int(np.prod(shape))
    # the centre: a float32 near a grid point (sometimes exactly on one), inside the grid's range
    codes = [rng.randint(max(kmin, -6), min(kmax, 6)) for _ in range(dim)]
    centre = [
        Fraction(float(np.float32(float(k * s + Fraction(rng.choice([0, 0, 1, -1, 2]), 7) * s))))
        for k in codes
    ]
    centre, delta = centre_and_radius(rng, codes, centre, s, dim)
    lo = [c - Fraction(delta) for c in centre]
    hi = [c + Fraction(delta) for c in centre]
    domain, lo, hi = maybe_domain(rng, centre, s, lo, hi)
    ranges = region_codes(lo, hi, q)
    npoints = math.prod(len(r) for r in ranges)
    if npoints > MAX_POINTS:
        return
    relation = rng.choice(["strict", "top1", "top1", "eps", "eps"])
    norm = rng.choice(["inf", "l1"]) if relation == "eps" else "inf"
    grid = [[k * s for k in combo] for combo in itertools.product(*ranges)]
    outs = [
        (
            x,
            exact_f(np.array(x, dtype=object).reshape(shape)),
            quant_forward(fq, np.array(x, dtype=object).reshape(shape)),
        )
        for x in grid
    ]
    eps = reachable_eps(rng, norm, outs) if relation == "eps" else None
    timeout = 0.05 if rng.random() < 0.04 else TIMEOUT
    case = Case(
        seed,
        kind,
        relation,
        norm,
        eps if eps is None else Fraction(eps),
        delta,
        npoints,
        domain is not None,
        False,
        rng.choice([0, 0, 256]),
        rng.choice([0, 16]),
        rng.random() > 0.1,
        timeout,
        str(s),
        desc,
    )
    tally.instances += 1
    tally.regions += 1
    tally.kinds[kind] = tally.kinds.get(kind, 0) + 1
    key = relation + (f"/{norm}" if relation == "eps" else "")
    tally.relations[key] = tally.relations.get(key, 0) + 1
    point = torch.tensor([float(c) for c in centre], dtype=torch.float64).reshape(1, *shape)
    kwargs = dict(
        relation=relation,
        eps=eps,
        norm=norm,
        domain=domain,
        timeout=timeout,
        samples=case.samples,
        input_split=case.input_split,
        use_bounds=case.use_bounds,
        seed=seed,
    )
    use_boxes = rng.random() < 0.15
    if use_boxes:
        case.boxes = True
        box = (
            torch.tensor([float(v) for v in lo]).reshape(1, *shape),
            torch.tensor([float(v) for v in hi]).reshape(1, *shape),
        )
        # the float32/64 box ends are the region's exact ends only when they are doubles
        lo = [Fraction(float(v)) for v in box[0].reshape(-1).double().tolist()]
        hi = [Fraction(float(v)) for v in box[1].reshape(-1).double().tolist()]
        if domain is not None:
            lo = [max(v, Fraction(domain[0])) for v in lo]
            hi = [min(v, Fraction(domain[1])) for v in hi]
        ranges = region_codes(lo, hi, q)
        npoints = math.prod(len(r) for r in ranges) if all(a <= b for a, b in zip(lo, hi, strict=True)) else 0
        grid = [[k * s for k in combo] for combo in itertools.product(*ranges)] if npoints else []
        outs = [
            (
                x,
                exact_f(np.array(x, dtype=object).reshape(shape)),
                quant_forward(fq, np.array(x, dtype=object).reshape(shape)),
            )
            for x in grid
        ]
        case.points = npoints
    t0 = time.perf_counter()
    try:
        if npoints == 0:
            tally.empty_regions += 1
            try:
                if use_boxes:
                    tq.verify_equivalence(f, fq, boxes=box, **kwargs)
                else:
                    tq.verify_equivalence(f, fq, point, delta, **kwargs)
            except tq.QuantizationError as err:
                if not any(w in str(err) for w in ("no grid point", "disjoint", "empty")):
                    tally.failures.append({"case": asdict(case), "empty region, unclear error": str(err)})
                    tally.crashes += 1
            else:
                tally.failures.append({"case": asdict(case), "empty region": "no QuantizationError"})
                tally.unsound += 1
            return
        if npoints == 1:
            tally.single_point_regions += 1
        if use_boxes:
            (res,) = tq.verify_equivalence(f, fq, boxes=box, **kwargs)
        else:
            (res,) = tq.verify_equivalence(f, fq, point, delta, **kwargs)
    except Exception as err:
        tally.crashes += 1
        tally.failures.append({"case": asdict(case), "crash": repr(err)[:500]})
        return
    finally:
        tally.seconds += time.perf_counter() - t0
    tally.verdicts[res.verdict] += 1
    judge(
        res,
        case,
        tally,
        Region(f, fq, exact_f, q, shape, lo, hi, ranges, outs),
        (relation, norm, eps, timeout),
    )


def continuous_case(seed: int, rng: random.Random, tally: Tally) -> None:
    """f' with a real-valued input: the region is a box of rationals, which no enumeration covers.
    Checked: a counterexample is an exact point of the box that violates the relation here; an
    EQUIVALENT verdict agrees with a grid of 5 points per coordinate and 40 random points."""
    f, fq, exact_f, shape, kind, desc = build(rng, continuous=True)
    dim = int(np.prod(shape))
    centre = [Fraction(float(np.float32(rng.uniform(-2, 2)))) for _ in range(dim)]
    delta = rng.choice([0.0, 0.05, 0.25, Fraction(1, 3)])
    relation = rng.choice(["strict", "top1", "eps"])
    norm = rng.choice(["inf", "l1"]) if relation == "eps" else "inf"
    eps = Fraction(rng.choice([1, 3, 5]), 16) if relation == "eps" else None
    lo = [c - Fraction(delta) for c in centre]
    hi = [c + Fraction(delta) for c in centre]
    case = Case(seed, kind + "/real", relation, norm, eps, delta, -1, False, False, rng.choice([0, 256]),
                rng.choice([0, 16]), True, TIMEOUT, "real", desc)  # fmt: skip
    tally.instances += 1
    tally.regions += 1
    tally.continuous_regions += 1
    tally.kinds[case.kind] = tally.kinds.get(case.kind, 0) + 1
    point = torch.tensor([float(c) for c in centre], dtype=torch.float64).reshape(1, *shape)
    t0 = time.perf_counter()
    try:
        (res,) = tq.verify_equivalence(
            f, fq, point, delta, relation=relation, eps=eps, norm=norm, timeout=TIMEOUT,
            samples=case.samples, input_split=case.input_split, seed=seed,
        )  # fmt: skip
    except Exception as err:
        tally.crashes += 1
        tally.failures.append({"case": asdict(case), "crash": repr(err)[:500]})
        return
    finally:
        tally.seconds += time.perf_counter() - t0
    tally.verdicts[res.verdict] += 1

    def violated(x: list) -> bool:
        xs = np.array(x, dtype=object).reshape(shape)
        return not holds(relation, norm, eps, exact_f(xs), quant_forward(fq, xs))

    if res.verdict == "NOT_EQUIVALENT":
        x = [Fraction(v) for v in np.asarray(res.counterexample_exact, dtype=object).reshape(-1).tolist()]
        if not (all(a <= v <= b for a, v, b in zip(lo, x, hi, strict=True)) and violated(x)):
            tally.invalid_counterexamples += 1
            tally.failures.append({"case": asdict(case), "invalid": res.reason, "x": [str(v) for v in x]})
    elif res.verdict == "EQUIVALENT":
        axes = [[a + (b - a) * Fraction(i, 4) for i in range(5)] for a, b in zip(lo, hi, strict=True)]
        pts = list(itertools.product(*axes))[:400]
        pts += [
            [a + (b - a) * Fraction(rng.randint(0, 1000), 1000) for a, b in zip(lo, hi, strict=True)]
            for _ in range(40)
        ]
        if any(violated(list(x)) for x in pts):
            tally.unsound += 1
            tally.failures.append({"case": asdict(case), "unsound (sampled)": res.reason})
    elif not ("timeout" in res.reason and res.stats["seconds"] >= 0.8 * TIMEOUT):
        tally.unknown_not_at_time_limit += 1
        tally.failures.append({"case": asdict(case), "unknown": res.reason})


def run_batch(batch: int, cases: int) -> Tally:
    tally = Tally()
    for i in range(batch, cases, BATCHES):
        one_case(1000 + i, tally)
    return tally


@pytest.mark.parametrize("batch", range(BATCHES))
def test_soundness_campaign(batch: int) -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tally = run_batch(batch, CASES)
    tally.seconds = time.perf_counter() - t0
    out = os.environ.get("TORCHQV_SOUNDNESS_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"batch{batch}.json").write_text(json.dumps(asdict(tally), default=str, indent=1))
    assert tally.instances > 0
    bad = tally.unsound + tally.invalid_counterexamples + tally.crashes + tally.unknown_not_at_time_limit
    assert bad == 0, json.dumps(tally.failures[:5], default=str, indent=1)


def summarize(folder: str) -> dict:
    """Add up the per-batch counts of a campaign run."""
    total: dict = {}
    for path in sorted(Path(folder).glob("batch*.json")):
        part = json.loads(path.read_text())
        for key, value in part.items():
            if isinstance(value, dict):
                bucket = total.setdefault(key, {})
                for k, v in value.items():
                    bucket[k] = bucket.get(k, 0) + v
            elif isinstance(value, list):
                total.setdefault(key, []).extend(value)
            else:
                total[key] = total.get(key, 0) + value
    return total


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "summarize":
        print(json.dumps(summarize(sys.argv[2]), indent=1))
    else:
        sys.exit("usage: python tests/test_soundness.py summarize FOLDER")
