"""torchqv: verified low-bit quantization for PyTorch.

``quantize(model, QConfig(...))`` swaps in exact fixed-point modules, ``calibrate`` chooses the
steps, ``model.eval()(x)`` runs the exact simulation and ``reference_forward`` the integer
reference (paper 001 Eq. 7 semantics: one rounding after every affine map and activation).
"""

from .fake_quant import FakeQuantize, fake_quantize
from .formats import Binary, FixedPoint, OverflowToGridError, QuantizationError, Ternary
from .modules import QuantAct, QuantConv2d, QuantLinear
from .observers import ObserverConfig
from .quantize import QConfig, calibrate, enable_observers, freeze, quantize
from .reference import reference_forward

__all__ = [
    "Binary",
    "FakeQuantize",
    "FixedPoint",
    "ObserverConfig",
    "OverflowToGridError",
    "QConfig",
    "QuantAct",
    "QuantConv2d",
    "QuantLinear",
    "QuantizationError",
    "Ternary",
    "calibrate",
    "enable_observers",
    "fake_quantize",
    "freeze",
    "quantize",
    "reference_forward",
]
__version__ = "0.1.0"
