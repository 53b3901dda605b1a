"""d-QNNT (Ganian, Sommer & Sorge, "Tractability via low dimensionality: the parameterized complexity of
training quantized neural networks"): reference semantics, z3 training against brute force, and the
reductions."""

from __future__ import annotations

import itertools
import random
import time

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from torchqv.formats import QuantizationError
from torchqv.theory import reductions as R
from torchqv.theory.qnnt import (
    Architecture,
    Network,
    QNNTInstance,
    Status,
    brute_force,
    conflict_bound,
    relu_d,
    z_domain,
)
from torchqv.theory.qnnt_z3 import ENCODINGS, train_exact


def solve(q: QNNTInstance, **kw):
    return train_exact(q.architecture, q.data, q.d, q.max_error, **kw)


def found(q: QNNTInstance) -> bool:
    r = solve(q)
    assert r.status in (Status.FOUND, Status.INFEASIBLE), r.stats
    if r.status == Status.FOUND:
        assert r.network.error(q.data) == r.error <= q.max_error
    return r.status == Status.FOUND


# ---------------------------------------------------------------- semantics (sec. 2)


def test_domains_and_relu_follow_the_papers_examples():
    assert [list(z_domain(d)) for d in (1, 2, 3, 4, 5)] == [
        [0],
        [0, 1],
        [-1, 0, 1],
        [-1, 0, 1, 2],
        [-2, -1, 0, 1, 2],
    ]
    assert [relu_d(z, 4) for z in range(-3, 6)] == [0, 0, 0, 0, 1, 2, 2, 2, 2]
    assert [relu_d(z, 2) for z in (-5, 0, 1, 7)] == [0, 0, 1, 1]
    assert [relu_d(z, 3) for z in (-1, 0, 1, 2)] == [0, 0, 1, 1]


def test_forward_pass_by_hand():
    # inputs a, b; hidden h (a, b); output o (h, b).  Z_4: weights in {-1, 0, 1, 2}, bias subtracted.
    arch = Architecture(
        (("a", "b"), ("h", "g"), ("o",)), (("a", "h"), ("b", "h"), ("b", "g"), ("h", "o"), ("g", "o"))
    )
    net = Network(
        arch,
        4,
        {("a", "h"): 2, ("b", "h"): -1, ("b", "g"): 1, ("h", "o"): 2, ("g", "o"): -1},
        {"h": -1, "g": 0, "o": 1},
    )
    # x = (2, -1): h = ReLU_4(4 + 1 + 1) = 2 (saturated), g = ReLU_4(-1) = 0, o = ReLU_4(4 - 0 - 1) = 2
    assert net.activations((2, -1)) == {"a": 2, "b": -1, "h": 2, "g": 0, "o": 2}
    # x = (0, 2): h = ReLU_4(-2 + 1) = 0, g = 2, o = ReLU_4(0 - 2 - 1) = 0
    assert net.forward((0, 2)) == (0,)
    # x = (1, 1): h = ReLU_4(2 - 1 + 1) = 2, g = 1, o = ReLU_4(4 - 1 - 1) = 2
    assert net.forward((1, 1)) == (2,)
    data = [((2, -1), (2,)), ((0, 2), (0,)), ((1, 1), (1,)), ((1, 1), (1,)), ((0, 2), (-1,))]
    assert net.error(data) == 3  # the multiset counts both copies of ((1, 1), (1,))
    assert conflict_bound(data, 4) == 1  # (0, 2) -> 0 and (0, 2) -> -1 (never reachable) clash


def test_fully_connected_names_and_order():
    arch = Architecture.fully_connected([2, 3, 1])
    assert arch.inputs == ("x0", "x1") and arch.outputs == ("y0",) and len(arch.arcs) == 9
    assert arch.non_sources == ("h1_0", "h1_1", "h1_2", "y0") and arch.n_parameters() == 13


# ---------------------------------------------------------------- bad input

GOOD = Architecture((("a", "b"), ("o",)), (("a", "o"), ("b", "o")))


