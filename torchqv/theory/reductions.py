"""The hardness reductions of Ganian, Sommer & Sorge, "Tractability via low dimensionality: the parameterized
complexity of training quantized neural networks" (sec. 3) as d-QNNT instance generators, with their sources.

* Theorem 1: EXACT SET COVER -> 2-QNNT (one output, no hidden neuron, l = 0);
* Theorem 3: HITTING SET -> 2-QNNT (k inputs, no hidden neuron, l = k(|U| - 1));
* Theorem 4: 3-SAT -> 2-QNNT (2 inputs, one hidden layer, 3 data points, l = 0).

Each source problem comes with an exhaustive solver and a random generator of yes or no
instances; each reduction with the witness network its proof builds from a source solution, and
(Theorems 1 and 4, where the proof sketch makes it explicit) the map from a network back to a
source solution.

Theorem 3 as printed is not a correct reduction under sec. 2's semantics (bias *subtracted*,
weights and biases in Z_2 = {0, 1}).  Solutions map forward, but the converse fails: (a) for
k >= 2, an output F that no chosen element hits can still be fit by bias 1 and two weights 1
(0 on every unit input, 1 on the verifier), so every instance with k >= 2 is a yes-instance; (b)
two elements with the same membership ("twins") make two data points of one input type correct.
Example: U = {0, 1, 2}, F = {{0}, {1}, {2}}, k = 2 has no hitting set, yet error 4 = l is
reachable.  The reduction is correct for k = 1 and twin-free families (tests check all of this).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import TheoryInputError
from .qnnt import Architecture, Network, QNNTInstance

T = TypeVar("T")

# ---------------------------------------------------------------- Exact Set Cover (Theorem 1)


def _check_family(universe: tuple[int, ...], family: tuple[frozenset[int], ...]) -> None:
    if len(set(universe)) != len(universe):
        raise TheoryInputError(f"universe has repeated elements: {universe}")
    for i, s in enumerate(family):
        if not s <= set(universe):
            raise TheoryInputError(
                f"set {i} = {sorted(s)} has elements outside the universe: {sorted(s - set(universe))}"
            )


@dataclass(frozen=True)
class ExactSetCover:
    """Universe U and family F: is there a subfamily partitioning U (Karp 1972)?"""

    universe: tuple[int, ...]
    family: tuple[frozenset[int], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "universe", tuple(self.universe))
        object.__setattr__(self, "family", tuple(frozenset(s) for s in self.family))
        _check_family(self.universe, self.family)

    def is_solution(self, chosen: Sequence[int]) -> bool:
        sets = [self.family[i] for i in chosen]
        return sum(map(len, sets)) == len(self.universe) and set().union(*sets) == set(self.universe)

    def solve(self) -> tuple[int, ...] | None:
        """Exhaustive search: cover the smallest uncovered element by each disjoint set in turn."""

        def search(covered: frozenset[int], chosen: tuple[int, ...]) -> tuple[int, ...] | None:
            left = [u for u in self.universe if u not in covered]
            if not left:
                return chosen
            for i, s in enumerate(self.family):
                if left[0] in s and not s & covered:
                    found = search(covered | s, (*chosen, i))
                    if found is not None:
                        return found
            return None

        return search(frozenset(), ())


def exact_set_cover_to_qnnt(inst: ExactSetCover) -> QNNTInstance:
    """Theorem 1: inputs F_1..F_m, S*, x1, x2 -> one output z; points d_u^1, d_u^2, d01, d10, d11."""
    m = len(inst.family)
    inputs = (*(f"F{i + 1}" for i in range(m)), "S*", "x1", "x2")
    arch = Architecture((inputs, ("z",)), tuple((v, "z") for v in inputs))
    data = []
    for u in inst.universe:
        member = tuple(int(u in s) for s in inst.family)
        data += [((*member, 0, 0, 0), (0,)), ((*member, 1, 0, 0), (1,))]
    zero = (0,) * m
    data += [((*zero, 0, 0, 1), (0,)), ((*zero, 0, 1, 0), (0,)), ((*zero, 0, 1, 1), (1,))]
    return QNNTInstance(arch, tuple(data), 2, 0)


def exact_cover_to_network(inst: ExactSetCover, chosen: Sequence[int]) -> Network:
    """The proof's network: weight 1 on chosen sets, S*, x1 and x2, 0 elsewhere; bias(z) = 1."""
    arch = exact_set_cover_to_qnnt(inst).architecture
    w = {(f"F{i + 1}", "z"): int(i in chosen) for i in range(len(inst.family))}
    w |= {("S*", "z"): 1, ("x1", "z"): 1, ("x2", "z"): 1}
    return Network(arch, 2, w, {"z": 1})


