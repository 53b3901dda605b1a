"""Equivalence verification: soundness against enumeration, constructed cases, errors."""

from __future__ import annotations

import itertools
import time
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchqv as tq
from torchqv.verify.engine import holds

ACTS = [nn.ReLU, lambda: nn.LeakyReLU(0.25), lambda: nn.Hardtanh(-1.0, 1.5), nn.Identity]


def grid_points(fq: nn.Module, center: torch.Tensor, delta: float) -> torch.Tensor:
    """Every grid point of f''s input format inside the L-inf ball (a finite set)."""
    q = fq.input_quant
    s, (kmin, kmax) = q.steps()[0], q.code_range()
    axes = []
    for c in center.tolist():
        lo = max(kmin, -((-(Fraction(c) - Fraction(delta))) // s))  # ceil
        hi = min(kmax, (Fraction(c) + Fraction(delta)) // s)
        axes.append([float(k * s) for k in range(int(lo), int(hi) + 1)])
    return torch.tensor(list(itertools.product(*axes)), dtype=torch.float32).reshape(-1, len(axes))


@st.composite
def cases(draw):
    torch.manual_seed(draw(st.integers(0, 10_000)))
    d, h, o = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(2, 3))
    f = nn.Sequential(nn.Linear(d, h), draw(st.sampled_from(ACTS))(), nn.Linear(h, o))
    wbits = draw(st.integers(2, 5))
    rounding = draw(st.sampled_from(["half_away", "half_even", "floor"]))
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=wbits, rounding=rounding, per_channel=draw(st.booleans())),
        activation=tq.FixedPoint(bits=draw(st.integers(3, 6)), rounding=rounding),
        input=tq.FixedPoint(bits=4, rounding=rounding),
    )
    fq = tq.quantize(f, cfg)
    tq.calibrate(fq, [torch.randn(64, d) * 2], progress=False)
    relation = draw(st.sampled_from(["top1", "eps", "eps_l1", "strict"]))
    eps = draw(st.sampled_from([0.05, 0.3, 1.0])) if relation.startswith("eps") else None
    center = torch.randn(d) * 1.5
    delta = draw(st.sampled_from([0.2, 0.5, 1.0]))
    return f, fq, relation, eps, center, delta


def exact_truth(f: nn.Module, fq: nn.Module, xs: torch.Tensor, rel: str, eps, norm: str) -> bool:
    """Does the relation hold at every point (f in exact rationals, f' by the integer reference)?"""
    from torchqv.verify.engine import holds_exact
    from torchqv.verify.network import float_chain

    chain = float_chain(f, xs.shape[1])
    yq = tq.reference_forward(fq, xs, exact=True)
    e = Fraction(eps) if eps is not None else None
    return all(
        holds_exact(rel, chain.exact([Fraction(v) for v in x.tolist()]), list(b), e, norm)
        for x, b in zip(xs.double(), yq, strict=True)
    )


def check_against_enumeration(case, input_split: int) -> str:
    """Verify the case's region and compare the verdict with all its grid points; returns the
    stage that decided."""
    f, fq, relation, eps, center, delta = case
    norm = "l1" if relation == "eps_l1" else "inf"
    rel = "eps" if relation.startswith("eps") else relation
    xs = grid_points(fq, center, delta)
    if xs.numel() == 0:  # no input grid point in the region: a user error, not a verdict
        with pytest.raises(tq.QuantizationError, match="no grid point"):
            tq.verify_equivalence(f, fq, center[None], delta, relation=rel, eps=eps, norm=norm, timeout=30)
        return "empty"
    (res,) = tq.verify_equivalence(
        f, fq, center[None], delta, relation=rel, eps=eps, norm=norm, timeout=30, input_split=input_split
    )
    truth = exact_truth(f, fq, xs, rel, eps, norm)
    assert res.verdict != "UNKNOWN", res.reason
    if res.verdict == "EQUIVALENT":
        assert truth, "the verifier said EQUIVALENT but enumeration finds a violation"
    else:
        assert not truth
        cex = res.counterexample.reshape(1, -1).float()
        assert any(torch.equal(cex[0], x) for x in xs)  # a point of the region
        assert not exact_truth(f, fq, cex, rel, eps, norm)
    return res.stats["method"]


