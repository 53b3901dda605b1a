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

from .config import Norm, Relation, VerifyConfig
from .verdicts import Decision, SearchStatus, Verdict

# The engine needs z3 and scipy (the [verify] extra) and from_onnx needs onnx (the [onnx] extra):
# they are imported on first use, so that the configs and verdicts above need neither.
_LAZY = {
    "BitSearchConfig": "ceg4n",
    "BitSearchResult": "ceg4n",
    "quantize_bits": "ceg4n",
    "search_bits": "ceg4n",
    "Result": "engine",
    "verify_equivalence": "engine",
    "from_onnx": "onnx_import",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