def exact_cover_from_network(inst: ExactSetCover, net: Network) -> tuple[int, ...]:
    """Back-map: the sets whose arc into z has weight 1."""
    return tuple(i for i in range(len(inst.family)) if net.weights[(f"F{i + 1}", "z")] == 1)


def _sample(draw: Callable[[], T], ok: Callable[[T], bool], what: str) -> T:
    for _ in range(10_000):
        inst = draw()
        if ok(inst):
            return inst
    raise TheoryInputError(f"no {what} in 10000 random draws; change the sizes")


def random_exact_set_cover(
    rng: random.Random, n_elements: int, n_sets: int, answer: bool | None = None
) -> ExactSetCover:
    """answer=True: a planted partition of U plus random sets (yes by construction); False: random
    families (each element in a set with probability 0.4) until ``solve`` finds none; None: one
    random family, answer unknown."""
    universe = tuple(range(n_elements))

    def draw() -> ExactSetCover:
        family: list[set[int]] = []
        if answer:
            family = [set() for _ in range(rng.randint(1, max(1, min(n_sets, n_elements))))]
            for u in universe:
                rng.choice(family).add(u)
            family = [b for b in family if b]
        family += [{u for u in universe if rng.random() < 0.4} for _ in range(n_sets - len(family))]
        rng.shuffle(family)
        return ExactSetCover(universe, tuple(map(frozenset, family)))

    ok = (lambda i: i.solve() is None) if answer is False else (lambda i: True)
    return _sample(draw, ok, f"exact set cover no-instance with {n_elements} elements and {n_sets} sets")


# ---------------------------------------------------------------- Hitting Set (Theorem 3)


@dataclass(frozen=True)
class HittingSet:
    """Universe U, family F, 1 <= k <= |U|: is there S of U, |S| <= k, meeting every set of F?"""

    universe: tuple[int, ...]
    family: tuple[frozenset[int], ...]
    k: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "universe", tuple(self.universe))
        object.__setattr__(self, "family", tuple(frozenset(s) for s in self.family))
        _check_family(self.universe, self.family)
        if not self.family:
            raise TheoryInputError("the family must be non-empty (each set is an output neuron)")
        if not 1 <= self.k <= len(self.universe):
            raise TheoryInputError(f"k must be in [1, |U|] = [1, {len(self.universe)}], got {self.k}")

    def is_solution(self, chosen: Sequence[int]) -> bool:
        return (
            len(set(chosen)) <= self.k
            and set(chosen) <= set(self.universe)
            and all(s & set(chosen) for s in self.family)
        )

    def solve(self) -> tuple[int, ...] | None:
        """Exhaustive search over all k-subsets of U (with k <= |U|, size k = size at most k)."""
        return next((c for c in itertools.combinations(self.universe, self.k) if self.is_solution(c)), None)

    def has_twins(self) -> bool:
        """Do two elements lie in exactly the same sets?"""
        sig = [tuple(u in s for s in self.family) for u in self.universe]
        return len(set(sig)) < len(sig)


