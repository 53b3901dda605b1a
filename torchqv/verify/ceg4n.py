"""CEG4N: counterexample-guided search of per-layer bit widths (Matos Júnior, "An automated method for neural
network quantization refinement" (PhD thesis, UFAM, 2025), ch. 3, Algorithm 1).

Algorithm 1 alternates two problems until the verifier accepts a candidate:

* **bit search** (Eq. 3.2): the cheapest bit vector ``b`` (cost ``J(b)``, ``b_min <= b_l <= b_max``)
  whose quantized network ``f' = Q(f, b)`` agrees with ``f`` on every counterexample found so far
  (a concrete check; the set starts with the critical points, sec. 4.4.6);
* **equivalence verification**: ``verify_equivalence`` over the regions ``R_delta`` around the
  critical points; a real (replayed) counterexample joins the set, and the search goes on.

Search strategy (instead of the thesis' NSGA-II, sec. 3.4.1): an exact **best-first enumeration of
the bit lattice in order of cost** (a heap seeded with ``(b_min, ..., b_min)``; popping ``b`` pushes
``b + e_l`` for every layer).  With a cost that never decreases when a layer gains a bit, the
heap pops vectors in non-decreasing cost.  Each popped vector gets one concrete check (one batched
forward of the exact ``fq.eval()`` against float64 ``f`` on all counterexamples); the first that
passes goes to the verifier.  The counterexample set only grows, so a vector that failed once
fails forever and the enumeration simply resumes where it stopped; the candidate the verifier
refutes fails its own counterexample.  Every vector popped before the answer was refuted by a
real point of the regions, hence the answer is the *cheapest bit vector of the whole range that
the verifier proves equivalent* -- no tuning of generations or populations, no premature
convergence, and a proof of infeasibility (status QF) when the lattice runs out.  Monotonicity of
equivalence in the bits is not assumed.  The concrete check costs about a millisecond: it runs the
quantized graph layer by layer with memoized prefixes (``_Evaluator``), so the verifier dominates.
An undecided region (``UNKNOWN``) ends the search with status VF, or with ``on_unknown="skip"``
drops the candidate (the answer is then the cheapest among the decided vectors).

Quantization ``Q(f, b)``, one bit width per Linear layer (thesis sec. 3.2.3: a layer's
parameters share its width):

* ``mode="weights"`` (what the thesis' tables measure): weights on a signed narrow ``b_l``-bit
  grid with a per-layer min-max step (Eq. 2.12, symmetric); biases on a signed narrow ``b_l``-bit
  grid with their own step (Eq. 2.13: ``Q(bias, b_l)``), a power of two (a fixed number of
  fractional bits per layer, so every grid value is exact in float32 storage, for every width);
  activations and input stay real.
* ``mode="full"``: fixed point everywhere (Park, Park & Hwang, "On expressive power of quantized neural
  networks under fixed-point arithmetic", Eq. 7): weights as above, the output of Linear ``l`` and of the
  activation that follows it on an asymmetric ``b_l``-bit grid (sec. 3.2.3: asymmetric activations), the input
  on an asymmetric ``input_bits``-bit grid (fixed for the whole search, so counterexamples stay grid points of
  every candidate); biases on the accumulator grid in high precision (the int32-bias convention, sec.
  2.3.3.3).  Steps come from calibration data.
"""

from __future__ import annotations

import collections
import copy
import glob
import heapq
import math
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, VerificationInputError
from ..formats import MAX_BITS, FixedPoint
from ..graph import QuantizedModel, quantized_models
from ..grid import QTensor
from ..jobconfig import JobConfig
from ..observers import OBSERVERS, step_for_range
from ..ops.activation import QuantAct
from ..ops.affine import QuantLinear
from ..progress import progress_bar
from ..qconfig import QConfig
from ..quantize import calibrate, quantize
from .config import VerifyConfig
from .engine import Result, holds, verify_equivalence
from .network import float_chain
from .parallel import optional_pool
from .verdicts import SearchStatus, Verdict

MODES = ("weights", "full")
COSTS = ("weight_bits", "sum_bits")
ON_UNKNOWN = ("vf", "skip")


