"""Lightning callbacks: quantization-aware training, QUBO rounding and equivalence checks."""

from .equivalence import EquivalenceCheck, EquivalenceReport, Region
from .qat import QATRecord, QATReport, QuantizationAwareTraining, load_quantized_checkpoint, restore_quantized
from .qubo import QUBORounding

__all__ = [
    "EquivalenceCheck",
    "EquivalenceReport",
    "QATRecord",
    "QATReport",
    "QUBORounding",
    "QuantizationAwareTraining",
    "Region",
    "load_quantized_checkpoint",
    "restore_quantized",
]