@given(cases())
@settings(max_examples=120)
def test_verdicts_agree_with_enumeration(case):
    """Input-splitting branch and bound (small inputs), then z3."""
    check_against_enumeration(case, input_split=16)


def lp_verdict(case) -> tuple[str, bool]:
    """The LP search alone on every disjunct of the case's region (no z3), and the truth."""
    import numpy as np

    from torchqv.verify import bounds as B
    from torchqv.verify.engine import _disjuncts, _Problem
    from torchqv.verify.region import grid_box

    f, fq, relation, eps, center, delta = case
    norm = "l1" if relation == "eps_l1" else "inf"
    rel = "eps" if relation.startswith("eps") else relation
    xs = grid_points(fq, center, delta)
    p = _Problem(f, fq, (center.numel(),), rel, Fraction(eps) if eps is not None else None, norm)
    c = [Fraction(v) for v in center.tolist()]
    d = Fraction(delta)
    box = grid_box([v - d for v in c], [v + d for v in c], p.grid.step, *p.grid.code_range)
    if box is None or rel == "strict" or (rel == "eps" and norm == "l1"):
        return "skip", True
    lo, hi = box.floats()
    stats = {
        "solver_calls": 0,
        "replays": 0,
        "neurons_fixed": 0,
        "neurons": 0,
        "nodes": 0,
        "use_bounds": True,
    }
    todo, solver = _disjuncts(p, box, B.Crown(p.cf, lo, hi), B.Crown(p.cq_body, lo, hi), np.inf, stats)
    truth = exact_truth(f, fq, xs, rel, eps, norm)
    verdict = "proved"
    for query in todo:
        status, info = solver.lp(query, time.perf_counter() + 30)
        if status == "refuted":
            cex = torch.from_numpy(info.double).reshape(1, -1)
            assert any(torch.equal(cex[0].float(), x) for x in xs)
            assert not exact_truth(f, fq, cex, rel, eps, norm)
            return "refuted", truth
        if status == "open":
            verdict = "open"
    return verdict, truth


@given(cases())
@settings(max_examples=80)
def test_lp_search_verdicts_agree_with_enumeration(case):
    """The LP branch and bound alone (no z3): never proves a false relation; its
    counterexamples are points of the region that really separate f and f'."""
    verdict, truth = lp_verdict(case)
    if verdict == "proved":
        assert truth, "the LP search proved a relation that enumeration refutes"
    if verdict == "refuted":
        assert not truth


def test_lp_search_decides_regions_on_its_own():
    """On regions the linear bounds leave open, the LP search alone proves or refutes most."""
    outcomes = []
    for seed in range(12):
        torch.manual_seed(seed)
        f = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 3))
        fq = tq.quantize(
            f,
            tq.QConfig(
                weight=tq.FixedPoint(bits=4), activation=tq.FixedPoint(bits=5), input=tq.FixedPoint(bits=6)
            ),
        )
        tq.calibrate(fq, [torch.randn(64, 2)], progress=False)
        outcomes.append(lp_verdict((f, fq, "top1", None, torch.randn(2), 0.5))[0])
    assert outcomes.count("proved") + outcomes.count("refuted") >= 6, outcomes