@pytest.mark.parametrize(
    ("layers", "arcs", "match"),
    [
        ((("a",),), (), "at least 2 layers"),
        ((("a",), ()), (), "layer 1 is empty"),
        ((("a", "o"), ("o",)), (("a", "o"),), "appears twice"),
        ((("a",), ("o",)), (("a", "q"),), "known nodes"),
        ((("a",), ("h",), ("o",)), (("a", "h"), ("h", "o"), ("a", "o")), "layer 0 to layer 2"),
        ((("a",), ("o",)), (("o", "a"),), "layer 1 to layer 0"),
        ((("a",), ("o",)), (("a", "o"), ("a", "o")), "given twice"),
        ((("a",), ("o", "p")), (("a", "o"),), "'p' in layer 1 has no incoming arc"),
        ((("a", "b"), ("o",)), (("a", "o"),), "'b' in layer 0 has no outgoing arc"),
        (((1,), ("o",)), ((1, "o"),), "must be strings"),
    ],
)
def test_malformed_architectures_are_rejected(layers, arcs, match):
    with pytest.raises(QuantizationError, match=match):
        Architecture(layers, arcs)


@pytest.mark.parametrize(
    ("data", "d", "max_error", "match"),
    [
        ([((0, 1), (1,))], 0, 0, "d must be an integer >= 1"),
        ([((0, 1), (1,))], 2.0, 0, "d must be an integer >= 1"),
        ([((0, 1), (1,))], True, 0, "d must be an integer >= 1"),
        ([((0, 2), (1,))], 3, 0, r"input 1 is 2, outside Z_3 = \[-1, 1\]"),
        ([((0, 1), (-1,))], 2, 0, r"output 0 is -1, outside Z_2 = \[0, 1\]"),
        ([((0, 1, 1), (1,))], 2, 0, "has 3 inputs and 1 outputs; the architecture has 2 input and 1 output"),
        ([((0, 1), (1, 0))], 2, 0, "has 2 inputs and 2 outputs"),
        ([((0, 0.5), (1,))], 2, 0, "input 1 must be an integer"),
        ([(0, 1)], 2, 0, "must be a pair"),
        ([((0, 1), (1,))], 2, -1, "max_error must be >= 0"),
        ([((0, 1), (1,))], 2, None, "max_error is required unless minimize=True"),
    ],
)
def test_bad_problems_are_rejected(data, d, max_error, match):
    for solver in (brute_force, train_exact):
        with pytest.raises(QuantizationError, match=match):
            solver(GOOD, data, d, max_error)


def test_bad_options_and_networks_are_rejected():
    with pytest.raises(QuantizationError, match="encoding must be one of"):
        train_exact(GOOD, [], 2, 0, encoding="sat")
    with pytest.raises(QuantizationError, match="timeout must be a positive"):
        train_exact(GOOD, [], 2, 0, timeout=0)
    with pytest.raises(TypeError, match="architecture must be"):
        train_exact([[2, 1]], [], 2, 0)
    with pytest.raises(QuantizationError, match=r"weight \('a', 'o'\) is 2, outside Z_2"):
        Network(GOOD, 2, {("a", "o"): 2, ("b", "o"): 0}, {"o": 0})
    with pytest.raises(QuantizationError, match=r"missing \[\('b', 'o'\)\]"):
        Network(GOOD, 2, {("a", "o"): 1}, {"o": 0})
    with pytest.raises(QuantizationError, match="non-source nodes"):
        Network(GOOD, 2, {("a", "o"): 1, ("b", "o"): 0}, {"a": 0, "o": 0})
    with pytest.raises(QuantizationError, match=r"brute force would enumerate 4\^11 = 4194304"):
        brute_force(Architecture.fully_connected([3, 2, 1]), [], 4, 0)
    with pytest.raises(QuantizationError, match="widths must be"):
        Architecture.fully_connected([3])


# ---------------------------------------------------------------- z3 against brute force


