"""d-QNNT: training fully quantized ReLU networks (Ganian, Sommer & Sorge, "Tractability via low
dimensionality: the parameterized complexity of training quantized neural networks", section
2).

The problem, its reference semantics and a brute-force solver.  Section 2 of the paper, quoted:

* "For an integer d >= 1, we define the d-quantized integer domain Z_d as {z in Z | -floor((d-1)/2)
  <= z <= floor((d-1)/2)}, that is, Z_2 = {0, 1}, Z_3 = {-1, 0, 1}, Z_4 = {-1, 0, 1, 2} and so
  forth."  The printed formula contradicts its own examples (it gives Z_2 = {0}); we follow the
  examples: Z_d = {-floor((d-1)/2), ..., floor(d/2)}, d consecutive integers.
* "ReLU_d : Z_d -> Z_d is the restriction of the well-known rectified linear unit to Z_d - that
  is, all negative values are mapped to 0 while on positive values ReLU_d is the identity except
  that inputs outside of Z_d become max Z_d": ``relu_d(z) = min(max(z, 0), max Z_d)``.
* "A network architecture is a directed acyclic graph (a DAG) G whose vertex sets are partitioned
  into layers, where layer 0 consists solely of sources, and such that an arc ab may only go from
  a vertex in layer i to a vertex in layer i + 1 and all sinks lie in the same layer."  Sources
  are the input neurons, sinks the output neurons (both in a fixed order).
* "the weight function assigns each arc of G a weight from Z_d, and the bias function assigns each
  non-source node of G a bias from Z_d."
* Evaluation of x in Z_d^alpha: "The i-th input neuron receives the value x[i]; for each neuron v
  with predecessors z_1, ..., z_q, we set its value as ReLU_d((sum_i f(z_i) * weight(z_i v)) -
  bias(v))."  Output neurons apply ReLU_d too; their values, in order, are the output.
* "The error of a multiset of such data points is equal to the number of misaligned data points,
  i.e. the number of pairs (x, y) in the multiset such that the output ... on x differs from y."

Two readings are made explicit here: every source must lie in layer 0 (a later source would be
an input neuron fed out of order), and the last layer is the output layer (arcs only go one
layer up, so its vertices are sinks, and all sinks share one layer).
"""

from __future__ import annotations

import itertools
import operator
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..errors import TheoryInputError

Arc = tuple[str, str]
DataPoint = tuple[tuple[int, ...], tuple[int, ...]]


