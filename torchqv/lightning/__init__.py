"""Lightning callbacks: quantization-aware training, QUBO rounding and equivalence checks."""

from ..extras import require

require("pytorch_lightning", "torchqv.lightning")

from .qat import (  # noqa: E402
    QATRecord,
    QATReport,
    QuantizationAwareTraining,
    load_quantized_checkpoint,
    restore_quantized,
)
from .qubo import QUBORounding  # noqa: E402

_EQUIVALENCE = ("EquivalenceCheck", "EquivalenceReport", "Region")


def __getattr__(name: str):  # the equivalence callback needs the verifier (the [verify] extra)
    if name in _EQUIVALENCE:
        from . import equivalence

        return getattr(equivalence, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
