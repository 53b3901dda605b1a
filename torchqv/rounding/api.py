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
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic
from ..extras import require
from ..formats import QuantizationError, fraction_to_float
from ..graph import QNode, QuantizedModel, float_mode
from ..grid import QTensor
from ..ops.affine import QuantAffine
from ..quantize import batch_inputs
from . import solvers
from .qubo import GramStats, LayerQUBO, build_layer_qubo, group_stats

SOLVERS = ("auto", "neal", "exact", "nearest")
MAX_FAN_IN = 8192  # (d + 1)^2 float64 Gram entries, three matrices: 1.6 GB at this size
log = logging.getLogger(__name__)
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
        raise QuantizationError(f"{node.name}: the calibration batches did not reach this layer")
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
        raise QuantizationError(f"{where}: nearest rounding is not one of the two QUBO levels")
    return z


def _apply(
    m: QuantAffine, kw: torch.Tensor, kb: torch.Tensor | None, bias_step: list[Fraction] | None
) -> None:
    """Write the chosen codes back as exact grid values and check that they re-quantize to them."""
    steps = torch.tensor([fraction_to_float(f) for f in m.weight_steps()], dtype=torch.float64)
    with torch.no_grad():
        m.weight.copy_((kw * steps.unsqueeze(1)).reshape(m.weight.shape).to(m.weight.dtype))
        if kb is not None:
            sb = torch.tensor([fraction_to_float(f) for f in bias_step], dtype=torch.float64)  # type: ignore[union-attr]
            m.bias.copy_((kb * sb).to(m.bias.dtype))
    if not torch.equal(m.weight_codes().reshape(kw.shape), kw):
        raise QuantizationError(f"{m.qname}: rounded weights do not re-quantize to the chosen codes")
    if kb is not None and not torch.equal(m.bias_codes(bias_step), kb):  # type: ignore[arg-type]
        raise QuantizationError(f"{m.qname}: rounded bias does not re-quantize to the chosen codes")


# the least value of each integer option of round_weights
INT_OPTIONS = {"num_sweeps": 1, "num_reads": 1, "sweeps": 0, "replicas": 1}
OPTIONS = (*INT_OPTIONS, "seed", "bound", "time_limit")


def check_options(**options: Any) -> None:
    """Raise for a value of one of ``round_weights``' ``OPTIONS`` that it cannot use."""
    for name, value in options.items():
        if name not in OPTIONS:
            raise QuantizationError(f"unknown rounding option {name!r}; valid: {', '.join(OPTIONS)}")
        if name in INT_OPTIONS or name == "seed":
            least = INT_OPTIONS.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or (least is not None and value < least):
                bound = "" if least is None else f" >= {least}"
                raise QuantizationError(f"{name} must be an int{bound}, got {value!r}")
        elif name == "bound" and not isinstance(value, bool):
            raise QuantizationError(f"bound must be True or False, got {value!r}")
        elif (
            name == "time_limit"
            and value is not None
            and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf)
        ):
            raise QuantizationError(f"time_limit must be a positive number of seconds or None, got {value!r}")


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
    time_limit: float | None = None,
) -> RoundingReport:
    """Choose the rounding of every weight and bias of a calibrated quantized model, in place
    (grouped and depthwise convolutions: one problem per group).

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
    if method not in ("qubo", "nearest"):
        raise QuantizationError(f"method must be 'qubo' or 'nearest', got {method!r}")
    if solver not in SOLVERS:
        raise QuantizationError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "neal":  # before the calibration pass, not after it
        require("neal", 'round_weights(solver="neal")')
    if target not in TARGETS:
        raise QuantizationError(f"target must be one of {TARGETS}, got {target!r}")
    check_options(
        num_sweeps=num_sweeps,
        num_reads=num_reads,
        sweeps=sweeps,
        replicas=replicas,
        seed=seed,
        bound=bound,
        time_limit=time_limit,
    )
    if method == "nearest":
        solver = "nearest"
    batches = [x for x in batch_inputs(calibration_data)]
    if not batches:
        raise QuantizationError("round_weights needs calibration data")
    if not isinstance(qmodel, QuantizedModel):
        raise QuantizationError(
            f"round_weights expects a model returned by torchqv.quantize, got {type(qmodel).__name__}"
        )
    layers = _layers(qmodel)
    if not layers:
        raise QuantizationError("round_weights found no quantized layer (QConfig.weight) to round")
    deadline = time.perf_counter() + time_limit if time_limit is not None else None
    settings = _Solve(
        solver, num_sweeps, num_reads, sweeps, replicas, seed, bound and solver != "nearest", deadline
    )
    params = [p for _, m in layers for p in (m.weight, m.bias) if p is not None]
    with atomic("round_weights", [qmodel], params):
        report = _round_layers(qmodel, layers, batches, target, settings, progress)
    report.time_limit = time_limit
    return report


def _round_layers(
    qmodel: QuantizedModel,
    layers: list[tuple[QNode, QuantAffine]],
    batches: list[torch.Tensor],
    target: str,
    settings: _Solve,
    progress: bool,
) -> RoundingReport:
    float_inputs: dict[str, list[torch.Tensor]] = {}
    with float_mode(qmodel), torch.no_grad():
        for node, _ in layers:
            float_inputs[node.name] = [_inputs(qmodel, node, x) for x in batches]
    report = RoundingReport()
    qmodel.eval()
    for node, m in tqdm(layers, desc="round weights", disable=not progress):
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
        xt = xq if target == "quantized" else float_inputs[node.name]
        inq = qmodel.io(node).in_quants[0]
        bias_step = [s * inq.steps()[0] for s in m.weight_steps()] if m.bias is not None and inq else None
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
    solver: str
    num_sweeps: int
    num_reads: int
    sweeps: int
    replicas: int
    seed: int
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
    if cfg.solver == "nearest":
        return z_near, 0
    if cfg.solver == "exact" or (cfg.solver == "auto" and solvers.enumerable(problem)):
        return solvers.by_neuron(problem, solvers.exact_neuron, z_near, cfg.deadline)
    if cfg.solver == "neal":
        one = functools.partial(
            solvers.neal_neuron, num_sweeps=cfg.num_sweeps, num_reads=cfg.num_reads, seed=cfg.seed
        )
        return solvers.by_neuron(problem, one, z_near, cfg.deadline)
    try:
        return solvers.solve_auto(problem, cfg.sweeps, cfg.replicas, cfg.seed, deadline=cfg.deadline), 0
    except solvers.TimeUp:
        return z_near, problem.neurons
