"""Folding batch norm into the affine layer before it.

Paper 001's networks (Eq. 7) have no batch norm, and ``torchqv.quantize`` refuses it.  A
BatchNorm that directly follows a Conv2d (BatchNorm2d) or a Linear (BatchNorm1d) whose output
feeds nothing else is folded into that layer with its running statistics, ``W' = W g / sqrt(v +
eps)``, ``b' = (b - m) g / sqrt(v + eps) + beta`` (Jacob et al. 2018, sec. 3.2): the network
then computes in eval mode what it computed before, and its statistics are frozen from then on.
"""

from __future__ import annotations

import copy

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..formats import QuantizationError

PAIRS = ((nn.Conv2d, nn.BatchNorm2d, fuse_conv_bn_eval), (nn.Linear, nn.BatchNorm1d, fuse_linear_bn_eval))


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with every foldable BatchNorm folded, and the names of those folded.

    Without BatchNorm the model itself is returned.  The result is a ``torch.fx.GraphModule`` in
    which every other module keeps its name.  A BatchNorm that cannot be folded stays (and
    ``quantize`` names it).
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model, []
    try:
        gm = fx.symbolic_trace(copy.deepcopy(model))
    except Exception as exc:
        raise QuantizationError(
            f"folding batch norm needs a torch.fx-traceable model, but tracing {type(model).__name__} "
            f"failed ({exc}); fold it yourself (torch.nn.utils.fusion.fuse_conv_bn_eval)"
        ) from exc
    folded = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not node.args:
            continue
        bn, prev = gm.get_submodule(node.target), node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer = gm.get_submodule(prev.target)
        fuse = next((f for lt, bt, f in PAIRS if isinstance(layer, lt) and type(bn) is bt), None)
        if fuse is None:
            continue
        if bn.running_mean is None or bn.running_var is None:
            raise QuantizationError(
                f"{node.target}: batch norm without running statistics (track_running_stats=False) "
                "cannot be folded"
            )
        fused = fuse(copy.deepcopy(layer).eval(), copy.deepcopy(bn).eval()).train(layer.training)
        parent, _, name = prev.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)
        folded.append(node.target)
    gm.graph.lint()
    gm.recompile()
    return gm, folded
