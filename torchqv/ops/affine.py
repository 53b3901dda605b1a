"""Affine operations: ``Linear``, ``Conv1d``/``Conv2d`` (groups, dilation, stride, padding modes) and
a standalone per-channel ``BatchNorm`` (an affine map once its statistics are frozen).

The semantics is Park, Park & Hwang, "On expressive power of quantized neural networks under fixed-point
arithmetic", Eq. 7 (the fixed-point affine map of Eq. 5-7): the exact value ``t = (W x + b) / s_out`` with
quantized weights ``W = k_w s_w`` (per output channel), inputs on their grid ``x = k_x s_x`` and the bias on
the accumulator grid ``b = B s_w s_x`` (``B = round(b / (s_w s_x))``, never saturated) is rounded once to the
output format:

    k_out = saturate(round((sum_j k_w[c, j] k_x[j] + B_c) * s_w[c] s_x / s_out))

The exact executor computes the accumulator ``A = sum k_w k_x`` in floating point only where every
partial sum is provably an exact integer (float32 below ``2^24``, float64 below ``2^53``; larger
reductions are split into blocks that are), then requantizes in integer arithmetic
(:func:`torchqv.grid.requantize`).  Inputs that are real numbers (an unquantized network input)
use a certified float64 path with an exact rational fall-back for values near a rounding boundary.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, UnsupportedModelError
from ..fake_quant import DIV_ERR, FakeQuantize, fake_quantize
from ..formats import (
    dequantize_f64,
    dequantize_groups,
    expand_groups,
    fraction_to_float,
    round_certified,
)
from ..grid import Grid, QTensor, Requantizer, as_codes, tensor_max_abs
from ..rational import (
    INT64_SAFE,
    RTensor,
    conv_int,
    float_codes,
    fractions,
    max_abs,
    round_fractions,
    round_scaled,
)
from ..rational import saturate as ref_saturate
from .base import Call, Kind, NodeIO, OnGrid, Operation, Real, Unsupported, register

U64 = 2.0**-53
F32_EXACT = 2**24
F64_EXACT = 2**53


def _gamma(n: int) -> float:
    """Higham's bound: |fl(x . y) - x . y| <= gamma_n |x| . |y| with gamma_n = n u / (1 - n u)."""
    return 2 * n * U64 / (1 - n * U64)  # factor 2: margin for fused or reordered kernels


def check_finite(name: str, **tensors: torch.Tensor | None) -> None:
    for what, t in tensors.items():
        if t is not None and not bool(torch.isfinite(t).all()):
            raise UnsupportedModelError(f"{name}: {what} contains NaN or inf; fix the float model first")