def test_equivalent_by_construction_is_proved():
    """Integer weights, integer inputs and a wide integer output grid: f' computes f exactly."""
    torch.manual_seed(0)  # (unseeded, one draw in many ran out of time under a loaded full suite)
    f = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        for lin in (f[0], f[2]):
            lin.weight.copy_(torch.randint(-3, 4, lin.weight.shape).float())
            lin.bias.copy_(torch.randint(-3, 4, lin.bias.shape).float())
    one = tq.FixedPoint(bits=16, step=1)
    fq = tq.quantize(
        f,
        tq.QConfig(weight=tq.FixedPoint(bits=4, step=1), activation=one, input=tq.FixedPoint(bits=6, step=1)),
    )
    points = torch.tensor([[0.0, 1.0, -2.0], [3.0, -1.0, 2.0]])
    for relation in ("strict", "top1"):
        res = tq.verify_equivalence(f, fq, points, 3.0, relation=relation)
        assert [r.verdict for r in res] == ["EQUIVALENT", "EQUIVALENT"]


def test_planted_difference_is_found_and_replayed():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 3))
    fq = tq.quantize(
        f,
        tq.QConfig(
            weight=tq.FixedPoint(bits=8), activation=tq.FixedPoint(bits=8), input=tq.FixedPoint(bits=8)
        ),
    )
    tq.calibrate(fq, [torch.randn(64, 2)], progress=False)
    with torch.no_grad():  # plant: class 2 of f' gets a large extra bias
        fq[2].bias[2] += 5.0
    res = tq.verify_equivalence(f, fq, torch.zeros(1, 2), 1.0, relation="top1")
    assert res[0].verdict == "NOT_EQUIVALENT"
    cex = res[0].counterexample.reshape(1, 2).float()
    assert int(tq.reference_forward(fq, cex).argmax()) != int(f(cex).argmax())


def test_plain_z3_without_bounds_agrees():
    torch.manual_seed(2)
    f = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))
    fq = tq.quantize(
        f,
        tq.QConfig(
            weight=tq.FixedPoint(bits=5), activation=tq.FixedPoint(bits=6), input=tq.FixedPoint(bits=5)
        ),
    )
    tq.calibrate(fq, [torch.randn(64, 2)], progress=False)
    pts = torch.randn(4, 2)
    with_bounds = [r.verdict for r in tq.verify_equivalence(f, fq, pts, 0.3)]
    plain = [r.verdict for r in tq.verify_equivalence(f, fq, pts, 0.3, use_bounds=False)]
    assert with_bounds == plain


def test_timeout_gives_unknown():
    torch.manual_seed(3)
    f = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 4))
    fq = tq.quantize(f, tq.QConfig(weight=tq.FixedPoint(bits=6), activation=tq.FixedPoint(bits=8)))
    tq.calibrate(fq, [torch.randn(64, 6)], progress=False)
    (res,) = tq.verify_equivalence(
        f, fq, torch.zeros(1, 6), 2.0, relation="eps", eps=1e-3, timeout=0.05, samples=0
    )
    assert res.verdict in ("UNKNOWN", "NOT_EQUIVALENT")
    if res.verdict == "UNKNOWN":
        assert "within" in res.reason


def test_bad_arguments():
    f = nn.Sequential(nn.Linear(2, 2))
    fq = tq.quantize(f, tq.QConfig(weight=tq.FixedPoint(bits=4), activation=tq.FixedPoint(bits=8)))
    tq.calibrate(fq, [torch.randn(8, 2)], progress=False)
    p = torch.zeros(1, 2)
    with pytest.raises(tq.QuantizationError, match="relation"):
        tq.verify_equivalence(f, fq, p, 0.1, relation="same")
    with pytest.raises(tq.QuantizationError, match="eps"):
        tq.verify_equivalence(f, fq, p, 0.1, relation="eps")
    with pytest.raises(tq.QuantizationError, match="delta"):
        tq.verify_equivalence(f, fq, p, float("nan"))
    g = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid())
    gq = tq.quantize(g, tq.QConfig(weight=tq.FixedPoint(bits=4), activation=tq.FixedPoint(bits=8)))
    with pytest.raises(tq.QuantizationError, match="piecewise-linear"):
        tq.verify_equivalence(g, gq, p, 0.1)


