"""QUBO rounding: the energy is the layer's output error, exactly; solvers; round_weights."""

from __future__ import annotations

import dimod
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchqv as tq
from torchqv.rounding import GramStats, build_layer_qubo, solvers


@st.composite
def formats(draw):
    bits = draw(st.integers(1, 8))
    per_channel = draw(st.booleans())
    if bits == 1:
        return tq.Binary(per_channel=per_channel)
    return tq.FixedPoint(
        bits=bits,
        narrow=draw(st.booleans()),
        per_channel=per_channel,
        rounding=draw(st.sampled_from(["half_away", "half_even", "floor"])),
    )


def layer_problem(draw, small=False):
    torch.manual_seed(draw(st.integers(0, 10_000)))
    bias = draw(st.booleans())
    if draw(st.booleans()):
        d = draw(st.integers(1, 6 if small else 12))
        mod = nn.Linear(d, draw(st.integers(1, 4)), bias=bias)
        x = torch.randn(draw(st.integers(1, 40)), d)
    else:
        cin = draw(st.integers(1, 2))
        k = draw(st.integers(1, 2 if small else 3))
        mod = nn.Conv2d(cin, draw(st.integers(1, 3)), k, padding=draw(st.integers(0, 1)), bias=bias)
        x = torch.randn(draw(st.integers(1, 4)), cin, 4, 4)
    with torch.no_grad():
        mod.weight.mul_(draw(st.sampled_from([0.5, 2.0, 6.0])))  # some weights beyond the grid
    quantize_input = draw(st.booleans())
    cfg = tq.QConfig(
        weight=draw(formats()),
        activation=tq.FixedPoint(bits=8),
        input=tq.FixedPoint(bits=6) if quantize_input else None,
    )
    qm = tq.quantize(nn.Sequential(mod), cfg)
    tq.calibrate(qm, [x], progress=False)
    m = qm[0]
    qm.eval()
    inq = qm.input_quant
    xq = inq(x).double() if inq is not None else x.double()
    xf = x.double()
    target = draw(st.sampled_from(["float", "quantized"]))
    stats = GramStats.empty(m.weight[0].numel())
    stats.add(m.patches(xq), m.patches(xq if target == "quantized" else xf))
    bias_step = [s * inq.steps()[0] for s in m.weight_steps()] if m.bias is not None and inq else None
    return m, build_layer_qubo(m, stats, bias_step), xq, (xq if target == "quantized" else xf)


def direct_error(m, problem, z, xq, xt):
    """|| layer(theta(z); xq) - float layer(xt) ||^2 per output neuron, computed directly."""
    theta = problem.theta_low + problem.sigma * z
    w = theta[:-1].T.reshape(m.weight.shape)
    b = theta[-1]
    wf = m.weight.detach().double()
    bf = m.bias.detach().double() if m.bias is not None else None
    if isinstance(m, tq.QuantConv):
        y = F.conv2d(xq, w, b, m.stride, m.pads[0][0], m.dilation)
        t = F.conv2d(xt, wf, bf, m.stride, m.pads[0][0], m.dilation)
        return ((y - t) ** 2).sum((0, 2, 3))
    return ((F.linear(xq, w, b) - F.linear(xt, wf, bf)) ** 2).sum(0)


@given(st.data())
@settings(max_examples=80)
def test_qubo_energy_is_the_output_error(data):
    m, problem, xq, xt = layer_problem(data.draw)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 100)))
    z = (torch.rand(problem.n, problem.neurons, generator=gen) < 0.5).double() * (problem.sigma != 0)
    direct = direct_error(m, problem, z, xq, xt)
    assert torch.allclose(problem.energy(z), direct, rtol=1e-9, atol=1e-9)
    for c in range(problem.neurons):  # the exposed per-neuron QUBO and BQM give the same value
        Q, offset = problem.neuron(c)
        zc = z[:, c].numpy()
        assert float(zc @ Q @ zc + offset) == pytest.approx(float(direct[c]), rel=1e-9, abs=1e-9)
        bqm = problem.bqm(c)
        assert bqm.energy(dict(enumerate(zc))) == pytest.approx(float(direct[c]), rel=1e-9, abs=1e-9)
    # exact decomposition: the layer's Frobenius error is the sum of the neurons' energies
    assert float(problem.energy(z).sum()) == pytest.approx(float(direct.sum()), rel=1e-9, abs=1e-9)


@given(st.data())
@settings(max_examples=60)
def test_rounded_levels_are_on_the_grid_and_adjacent(data):
    m, problem, _, _ = layer_problem(data.draw)
    z = solvers.solve_auto(problem)
    codes = problem.codes(z)[:-1]
    fmt = m.weight_quant.fmt
    kmin, kmax = m.weight_quant.code_range()
    assert bool(((codes >= kmin) & (codes <= kmax)).all())
    s = torch.tensor([float(f) for f in m.weight_steps()], dtype=torch.float64).unsqueeze(0)
    w = m.weight.detach().double().reshape(m.weight.shape[0], -1).T
    gap = (codes * s - w.clamp(kmin * s, kmax * s)).abs()
    assert bool((gap <= (2 if fmt.binary else 1) * s * (1 + 1e-12)).all())