@st.composite
def tiny_problems(draw):
    """A random layered DAG with d^parameters <= 4096, data in Z_d, and an error bound."""
    d = draw(st.sampled_from([1, 2, 2, 3, 3, 4, 4, 4]))
    budget = {1: 14, 2: 12, 3: 7, 4: 6}[d]
    widths = draw(st.lists(st.integers(1, 3), min_size=2, max_size=3))
    names = [[f"n{i}_{j}" for j in range(w)] for i, w in enumerate(widths)]
    arcs: set[tuple[str, str]] = set()
    for a, b in itertools.pairwise(names):  # a minimal valid set: every node gets an in- and an out-arc
        arcs |= {(draw(st.sampled_from(a)), v) for v in b}
        arcs |= {(u, draw(st.sampled_from(b))) for u in a if not any(t == u for t, _ in arcs)}
    n_biases = sum(widths[1:])
    assume(len(arcs) + n_biases <= budget)
    for a, b in itertools.pairwise(names):  # optional arcs while the budget allows
        for arc in itertools.product(a, b):
            if arc not in arcs and len(arcs) + n_biases < budget and draw(st.booleans()):
                arcs.add(arc)
    arch = Architecture(tuple(map(tuple, names)), tuple(sorted(arcs)))
    dom = list(z_domain(d))
    weights = {a: draw(st.sampled_from(dom)) for a in arch.arcs}
    teacher = Network(arch, d, weights, {v: draw(st.sampled_from(dom)) for v in arch.non_sources})
    data = []
    for _ in range(draw(st.integers(1, 7))):
        x = tuple(draw(st.sampled_from(dom)) for _ in arch.inputs)
        noisy = draw(st.integers(0, 2)) > 0
        data.append(
            (x, tuple(draw(st.sampled_from(dom)) for _ in arch.outputs) if noisy else teacher.forward(x))
        )
    return arch, data, d, draw(st.integers(0, min(1, len(data)))), draw(st.sampled_from(ENCODINGS))


@settings(max_examples=80)
@given(tiny_problems())
def test_train_exact_agrees_with_brute_force(problem):
    arch, data, d, max_error, encoding = problem
    ref = brute_force(arch, data, d, max_error)
    got = train_exact(arch, data, d, max_error, encoding=encoding)
    assert got.status == ref.status
    if got.status == Status.FOUND:
        assert got.network.error(data) == got.error <= max_error
    else:
        assert got.network is None and got.lower_bound > max_error
    ref_min = brute_force(arch, data, d, minimize=True)
    got_min = train_exact(arch, data, d, minimize=True, encoding=encoding)
    assert got_min.status == Status.OPTIMAL
    assert got_min.error == got_min.lower_bound == ref_min.error == got_min.network.error(data)
    capped = train_exact(arch, data, d, max_error, minimize=True, encoding=encoding)
    assert capped.status == (Status.OPTIMAL if ref_min.error <= max_error else Status.INFEASIBLE)


def test_minimum_error_of_a_known_instance():
    # XOR on one neuron over Z_2 is not representable: the best single threshold unit misfits 1 point.
    xor = [((0, 0), (0,)), ((0, 1), (1,)), ((1, 0), (1,)), ((1, 1), (0,))]
    for encoding in ENCODINGS:
        assert train_exact(GOOD, xor, 2, 0, encoding=encoding).status == Status.INFEASIBLE
        r = train_exact(GOOD, xor, 2, minimize=True, encoding=encoding)
        assert (r.status, r.error, r.stats["proof"]) == (Status.OPTIMAL, 1, "maxsat")
    assert brute_force(GOOD, xor, 2, minimize=True).error == 1
    # over Z_2 every weight is >= 0, so every network is monotone: XOR stays out of reach with a hidden
    # layer; over Z_3 one hidden layer of width 2 computes it (h = ReLU(x1 - x2), ReLU(x2 - x1))
    arch = Architecture.fully_connected([2, 2, 1])
    assert train_exact(arch, xor, 2, minimize=True).error == 1
    r = train_exact(arch, xor, 3, 0)
    assert r.status == Status.FOUND and r.network.error(xor) == 0
    # contradictory labels: the conflict bound proves infeasibility before any solving
    r = train_exact(GOOD, [((1, 1), (0,)), ((1, 1), (1,)), ((1, 1), (1,))], 2, 0)
    assert (r.status, r.lower_bound, r.stats["proof"]) == (Status.INFEASIBLE, 1, "conflict_bound")


