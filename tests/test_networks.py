"""Real networks end to end: torchvision's resnet18, mobilenet_v2, squeezenet1_1, vgg11_bn, a CIFAR
ResNet-20, a depthwise-separable CNN, a Conv1d net and an MLP with LayerNorm go through quantize,
calibrate, the exact simulation (== the integer reference, bit for bit), ONNX (integer form ==
simulation in onnxruntime, bit for bit; the QDQ form runs and its parity is reported), a QAT step,
round_weights and save/load."""

from __future__ import annotations

import io

import pytest
import torch
import torchvision
from torch import nn

import torchqv as tq
from torchqv.models import resnet20


class DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.Hardswish())
        self.pw = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4, padding_mode="reflect")
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(self.stem(x)))
        n, c, h, w = x.shape
        x = x.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
        x = self.grouped(x) + x
        return self.head(x.mean((2, 3)))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(4, 8, 5, padding=2),
            nn.BatchNorm1d(8),
            nn.ReLU(),
            nn.MaxPool1d(3, 2, padding=1, ceil_mode=True),
            nn.Conv1d(8, 8, 3, dilation=2, padding="same"),
            nn.Hardsigmoid(),
            nn.AvgPool1d(2),
        )
        self.fc = nn.Linear(8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(self.body(x), 2, dim=1)
        return self.fc(torch.cat([b, a * 0.5], 1).flatten(1))


class LayerNormMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(20, 32), nn.LayerNorm(32), nn.Linear(32, 4)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.norm(self.fc1(x))))


def _tv(name: str) -> nn.Module:
    return getattr(torchvision.models, name)(num_classes=10)


NETWORKS = {
    "resnet18": (lambda: _tv("resnet18"), (3, 32, 32)),
    "mobilenet_v2": (lambda: _tv("mobilenet_v2"), (3, 32, 32)),
    "squeezenet1_1": (lambda: _tv("squeezenet1_1"), (3, 32, 32)),
    "vgg11_bn": (lambda: _tv("vgg11_bn"), (3, 32, 32)),
    "resnet20": (resnet20, (3, 32, 32)),
    "depthwise_cnn": (DepthwiseSeparable, (3, 16, 16)),
    "conv1d": (Conv1dNet, (4, 32)),
    "layernorm_mlp": (LayerNormMLP, (20,)),
}
SLOW = {"resnet18", "mobilenet_v2", "vgg11_bn"}
A8 = tq.FixedPoint(bits=8)
W8 = tq.QConfig(weight=tq.FixedPoint(bits=8, per_channel=True), activation=A8, input=A8)
W4 = tq.QConfig(weight=tq.FixedPoint(bits=4, per_channel=True), activation=A8, input=A8)


def network(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    build, shape = NETWORKS[name]
    model = build().eval()
    for m in model.modules():  # non-trivial batch-norm statistics, so folding matters
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model, shape


def quantized(name: str, cfg: tq.QConfig) -> tuple[tq.QuantizedModel, torch.Tensor]:
    model, shape = network(name)
    qm = tq.quantize(model, cfg)
    tq.calibrate(qm, [torch.randn(4, *shape)], progress=False)
    return qm.eval(), torch.randn(2, *shape)


def params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


@pytest.mark.parametrize("name", params(NETWORKS))
def test_network_end_to_end(name, tmp_path):
    qm, x = quantized(name, W8)
    assert not [n.name for n in qm.nodes if n.kind == tq.ops.base.REAL]  # nothing left unrounded
    y = qm(x)
    assert y.dtype == torch.float64 and y.shape[0] == 2
    assert torch.equal(y, tq.reference_forward(qm, x))
    # ONNX: the integer form is the simulation bit for bit; the QDQ form runs, parity reported
    tq.export_onnx(qm, x[:1], tmp_path / "int.onnx")
    assert tq.check_onnx_parity(qm, tmp_path / "int.onnx", x).exact
    tq.export_onnx(qm, x[:1], tmp_path / "qdq.onnx", form="qdq")
    report = tq.check_onnx_parity(qm, tmp_path / "qdq.onnx", x)
    print(f"{name}: QDQ parity {report}")
    assert report.total == y.numel() and report.max_step_diff == report.max_step_diff  # not NaN
    # save/load: the whole model, and the state dict into a fresh quantize of the float model
    buf = io.BytesIO()
    torch.save(qm, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False).eval()(x), y)
    fresh = tq.quantize(network(name)[0], W8)
    fresh.load_state_dict(qm.state_dict())
    if name in SLOW:  # the same state: the same exact function (its evaluation is checked above)
        pairs = zip(fresh.state_dict().values(), qm.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)
    else:
        assert torch.equal(fresh.eval()(x), y)
    # QAT: one optimiser step through the fake-quantized graph
    qm.train()
    opt = torch.optim.SGD(qm.parameters(), lr=1e-3)
    loss = qm(x).float().pow(2).mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    if name not in SLOW:
        assert torch.equal(qm.eval()(x), tq.reference_forward(qm, x))  # still exact after training


@pytest.mark.parametrize("name", params(NETWORKS))
def test_network_four_bit_weights_and_rounding(name, tmp_path):
    qm, x = quantized(name, W4)
    solver = "nearest" if name in SLOW else "auto"  # the big ones: the QUBOs are built, not annealed
    report = tq.round_weights(
        qm, [torch.randn(4, *x.shape[1:])], solver=solver, sweeps=2, bound=False, progress=False
    )
    rounded = [r for r in report.layers if not r.solver.startswith("skipped")]
    assert rounded and all(r.objective <= r.nearest * (1 + 1e-9) + 1e-12 for r in rounded)
    if name == "vgg11_bn":  # the 25088-input classifier layer keeps nearest rounding, and says so
        assert [r.layer for r in report.layers if r.solver.startswith("skipped")] == ["classifier.0"]
    y = qm(x)
    assert torch.equal(y, tq.reference_forward(qm, x))
    tq.export_onnx(qm, x[:1], tmp_path / "int.onnx")
    assert tq.check_onnx_parity(qm, tmp_path / "int.onnx", x).exact