class QuantAffine(Operation, nn.Module):
    """Shared semantics of the affine operations (subclasses give the linear map)."""

    weight_int: torch.Tensor  # buffers of a frozen layer (integer weights and bias)
    bias_int: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, cfg: Any, name: str):
        nn.Module.__init__(self)
        check_finite(name, weight=weight, bias=bias)
        self.qname = name
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        wfmt = cfg.weight
        if wfmt is not None and wfmt.group_size is not None and not self.has_reduction:
            wfmt = dataclasses.replace(wfmt, group_size=None)  # one weight per channel: per-channel steps
        # weight steps: one per output channel, or one per (output channel, group)
        n_steps = weight.shape[0]
        if wfmt is not None:
            n_steps *= wfmt.group_count(int(weight[0].numel()), f"{name}.weight")
        self.weight_quant = (
            FakeQuantize(wfmt, n_steps, 0, cfg.weight_observer, cfg.learn_step, f"{name}.weight", True)
            if wfmt is not None
            else None
        )
        self.out_quant = (
            FakeQuantize(cfg.activation, 1, 0, cfg.activation_observer, cfg.learn_step, f"{name}.out")
            if cfg.activation is not None
            else None
        )
        self._cache: dict[str, Any] = {}

    has_reduction: bool = True  # False: each output reads one weight (batch norm): no groups
    slices_groups: bool = False  # True: a step group is a slice of the input's last dimension (Linear)

    # ------------------------------------------------------------ subclass hooks
    def linear_map(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """The float map ``W x (+ b)`` in ``x``'s dtype."""
        raise NotImplementedError

    channel_axis: int = 1  # the output's channel dimension (Linear: the last)

    def fan_in_unit(self) -> int:
        """Inputs per input channel in one output (the kernel size; 1 for Linear)."""
        return 1

    def split_inputs(
        self, x: torch.Tensor, w: torch.Tensor, chunk: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(x_part, w_part)`` blocks whose maps sum to ``linear_map(x, w)``, each with at most
        ``chunk`` input channels (``[]`` when the map cannot be split)."""
        return []

    def patches(self, x: torch.Tensor, group: int | None = None) -> torch.Tensor:
        """Rows of inputs that the weight rows see (``(rows, fan_in)``, float64): the input for
        Linear, unfolded windows for a convolution (of one group, or all groups)."""
        raise NotImplementedError

    def row_of(self, flat: int, out_shape: torch.Size) -> tuple[int, int]:
        """Output channel of flat output index ``flat`` and its row in ``patches(x, group)``."""
        raise NotImplementedError

    @property
    def groups_(self) -> int:
        return 1

    # ------------------------------------------------------------ build
    @classmethod
    def build(cls, call: Call) -> Operation:  # pragma: no cover - subclasses
        raise NotImplementedError

    def out_kind(self, call: Call) -> Kind:
        return OnGrid(call.name) if self.out_quant is not None else Real()

    def quantizers(self) -> list[FakeQuantize]:
        return [q for q in (self.weight_quant, self.out_quant) if q is not None]

    def describe(self) -> str:
        return type(self).__name__

    # ------------------------------------------------------------ parameters
    @property
    def out_channels_(self) -> int:
        w = self.weight_int if self.frozen else self.weight
        return w.shape[0]

    @property
    def frozen(self) -> bool:
        return "weight_int" in self._buffers

    @property
    def quantized(self) -> bool:
        return self.weight_quant is not None or self.frozen

    def weight_codes(self) -> torch.Tensor:
        """Centered integer codes of the weights (float64 tensor; cached until the weights or
        their steps change)."""
        if self.frozen:
            return self.weight_int.to(torch.float64)
        if self.weight_quant is None:
            raise ConfigError(f"{self.qname}: weights are not quantized (QConfig.weight is None)")
        key = (self.weight._version, self.weight.data_ptr(), self.weight_quant.state_key())
        cached = self._cache.get("weight_codes")
        if cached is None or cached[0] != key:  # kept compact: int8/16/32 by the format's width
            codes = self.weight_quant.exact_codes(self.weight)
            cached = (key, codes.to(_int_dtype(self.weight_quant.fmt.bits)))
            self._cache["weight_codes"] = cached
        return cached[1].to(torch.float64)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the derived caches (codes are recomputed from the parameters)."""
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    @property
    def group_size(self) -> int | None:
        """The weight format's ``group_size`` when this layer has per-group steps, else ``None``."""
        wq = self.weight_quant
        return wq.fmt.group_size if wq is not None and wq.grouped else None

    def weight_step_groups(self) -> list[list[Fraction]]:
        """The weight steps as ``[out][G]`` (``G = 1`` without ``group_size``): row ``o``'s
        element ``j`` (weight flattened to ``[out, R]``) has step ``[o][j // group_size]``."""
        steps = self.weight_quant.steps()  # type: ignore[union-attr]
        out = self.out_channels_
        if len(steps) == 1:
            return [list(steps)] * out
        per = len(steps) // out
        return [steps[o * per : (o + 1) * per] for o in range(out)]

    def weight_steps(self) -> list[Fraction]:
        """One step per output channel (formats without ``group_size``; see
        :meth:`weight_step_groups` and :meth:`row_steps`)."""
        if self.group_size is not None:
            raise ConfigError(
                f"{self.qname}: weights have per-group steps (group_size={self.group_size}); use "
                "weight_step_groups() (or row_steps() for the bias grid)"
            )
        steps = self.weight_quant.steps()  # type: ignore[union-attr]
        return steps if len(steps) > 1 else steps * self.out_channels_

    def row_steps(self) -> list[Fraction]:
        """Per output channel: the weight step (per-channel formats), or the finest step of the
        row's groups (``group_size``); the bias grid is ``row_steps() * s_x``."""
        return [min(row) for row in self.weight_step_groups()]

    def weight_step_tensor(self) -> torch.Tensor:
        """Each weight's step (float64, the weight's shape; the double nearest to the step)."""
        shape = self.weight_int.shape if self.frozen else self.weight.shape
        flat = torch.tensor(
            [fraction_to_float(f) for row in self.weight_step_groups() for f in row], dtype=torch.float64
        )
        return expand_groups(flat, shape)

    def dequantized_weight(self) -> torch.Tensor:
        """The quantized weights as real values (float64)."""
        if self.group_size is not None:
            return dequantize_groups(self.weight_codes(), self.weight_quant.steps())  # type: ignore[union-attr]
        return dequantize_f64(self.weight_codes(), self.weight_steps(), 0)

    def group_parts(self, kw: torch.Tensor) -> list[torch.Tensor]:
        """The weight codes split by step group: ``G`` tensors of ``kw``'s shape, each zero outside
        its group (so ``map(x, kw) = sum_g map(x, part_g)``); ``[kw]`` without ``group_size``."""
        gs = self.group_size
        if gs is None:
            return [kw]
        rows = kw.reshape(kw.shape[0], -1)
        parts = []
        for g in range(rows.shape[1] // gs):
            part = torch.zeros_like(rows)
            part[:, g * gs : (g + 1) * gs] = rows[:, g * gs : (g + 1) * gs]
            parts.append(part.reshape(kw.shape))
        return parts

    def bias_codes(self, scale: list[Fraction]) -> torch.Tensor | None:
        """Bias on the accumulator grid ``s_w * s_x`` (unsaturated; the weight format's rounding)."""
        if "bias_int" in self._buffers:
            return self.bias_int.to(torch.float64)
        if self.bias is None:
            return None
        b = self.bias.detach().to(torch.float64)
        s = torch.tensor([fraction_to_float(f) for f in scale], dtype=torch.float64, device=b.device)
        t_hat = b / s
        fmt = self.weight_quant.fmt.integer_rounding()  # type: ignore[union-attr]
        return round_certified(
            fmt,
            t_hat,
            t_hat.abs() * DIV_ERR,
            lambda idx: [fmt.round_exact(Fraction(b[i].item()) / scale[i]) for i in idx],
            f"{self.qname}.bias",
        )

    def freeze_(self, in_quant: FakeQuantize | None) -> None:
        """Store integer weights (and the integer bias when the input grid is known)."""
        if self.frozen or self.weight_quant is None:
            return
        kw = self.weight_codes()
        dtype = _int_dtype(self.weight_quant.fmt.bits)
        bias_int = None
        if self.bias is not None and in_quant is not None:
            sx = in_quant.steps()[0]
            bias_int = self.bias_codes([s * sx for s in self.row_steps()])
        del self.weight
        self.register_buffer("weight_int", kw.to(dtype))
        if bias_int is not None:
            del self.bias
            self.bias = None
            self.register_buffer("bias_int", bias_int.to(torch.int64))
        self._cache.clear()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight_int"
        if key in state_dict and not self.frozen:
            shape = self.weight.shape
            del self.weight
            self.register_buffer("weight_int", torch.zeros(shape, dtype=state_dict[key].dtype))
            if prefix + "bias_int" in state_dict:
                del self.bias
                self.bias = None
                self.register_buffer("bias_int", torch.zeros(shape[0], dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------ training path
    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> torch.Tensor:
        (x,) = args
        if self.frozen:
            raise ConfigError(f"{self.qname} is frozen (integer weights); train the unfrozen model")
        wq = self.weight_quant
        w = self.weight if wq is None else wq(self.weight)
        b: torch.Tensor | None = self.bias
        inq = io.in_quants[0] if io.in_quants else None
        if b is not None and wq is not None and inq is not None and wq.fake_quant_enabled:
            sx = fraction_to_float(inq.steps()[0])
            st = wq.step_tensor(self.weight).detach()
            if self.group_size is not None:  # the bias grid: the finest step of each row
                st = st.reshape(st.shape[0], -1).min(1).values
            s_acc = (st.flatten() * sx).to(b.dtype)
            b = fake_quantize(b, s_acc, wq.fmt.integer_rounding(), float("-inf"), float("inf"))
        y = self.linear_map(x, w, b)
        return self.out_quant(y) if self.out_quant is not None else y

    # ------------------------------------------------------------ exact path
    def _param_key(self, sx: Fraction | None) -> tuple:
        """Changes whenever a parameter, a buffer or a step changes (tensor versions)."""
        tensors = [*self.parameters(recurse=False), *self.buffers(recurse=False)]
        quants = [q for q in (self.weight_quant, self.out_quant) if q is not None]
        return (
            sx,
            tuple((t._version, t.data_ptr(), t.device) for t in tensors),
            tuple(q.state_key() for q in quants),
        )

    def _integer_params(self, sx: Fraction) -> dict[str, Any]:
        """What the integer path needs that does not depend on the data (cached)."""
        key = self._param_key(sx)
        if self._cache.get("key") == key:
            return self._cache
        kw = self.weight_codes()
        self._cache = {k: v for k, v in self._cache.items() if k == "weight_codes"}
        groups = self.weight_step_groups()
        scale = [s * sx for s in self.row_steps()]  # the bias grid (the weight step per channel)
        bias = self.bias_codes(scale)
        so = self.out_quant.steps()[0] if self.out_quant is not None else None
        parts: list[dict[str, Any]] = []
        gs = self.group_size
        sliced = gs is not None and self.slices_groups
        if gs is not None and sliced:  # the group's slice of the features (and of the input's last dimension)
            split = [kw[:, g * gs : (g + 1) * gs] for g in range(kw.shape[1] // gs)]
        else:
            split = self.group_parts(kw)
        for g, codes in enumerate(split):  # one part per step group (one without)
            absw = codes.abs().reshape(codes.shape[0], -1)
            w_max = int(absw.max()) if absw.numel() else 0
            parts.append(
                {
                    "codes": codes.to(torch.float32) if w_max < F32_EXACT else codes,
                    "w_max": w_max,
                    "l1_max": int(absw.sum(1).max()) if absw.numel() else 0,
                    "rate": [row[g] * sx for row in groups],
                    "cols": slice(g * gs, (g + 1) * gs) if gs is not None and sliced else None,
                }
            )
        self._cache |= {
            "key": key,
            "parts": parts,
            "bias": bias.to(torch.int64) if bias is not None else None,
            "scale": scale,
        }
        if so is not None:
            # t = (sum_g A_g s_w[g] s_x + B s_b s_x) / s_out: one term per group, the bias codes enter
            # as per-channel constants
            mult = [s / so for s in scale]
            const: list[Fraction] | Fraction = Fraction(0)
            if bias is not None:
                const = [int(b) * m for b, m in zip(bias.tolist(), mult, strict=True)]
            assert self.out_quant is not None  # so is its step
            self._cache["requant"] = Requantizer(
                [[r / so for r in part["rate"]] for part in parts],
                self.out_quant.grid(),
                const or Fraction(0),
                self.channel_axis,
            )
        return self._cache

    def accumulate(self, xk: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
        """``A = linear_map(k_x, k_w)`` exactly, computed in floating point where every partial
        sum is provably an exact integer: float32 below ``2^24`` (one product, or blocks of the
        reduction summed in float64), float64 below ``2^53``, else int64 kernels.  The result
        holds whole numbers (float32, float64 or int64)."""
        x_max = tensor_max_abs(xk)
        if p["l1_max"] * x_max < F32_EXACT:
            return self.linear_map(xk.to(torch.float32), p["codes"].to(torch.float32))
        per = max(p["w_max"] * x_max, 1)
        chunk = (F32_EXACT - 1) // (per * self.fan_in_unit())
        blocks = self.split_inputs(xk, p["codes"], chunk) if chunk >= 1 else []
        if blocks and p["l1_max"] * x_max < F64_EXACT:  # float32 blocks, summed exactly in float64
            acc = None
            for xb, wb in blocks:
                part = self.linear_map(xb.to(torch.float32), wb.to(torch.float32)).to(torch.float64)
                acc = part if acc is None else acc + part
            return acc  # type: ignore[return-value]
        if p["l1_max"] * x_max < F64_EXACT:
            return self.linear_map(xk.to(torch.float64), p["codes"].to(torch.float64))
        return self.linear_map(xk.to(torch.int64), p["codes"].to(torch.int64))  # int64 kernels (CPU)

    def exact(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        (x,) = args
        if isinstance(x, QTensor) and self.quantized:
            p = self._integer_params(x.grid.step)
            accs = [
                self.accumulate(x.codes if part["cols"] is None else x.codes[..., part["cols"]], part)
                for part in p["parts"]
            ]
            if self.out_quant is None:  # a real output, as configured
                if len(accs) > 1:
                    return self._real_groups(accs, p)
                acc = accs[0].to(torch.int64)
                if p["bias"] is not None:
                    acc = acc + p["bias"].view(self._channel_shape(acc))
                return acc.to(torch.float64) * self._column(p["scale"], acc)
            return QTensor(p["requant"](accs, self.qname), self.out_quant.grid())
        return self._certified(x)

    def _real_groups(self, accs: list[torch.Tensor], p: dict[str, Any]) -> torch.Tensor:
        """The real output ``sum_g A_g s_w[g] s_x + B s_b s_x`` of per-group steps, each element the
        double nearest to its exact value: ``N / L`` over the common denominator ``L`` of a
        channel, with ``N`` an exact integer in float64 when it stays below ``2^53`` (one
        division, one rounding), else with Python integers."""
        rates = [part["rate"] for part in p["parts"]]
        if p["bias"] is not None:
            accs = [*accs, p["bias"].to(torch.float64).view(self._channel_shape(accs[0]))]
            rates.append(p["scale"])
        channels = len(rates[0])
        common = [math.lcm(*(r[c].denominator for r in rates)) for c in range(channels)]
        ints = [[int(r[c] * common[c]) for c in range(channels)] for r in rates]
        bound = sum(tensor_max_abs(a) * max(map(abs, m)) for a, m in zip(accs, ints, strict=True))
        shape = self._channel_shape(accs[0])
        if bound < F64_EXACT and max(common) < F64_EXACT:
            num = sum(
                a.to(torch.float64) * torch.tensor(m, dtype=torch.float64, device=a.device).view(shape)
                for a, m in zip(accs, ints, strict=True)
            )
            assert isinstance(num, torch.Tensor)  # accs is not empty
            return num / torch.tensor(common, dtype=torch.float64, device=num.device).view(shape)
        ndim, ax = accs[0].dim(), self.channel_axis % accs[0].dim()

        def column(values: list[int]) -> np.ndarray:
            col = np.empty(channels, dtype=object)
            col[:] = values
            return col.reshape([channels if d == ax else 1 for d in range(ndim)])

        num = sum(
            np.array(a.to(torch.int64).cpu().tolist(), dtype=object) * column(m)
            for a, m in zip(accs, ints, strict=True)
        )
        den = np.broadcast_to(column(common), num.shape)
        out = [fraction_to_float(Fraction(int(n), int(d))) for n, d in zip(num.flat, den.flat, strict=True)]
        return torch.tensor(out, dtype=torch.float64, device=accs[0].device).reshape(num.shape)

    def _channel_shape(self, out: torch.Tensor) -> list[int]:
        shape = [1] * out.dim()
        shape[self.channel_axis] = out.shape[self.channel_axis]
        return shape

    def _column(self, values: list[Fraction], like: torch.Tensor) -> torch.Tensor:
        t = torch.tensor([fraction_to_float(f) for f in values], dtype=torch.float64, device=like.device)
        return t.view(self._channel_shape(like))

    def _certified(self, x: Any) -> Any:
        """Real input or real weights: float64 with a certified error bound; the elements whose
        bound straddles a rounding boundary are recomputed with exact rationals."""
        if isinstance(x, QTensor):
            xm, sx = x.codes.to(torch.float64), x.grid.step
        else:
            xm, sx = x.to(torch.float64), None
        if self.quantized:
            kw, groups = self.weight_codes(), self.weight_step_groups()
            parts, sw = self.group_parts(kw), self.row_steps()
            rates = [[row[g] for row in groups] for g in range(len(parts))]
        else:
            kw, sw = self.weight.detach().to(torch.float64), [Fraction(1)] * self.out_channels_
            parts, rates = [kw], [sw]
        scale = [s * sx for s in sw] if sx is not None else sw  # the bias grid
        if sx is not None:
            rates = [[r * sx for r in rate] for rate in rates]
        if self.bias is not None and self.quantized and sx is not None:
            codes = self.bias_codes(scale)
            assert codes is not None  # the layer has a bias
            bias = [int(b) * s for b, s in zip(codes.tolist(), scale, strict=True)]
        elif "bias_int" in self._buffers:
            raise ConfigError(
                f"{self.qname}: the frozen integer bias needs the input grid it was frozen with"
            )
        elif self.bias is not None:
            bias = [Fraction(b) for b in self.bias.detach().double().tolist()]
        else:
            bias = [Fraction(0)] * len(scale)
        accs = [self.linear_map(xm, part) for part in parts]
        if self.out_quant is None:
            return sum(a * self._column(r, a) for a, r in zip(accs, rates, strict=True)) + self._column(
                bias, accs[0]
            )
        so = self.out_quant.steps()[0]
        mults, offs = [[r / so for r in rate] for rate in rates], [c / so for c in bias]
        mfs, of = [self._column(m, accs[0]) for m in mults], self._column(offs, accs[0])
        terms = [a * mf for a, mf in zip(accs, mfs, strict=True)]
        t_hat = sum(terms) + of
        err = of.abs() * DIV_ERR
        for part, mf, term in zip(parts, mfs, terms, strict=True):
            acc_err = _gamma(kw[0].numel()) * self.linear_map(xm.abs(), part.abs())
            err = err + acc_err * mf.abs() + term.abs() * DIV_ERR
        if len(terms) > 1:  # the float sum of the group terms
            err = err + _gamma(len(terms) + 1) * (sum(term.abs() for term in terms) + of.abs())
        err = err * (1 + DIV_ERR) + t_hat.abs() * DIV_ERR
        shape = t_hat.shape
        fmt = self.out_quant.fmt
        rows_cache: dict[int | None, torch.Tensor] = {}

        def exact_t(i: int) -> Fraction:
            c, row = self.row_of(i, shape)
            group = c // (self.out_channels_ // self.groups_) if self.groups_ > 1 else None
            if group not in rows_cache:
                rows_cache[group] = self.patches(xm, group)
            patch = rows_cache[group][row].tolist()
            total = offs[c]
            for part, mult in zip(parts, mults, strict=True):
                weights = part[c].flatten().tolist()
                dot = sum(Fraction(a) * Fraction(b) for a, b in zip(weights, patch, strict=True) if a and b)
                total += Fraction(dot) * mult[c]
            return total

        codes = round_certified(
            fmt, t_hat, err, lambda idx: [fmt.round_exact(exact_t(i)) for i in idx], self.qname
        )
        grid = self.out_quant.grid()
        kmin, kmax = grid.code_range
        return QTensor(as_codes(fmt.saturate_tensor(codes, kmin, kmax, self.qname), grid), grid)

    # ------------------------------------------------------------ integer reference
    def reference_map(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The map on exact arrays (integers or Fractions), exactly."""
        raise NotImplementedError

    def reference_weights(self) -> tuple[np.ndarray, list[list[Fraction]]]:
        """Integer weight codes re-quantized from the float weights with exact arithmetic, and
        their steps ``[out][G]`` (``G`` groups of ``group_size`` elements of each flattened row)."""
        groups = self.weight_step_groups()
        if self.frozen:
            return self.weight_int.cpu().numpy().astype(np.int64), groups
        wq = self.weight_quant
        assert wq is not None  # quantized and not frozen
        flat = [s for row in groups for s in row]
        w = self.weight.detach().cpu().numpy()
        codes = float_codes(w.reshape(len(flat), -1), flat, wq.fmt, axis=0).reshape(w.shape)
        return ref_saturate(codes, Grid(wq.fmt, flat[0], 0), f"{self.qname}.weight"), groups

    @staticmethod
    def _reference_parts(kw: np.ndarray, n_groups: int) -> list[np.ndarray]:
        """``kw`` split into ``n_groups`` arrays, each zero outside its block of consecutive
        elements of the flattened rows."""
        if n_groups == 1:
            return [kw]
        rows = kw.reshape(kw.shape[0], -1)
        size = rows.shape[1] // n_groups
        parts = []
        for g in range(n_groups):
            part = np.zeros_like(rows)
            part[:, g * size : (g + 1) * size] = rows[:, g * size : (g + 1) * size]
            parts.append(part.reshape(kw.shape))
        return parts

    def _channel_column(self, values: list[Any], ndim: int) -> np.ndarray:
        shape = [1] * ndim
        shape[self.channel_axis] = len(values)
        col = np.empty(len(values), dtype=object)
        col[:] = values
        return col.reshape(shape)

    def reference(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        if x.grid is not None and self.quantized:
            kw, sg = self.reference_weights()
            sx = x.grid.step
            scale = [min(row) * sx for row in sg]  # the bias grid: the finest weight step of the row
            bound = max_abs(x.data) * (
                int(np.abs(kw).reshape(kw.shape[0], -1).sum(1).max()) if kw.size else 0
            )
            xi = x.data.astype(np.int64 if bound < INT64_SAFE else object)
            if "bias_int" in self._buffers:
                bias = self.bias_int.cpu().numpy().astype(object)
            elif self.bias is not None:
                assert self.weight_quant is not None  # quantized and not frozen (a frozen bias is bias_int)
                fmt = self.weight_quant.fmt.integer_rounding()
                bias = float_codes(self.bias.detach().cpu().numpy(), scale, fmt, axis=0).astype(object)
            else:
                bias = np.zeros(len(scale), dtype=object)
            # value = (sum_g A_g (s_w[g] s_x L) + B (s_b s_x L)) / L over a common denominator L per channel
            rates = [[row[g] * sx for row in sg] for g in range(len(sg[0]))]
            common = [
                math.lcm(scale[c].denominator, *(r[c].denominator for r in rates)) for c in range(len(sg))
            ]
            n = None
            for part, rate in zip(self._reference_parts(kw, len(rates)), rates, strict=True):
                acc = self.reference_map(xi, part.astype(xi.dtype)).astype(object)
                term = acc * self._channel_column(
                    [int(r * L) for r, L in zip(rate, common, strict=True)], acc.ndim
                )
                n = term if n is None else n + term
            b_ints = [int(b) * int(s * L) for b, s, L in zip(bias, scale, common, strict=True)]
            assert n is not None  # at least one part
            n = n + self._channel_column(b_ints, n.ndim)
            if self.out_quant is None:
                return RTensor(n * self._channel_column([Fraction(1, L) for L in common], n.ndim))
            grid = self.out_quant.grid()
            mult = [Fraction(1, L) / grid.step for L in common]
            return RTensor(round_scaled(n, mult, grid, self.channel_axis, self.qname), grid)
        if "bias_int" in self._buffers:
            raise ConfigError(
                f"{self.qname}: the frozen integer bias needs the input grid it was frozen with"
            )
        if self.quantized:
            kw, sg = self.reference_weights()
            steps = np.empty((kw.shape[0], len(sg[0])), dtype=object)
            steps[:] = sg
            per = kw[0].size // len(sg[0])  # each step repeated over its group's elements
            w = kw.astype(object) * np.repeat(steps, per, axis=1).reshape(kw.shape)
        else:
            w = fractions(self.weight.detach().cpu().numpy())
        value = self.reference_map(x.exact(), w)
        if self.bias is not None:
            value = value + self._channel_column(
                list(fractions(self.bias.detach().cpu().numpy())), value.ndim
            )
        if self.out_quant is None:
            return RTensor(value)
        grid = self.out_quant.grid()
        return RTensor(round_fractions(value, grid, self.qname), grid)

    # ------------------------------------------------------------ verifier
    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        """The exact layer: ``D`` from the map applied to unit vectors (every entry is one weight
        code or float weight, so exact), one row scale (weight step) and bias per row."""
        x = cb.consume(args[0], self.qname)
        if self.quantized:
            values, row_scale = self._integer_rows()
            inq = io.in_quants[0] if io.in_quants else None
            if inq is not None and (self.bias is not None or "bias_int" in self._buffers):
                scale = [s * inq.steps()[0] for s in self.row_steps()]
                codes = self.bias_codes(scale)
                assert codes is not None  # the layer has a bias
                bias = [int(k) * s for k, s in zip(codes.tolist(), scale, strict=True)]
            elif "bias_int" in self._buffers:
                raise Unsupported(f"{self.qname}: the frozen integer bias needs its input grid")
            else:
                bias = _float_fractions(self.bias, self.out_channels_)
        else:
            values, row_scale = self.weight.detach().double(), [Fraction(1)] * self.out_channels_
            bias = _float_fractions(self.bias, self.out_channels_)
        try:
            outputs = self.linear_map(torch.zeros(1, *x.shape, dtype=torch.float64), values.to(torch.float64))
        except RuntimeError as exc:
            raise Unsupported(
                f"{self.qname}: an input of shape {x.shape} does not fit this layer ({exc})"
            ) from None
        out_shape = tuple(outputs.shape[1:])
        w64 = values.to(torch.float64)  # whole numbers or doubles: every entry of D is exact
        matrix = self.chain_matrix(cb, x.shape, w64, outputs.numel())
        axis = (self.channel_axis - 1 if self.channel_axis > 0 else self.channel_axis) % len(
            out_shape
        )  # per sample
        channel_of = torch.arange(out_shape[axis]).view(
            [-1 if d == axis else 1 for d in range(len(out_shape))]
        )
        channels = torch.broadcast_to(channel_of, out_shape).reshape(-1).tolist()
        out_grid = self.out_quant.grid() if self.out_quant is not None else None
        return cb.linear(
            x, matrix, [row_scale[c] for c in channels], [bias[c] for c in channels], out_grid, out_shape
        )

    def chain_matrix(self, cb: Any, shape: tuple[int, ...], w: torch.Tensor, m: int) -> Any:
        """The layer's matrix (``m`` outputs x inputs of per-sample ``shape``) for weights ``w``
        (whole numbers or doubles, so every entry is exact), dense or ``scipy.sparse``."""
        raise NotImplementedError

    def _integer_rows(self) -> tuple[torch.Tensor, list[Fraction]]:
        """Weights as whole numbers times one exact scale per row (float64 tensor, scales): the
        codes and the per-channel steps, or with ``group_size`` the codes times
        ``s_w[o, g] / r_o`` for the row's greatest common divisor ``r_o`` of its group steps
        (an exact integer multiple of it), so each row is integers times one scale."""
        kw = self.weight_codes()
        if self.group_size is None:
            return kw, self.weight_steps()
        factors, scales = [], []
        for row in self.weight_step_groups():
            common = math.lcm(*(s.denominator for s in row))
            ints = [int(s * common) for s in row]
            unit = math.gcd(*ints)
            factors.append([v // unit for v in ints])
            scales.append(Fraction(unit, common))
        flat = torch.tensor([float(f) for row in factors for f in row], dtype=torch.float64)
        values = kw * expand_groups(flat, kw.shape)
        if values.numel() and float(values.abs().max()) >= 2.0**53:
            raise Unsupported(
                f"{self.qname}: per-group steps (group_size={self.group_size}) differ so much within a row "
                "that the weights as integer multiples of one row scale exceed 2^53; use power-of-two steps"
            )
        return values, scales

    # ------------------------------------------------------------ ONNX
    def onnx_channel_shape(self, ndim: int) -> list[int]:
        if self.channel_axis == -1:
            return [-1]
        return [1, -1] + [1] * (ndim - 2)

    def onnx_accumulate(self, em: Any, x: Any, kw: np.ndarray, t_max: int) -> str:
        """The integer form's ``A = map(k_x, k_w)`` as exact float64 values."""
        raise NotImplementedError

    def onnx_float_map(self, em: Any, x: str, w: str, ndim: int) -> str:
        """The QDQ form's float32 map of values ``x`` by (dequantized) weights ``w``."""
        raise NotImplementedError

    def onnx_int8_operands(self, em: Any, x: Any, kw: np.ndarray) -> tuple[str, str, str, str] | None:
        """The operands of ``MatMulInteger`` / ``ConvInteger`` (int32 accumulators, as integer
        hardware) when the codes fit 8 bits: input codes spanning at most 256 values, shifted by
        ``-kmin`` to uint8 with zero point ``-kmin`` (every grid holds 0, so ``-kmin`` is in
        ``[0, 255]``), and weight codes in ``[-128, 127]`` shifted by 128 to uint8 with zero point
        128.  Both operands unsigned: onnxruntime's uint8 x int8 kernels may saturate 16-bit
        partial sums on CPUs without VNNI, its uint8 x uint8 kernels do not.  Every raw partial sum
        stays below ``255 * 255 * fan_in < 2^31``.  The names of the operator's four inputs
        ``(input, weights, input zero point, weight zero point)``, or ``None`` when they do not fit.
        ``kw`` is laid out as the operator wants it (``MatMulInteger``: ``(in, out)``)."""
        from onnx import TensorProto  # only exports need onnx

        kmin_x, kmax_x = x.grid.code_range
        fan_in = kw.size // max(self.out_channels_, 1)
        if (
            kmax_x - kmin_x > 255
            or (kw.size and (int(kw.max()) > 127 or int(kw.min()) < -128))
            or 255 * 255 * fan_in >= 2**31
        ):
            return None
        g = em.g
        xu = g.op("Cast", [g.op("Sub", [x.name, g.const(float(kmin_x))])], to=TensorProto.UINT8)
        wu = g.const((kw.astype(np.int64) + 128).astype(np.uint8), dtype=np.uint8)
        return xu, wu, g.const(np.uint8(-kmin_x), dtype=np.uint8), g.const(np.uint8(128), dtype=np.uint8)

    def onnx_integer(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = em.need_grid(args[0], self.qname)
        if not self.quantized:
            raise Unsupported(f"{self.qname}: the integer form needs quantized weights (QConfig.weight)")
        if self.out_quant is None:
            raise Unsupported(f"{self.qname}: the integer form needs an output format (QConfig.activation)")
        out = self.out_quant.grid()
        ch = self.onnx_channel_shape(len(x.example_shape))
        if self.group_size is not None:
            return em.value(io, self._onnx_groups(em, x, out, ch), out)
        kw = self.weight_codes().cpu().numpy()
        scale = [s * x.grid.step for s in self.weight_steps()]
        bias = self.bias_codes(scale)
        l1 = int(np.abs(kw).reshape(kw.shape[0], -1).sum(1).max()) if kw.size else 0
        b_max = int(bias.abs().max()) if bias is not None else 0
        t_max = l1 * x.grid.max_abs_code + b_max
        acc = self.onnx_accumulate(em, x, kw, t_max)
        if bias is not None:
            acc = em.g.op("Add", [acc, em.g.const(bias.cpu().numpy().reshape(ch))])
        codes = em.requantize([(acc, [s / out.step for s in scale], t_max)], out, self.qname, ch)
        return em.value(io, codes, out)

    def _onnx_groups(self, em: Any, x: Any, out: Grid, ch: list[int]) -> str:
        """The integer form with per-group steps: one exact integer product per group (the weight
        codes zero outside the group, ``MatMulInteger``/``ConvInteger`` where they fit 8 bits), and
        one requantization of ``sum_g A_g s_w[g] s_x / s_out + B s_b s_x / s_out`` (exact in float64,
        rounded once)."""
        sx = x.grid.step
        groups = self.weight_step_groups()
        scale = [s * sx for s in self.row_steps()]
        bias = self.bias_codes(scale)
        terms = []
        # full-size products of zero-masked codes (no Slice: the graph stays in the operator set that
        # torchqv.verify.from_onnx reads back)
        for g, part in enumerate(self.group_parts(self.weight_codes())):
            kw = part.cpu().numpy()
            l1 = int(np.abs(kw).reshape(kw.shape[0], -1).sum(1).max()) if kw.size else 0
            t_max = l1 * x.grid.max_abs_code
            acc = self.onnx_accumulate(em, x, kw, t_max)
            terms.append((acc, [row[g] * sx / out.step for row in groups], t_max))
        if bias is not None:
            b = em.g.const(bias.cpu().numpy().astype(np.float64).reshape(ch))
            terms.append((b, [s / out.step for s in scale], int(bias.abs().max())))
        return em.requantize(terms, out, self.qname, ch)

    def onnx_qdq(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        g, x = em.g, args[0]
        ch = self.onnx_channel_shape(len(x.example_shape))
        f32 = np.float32
        if self.quantized:
            kw = self.weight_codes().cpu().numpy()
            if np.abs(kw).max() > 127:
                raise Unsupported(f"{self.qname}: the QDQ form stores 8-bit weights")
            if self.group_size is not None:  # opset 17 has no blocked DequantizeLinear: codes times steps
                codes = g.op(
                    "DequantizeLinear",
                    [
                        g.const(kw, dtype=np.int8),
                        g.const(np.float32(1.0), dtype=f32),
                        g.const(np.int8(0), dtype=np.int8),
                    ],
                    "w",
                )
                steps_w = self.weight_step_tensor().numpy().astype(f32)
                w = g.op("Mul", [codes, g.const(steps_w, dtype=f32)])
            else:
                steps = np.array([fraction_to_float(f) for f in self.weight_steps()], dtype=f32)
                zeros = g.const(np.zeros(len(steps)), dtype=np.int8)
                w = g.op(
                    "DequantizeLinear",
                    [g.const(kw, dtype=np.int8), g.const(steps, dtype=f32), zeros],
                    "w",
                    axis=0,
                )
        else:
            w = g.const(self.weight.detach().cpu().numpy(), dtype=f32)
        y = self.onnx_float_map(em, x.name, w, len(x.example_shape))
        if x.grid is not None and self.quantized:
            scale = [s * x.grid.step for s in self.row_steps()]
            codes = self.bias_codes(scale)
            bias = (
                None if codes is None else codes.cpu().double().numpy() * np.array([float(f) for f in scale])
            )
        else:
            bias = None if self.bias is None else self.bias.detach().cpu().double().numpy()
        if bias is not None:
            y = g.op("Add", [y, g.const(bias.reshape(ch), dtype=f32)])
        if self.out_quant is None:
            return em.value(io, y, None)
        out = self.out_quant.grid()
        return em.value(io, em.fake_quant(y, out, self.qname), out)

    def extra_repr(self) -> str:
        return f"{self.qname!r}{', frozen' if self.frozen else ''}"


# ---------------------------------------------------------------------------- Linear
@register(modules=(nn.Linear,))
class QuantLinear(QuantAffine):
    """``nn.Linear`` (on inputs of any rank: the last dimension is the feature dimension)."""

    channel_axis = -1
    slices_groups = True

    def __init__(self, mod: nn.Linear, cfg: Any, name: str = ""):
        super().__init__(mod.weight, mod.bias, cfg, name)
        self.in_features, self.out_features = mod.in_features, mod.out_features

    @classmethod
    def build(cls, call: Call) -> Operation:
        return cls(call.module, call.config, call.name)  # type: ignore[arg-type]

    def linear_map(self, x, w, b=None):
        return F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))

    def chain_matrix(self, cb: Any, shape: tuple[int, ...], w: torch.Tensor, m: int) -> Any:
        """``W`` itself on vectors; on inputs ``(..., in_features)`` one copy of ``W`` per leading
        position (block diagonal, sparse)."""
        import scipy.sparse as sp  # only the verifier reads chains

        cb.check_entries(m * self.in_features, self.qname)
        blocks = int(np.prod(shape[:-1]))
        if blocks == 1:
            return w.numpy()
        return sp.kron(sp.identity(blocks, format="csr"), sp.csr_matrix(w.numpy()), format="csr")

    def split_inputs(self, x, w, chunk):
        d = x.shape[-1]
        if chunk >= d:
            return []
        return [(x[..., i : i + chunk], w[:, i : i + chunk]) for i in range(0, d, chunk)]

    def patches(self, x, group=None):
        return x.to(torch.float64).reshape(-1, x.shape[-1])

    def row_of(self, flat, out_shape):
        c = out_shape[-1]
        return flat % c, flat // c

    def reference_map(self, x, w):
        return np.tensordot(x, w, axes=([x.ndim - 1], [1]))

    def onnx_accumulate(self, em, x, kw, t_max):
        from onnx import TensorProto  # only exports need onnx

        g = em.g
        operands = self.onnx_int8_operands(em, x, np.ascontiguousarray(kw.T))
        if operands is not None:
            out = g.op("MatMulInteger", list(operands))
            return g.op("Cast", [out], to=TensorProto.DOUBLE)
        if t_max >= 2**53:
            raise Unsupported(f"{self.qname}: accumulators reach {t_max:.3g} >= 2^53 (not exact in float64)")
        wt = g.op("Cast", [g.const(kw.T, dtype=_onnx_int(kw))], to=TensorProto.DOUBLE)
        return g.op("MatMul", [x.name, wt])

    def onnx_float_map(self, em, x, w, ndim):
        return em.g.op("MatMul", [x, em.g.op("Transpose", [w], perm=[1, 0])])


# ---------------------------------------------------------------------------- Conv
def _tuple(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


@register(modules=(nn.Conv1d, nn.Conv2d))
class QuantConv(QuantAffine):
    """``nn.Conv1d`` / ``nn.Conv2d`` with groups (depthwise), dilation, stride and any padding
    mode.  Non-zero padding modes (reflect, replicate, circular) copy grid values, so the padded
    input is on the same grid and the convolution stays exact."""

    def __init__(self, mod: nn.Conv1d | nn.Conv2d, cfg: Any, name: str = ""):
        super().__init__(mod.weight, mod.bias, cfg, name)
        self.dims = mod.weight.dim() - 2
        self.stride, self.dilation, self.groups = mod.stride, mod.dilation, mod.groups
        self.in_channels, self.out_channels, self.kernel_size = (
            mod.in_channels,
            mod.out_channels,
            mod.kernel_size,
        )
        self.padding_mode = mod.padding_mode
        self.pads = self._explicit_pads(mod)  # (left, right) per spatial dim

    def _explicit_pads(self, mod: nn.Module) -> list[tuple[int, int]]:
        if mod.padding == "valid":
            return [(0, 0)] * self.dims
        if mod.padding == "same":
            if any(s != 1 for s in _tuple(mod.stride, self.dims)):
                raise Unsupported(f"{self.qname}: padding='same' needs stride 1")
            out = []
            for d, k in zip(_tuple(mod.dilation, self.dims), _tuple(mod.kernel_size, self.dims), strict=True):
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))
            return out
        return [(p, p) for p in _tuple(mod.padding, self.dims)]

    @classmethod
    def build(cls, call: Call) -> Operation:
        return cls(call.module, call.config, call.name)  # type: ignore[arg-type]

    @property
    def groups_(self) -> int:
        return self.groups

    def fan_in_unit(self) -> int:
        return int(math.prod(self.kernel_size))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        flat = [p for pair in reversed(self.pads) for p in pair]  # F.pad: last dimension first
        if not any(flat):
            return x
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, flat, mode=mode)

    def linear_map(self, x, w, b=None):
        conv = F.conv1d if self.dims == 1 else F.conv2d
        symmetric = self.padding_mode == "zeros" and all(a == b for a, b in self.pads)
        x, padding = (x, [a for a, _ in self.pads]) if symmetric else (self._pad(x), 0)
        bias = None if b is None else b.to(x.dtype)
        return conv(x, w.to(x.dtype), bias, self.stride, padding, self.dilation, self.groups)

    def chain_matrix(self, cb: Any, shape: tuple[int, ...], w: torch.Tensor, m: int) -> Any:
        """Sparse rows read off the patches of an index tensor: output ``(o, l)`` takes weight
        ``w[o, q]`` times input ``P[l, q]`` (padding reads no input; reflect and circular padding
        read an input twice, and the repeated entries add up)."""
        import scipy.sparse as sp  # only the verifier reads chains

        n = int(np.prod(shape))
        index = torch.arange(1, n + 1, dtype=torch.float64).reshape(1, *shape)  # 0: zero padding
        groups, per_group = self.groups, self.out_channels // self.groups
        patches = self.patches(index)  # (L, C * k): every group's columns side by side
        length = patches.shape[0]
        cb.check_entries(self.out_channels * patches.numel() // groups, self.qname)
        P = patches.reshape(length, groups, -1).permute(1, 0, 2)[:, None]  # (G, 1, L, Q)
        W = w.reshape(groups, per_group, 1, -1)  # (G, og, 1, Q)
        o = torch.arange(self.out_channels).reshape(groups, per_group, 1, 1)
        full = (groups, per_group, length, P.shape[-1])
        r = (o * length + torch.arange(length).reshape(1, 1, -1, 1)).expand(full)
        c, d = P.expand(full) - 1, W.expand(full)
        keep = (c >= 0) & (d != 0)
        return sp.csr_matrix((d[keep].numpy(), (r[keep].numpy(), c[keep].long().numpy())), shape=(m, n))

    def split_inputs(self, x, w, chunk):
        if self.groups != 1 or chunk >= self.in_channels:
            return []
        return [(x[:, i : i + chunk], w[:, i : i + chunk]) for i in range(0, self.in_channels, chunk)]

    def patches(self, x, group=None):
        x = self._pad(x.to(torch.float64))
        k: tuple[int, ...]
        d: tuple[int, ...]
        s: tuple[int, ...]
        if self.dims == 1:
            x = x.unsqueeze(2)
            k, d, s = (1, self.kernel_size[0]), (1, self.dilation[0]), (1, self.stride[0])
        else:
            k, d, s = self.kernel_size, self.dilation, self.stride
        if group is not None:
            cin = self.in_channels // self.groups
            x = x[:, group * cin : (group + 1) * cin]
        cols = F.unfold(x, k, d, 0, s)  # N, C*k, L
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def row_of(self, flat, out_shape):
        n_ch = out_shape[1]
        spatial = int(math.prod(out_shape[2:]))
        c = (flat // spatial) % n_ch
        return c, (flat // (n_ch * spatial)) * spatial + flat % spatial

    def reference_map(self, x, w):
        stride, dilation = _tuple(self.stride, self.dims), _tuple(self.dilation, self.dims)
        return conv_int(x, w, stride, self.pads, dilation, self.groups, self.padding_mode)

    def _onnx_attrs(self, em, x: str) -> tuple[str, dict]:
        """Explicit padding (a ``Pad`` node for non-zero modes) and the Conv attributes."""
        begins, ends = [p[0] for p in self.pads], [p[1] for p in self.pads]
        attrs = {
            "strides": list(_tuple(self.stride, self.dims)),
            "dilations": list(_tuple(self.dilation, self.dims)),
            "group": self.groups,
        }
        if self.padding_mode == "zeros":
            return x, attrs | {"pads": begins + ends}
        modes = {"reflect": "reflect", "replicate": "edge"}
        if self.padding_mode not in modes:
            raise Unsupported(
                f"{self.qname}: padding_mode={self.padding_mode!r} has no ONNX opset-17 Pad mode"
            )
        pads = em.g.const(np.array([0, 0, *begins, 0, 0, *ends], dtype=np.int64), dtype=np.int64)
        return em.g.op("Pad", [x, pads], mode=modes[self.padding_mode]), attrs

    def onnx_accumulate(self, em, x, kw, t_max):
        from onnx import TensorProto  # only exports need onnx

        g = em.g
        operands = self.onnx_int8_operands(em, x, kw)
        if operands is not None:
            xu, w, x_zp, w_zp = operands
            xu, attrs = self._onnx_attrs(em, xu)
            out = g.op("ConvInteger", [xu, w, x_zp, w_zp], **attrs)
            return g.op("Cast", [out], to=TensorProto.DOUBLE)
        if t_max >= 2**24:
            raise Unsupported(
                f"{self.qname}: codes wider than 8 bits with accumulators up to {t_max:.3g} >= 2^24 have "
                "no exact ONNX convolution (ConvInteger is 8-bit, Conv float32)"
            )
        xf, attrs = self._onnx_attrs(em, g.op("Cast", [x.name], to=TensorProto.FLOAT))
        out = g.op("Conv", [xf, g.const(kw, dtype=np.float32)], **attrs)
        return g.op("Cast", [out], to=TensorProto.DOUBLE)

    def onnx_float_map(self, em, x, w, ndim):
        xp, attrs = self._onnx_attrs(em, x)
        return em.g.op("Conv", [xp, w], **attrs)


# ---------------------------------------------------------------------------- BatchNorm
@register(modules=(nn.BatchNorm1d, nn.BatchNorm2d))
class QuantBatchNorm(QuantAffine):
    """A BatchNorm that follows no foldable layer (e.g. after a ReLU, DenseNet's order): with its
    running statistics it is the per-channel affine map ``y = a_c x + c_c``,
    ``a = gamma / sqrt(var + eps)``, ``c = beta - mean a`` (computed in float64, then taken at
    their exact values); ``a`` is quantized per channel like a weight (a weight format's
    ``group_size`` does not apply: each output reads one weight)."""

    has_reduction = False

    def __init__(self, mod: nn.modules.batchnorm._BatchNorm, cfg: Any, name: str = ""):
        if mod.running_mean is None or mod.running_var is None:
            raise Unsupported(
                f"{name}: batch norm without running statistics cannot be frozen into an affine map"
            )
        var = mod.running_var.detach().double()
        gamma = mod.weight.detach().double() if mod.weight is not None else torch.ones_like(var)
        beta = mod.bias.detach().double() if mod.bias is not None else torch.zeros_like(var)
        a = gamma / torch.sqrt(var + mod.eps)
        c = beta - mod.running_mean.detach().double() * a
        super().__init__(a.float(), c.float(), cfg, name)

    @classmethod
    def build(cls, call: Call) -> Operation:
        return cls(call.module, call.config, call.name)  # type: ignore[arg-type]

    def _shape(self, x: torch.Tensor) -> list[int]:
        return [1, -1] + [1] * (x.dim() - 2)

    def chain_matrix(self, cb: Any, shape: tuple[int, ...], w: torch.Tensor, m: int) -> Any:
        """Diagonal: element ``(c, ...)`` times ``w[c]``."""
        import scipy.sparse as sp  # only the verifier reads chains

        n = int(np.prod(shape))
        channel = np.arange(n) // (n // shape[0])
        return sp.csr_matrix((w.numpy()[channel], (np.arange(n), np.arange(n))), shape=(n, n))

    def linear_map(self, x, w, b=None):
        y = x * w.to(x.dtype).view(self._shape(x))
        return y if b is None else y + b.to(x.dtype).view(self._shape(x))

    def patches(self, x, group=None):
        x = x.to(torch.float64)
        if group is not None:
            return x[:, group].reshape(-1, 1)
        return x.movedim(1, -1).reshape(-1, x.shape[1])  # rows (sample, position), one column per channel

    @property
    def groups_(self) -> int:
        return self.out_channels_

    row_of = QuantConv.row_of  # channels on axis 1, as a convolution's output

    def reference_map(self, x, w):
        return x * w.reshape([1, -1] + [1] * (x.ndim - 2))

    def onnx_accumulate(self, em, x, kw, t_max):
        if t_max >= 2**53:
            raise Unsupported(f"{self.qname}: products reach {t_max:.3g} >= 2^53 (not exact in float64)")
        w = em.g.const(kw.astype(np.float64).reshape(self.onnx_channel_shape(len(x.example_shape))))
        return em.g.op("Mul", [x.name, w])

    def onnx_float_map(self, em, x, w, ndim):
        shape = em.g.const(np.array(self.onnx_channel_shape(ndim), dtype=np.int64), dtype=np.int64)
        return em.g.op("Mul", [x, em.g.op("Reshape", [w, shape])])


def _int_dtype(bits: int) -> torch.dtype:
    return torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32


def _float_fractions(t: torch.Tensor | None, n: int) -> list[Fraction]:
    if t is None:
        return [Fraction(0)] * n
    return [Fraction(v) for v in t.detach().double().tolist()]


def _onnx_int(codes: np.ndarray):
    big = float(np.abs(codes).max()) if codes.size else 0.0
    return np.int8 if big <= 127 else np.int16 if big <= 32767 else np.int32


def affine_ops(model: nn.Module) -> list[tuple[str, QuantAffine]]:
    """The affine operations of a quantized model, by name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantAffine)]


__all__ = ["QuantAffine", "QuantBatchNorm", "QuantConv", "QuantLinear", "affine_ops"]