@given(
    t=st.fractions(min_value=-20, max_value=20, max_denominator=8),
    rounding=st.sampled_from(["half_away", "half_even", "floor"]),
    binary=st.booleans(),
    step=st.sampled_from([Fraction(1), Fraction(1, 3), Fraction(1, 4)]),
)
@settings(max_examples=300)
def test_z3_rounding_is_the_formats_rounding(t, rounding, binary, step):
    """On exact values (ties and integers included) the encoding yields round_exact + saturation."""
    import z3

    from torchqv.verify.encode import Encoder, rv
    from torchqv.verify.network import Rounding

    fmt = tq.Binary(rounding=rounding) if binary else tq.FixedPoint(bits=4, rounding=rounding)
    r = Rounding(fmt, step)
    value = t * step
    s = z3.Solver()
    x = z3.Real("x")
    out = Encoder(s).rounding(r, x, float("-inf"), float("inf"))
    y = z3.Real("y")
    s.add(x == rv(value), y == out)
    assert s.check() == z3.sat
    assert s.model()[y].as_fraction() == r.apply(value)
    s.add(y != rv(r.apply(value)))
    assert s.check() == z3.unsat  # the rounding is a function


@given(cases())
@settings(max_examples=40)
def test_z3_network_encoding_matches_the_reference(case):
    """Pin the inputs to grid points: z3's outputs are the integer reference's, exactly."""
    import z3

    from torchqv.verify import bounds as B
    from torchqv.verify.encode import Encoder, rv
    from torchqv.verify.engine import _loose
    from torchqv.verify.network import Chain, quant_chain

    _, fq, _, _, center, delta = case
    xs = grid_points(fq, center, delta)[:5]
    chain = quant_chain(fq, len(center))
    for x in xs:
        s = z3.Solver()
        enc = Encoder(s)
        inputs = [z3.Real(f"i{j}") for j in range(len(x))]
        loose = B.propagate(Chain(chain.layers, len(x)), x.double().numpy(), x.double().numpy())
        out = enc.network(
            Chain(chain.layers, len(x)), inputs, _loose(loose), [-1e300] * len(x), [1e300] * len(x)
        )
        s.add([v == rv(float(c)) for v, c in zip(inputs, x.tolist(), strict=True)])
        assert s.check() == z3.sat
        got = [s.model().eval(o, model_completion=True).as_fraction() for o in out]
        ref = tq.reference_forward(fq, x[None], exact=True)[0].tolist()
        assert got == ref


def box_samples(case, n: int, seed: int):
    """Chains of f and f' (without input rounding), the box around the case's centre, and ``n``
    exact points sampled in it."""
    from torchqv.verify.network import Chain, float_chain, quant_chain

    f, fq, _, _, center, delta = case
    d = center.numel()
    lo, hi = (center - delta).double().numpy(), (center + delta).double().numpy()
    gen = torch.Generator().manual_seed(seed)
    xs = torch.from_numpy(lo) + torch.from_numpy(hi - lo) * torch.rand(
        n, d, generator=gen, dtype=torch.float64
    )
    points = [[Fraction(float(t)) for t in x] for x in xs]
    return float_chain(f, d), Chain(quant_chain(fq, d).layers, d), lo, hi, points


@given(cases())
@settings(max_examples=60)
def test_linear_bounds_contain_every_value(case):
    """Back-substitution bounds hold at sampled points of the box, layer by layer (exact values)."""
    import numpy as np

    from torchqv.verify.bounds import Crown
    from torchqv.verify.network import Chain

    cf, cq, lo, hi, points = box_samples(case, 20, 0)
    for chain in (cf, cq):
        crown = Crown(chain, lo, hi)
        bounds = crown.layer_bounds()
        n = chain.out_features
        A = np.eye(n)[: max(1, n - 1)] - np.eye(n)[-1]
        margin_lo = crown.linear_lower(A)
        for v in points:
            for layer, b in zip(chain.layers, bounds, strict=True):
                v = Chain([layer], len(v)).exact(v)
                assert all(b.lo[i] <= float(t) <= b.hi[i] for i, t in enumerate(v))
            out = np.array([float(t) for t in v])
            assert (A @ out >= margin_lo - 1e-12).all()


