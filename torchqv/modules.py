"""Drop-in quantized modules: ``QuantLinear``, ``QuantConv2d`` and ``QuantAct``.

They compute paper 001 Eq. 7: every affine map ``rho`` is evaluated exactly from quantized
weights and inputs, with a high-precision bias on the accumulator grid, and rounded once to its
output format; every activation's output is rounded to its format.

* training mode: fake quantization in float32 with a straight-through estimator (QAT);
* eval mode: the exact simulation, float64 values.  With integer codes for weights and inputs
  the accumulator ``T = sum k_w k_x + B`` is an exact integer in float64 while
  ``fan_in * max|k_w| * max|k_x| + max|B| < 2^53``; the output code ``round(T * s_w s_x / s_out)``
  is decided by :func:`~torchqv.formats.round_certified`, which falls back to exact rational
  arithmetic for the rare elements whose float64 value is too close to a rounding boundary.
  Inputs that are not on a known grid (an unquantized network input, the output of an average
  pool) are treated as the real numbers they hold; their accumulation carries the standard
  float64 dot-product error bound, certified the same way.  Eval results therefore equal the
  integer reference (:mod:`torchqv.reference`) bit for bit.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .activations import ABS_ERR, REL_ERR, Activation, round_activation
from .fake_quant import DIV_ERR, FakeQuantize, fake_quantize
from .formats import QuantizationError, dequantize_f64, fraction_to_float, is_dyadic, round_certified

U64 = 2.0**-53
EXACT_INT = 2.0**53


def _gamma(n: int) -> float:
    """Higham's bound: |fl(x . y) - x . y| <= gamma_n |x| . |y| with gamma_n = n u / (1 - n u)."""
    return 2 * n * U64 / (1 - n * U64)  # factor 2: margin for fused or reordered kernels


class QuantModule(nn.Module):
    """Base of the quantized leaves: a name for messages and the link to the input's grid."""

    def __init__(self, name: str):
        super().__init__()
        self.qname = name
        self.input_source = ""
        self._input_link: list[FakeQuantize] = []
        self._calibrating = False
        self.in_quant: FakeQuantize | None = None
        self.out_quant: FakeQuantize | None = None

    def add_input_quantizer(self, quantizer: FakeQuantize) -> None:
        """Quantize this module's input itself (it reads the network input)."""
        self.in_quant = quantizer
        self.link_input(quantizer, "input")

    def link_input(self, quantizer: FakeQuantize | None, source: str = "") -> None:
        """Declare that this module's input is the output of ``quantizer`` (its grid)."""
        self._input_link = [quantizer] if quantizer is not None else []
        self.input_source = source if quantizer is not None else ""

    @property
    def input_quantizer(self) -> FakeQuantize | None:
        q = self._input_link[0] if self._input_link else None
        return q if q is not None and q.fake_quant_enabled else None

    def quantizers(self) -> list[FakeQuantize]:
        return [m for m in self.children() if isinstance(m, FakeQuantize)]

    def _exact_mode(self) -> bool:
        return not self.training and not self._calibrating

    def _input_codes(self, x64: torch.Tensor) -> tuple[torch.Tensor, Fraction | None]:
        """Mantissas of the input and their common scale: integer codes and the step when the
        input comes from a known grid, else the values themselves (scale ``None``)."""
        inq = self.input_quantizer
        if inq is None:
            return x64, None
        return inq.snap(x64, self.qname), inq.steps()[0]

    def _round_output(self, t_hat: torch.Tensor, err: torch.Tensor, exact_code: Any) -> torch.Tensor:
        """Output grid values of the ratios ``t`` (known as ``t_hat`` +- ``err``; ``exact_code(i)``
        gives the exact unsaturated code of flat element ``i``)."""
        out: FakeQuantize = self.out_quant  # type: ignore[assignment]
        codes = round_certified(out.fmt, t_hat, err, lambda idx: [exact_code(i) for i in idx], self.qname)
        kmin, kmax = out.code_range()
        return dequantize_f64(out.fmt.saturate_tensor(codes, kmin, kmax, self.qname), out.steps())


