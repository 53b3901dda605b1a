"""Theory made executable (Park et al.; Anonymous, ICLR submission; Ganian et al.: see below).

``universality.representability``: can sigma-quantized networks under Q_{p,s} represent every function
(Park, Park & Hwang, "On expressive power of quantized neural networks under fixed-point arithmetic",
sections 3.1-3.3)?  ``construction``: the indicator-function network that does. ``degradation``: the
expressive-degradation experiment (Anonymous, "On the expressive power of weight quantization in deep neural
networks" (ICLR submission), section 4).  ``qnnt`` and ``qnnt_z3``: exact training of quantized networks
(the d-QNNT of Ganian, Sommer & Sorge, "Tractability via low dimensionality: the parameterized complexity of
training quantized neural networks"; z3 and brute force); ``reductions``: its hardness reductions (Theorems
1, 3, 4).
"""

from . import reductions
from .construction import all_inputs, build_representing_network, lemma20_bound, parameter_count
from .degradation import DegradationConfig, LineFit, fit_line, quantize_weights, run_regression
from .degradation_mnist import MnistDegradationConfig, run_mnist
from .qnnt import (
    Architecture,
    Network,
    QNNTInstance,
    Status,
    TrainResult,
    brute_force,
    conflict_bound,
    relu_d,
    z_domain,
)
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


def __getattr__(name: str):  # the exact trainer needs z3 (the [verify] extra): only when asked for
    if name == "train_exact":
        from .qnnt_z3 import train_exact

        return train_exact
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "NOT_UNIVERSAL",
    "UNDETERMINED",
    "UNIVERSAL",
    "Architecture",
    "Condition1",
    "DegradationConfig",
    "LineFit",
    "MnistDegradationConfig",
    "Network",
    "QNNTInstance",
    "Representability",
    "RoundedLattice",
    "Status",
    "TrainResult",
    "all_inputs",
    "brute_force",
    "build_representing_network",
    "conflict_bound",
    "fit_line",
    "lemma20_bound",
    "parameter_count",
    "q_format",
    "quantize_weights",
    "reductions",
    "relu_d",
    "representability",
    "representability_table",
    "run_mnist",
    "run_regression",
    "train_exact",
    "z_domain",
]
