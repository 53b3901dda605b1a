"""``round_weights``: post-training rounding of a quantized model, layer by layer.

Data sampling (in the manner of AIMET's AdaRound split): the calibration batches are run once
through the float network to record every layer's float inputs (the target), then, for each
layer in execution order, through the quantized model whose earlier layers are already rounded
(the inputs ``X`` of the QUBO, so later layers compensate earlier rounding errors).  The loss is
:mod:`torchqv.rounding.qubo`, the optimisers are :mod:`torchqv.rounding.solvers`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..formats import QuantizationError, fraction_to_float
from ..modules import _QuantAffine
from ..quantize import batch_inputs, float_mode, trace
from . import solvers
from .qubo import GramStats, LayerQUBO, build_layer_qubo, patches

SOLVERS = ("auto", "neal", "exact", "nearest")
TARGETS = ("float", "quantized")


@dataclass
class LayerReport:
    """Objectives are squared Frobenius errors of the layer's output before the activation."""

    layer: str
    neurons: int
    variables: int
    nearest: float
    objective: float
    bound: float | None
    solver: str
    seconds: float
    improved_neurons: int


@dataclass
class RoundingReport:
    layers: list[LayerReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(r) for r in self.layers]}

    def table(self) -> str:
        """A Markdown table of the report."""
        rows = [
            "| layer | neurons | variables | nearest | QUBO | ratio | lower bound | solver | time (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.layers:
            ratio = r.objective / r.nearest if r.nearest else 1.0
            bound = f"{r.bound:.6g}" if r.bound is not None else "-"
            rows.append(
                f"| {r.layer} | {r.neurons} | {r.variables} | {r.nearest:.6g} | {r.objective:.6g} "
                f"| {ratio:.3f} | {bound} | {r.solver} | {r.seconds:.2f} |"
            )
        return "\n".join(rows)


class _Stop(Exception):
    pass


def _layers(model: nn.Module) -> list[tuple[str, _QuantAffine]]:
    """Quantized affine layers with trainable weights, in execution order."""
    names = {id(m): n for n, m in model.named_modules()}
    try:
        order = [model.get_submodule(n.target) for n in trace(model).graph.nodes if n.op == "call_module"]
    except Exception:
        order = list(model.modules())
    seen, out = set(), []
    for m in order:
        if isinstance(m, _QuantAffine) and m.weight_quant is not None and not m.frozen and id(m) not in seen:
            seen.add(id(m))
            out.append((names.get(id(m), m.qname), m))
    return out


def _inputs(model: nn.Module, layer: _QuantAffine, x: torch.Tensor) -> torch.Tensor:
    """The input ``layer`` receives when ``model`` runs on ``x`` (after its own input quantizer)."""
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple) -> None:
        got.append(args[0])
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not got:
        raise QuantizationError(f"{layer.qname}: the calibration batches did not reach this layer")
    xin = got[0]
    if layer.in_quant is not None and not layer._calibrating:
        xin = layer.in_quant(xin)
    return xin.detach().to(torch.float64)


def _nearest(problem: LayerQUBO, m: _QuantAffine, bias_step: list[Fraction] | None) -> torch.Tensor:
    """The 0/1 matrix of the format's own rounding (the module's current codes)."""
    codes = m.weight_codes().reshape(m.weight.shape[0], -1)
    if problem.has_bias_var:
        codes = torch.cat([codes, m.bias_codes(bias_step).unsqueeze(1)], 1)
    else:
        codes = torch.cat([codes, problem.lower[-1].unsqueeze(1)], 1)
    codes = codes.T
    delta = problem.delta
    z = torch.where(delta != 0, (codes - problem.lower) / torch.where(delta != 0, delta, 1), 0)
    if not bool(((z == 0) | (z == 1)).all()):
        raise QuantizationError(f"{m.qname}: nearest rounding is not one of the two QUBO levels")
    return z


def _apply(problem: LayerQUBO, m: _QuantAffine, z: torch.Tensor, bias_step: list[Fraction] | None) -> None:
    """Write the rounded parameters back as exact grid values and check the codes."""
    codes = problem.codes(z)
    steps = torch.tensor([fraction_to_float(f) for f in m.weight_steps()], dtype=torch.float64)
    kw = codes[:-1].T
    with torch.no_grad():
        m.weight.copy_((kw * steps.unsqueeze(1)).reshape(m.weight.shape).to(m.weight.dtype))
        if problem.has_bias_var:
            sb = torch.tensor([fraction_to_float(f) for f in bias_step], dtype=torch.float64)
            m.bias.copy_((codes[-1] * sb).to(m.bias.dtype))
    if not torch.equal(m.weight_codes().reshape(kw.shape), kw):
        raise QuantizationError(f"{m.qname}: rounded weights do not re-quantize to the chosen codes")
    if problem.has_bias_var and not torch.equal(m.bias_codes(bias_step), codes[-1]):
        raise QuantizationError(f"{m.qname}: rounded bias does not re-quantize to the chosen codes")


