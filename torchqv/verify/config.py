"""``VerifyConfig``: the settings of a verification job, declared and validated in one place.

``verify_equivalence``, ``search_bits`` (through ``BitSearchConfig.verify``), the Lightning
``EquivalenceCheck`` callback and the Hydra recipes all take a ``VerifyConfig``; their keyword
forms (``verify_equivalence(f, fq, x, 0.01, relation="eps", eps=0.1)``) are conveniences that
build one.  It is a plain dataclass: ``to_dict()`` is JSON-ready, ``VerifyConfig.from_dict``
reads it back, and Hydra builds it from YAML.

The relations are those of Matos Júnior, "An automated method for neural network quantization
refinement" (PhD thesis, UFAM 2025), sec. 2.4: ``strict`` (equal outputs), ``top1`` (same
first argmax) and ``eps`` (``||f(x) - f'(x)|| <= eps`` in the L-infinity or L1 norm).  This
module imports neither z3 nor scipy: a config can be built where the verifier is not installed.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

from ..enums import Choice
from ..errors import VerificationInputError
from ..jobconfig import JobConfig
from .parallel import check_workers
from .region import exact_number

INPUT_SPLIT_DIMS = 16  # regions with at most this many free inputs are split by coordinates first


class Relation(Choice):
    """When f and f' count as equivalent at an input x (thesis sec. 2.4)."""

    STRICT = "strict"  # f(x) == f'(x), every output
    TOP1 = "top1"  # the same first index of the maximum (torch.argmax's rule)
    EPS = "eps"  # ||f(x) - f'(x)|| <= eps


class Norm(Choice):
    """The norm of ``Relation.EPS`` (regions are always L-infinity balls or boxes)."""

    INF = "inf"
    L1 = "l1"


@dataclass
class VerifyConfig(JobConfig):
    """One verification job (see :func:`torchqv.verify_equivalence` for the semantics).

    ``relation``/``eps``/``norm``: what "equivalent" means (``eps`` only, and required, with
    ``relation="eps"``).  ``delta``: the L-infinity radius of the region around each point
    (``None`` when the regions are given as boxes).  ``domain``: ``(lo, hi)``, numbers or
    tensors broadcastable to one input, the box every input stays in.  Numbers are taken at their
    exact values: floats at their binary value, ``Fraction`` or ``"p/q"`` strings for others.
    ``timeout``: seconds per region.  ``samples``: random points per region for falsification,
    seeded from ``(seed, region index)``.  ``use_bounds=False``: the plain z3 encoding without
    bounds or branching (a baseline).  ``branching``: the share of the timeout that branch and
    bound may use before z3 gets the rest.  ``input_split``: regions with at most this many free
    input coordinates are branched by splitting the box first.  ``workers``: regions decided on a
    local pool of that many processes (1: in this process).
    """

    error: ClassVar[type[Exception]] = VerificationInputError

    relation: str = Relation.TOP1  # a Relation (str-typed for Hydra: give its value)
    delta: Any = None
    eps: Any = None
    norm: str = Norm.INF  # a Norm
    domain: Any = None
    timeout: float = 60.0
    samples: int = 256
    seed: int = 0
    use_bounds: bool = True
    branching: float = 0.5
    input_split: int = INPUT_SPLIT_DIMS
    workers: int = 1

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.relation = Relation.parse(self.relation, f"{owner}.relation", VerificationInputError)
        self.norm = Norm.parse(self.norm, f"{owner}.norm", VerificationInputError)
        if self.relation is Relation.EPS:
            eps = exact_or_none(self.eps)
            if eps is None or not eps > 0:
                raise VerificationInputError(
                    f"{owner}: relation='eps' needs eps > 0 (a finite number or 'p/q'), got {self.eps!r}"
                )
        delta = exact_or_none(self.delta)
        if self.delta is not None and (delta is None or delta < 0):
            raise VerificationInputError(
                f"{owner}.delta must be a finite number >= 0 (or 'p/q'), got {self.delta!r}"
            )
        if self.domain is not None and (not isinstance(self.domain, (tuple, list)) or len(self.domain) != 2):
            raise VerificationInputError(
                f"{owner}.domain must be a pair (lo, hi) of numbers or tensors, got {self.domain!r}"
            )
        if self.domain is not None:
            self.domain = tuple(self.domain)
        if (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, numbers.Real)
            or not self.timeout > 0
        ):
            raise VerificationInputError(f"{owner}.timeout must be > 0 seconds, got {self.timeout!r}")
        if (
            isinstance(self.branching, bool)
            or not isinstance(self.branching, numbers.Real)
            or not (0 <= self.branching <= 1)
        ):
            raise VerificationInputError(f"{owner}.branching must be in [0, 1], got {self.branching!r}")
        if not isinstance(self.use_bounds, bool):
            raise VerificationInputError(f"{owner}.use_bounds must be True or False, got {self.use_bounds!r}")
        for name, least in (("samples", 0), ("input_split", 0), ("seed", None)):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Integral)
                or (least is not None and value < least)
            ):
                at_least = "" if least is None else f" >= {least}"
                raise VerificationInputError(f"{owner}.{name} must be an int{at_least}, got {value!r}")
        check_workers(self.workers, f"{owner}.workers")

    @property
    def exact_eps(self) -> Fraction | None:
        """``eps`` at its exact value (``None`` unless ``relation="eps"``)."""
        return exact_number(self.eps, "eps") if self.relation is Relation.EPS else None


def exact_or_none(value: Any) -> Fraction | None:
    """``value`` at its exact value, or ``None`` when it is not a finite number (or ``"p/q"``)."""
    try:
        return exact_number(value, "value")
    except VerificationInputError:
        return None
