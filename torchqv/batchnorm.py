"""Folding batch norm into the affine layer before it.

A BatchNorm that directly follows a Conv1d/Conv2d or a Linear whose output feeds nothing else is
folded into that layer with its running statistics (Jacob et al., "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, sec. 3.2):

    W' = W g / sqrt(v + eps),    b' = (b - m) g / sqrt(v + eps) + beta

The network then computes in eval mode what it computed before, and the statistics are frozen
from then on (``torchqv.quantize`` folds automatically; the QAT path trains the folded layer).
A BatchNorm that follows no such layer becomes a per-channel affine operation
(:class:`torchqv.ops.affine.QuantBatchNorm`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .errors import UnsupportedModelError

PAIRS: tuple[tuple[type[nn.Module], type[nn.Module], Callable[..., nn.Module]], ...] = (
    (nn.Conv1d, nn.BatchNorm1d, fuse_conv_bn_eval),
    (nn.Conv2d, nn.BatchNorm2d, fuse_conv_bn_eval),
    (nn.Linear, nn.BatchNorm1d, fuse_linear_bn_eval),
)


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def fold_in_graph(graph: fx.Graph, root: nn.Module) -> list[str]:
    """Fold every foldable BatchNorm of a traced ``graph`` whose modules live in ``root``: the
    layer in ``root`` is replaced by the fused layer, the BatchNorm by ``nn.Identity`` (so
    ``Sequential`` indices keep their meaning) and its node is removed.  Returns the names of
    the folded BatchNorms."""
    calls: dict[fx.node.Target, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = []
    for node in list(graph.nodes):
        if node.op != "call_module" or not node.args or calls.get(node.target, 0) != 1:
            continue
        assert isinstance(node.target, str)  # a call_module's target is the module's path
        bn, prev = root.get_submodule(node.target), node.args[0]
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        if calls.get(prev.target, 0) != 1:
            continue
        assert isinstance(prev.target, str)  # a call_module's target is the module's path
        layer = root.get_submodule(prev.target)
        fuse = next((f for lt, bt, f in PAIRS if type(layer) is lt and type(bn) is bt), None)
        if fuse is None:
            continue
        if bn.running_mean is None or bn.running_var is None:
            raise UnsupportedModelError(
                f"{node.target}: batch norm without running statistics (track_running_stats=False) "
                "cannot be folded; give it running statistics"
            )
        fused = fuse(copy.deepcopy(layer).eval(), copy.deepcopy(bn).eval()).train(layer.training)
        _set(root, prev.target, fused)
        _set(root, node.target, nn.Identity())
        node.replace_all_uses_with(prev)
        graph.erase_node(node)
        folded.append(node.target)
    return folded


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with every foldable BatchNorm folded, and the names of those folded.

    Without BatchNorm the model itself is returned.  The result is a ``torch.fx.GraphModule`` in
    which every other module keeps its name.  (``torchqv.quantize`` does this by itself; this is
    for float models that should compute what their quantized versions compute.)
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model, []
    root = copy.deepcopy(model)
    try:
        graph = fx.Tracer().trace(root)
    except Exception as exc:  # the user's forward() may raise anything under tracing: named, re-raised
        raise UnsupportedModelError(
            f"folding batch norm needs a torch.fx-traceable model, but tracing {type(model).__name__} "
            f"failed ({exc}); fold it yourself (torch.nn.utils.fusion.fuse_conv_bn_eval)"
        ) from exc
    folded = fold_in_graph(graph, root)
    graph.lint()
    return fx.GraphModule(root, graph), folded
