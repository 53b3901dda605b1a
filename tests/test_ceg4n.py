"""CEG4N bit search (Matos Júnior, "An automated method for neural network quantization refinement" (PhD
thesis, UFAM, 2025), Algorithm 1): optimality against brute force, statuses, errors."""

from __future__ import annotations

import itertools
import json
import math
import time
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchqv as tq
from torchqv.data import train_test
from torchqv.formats import QuantizationError
from torchqv.verify.ceg4n import (
    BitSearchConfig,
    BitSearchResult,
    _Evaluator,
    _layers,
    _round_bias,
    _verify_region,
    quantize_bits,
    search_bits,
)
from torchqv.verify.config import VerifyConfig
from torchqv.verify.engine import holds


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny networks: one thread avoids the OpenMP overhead on a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def iris():
    """A 4-4-3 ReLU network on iris (fixed seed) and the most confident test point per class."""
    xtr, xte, ytr, yte = train_test("iris")
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    opt = torch.optim.Adam(f.parameters(), 0.02)
    for _ in range(600):
        opt.zero_grad()
        F.cross_entropy(f(xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        out = f(xte)
    top2 = out.topk(2, 1).values
    margin = top2[:, 0] - top2[:, 1]
    points = []
    for c in range(3):
        ok = ((yte == c) & (out.argmax(1) == c)).nonzero()[:, 0]
        points.append(xte[ok[margin[ok].argmax()]])
    return f, torch.stack(points), xtr


def pow2_at_least(r: Fraction) -> Fraction:
    """The smallest power of two >= r > 0 (exact)."""
    k = math.floor(math.log2(r)) - 1
    while Fraction(2) ** k < r:
        k += 1
    return Fraction(2) ** k


def all_equivalent(f, fq, points, delta, **kw) -> bool:
    verdicts = [r.verdict for r in tq.verify_equivalence(f, fq, points, delta, domain=(0.0, 1.0), **kw)]
    assert "UNKNOWN" not in verdicts
    return verdicts == ["EQUIVALENT"] * len(points)


def refutes(f, fq, x, relation="top1") -> bool:
    x = x.reshape(1, -1).float()
    with torch.no_grad():
        y = f.double()(x.double())[0]
        f.float()
        return not holds(relation, y, fq(x)[0], None, "inf")


def test_minimal_cost_against_brute_force(iris):
    """The answer is the cheapest bit vector of the whole grid that the verifier proves equivalent;
    the grid is not monotone here ((4, 3) is equivalent, (5, 3) is not)."""
    f, points, _ = iris
    delta = 0.1
    r = search_bits(f, points, delta, bits=(2, 6), domain=(0.0, 1.0), progress=False)
    proved = {
        b: all_equivalent(f, quantize_bits(f, b), points, delta)
        for b in itertools.product(range(2, 7), repeat=2)
    }
    cost = {b: 16 * b[0] + 12 * b[1] for b in proved}  # weight bits: 16 and 12 weights
    best = min(cost[b] for b in proved if proved[b])
    assert r.status == "SQ" and r.bits == (4, 3) and r.cost == best == 100
    assert proved[r.bits] and not proved[(5, 3)]
    assert all(not proved[b] for b in proved if cost[b] < r.cost)
    assert r.layers == ["0", "2"] and r.iterations == len(r.history) == len(r.counterexamples) + 1 == 3
    # every counterexample is a real one: inside a region and refuting the candidate of its round
    for cex, h in zip(r.counterexamples, r.history, strict=False):
        assert min(float((cex - p).abs().max()) for p in points) <= delta + 1e-7
        assert refutes(f, quantize_bits(f, h["bits"]), cex)


def test_weights_mode_grids_and_independent_proof(iris):
    f, points, _ = iris
    r = search_bits(f, points, 0.05, bits=(2, 8), domain=(0.0, 1.0), progress=False)
    assert r.status == "SQ" and r.reason == "every region proved equivalent"
    assert all_equivalent(f, r.fq, points, 0.05, seed=7)
    for name, b in zip(r.layers, r.bits, strict=True):
        q, lin = r.fq.get_submodule(name), f.get_submodule(name)
        assert q.weight_quant.fmt.bits == b and q.out_quant is None and r.fq.input_quant is None
        assert float(q.weight_codes().abs().max()) <= 2 ** (b - 1) - 1
        # the bias: b-bit codes times a power-of-two step, nearest to the float bias
        step = pow2_at_least(Fraction(float(lin.bias.detach().abs().max())) / (2 ** (b - 1) - 1))
        for v, v0 in zip(q.bias.tolist(), lin.bias.detach().tolist(), strict=True):
            code = Fraction(v) / step
            assert code.denominator == 1 and abs(code) <= 2 ** (b - 1) - 1
            assert abs(Fraction(v0) - Fraction(v)) <= step / 2
    assert r.cost == 16 * r.bits[0] + 12 * r.bits[1]


def test_full_mode_formats_and_independent_proof(iris):
    f, points, xtr = iris
    cfg = BitSearchConfig(mode="full", input_bits=8)
    r = search_bits(
        f, points, 0.02, bits=(2, 8), domain=(0.0, 1.0), config=cfg, calibration=xtr, progress=False
    )
    assert r.status == "SQ"
    assert all_equivalent(f, r.fq, points, 0.02, seed=3)
    lin0, act, lin2 = r.fq[0], r.fq[1], r.fq[2]
    assert r.fq.input_quant.fmt.bits == 8 and r.fq.input_quant.fmt.affine
    assert (lin0.weight_quant.fmt.bits, lin0.out_quant.fmt.bits, act.out_quant.fmt.bits) == (r.bits[0],) * 3
    assert (lin2.weight_quant.fmt.bits, lin2.out_quant.fmt.bits) == (r.bits[1],) * 2
    # the accumulator grid of layer 2 follows the ReLU's format
    assert r.fq.io(r.fq.node("2")).in_quants[0] is act.out_quant


@pytest.mark.parametrize("mode", ["weights", "full"])
def test_memoized_forward_equals_quantized_model(iris, mode):
    """The search's layer-by-layer forward equals ``Q(f, b).eval()`` bit for bit, whatever the
    order in which bit vectors come (memoized prefixes, relinked input grids)."""
    f, _, xtr = iris
    cfg = BitSearchConfig(mode=mode)
    ev = _Evaluator(f, _layers(f), cfg, xtr, 2)
    x = torch.rand(40, 4)
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        b = tuple(int(v) for v in torch.randint(2, 12, (2,), generator=gen))
        with torch.no_grad():
            assert torch.equal(ev.outputs(b, x), quantize_bits(f, b, cfg, xtr)(x)), b


def threshold_net(w1: float, b1: float) -> nn.Module:
    """One input, two scores ``(x, w1 x + b1)``: class 1 below the crossing, class 0 above."""
    f = nn.Linear(1, 2)
    with torch.no_grad():
        f.weight.copy_(torch.tensor([[1.0], [w1]]))
        f.bias.copy_(torch.tensor([0.0, b1]))
    return f


def test_qf_when_no_width_fits_the_points():
    """w = 0.9 rounds to 1 at 2 and 3 bits, so both scores have slope 1 and the bias decides:
    class 1 everywhere, while f says class 0 at x = 1."""
    f = threshold_net(0.9, 0.09)
    points = torch.tensor([[1.0], [0.5]])
    r = search_bits(f, points, 0.01, bits=(2, 3), progress=False)
    assert (r.status, r.bits, r.iterations, r.candidates, r.fq) == ("QF", None, 0, 2, None)
    assert all(refutes(f, quantize_bits(f, (b,)), points[0]) for b in (2, 3))


def test_qf_after_a_counterexample_of_the_verifier():
    """f crosses at x = 1/2; at 3 bits the weight 1 becomes 3 * 171/512 (min-max step 1/3 rounded
    up to 8 significant bits), crossing at 256/513: the points pass, the region around 0.2 holds
    counterexamples in [256/513, 1/2)."""
    f = nn.Sequential(threshold_net(0.0, 0.5))
    points = torch.tensor([[0.2], [0.8]])
    r = search_bits(f, points, 0.3, bits=(3, 3), domain=(0.0, 1.0), progress=False)
    assert (r.status, r.bits, r.iterations, len(r.counterexamples)) == ("QF", (3,), 1, 1)
    (cex,) = r.counterexamples
    assert Fraction(256, 513) <= Fraction(float(cex)) < Fraction(1, 2)
    assert refutes(f, quantize_bits(f, (3,)), cex)


def test_time_and_iteration_limits(iris):
    f, points, _ = iris
    r = search_bits(f, points, 0.05, config=BitSearchConfig(time_limit=1e-9), progress=False)
    assert (r.status, r.iterations, r.bits) == ("TO", 0, None) and "time limit" in r.reason
    # the search of test_minimal_cost_against_brute_force needs 3 rounds
    r = search_bits(f, points, 0.1, bits=(2, 6), config=BitSearchConfig(max_iterations=2), progress=False)
    assert (r.status, r.iterations, len(r.counterexamples)) == ("TO", 2, 2) and "iteration limit" in r.reason


def test_workers_give_the_serial_search(iris):
    """``workers=2``: the regions of each round run two at a time on a process pool and are read
    in the serial order, so the search (rounds, counterexamples, answer) is the serial one."""
    f, points, _ = iris

    def rounds(r: BitSearchResult) -> list:
        drop = ("seconds",)
        return [
            {
                **{k: v for k, v in h.items() if k not in drop and k != "regions"},
                "regions": [{k: v for k, v in g.items() if k not in drop} for g in h["regions"]],
            }
            for h in r.history
        ]

    serial = search_bits(f, points, 0.1, bits=(2, 6), domain=(0.0, 1.0), progress=False)
    cfg = BitSearchConfig(verify=VerifyConfig(workers=2))
    pooled = search_bits(f, points, 0.1, bits=(2, 6), domain=(0.0, 1.0), config=cfg, progress=False)
    assert (pooled.status, pooled.bits, pooled.iterations, pooled.cost) == ("SQ", (4, 3), 3, 100)
    assert (serial.status, serial.bits, serial.iterations) == (pooled.status, pooled.bits, pooled.iterations)
    assert [x.tolist() for x in pooled.counterexamples] == [x.tolist() for x in serial.counterexamples]
    assert rounds(pooled) == rounds(serial)
    with pytest.raises(QuantizationError, match=r"VerifyConfig.workers must be an int >= 1.*got 0"):
        BitSearchConfig(verify={"workers": 0})


def test_a_region_starts_with_the_time_left_to_the_search_deadline(iris):
    """A round's region (run here or sent to a worker) takes its budget when it starts: none once
    the search's deadline has passed (the round then ends with TO), else at most ``timeout``."""
    f, points, _ = iris
    fq = quantize_bits(f, (8, 8))
    spec = VerifyConfig(delta=0.01, domain=(0.0, 1.0), timeout=10.0)
    assert _verify_region(f, fq, points[:1], spec, time.time() - 1.0) is None
    res = _verify_region(f, fq, points[:1], spec, time.time() + 600.0)
    assert res is not None and res.verdict == "EQUIVALENT"


def exact_net() -> nn.Module:
    """Weights in {0, +-1/2} and biases in {+-1/4}: already on the 2-bit grids."""
    f = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        f[0].weight.copy_(torch.tensor([[0.5, -0.5], [0.0, 0.5]]))
        f[0].bias.copy_(torch.tensor([0.25, -0.25]))
        f[2].weight.copy_(torch.tensor([[0.5, 0.5], [-0.5, 0.0]]))
        f[2].bias.copy_(torch.tensor([-0.25, 0.25]))
    return f


def test_undecided_region_is_vf_or_skipped():
    """Q(f, (2, 2)) = f, so strict equivalence holds, but only z3 can prove it, and it gets no time."""
    f, points = exact_net(), torch.tensor([[0.3, 0.1], [0.7, 0.6]])
    with torch.no_grad():
        assert torch.equal(quantize_bits(f, (2, 2))(points), f.double()(points.double()))
        f.float()
    cfg = BitSearchConfig(verify=VerifyConfig(timeout=1e-6))
    r = search_bits(f, points, 0.1, bits=(2, 2), relation="strict", config=cfg, progress=False)
    assert (r.status, r.bits, r.iterations) == ("VF", (2, 2), 1) and "undecided" in r.reason
    cfg = BitSearchConfig(verify=VerifyConfig(timeout=1e-6, relation="strict"), on_unknown="skip")
    r = search_bits(f, points, 0.1, bits=(2, 2), config=cfg, progress=False)
    assert (r.status, r.skipped) == ("VF", [(2, 2)]) and "no bit vector" in r.reason


def test_user_cost(iris):
    f, points, _ = iris
    r = search_bits(f, points, 0.05, bits=(2, 6), cost=lambda b: 10 * b[1] + b[0], progress=False)
    assert r.status == "SQ" and r.cost == 10 * r.bits[1] + r.bits[0]
    with pytest.raises(QuantizationError, match="must not decrease"):
        search_bits(f, points, 0.05, bits=(2, 6), cost=lambda b: -sum(b), progress=False)
    with pytest.raises(QuantizationError, match="finite number"):
        search_bits(f, points, 0.05, bits=(2, 6), cost=lambda b: math.nan, progress=False)


def test_config_and_result_serialise(iris):
    verify = VerifyConfig(relation="eps", eps="1/3", delta=0.01, domain=(0, 1), timeout=5.0)
    cfg = BitSearchConfig(mode="full", cost="sum_bits", input_bits=None, on_unknown="skip", verify=verify)
    assert BitSearchConfig(**cfg.to_dict()) == cfg
    assert BitSearchConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    f, points, _ = iris
    r = search_bits(f, points, 0.01, bits=(2, 4), config=BitSearchConfig(cost="sum_bits"), progress=False)
    assert isinstance(r, BitSearchResult) and r.cost == sum(r.bits)
    data = json.loads(json.dumps(r.to_dict()))
    assert data["status"] == r.status and data["bits"] == list(r.bits) and "fq" not in data


@given(bits=st.integers(2, 32), values=st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=6))
@settings(max_examples=60)
def test_bias_grid_exact_in_float32(bits, values):
    """Nearest point (ties away) of the power-of-two grid with 2^(b-1)-1 levels covering max|bias|,
    exactly representable in float32 at every width."""
    bias = torch.tensor(values, dtype=torch.float32)
    out = _round_bias(bias, bits)
    top = max(abs(Fraction(v)) for v in bias.tolist())
    kmax = 2 ** (bits - 1) - 1
    step = Fraction(1) if top == 0 else pow2_at_least(top / kmax)
    step = max(step, Fraction(2) ** -36)
    for v, v0 in zip(out.tolist(), bias.tolist(), strict=True):
        t = Fraction(v0) / step
        code = math.floor(abs(t) + Fraction(1, 2)) * (1 if t >= 0 else -1)
        assert Fraction(v) == max(-kmax, min(kmax, code)) * step


def test_bad_inputs(iris):
    f, points, xtr = iris
    for bits in [(1, 4), (5, 3), (2, 33), (2.0, 4), (3,)]:
        with pytest.raises(QuantizationError, match="bits must be a range"):
            search_bits(f, points, 0.01, bits=bits, progress=False)
    with pytest.raises(QuantizationError, match="mode must be one of"):
        BitSearchConfig(mode="activations")
    with pytest.raises(QuantizationError, match="5 features per point"):
        search_bits(f, torch.rand(3, 5), 0.01, progress=False)
    with pytest.raises(QuantizationError, match="non-empty batch"):
        search_bits(f, points[0], 0.01, progress=False)
    with pytest.raises(QuantizationError, match="delta"):
        search_bits(f, points, -0.1, progress=False)
    with pytest.raises(QuantizationError, match="relation"):
        search_bits(f, points, 0.01, relation="close", progress=False)
    with pytest.raises(QuantizationError, match="calibration data"):
        search_bits(f, points, 0.01, config=BitSearchConfig(mode="full"), progress=False)
    with pytest.raises(QuantizationError, match="2 Linear layers"):
        quantize_bits(f, (4, 4, 4))

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    g = Functional()
    full = quantize_bits(g, (4, 5), BitSearchConfig(mode="full"), xtr)  # F.relu is a node of the graph
    assert (full.relu.out_quant.fmt.bits, full.b.out_quant.fmt.bits) == (4, 5)
    assert quantize_bits(g, (4, 4))(points).shape == (3, 3)
