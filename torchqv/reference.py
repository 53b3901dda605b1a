"""The integer reference: runs a quantized model with exact integer and rational arithmetic.

The oracle of the tests.  It interprets the same quantized graph as the exact simulation, but
every operation's ``reference`` method computes with the arithmetic of :mod:`torchqv.rational`
(numpy integers where the bounds make int64 safe, Python integers and ``Fraction`` otherwise):
weights are re-quantized from the float parameters with exact rationals, affine maps are integer
dot products of codes, requantization multiplies by the exact rational ``s_w s_x / s_out`` and
rounds with an independent implementation of the format's rule, activations are rounded from
their exact (or arbitrary-precision) values.  No floating-point number enters the data path;
inputs that are real numbers are taken at their exact binary values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .graph import QuantizedModel, _map_values
from .ops.structure import check_input
from .rational import RTensor, from_tensor


def _graph(model: nn.Module) -> QuantizedModel:
    if isinstance(model, QuantizedModel):
        return model
    raise ConfigError(
        f"reference_forward expects a model returned by torchqv.quantize, got {type(model).__name__}"
    )


def reference_forward(model: nn.Module, x: torch.Tensor, exact: bool = False) -> Any:
    """Run a quantized model with exact arithmetic.

    Returns float64 values (each the double nearest to the exact result, as the eval-mode
    simulation returns them), or the exact ``Fraction`` arrays with ``exact=True``.
    """
    qm = _graph(model)
    value = from_tensor(check_input(x, "reference_forward"))
    out = qm.run((value,), lambda op, a, k, io: op.reference(a, k, io))
    if exact:
        return _map_values(out, lambda v: v.exact() if isinstance(v, RTensor) else v)
    return _map_values(out, lambda v: v.to_tensor() if isinstance(v, RTensor) else v)


__all__ = ["RTensor", "reference_forward"]
