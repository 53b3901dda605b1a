"""The verifier on whole quantized graphs: residual adds, concatenation, splits, max and average
pooling, folded BatchNorm, depthwise and grouped convolutions, products with constants, and
convolutions stored as sparse rows.

The chains the builder lowers a graph to are checked point by point against the integer
reference (``reference_forward(..., exact=True)``, an independent executor of the same graph)
and the float model; verdicts on graphs are checked against exhaustive enumeration in
``tests/test_soundness.py`` (its ``residual``, ``concat`` and ``pool`` kinds)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchqv as tq
from torchqv.models import resnet20
from torchqv.verify.network import Act, Affine, float_chain, quant_chain

W4A6 = tq.QConfig(weight=tq.FixedPoint(bits=4), activation=tq.FixedPoint(bits=6), input=tq.FixedPoint(bits=6))


class Mixed(nn.Module):
    """Every join the builder lowers: a residual add (two reads of one value), a split and a
    concatenation, max and average pooling, a product and a difference with constants."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 2, 3, padding=1)
        self.dw = nn.Conv2d(2, 2, 3, padding=1, groups=2)
        self.g = nn.Conv2d(4, 4, 1, groups=2)
        self.fc = nn.Linear(4 * 2 * 2 + 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.c1(x)))
        y = F.relu(self.c2(h) + x)  # residual add
        a, b = torch.chunk(y, 2, dim=1)  # a split
        z = torch.cat([self.dw(y), F.leaky_relu(a - b * 0.5, 0.25), nn.functional.hardtanh(b)], dim=1)
        p = F.max_pool2d(self.g(z), 2)
        q = F.adaptive_avg_pool2d(y, 1).flatten(1)
        return self.fc(torch.cat([p.flatten(1), q * 2], dim=1))


def _calibrated(f: nn.Module, cfg: tq.QConfig, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    fq = tq.quantize(f, cfg)
    tq.calibrate(fq, [torch.randn(64, *shape)], progress=False)
    return fq.eval()


def _fractions(x: torch.Tensor) -> list[Fraction]:
    return [Fraction(v) for v in x.reshape(-1).double().tolist()]


def _agree_with_reference(fq: nn.Module, shape: tuple[int, ...], n: int = 3) -> None:
    chain = quant_chain(fq, shape)
    for x in torch.randn(n, *shape):
        got = chain.exact(_fractions(x))
        want = tq.reference_forward(fq, x[None], exact=True).reshape(-1).tolist()
        assert got == [Fraction(v) for v in want]


def test_mixed_graph_chain_equals_the_integer_reference_and_the_float_model() -> None:
    torch.manual_seed(0)
    f = Mixed()
    f.bn.running_mean.uniform_(-0.5, 0.5)
    f.bn.running_var.uniform_(0.5, 2.0)
    f.eval()
    shape = (2, 4, 4)
    fq = _calibrated(f, W4A6, shape)
    _agree_with_reference(fq, shape)
    cf = float_chain(f, shape)
    for x in torch.randn(3, *shape):
        got = np.array([float(v) for v in cf.exact(_fractions(x))])
        np.testing.assert_allclose(
            got, f(x[None]).double().reshape(-1).detach().numpy(), rtol=1e-5, atol=1e-5
        )


def test_values_read_twice_are_carried_unrounded_next_to_the_new_rows() -> None:
    """A residual block's input is copied through the layers in between: the copies are exact
    (no rounding of those coordinates), the new rows are rounded to the node's format."""
    f = nn.Sequential(nn.Linear(3, 3))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2 = nn.Linear(3, 5), nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.l2(F.relu(self.l1(x))) + x)

    f = Block().eval()
    fq = _calibrated(f, W4A6, (3,))
    chain = quant_chain(fq, (3,))
    first = chain.layers[0]
    assert isinstance(first, Affine) and first.rounded is not None
    assert first.rounded.tolist() == [True] * 5 + [False] * 3  # l1's rows, then the carried x
    relu = chain.layers[1]
    assert (
        isinstance(relu, Act) and relu.active is not None and relu.active.tolist() == [True] * 5 + [False] * 3
    )
    _agree_with_reference(fq, (3,), n=5)