def round_weights(
    qmodel: nn.Module,
    calibration_data: Iterable[Any],
    method: str = "qubo",
    solver: str = "auto",
    target: str = "float",
    num_sweeps: int = 1000,
    num_reads: int = 1,
    sweeps: int = 50,
    replicas: int = 4,
    seed: int = 0,
    bound: bool = True,
    progress: bool = True,
) -> RoundingReport:
    """Choose the rounding of every weight and bias of a calibrated quantized model, in place.

    ``method="qubo"`` minimises each layer's output error (before the activation) over the
    round-down/round-up choices with ``solver``: ``"auto"`` (our annealer over all neurons,
    ``sweeps`` sweeps with ``replicas`` copies),
    ``"neal"`` (dwave-neal, ``num_sweeps``/``num_reads`` per neuron), ``"exact"`` (exhaustive, at
    most 24 free variables per neuron) or ``"nearest"``; ``method="nearest"`` is the baseline.
    ``target="float"`` compares with the float layer on the float inputs, ``"quantized"`` with
    the float layer on the quantized inputs.  Whatever the solver, each neuron keeps the better
    of its result and nearest rounding.  Returns a per-layer report.
    """
    if method not in ("qubo", "nearest"):
        raise QuantizationError(f"method must be 'qubo' or 'nearest', got {method!r}")
    if solver not in SOLVERS:
        raise QuantizationError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if target not in TARGETS:
        raise QuantizationError(f"target must be one of {TARGETS}, got {target!r}")
    if method == "nearest":
        solver = "nearest"
    batches = [x for x in batch_inputs(calibration_data)]
    if not batches:
        raise QuantizationError("round_weights needs calibration data")
    layers = _layers(qmodel)
    if not layers:
        raise QuantizationError("round_weights found no quantized layer (QConfig.weight) to round")
    was_training = qmodel.training
    float_inputs: dict[int, list[torch.Tensor]] = {}
    with float_mode(qmodel), torch.no_grad():
        for _, m in layers:
            float_inputs[id(m)] = [_inputs(qmodel, m, x) for x in batches]
    report = RoundingReport()
    qmodel.eval()
    try:
        for name, m in tqdm(layers, desc="round weights", disable=not progress):
            t0 = time.perf_counter()
            d = m.weight[0].numel()
            stats = GramStats.empty(d)
            with torch.no_grad():
                for x, xf in zip(batches, float_inputs[id(m)], strict=True):
                    xq = _inputs(qmodel, m, x)
                    stats.add(patches(m, xq), patches(m, xq if target == "quantized" else xf))
            inq = m.input_quantizer
            bias_step = [s * inq.steps()[0] for s in m.weight_steps()] if m.bias is not None and inq else None
            problem = build_layer_qubo(m, stats, bias_step)
            z_near = _nearest(problem, m, bias_step)
            e_near = problem.energy(z_near)
            if solver == "nearest":
                z = z_near
            elif solver == "exact":
                z = solvers.exact(problem)
            elif solver == "neal":
                z = solvers.neal(problem, num_sweeps, num_reads, seed)
            else:
                z = solvers.solve_auto(problem, sweeps, replicas, seed)
            z = torch.where(problem.active(), z, z_near)  # inactive variables: no effect, stay nearest
            e = problem.energy(z)
            better = e < e_near
            z = torch.where(better.unsqueeze(0), z, z_near)
            e = torch.where(better, e, e_near)
            _apply(problem, m, z, bias_step)
            lb = (
                float(solvers.lower_bound(problem).clamp_min(0).sum())
                if bound and solver != "nearest"
                else None
            )
            report.layers.append(
                LayerReport(
                    name,
                    problem.neurons,
                    int((problem.sigma != 0).sum()),
                    float(e_near.sum()),
                    float(e.sum()),
                    lb,
                    solver,
                    time.perf_counter() - t0,
                    int(better.sum()),
                )
            )
    finally:
        qmodel.train(was_training)
    return report
