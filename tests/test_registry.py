"""Every registered operation in every executor, against the integer reference.

For each operation class of the registry there is a small model that exercises it (an
operation added without an example fails ``test_every_operation_has_an_example``).  Each model
is quantized with fixed steps (so that rounding ties happen: inputs put on ties of the input
grid, sums and averages of codes landing halfway between output codes) and every rounding rule;
then the exact simulation, the integer ONNX form (in onnxruntime), the verifier's chain (where
the verifier reads the operation) and the training path are checked against
``reference_forward``.
"""

from __future__ import annotations

import operator
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchqv as tq
from torchqv.ops import registered
from torchqv.ops.activation import QuantAct
from torchqv.ops.affine import QuantBatchNorm, QuantConv, QuantLinear
from torchqv.ops.join import QuantAdd, QuantCat, QuantMul
from torchqv.ops.movement import Dropout, Movement
from torchqv.ops.norm import QuantLayerNorm
from torchqv.ops.pool import AdaptiveAvgPool, AvgPool, MaxPool, Reduce
from torchqv.verify.network import quant_chain


class Lambda(nn.Module):
    def __init__(self, fn, *mods: nn.Module):
        super().__init__()
        self.fn, self.mods = fn, nn.ModuleList(mods)

    def forward(self, x):
        return self.fn(x, *self.mods)


def bn(c: int) -> nn.Module:
    m = nn.BatchNorm2d(c)
    with torch.no_grad():
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
    return m.eval()


# op class -> (model builder, per-sample input shape, does the verifier read it)
EXAMPLES = {
    QuantLinear: (lambda: nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)), (6,), True),
    QuantConv: (
        lambda: Lambda(
            lambda x, c2, c1: c1(c2(x).flatten(2)),
            nn.Conv2d(2, 4, 3, padding=1, groups=2, dilation=1),
            nn.Conv1d(4, 3, 2, stride=2, padding=1, padding_mode="replicate"),
        ),
        (2, 4, 4),
        True,
    ),
    QuantBatchNorm: (lambda: nn.Sequential(nn.ReLU(), bn(2)), (2, 3, 3), True),
    QuantAct: (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.Hardswish(), nn.Linear(5, 5), nn.Sigmoid()),
        (4,),
        False,
    ),
    QuantAdd: (
        lambda: Lambda(lambda x, a, b: a(x) + b(x) - 0.75, nn.Linear(4, 3), nn.Linear(4, 3)),
        (4,),
        False,
    ),
    QuantMul: (lambda: Lambda(lambda x, a: a(x) * x[:, :3] / 3, nn.Linear(4, 3)), (4,), False),
    QuantCat: (lambda: Lambda(lambda x, a: torch.cat([a(x), x], 1), nn.Linear(4, 2)), (4,), False),
    MaxPool: (
        lambda: nn.Sequential(nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), nn.Flatten()),
        (1, 5, 5),
        False,
    ),
    AvgPool: (
        lambda: nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
        (1, 5, 5),
        False,
    ),
    AdaptiveAvgPool: (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 5, 4), False),
    Reduce: (lambda: Lambda(lambda x: x.mean((1, 2)) + torch.sum(x, 2)[:, 0]), (2, 3, 3), False),
    Movement: (
        lambda: Lambda(
            lambda x, a: a(x.view(x.size(0), 2, -1).transpose(1, 2).flatten(1)[:, 1:]), nn.Linear(5, 2)
        ),
        (2, 3),
        True,
    ),
    Dropout: (lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.ReLU()), (4,), True),
    QuantLayerNorm: (lambda: nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6)), (5,), False),
}


def test_every_operation_has_an_example():
    assert set(registered()) == set(EXAMPLES), "add an example for every new operation"


def formats(rounding: str, step_in: str, step_act: str) -> tq.QConfig:
    return tq.QConfig(
        weight=tq.FixedPoint(bits=4, per_channel=True, rounding=rounding),
        activation=tq.FixedPoint(bits=7, step=step_act, rounding=rounding),
        input=tq.FixedPoint(bits=6, step=step_in, rounding=rounding),
    )


