"""``RoundingConfig``: the settings of a rounding job, declared and validated in one place.

``round_weights``, the Lightning ``QUBORounding`` callback and the Hydra recipes take a
``RoundingConfig``; their keyword forms (``round_weights(qm, data, solver="neal", seed=1)``) are
conveniences that build one.  A plain dataclass: ``to_dict()`` is JSON-ready,
``RoundingConfig.from_dict`` reads it back, Hydra builds it from YAML.  Importing it needs no
solver package (dwave-neal is imported only when ``solver="neal"`` runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..enums import Choice
from ..errors import RoundingError
from ..jobconfig import JobConfig


class Method(Choice):
    """How weights are rounded: the per-neuron QUBO (Muñiz Subiñas et al., "Optimization of the
    quantization of dense neural networks from an exact QUBO formulation") or to nearest."""

    QUBO = "qubo"
    NEAREST = "nearest"


class Solver(Choice):
    """The QUBO's solver: ``auto`` (torchqv's batched annealer; exhaustive search for small
    neurons), ``neal`` (dwave-neal per neuron), ``exact`` (exhaustive, at most 24 free variables
    per neuron) or ``nearest`` (no search: the baseline)."""

    AUTO = "auto"
    NEAL = "neal"
    EXACT = "exact"
    NEAREST = "nearest"


class Target(Choice):
    """What each layer's output is compared with: the float layer on the float inputs
    (``float``) or on the inputs the quantized prefix gives it (``quantized``)."""

    FLOAT = "float"
    QUANTIZED = "quantized"


# the least value of each integer field
_LEAST = {"num_sweeps": 1, "num_reads": 1, "sweeps": 0, "replicas": 1, "seed": None}


@dataclass
class RoundingConfig(JobConfig):
    """One rounding job (see :func:`torchqv.round_weights`).

    ``method``/``solver``/``target``: see :class:`Method`, :class:`Solver`, :class:`Target`
    (``method="nearest"`` implies ``solver="nearest"``).  ``sweeps``, ``replicas``: the ``auto``
    annealer's sweeps and independent copies per neuron; ``num_sweeps``, ``num_reads``: dwave-neal's.
    ``seed``: every random choice.  ``bound``: also compute a certified lower bound of each layer's
    objective (opt-in: costly on wide layers).  ``time_limit``: seconds for the whole call (``None``: no
    limit); neurons not reached keep nearest rounding.
    """

    error: ClassVar[type[Exception]] = RoundingError

    method: str = Method.QUBO  # a Method (str-typed for Hydra: give its value)
    solver: str = Solver.AUTO  # a Solver
    target: str = Target.FLOAT  # a Target
    num_sweeps: int = 1000
    num_reads: int = 1
    sweeps: int = 50
    replicas: int = 4
    seed: int = 0
    bound: bool = False
    time_limit: float | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.method = Method.parse(self.method, f"{owner}.method", RoundingError)
        self.solver = Solver.parse(self.solver, f"{owner}.solver", RoundingError)
        self.target = Target.parse(self.target, f"{owner}.target", RoundingError)
        for name, least in _LEAST.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (least is not None and value < least):
                bound = "" if least is None else f" >= {least}"
                raise RoundingError(f"{owner}.{name} must be an int{bound}, got {value!r}")
        if not isinstance(self.bound, bool):
            raise RoundingError(f"{owner}.bound must be True or False, got {self.bound!r}")
        t = self.time_limit
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < math.inf):
            raise RoundingError(f"{owner}.time_limit must be a positive number of seconds or None, got {t!r}")

    @property
    def effective_solver(self) -> Solver:
        """The solver that runs: ``nearest`` for ``method="nearest"``."""
        return Solver.NEAREST if self.method is Method.NEAREST else Solver.parse(self.solver, "solver")
