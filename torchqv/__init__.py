"""torchqv: verified low-bit quantization for PyTorch.

``quantize(model, QConfig(...))`` traces the model into a quantized graph, ``calibrate`` chooses
the steps, ``model.eval()(x)`` runs the exact simulation and ``reference_forward`` the integer
reference (Park, Park & Hwang, "On expressive power of quantized neural networks under fixed-point
arithmetic", Eq. 7 semantics: one rounding after every operation that leaves the grid).
"""

from . import errors, ops
from .batchnorm import fold_batchnorm
from .errors import (
    CalibrationError,
    CheckpointError,
    ConfigError,
    DataError,
    ExportError,
    FormatError,
    OverflowToGridError,
    QuantizationError,
    RoundingError,
    TheoryInputError,
    UnsupportedModelError,
    VerificationInputError,
)
from .extras import MissingExtraError
from .fake_quant import FakeQuantize, fake_quantize
from .formats import Binary, FixedPoint, Ternary
from .graph import QuantizedModel, float_twin
from .kernels import use_compiled_kernels
from .observers import ObserverConfig
from .ops.activation import QuantAct
from .ops.affine import QuantAffine, QuantBatchNorm, QuantConv, QuantLinear
from .qconfig import QConfig
from .quantize import calibrate, enable_observers, freeze, quantize, summary
from .reference import reference_forward

# Names of the optional parts, imported on first use (PEP 562) so that ``import torchqv`` loads
# only the core; a missing extra raises MissingExtraError naming the ``pip install`` that fixes it.
_LAZY = {
    "ParityReport": "torchqv.export",
    "check_onnx_parity": "torchqv.export",
    "export_onnx": "torchqv.export",
    "load_onnx": "torchqv.export",
    "RoundingConfig": "torchqv.rounding.config",
    "RoundingReport": "torchqv.rounding",
    "round_weights": "torchqv.rounding",
    "BitSearchConfig": "torchqv.verify",
    "BitSearchResult": "torchqv.verify",
    "from_onnx": "torchqv.verify.onnx_import",
    "quantize_bits": "torchqv.verify",
    "search_bits": "torchqv.verify",
    "verify_equivalence": "torchqv.verify",
    "VerifyConfig": "torchqv.verify.config",
    "Verdict": "torchqv.verify.verdicts",
    "SearchStatus": "torchqv.verify.verdicts",
}


# the packages each optional module needs (their extras): ``__all__`` lists only what imports here
_NEEDS = {
    "torchqv.export": ("onnx",),
    "torchqv.verify.onnx_import": ("onnx",),
    "torchqv.verify": ("z3", "scipy"),
}


def _importable(module: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(package) is not None for package in _NEEDS.get(module, ()))


# optional subpackages, so that ``torchqv.verify.engine`` etc. keep working after ``import torchqv``
_SUBPACKAGES = ("data", "export", "lightning", "recipes", "rounding", "theory", "verify")


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Binary",
    "BitSearchConfig",
    "BitSearchResult",
    "CalibrationError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportError",
    "FakeQuantize",
    "FixedPoint",
    "FormatError",
    "MissingExtraError",
    "ObserverConfig",
    "OverflowToGridError",
    "ParityReport",
    "QConfig",
    "QuantAct",
    "QuantAffine",
    "QuantBatchNorm",
    "QuantConv",
    "QuantLinear",
    "QuantizationError",
    "QuantizedModel",
    "RoundingConfig",
    "RoundingError",
    "RoundingReport",
    "SearchStatus",
    "Ternary",
    "TheoryInputError",
    "UnsupportedModelError",
    "Verdict",
    "VerificationInputError",
    "VerifyConfig",
    "calibrate",
    "check_onnx_parity",
    "enable_observers",
    "errors",
    "export_onnx",
    "fake_quantize",
    "float_twin",
    "fold_batchnorm",
    "freeze",
    "from_onnx",
    "load_onnx",
    "ops",
    "quantize",
    "quantize_bits",
    "reference_forward",
    "round_weights",
    "search_bits",
    "summary",
    "use_compiled_kernels",
    "verify_equivalence",
]
# ``from torchqv import *`` takes the optional names whose extras are installed
__all__ = [name for name in __all__ if name not in _LAZY or _importable(_LAZY[name])]
__version__ = "0.1.0"
