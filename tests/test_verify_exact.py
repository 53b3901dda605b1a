"""The verifier's exact semantics: regressions of issue 13's D1-D8 and minor items, and issue 17's
empty regions (each test reproduces the issue's example or its mechanism)."""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import pytest
import torch
import z3
from torch import nn

import torchqv as tq
from torchqv.verify import from_onnx
from torchqv.verify.engine import holds_exact
from torchqv.verify.network import float_chain
from torchqv.verify.queries import sat_point
from torchqv.verify.region import down, up

from .conftest import SHARED_DATA


def check_counterexample(f, fq, res, relation, eps=None, norm="inf") -> list[Fraction]:
    """The reported point violates the relation exactly (f in rationals, f' by the reference run
    on the reported double, whose input codes are the exact point's)."""
    assert res.verdict == "NOT_EQUIVALENT"
    x = [Fraction(v) for v in np.asarray(res.counterexample_exact, dtype=object).reshape(-1).tolist()]
    y = float_chain(f, len(x)).exact(x)
    yq = [Fraction(v) for v in tq.reference_forward(fq, res.counterexample[None], exact=True).reshape(-1)]
    assert (y, yq) == res.outputs_exact
    assert not holds_exact(relation, y, yq, None if eps is None else Fraction(eps), norm)
    return x