def hitting_set_to_qnnt(inst: HittingSet) -> QNNTInstance:
    """Theorem 3: inputs p_1..p_k -> one output per set; d_u^i = (e_i -> [u in F]_F), d* = (1 -> 1)."""
    k, m = inst.k, len(inst.family)
    ins, outs = tuple(f"p{i + 1}" for i in range(k)), tuple(f"F{j + 1}" for j in range(m))
    arch = Architecture((ins, outs), tuple((p, f) for p in ins for f in outs))
    data = [
        (tuple(int(i == h) for h in range(k)), tuple(int(u in s) for s in inst.family))
        for u in inst.universe
        for i in range(k)
    ]
    data.append(((1,) * k, (1,) * m))
    return QNNTInstance(arch, tuple(data), 2, k * (len(inst.universe) - 1))


def hitting_set_to_network(inst: HittingSet, chosen: Sequence[int]) -> Network:
    """The proof's network: input p_i is associated with the i-th chosen element (repeated to k
    if fewer), weight(p_i, F) = [s_i in F], all biases 0: each d_{s_i}^i and d* fit."""
    if not chosen:
        raise TheoryInputError("a hitting set of a non-empty family is non-empty")
    s = [*chosen, *[chosen[0]] * (inst.k - len(chosen))]
    arch = hitting_set_to_qnnt(inst).architecture
    w = {(f"p{i + 1}", f"F{j + 1}"): int(s[i] in f) for i in range(inst.k) for j, f in enumerate(inst.family)}
    return Network(arch, 2, w, {f"F{j + 1}": 0 for j in range(len(inst.family))})


def random_hitting_set(
    rng: random.Random,
    n_elements: int,
    n_sets: int,
    k: int,
    answer: bool | None = None,
    twin_free: bool = False,
) -> HittingSet:
    """answer=True: every set (element probability 0.35) meets a planted k-set (yes by construction);
    False: random families until ``solve`` finds no hitting set; None: one random family."""
    universe = tuple(range(n_elements))

    def draw() -> HittingSet:
        planted, family = set(rng.sample(universe, k)), []
        for _ in range(n_sets):
            f = {u for u in universe if rng.random() < 0.35}
            if answer and not f & planted:
                f.add(rng.choice(sorted(planted)))
            family.append(frozenset(f))
        return HittingSet(universe, tuple(family), k)

    def ok(inst: HittingSet) -> bool:
        return not (twin_free and inst.has_twins()) and (answer is not False or inst.solve() is None)

    return _sample(
        draw, ok, f"hitting set instance (answer {answer}) with {n_elements} elements, {n_sets} sets, k={k}"
    )


# ---------------------------------------------------------------- 3-SAT (Theorem 4)


@dataclass(frozen=True)
class ThreeSat:
    """A CNF over x_1..x_n; a clause is 3 literals (+i: x_i, -i: not x_i) on distinct variables."""

    n_vars: int
    clauses: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "clauses", tuple(tuple(c) for c in self.clauses))
        if self.n_vars < 1:
            raise TheoryInputError(f"n_vars must be >= 1, got {self.n_vars}")
        for j, c in enumerate(self.clauses):
            if (
                len(c) != 3
                or len({abs(lit) for lit in c}) != 3
                or not all(1 <= abs(lit) <= self.n_vars for lit in c)
            ):
                raise TheoryInputError(
                    f"clause {j} = {c} must have 3 literals on distinct variables in 1..{self.n_vars}"
                )

    def satisfies(self, assignment: Sequence[bool]) -> bool:
        return all(any(assignment[abs(lit) - 1] == (lit > 0) for lit in c) for c in self.clauses)

    def solve(self) -> tuple[bool, ...] | None:
        """A model, or None: exhaustive DPLL search (unit propagation, branch on a shortest clause)."""

        def dpll(clauses: list[frozenset[int]], true: frozenset[int]) -> frozenset[int] | None:
            while clauses:
                if not min(clauses, key=len):
                    return None
                shortest = min(clauses, key=len)
                lit = next(iter(shortest))  # a unit literal, else a branching literal
                if len(min(clauses, key=len)) > 1:
                    for choice in (lit, -lit):
                        found = dpll([c - {-choice} for c in clauses if choice not in c], true | {choice})
                        if found is not None:
                            return found
                    return None
                clauses, true = [c - {-lit} for c in clauses if lit not in c], true | {lit}
            return true

        model = dpll([frozenset(c) for c in self.clauses], frozenset())
        return None if model is None else tuple(i in model for i in range(1, self.n_vars + 1))


