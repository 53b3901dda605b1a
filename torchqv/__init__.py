"""torchqv: verified low-bit quantization for PyTorch.

``quantize(model, QConfig(...))`` swaps in exact fixed-point modules, ``calibrate`` chooses the
steps, ``model.eval()(x)`` runs the exact simulation and ``reference_forward`` the integer
reference (paper 001 Eq. 7 semantics: one rounding after every affine map and activation).
"""

from .export import ParityReport, check_onnx_parity, export_onnx, load_onnx
from .fake_quant import FakeQuantize, fake_quantize
from .formats import Binary, FixedPoint, OverflowToGridError, QuantizationError, Ternary
from .modules import QuantAct, QuantConv2d, QuantLinear, QuantModule
from .observers import ObserverConfig
from .quantize import QConfig, calibrate, enable_observers, freeze, quantize
from .reference import reference_forward
from .rounding import RoundingReport, round_weights
from .verify import (
    BitSearchConfig,
    BitSearchResult,
    from_onnx,
    quantize_bits,
    search_bits,
    verify_equivalence,
)

__all__ = [
    "Binary",
    "BitSearchConfig",
    "BitSearchResult",
    "FakeQuantize",
    "FixedPoint",
    "ObserverConfig",
    "OverflowToGridError",
    "ParityReport",
    "QConfig",
    "QuantAct",
    "QuantConv2d",
    "QuantLinear",
    "QuantModule",
    "QuantizationError",
    "RoundingReport",
    "Ternary",
    "calibrate",
    "check_onnx_parity",
    "enable_observers",
    "export_onnx",
    "fake_quantize",
    "freeze",
    "from_onnx",
    "load_onnx",
    "quantize",
    "quantize_bits",
    "reference_forward",
    "round_weights",
    "search_bits",
    "verify_equivalence",
]
__version__ = "0.1.0"