def check_d(d: Any) -> int:
    """The domain size d: an integer >= 1 (Ganian et al., sec. 2)."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise TheoryInputError(f"d must be an integer >= 1 (Z_2 = {{0,1}}, Z_3 = {{-1,0,1}}, ...), got {d!r}")
    return d


def z_domain(d: int) -> range:
    """Z_d = {-floor((d-1)/2), ..., floor(d/2)}: Z_2 = {0,1}, Z_3 = {-1,0,1}, Z_4 = {-1,0,1,2}."""
    d = check_d(d)
    return range(-((d - 1) // 2), d // 2 + 1)


def relu_d(z: int, d: int) -> int:
    """ReLU_d: negative values to 0, values above max Z_d to max Z_d (Ganian et al., sec. 2)."""
    return min(max(z, 0), d // 2)


@dataclass(frozen=True)
class Architecture:
    """A layered DAG: ``layers[0]`` are the inputs in order, ``layers[-1]`` the outputs in order.

    Node names are strings, unique across layers; ``arcs`` are ``(tail, head)`` pairs from layer i
    to layer i + 1.  Malformed graphs raise ``QuantizationError`` naming the culprit.
    """

    layers: tuple[tuple[str, ...], ...]
    arcs: tuple[Arc, ...]
    # derived: non-source nodes in evaluation order, each with (predecessor positions, arc indices)
    _plan: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        layers = tuple(tuple(layer) for layer in self.layers)
        arcs = tuple(tuple(a) for a in self.arcs)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "arcs", arcs)
        if len(layers) < 2:
            raise TheoryInputError(
                f"an architecture needs at least 2 layers (inputs, outputs), got {len(layers)}"
            )
        layer_of: dict[str, int] = {}
        for i, layer in enumerate(layers):
            if not layer:
                raise TheoryInputError(f"layer {i} is empty; drop it or give it neurons")
            for v in layer:
                if not isinstance(v, str):
                    raise TheoryInputError(f"node names must be strings, got {v!r} in layer {i}")
                if v in layer_of:
                    raise TheoryInputError(f"node {v!r} appears twice (layers {layer_of[v]} and {i})")
                layer_of[v] = i
        preds: dict[str, list[tuple[str, int]]] = {v: [] for v in layer_of}
        has_succ: set[str] = set()
        for k, arc in enumerate(arcs):
            if len(arc) != 2 or arc[0] not in layer_of or arc[1] not in layer_of:
                raise TheoryInputError(f"arc {arc!r} must be a (tail, head) pair of known nodes")
            u, v = arc
            if layer_of[v] != layer_of[u] + 1:
                raise TheoryInputError(
                    f"arc {arc!r} goes from layer {layer_of[u]} to layer {layer_of[v]}; "
                    "arcs may only go from layer i to layer i + 1 (Ganian et al., sec. 2)"
                )
            if any(p == u for p, _ in preds[v]):
                raise TheoryInputError(f"arc {arc!r} is given twice")
            preds[v].append((u, k))
            has_succ.add(u)
        for v, i in layer_of.items():
            if i > 0 and not preds[v]:
                raise TheoryInputError(
                    f"node {v!r} in layer {i} has no incoming arc: every source must be an input in layer 0"
                )
            if i < len(layers) - 1 and v not in has_succ:
                raise TheoryInputError(
                    f"node {v!r} in layer {i} has no outgoing arc: it would be a sink (an output) "
                    "outside the last layer, but all sinks lie in one layer (Ganian et al., sec. 2)"
                )
        pos = {v: j for j, v in enumerate(self.nodes)}
        plan = tuple(
            (tuple(pos[u] for u, _ in preds[v]), tuple(k for _, k in preds[v]))
            for v in self.nodes[len(layers[0]) :]
        )
        object.__setattr__(self, "_plan", plan)

    @classmethod
    def fully_connected(cls, widths: Sequence[int]) -> Architecture:
        """Complete bipartite arcs between consecutive layers; nodes ``x{j}``, ``h{l}_{j}``, ``y{j}``."""
        widths = list(widths)
        if len(widths) < 2 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise TheoryInputError(
                f"widths must be >= 2 positive integers (input, ..., output), got {widths!r}"
            )
        names = [[f"x{j}" for j in range(widths[0])]]
        names += [[f"h{i}_{j}" for j in range(w)] for i, w in enumerate(widths[1:-1], start=1)]
        names.append([f"y{j}" for j in range(widths[-1])])
        arcs = [(u, v) for a, b in itertools.pairwise(names) for u in a for v in b]
        return cls(tuple(map(tuple, names)), tuple(arcs))

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(v for layer in self.layers for v in layer)

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.layers[0]

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.layers[-1]

    @property
    def non_sources(self) -> tuple[str, ...]:
        """Nodes carrying a bias, in evaluation (layer) order."""
        return self.nodes[len(self.inputs) :]

    @property
    def plan(self) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
        """Per non-source node: positions (in ``nodes``) of its predecessors and the arc indices."""
        return self._plan

    def n_parameters(self) -> int:
        return len(self.arcs) + len(self.non_sources)


def _evaluate(arch: Architecture, d: int, w: Sequence[int], b: Sequence[int], x: Sequence[int]) -> list[int]:
    """The reference forward pass: the value of every node (in ``arch.nodes`` order) on input x.

    ``w[k]`` is the weight of ``arch.arcs[k]``, ``b[j]`` the bias of ``arch.non_sources[j]``.
    """
    vals = list(x)
    for j, (src, arc_ix) in enumerate(arch.plan):
        pre = sum(vals[p] * w[k] for p, k in zip(src, arc_ix, strict=True)) - b[j]
        vals.append(relu_d(pre, d))
    return vals


def _error(
    arch: Architecture, d: int, w: Sequence[int], b: Sequence[int], counts: Mapping[DataPoint, int]
) -> int:
    """Weighted number of misfit points; ``counts`` maps a distinct (x, y) to its multiplicity."""
    n_out = len(arch.outputs)
    outs: dict[tuple[int, ...], tuple[int, ...]] = {}
    err = 0
    for (x, y), c in counts.items():
        if x not in outs:
            outs[x] = tuple(_evaluate(arch, d, w, b, x)[-n_out:])
        err += c * (outs[x] != y)
    return err


def _as_int(v: Any, what: str) -> int:
    try:
        return operator.index(v)
    except TypeError:
        raise TheoryInputError(f"{what} must be an integer, got {v!r}") from None


def check_data(arch: Architecture, data: Iterable[Any], d: int) -> tuple[DataPoint, ...]:
    """Validate data points ``(x, y)``: x in Z_d^alpha, y in Z_d^omega (Ganian et al., sec. 2)."""
    dom = z_domain(d)
    alpha, omega = len(arch.inputs), len(arch.outputs)
    out = []
    for i, point in enumerate(data):
        try:
            x, y = point
            x, y = tuple(x), tuple(y)
        except (TypeError, ValueError):
            raise TheoryInputError(
                f"data point {i} must be a pair (x, y) of integer sequences, got {point!r}"
            ) from None
        if len(x) != alpha or len(y) != omega:
            raise TheoryInputError(
                f"data point {i} has {len(x)} inputs and {len(y)} outputs; the architecture has "
                f"{alpha} input and {omega} output neurons"
            )
        x = tuple(_as_int(v, f"data point {i} input {j}") for j, v in enumerate(x))
        y = tuple(_as_int(v, f"data point {i} output {j}") for j, v in enumerate(y))
        for kind, vec in (("input", x), ("output", y)):
            for j, v in enumerate(vec):
                if v not in dom:
                    raise TheoryInputError(
                        f"data point {i} {kind} {j} is {v}, outside Z_{d} = [{dom[0]}, {dom[-1]}]"
                    )
        out.append((x, y))
    return tuple(out)


def conflict_bound(data: Sequence[DataPoint], d: int) -> int:
    """A lower bound on the error of every network: points sharing an input share an output.

    Per distinct input, all points but those of the most frequent *reachable* target are misfits
    (outputs are ReLU_d values, so a target with a negative entry is never met).
    """
    by_x: dict[tuple[int, ...], Counter] = {}
    for x, y in data:
        by_x.setdefault(x, Counter())[y] += 1
    return sum(
        sum(ys.values()) - max((c for y, c in ys.items() if min(y, default=0) >= 0), default=0)
        for ys in by_x.values()
    )


@dataclass(frozen=True)
class Network:
    """A d-quantized network over an architecture: ``weights[(u, v)]``, ``biases[v]`` in Z_d."""

    architecture: Architecture
    d: int
    weights: Mapping[Arc, int]
    biases: Mapping[str, int]

    def __post_init__(self) -> None:
        arch, dom = self.architecture, z_domain(self.d)
        missing: set[Any]
        unknown: set[Any]
        if set(self.weights) != set(arch.arcs):
            missing, unknown = set(arch.arcs) - set(self.weights), set(self.weights) - set(arch.arcs)
            raise TheoryInputError(
                f"weights need exactly the arcs as keys; missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        if set(self.biases) != set(arch.non_sources):
            missing, unknown = (
                set(arch.non_sources) - set(self.biases),
                set(self.biases) - set(arch.non_sources),
            )
            raise TheoryInputError(
                f"biases need exactly the non-source nodes as keys; missing {sorted(missing)}, "
                f"unknown {sorted(unknown)}"
            )
        for what, table in (("weight", self.weights), ("bias", self.biases)):
            for key, v in table.items():
                if _as_int(v, f"{what} {key!r}") not in dom:
                    raise TheoryInputError(
                        f"{what} {key!r} is {v}, outside Z_{self.d} = [{dom[0]}, {dom[-1]}]"
                    )
        object.__setattr__(self, "weights", {a: int(self.weights[a]) for a in arch.arcs})
        object.__setattr__(self, "biases", {v: int(self.biases[v]) for v in arch.non_sources})

    @property
    def _vectors(self) -> tuple[list[int], list[int]]:
        return list(self.weights.values()), list(self.biases.values())

    def activations(self, x: Sequence[int]) -> dict[str, int]:
        """The value of every node on input x (``check_data`` rules for x)."""
        ((x, _),) = check_data(self.architecture, [(x, (0,) * len(self.architecture.outputs))], self.d)
        return dict(
            zip(self.architecture.nodes, _evaluate(self.architecture, self.d, *self._vectors, x), strict=True)
        )

    def forward(self, x: Sequence[int]) -> tuple[int, ...]:
        """The output: the values of the output neurons, in order."""
        acts = self.activations(x)
        return tuple(acts[v] for v in self.architecture.outputs)

    def error(self, data: Iterable[Any]) -> int:
        """The number of data points (a multiset) whose output differs from their target."""
        return _error(
            self.architecture, self.d, *self._vectors, Counter(check_data(self.architecture, data, self.d))
        )


class Status(str, Enum):
    FOUND = "FOUND"  # a network with error <= max_error (re-checked on the reference semantics)
    OPTIMAL = "OPTIMAL"  # a network whose error is the minimum (re-checked, with a lower-bound proof)
    INFEASIBLE = "INFEASIBLE"  # proof that no network reaches max_error
    UNKNOWN = "UNKNOWN"  # timeout: no verdict (a network, if any, is the best one found)


@dataclass(frozen=True)
class TrainResult:
    """The answer of ``train_exact`` or ``brute_force``.

    ``error`` is the network's error recomputed by the reference forward pass; ``lower_bound`` is a
    proven lower bound on the minimum error (``max_error + 1`` for INFEASIBLE); ``stats`` holds
    the proof kind (``"unsat"``, ``"maxsat"``, ``"exhaustive"``, ``"conflict_bound"``), timings and
    solver counts.
    """

    status: Status
    network: Network | None
    error: int | None
    lower_bound: int
    stats: dict[str, Any]


def check_problem(
    architecture: Architecture, data: Iterable[Any], d: int, max_error: int | None, minimize: bool
) -> tuple[tuple[DataPoint, ...], int]:
    """Validate a d-QNNT instance; returns the data and the error cap (``len(data)`` if none)."""
    if not isinstance(architecture, Architecture):
        raise TypeError(
            f"architecture must be a torchqv.theory.qnnt.Architecture, got {type(architecture).__name__}"
        )
    d = check_d(d)
    points = check_data(architecture, data, d)
    if max_error is None:
        if not minimize:
            raise TheoryInputError("max_error is required unless minimize=True")
        return points, len(points)
    cap = _as_int(max_error, "max_error")
    if cap < 0:
        raise TheoryInputError(f"max_error must be >= 0 (an error is a count of data points), got {cap}")
    return points, cap


def brute_force(
    architecture: Architecture,
    data: Iterable[Any],
    d: int,
    max_error: int | None = None,
    *,
    minimize: bool = False,
    max_assignments: int = 2_000_000,
) -> TrainResult:
    """Solve d-QNNT by enumerating all d^(#arcs + #non-sources) weight and bias assignments.

    Same contract as ``train_exact`` (never UNKNOWN); the test oracle for tiny instances.
    """
    points, cap = check_problem(architecture, data, d, max_error, minimize)
    n_w, n_b = len(architecture.arcs), len(architecture.non_sources)
    space = d ** (n_w + n_b)
    if space > max_assignments:
        raise TheoryInputError(
            f"brute force would enumerate {d}^{n_w + n_b} = {space} assignments (> max_assignments="
            f"{max_assignments}); use train_exact or raise max_assignments"
        )
    t0 = time.perf_counter()
    counts, floor = Counter(points), conflict_bound(points, d)
    best: tuple[int, tuple[int, ...]] | None = None
    tried = 0
    for params in itertools.product(z_domain(d), repeat=n_w + n_b):
        tried += 1
        err = _error(architecture, d, params[:n_w], params[n_w:], counts)
        if err <= cap and (best is None or err < best[0]):
            best = (err, params)
            if not minimize or err == floor:
                break
    stats = {"assignments": tried, "space": space, "seconds": time.perf_counter() - t0}
    if best is None:
        return TrainResult(
            Status.INFEASIBLE, None, None, max(cap + 1, floor), {**stats, "proof": "exhaustive"}
        )
    err, params = best
    net = Network(
        architecture,
        d,
        dict(zip(architecture.arcs, params[:n_w], strict=True)),
        dict(zip(architecture.non_sources, params[n_w:], strict=True)),
    )
    if not minimize:
        return TrainResult(Status.FOUND, net, err, floor, stats)
    proof = "conflict_bound" if err == floor and tried < space else "exhaustive"
    return TrainResult(Status.OPTIMAL, net, err, err, {**stats, "proof": proof})


@dataclass(frozen=True)
class QNNTInstance:
    """A d-QNNT instance (architecture G, multiset D, d, error bound l), e.g. from a reduction."""

    architecture: Architecture
    data: tuple[DataPoint, ...]
    d: int
    max_error: int

    def __post_init__(self) -> None:
        data, _ = check_problem(self.architecture, self.data, self.d, self.max_error, False)
        object.__setattr__(self, "data", data)