def tie_inputs(shape: tuple[int, ...], step: Fraction, gen: torch.Generator) -> torch.Tensor:
    """Inputs half of which lie exactly on rounding ties (k + 1/2) * step of the input grid."""
    x = torch.randn((4, *shape), generator=gen) * 3
    k = torch.randint(-20, 20, x.shape, generator=gen).double()
    ties = ((k + 0.5) * float(step)).float()
    return torch.where(torch.rand(x.shape, generator=gen) < 0.5, ties, x)


@pytest.mark.parametrize("op", list(EXAMPLES), ids=lambda c: c.__name__)
@given(
    rounding=st.sampled_from(["half_away", "half_even", "floor"]),
    steps=st.sampled_from([("1/4", "1/2"), ("1/8", "1/4"), ("1/3", "1/6")]),
    seed=st.integers(0, 1000),
)
@settings(max_examples=6)
def test_operation_in_every_executor(op, rounding, steps, seed, tmp_path_factory):
    build, shape, verifier_reads = EXAMPLES[op]
    torch.manual_seed(seed)
    model = build().eval()
    qm = tq.quantize(model, formats(rounding, *steps))
    assert any(isinstance(o, op) for _, o in qm.operations())
    gen = torch.Generator().manual_seed(seed)
    tq.calibrate(qm, [tie_inputs(shape, Fraction(steps[0]), gen)], progress=False)  # weights only
    x = tie_inputs(shape, Fraction(steps[0]), gen)
    y = qm.eval()(x)
    assert torch.equal(y, tq.reference_forward(qm, x))  # the simulation is the integer reference
    path = tmp_path_factory.mktemp("onnx") / "int.onnx"
    tq.export_onnx(qm, x[:1], path)
    assert tq.check_onnx_parity(qm, path, x).exact  # onnxruntime computes the same codes
    if verifier_reads:  # the verifier's exact chain means the same network
        chain = quant_chain(qm, shape)
        exact = tq.reference_forward(qm, x, exact=True)
        for i in range(len(x)):
            got = chain.exact([Fraction(float(v)) for v in x[i].flatten().tolist()])
            assert got == list(exact[i].flatten())
    qm.train()
    out = qm(x)
    assert out.shape == y.shape and bool(torch.isfinite(out).all())


def test_functional_and_method_forms_are_the_same_operations():
    """F.relu / x.relu() / nn.ReLU, torch.add / operator.add, F.max_pool2d / nn.MaxPool2d: one
    operation class each, one semantics."""
    fmt = formats("half_away", "1/4", "1/2")
    a = Lambda(lambda x: F.max_pool2d(F.relu(x), 2) + torch.add(x, 1.0)[:, :, ::2, ::2])
    b = Lambda(lambda x, r, p: operator.add(p(r(x)), (x + 1.0)[:, :, ::2, ::2]), nn.ReLU(), nn.MaxPool2d(2))
    x = tie_inputs((1, 4, 4), Fraction(1, 4), torch.Generator().manual_seed(0))
    outs = []
    for model in (a, b):
        qm = tq.quantize(model, fmt)
        kinds = sorted(type(op).__name__ for _, op in qm.operations())
        assert kinds == ["Input", "MaxPool", "Movement", "QuantAct", "QuantAdd", "QuantAdd"]
        outs.append(qm.eval()(x))
    assert torch.equal(outs[0], outs[1])


def test_quantized_operations_are_ordinary_modules() -> None:
    """The registry's bookkeeping does not shadow ``nn.Module`` methods of the operations."""
    qm = tq.quantize(
        torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)),
        tq.QConfig(weight=tq.FixedPoint(bits=4), activation=tq.FixedPoint(bits=8)),
    )
    for op in qm.modules():
        assert next(iter(op.modules())) is op
    assert tq.QuantLinear.handles_modules == (torch.nn.Linear,)
