"""``QConfig``: what to quantize and how (a plain dataclass that Hydra can build)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError
from .formats import FixedPoint, checked_fields
from .observers import ObserverConfig, as_observer_config


@dataclass
class QConfig:
    """What to quantize and how.

    ``weight``: format of the weights (``None``: float weights); ``activation``: format of the
    outputs of every operation that computes new values (affine maps, activations, adds,
    averages, concatenations; ``None``: real-valued, weight-only quantization); ``input``: format
    of the network input (``None``: not quantized).  Observers choose steps left as ``None``;
    ``learn_step`` makes steps trainable (LSQ) for QAT.
    """

    weight: FixedPoint | None = None
    activation: FixedPoint | None = None
    input: FixedPoint | None = None
    weight_observer: ObserverConfig | str = "minmax"
    activation_observer: ObserverConfig | str = "minmax"
    learn_step: bool = False

    def __post_init__(self) -> None:
        for name in ("weight", "activation", "input"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                value = FixedPoint.from_dict(dict(value))
                setattr(self, name, value)
            if value is not None and not isinstance(value, FixedPoint):
                raise ConfigError(f"QConfig.{name} must be a FixedPoint or None, got {value!r}")
        self.weight_observer = as_observer_config(self.weight_observer)
        self.activation_observer = as_observer_config(self.activation_observer)
        if self.weight is not None and self.weight.affine:
            raise ConfigError("weight formats are symmetric: give zero_point=0 (affine is for activations)")
        for name in ("activation", "input"):
            fmt = getattr(self, name)
            if fmt is not None and fmt.per_channel:
                raise ConfigError(f"QConfig.{name}: per-channel steps are for weights only")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QConfig:
        return cls(**checked_fields(cls, data))
