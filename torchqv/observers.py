"""Observers: choose a format's step (and zero point) from data.

A small hierarchy in the manner of ``torch.ao.quantization``: every observer records statistics
per channel (weights, axis 0) or per tensor (activations), and ``compute_qparams`` turns them
into a step and zero point for a :class:`~torchqv.formats.FixedPoint`.

* ``minmax``: the step that covers the observed range exactly;
* ``moving_average``: the same on an exponential moving average of batch minima and maxima;
* ``percentile``: the range between the ``100 - p`` and ``p`` percentiles (clips outliers);
* ``mse``: grid search over clipping ranges for the least quantization mean squared error.

Steps are rounded *up* to ``step_bits`` significant bits (8 by default; at most 24, so they are
float32 values and the training path and the exact path share one grid), or up to a power of two
when the format asks for it.  Short steps keep the requantization multipliers
``s_w s_x / s_out`` small rationals, which is what makes integer (ONNX) execution exact in 64-bit
arithmetic; the cost is a step at most 2^-7 larger than the observed one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .errors import CalibrationError, ConfigError
from .formats import FixedPoint

OBSERVERS = ("minmax", "moving_average", "percentile", "mse")
MIN_STEP = 2.0**-36  # keeps step denominators far below the int64 buffers' limit


@dataclass
class ObserverConfig:
    """How an observer picks steps.  ``kind`` is one of ``minmax``, ``moving_average``,
    ``percentile``, ``mse``."""

    kind: str = "minmax"
    averaging_constant: float = 0.01
    percentile: float = 99.99
    grid: int = 100
    max_samples: int = 65536
    step_bits: int = 8

    def __post_init__(self) -> None:
        if self.kind not in OBSERVERS:
            raise ConfigError(f"observer kind must be one of {OBSERVERS}, got {self.kind!r}")
        if not 0 < self.averaging_constant <= 1:
            raise ConfigError("averaging_constant must be in (0, 1]")
        if not 50 < self.percentile <= 100:
            raise ConfigError("percentile must be in (50, 100]")
        if self.grid < 2 or self.max_samples < 16:
            raise ConfigError("grid must be >= 2 and max_samples >= 16")
        if not 1 <= self.step_bits <= 24:
            raise ConfigError(f"step_bits must be in [1, 24], got {self.step_bits}")

    def to_dict(self) -> dict:
        return asdict(self)


def as_observer_config(value: ObserverConfig | str | dict) -> ObserverConfig:
    if isinstance(value, ObserverConfig):
        return value
    if isinstance(value, str):
        return ObserverConfig(kind=value)
    if isinstance(value, dict):
        return ObserverConfig(**value)
    raise ConfigError(f"observer must be a kind string or an ObserverConfig, got {value!r}")


def step_for_range(
    fmt: FixedPoint, lo: torch.Tensor, hi: torch.Tensor, zero_point: int | None = None, step_bits: int = 8
) -> tuple[torch.Tensor, int]:
    """Step (per channel) and zero point whose grid covers ``[lo, hi]`` (0 always included)."""
    lo = torch.minimum(lo.double(), torch.zeros_like(lo, dtype=torch.float64))
    hi = torch.maximum(hi.double(), torch.zeros_like(hi, dtype=torch.float64))
    if fmt.affine and zero_point is None:
        span = (hi - lo).clamp_min(0)
        step = span / (fmt.qmax - fmt.qmin)
        step = torch.where(step > 0, step, torch.ones_like(step))
        zp = round(fmt.qmin - lo.min().item() / step.max().item())
        zp = min(max(zp, fmt.qmin), fmt.qmax)
    else:
        zp = (fmt.zero_point or 0) if zero_point is None else zero_point  # not affine: fmt has an int
        kmin, kmax = fmt.code_range(zp)
        up = hi / kmax if kmax > 0 else torch.zeros_like(hi)
        down = lo / kmin if kmin < 0 else torch.zeros_like(lo)
        step = torch.maximum(up, down)
        step = torch.where(step > 0, step, torch.ones_like(step))
    return finalize_step(fmt, step, step_bits), zp


def finalize_step(fmt: FixedPoint, step: torch.Tensor, step_bits: int = 8) -> torch.Tensor:
    """Round steps up to ``step_bits`` significant bits (or to powers of two)."""
    step = step.double().clamp_min(MIN_STEP)
    if fmt.power_of_two:
        return torch.exp2(torch.ceil(torch.log2(step))).float()
    unit = torch.exp2(torch.floor(torch.log2(step)) - (step_bits - 1))  # value of the last bit
    return (torch.ceil(step / unit) * unit).float()


class Observer(nn.Module):
    """Records per-channel ``min`` and ``max`` (persisted in the state dict)."""

    min_val: torch.Tensor
    max_val: torch.Tensor

    def __init__(self, fmt: FixedPoint, channels: int = 1, config: ObserverConfig | None = None):
        super().__init__()
        self.fmt = fmt
        self.config = config or ObserverConfig()
        self.register_buffer("min_val", torch.full((channels,), math.inf))
        self.register_buffer("max_val", torch.full((channels,), -math.inf))
        self._samples: torch.Tensor | None = None
        self._gen = torch.Generator().manual_seed(0)

    @property
    def channels(self) -> int:
        return self.min_val.numel()

    def reset(self) -> None:
        self.min_val.fill_(math.inf)
        self.max_val.fill_(-math.inf)
        self._samples = None

    @property
    def has_data(self) -> bool:
        return bool(torch.isfinite(self.min_val).all())

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        return x.reshape(self.channels, -1) if self.channels > 1 else x.reshape(1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._rows(x).float()
        if rows.numel() == 0:
            return x
        if not bool(torch.isfinite(rows).all()):
            raise CalibrationError("observer received NaN or infinite values")
        bmin, bmax = rows.min(dim=1).values, rows.max(dim=1).values
        if self.config.kind == "moving_average" and self.has_data:
            c = self.config.averaging_constant
            self.min_val.mul_(1 - c).add_(c * bmin)
            self.max_val.mul_(1 - c).add_(c * bmax)
        else:
            self.min_val.copy_(torch.minimum(self.min_val, bmin))
            self.max_val.copy_(torch.maximum(self.max_val, bmax))
        if self.config.kind in ("percentile", "mse"):
            self._keep_samples(rows)
        return x

    def _keep_samples(self, rows: torch.Tensor) -> None:
        samples = rows if self._samples is None else torch.cat([self._samples, rows], dim=1)
        limit = self.config.max_samples
        if samples.shape[1] > limit:
            keep = torch.randperm(samples.shape[1], generator=self._gen)[:limit]
            samples = samples[:, keep]
        self._samples = samples

    def compute_qparams(self) -> tuple[torch.Tensor, int]:
        """Steps (float32, one per channel) and the zero point."""
        if not self.has_data:
            raise CalibrationError("observer saw no data")
        kind = self.config.kind
        if kind in ("minmax", "moving_average") or self._samples is None:
            return step_for_range(self.fmt, self.min_val, self.max_val, step_bits=self.config.step_bits)
        samples = self._samples.double()
        if kind == "percentile":
            q = self.config.percentile / 100.0
            lo = torch.quantile(samples, 1 - q, dim=1)
            hi = torch.quantile(samples, q, dim=1)
            return step_for_range(self.fmt, lo, hi, step_bits=self.config.step_bits)
        return self._mse_search(samples)

    def _mse_search(self, samples: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Grid search of clipping ratios ``r`` in (0, 1]: range ``r * [min, max]``."""
        best_step, best_err, zp = None, None, 0
        for i in range(1, self.config.grid + 1):
            r = i / self.config.grid
            step, zp_i = step_for_range(
                self.fmt, self.min_val * r, self.max_val * r, step_bits=self.config.step_bits
            )
            s = step.double().view(-1, 1)
            kmin, kmax = self.fmt.code_range(zp_i)
            k = self.fmt.round_tensor(samples / s).clamp(kmin, kmax)
            err = ((k * s - samples) ** 2).mean(dim=1)
            if best_err is None:
                best_step, best_err, zp = step.clone(), err, zp_i
            else:
                assert best_step is not None  # set with best_err
                better = err < best_err
                best_step = torch.where(better, step, best_step)
                best_err = torch.where(better, err, best_err)
                if self.fmt.affine and bool(better.any()):
                    zp = zp_i
        assert best_step is not None  # config.grid >= 2 (checked)
        return best_step, zp
