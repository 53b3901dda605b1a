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
from .export import ParityReport, check_onnx_parity, export_onnx, load_onnx
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
from .rounding import RoundingConfig, RoundingReport, round_weights
from .verify import (
    BitSearchConfig,
    BitSearchResult,
    SearchStatus,
    Verdict,
    VerifyConfig,
    from_onnx,
    quantize_bits,
    search_bits,
    verify_equivalence,
)

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
__version__ = "0.1.0"
