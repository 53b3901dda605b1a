"""Theory made executable (papers 000, 001, 002).

``universality.representability``: can sigma-quantized networks under Q_{p,s} represent every
function (paper 001, sections 3.1-3.3)?  ``construction``: the indicator-function network that does.
``degradation``: the expressive-degradation experiment (paper 000, section 4).  ``qnnt``: exact
training of tiny quantized networks (paper 002's d-QNNT) and its hardness reductions.
"""

from .construction import all_inputs, build_representing_network, lemma20_bound, parameter_count
from .degradation import DegradationConfig, LineFit, fit_line, quantize_weights, run_regression
from .degradation_mnist import MnistDegradationConfig, run_mnist
from .universality import (
    NOT_UNIVERSAL,
    UNDETERMINED,
    UNIVERSAL,
    Condition1,
    Representability,
    RoundedLattice,
    q_format,
    representability,
    representability_table,
)

__all__ = [
    "NOT_UNIVERSAL",
    "UNDETERMINED",
    "UNIVERSAL",
    "Condition1",
    "DegradationConfig",
    "LineFit",
    "MnistDegradationConfig",
    "Representability",
    "RoundedLattice",
    "all_inputs",
    "build_representing_network",
    "fit_line",
    "lemma20_bound",
    "parameter_count",
    "q_format",
    "quantize_weights",
    "representability",
    "representability_table",
    "run_mnist",
    "run_regression",
]