# ------------------------------------------------------------------------------------- D1
def d1_pair() -> tuple[nn.Module, nn.Module]:
    """x0 = 3/5 makes f''s first rounding an exact tie (5 * 3/5 + 2 = 5, step 2/5, ties to even:
    down); at the double 0.6000000000000001 it rounds up.  The violation (f class 0, f' class 1)
    is at (3/5, 2/5, *) only: an interior line of the region."""
    f = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    with torch.no_grad():
        f[0].weight.copy_(torch.tensor([[5.2, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        f[0].bias.copy_(torch.tensor([2.0, 0.0]))
        f[1].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        f[1].bias.copy_(torch.tensor([0.0, 5.4]))
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=4, step=1),
        activation=tq.FixedPoint(bits=8, step="2/5", rounding="half_even"),
        input=tq.FixedPoint(bits=6, step="1/5"),
    )
    return f, tq.quantize(f, cfg).eval()


@pytest.mark.parametrize("use_bounds", [True, False])
def test_d1_a_coordinate_with_one_point_of_a_non_dyadic_grid_is_that_rational(use_bounds):
    f, fq = d1_pair()
    box = (torch.tensor([[0.55, -1.6, -2.0]]), torch.tensor([[0.65, 3.0, 2.0]]))  # x0: only 3/5
    (res,) = tq.verify_equivalence(f, fq, boxes=box, samples=0, use_bounds=use_bounds, timeout=60)
    x = check_counterexample(f, fq, res, "top1")
    assert x[:2] == [Fraction(3, 5), Fraction(2, 5)]
    assert res.stats["grid_points"] == 1 * 24 * 21


# ------------------------------------------------------------------------------------- D2
def d2_pair() -> tuple[nn.Module, nn.Module]:
    f = nn.Linear(1, 1)
    with torch.no_grad():
        f.weight.fill_(1.0)
        f.bias.zero_()
    one = tq.FixedPoint(bits=4, step=1)
    return f, tq.quantize(f, tq.QConfig(weight=one, activation=one, input=tq.FixedPoint(bits=6, step="1/5")))


@pytest.mark.parametrize("delta", [0.1, Fraction(1, 10), "1/10"])
def test_d2_the_closed_ball_keeps_grid_points_on_its_boundary(delta):
    """x = 0.5, delta = 0.1: 2/5 and 3/5 are in the ball (at distance 1/10, or just under for the
    double 0.1), and |f - f'| = 2/5 there."""
    f, fq = d2_pair()
    (res,) = tq.verify_equivalence(f, fq, torch.tensor([[0.5]]), delta, relation="eps", eps=0.25)
    assert res.stats["grid_points"] == 2
    x = check_counterexample(f, fq, res, "eps", 0.25)
    assert x in ([Fraction(2, 5)], [Fraction(3, 5)])


# ------------------------------------------------------------------------------------- D3, D6
def d6_pair() -> tuple[nn.Module, nn.Module, Fraction]:
    """f(1, 1) = 1 + 2^-30 + 3 * 2^-53 (float64 rounds it up to 1 + 2^-30 + 2^-51); f'(1, 1) = 1."""
    f = nn.Linear(2, 1)
    with torch.no_grad():
        f.weight.copy_(torch.tensor([[1.0, 2.0**-30 * (1 + 3 * 2.0**-23)]]))
        f.bias.zero_()
    one = tq.FixedPoint(bits=6, step=1)
    fq = tq.quantize(f, tq.QConfig(weight=tq.FixedPoint(bits=4, step="1/4"), activation=one, input=one))
    return f, fq, Fraction(1, 2**30) + Fraction(3, 2**53)


@pytest.mark.parametrize("norm", ["inf", "l1"])
@pytest.mark.parametrize("samples", [0, 256])
def test_d6_eps_equal_to_the_difference_holds_and_one_ulp_less_does_not(norm, samples):
    f, fq, d = d6_pair()
    with torch.no_grad():  # the float64 model overshoots: a float check would call this a violation
        assert float(f.double()(torch.ones(1, 2, dtype=torch.float64))) - 1 > float(d)
    point = torch.ones(1, 2)
    for eps in (float(d), d, str(d)):
        (res,) = tq.verify_equivalence(f, fq, point, 0.0, relation="eps", eps=eps, norm=norm, samples=samples)
        assert res.verdict == "EQUIVALENT", res.reason
    below = float(np.nextafter(float(d), 0.0))
    (res,) = tq.verify_equivalence(f, fq, point, 0.0, relation="eps", eps=below, norm=norm, samples=samples)
    check_counterexample(f, fq, res, "eps", below, norm)
    assert res.outputs_exact[0][0] - res.outputs_exact[1][0] == d


def d3_pair() -> tuple[nn.Module, nn.Module, Fraction]:
    """One grid point x = 7/10: f = x / 4 = 7/40 (not a double), f' = 0 (the weight rounds to 0)."""
    f = nn.Linear(1, 1)
    with torch.no_grad():
        f.weight.fill_(0.25)
        f.bias.zero_()
    fq = tq.quantize(
        f,
        tq.QConfig(
            weight=tq.FixedPoint(bits=4, step=1),
            activation=tq.FixedPoint(bits=6, step=1),
            input=tq.FixedPoint(bits=4, step="1/10"),
        ),
    )
    return f, fq, Fraction(7, 40)


@pytest.mark.parametrize("samples", [0, 256])
def test_d3_one_point_region_with_eps_at_the_float_difference_is_decided(samples):
    """The LP of a one-point region has no variable; |f - f'| = 7/40 and eps is the double just
    below it, while float64 at float32(0.7) (just below 7/10) sees 0.17499999702 < eps: a float
    replay cannot confirm the violation that exact arithmetic shows (once a crash)."""
    f, fq, d = d3_pair()
    point = torch.tensor([[0.7]])
    below = down(d)
    assert below < d and 0.25 * float(np.float32(0.7)) < below
    (res,) = tq.verify_equivalence(f, fq, point, 0.01, relation="eps", eps=below, samples=samples)
    assert res.stats["grid_points"] == 1
    x = check_counterexample(f, fq, res, "eps", below)
    assert x == [Fraction(7, 10)] and res.outputs_exact == ([d], [Fraction(0)])
    (res,) = tq.verify_equivalence(f, fq, point, 0.01, relation="eps", eps=up(d), samples=samples)
    assert res.verdict == "EQUIVALENT"


# ------------------------------------------------------------------------------------- D4
def test_d4_a_box_or_ball_disjoint_from_the_domain_is_an_error():
    f = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    fq = tq.quantize(f, tq.QConfig(weight=tq.FixedPoint(bits=4), activation=tq.FixedPoint(bits=4)))
    tq.calibrate(fq, [torch.randn(32, 2)], progress=False)
    with pytest.raises(tq.QuantizationError, match=r"boxes \[1\] are disjoint from domain"):
        tq.verify_equivalence(
            f, fq, boxes=(torch.tensor([[0.0, 0.0], [2.0, 2.0]]), torch.tensor([[0.5, 0.5], [3.0, 3.0]])),
            domain=(-1.0, 1.0),
        )  # fmt: skip
    with pytest.raises(tq.QuantizationError, match=r"points \[0\] lie outside domain"):
        tq.verify_equivalence(f, fq, torch.tensor([[1.0, 1.0]]), 0.5, domain=(-3.0, -1.0))


# ------------------------------------------------------------------------------------- D5
def test_d5_f_has_one_meaning_on_a_non_dyadic_grid_whatever_the_seed():
    """At x = 1/3, f's outputs tie exactly (class 0, the first); at float32(1/3) class 1 wins.
    f' ties too (class 0): the pair is equivalent on {1/3}, for every seed."""
    f = nn.Linear(1, 2)
    with torch.no_grad():
        f.weight.copy_(torch.tensor([[0.0], [3.0]]))
        f.bias.copy_(torch.tensor([1.0, 0.0]))
    fq = tq.quantize(
        f,
        tq.QConfig(
            weight=tq.FixedPoint(bits=4, step=1),
            activation=tq.FixedPoint(bits=6, step="1/4"),
            input=tq.FixedPoint(bits=4, step="1/3"),
        ),
    )
    with torch.no_grad():  # the float32 point's view, in float64
        view = torch.tensor([[1 / 3]], dtype=torch.float32).double() * f.weight.double().T + f.bias.double()
        assert int(view.argmax()) == 1
    for seed in range(6):
        (res,) = tq.verify_equivalence(f, fq, torch.tensor([[1 / 3]]), 0.1, seed=seed)
        assert res.verdict == "EQUIVALENT", (seed, res.reason)


# ------------------------------------------------------------------------------------- D7
def test_d7_sat_without_a_model_is_unknown_not_a_crash():
    s = z3.Solver()  # no check yet: "model is not available", as after an interrupted sat
    with pytest.raises(z3.Z3Exception):
        s.model()
    assert sat_point(s, lambda m: m) is None


def test_d7_tiny_timeouts_give_verdicts_not_crashes():
    torch.manual_seed(1)
    f = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))
    fq = tq.quantize(
        f,
        tq.QConfig(
            weight=tq.FixedPoint(bits=4), activation=tq.FixedPoint(bits=5), input=tq.FixedPoint(bits=6)
        ),
    )
    tq.calibrate(fq, [torch.randn(64, 4)], progress=False)
    points = torch.randn(6, 4)
    for timeout in (0.01, 0.02, 0.04, 0.08):
        for res in tq.verify_equivalence(f, fq, points, 0.3, timeout=timeout, samples=0):
            assert res.verdict in ("EQUIVALENT", "NOT_EQUIVALENT", "UNKNOWN")
            if res.verdict == "UNKNOWN":
                assert "timeout" in res.reason


