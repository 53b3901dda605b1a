"""``JobConfig``: what every job configuration (``VerifyConfig``, ``RoundingConfig``,
``BitSearchConfig``) shares: building from a dict with unknown keys named, copies with changes
(the keyword conveniences of the functions that take a config), and a JSON-ready ``to_dict``.

Subclasses are plain dataclasses that validate their fields in ``__post_init__`` and set
``error`` to the exception they raise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass, replace
from enum import Enum
from fractions import Fraction
from typing import Any, ClassVar, TypeVar

import torch

from .errors import ConfigError

J = TypeVar("J", bound="JobConfig")


def plain(value: Any) -> Any:
    """``value`` with enums as their strings, rationals other than floats as ``"p/q"``, tensors
    and tuples as lists and dataclasses as dicts (JSON-ready)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Fraction):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


class JobConfig:
    """Mixin of the job configuration dataclasses (see the module docstring)."""

    error: ClassVar[type[Exception]] = ConfigError

    @classmethod
    def _check_names(cls, names: Any, what: str) -> None:
        valid = sorted(f.name for f in fields(cls))  # type: ignore[arg-type]
        unknown = sorted(set(names) - set(valid))
        if unknown:
            raise cls.error(f"unknown {what} {unknown}; valid: {valid}")

    @classmethod
    def from_dict(cls: type[J], data: Mapping[str, Any]) -> J:
        """The config of ``data`` (its ``to_dict``, a YAML mapping): unknown keys are an error."""
        cls._check_names(data, f"{cls.__name__} field(s)")
        return cls(**dict(data))

    def updated(self: J, **changes: Any) -> J:
        """A copy with ``changes`` (field names; an unknown name is an error listing the valid ones)."""
        self._check_names(changes, f"{type(self).__name__} option(s)")
        return replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def coerce(cls: type[J], config: J | Mapping[str, Any] | None, owner: str, **options: Any) -> J:
        """``config`` (an instance, a dict of its fields, or ``None``: the defaults) with the keyword
        ``options`` applied on top; ``owner`` names the caller in errors."""
        if config is None:
            config = cls()
        elif isinstance(config, Mapping):
            config = cls.from_dict(config)
        elif not isinstance(config, cls):
            raise cls.error(
                f"{owner}: config must be a {cls.__name__} (or a dict of its fields), "
                f"got {type(config).__name__}"
            )
        return config.updated(**options) if options else config

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (see :func:`plain`); ``from_dict`` reads it back."""
        return plain(self)