def test_timeouts_answer_unknown():
    q = R.three_sat_to_qnnt(R.random_three_sat(random.Random(0), 12, 52, False))
    r = solve(q, timeout=1e-6)
    assert r.status == Status.UNKNOWN and r.network is None and "timeout" in r.stats["reason"]
    rng = random.Random(0)
    arch = Architecture.fully_connected([5, 4, 2])
    data = [
        (tuple(rng.choice((-1, 0, 1)) for _ in range(5)), (rng.choice((0, 1)), rng.choice((0, 1))))
        for _ in range(30)
    ]
    # z3's own timeout let an interrupted MaxSAT step run on for minutes at these budgets; the
    # watchdog must stop every call (a generous margin: this checks liveness, not speed)
    for timeout in (0.15, 0.3, 0.5):
        t0 = time.perf_counter()
        r = train_exact(arch, data, 3, minimize=True, timeout=timeout)
        assert time.perf_counter() - t0 < timeout + 10
        assert r.status == Status.UNKNOWN and "timeout" in r.stats["reason"]
        if r.network is not None:  # the best network so far, re-evaluated on the reference semantics
            assert r.error == r.network.error(data) >= r.lower_bound


# ---------------------------------------------------------------- Theorem 1: Exact Set Cover

FIG = (
    frozenset({1, 4, 5}),
    frozenset({2, 3}),
    frozenset({1, 6}),
    frozenset({2, 5}),
    frozenset({3, 5}),
    frozenset({6}),
)


def test_theorem1_figure2_instance():
    esc = R.ExactSetCover(tuple(range(1, 7)), FIG)
    q = R.exact_set_cover_to_qnnt(esc)
    assert (len(q.architecture.inputs), len(q.architecture.outputs), len(q.data), q.max_error) == (
        9,
        1,
        15,
        0,
    )
    assert len(q.architecture.layers) == 2  # no hidden neuron
    assert R.exact_cover_to_network(esc, (0, 1, 5)).error(q.data) == 0
    r = solve(q)
    assert r.status == Status.FOUND and R.exact_cover_from_network(esc, r.network) == (
        0,
        1,
        5,
    )  # unique cover


@pytest.mark.parametrize("answer", [True, False])
def test_theorem1_answers_match_exact_set_cover(answer):
    rng = random.Random(11 + answer)
    for _ in range(12):
        esc = R.random_exact_set_cover(rng, rng.randint(1, 5), rng.randint(1, 5), answer)
        q = R.exact_set_cover_to_qnnt(esc)
        assert (
            found(q)
            == answer
            == (brute_force(q.architecture, q.data, q.d, q.max_error).status == Status.FOUND)
        )
        if answer:
            assert esc.is_solution(R.exact_cover_from_network(esc, solve(q).network))
            assert R.exact_cover_to_network(esc, esc.solve()).error(q.data) == 0


# ---------------------------------------------------------------- Theorem 3: Hitting Set


def test_theorem3_figure3_instance():
    hs = R.HittingSet(tuple(range(1, 7)), FIG, 3)
    q = R.hitting_set_to_qnnt(hs)
    assert (len(q.architecture.inputs), len(q.architecture.outputs), len(q.data), q.max_error) == (
        3,
        6,
        19,
        15,
    )
    assert hs.is_solution((2, 5, 6))
    # inputs p1, p2, p3 associated with 2, 5, 6: exactly d_2^1, d_5^2, d_6^3 and d* fit
    assert R.hitting_set_to_network(hs, (2, 5, 6)).error(q.data) == 15
    assert found(q)


@pytest.mark.parametrize("answer", [True, False])
def test_theorem3_answers_match_hitting_set_for_k1_twin_free(answer):
    rng = random.Random(31 + answer)
    for _ in range(12):
        n_sets = rng.randint(2, 4)
        hs = R.random_hitting_set(
            rng, rng.randint(2, min(5, 2**n_sets - 1)), n_sets, 1, answer, twin_free=True
        )
        q = R.hitting_set_to_qnnt(hs)
        assert (
            found(q)
            == answer
            == (brute_force(q.architecture, q.data, q.d, q.max_error).status == Status.FOUND)
        )


def test_theorem3_solutions_map_forward_for_every_k():
    rng = random.Random(3)
    for _ in range(10):
        hs = R.random_hitting_set(rng, rng.randint(2, 6), rng.randint(1, 4), rng.randint(1, 2), True)
        q = R.hitting_set_to_qnnt(hs)
        assert R.hitting_set_to_network(hs, hs.solve()).error(q.data) <= q.max_error
        assert found(q)


