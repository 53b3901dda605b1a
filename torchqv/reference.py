"""The integer reference: runs a quantized model with exact integer and rational arithmetic.

The oracle of the tests.  It shares nothing with the fast path but the definitions of the
format (``FixedPoint.round_exact``, saturation) and of the activations
(``activations.round_activation``): weights are re-quantized from the float parameters with
exact rationals, affine maps are integer dot products of codes (Python ints in numpy object
arrays), requantization multiplies by the exact rational ``s_w s_x / s_out``, and activations
are rounded from their exact (or arbitrary-precision) values.  No floating-point number enters
the data path; inputs that are real numbers are taken at their exact binary values.

Supported graphs: the modules of :mod:`torchqv.modules`, Flatten, Dropout, Identity, MaxPool2d
and the reshaping ops (``flatten``, ``view``, ``reshape``) in an fx-traceable model.
"""

from __future__ import annotations

import operator
from fractions import Fraction

import numpy as np
import torch
from torch import fx, nn

from .activations import round_activation
from .fake_quant import FakeQuantize
from .formats import QuantizationError, fraction_to_float
from .modules import QuantAct, QuantConv2d, QuantLinear, _QuantAffine
from .quantize import trace

Obj = np.ndarray  # numpy arrays of Fraction (dtype=object)


def _obj_array(values: list, shape: tuple) -> Obj:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out.reshape(shape)


def _to_obj(x: torch.Tensor) -> Obj:
    """Exact values of a float tensor."""
    return _obj_array([Fraction(v) for v in x.detach().to(torch.float64).flatten().tolist()], tuple(x.shape))


def _to_tensor(a: Obj) -> torch.Tensor:
    return torch.tensor([fraction_to_float(v) for v in a.flatten().tolist()], dtype=torch.float64).reshape(
        a.shape
    )


def _quantize_obj(q: FakeQuantize, a: Obj) -> Obj:
    """Exact quantization ``saturate(round(a / step)) * step`` elementwise (per channel on axis 0)."""
    steps, zp = q.steps(), q.zp
    out = np.empty(a.shape, dtype=object)
    for idx in np.ndindex(a.shape):
        s = steps[idx[q.axis]] if len(steps) > 1 else steps[0]
        out[idx] = q.fmt.quantize_exact(a[idx], s, zp) * s
    return out


def _round_obj(q: FakeQuantize, a: Obj) -> Obj:
    """Round exact values to the quantizer's (per-tensor) grid."""
    s, zp = q.steps()[0], q.zp
    return np.vectorize(lambda v: q.fmt.quantize_exact(v, s, zp) * s, otypes=[object])(a)


def _weights(m: _QuantAffine) -> tuple[Obj, list[Fraction]]:
    """Integer weight codes (object array) and per-channel steps."""
    if m.frozen:
        codes = _obj_array([int(v) for v in m.weight_int.flatten().tolist()], tuple(m.weight_int.shape))
        return codes, m.weight_steps()
    steps = m.weight_steps()
    w = _to_obj(m.weight)
    codes = np.empty(w.shape, dtype=object)
    for idx in np.ndindex(w.shape):
        codes[idx] = m.weight_quant.fmt.quantize_exact(w[idx], steps[idx[0]], 0)
    return codes, steps


def _affine(m: _QuantAffine, x: Obj) -> Obj:
    if m.weight_quant is None:
        w, scale = _to_obj(m.weight), [Fraction(1)] * m.out_channels_
    else:
        w, scale = _weights(m)
    inq = m.input_quantizer
    if inq is not None:  # integer codes of the input, exact by construction
        sx = inq.steps()[0]
        xk = np.vectorize(lambda v: v / sx, otypes=[object])(x)
        if any(v.denominator != 1 for v in xk.flat):
            raise QuantizationError(f"reference: input of {m.qname} is not on its producer's grid")
        xk = np.vectorize(lambda v: int(v), otypes=[object])(xk)
        scale = [s * sx for s in scale]
    else:
        xk = x
    acc = _conv(m, w, xk) if isinstance(m, QuantConv2d) else _linear(w, xk)
    ch = [1, -1, 1, 1] if isinstance(m, QuantConv2d) else [-1]
    if "bias_int" in m._buffers:
        bias = np.array(
            [Fraction(int(b)) * s for b, s in zip(m.bias_int.tolist(), scale, strict=False)], dtype=object
        )
    elif m.bias is None:
        bias = np.array([Fraction(0)] * len(scale), dtype=object)
    elif inq is not None and m.weight_quant is not None:
        fmt = m.weight_quant.fmt.integer_rounding()
        bias = np.array(
            [
                fmt.round_exact(Fraction(b) / s) * s
                for b, s in zip(m.bias.detach().double().tolist(), scale, strict=False)
            ],
            dtype=object,
        )
    else:
        bias = np.array([Fraction(b) for b in m.bias.detach().double().tolist()], dtype=object)
    value = acc * np.array(scale, dtype=object).reshape(ch) + bias.reshape(ch)
    return value if m.out_quant is None else _round_obj(m.out_quant, value)


def _linear(w: Obj, x: Obj) -> Obj:
    lead = x.shape[:-1]
    out = x.reshape(-1, x.shape[-1]).dot(w.T)
    return out.reshape((*lead, w.shape[0]))


