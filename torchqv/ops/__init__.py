"""The operations of the quantized graph, one class per operation (see :mod:`torchqv.ops.base`).

Importing this package registers every operation.
"""

from . import activation, affine, join, movement, norm, pool, structure
from .base import Operation, Unsupported, registered

__all__ = [
    "Operation",
    "Unsupported",
    "activation",
    "affine",
    "join",
    "movement",
    "norm",
    "pool",
    "registered",
    "structure",
]