def _literal(lit: int) -> str:
    return f"x{lit}" if lit > 0 else f"~x{-lit}"


def three_sat_to_qnnt(inst: ThreeSat) -> QNNTInstance:
    """Theorem 4: z1, z2 -> hidden x_i, ~x_i -> outputs v_i, c_j; (1,0), (0,1) -> (0, 1); (1,1) -> (1, 1)."""
    n, m = inst.n_vars, len(inst.clauses)
    hidden = tuple(_literal(s * i) for i in range(1, n + 1) for s in (1, -1))
    outs = tuple(f"v{i}" for i in range(1, n + 1)) + tuple(f"c{j}" for j in range(1, m + 1))
    arcs = [(z, h) for z in ("z1", "z2") for h in hidden]
    arcs += [(_literal(s * i), f"v{i}") for i in range(1, n + 1) for s in (1, -1)]
    arcs += [(_literal(lit), f"c{j}") for j, c in enumerate(inst.clauses, start=1) for lit in c]
    arch = Architecture((("z1", "z2"), hidden, outs), tuple(arcs))
    data = (((1, 0), (0,) * n + (1,) * m), ((0, 1), (0,) * n + (1,) * m), ((1, 1), (1,) * n + (1,) * m))
    return QNNTInstance(arch, data, 2, 0)


def assignment_to_network(inst: ThreeSat, assignment: Sequence[bool]) -> Network:
    """The proof's network (Fig. 4): all weights 1; bias 0 on true literals, 1 on false literals
    (active on every point, resp. only on the choice point), 1 on every v_i, 0 on every c_j."""
    arch = three_sat_to_qnnt(inst).architecture
    bias = {
        _literal(s * i): int((s > 0) != assignment[i - 1]) for i in range(1, inst.n_vars + 1) for s in (1, -1)
    }
    bias |= {f"v{i}": 1 for i in range(1, inst.n_vars + 1)}
    bias |= {f"c{j}": 0 for j in range(1, len(inst.clauses) + 1)}
    return Network(arch, 2, dict.fromkeys(arch.arcs, 1), bias)


def assignment_from_network(inst: ThreeSat, net: Network) -> tuple[bool, ...]:
    """Back-map: x_i is true iff hidden neuron x_i is active on the verifier-1 input (1, 0)."""
    acts = net.activations((1, 0))
    return tuple(acts[f"x{i}"] > 0 for i in range(1, inst.n_vars + 1))


def random_three_sat(rng: random.Random, n_vars: int, n_clauses: int, answer: bool | None = None) -> ThreeSat:
    """answer=True: random clauses satisfied by a hidden assignment (yes by construction); False:
    uniform random clauses until ``solve`` finds no model; None: uniform random clauses."""
    if n_vars < 3:
        raise TheoryInputError(f"3-SAT clauses need 3 distinct variables, got n_vars={n_vars}")

    def draw() -> ThreeSat:
        clauses: list[Any]  # 3-tuples of literals
        hidden, clauses = [rng.random() < 0.5 for _ in range(n_vars)], []
        while len(clauses) < n_clauses:
            c = tuple(v if rng.random() < 0.5 else -v for v in rng.sample(range(1, n_vars + 1), 3))
            if not answer or any(hidden[abs(lit) - 1] == (lit > 0) for lit in c):
                clauses.append(c)
        return ThreeSat(n_vars, tuple(clauses))

    ok = (lambda i: i.solve() is None) if answer is False else (lambda i: True)
    return _sample(draw, ok, f"unsatisfiable 3-CNF with {n_vars} variables and {n_clauses} clauses")