# ------------------------------------------------------------------------------------- D8
SLACK = 1.5  # seconds a region may run past its timeout (one LP solve or neuron past the check)


def test_d8_time_limit_holds_on_a_deeper_network():
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(40, 64)]
    for _ in range(5):
        layers += [nn.ReLU(), nn.Linear(64, 64)]
    layers += [nn.ReLU(), nn.Linear(64, 10)]
    f = nn.Sequential(*layers)
    fq = tq.quantize(
        f,
        tq.QConfig(
            weight=tq.FixedPoint(bits=8, per_channel=True),
            activation=tq.FixedPoint(bits=8),
            input=tq.FixedPoint(bits=8, signed=False),
        ),
    )
    tq.calibrate(fq, [torch.rand(256, 40)], progress=False)
    t0 = time.perf_counter()
    results = tq.verify_equivalence(f, fq, torch.rand(2, 40), 0.1, domain=(0.0, 1.0), timeout=2.0, samples=0)
    for res in results:  # regions chosen to run to the limit (a faster engine needs harder ones)
        assert res.verdict == "UNKNOWN" and "timeout" in res.reason
        assert res.stats["seconds"] <= 2.0 + SLACK, res.stats
    assert time.perf_counter() - t0 <= 2 * (2.0 + SLACK) + 1.0