def test_max_pooling_is_exact_on_ties_and_padding() -> None:
    """max via a + relu(b - a): equal values, negative values next to -inf padding, windows of
    1 to 9 elements, ceil mode."""
    for kw in ({"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, {"kernel_size": 2}):
        f = nn.Sequential(nn.Conv2d(1, 2, 1), nn.MaxPool2d(**kw), nn.Flatten()).eval()
        fq = _calibrated(f, W4A6, (1, 5, 5))
        chain = quant_chain(fq, (1, 5, 5))
        for x in [torch.zeros(1, 5, 5), -torch.ones(1, 5, 5), torch.randn(1, 5, 5)]:
            want = tq.reference_forward(fq, x[None], exact=True).reshape(-1).tolist()
            assert chain.exact(_fractions(x)) == [Fraction(v) for v in want]


def test_large_convolutions_are_sparse_rows_not_a_dense_expansion() -> None:
    """A LeNet-sized conv (32 x 24 x 24 outputs over 784 inputs: 14.5M dense entries) is stored as
    sparse rows; the chain still equals the reference."""
    f = nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    ).eval()  # fmt: skip
    fq = _calibrated(f, W4A6, (1, 28, 28))
    chain = quant_chain(fq, (1, 28, 28))
    first = chain.layers[0]
    assert isinstance(first, Affine) and first.sparse and first.ints.shape == (32 * 24 * 24, 784)
    assert 0 < first.nnz <= 32 * 24 * 24 * 25  # one entry per nonzero weight code and position
    x = torch.rand(1, 1, 28, 28)
    want = tq.reference_forward(fq, x, exact=True).reshape(-1).tolist()
    assert chain.exact(_fractions(x)) == [Fraction(v) for v in want]


def test_lenet_region_is_decided_with_sparse_layers() -> None:
    """A LeNet-shaped net on 14 x 14 inputs: a small region is decided (bounds, LP or z3), and a
    counterexample, if any, replays exactly."""
    torch.manual_seed(1)
    f = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 10),
    ).eval()  # fmt: skip
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=8),
        activation=tq.FixedPoint(bits=8),
        input=tq.FixedPoint(bits=8, signed=False),
    )
    fq = tq.quantize(f, cfg)
    tq.calibrate(fq, [torch.rand(64, 1, 14, 14)], progress=False)
    fq.eval()
    x = torch.rand(2, 1, 14, 14)
    results = tq.verify_equivalence(f, fq, x, 0.01, relation="top1", domain=(0.0, 1.0), timeout=30, seed=0)
    assert all(r.verdict in ("EQUIVALENT", "NOT_EQUIVALENT") for r in results), [r.reason for r in results]


def test_resnet20_region_runs_through_every_stage() -> None:
    """ResNet-20 (BN folded, residual adds with 1x1 shortcut convs, global average pooling) on
    6 x 6 inputs: read, bounded and decided or UNKNOWN at its time limit, never an error."""
    torch.manual_seed(0)
    f = resnet20(num_classes=4, in_channels=1).eval()
    fq = _calibrated(f, tq.QConfig(weight=tq.FixedPoint(bits=8), activation=tq.FixedPoint(bits=8),
                                   input=tq.FixedPoint(bits=8)), (1, 6, 6))  # fmt: skip
    _agree_with_reference(fq, (1, 6, 6), n=1)
    (res,) = tq.verify_equivalence(f, fq, torch.randn(1, 1, 6, 6), 0.04, relation="top1", timeout=10, seed=0)
    assert res.verdict in ("EQUIVALENT", "NOT_EQUIVALENT", "UNKNOWN")
    if res.verdict == "UNKNOWN":
        assert "timeout" in res.reason


def test_products_of_two_tensors_are_named_before_any_work() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.l(x) * x

    f = Gate().eval()
    fq = _calibrated(f, W4A6, (2,))
    with pytest.raises(tq.UnsupportedModelError, match="products with constants"):
        tq.verify_equivalence(f, fq, torch.zeros(1, 2), 0.1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "shape"),
    [("resnet18", (3, 32, 32)), ("mobilenet_v2", (3, 32, 32)), ("squeezenet1_1", (3, 48, 48))],
)
def test_torchvision_networks_are_read_exactly(name: str, shape: tuple[int, ...]) -> None:
    """torchvision's resnet18, mobilenet_v2 (ReLU6, depthwise convs, linear bottlenecks) and
    squeezenet1_1 (concatenated branches, ceil-mode max pooling, global average pooling) as
    chains: exactly the integer reference on a point; vgg11_bn's 25088 x 4096 classifier is
    refused by size with the fix."""
    import torchvision

    torch.manual_seed(0)
    f = getattr(torchvision.models, name)(num_classes=10).eval()
    fq = _calibrated(f, tq.QConfig(weight=tq.FixedPoint(bits=8), activation=tq.FixedPoint(bits=8),
                                   input=tq.FixedPoint(bits=8)), shape)  # fmt: skip
    _agree_with_reference(fq, shape, n=1)


def test_layers_beyond_the_size_limit_are_refused_with_the_fix() -> None:
    f = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 20000)).eval()
    fq = _calibrated(f, W4A6, (3, 32, 32))
    with pytest.raises(tq.UnsupportedModelError, match="smaller inputs or fewer channels"):
        quant_chain(fq, (3, 32, 32))


def test_sparse_rows_evaluate_exactly_as_dense_rows_in_both_integer_paths() -> None:
    """``Affine.exact`` on CSR rows equals the dense object-array product and a plain Fraction
    sum, on values small enough for int64 and on values that force Python ints."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    ints = rng.integers(-7, 8, size=(6, 9)) * (rng.random((6, 9)) < 0.5)
    scale, bias = [Fraction(1, 3)] * 6, [Fraction(k, 5) for k in range(6)]
    dense = Affine.from_ints(ints, scale, bias)
    sparse = Affine.from_ints(sp.csr_matrix(ints), scale, bias)
    assert sparse.sparse and not dense.sparse
    for big in (1, 2**70):
        v = [Fraction(int(k) * big, 7) for k in rng.integers(-100, 100, size=9)]
        want = [
            sum((int(ints[i, j]) * v[j] for j in range(9)), Fraction(0)) * scale[i] + bias[i]
            for i in range(6)
        ]
        assert sparse.exact(v) == dense.exact(v) == want
        assert sparse.exact(v, [4, 1]) == [want[4], want[1]]
