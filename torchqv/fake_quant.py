"""Fake quantization: round to a grid in the forward pass, straight-through in the backward.

``fake_quantize`` is one autograd function for both rules of quantization-aware training:

* straight-through estimator (STE, Bengio et al. 2013): ``d xhat / d x = 1`` where ``x / step``
  rounds into the grid (``[kmin - 1/2, kmax + 1/2]`` up to the tie rule; ``[-1, 1]`` for
  binary) and 0 outside;
* learned step size (LSQ, Esser et al. 2020): when the step requires grad,
  ``d xhat / d s = k - x/s`` inside and ``k`` (the clamped code) outside, scaled by
  ``1 / sqrt(numel * kmax)``.

:class:`FakeQuantize` holds a format, its steps (exact: int64 numerator and denominator
buffers) and its observer.  In training it fake-quantizes in the input's dtype; in eval it
quantizes exactly (float64 values, certified against :func:`FixedPoint.round_exact`).
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import nn

from .errors import CalibrationError, FormatError
from .formats import (
    FixedPoint,
    as_step,
    dequantize_f64,
    dequantize_groups,
    expand_groups,
    fraction_to_float,
    round_certified,
)
from .grid import Grid
from .kernels import fake_quantize_parts
from .observers import Observer, ObserverConfig

# Relative error of one float64 division x / step (plus margin).
DIV_ERR = 2.0**-50
CHUNK = 1 << 22  # elements per chunk of the exact quantization of large tensors


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, step, fmt, kmin, kmax, grad_scale):
        y, t, kc, inside = fake_quantize_parts(x, step, fmt, kmin, kmax)  # one fused pass if compiled
        ctx.grad_scale = grad_scale
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(inside, t, kc, step)
        else:
            ctx.save_for_backward(inside)
        return y

    @staticmethod
    def backward(ctx, grad):
        inside = ctx.saved_tensors[0]
        grad_x = grad * inside
        grad_s = None
        if ctx.needs_input_grad[1]:
            _, t, kc, step = ctx.saved_tensors
            ds = torch.where(inside, kc - t, kc) * grad * ctx.grad_scale
            # reduce to the step's (broadcast) shape
            while ds.dim() > step.dim():
                ds = ds.sum(0)
            for d, n in enumerate(step.shape):
                if n == 1 and ds.shape[d] != 1:
                    ds = ds.sum(d, keepdim=True)
            grad_s = ds
        return grad_x, grad_s, None, None, None, None


def fake_quantize(
    x: torch.Tensor, step: torch.Tensor, fmt: FixedPoint, kmin: float, kmax: float, axis: int = 0
) -> torch.Tensor:
    """``clamp(round(x / step), kmin, kmax) * step`` with STE (and LSQ if ``step`` needs grad).

    Ties-to-even formats with a fixed step use torch's fused kernels (one pass, the same
    nearest-even rule; they multiply by ``1 / step``, which equals dividing for power-of-two
    steps); every other case runs :meth:`FixedPoint.round_tensor` in an autograd function.
    """
    if (
        fmt.rounding == "half_even"
        and not fmt.binary
        and not step.requires_grad
        and (step.numel() == 1 or step.shape[axis] == step.numel())  # not per-group (elementwise)
        and -(2**31) <= kmin
        and kmax < 2**31
        and x.dtype == torch.float32
    ):
        if step.numel() == 1:
            return torch.fake_quantize_per_tensor_affine(
                x,
                step.reshape(()).float(),
                torch.zeros((), dtype=torch.int32, device=x.device),
                int(kmin),
                int(kmax),
            )
        return torch.fake_quantize_per_channel_affine(
            x,
            step.flatten().float(),
            torch.zeros(step.numel(), dtype=torch.int32, device=x.device),
            axis,
            int(kmin),
            int(kmax),
        )
    grad_scale = 1.0 / math.sqrt(max(1, x.numel()) * max(1.0, abs(kmax)))
    return _FakeQuantize.apply(x, step, fmt, kmin, kmax, grad_scale)


class FakeQuantize(nn.Module):
    """A quantizer node: format + exact steps + observer.

    With a per-channel format there is one step per channel along ``axis`` (weights: the output
    channel); with ``group_size`` one per (output channel, group): ``channels`` is then
    ``out * G`` and the steps apply to consecutive blocks of ``group_size`` elements of the
    weight in its row-major order (:meth:`FixedPoint.group_count`; ``axis`` must be 0).
    Steps are stored exactly as int64 ``step_num / step_den`` (``step_den == 0``: not set yet).
    """

    step_num: torch.Tensor
    step_den: torch.Tensor
    zero_point: torch.Tensor

    def __init__(
        self,
        fmt: FixedPoint,
        channels: int = 1,
        axis: int = 0,
        observer: ObserverConfig | None = None,
        learn_step: bool = False,
        name: str = "",
        weight: bool = False,
    ):
        super().__init__()
        self.fmt, self.axis, self.qname = fmt, axis, name
        self.is_weight = weight  # weight observers look at the current tensor only
        fixed = fmt.fixed_steps()
        if fixed is not None and len(fixed) not in (1, channels):
            raise FormatError(
                f"{name}: format has {len(fixed)} per-channel steps but the tensor has {channels} channels"
            )
        n = channels if fmt.per_channel else 1
        self.register_buffer("step_num", torch.zeros(n, dtype=torch.int64))
        self.register_buffer("step_den", torch.zeros(n, dtype=torch.int64))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int64))
        self._cache: dict = {}  # exact steps and their float tensors, keyed on buffer versions
        self.observer: Observer | None = None
        self.observer_enabled = False
        self.fake_quant_enabled = True
        self.learn_step = learn_step
        if fixed is not None:
            if fmt.affine:
                raise FormatError(f"{name}: a fixed step needs a fixed zero_point (not None)")
            self.set_steps(list(fixed) * (n if len(fixed) == 1 else 1), fmt.zero_point or 0)
        else:
            self.observer = Observer(fmt, n, observer)
            if fmt.zero_point is not None:
                self.zero_point.fill_(fmt.zero_point)
        if learn_step:
            if fmt.power_of_two:
                raise FormatError(f"{name}: learned steps (LSQ) cannot keep power_of_two steps")
            self.step_param = nn.Parameter(torch.ones(n))

    # ------------------------------------------------------------- steps
    @property
    def calibrated(self) -> bool:
        return bool((self.step_den > 0).all())

    def set_steps(self, steps: list[Fraction] | torch.Tensor, zero_point: int) -> None:
        if isinstance(steps, torch.Tensor):
            steps = [Fraction(float(s)) for s in steps.flatten().tolist()]
        if len(steps) == 1 and self.step_num.numel() > 1:
            steps = steps * self.step_num.numel()
        fr = self._store(steps)
        self.zero_point.fill_(int(zero_point))
        if self.learn_step and hasattr(self, "step_param"):
            with torch.no_grad():
                self.step_param.copy_(torch.tensor([fraction_to_float(s) for s in fr]))

    def _store(self, steps: list) -> list[Fraction]:
        fr = [as_step(s, f"{self.qname or 'quantizer'} step") for s in steps]
        self.step_num.copy_(torch.tensor([s.numerator for s in fr], dtype=torch.int64))
        self.step_den.copy_(torch.tensor([s.denominator for s in fr], dtype=torch.int64))
        return fr

    def steps(self) -> list[Fraction]:
        """The exact steps (one per channel, or one)."""
        key = (self.step_num._version, self.step_den._version, self.step_num.data_ptr())
        if not self.learn_step and self._cache.get("key") == key:
            return self._cache["steps"]
        if not self.calibrated:
            raise FormatError(
                f"{self.qname or 'quantizer'} has no step yet: run tq.calibrate(model, batches) "
                "or give the format a step"
            )
        if self.learn_step:
            vals = self.step_param.detach().float().tolist()
            if min(vals) <= 0 or not all(math.isfinite(v) for v in vals):
                raise FormatError(
                    f"{self.qname}: learned step became non-positive or non-finite; lower the learning rate"
                )
            self._store([Fraction(v) for v in vals])  # the exact grid follows the learned step
        steps = [
            Fraction(int(n), int(d))
            for n, d in zip(self.step_num.tolist(), self.step_den.tolist(), strict=False)
        ]
        key = (self.step_num._version, self.step_den._version, self.step_num.data_ptr())
        self._cache = {"key": key, "steps": steps}
        return steps

    def state_key(self) -> tuple:
        """Changes whenever the steps or the zero point change."""
        tensors = [self.step_num, self.step_den, self.zero_point]
        if self.learn_step:
            tensors.append(self.step_param)
        return tuple((t._version, t.data_ptr()) for t in tensors)

    def grid(self) -> Grid:
        """The per-tensor grid (format, exact step, zero point) this quantizer rounds to."""
        steps = self.steps()
        if len(steps) != 1:
            raise FormatError(f"{self.qname}: a per-channel quantizer has no single grid")
        return Grid(self.fmt, steps[0], self.zp)

    @property
    def zp(self) -> int:
        return int(self.zero_point.item())

    def code_range(self) -> tuple[int, int]:
        return self.fmt.code_range(self.zp)

    @property
    def grouped(self) -> bool:
        """One step per (output channel, group of ``group_size`` elements)?"""
        return self.fmt.group_size is not None and self.step_num.numel() > 1

    def _shape(self, x: torch.Tensor) -> list[int]:
        shape = [1] * x.dim()
        if self.step_num.numel() > 1:
            shape[self.axis] = self.step_num.numel()
        return shape

    def step_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Steps broadcastable against ``x`` (float, LSQ parameter when learning)."""
        if self.learn_step:
            if self.grouped:
                return expand_groups(self.step_param.to(x.dtype), x.shape)
            return self.step_param.to(x.dtype).view(self._shape(x))
        steps = self.steps()
        key = ("tensor", x.dtype, x.device, tuple(x.shape) if self.grouped else x.dim())
        if key not in self._cache:
            s = torch.tensor([fraction_to_float(f) for f in steps], dtype=x.dtype, device=x.device)
            self._cache[key] = expand_groups(s, x.shape) if self.grouped else s.view(self._shape(x))
        return self._cache[key]

    # --------------------------------------------------------- observation
    def observe(self, x: torch.Tensor) -> None:
        if self.observer is None:
            return
        if self.is_weight:
            self.observer.reset()
        self.observer(x)

    def compute_qparams(self) -> None:
        """Set the steps from the observer's statistics."""
        if self.observer is None:
            return
        if not self.observer.has_data:
            raise CalibrationError(
                f"observer of {self.qname or 'a quantizer'} saw no data: did the calibration batches "
                "reach this layer?"
            )
        steps, zp = self.observer.compute_qparams()
        self.set_steps(steps, zp)

    # ------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled:
            self.observe(x)
            if self.fake_quant_enabled:
                self.compute_qparams()
        if not self.fake_quant_enabled:
            return x
        if not self.training:
            return self.quantize_exact(x)
        kmin, kmax = self.code_range()
        return fake_quantize(x, self.step_tensor(x), self.fmt, kmin, kmax, self.axis)

    # -------------------------------------------------------- exact (eval)
    def exact_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Saturated centered codes of ``round(x / step)`` decided exactly (float64 tensor).

        float32 (or narrower) values with steps ``p / q`` whose odd parts are small are decided
        directly in float64: ``x = m 2^e`` with ``|m| < 2^24``, so ``x q`` is exact and ``x q / p``
        is one correctly rounded division of ``M 2^-a`` (``|M| < 2^52``) by ``p``; a value off a
        rounding boundary is at least ``1 / (2 p 2^a)`` from it, more than the division's error,
        and a tie is found exactly.  Other values take the certified path (float64 with an error
        bound, exact rationals near boundaries).  Large tensors go in chunks of ``CHUNK`` elements
        (per-channel steps along axis 0), so the float64 temporaries stay small."""
        steps = self.steps()
        kmin, kmax = self.code_range()
        moved = len(steps) > 1 and self.axis != 0
        flat = (x.movedim(self.axis, 0) if moved else x).detach().reshape(-1)
        inner = max(flat.numel() // len(steps), 1)
        odd = lambda n: n >> ((n & -n).bit_length() - 1)  # noqa: E731
        direct = flat.dtype in (torch.float32, torch.float16, torch.bfloat16) and all(
            odd(s.denominator) < 2**28 and odd(s.numerator) < 2**52 for s in steps
        )
        dev = flat.device
        num = torch.tensor([float(s.denominator) for s in steps], dtype=torch.float64, device=dev)
        den = torch.tensor([float(s.numerator) for s in steps], dtype=torch.float64, device=dev)
        sf = torch.tensor([fraction_to_float(f) for f in steps], dtype=torch.float64, device=dev)
        out = torch.empty(flat.numel(), dtype=torch.float64, device=dev)
        for start in range(0, flat.numel(), CHUNK):
            part = flat[start : start + CHUNK].to(torch.float64)
            rows = torch.arange(start, start + part.numel(), device=dev) // inner if len(steps) > 1 else 0
            if direct:
                if not bool(torch.isfinite(part).all()):
                    raise FormatError(
                        f"{self.qname or 'tensor'}: NaN or infinite value reached quantization; check the "
                        "input data and the model parameters"
                    )
                k = self.fmt.round_tensor(part * num[rows] / den[rows])
            else:
                t_hat = part / sf[rows]

                def exact(idx: list[int], part: torch.Tensor = part, start: int = start) -> list[int]:
                    step_of = (
                        (lambda i: steps[(start + i) // inner]) if len(steps) > 1 else (lambda i: steps[0])
                    )
                    return [self.fmt.round_exact(Fraction(part[i].item()) / step_of(i)) for i in idx]

                k = round_certified(self.fmt, t_hat, t_hat.abs() * DIV_ERR, exact, self.qname)
            out[start : start + part.numel()] = self.fmt.saturate_tensor(k, kmin, kmax, self.qname)
        shape = x.movedim(self.axis, 0).shape if moved else x.shape
        codes = out.view(shape)
        return codes.movedim(0, self.axis) if moved else codes

    def quantize_exact(self, x: torch.Tensor) -> torch.Tensor:
        """Grid values (float64, each the double nearest to ``k * step``)."""
        if self.grouped:
            return dequantize_groups(self.exact_codes(x), self.steps())
        return dequantize_f64(self.exact_codes(x), self.steps(), self.axis)

    def snap(self, x: torch.Tensor, where: str) -> torch.Tensor:
        """Recover the centered codes of values this quantizer produced (float64 codes)."""
        steps = self.steps()
        x64 = x.to(torch.float64)
        s = torch.tensor([fraction_to_float(f) for f in steps], dtype=torch.float64, device=x.device)
        s = s.view(self._shape(x64))
        t = x64 / s
        k = torch.round(t)
        if bool(((t - k).abs() > k.abs() * 2.0**-45 + 2.0**-45).any()):
            raise FormatError(
                f"{where}: input is not on the grid of {self.qname}; was the model fed through "
                "its quantizers? (call the quantized model, not a sub-module, in eval mode)"
            )
        return k

    def extra_repr(self) -> str:
        return f"{self.fmt.describe()}, channels={self.step_num.numel()}"