@dataclass
class BitSearchConfig(JobConfig):
    """Options of :func:`search_bits` (a plain dataclass: ``to_dict`` / ``BitSearchConfig.from_dict``).

    ``mode``: ``"weights"`` (weights and biases) or ``"full"`` (weights, activations, input).
    ``cost``: ``"weight_bits"`` (sum over layers of bits * number of weights) or ``"sum_bits"``
    (sum of the bits, the thesis' single objective); a callable given to ``search_bits`` replaces it.
    ``time_limit``: seconds for the whole search (status TO beyond); ``max_iterations``: verifier
    rounds (TO beyond).  ``observer``: step observer (``minmax``, ``mse``, ...) for weights and
    activations; ``power_of_two``: power-of-two weight and activation steps; ``input_bits``: input
    format of the full mode (``None``: the input stays real).  ``on_unknown``: what an undecided
    region does: ``"vf"`` stops with status VF, ``"skip"`` drops the candidate and goes on (the
    answer is then the cheapest *proved* vector among those not skipped;
    ``BitSearchResult.skipped`` lists them).

    ``verify``: the :class:`~torchqv.verify.VerifyConfig` of every verifier query (relation, eps,
    norm, delta, domain; ``timeout`` per region; ``samples``, ``seed``).  ``verify.workers``: the
    regions of a candidate are verified on a local pool of that many processes (started once per
    search; 1: in this process): they go out in the serial search's order, ``workers`` at a time,
    and are read in that order, so the first refutation (or the first undecided region) is the
    serial search's and so is the answer; a refutation ends the round, and regions still running
    then finish in the background, their results unused.
    """

    error: ClassVar[type[Exception]] = ConfigError

    mode: str = "weights"
    cost: str = "weight_bits"
    time_limit: float = 300.0
    max_iterations: int = 100
    observer: str = "minmax"
    power_of_two: bool = False
    input_bits: int | None = 8
    on_unknown: str = "vf"
    verify: VerifyConfig = field(default_factory=VerifyConfig)

    def __post_init__(self) -> None:
        if isinstance(self.verify, Mapping):
            self.verify = VerifyConfig.from_dict(self.verify)
        if not isinstance(self.verify, VerifyConfig):
            raise ConfigError(
                "BitSearchConfig.verify must be a VerifyConfig (or a dict of its fields), "
                f"got {self.verify!r}"
            )
        for name, allowed in (
            ("mode", MODES),
            ("cost", COSTS),
            ("on_unknown", ON_UNKNOWN),
            ("observer", OBSERVERS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"BitSearchConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        t = self.time_limit
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ConfigError(f"BitSearchConfig.time_limit must be > 0 seconds, got {t!r}")
        if not (isinstance(self.max_iterations, int) and self.max_iterations >= 1):
            raise ConfigError(
                f"BitSearchConfig.max_iterations must be an int >= 1, got {self.max_iterations!r}"
            )
        if self.input_bits is not None and not 2 <= self.input_bits <= MAX_BITS:
            raise ConfigError(f"BitSearchConfig.input_bits must be None or in [2, {MAX_BITS}]")


@dataclass
class BitSearchResult:
    """Outcome of :func:`search_bits` (statuses as in the thesis' Tables 2-9).

    ``status``: a :class:`SearchStatus`: ``SQ`` (the final ``bits`` are proved equivalent on
    every region), ``QF`` (no bit vector of the range passes: each was refuted by a real
    counterexample), ``TO`` (time or iteration limit), ``VF`` (the verifier could not decide a
    region).  ``bits``: one width per
    Linear layer (``layers``) of the last candidate given to the verifier (``None`` if none);
    ``fq``: its quantized model.  ``iterations``: verifier rounds; ``counterexamples``: the points
    the verifier found (the critical points not included); ``candidates``: bit vectors checked
    concretely; ``history``: one dict per round.
    """

    status: SearchStatus
    bits: tuple[int, ...] | None
    layers: list[str]
    iterations: int
    counterexamples: list[torch.Tensor]
    cost: float | None
    seconds: float
    fq: nn.Module | None
    reason: str = ""
    candidates: int = 0
    skipped: list[tuple[int, ...]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the model)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "fq"}
        out["bits"] = list(self.bits) if self.bits is not None else None
        out["counterexamples"] = [x.tolist() for x in self.counterexamples]
        out["skipped"] = [list(b) for b in self.skipped]
        return out


# ------------------------------------------------------------------------ the layers of f
@dataclass
class _Layers:
    """The Linear layers of f in execution order (node names), and the activations after each."""

    names: list[str]
    weights: list[int]  # number of weights per layer
    acts: dict[str, int] = field(default_factory=dict)  # activation node -> layer index


def _layers(f: nn.Module) -> _Layers:
    out = _Layers([], [])
    for node, op in quantize(f, QConfig()).operations():
        if isinstance(op, QuantLinear):
            out.names.append(node.name)
            out.weights.append(op.weight.numel())
        elif isinstance(op, QuantAct) and out.names:
            out.acts[node.name] = len(out.names) - 1
    if not out.names:
        raise VerificationInputError("search_bits needs a network with at least one nn.Linear layer")
    return out


def _as_chain(f: nn.Module) -> nn.Module:
    """A bare ``nn.Linear`` as a one-layer ``nn.Sequential`` (its layer is then named ``"0"``)."""
    return nn.Sequential(f) if isinstance(f, nn.Linear) else f


def _round_bias(bias: torch.Tensor, bits: int) -> torch.Tensor:
    """``Q(bias, b)`` of Eq. 2.13: signed narrow ``bits``-bit grid, power-of-two min-max step.

    Exact in float32: the code times the step has at most 24 significant bits, because a float32
    bias whose last bit is finer than the step is below ``2^23`` steps."""
    fmt = FixedPoint(bits=bits, power_of_two=True)
    step = step_for_range(fmt, bias.min().reshape(1), bias.max().reshape(1))[0].double()
    kmin, kmax = fmt.code_range()
    exact = fmt.saturate_tensor(fmt.round_tensor(bias.detach().double() / step), kmin, kmax) * step
    rounded = exact.float()
    if not torch.equal(rounded.double(), exact):
        raise AssertionError("a bias grid value is not a float32 number")  # excluded by the docstring
    return rounded


def quantize_bits(
    f: nn.Module,
    bits: Sequence[int],
    config: BitSearchConfig | None = None,
    calibration: torch.Tensor | Iterable[Any] | None = None,
) -> nn.Module:
    """``Q(f, b)``: ``f`` quantized with one bit width per Linear layer (execution order), in
    ``config.mode`` (see the module docstring); eval mode.  ``calibration``: batches (a tensor or
    an iterable of tensors or ``(x, y)`` pairs) for the activation and input steps of the full mode.
    A bare ``nn.Linear`` comes back inside an ``nn.Sequential``."""
    f = _as_chain(f)
    cfg = config or BitSearchConfig()
    layers = _layers(f)
    bits = tuple(int(b) for b in bits)
    if len(bits) != len(layers.names):
        raise VerificationInputError(
            f"{len(bits)} bit widths for the {len(layers.names)} Linear layers {layers.names}"
        )
    _check_mode(cfg, layers, calibration)
    return _quantize(f, layers, bits, cfg, calibration)


def _check_mode(cfg: BitSearchConfig, layers: _Layers, calibration: Any) -> None:
    if cfg.mode == "full" and calibration is None:
        raise VerificationInputError(
            "mode='full' needs calibration data (typical inputs) for the activation steps"
        )


def _quantize(
    f: nn.Module, layers: _Layers, bits: tuple[int, ...], cfg: BitSearchConfig, calibration: Any
) -> QuantizedModel:
    full = cfg.mode == "full"
    obs: dict[str, Any] = {"weight_observer": cfg.observer, "activation_observer": cfg.observer}
    act = {
        b: FixedPoint(bits=b, zero_point=None, power_of_two=cfg.power_of_two) if full else None for b in bits
    }
    overrides = {
        glob.escape(name): QConfig(
            weight=FixedPoint(bits=b, power_of_two=cfg.power_of_two), activation=act[b], **obs
        )
        for name, b in zip(layers.names, bits, strict=True)
    }
    overrides.update(
        {glob.escape(name): QConfig(activation=act[bits[i]], **obs) for name, i in layers.acts.items()}
    )
    inp = FixedPoint(bits=cfg.input_bits, zero_point=None) if full and cfg.input_bits else None
    model = copy.deepcopy(f)
    if not full:  # weights and biases: round the biases onto their grids first
        for name, b in zip(layers.names, bits, strict=True):
            lin = model.get_submodule(name)
            if isinstance(lin.bias, torch.Tensor):  # a Linear or Conv bias (or None)
                with torch.no_grad():
                    lin.bias.copy_(_round_bias(lin.bias, b))
    fq = quantize(model, QConfig(input=inp, **obs), overrides)
    calibrate(
        fq, [calibration] if isinstance(calibration, torch.Tensor) else (calibration or []), progress=False
    )
    return fq.eval()


class _Evaluator:
    """``Q(f, b)`` on the counterexamples for many ``b``, without quantizing ``f`` for each.

    The quantized graph runs node by node in the exact simulation.  A node of layer ``l`` depends
    only on ``b_l`` (calibration steps come from the float network) and on its inputs, whose
    values carry their grids (in full mode the accumulator grid of Linear ``l`` is its weight step
    times the step of its input, the output format of layer ``l - 1``).  So each node's operation
    comes from any quantized model with layer ``l`` at ``b_l``, and node values are memoized by
    the bits of the layers up to the node.  The result equals ``Q(f, b).eval()`` on the same
    points (checked bit for bit for every candidate that goes to the verifier)."""

    def __init__(self, f: nn.Module, layers: _Layers, cfg: BitSearchConfig, calibration: Any, lo: int):
        self.f, self.layers, self.cfg, self.calibration = f, layers, cfg, calibration
        first = _quantize(f, layers, (lo,) * len(layers.names), cfg, calibration)
        self.graph = first
        self.layer_of: dict[str, int] = {}  # node name -> its layer (-1: before the first)
        layer = -1
        for node in first.nodes:
            if node.name in layers.names:
                layer = layers.names.index(node.name)
            self.layer_of[node.name] = layer
        self.models: dict[tuple[int, int], QuantizedModel] = {}  # (layer, bits) -> a quantized model
        self.memo: dict[tuple, Any] = {}
        self.built = 0
        self._register((lo,) * len(layers.names), first)

    def _register(self, bits: tuple[int, ...], model: QuantizedModel) -> None:
        for layer, b in enumerate(bits):
            self.models.setdefault((layer, b), model)

    def outputs(self, bits: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        if any((layer, b) not in self.models for layer, b in enumerate(bits)):
            self._register(bits, _quantize(self.f, self.layers, bits, self.cfg, self.calibration))
            self.built += 1

        def run(op: Any, args: tuple, kwargs: dict, io: Any) -> Any:
            layer = self.layer_of[io.name]
            key = (io.name, bits[: layer + 1])
            if key not in self.memo:
                model = self.graph if layer < 0 else self.models[(layer, bits[layer])]
                self.memo[key] = model.op(model.node(io.name)).exact(args, kwargs, io)
            return self.memo[key]

        with torch.no_grad():
            out = self.graph.run((x,), run)
        return out.values() if isinstance(out, QTensor) else out

    def forget(self) -> None:
        """The points changed: drop the memoized values."""
        self.memo.clear()


# ------------------------------------------------------------------------------- the search
class _Lattice:
    """Bit vectors of ``[lo, hi]^L`` in non-decreasing cost (best-first over the lattice)."""

    def __init__(self, n: int, lo: int, hi: int, cost: Callable[[tuple[int, ...]], float]):
        self.hi, self.cost = hi, cost
        start = (lo,) * n
        self.heap = [(self._cost(start), start)]
        self.seen = {start}

    def _cost(self, b: tuple[int, ...]) -> float:
        c = self.cost(b)
        if not isinstance(c, (int, float)) or not math.isfinite(c):
            raise VerificationInputError(f"the cost of {b} must be a finite number, got {c!r}")
        return float(c)

    def pop(self) -> tuple[float, tuple[int, ...]] | None:
        if not self.heap:
            return None
        c, b = heapq.heappop(self.heap)
        for i in range(len(b)):
            nxt = (*b[:i], b[i] + 1, *b[i + 1 :])
            if b[i] < self.hi and nxt not in self.seen:
                cn = self._cost(nxt)
                if cn < c:
                    raise VerificationInputError(
                        f"the cost must not decrease when a layer gains a bit: cost{nxt}={cn} < cost{b}={c}"
                    )
                self.seen.add(nxt)
                heapq.heappush(self.heap, (cn, nxt))
        return c, b


def _cost_fn(name: str, weights: list[int]) -> Callable[[tuple[int, ...]], float]:
    if name == "weight_bits":
        return lambda b: float(sum(x * n for x, n in zip(b, weights, strict=True)))
    return lambda b: float(sum(b))


def _check_inputs(f: nn.Module, points: torch.Tensor, spec: VerifyConfig, bits: Any) -> None:
    if not isinstance(f, nn.Module):
        raise VerificationInputError(f"f must be an nn.Module, got {type(f).__name__}")
    if quantized_models(f):
        raise VerificationInputError(
            "search_bits: f is already quantized; pass the float model (tq.float_twin)"
        )
    if not isinstance(points, torch.Tensor) or points.dim() < 2 or len(points) == 0:
        raise VerificationInputError("points must be a non-empty batch tensor shaped (n, *input_shape)")
    if not bool(torch.isfinite(points).all()):
        raise VerificationInputError("points contain NaN or inf")
    if spec.delta is None:
        raise VerificationInputError("search_bits needs delta (the radius of the regions), got None")
    ok = isinstance(bits, (tuple, list)) and len(bits) == 2 and all(isinstance(b, int) for b in bits)
    if not ok or not 2 <= bits[0] <= bits[1] <= MAX_BITS:
        raise VerificationInputError(
            f"bits must be a range (lo, hi) of ints with 2 <= lo <= hi <= {MAX_BITS}, got {bits!r} "
            "(2 is the narrowest signed grid with a non-zero level, thesis sec. 4.4.4)"
        )
    d = math.prod(points.shape[1:])
    first = next((op for _, op in quantize(f, QConfig()).operations() if isinstance(op, QuantLinear)), None)
    if first is not None and first.in_features != d:
        raise VerificationInputError(
            f"points have {d} features per point (shape {tuple(points.shape)}) but f's first layer "
            f"takes {first.in_features}; pass points shaped (n, {first.in_features})"
        )
    float_chain(f, d)  # raises for what the verifier does not support


def search_bits(
    f: nn.Module,
    points: torch.Tensor,
    delta: float | Fraction | str | None = None,
    bits: tuple[int, int] = (2, 32),
    *,
    config: BitSearchConfig | None = None,
    cost: Callable[[tuple[int, ...]], float] | None = None,
    calibration: torch.Tensor | Iterable[Any] | None = None,
    progress: bool | None = None,
    **verify_options: Any,
) -> BitSearchResult:
    """CEG4N (Matos Júnior (2025), Algorithm 1): the cheapest per-layer bits with
    ``f ~ Q(f, b)`` proved on the L-infinity balls of radius ``delta`` around ``points``.

    ``config``: a :class:`BitSearchConfig`; its ``verify`` field says what "equivalent" means
    (relation, eps, norm, domain) and how each region is verified; keyword ``verify_options`` with
    those names (``relation="eps", eps=0.1, domain=(0, 1), timeout=30``), and ``delta``, override
    its fields.  ``bits``: the range ``(b_min, b_max)`` of every layer's width; ``cost``: a
    callable ``bits -> float``, non-decreasing in every layer's bits, replacing ``config.cost``;
    ``calibration``: batches for the steps of ``mode="full"``.  See the module docstring for the
    strategy and :class:`BitSearchResult`.
    """
    cfg = config or BitSearchConfig()
    if not isinstance(cfg, BitSearchConfig):
        raise VerificationInputError(f"config must be a BitSearchConfig, got {type(cfg).__name__}")
    if delta is not None:
        verify_options["delta"] = delta
    spec = VerifyConfig.coerce(cfg.verify, "search_bits", **verify_options)
    f = _as_chain(f)
    _check_inputs(f, points, spec, bits)
    layers = _layers(f)
    _check_mode(cfg, layers, calibration)
    t0 = time.perf_counter()
    s = _Search(f, points, layers, cfg, calibration, bits[0], spec)
    lattice = _Lattice(len(layers.names), bits[0], bits[1], cost or _cost_fn(cfg.cost, layers.weights))
    history: list[dict[str, Any]] = []
    skipped: list[tuple[int, ...]] = []
    last: tuple[tuple[int, ...], float, nn.Module] | None = None
    bar = progress_bar(desc="ceg4n", progress=progress, leave=False)

    def left() -> float:
        return cfg.time_limit - (time.perf_counter() - t0)

    def result(status: SearchStatus, reason: str) -> BitSearchResult:
        bar.close()
        b, c, fq = last if last is not None else (None, None, None)
        return BitSearchResult(
            status=status,
            bits=b,
            layers=layers.names,
            iterations=len(history),
            counterexamples=s.found,
            cost=c,
            seconds=time.perf_counter() - t0,
            fq=fq,
            reason=reason,
            candidates=s.checked,
            skipped=skipped,
            history=history,
        )

    with optional_pool(spec.workers) as pool:  # one pool for the whole search
        while True:
            # bit search: the cheapest vector that agrees with f on every counterexample so far
            found = _cheapest_passing(lattice, s, left, bar)
            if found is None:
                if left() <= 0:
                    return result(
                        SearchStatus.TO, f"time limit of {cfg.time_limit} s reached during the bit search"
                    )
                if skipped:
                    return result(
                        SearchStatus.VF, f"no bit vector in {tuple(bits)} proved; undecided: {skipped}"
                    )
                return result(SearchStatus.QF, f"every bit vector in {tuple(bits)} fails on a counterexample")
            c, b = found
            if len(history) == cfg.max_iterations:
                return result(SearchStatus.TO, f"iteration limit of {cfg.max_iterations} reached")
            fq = s.model(b)
            last = (b, c, fq)
            bar.set_postfix(bits=",".join(map(str, b)), cex=len(s.found))
            entry = {"iteration": len(history) + 1, "bits": list(b), "cost": c, "candidates": s.checked}
            history.append(entry)
            # equivalence verification
            outcome, why = s.verify(fq, entry, left, pool)
            if outcome == "refuted":
                continue
            if outcome == "proved":
                return result(SearchStatus.SQ, "every region proved equivalent")
            if outcome == "timeout" or left() <= 0:
                return result(
                    SearchStatus.TO, f"time limit of {cfg.time_limit} s reached during verification {why}"
                )
            if cfg.on_unknown == "vf":
                return result(SearchStatus.VF, why)
            skipped.append(b)


def _cheapest_passing(
    lattice: _Lattice, s: _Search, left: Callable[[], float], bar: Any
) -> tuple[float, tuple[int, ...]] | None:
    """The next ``(cost, bits)`` of the lattice that passes the concrete check, or ``None`` when
    the lattice runs out or the time is spent."""
    while left() > 0:
        item = lattice.pop()
        if item is None:
            return None
        bar.update()
        if s.passes(item[1]):
            return item
    return None


class _Search:
    """The counterexample set and the concrete check (thesis sec. 3.3.1, ``R_{delta=0}``)."""

    def __init__(
        self,
        f: nn.Module,
        points: torch.Tensor,
        layers: _Layers,
        cfg: BitSearchConfig,
        calibration: Any,
        lo: int,
        spec: VerifyConfig,
    ):
        self.f, self.layers, self.cfg, self.calibration = f, layers, cfg, calibration
        self.f64 = copy.deepcopy(f).double().eval()
        self.points, self.shape = points, tuple(points.shape[1:])
        self.spec = spec
        self.x = points.detach().float().reshape(-1, *self.shape)  # the critical points start the set
        self.y = self._float(self.x)
        self.found: list[torch.Tensor] = []
        self.failures = [0] * len(points)  # counterexamples per region
        self.checked = 0
        self.evaluator = _Evaluator(f, layers, cfg, calibration, lo)
        self.passed: tuple[tuple[int, ...], torch.Tensor] = ((), self.y)  # the last concrete check

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.f64(x.double()).reshape(len(x), -1)

    def _agree(self, y: torch.Tensor, yq: torch.Tensor) -> bool:
        sp = self.spec
        return all(holds(sp.relation, a, b, sp.eps, sp.norm) for a, b in zip(y, yq, strict=True))

    def passes(self, bits: tuple[int, ...]) -> bool:
        """Does ``Q(f, bits)`` agree with ``f`` on every counterexample (one batched forward)?"""
        self.checked += 1
        yq = self.evaluator.outputs(bits, self.x).reshape(len(self.x), -1)
        self.passed = (bits, yq)
        return self._agree(self.y, yq)

    def model(self, bits: tuple[int, ...]) -> nn.Module:
        """``Q(f, bits)`` itself, checked against the evaluator on the counterexamples."""
        fq = _quantize(self.f, self.layers, bits, self.cfg, self.calibration)
        with torch.no_grad():
            yq = fq(self.x).reshape(len(self.x), -1)
        if self.passed[0] != bits or not torch.equal(yq, self.passed[1]):
            raise AssertionError(f"the memoized forward differs from Q(f, {bits}).eval()")
        return fq

    def add(self, region: int, x: torch.Tensor, fq: nn.Module) -> None:
        """A verifier's (replayed) counterexample of ``fq`` joins the set."""
        x = x.detach().float().reshape(1, *self.shape)
        y = self._float(x)
        with torch.no_grad():
            if self._agree(y, fq(x).reshape(1, -1)):
                raise AssertionError("the verifier's counterexample does not refute its candidate")
        self.x, self.y = torch.cat([self.x, x]), torch.cat([self.y, y])
        self.found.append(x.reshape(self.shape).clone())
        self.failures[region] += 1
        self.evaluator.forget()

    def verify(
        self, fq: nn.Module, entry: dict[str, Any], left: Callable[[], float], pool: Executor | None = None
    ) -> tuple[str, str]:
        """``verify_equivalence`` region by region, regions that refuted earlier candidates first,
        up to the first counterexample (proofs of the other regions would be wasted on a refuted
        candidate); on ``pool``, ``workers`` regions at a time, read in the same order.  Outcome:
        ``"refuted"``, ``"proved"``, ``"undecided"`` or ``"timeout"`` (the round's, not a
        :class:`Decision`: a round can also run out of the search's time)."""
        regions: list[dict[str, Any]]
        t0, regions, undecided = time.perf_counter(), [], ""
        entry["regions"] = regions
        order = sorted(range(len(self.points)), key=lambda j: -self.failures[j])
        deadline = time.time() + left()  # wall clock: the same in the pool's processes
        results = self._results(fq, order, deadline, pool)
        try:
            for i, res in results:
                if res is None:
                    return "timeout", f"(before region {i})"
                regions.append({"region": i, "verdict": res.verdict, "reason": res.reason, **res.stats})
                if res.verdict is Verdict.NOT_EQUIVALENT:
                    assert res.counterexample is not None  # a refutation comes with its point
                    self.add(i, res.counterexample, fq)
                    entry["counterexample"] = res.counterexample.reshape(-1).tolist()
                    return "refuted", ""
                if res.verdict is Verdict.UNKNOWN and not undecided:
                    undecided = f"region {i} undecided: {res.reason}"
            return ("undecided", undecided) if undecided else ("proved", "")
        finally:
            results.close()  # a pooled round cancels the regions it has not sent to a worker
            entry["seconds"] = time.perf_counter() - t0

    def _results(
        self, fq: nn.Module, order: list[int], deadline: float, pool: Executor | None
    ) -> Generator[tuple[int, Result | None], None, None]:
        """``(region, result)`` in ``order`` (``None``: the time was spent before the region
        started).  On ``pool``, up to ``workers`` regions are on their way at a time; closing the
        generator cancels those not started (one already running finishes in its worker, its
        result unused; the next regions' budgets still end at ``deadline``)."""
        f, pts, spec = self.f, self.points, self.spec
        if pool is None:
            for i in order:
                yield i, _verify_region(f, fq, pts[i : i + 1], spec, deadline)
            return
        sent: collections.deque[tuple[int, Future]] = collections.deque()
        try:
            for i in order:
                sent.append((i, pool.submit(_verify_region, f, fq, pts[i : i + 1], spec, deadline)))
                if len(sent) == spec.workers:
                    j, fut = sent.popleft()
                    yield j, fut.result()
            while sent:
                j, fut = sent.popleft()
                yield j, fut.result()
        finally:
            for _, fut in sent:
                fut.cancel()


def _verify_region(
    f: nn.Module, fq: nn.Module, point: torch.Tensor, spec: VerifyConfig, deadline: float
) -> Result | None:
    """The region around ``point`` (shape ``(1, ...)``) of a CEG4N round, verified with
    ``min(spec.timeout, time left to deadline)`` seconds counted from now (wherever it runs: in the
    search's process or a worker; ``deadline`` on the wall clock); ``None`` when none is left."""
    budget = min(spec.timeout, deadline - time.time())
    if budget <= 0:
        return None
    (res,) = verify_equivalence(f, fq, point, config=spec.updated(timeout=budget, workers=1))
    return res
