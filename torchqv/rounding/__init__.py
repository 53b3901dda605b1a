"""Post-training rounding as an exact QUBO per output neuron (Muñiz Subiñas et al., "Optimization of the
quantization of dense neural networks from an exact QUBO formulation").

``qubo`` builds the objective (the loss), ``solvers`` minimises it (the optimisers), ``api``
collects the calibration data and rounds a model layer by layer; ``config.RoundingConfig``
holds a job's settings.
"""

from . import solvers
from .api import LayerReport, RoundingReport, round_weights
from .config import Method, RoundingConfig, Solver, Target
from .qubo import GramStats, LayerQUBO, build_layer_qubo

__all__ = [
    "GramStats",
    "LayerQUBO",
    "LayerReport",
    "Method",
    "RoundingConfig",
    "RoundingReport",
    "Solver",
    "Target",
    "build_layer_qubo",
    "round_weights",
    "solvers",
]