def _conv(m: QuantConv2d, w: Obj, x: Obj) -> Obj:
    n, _, h, wd = x.shape
    (ph, pw), (sh, sw), (dh, dw) = m.padding, m.stride, m.dilation
    cout, cin_g, kh, kw = w.shape
    xp = np.full((n, x.shape[1], h + 2 * ph, wd + 2 * pw), Fraction(0), dtype=object)
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.full((n, cout, ho, wo), 0, dtype=object)
    per_group = cout // m.groups
    for g in range(m.groups):
        wg = w[g * per_group : (g + 1) * per_group]
        xg = xp[:, g * cin_g : (g + 1) * cin_g]
        for p in range(kh):
            for q in range(kw):
                xs = xg[
                    :, :, p * dh : p * dh + sh * (ho - 1) + 1 : sh, q * dw : q * dw + sw * (wo - 1) + 1 : sw
                ]
                contrib = np.tensordot(wg[:, :, p, q], xs, axes=([1], [1]))  # (cout_g, n, ho, wo)
                out[:, g * per_group : (g + 1) * per_group] += contrib.transpose(1, 0, 2, 3)
    return out


def _act(m: QuantAct, x: Obj) -> Obj:
    if m.out_quant is None:  # a real-valued activation: exact only when piecewise linear
        if not m.act.piecewise_linear:
            raise QuantizationError(
                f"reference: {m.qname} ({m.act.name}) has no output format, so its real value "
                "is transcendental; give QConfig.activation a format"
            )
        return np.vectorize(m.act.exact, otypes=[object])(x)
    q = m.out_quant
    s, zp = q.steps()[0], q.zp

    def one(v: Fraction) -> Fraction:
        return q.fmt.saturate_exact(round_activation(m.act, q.fmt, v, s), zp) * s

    return np.vectorize(one, otypes=[object])(x)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return v if isinstance(v, tuple) else (v, v)


def _maxpool(m: nn.MaxPool2d, x: Obj) -> Obj:
    kh, kw = _pair(m.kernel_size)
    sh, sw = _pair(m.stride or m.kernel_size)
    (ph, pw), (dh, dw) = _pair(m.padding), _pair(m.dilation)
    if m.ceil_mode:
        raise QuantizationError("reference: MaxPool2d(ceil_mode=True) is unsupported")
    n, c, h, w = x.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.empty((n, c, ho, wo), dtype=object)
    for i in range(ho):
        for j in range(wo):
            rows = [i * sh - ph + p * dh for p in range(kh)]
            cols = [j * sw - pw + q * dw for q in range(kw)]
            cells = [x[:, :, r, cc] for r in rows for cc in cols if 0 <= r < h and 0 <= cc < w]
            best = cells[0].copy()
            for cell in cells[1:]:
                best = np.where(cell > best, cell, best)
            out[:, :, i, j] = best
    return out


def _flatten(x: Obj, start: int = 0, end: int = -1) -> Obj:
    end = end % x.ndim
    shape = (*x.shape[:start], -1, *x.shape[end + 1 :])
    return x.reshape(shape)


def reference_forward(model: nn.Module, x: torch.Tensor, exact: bool = False) -> torch.Tensor | Obj:
    """Run a quantized model with exact arithmetic.

    Returns float64 values (each the double nearest to the exact result, as the eval-mode
    simulation returns them), or the exact ``Fraction`` array with ``exact=True``.
    """
    value = _to_obj(x)
    if isinstance(model, (_QuantAffine, QuantAct)):
        out = _run_module(model, value)
    else:
        gm = trace(model)
        env: dict[str, object] = {}
        out = None
        for node in gm.graph.nodes:
            args = fx.node.map_arg(node.args, lambda n: env[n.name])
            if node.op == "placeholder":
                env[node.name] = value
            elif node.op == "call_module":
                env[node.name] = _run_module(model.get_submodule(node.target), *args)
            elif node.op == "get_attr":
                env[node.name] = _to_obj(getattr(gm, node.target))
            elif node.op == "call_function" and node.target in (operator.add, operator.sub):
                env[node.name] = node.target(*args)
            elif node.op == "call_function" and node.target is torch.flatten:
                env[node.name] = _flatten(*args, **node.kwargs)
            elif node.op == "call_function" and node.target is operator.getitem:
                env[node.name] = args[0][args[1]]
            elif node.op == "call_method" and node.target in ("view", "reshape"):
                shape = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
                env[node.name] = args[0].reshape(tuple(shape))
            elif node.op == "call_method" and node.target == "flatten":
                env[node.name] = _flatten(*args, **node.kwargs)
            elif node.op == "call_method" and node.target == "size":
                env[node.name] = args[0].shape if len(args) == 1 else args[0].shape[args[1]]
            elif node.op == "call_method" and node.target == "contiguous":
                env[node.name] = args[0]
            elif node.op == "output":
                out = args[0]
            else:
                raise QuantizationError(f"reference: unsupported node {node.op} {node.target}")
    return out if exact else _to_tensor(out)


def _run_module(m: nn.Module, x: Obj) -> Obj:
    if isinstance(m, (QuantLinear, QuantConv2d, QuantAct)) and m.in_quant is not None:
        x = _quantize_obj(m.in_quant, x)
    if isinstance(m, (QuantLinear, QuantConv2d)):
        return _affine(m, x)
    if isinstance(m, QuantAct):
        return _act(m, x)
    if isinstance(m, nn.Flatten):
        return _flatten(x, m.start_dim, m.end_dim)
    if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)):
        return x
    if isinstance(m, nn.MaxPool2d):
        return _maxpool(m, x)
    raise QuantizationError(f"reference: unsupported module {type(m).__name__}")