class _QuantAffine(QuantModule):
    """Shared logic of QuantLinear and QuantConv2d (subclasses give the map and its patches)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, cfg: Any, name: str):
        super().__init__(name)
        for what, t in (("weight", weight), ("bias", bias)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise QuantizationError(f"{name}: {what} contains NaN or inf; fix the float model first")
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.weight_quant = (
            FakeQuantize(
                cfg.weight,
                weight.shape[0],
                0,
                cfg.weight_observer,
                cfg.learn_step,
                f"{name}.weight",
                weight=True,
            )
            if cfg.weight is not None
            else None
        )
        self.out_quant = (
            FakeQuantize(cfg.activation, 1, 0, cfg.activation_observer, cfg.learn_step, f"{name}.out")
            if cfg.activation is not None
            else None
        )
        self._cache: dict[str, Any] = {}

    # --- subclass hooks -------------------------------------------------
    def _affine(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _channel_shape(self, out: torch.Tensor) -> list[int]:
        raise NotImplementedError

    def _locate(self, i: int, out_shape: torch.Size) -> tuple[int, Any]:
        """Channel of flat output index ``i`` and the key its input patch is found by."""
        raise NotImplementedError

    def _patch(self, x: torch.Tensor, key: Any, channel: int) -> torch.Tensor:
        raise NotImplementedError

    # --- state ------------------------------------------------------------
    @property
    def out_channels_(self) -> int:
        w = self.weight_int if self.frozen else self.weight
        return w.shape[0]

    @property
    def frozen(self) -> bool:
        return "weight_int" in self._buffers

    def weight_codes(self) -> torch.Tensor:
        """Centered integer codes of the weights (float64 tensor)."""
        if self.frozen:
            return self.weight_int.to(torch.float64)
        if self.weight_quant is None:
            raise QuantizationError(f"{self.qname}: weights are not quantized (QConfig.weight is None)")
        return self.weight_quant.exact_codes(self.weight)

    def weight_steps(self) -> list[Fraction]:
        """One step per output channel."""
        steps = self.weight_quant.steps()  # type: ignore[union-attr]
        return steps if len(steps) > 1 else steps * self.out_channels_

    def dequantized_weight(self) -> torch.Tensor:
        """The quantized weights as real values (float64)."""
        return dequantize_f64(self.weight_codes(), self.weight_steps(), 0)

    def bias_codes(self, scale: list[Fraction]) -> torch.Tensor | None:
        """Bias on the accumulator grid ``s_w * s_x`` (unsaturated; the weight format's rounding)."""
        if "bias_int" in self._buffers:
            return self.bias_int.to(torch.float64)
        if self.bias is None:
            return None
        b = self.bias.detach().to(torch.float64)
        s = torch.tensor([fraction_to_float(f) for f in scale], dtype=torch.float64)
        t_hat = b / s
        fmt = self.weight_quant.fmt.integer_rounding()  # type: ignore[union-attr]
        return round_certified(
            fmt,
            t_hat,
            t_hat.abs() * DIV_ERR,
            lambda idx: [fmt.round_exact(Fraction(b[i].item()) / scale[i]) for i in idx],
            f"{self.qname}.bias",
        )

    def freeze_(self) -> None:
        """Store integer weights (and the integer bias when the input grid is known)."""
        if self.frozen or self.weight_quant is None:
            return
        kw = self.weight_codes()
        bits = self.weight_quant.fmt.bits
        dtype = torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32
        inq = self.input_quantizer
        bias_int = None
        if self.bias is not None and inq is not None:
            sx = inq.steps()[0]
            bias_int = self.bias_codes([s * sx for s in self.weight_steps()])
        del self.weight
        self.register_buffer("weight_int", kw.to(dtype))
        if bias_int is not None:
            del self.bias
            self.bias = None
            self.register_buffer("bias_int", bias_int.to(torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
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

    # --- forward ----------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_quant is not None:
            x = self.in_quant(x)
        if self._exact_mode():
            return self._exact_forward(x)
        if self.frozen:
            raise QuantizationError(f"{self.qname} is frozen (integer weights); train the unfrozen model")
        w = self.weight if self.weight_quant is None else self.weight_quant(self.weight)
        b = self.bias
        inq = self.input_quantizer
        wq = self.weight_quant
        if b is not None and wq is not None and inq is not None and wq.fake_quant_enabled:
            sx = fraction_to_float(inq.steps()[0])
            s_acc = (wq.step_tensor(self.weight).detach().flatten() * sx).to(b.dtype)
            b = fake_quantize(b, s_acc, wq.fmt, float("-inf"), float("inf"))
        y = self._affine(x, w, b)
        return self.out_quant(y) if self.out_quant is not None else y

    def _param_key(self, sx: Fraction | None) -> tuple:
        """Changes whenever a parameter, a buffer or a step changes (tensor versions)."""
        tensors = [t for t in (*self.parameters(recurse=False), *self.buffers(recurse=False))]
        quants = [q for q in (self.weight_quant, self.out_quant) if q is not None]
        return (sx, tuple((t._version, t.data_ptr()) for t in tensors), tuple(q.state_key() for q in quants))

    def _exact_params(self, sx: Fraction | None) -> dict[str, Any]:
        """Everything the exact path needs that does not depend on the data (cached)."""
        key = self._param_key(sx)
        if self._cache.get("key") == key:
            return self._cache
        quantized = self.weight_quant is not None or self.frozen
        if quantized:
            kw, sw = self.weight_codes(), self.weight_steps()
        else:
            kw, sw = self.weight.detach().to(torch.float64), [Fraction(1)] * self.out_channels_
        scale = [s * sx for s in sw] if sx is not None else sw
        int_path = sx is not None and quantized
        bias_codes = self.bias_codes(scale) if int_path else None
        const = [Fraction(0)] * len(scale) if int_path else self._exact_bias(scale)
        so = self.out_quant.steps()[0] if self.out_quant is not None else Fraction(1)
        mult, offs = [s / so for s in scale], [c / so for c in const]
        as_t = lambda v: torch.tensor([fraction_to_float(f) for f in v], dtype=torch.float64)  # noqa: E731
        self._cache = {
            "key": key,
            "kw": kw,
            "kw_max": float(kw.abs().max()) if kw.numel() else 0.0,
            "int_path": int_path,
            "bias_codes": bias_codes,
            "bias_max": float(bias_codes.abs().max()) if bias_codes is not None else 0.0,
            "mult": mult,
            "offs": offs,
            "mf": as_t(mult),
            "of": as_t(offs),
        }
        return self._cache

    def _exact_forward(self, x: torch.Tensor) -> torch.Tensor:
        x64 = x.to(torch.float64)
        xm, sx = self._input_codes(x64)
        p = self._exact_params(sx)
        kw, mult, offs = p["kw"], p["mult"], p["offs"]
        acc = self._affine(xm, kw, None)
        fan_in = kw[0].numel()
        int_path = p["int_path"]
        if int_path:  # exact integers in float64 below 2^53
            xmax = float(xm.abs().max()) if xm.numel() else 0.0
            int_path = fan_in * p["kw_max"] * xmax + p["bias_max"] < EXACT_INT
        ch = self._channel_shape(acc)
        mf, of = p["mf"].view(ch), p["of"].view(ch)
        if int_path:
            acc_err = torch.zeros((), dtype=torch.float64)
            if p["bias_codes"] is not None:
                acc = acc + p["bias_codes"].view(ch)
        else:
            acc_err = _gamma(fan_in) * self._affine(xm.abs(), kw.abs(), None)
            if p["int_path"]:  # too large for exact float64 integers: bias codes in the offset
                of = of + p["bias_codes"].view(ch) * mf
                offs = [o + int(b) * m for o, b, m in zip(offs, p["bias_codes"].tolist(), mult, strict=False)]
        t_hat = acc * mf + of
        if self.out_quant is None:  # no output format: the (high-precision) real value
            return t_hat
        err = (acc_err * mf.abs() + (acc * mf).abs() * DIV_ERR + of.abs() * DIV_ERR) * (1 + DIV_ERR)
        err = err + t_hat.abs() * DIV_ERR
        acc_flat, shape = acc.flatten(), acc.shape

        def exact_t(i: int) -> Fraction:
            c, key = self._locate(i, shape)
            if int_path:
                return Fraction(int(acc_flat[i].item())) * mult[c]
            patch = self._patch(xm, key, c)
            row = kw[c].flatten().tolist()
            dot = sum(Fraction(a) * Fraction(b) for a, b in zip(row, patch.tolist(), strict=False) if a and b)
            return Fraction(dot) * mult[c] + offs[c]

        fmt = self.out_quant.fmt
        return self._round_output(t_hat, err, lambda i: fmt.round_exact(exact_t(i)))

    def _exact_bias(self, scale: list[Fraction]) -> list[Fraction]:
        """Bias in units of ``scale`` when it stays a real (float) number."""
        if "bias_int" in self._buffers:
            raise QuantizationError(
                f"{self.qname}: the frozen integer bias needs the input grid it was frozen with"
            )
        if self.bias is None:
            return [Fraction(0)] * len(scale)
        return [Fraction(b) for b in self.bias.detach().double().tolist()]

    def extra_repr(self) -> str:
        src = f", input from {self.input_source}" if self.input_source else ""
        return f"{self.qname!r}{src}{', frozen' if self.frozen else ''}"


class QuantLinear(_QuantAffine):
    """``nn.Linear`` with quantized weights, accumulator-grid bias and a rounded output."""

    def __init__(self, mod: nn.Linear, cfg: Any, name: str = ""):
        super().__init__(mod.weight, mod.bias, cfg, name)
        self.in_features, self.out_features = mod.in_features, mod.out_features

    def _affine(self, x, w, b):
        return F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))

    def _channel_shape(self, out):
        return [out.shape[-1]]

    def _locate(self, i, out_shape):
        c = out_shape[-1]
        return i % c, i // c

    def _patch(self, x, key, channel):
        return x.reshape(-1, x.shape[-1])[key]


class QuantConv2d(_QuantAffine):
    """``nn.Conv2d`` (zero padding) with quantized weights, accumulator-grid bias, rounded output."""

    def __init__(self, mod: nn.Conv2d, cfg: Any, name: str = ""):
        if mod.padding_mode != "zeros":
            raise QuantizationError(f"{name}: padding_mode={mod.padding_mode!r} is unsupported; use 'zeros'")
        padding = mod.padding
        if isinstance(padding, str):
            if padding != "valid":
                raise QuantizationError(f"{name}: padding={padding!r} is unsupported; give explicit padding")
            padding = (0, 0)
        super().__init__(mod.weight, mod.bias, cfg, name)
        self.stride, self.padding, self.dilation = mod.stride, padding, mod.dilation
        self.groups, self.in_channels, self.out_channels = mod.groups, mod.in_channels, mod.out_channels
        self.kernel_size = mod.kernel_size

    def _affine(self, x, w, b):
        return F.conv2d(
            x,
            w.to(x.dtype),
            None if b is None else b.to(x.dtype),
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )

    def _channel_shape(self, out):
        return [1, out.shape[1], 1, 1]

    def _locate(self, i, out_shape):
        _, c, h, w = out_shape
        return (i // (h * w)) % c, (i // (c * h * w), i % (h * w))

    def _patch(self, x, key, channel):
        n, pos = key
        per_group = self.out_channels // self.groups
        cin = self.in_channels // self.groups
        g = channel // per_group
        xs = x[n : n + 1, g * cin : (g + 1) * cin]
        return F.unfold(xs, self.kernel_size, self.dilation, self.padding, self.stride)[0, :, pos]


class QuantAct(QuantModule):
    """A pointwise activation whose output is rounded to its format: ``[sigma]``."""

    def __init__(self, act: Activation, cfg: Any, name: str = ""):
        super().__init__(name)
        self.act = act
        self.out_quant = (
            FakeQuantize(cfg.activation, 1, 0, cfg.activation_observer, cfg.learn_step, f"{name}.out")
            if cfg.activation is not None
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_quant is not None:
            x = self.in_quant(x)
        if not self._exact_mode():
            y = self.act.train_fn(x)
            return self.out_quant(y) if self.out_quant is not None else y
        x64 = x.to(torch.float64)
        y = self.act.f64(x64)
        if self.out_quant is None:
            return y
        inq = self.input_quantizer
        if inq is not None:
            codes, s_in = inq.snap(x64, self.qname).flatten(), inq.steps()[0]
            x_err = 0.0 if is_dyadic(s_in) else self.act.lipschitz * 2 * U64
            exact_x = lambda i: Fraction(int(codes[i].item())) * s_in  # noqa: E731
        else:
            flat, x_err = x64.flatten(), 0.0
            exact_x = lambda i: Fraction(flat[i].item())  # noqa: E731
        so = self.out_quant.steps()[0]
        sof = fraction_to_float(so)
        t_hat = y / sof
        err = ((y.abs() * REL_ERR + ABS_ERR + x64.abs() * x_err) / sof) * (1 + DIV_ERR)
        err = err + t_hat.abs() * DIV_ERR
        fmt = self.out_quant.fmt
        return self._round_output(t_hat, err, lambda i: round_activation(self.act, fmt, exact_x(i), so))

    def extra_repr(self) -> str:
        src = f", input from {self.input_source}" if self.input_source else ""
        return f"{self.qname!r}, {self.act.name}{src}"
