"""Equivalence verification of float and quantized networks (paper 003).

``from_onnx`` reads networks; ``network`` is the exact chain representation; ``region`` the exact
regions (boxes of rationals, or of input grid points); ``bounds`` sound
linear bounds; ``branch`` input-splitting branch and bound; ``encode`` the z3 encodings and the
disjuncts of a violation; ``milp`` the MILP encoding with certified LP bounds and ``lp_branch``
its branch and bound; ``queries`` decides disjuncts; ``engine.verify_equivalence`` the sound
engine; ``ceg4n.search_bits`` the counterexample-guided bit-width search.
"""

from ..extras import require

require("z3", "torchqv.verify")
require("scipy.sparse", "torchqv.verify")
require("scipy.optimize", "torchqv.verify")

from .ceg4n import BitSearchConfig, BitSearchResult, quantize_bits, search_bits  # noqa: E402
from .engine import Result, verify_equivalence  # noqa: E402


def __getattr__(name: str):  # from_onnx also needs onnx (the [onnx] extra): only when asked for
    if name == "from_onnx":
        from .onnx_import import from_onnx

        return from_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BitSearchConfig",
    "BitSearchResult",
    "Result",
    "from_onnx",
    "quantize_bits",
    "search_bits",
    "verify_equivalence",
]