@pytest.mark.skipif(not (SHARED_DATA / "onnx" / "mnist-net_256x6.onnx").exists(), reason="no shared data")
def test_d8_time_limit_holds_on_mnist_256x6():
    f = from_onnx(SHARED_DATA / "onnx" / "mnist-net_256x6.onnx")
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=8, per_channel=True),
        activation=tq.FixedPoint(bits=8),
        input=tq.FixedPoint(bits=8, signed=False),
    )
    fq = tq.quantize(f, cfg)
    gen = torch.Generator().manual_seed(0)
    tq.calibrate(fq, [torch.rand(64, 784, 1, generator=gen)], progress=False)
    x = torch.rand(1, 784, 1, generator=gen)
    (res,) = tq.verify_equivalence(f, fq, x, 0.05, domain=(0.0, 1.0), timeout=4.0, samples=0)
    assert res.verdict == "UNKNOWN" and "timeout" in res.reason  # it runs to the limit
    assert res.stats["seconds"] <= 4.0 + SLACK, res.stats


# ------------------------------------------------------------------------------------- issue 17
def grid_pair() -> tuple[nn.Module, nn.Module]:
    f = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    fq = tq.quantize(
        f,
        tq.QConfig(
            weight=tq.FixedPoint(bits=4),
            activation=tq.FixedPoint(bits=6),
            input=tq.FixedPoint(bits=8, step=Fraction(1, 255), signed=False),
        ),
    )
    tq.calibrate(fq, [torch.rand(32, 3)], progress=False)
    return f, fq


def test_empty_regions_are_user_errors_named_with_the_fix():
    f, fq = grid_pair()
    pts = torch.tensor([[0.5, 0.5, 0.5], [128.0, 3.0, 255.0]])
    with pytest.raises(tq.QuantizationError, match=r"domain=\(1.0, 0.0\) is empty: lo > hi.*lo <= hi"):
        tq.verify_equivalence(f, fq, pts[:1], 0.01, domain=(1.0, 0.0))
    with pytest.raises(
        tq.QuantizationError, match=r"points \[1\] lie outside domain.*pixels 0-255 to \[0, 1\]"
    ):
        tq.verify_equivalence(f, fq, pts, 0.01, domain=(0.0, 1.0))
    off = torch.tensor([[100.5, 50.5, 200.5], [10.5, 20.5, 30.5], [60.5, 70.5, 80.5]]) / 255  # between points
    with pytest.raises(
        tq.QuantizationError, match=r"point\(s\) \[0, 1, 2\] hold\(s\) no grid point.*increase delta"
    ):
        tq.verify_equivalence(f, fq, off, 0.001, domain=(0.0, 1.0))
    lo, hi = torch.tensor([[25.1, 25.1, 25.1]]) / 255, torch.tensor([[25.6, 25.6, 25.6]]) / 255
    with pytest.raises(
        tq.QuantizationError, match=r"box\(es\) \[0\] hold\(s\) no grid point.*widen the boxes"
    ):
        tq.verify_equivalence(f, fq, boxes=(lo, hi))
    (res,) = tq.verify_equivalence(f, fq, off[:1], 0.002, domain=(0.0, 1.0))  # both neighbours
    assert res.verdict != "UNKNOWN" and res.stats["grid_points"] == 8