def test_exact_solver_beats_every_other_and_auto_finds_it_mostly():
    found = total = 0
    for seed in range(40):
        torch.manual_seed(seed)
        d = 4 + seed % 9  # up to 13 variables with the bias
        mod = nn.Linear(d, 3)
        with torch.no_grad():
            mod.weight.mul_(1.5)
        bits = [1, 2, 3, 4][seed % 4]
        fmt = tq.Binary() if bits == 1 else tq.FixedPoint(bits=bits, per_channel=True)
        qm = tq.quantize(
            nn.Sequential(mod),
            tq.QConfig(weight=fmt, activation=tq.FixedPoint(bits=8), input=tq.FixedPoint(bits=6)),
        )
        x = torch.randn(30, d)
        tq.calibrate(qm, [x], progress=False)
        m = qm.eval()[0]
        xq = qm.input_quant(x).double()
        stats = GramStats.empty(d)
        stats.add(xq, x.double())
        bias_step = [s * qm.input_quant.steps()[0] for s in m.weight_steps()]
        problem = build_layer_qubo(m, stats, bias_step)
        e_exact = problem.energy(solvers.exact(problem))
        others = [
            problem.energy(solvers.solve_auto(problem, exact_max=0)),  # the annealer, not enumeration
            problem.energy(solvers.neal(problem, 200)),
            problem.energy(solvers.nearest_plane(problem)),
        ]
        for e in others:
            assert bool((e_exact <= e + 1e-9 * e.abs() + 1e-12).all())
        for c in range(problem.neurons):  # cross-check with dimod's brute force
            if len(problem.free(c)) <= 12:
                best = dimod.ExactSolver().sample(problem.bqm(c)).first.energy
                assert float(e_exact[c]) == pytest.approx(best, rel=1e-9, abs=1e-9)
        lb = solvers.lower_bound(problem)
        assert bool((lb <= e_exact + 1e-7 * e_exact.abs() + 1e-9).all())
        auto = others[0]
        found += int((auto <= e_exact + 1e-9 * e_exact.abs() + 1e-12).sum())
        total += problem.neurons
    rate = found / total
    print(f"auto solver found the exact optimum on {found}/{total} neurons ({rate:.1%})")
    assert rate >= 0.9


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3)
    )


@pytest.mark.parametrize("solver", ["auto", "neal", "nearest"])
def test_round_weights_improves_and_stays_exact(solver):
    x = torch.randn(64, 1, 6, 6)
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=3, per_channel=True),
        activation=tq.FixedPoint(bits=8),
        input=tq.FixedPoint(bits=8),
    )
    qm = tq.quantize(small_model(), cfg)
    tq.calibrate(qm, [x], progress=False)
    report = tq.round_weights(qm, [x[:32], x[32:]], solver=solver, num_sweeps=200, bound=True, progress=False)
    assert [r.layer for r in report.layers] == ["0", "3", "5"]
    for r in report.layers:
        assert r.objective <= r.nearest
        if solver != "nearest":
            assert r.bound is not None and r.bound <= r.objective * (1 + 1e-9)
    if solver != "nearest":
        assert report.layers[1].objective < 0.5 * report.layers[1].nearest
    assert "| layer |" in report.table() and report.to_dict()["layers"][0]["layer"] == "0"
    xt = torch.randn(8, 1, 6, 6)
    assert torch.equal(qm.eval()(xt), tq.reference_forward(qm, xt))


def test_round_weights_exact_solver_on_tiny_layers():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    cfg = tq.QConfig(weight=tq.Ternary(per_channel=True), activation=tq.FixedPoint(bits=8))
    x = torch.randn(50, 5)
    results = {}
    for solver in ("exact", "auto", "nearest"):
        qm = tq.quantize(model, cfg)
        tq.calibrate(qm, [x], progress=False)
        results[solver] = tq.round_weights(qm, [x], solver=solver, progress=False).layers[0].objective
    assert results["exact"] <= results["auto"] + 1e-9 <= results["nearest"] + 1e-9


def test_round_weights_errors():
    qm = tq.quantize(small_model(), tq.QConfig(weight=tq.FixedPoint(bits=4)))
    with pytest.raises(tq.QuantizationError, match="solver"):
        tq.round_weights(qm, [torch.randn(2, 1, 6, 6)], solver="gurobi")
    with pytest.raises(tq.QuantizationError, match="calibration data"):
        tq.round_weights(qm, [])
    with pytest.raises(tq.QuantizationError, match="no quantized layer"):
        tq.round_weights(tq.quantize(small_model(), tq.QConfig()), [torch.randn(2, 1, 6, 6)])
