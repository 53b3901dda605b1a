"""``round_weights``: post-training rounding of a quantized model, layer by layer.

Data sampling (in the manner of AIMET's AdaRound split): the calibration batches are run once
through the float network to record every layer's float inputs (the target), then, for each
layer in execution order, through the quantized model whose earlier layers are already rounded
(the inputs ``X`` of the QUBO, so later layers compensate earlier rounding errors).  The loss is
:mod:`torchqv.rounding.qubo`, the optimisers are :mod:`torchqv.rounding.solvers`.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from ..atomic import atomic
from ..errors import RoundingError
from ..extras import require
from ..formats import fraction_to_float
from ..graph import QNode, QuantizedModel, float_mode
from ..grid import QTensor
from ..ops.affine import QuantAffine
from ..progress import progress_bar
from ..quantize import batch_inputs
from . import solvers
from .config import RoundingConfig, Solver, Target
from .qubo import GramStats, LayerQUBO, build_layer_qubo, group_stats

MAX_FAN_IN = 8192  # (d + 1)^2 float64 Gram entries, three matrices: 1.6 GB at this size
log = logging.getLogger(__name__)


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
    time_limited: int = 0  # neurons left at nearest rounding because the time limit was spent


@dataclass
class RoundingReport:
    layers: list[LayerReport] = field(default_factory=list)
    time_limit: float | None = None

    @property
    def time_limited(self) -> int:
        """Neurons left at nearest rounding because ``time_limit`` was spent."""
        return sum(r.time_limited for r in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(r) for r in self.layers], "time_limit": self.time_limit}

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
        if self.time_limited:
            rows.append(
                f"\n{self.time_limited} neuron(s) kept nearest rounding: the time limit of "
                f"{self.time_limit:g} s was spent"
            )
        return "\n".join(rows)


class _Stop(Exception):
    pass


def _layers(qm: QuantizedModel) -> list[tuple[QNode, QuantAffine]]:
    """Quantized affine operations with trainable weights, in execution order."""
    return [
        (node, op)
        for node, op in qm.operations()
        if isinstance(op, QuantAffine) and op.weight_quant is not None and not op.frozen
    ]


def _inputs(qm: QuantizedModel, node: QNode, x: torch.Tensor) -> torch.Tensor:
    """The input ``node`` receives when ``qm`` runs on ``x`` in its current mode (the exact
    simulation in eval mode, the float network inside ``float_mode``), as float64 values."""
    got: list[Any] = []
    forward = "qat" if qm._float or qm.training else "exact"

    def executor(op: Any, args: tuple, kwargs: dict, io: Any) -> Any:
        if io.name == node.name:
            got.append(args[0])
            raise _Stop
        return getattr(op, forward)(args, kwargs, io)

    try:
        qm.run((x,), executor)
    except _Stop:
        pass
    if not got:
        raise RoundingError(f"{node.name}: the calibration batches did not reach this layer")
    xin = got[0]
    xin = xin.values() if isinstance(xin, QTensor) else xin
    return xin.detach().to(torch.float64)


def _nearest(problem: LayerQUBO, codes: torch.Tensor, bias: torch.Tensor | None, where: str) -> torch.Tensor:
    """The 0/1 matrix of the format's own rounding (the current codes of these rows)."""
    if problem.has_bias_var:
        codes = torch.cat([codes, bias.unsqueeze(1)], 1)  # type: ignore[union-attr]
    else:
        codes = torch.cat([codes, problem.lower[-1].unsqueeze(1)], 1)
    codes = codes.T
    delta = problem.delta
    z = torch.where(delta != 0, (codes - problem.lower) / torch.where(delta != 0, delta, 1), 0)
    if not bool(((z == 0) | (z == 1)).all()):
        raise RoundingError(f"{where}: nearest rounding is not one of the two QUBO levels")
    return z


def _apply(
    m: QuantAffine, kw: torch.Tensor, kb: torch.Tensor | None, bias_step: list[Fraction] | None
) -> None:
    """Write the chosen codes back as exact grid values and check that they re-quantize to them."""
    steps = m.weight_step_tensor().reshape(kw.shape)  # each weight's own step (per channel or group)
    with torch.no_grad():
        m.weight.copy_((kw * steps).reshape(m.weight.shape).to(m.weight.dtype))
        if kb is not None:
            assert m.bias is not None and bias_step is not None  # kb: the codes of the layer's bias
            sb = torch.tensor([fraction_to_float(f) for f in bias_step], dtype=torch.float64)
            m.bias.copy_((kb * sb).to(m.bias.dtype))
    if not torch.equal(m.weight_codes().reshape(kw.shape), kw):
        raise RoundingError(f"{m.qname}: rounded weights do not re-quantize to the chosen codes")
    if kb is not None and not torch.equal(m.bias_codes(bias_step), kb):  # type: ignore[arg-type]
        raise RoundingError(f"{m.qname}: rounded bias does not re-quantize to the chosen codes")


