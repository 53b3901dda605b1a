"""Lightning callbacks: quantization-aware training, QUBO rounding and equivalence checks."""

from .batchnorm import fold_batchnorm
from .equivalence import EquivalenceCheck, EquivalenceReport, Region, float_twin
from .qat import QATRecord, QATReport, QuantizationAwareTraining, restore_quantized
from .qubo import QUBORounding

__all__ = [
    "EquivalenceCheck",
    "EquivalenceReport",
    "QATRecord",
    "QATReport",
    "QUBORounding",
    "QuantizationAwareTraining",
    "Region",
    "float_twin",
    "fold_batchnorm",
    "restore_quantized",
]
