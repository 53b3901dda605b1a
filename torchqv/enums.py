"""``Choice``: the base of torchqv's typed options, verdicts and statuses.

A ``Choice`` is a ``str``-valued ``enum.Enum``: members compare equal to their strings
(``Verdict.EQUIVALENT == "EQUIVALENT"``), print and serialise to JSON as their values, and Hydra
(OmegaConf) builds them from strings in configs.  ``parse`` turns user input into a member or
raises ``ConfigError`` listing the valid values.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

from .errors import ConfigError

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    """A str-valued enum member (see the module docstring)."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(str(m.value) for m in cls)

    @classmethod
    def parse(cls: type[C], value: Any, what: str, error: type[Exception] = ConfigError) -> C:
        """``value`` (a member or its string) as a member of ``cls``; ``error`` names ``what``."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if member.value == value:
                    return member
        raise error(f"{what} must be one of {cls.values()}, got {value!r}")