def round_weights(
    qmodel: nn.Module,
    calibration_data: Iterable[Any],
    config: RoundingConfig | Mapping[str, Any] | None = None,
    *,
    progress: bool | None = None,
    **options: Any,
) -> RoundingReport:
    """Choose the rounding of every weight and bias of a calibrated quantized model, in place
    (grouped and depthwise convolutions: one problem per group).

    ``config``: a :class:`~torchqv.rounding.RoundingConfig` (method, solver, target, sweeps,
    replicas, num_sweeps, num_reads, seed, bound, time_limit: see its docstring); keyword
    ``options`` with those names override its fields (``round_weights(qm, data, solver="neal")``).
    ``method="qubo"`` minimises each layer's output error (before the activation) over the
    round-down/round-up choices with ``solver``: ``"auto"`` (our annealer over all neurons,
    ``sweeps`` sweeps with ``replicas`` copies),
    ``"neal"`` (dwave-neal, ``num_sweeps``/``num_reads`` per neuron), ``"exact"`` (exhaustive, at
    most 24 free variables per neuron) or ``"nearest"``; ``method="nearest"`` is the baseline.
    ``target="float"`` compares with the float layer on the float inputs, ``"quantized"`` with
    the float layer on the quantized inputs.  Whatever the solver, each neuron keeps the better
    of its result and nearest rounding.  A layer with more than ``MAX_FAN_IN`` inputs per neuron
    keeps nearest rounding (its report line says so).  Returns a per-layer report.

    ``time_limit`` (seconds, whole call): once spent, the solvers stop where they are (annealing
    and descent keep their best state so far) and every neuron not reached yet keeps nearest
    rounding; ``report.time_limited`` counts those.  It is checked between solver steps (a sweep,
    a flip, a neuron, a layer), so the call overruns it by at most one such step, one pass of the
    calibration batches and one layer's Gram matrices.  The call is atomic: if it raises (an
    error, or Ctrl-C), every weight and bias gets its value back and the exception says so.
    """
    cfg = RoundingConfig.coerce(config, "round_weights", **options)
    if cfg.effective_solver is Solver.NEAL:  # before the calibration pass, not after it
        require("neal", 'round_weights(solver="neal")')
    batches = [x for x in batch_inputs(calibration_data)]
    if not batches:
        raise RoundingError("round_weights needs calibration data")
    if not isinstance(qmodel, QuantizedModel):
        raise RoundingError(
            f"round_weights expects a model returned by torchqv.quantize, got {type(qmodel).__name__}"
        )
    layers = _layers(qmodel)
    if not layers:
        raise RoundingError("round_weights found no quantized layer (QConfig.weight) to round")
    deadline = time.perf_counter() + cfg.time_limit if cfg.time_limit is not None else None
    solver = cfg.effective_solver
    settings = _Solve(cfg, solver, cfg.bound and solver is not Solver.NEAREST, deadline)
    params = [p for _, m in layers for p in (m.weight, m.bias) if p is not None]
    with atomic("round_weights", [qmodel], params):
        report = _round_layers(qmodel, layers, batches, Target(cfg.target), settings, progress)  # a Target
    report.time_limit = cfg.time_limit
    return report


