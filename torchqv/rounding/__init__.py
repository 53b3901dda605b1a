"""Post-training rounding as an exact QUBO per output neuron (Muñiz Subiñas et al., "Optimization of the
quantization of dense neural networks from an exact QUBO formulation").

``qubo`` builds the objective (the loss), ``solvers`` minimises it (the optimisers), ``api``
collects the calibration data and rounds a model layer by layer.
"""

from . import solvers
from .api import LayerReport, RoundingReport, round_weights
from .qubo import GramStats, LayerQUBO, build_layer_qubo

__all__ = [
    "GramStats",
    "LayerQUBO",
    "LayerReport",
    "RoundingReport",
    "build_layer_qubo",
    "round_weights",
    "solvers",
]