def test_theorem3_as_printed_accepts_no_instances():
    # k = 2: {0}, {1}, {2} cannot be hit by 2 elements, yet bias 1 and weights (1, 1) fit F3 = {2}
    hs = R.HittingSet((0, 1, 2), (frozenset({0}), frozenset({1}), frozenset({2})), 2)
    q = R.hitting_set_to_qnnt(hs)
    assert hs.solve() is None and q.max_error == 4
    assert brute_force(q.architecture, q.data, q.d, minimize=True).error == 4 == solve(q, minimize=True).error
    # twins (0 and 1 lie in the same sets) break k = 1: two points of the one input type fit
    twins = R.HittingSet((0, 1, 2), (frozenset({0, 1}), frozenset({2})), 1)
    assert twins.has_twins() and twins.solve() is None and found(R.hitting_set_to_qnnt(twins))
    # k >= 2: every instance maps to a yes-instance
    rng = random.Random(5)
    for _ in range(8):
        hs = R.random_hitting_set(rng, rng.randint(3, 5), rng.randint(2, 4), 2, False)
        assert hs.solve() is None and found(R.hitting_set_to_qnnt(hs))


# ---------------------------------------------------------------- Theorem 4: 3-SAT


def test_theorem4_figure4_instance():
    phi = R.ThreeSat(4, ((1, -2, -3), (1, -3, 4), (-1, -2, -4), (2, 3, 4)))
    q = R.three_sat_to_qnnt(phi)
    assert (len(q.architecture.inputs), len(q.data), q.max_error, len(q.architecture.layers)) == (2, 3, 0, 3)
    assignment = (False, True, False, True)
    assert phi.satisfies(assignment)
    net = R.assignment_to_network(phi, assignment)
    assert net.error(q.data) == 0 and set(net.weights.values()) == {1}  # "all arcs have weight 1"
    assert R.assignment_from_network(phi, net) == assignment
    r = solve(q)
    assert r.status == Status.FOUND and phi.satisfies(R.assignment_from_network(phi, r.network))


@pytest.mark.parametrize("answer", [True, False])
def test_theorem4_answers_match_3sat(answer):
    rng = random.Random(41 + answer)
    for _ in range(10):
        n = rng.randint(3, 5)
        phi = R.random_three_sat(rng, n, rng.randint(2 * n, 5 * n) if answer else 5 * n, answer)
        q = R.three_sat_to_qnnt(phi)
        assert found(q) == answer
        if answer:
            assert phi.satisfies(R.assignment_from_network(phi, solve(q).network))
            assert R.assignment_to_network(phi, phi.solve()).error(q.data) == 0


def test_source_solvers_match_plain_enumeration():
    rng = random.Random(7)
    for _ in range(40):
        esc = R.random_exact_set_cover(rng, rng.randint(0, 5), rng.randint(0, 5))
        m = len(esc.family)
        subfamilies = (c for r in range(m + 1) for c in itertools.combinations(range(m), r))
        sol = esc.solve()
        assert (sol is not None) == any(esc.is_solution(c) for c in subfamilies)
        assert sol is None or esc.is_solution(sol)
        n = rng.randint(1, 5)
        hs = R.random_hitting_set(rng, n, rng.randint(1, 4), rng.randint(1, n))
        sol = hs.solve()
        subsets = (c for r in range(hs.k + 1) for c in itertools.combinations(hs.universe, r))
        assert (sol is not None) == any(hs.is_solution(c) for c in subsets)
        assert sol is None or hs.is_solution(sol)
        phi = R.random_three_sat(rng, rng.randint(3, 6), rng.randint(0, 30))
        sol = phi.solve()
        assert (sol is not None) == any(
            phi.satisfies(a) for a in itertools.product((False, True), repeat=phi.n_vars)
        )
        assert sol is None or phi.satisfies(sol)


def test_source_problems_reject_bad_input():
    with pytest.raises(QuantizationError, match="outside the universe"):
        R.ExactSetCover((1, 2), (frozenset({3}),))
    with pytest.raises(QuantizationError, match="k must be in"):
        R.HittingSet((1, 2), (frozenset({1}),), 3)
    with pytest.raises(QuantizationError, match="family must be non-empty"):
        R.HittingSet((1, 2), (), 1)
    with pytest.raises(QuantizationError, match="distinct variables"):
        R.ThreeSat(3, ((1, -1, 2),))
    with pytest.raises(QuantizationError, match="distinct variables"):
        R.ThreeSat(3, ((1, 2, 4),))
    with pytest.raises(QuantizationError, match="n_vars=2"):
        R.random_three_sat(random.Random(0), 2, 3, True)