def _round_layers(
    qmodel: QuantizedModel,
    layers: list[tuple[QNode, QuantAffine]],
    batches: list[torch.Tensor],
    target: Target,
    settings: _Solve,
    progress: bool | None,
) -> RoundingReport:
    float_inputs: dict[str, list[torch.Tensor]] = {}
    with float_mode(qmodel), torch.no_grad():
        for node, _ in layers:
            float_inputs[node.name] = [_inputs(qmodel, node, x) for x in batches]
    report = RoundingReport()
    qmodel.eval()
    for node, m in progress_bar(layers, "round weights", progress=progress):
        t0 = time.perf_counter()
        fan_in = m.weight[0].numel()
        nan = math.nan
        if settings.spent():
            report.layers.append(
                LayerReport(
                    node.name,
                    m.out_channels_,
                    0,
                    nan,
                    nan,
                    None,
                    "nearest: time limit",
                    0.0,
                    0,
                    m.out_channels_,
                )
            )
            continue
        if fan_in + 1 > MAX_FAN_IN:  # its three Gram matrices would not fit in memory
            log.warning(
                "%s: fan-in %d > %d, QUBO rounding skipped (nearest kept)", node.name, fan_in, MAX_FAN_IN
            )
            report.layers.append(
                LayerReport(
                    node.name, m.out_channels_, 0, nan, nan, None, "skipped: fan-in too large", 0.0, 0
                )
            )
            continue
        with torch.no_grad():
            xq = [_inputs(qmodel, node, x) for x in batches]
        xt = xq if target is Target.QUANTIZED else float_inputs[node.name]
        inq = qmodel.io(node).in_quants[0]
        bias_step = [s * inq.steps()[0] for s in m.row_steps()] if m.bias is not None and inq else None
        kw = m.weight_codes().reshape(m.weight.shape[0], -1)
        kb = m.bias_codes(bias_step) if bias_step is not None else None
        stats = group_stats([m.patches(x) for x in xq], [m.patches(x) for x in xt], m.groups_)
        totals = [_round_group(m, g, st, bias_step, kw, kb, settings) for g, st in enumerate(stats)]
        _apply(m, kw, kb, bias_step)
        report.layers.append(
            LayerReport(
                node.name,
                m.out_channels_,
                sum(t[0] for t in totals),
                sum(t[1] for t in totals),
                sum(t[2] for t in totals),
                sum(t[3] for t in totals) if settings.bound else None,  # type: ignore[misc]
                settings.solver,
                time.perf_counter() - t0,
                sum(t[4] for t in totals),
                sum(t[5] for t in totals),
            )
        )
    return report


@dataclass
class _Solve:
    """The job's settings as the solvers use them (``solver``: the one that runs)."""

    cfg: RoundingConfig
    solver: Solver
    bound: bool
    deadline: float | None = None

    def spent(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline


def _round_group(
    m: QuantAffine,
    group: int,
    stats: GramStats,
    bias_step: list[Fraction] | None,
    kw: torch.Tensor,
    kb: torch.Tensor | None,
    cfg: _Solve,
) -> tuple[int, float, float, float | None, int, int]:
    """Round the output channels of one group: their rows of the codes ``kw`` (and ``kb``) are
    overwritten with the choice; returns (variables, nearest energy, energy, lower bound,
    improved neurons, neurons left at nearest by the time limit)."""
    per = m.out_channels_ // m.groups_
    rows = slice(group * per, (group + 1) * per)
    problem = build_layer_qubo(m, stats, bias_step, rows)
    z_near = _nearest(problem, kw[rows], kb[rows] if kb is not None else None, m.qname)
    e_near = problem.energy(z_near)
    z, left = _solve(problem, z_near, cfg)
    z = torch.where(problem.active(), z, z_near)  # inactive variables: no effect, stay nearest
    e = problem.energy(z)
    better = e < e_near
    z = torch.where(better.unsqueeze(0), z, z_near)
    e = torch.where(better, e, e_near)
    codes = problem.codes(z)
    kw[rows] = codes[:-1].T
    if kb is not None and problem.has_bias_var:
        kb[rows] = codes[-1]
    lb = float(solvers.lower_bound(problem, deadline=cfg.deadline).clamp_min(0).sum()) if cfg.bound else None
    variables = int((problem.sigma != 0).sum())
    return variables, float(e_near.sum()), float(e.sum()), lb, int(better.sum()), left


def _solve(problem: LayerQUBO, z_near: torch.Tensor, cfg: _Solve) -> tuple[torch.Tensor, int]:
    """The solver's choice, and how many neurons it did not reach before the deadline (they keep
    nearest rounding)."""
    job = cfg.cfg
    if cfg.solver is Solver.NEAREST:
        return z_near, 0
    if cfg.solver is Solver.EXACT or (cfg.solver is Solver.AUTO and solvers.enumerable(problem)):
        return solvers.by_neuron(problem, solvers.exact_neuron, z_near, cfg.deadline)
    if cfg.solver is Solver.NEAL:
        one = functools.partial(
            solvers.neal_neuron, num_sweeps=job.num_sweeps, num_reads=job.num_reads, seed=job.seed
        )
        return solvers.by_neuron(problem, one, z_near, cfg.deadline)
    try:
        return solvers.solve_auto(problem, job.sweeps, job.replicas, job.seed, deadline=cfg.deadline), 0
    except solvers.TimeUp:
        return z_near, problem.neurons
