"""Equivalence verification of float and quantized networks (paper 003).

``from_onnx`` reads networks; ``network`` is the exact chain representation; ``bounds`` sound
interval bounds; ``encode`` the z3 encodings; ``engine.verify_equivalence`` the sound engine.
"""

from .engine import Result, verify_equivalence
from .onnx_import import from_onnx

__all__ = ["Result", "from_onnx", "verify_equivalence"]