def test_empty_regions_are_found_before_any_solving():
    """A hard network and an empty region among easy ones: the error comes at once."""
    f, fq = grid_pair()
    pts = torch.randint(0, 256, (50, 3)) / 255  # grid points
    pts[37] = torch.tensor([100.5, 50.5, 200.5]) / 255
    t0 = time.perf_counter()
    with pytest.raises(tq.QuantizationError, match=r"\[37\]"):
        tq.verify_equivalence(f, fq, pts, 0.001, domain=(0.0, 1.0), timeout=60)
    assert time.perf_counter() - t0 < 5


# ------------------------------------------------------------------------------------- minor items
def test_negative_leaky_relu_slopes_are_a_clear_error_up_front():
    f = nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(-0.5), nn.Linear(3, 2))
    fq = tq.quantize(f, tq.QConfig(weight=tq.FixedPoint(bits=4), activation=tq.FixedPoint(bits=6)))
    tq.calibrate(fq, [torch.randn(16, 2)], progress=False)
    with pytest.raises(tq.QuantizationError, match="negative_slope >= 0"):
        tq.verify_equivalence(f, fq, torch.zeros(1, 2), 0.1)


def onnx_model(nodes, inits, d_in: int, d_out: int, out: str):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d_in])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, d_out])],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def test_onnx_leaky_relu_clip_and_identity_constants_become_layers(tmp_path):
    import onnx
    from onnx import helper

    rng = np.random.default_rng(0)
    W1, b1, W2, b2 = rng.normal(size=(4, 3)), rng.normal(size=4), rng.normal(size=(2, 4)), rng.normal(size=2)
    nodes = [
        helper.make_node("Identity", ["b1"], ["b1_shared"]),  # a bias shared through an Identity
        helper.make_node("Identity", ["W2"], ["W2_id"]),
        helper.make_node("Gemm", ["x", "W1", "b1_shared"], ["h"], transB=1),
        helper.make_node("LeakyRelu", ["h"], ["a"], alpha=0.25),
        helper.make_node("Gemm", ["a", "W2_id", "b2"], ["z"], transB=1),
        helper.make_node("Clip", ["z", "lo", "hi"], ["y"]),
    ]
    inits = {"W1": W1, "b1": b1, "W2": W2, "b2": b2, "lo": np.float32(-1.0), "hi": np.float32(1.5)}
    path = tmp_path / "net.onnx"
    onnx.save(onnx_model(nodes, inits, 3, 2, "y"), path)
    f = from_onnx(path)
    kinds = [type(m).__name__ for m in f.children()]
    assert kinds == ["Linear", "LeakyReLU", "Linear", "Hardtanh"], kinds
    x = torch.randn(5, 3)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(path)).run(None, {"x": x[:1].numpy()})[0]
    with torch.no_grad():
        assert np.allclose(f(x[:1]).numpy(), ref, atol=1e-6)
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=6), activation=tq.FixedPoint(bits=6), input=tq.FixedPoint(bits=6)
    )
    fq = tq.quantize(f, cfg)
    tq.calibrate(fq, [x * 2], progress=False)
    with torch.no_grad():
        assert torch.equal(fq.eval()(x), tq.reference_forward(fq, x))
    for res in tq.verify_equivalence(f, fq, x[:2], 0.1, relation="eps", eps=0.5, timeout=30):
        assert res.verdict in ("EQUIVALENT", "NOT_EQUIVALENT"), res.reason


def test_exact_numbers_for_delta_and_eps_and_the_counterexample_fields():
    f, fq = d2_pair()
    (res,) = tq.verify_equivalence(f, fq, torch.tensor([[0.5]]), "1/10", relation="eps", eps="1/4")
    assert res.counterexample.dtype == torch.float64 and res.counterexample.shape == (1,)
    assert res.counterexample_exact.shape == (1,) and isinstance(res.counterexample_exact[0], Fraction)
    with pytest.raises(tq.QuantizationError, match="eps > 0"):
        tq.verify_equivalence(f, fq, torch.tensor([[0.5]]), 0.1, relation="eps", eps="nan")
    with pytest.raises(tq.QuantizationError, match="delta"):
        tq.verify_equivalence(f, fq, torch.tensor([[0.5]]), "-1/10")