@given(cases())
@settings(max_examples=40)
def test_difference_bounds_contain_every_difference(case):
    import numpy as np

    from torchqv.verify.bounds import Crown, difference_bounds

    cf, cq, lo, hi, points = box_samples(case, 30, 1)
    dlo, dhi = difference_bounds(Crown(cf, lo, hi), Crown(cq, lo, hi))
    for v in points:
        diff = np.array([float(a - b) for a, b in zip(cf.exact(v), cq.exact(v), strict=True)])
        assert (dlo <= diff).all() and (diff <= dhi).all()


def test_imported_acas_network_with_input_shift():
    from .conftest import SHARED_DATA

    path = SHARED_DATA / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx"
    if not path.exists():
        pytest.skip(f"shared test data not found at {path}")
    f = tq.from_onnx(path)
    fq = tq.quantize(
        f, tq.QConfig(weight=tq.FixedPoint(bits=8, per_channel=True), activation=tq.FixedPoint(bits=8))
    )
    box_lo = torch.tensor([-0.3284, -0.5, -0.5, -0.5, -0.5])
    calib = (box_lo + torch.rand(512, 5) * torch.tensor([1.0083, 1, 1, 1, 1])).reshape(-1, 1, 1, 5)
    tq.calibrate(fq, [calib], progress=False)
    (res,) = tq.verify_equivalence(f, fq, calib[:1], 0.001, relation="eps", eps=0.5, timeout=30)
    assert res.verdict == "EQUIVALENT" and res.stats["method"] == "bounds"
    (res,) = tq.verify_equivalence(f, fq, calib[:1], 0.001, relation="eps", eps=1e-6, timeout=30)
    assert res.verdict == "NOT_EQUIVALENT"  # 8-bit rounding moves the outputs by more than 1e-6


def test_convolutional_network_chain_is_exact_and_verified():
    """Conv2d layers become exact dense affine maps: the chain reproduces the integer reference on
    grid points, and verdicts agree with enumeration of a small region."""
    from torchqv.verify.network import quant_chain

    torch.manual_seed(4)
    f = nn.Sequential(
        nn.Conv2d(1, 2, 2, stride=1, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 2, 2, stride=2),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=4, per_channel=True),
        activation=tq.FixedPoint(bits=6),
        input=tq.FixedPoint(bits=4, signed=False),
    )
    fq = tq.quantize(f, cfg)
    tq.calibrate(fq, [torch.rand(64, 1, 3, 3)], progress=False)
    fq.eval()
    chain = quant_chain(fq, (1, 3, 3))
    xs = torch.randint(0, 16, (5, 1, 3, 3)).float() * float(chain.inp.step)
    for x in xs:
        got = chain.exact([Fraction(float(v)) for v in x.reshape(-1)])
        assert got == tq.reference_forward(fq, x[None], exact=True)[0].tolist()
    center = torch.full((1, 1, 3, 3), 0.5)
    delta = float(chain.inp.step) * 0.6  # each pixel takes its two nearest grid values
    for relation, eps in (("top1", None), ("eps", 0.05)):
        (res,) = tq.verify_equivalence(f, fq, center, delta, relation=relation, eps=eps, domain=(0.0, 1.0))
        lo = torch.ceil((center - delta) / chain.inp.step.__float__()).reshape(-1)
        grid = [torch.tensor([lo[i], lo[i] + 1]) for i in range(9)]
        pts = torch.cartesian_prod(*grid).reshape(-1, 1, 3, 3) * float(chain.inp.step)
        with torch.no_grad():
            y = f.double()(pts.double())
            f.float()
        yq = tq.reference_forward(fq, pts)
        truth = all(holds(relation, a, b, eps, "inf") for a, b in zip(y, yq, strict=True))
        assert res.verdict == ("EQUIVALENT" if truth else "NOT_EQUIVALENT"), (relation, res.reason)
