"""Equivalence verification of float and quantized networks (paper 003).

So far: ``from_onnx``, the ONNX reader the verifier works from.
"""

from .onnx_import import from_onnx

__all__ = ["from_onnx"]
