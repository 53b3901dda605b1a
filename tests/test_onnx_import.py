"""from_onnx: VNN-COMP networks as nn.Modules, untrusted input, and the export round trip."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import torchqv as tq
from torchqv.data import load_mnist

from .conftest import SHARED_DATA, needs_shared_data

VNN = sorted((SHARED_DATA / "onnx").glob("*.onnx")) if (SHARED_DATA / "onnx").exists() else []


@needs_shared_data("onnx")
@pytest.mark.parametrize("path", VNN, ids=lambda p: p.name)
def test_vnncomp_networks_match_onnxruntime(path):
    import onnxruntime as ort

    gm = tq.from_onnx(path)
    assert isinstance(gm, nn.Module)
    assert sum(isinstance(m, nn.Linear) for m in gm.modules()) >= 3  # real layers, quantizable
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    for seed in range(5):
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 0.5
        ref = sess.run(None, {inp.name: x.numpy()})[0]
        # the same float32 network; only the order of float32 additions may differ
        np.testing.assert_allclose(gm(x).detach().numpy(), ref, rtol=1e-5, atol=1e-5)


@needs_shared_data("MNIST")
@needs_shared_data("onnx")
def test_mnist_256x2_accuracy_and_quantization():
    gm = tq.from_onnx(SHARED_DATA / "onnx" / "mnist-net_256x2.onnx")
    x, y = load_mnist(SHARED_DATA, "test")
    x = x.reshape(-1, 784, 1)
    with torch.no_grad():
        acc = (gm(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(0.9808, abs=1e-4)  # the figure stated by VNN-COMP
    qm = tq.quantize(
        gm,
        tq.QConfig(
            weight=tq.FixedPoint(bits=8, per_channel=True),
            activation=tq.FixedPoint(bits=8),
            input=tq.FixedPoint(bits=8, signed=False),
        ),
    )
    tq.calibrate(qm, [x[:512]], progress=False)
    with torch.no_grad():
        qacc = (qm.eval()(x[:2000]).argmax(1) == y[:2000]).float().mean().item()
    assert qacc > 0.97
    assert torch.equal(qm(x[:4]), tq.reference_forward(qm, x[:4]))


@pytest.mark.parametrize("form", ["integer", "qdq"])
def test_export_import_round_trip(tmp_path, form):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 5),
        nn.ReLU(),
        nn.Linear(5, 3),
    )
    fmt = tq.FixedPoint(bits=8, power_of_two=True)
    qm = tq.quantize(
        model,
        tq.QConfig(
            weight=tq.FixedPoint(bits=4, per_channel=True, power_of_two=True), activation=fmt, input=fmt
        ),
    )
    x = torch.randn(32, 1, 4, 4)
    tq.calibrate(qm, [x], progress=False)
    qm.eval()
    path = tmp_path / "m.onnx"
    tq.export_onnx(qm, x[:1], path, form=form)
    imported = tq.from_onnx(path)
    assert torch.equal(imported(x).double(), qm(x))


def _bad_model(op: str, opset: int = 17) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_unsupported_operator_and_opset_are_clear_errors(tmp_path):
    with pytest.raises(tq.QuantizationError, match=r"unsupported ONNX operators \['Softmax'\]"):
        tq.from_onnx(_bad_model("Softmax"))
    with pytest.raises(tq.QuantizationError, match="opset 5"):
        tq.from_onnx(_bad_model("Relu", opset=5))
    path = tmp_path / "broken.onnx"
    model = _bad_model("Relu")
    model.graph.node[0].input[0] = "missing"
    onnx.save(model, str(path))
    with pytest.raises(tq.QuantizationError, match="checker"):
        tq.from_onnx(path)


def test_input_format_applies_before_an_imported_constant_shift(tmp_path):
    """A graph that starts with input normalisation (Sub of a constant): QConfig.input quantizes
    the network input itself, the shift is an operation rounded to its own format, and the
    simulation equals the integer reference (the format used to be dropped silently)."""
    rng = np.random.default_rng(0)
    mean = helper.make_tensor("mean", TensorProto.FLOAT, [3], [0.25, -0.5, 0.125])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], rng.standard_normal(6).astype(np.float32).tolist())
    nodes = [helper.make_node("Sub", ["x", "mean"], ["c"]), helper.make_node("MatMul", ["c", "w"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "shifted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [mean, w],
    )
    path = tmp_path / "shifted.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    fmt = tq.FixedPoint(bits=8)
    qm = tq.quantize(tq.from_onnx(path), tq.QConfig(weight=fmt, activation=fmt, input=fmt))
    x = torch.rand(16, 3) * 2 - 1
    tq.calibrate(qm, [x], progress=False)
    assert qm.input_quant is not None and qm.input_quant.calibrated
    shift = next(op for _, op in qm.operations() if isinstance(op, tq.ops.join.QuantAdd))
    assert shift.out_quant is not None  # the shifted input is rounded to its own grid
    assert torch.equal(qm.eval()(x), tq.reference_forward(qm, x))
    tq.export_onnx(qm, x[:1], tmp_path / "q.onnx")
    assert tq.check_onnx_parity(qm, tmp_path / "q.onnx", x).exact
