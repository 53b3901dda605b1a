"""Equivalence verification of float and quantized networks (Matos Júnior, "An automated method for neural
network quantization refinement" (PhD thesis, UFAM, 2025)).

``from_onnx`` reads networks; ``network`` is the exact chain representation; ``region`` the exact
regions (boxes of rationals, or of input grid points); ``bounds`` sound
linear bounds; ``branch`` input-splitting branch and bound; ``encode`` the z3 encodings and the
disjuncts of a violation; ``milp`` the MILP encoding with certified LP bounds and ``lp_branch``
its branch and bound; ``queries`` decides disjuncts; ``engine.verify_equivalence`` the sound
engine; ``config.VerifyConfig`` its settings and ``verdicts`` its typed outcomes;
``ceg4n.search_bits`` the counterexample-guided bit-width search.
"""

from .ceg4n import BitSearchConfig, BitSearchResult, quantize_bits, search_bits
from .config import Norm, Relation, VerifyConfig
from .engine import Result, verify_equivalence
from .onnx_import import from_onnx
from .verdicts import Decision, SearchStatus, Verdict

__all__ = [
    "BitSearchConfig",
    "BitSearchResult",
    "Decision",
    "Norm",
    "Relation",
    "Result",
    "SearchStatus",
    "Verdict",
    "VerifyConfig",
    "from_onnx",
    "quantize_bits",
    "search_bits",
    "verify_equivalence",
]
