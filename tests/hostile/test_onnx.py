"""Hostile input to the ONNX import and export (issue 17, item 5): ONNX semantics where they differ
from torch's (integer Div), valid models that failed (a (1, N) Gemm bias), in-memory models checked
like files, float leftovers through Identity, NaN inputs to the parity check, the onnx floor."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from packaging.version import Version

import torchqv as tq

REPO = Path(__file__).resolve().parents[2]
FULL = tq.QConfig(weight=tq.FixedPoint(bits=4), activation=tq.FixedPoint(bits=8), input=tq.FixedPoint(bits=8))


def model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


def onnxruntime(proto: onnx.ModelProto, **feeds: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def test_integer_div_truncates_like_onnxruntime():
    """It used to be true division (3.5 where onnxruntime gives 3)."""
    a = helper.make_tensor_value_info("a", TensorProto.INT64, [4])
    b = helper.make_tensor_value_info("b", TensorProto.INT64, [4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [4])
    proto = model([helper.make_node("Div", ["a", "b"], ["y"])], [a, b], [y])
    num, den = np.array([7, -7, 6, -1]), np.array([2, 2, -4, 3])
    got = tq.from_onnx(proto)(torch.from_numpy(num), torch.from_numpy(den))
    assert got.dtype == torch.int64 and got.tolist() == onnxruntime(proto, a=num, b=den).tolist() == [
        3,
        -3,
        -1,
        0,
    ]


def test_float_div_stays_true_division():
    """The element type comes from the model (shape inference): float Div is torch.div, the
    function quantize knows."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    c = numpy_helper.from_array(np.array(4.0, dtype=np.float32), "c")
    proto = model([helper.make_node("Div", ["x", "c"], ["y"])], [x], [y], [c])
    v = np.array([[1.0, -3.0, 0.5]], dtype=np.float32)
    gm = tq.from_onnx(proto)
    np.testing.assert_array_equal(gm(torch.from_numpy(v)).numpy(), onnxruntime(proto, x=v))
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [torch.div]


def gemm(bias_shape: tuple[int, ...], trans_b: int = 0, identity: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 3) if trans_b else (3, 2)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "B"),
    ]
    nodes = [helper.make_node("Gemm", ["x", "Wi" if identity else "W", "B"], ["y"], transB=trans_b)]
    if identity:
        nodes.insert(0, helper.make_node("Identity", ["W"], ["Wi"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])
    return model(nodes, [x], [y], inits)


@pytest.mark.parametrize("bias_shape", [(1, 2), (2,), (1,), (), (1, 1), (4, 2)])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_biases_of_every_valid_shape(bias_shape, trans_b):
    """A (1, N) bias used to fail with a numpy broadcasting error."""
    proto = gemm(bias_shape, trans_b)
    onnx.checker.check_model(proto, full_check=True)
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    gm = tq.from_onnx(proto)
    np.testing.assert_allclose(
        gm(torch.from_numpy(x)).detach().numpy(), onnxruntime(proto, x=x), rtol=1e-6, atol=1e-6
    )
    row_bias = bias_shape != (4, 2)  # a bias per row is not a layer's bias: the product stays a function
    assert any(isinstance(m, torch.nn.Linear) for m in gm.modules()) == row_bias


def test_a_gemm_whose_weight_passes_through_identity_is_quantized():
    """It used to run in float after quantize, without a warning."""
    qm = tq.quantize(tq.from_onnx(gemm((1, 2), identity=True)), FULL)
    assert [type(op).__name__ for _, op in qm.operations()] == ["Input", "QuantLinear"]
    assert "real" not in tq.summary(qm)


def test_in_memory_models_go_through_the_checker():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    broken = model([helper.make_node("Relu", ["x", "x"], ["y"])], [x], [y])  # Relu takes one input
    with pytest.raises(
        tq.QuantizationError, match=r"from_onnx\(source\): fails onnx.checker \(fix or re-export"
    ):
        tq.from_onnx(broken)
    with pytest.raises(
        tq.QuantizationError,
        match=r"from_onnx\(source\): expected a file path or an onnx.ModelProto, got int",
    ):
        tq.from_onnx(3)


def test_the_onnx_floor_excludes_the_vulnerable_releases_and_the_installed_onnx_meets_it():
    """CVE-2024-27318 (fixed in 1.16) and the external-data symlink traversal (fixed in 1.21)."""
    text = (REPO / "pyproject.toml").read_text()
    (floor,) = re.findall(r'"onnx>=([0-9.]+)"', text)
    assert Version(floor) >= Version("1.21")
    assert Version(onnx.__version__) >= Version(floor)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[tq.QuantizedModel, Path]:
    torch.manual_seed(0)
    qm = tq.quantize(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)), FULL)
    x = torch.randn(16, 4)
    tq.calibrate(qm, [x], progress=False)
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    tq.export_onnx(qm, x, path)
    return qm, path


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            torch.tensor([[0.5, float("nan"), 0.0, 1.0]]),
            r"check_onnx_parity: inputs: the input contains NaN or inf",
        ),
        (torch.ones(2, 4, dtype=torch.int64), r"check_onnx_parity: inputs: the input has dtype torch.int64"),
        ("x", r"check_onnx_parity: inputs must be a tensor, a list or tuple of tensors, .*got str"),
    ],
)
def test_parity_inputs_are_checked(exported, inputs, message):
    """NaN inputs used to surface as an onnxruntime Gather error."""
    qm, path = exported
    with pytest.raises(tq.QuantizationError, match=message):
        tq.check_onnx_parity(qm, path, inputs)


def test_parity_takes_batches_lists_and_loaders(exported):
    """A list, a tuple, a DataLoader of (x, y) pairs and a generator give the tensor's report."""
    from torch.utils.data import DataLoader, TensorDataset

    qm, path = exported
    x = torch.rand(12, 4) * 2 - 1
    want = tq.check_onnx_parity(qm, path, x)
    loader = DataLoader(TensorDataset(x, torch.zeros(12, dtype=torch.int64)), batch_size=5)
    for inputs in ([x], [x[:5], x[5:]], (x[:7], x[7:]), loader, (b for b in x.split(4)), [(x, None)]):
        got = tq.check_onnx_parity(qm, path, inputs)
        assert (got.total, got.max_abs_diff) == (want.total, want.max_abs_diff)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (3, r"check_onnx_parity: inputs must be a tensor, .*got int"),
        ({"x": torch.ones(2, 4)}, r"check_onnx_parity: inputs must be a tensor, .*got dict"),
        ([torch.ones(2, 4), "y"], r"check_onnx_parity: inputs: batch 1 is a str, not a tensor"),
        ([], r"check_onnx_parity: inputs holds no batches"),
        ([torch.ones(2, 4), torch.ones(2, 3)], r"inputs: the batches have different shapes"),
    ],
)
def test_parity_rejects_other_inputs_by_name(exported, inputs, message):
    qm, path = exported
    with pytest.raises(tq.QuantizationError, match=message):
        tq.check_onnx_parity(qm, path, inputs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"opset": 3}, r"opset must be an int in \[13, \d+\] .*got 3; the default is 17"),
        ({"form": "int"}, r"form must be one of \('integer', 'qdq'\), got 'int'"),
        (
            {"path": "/nonexistent/folder/m.onnx"},
            r"path='/nonexistent/folder/m.onnx': the folder /nonexistent/folder does not exist",
        ),
    ],
)
def test_export_arguments_are_checked(exported, tmp_path, kwargs, message):
    qm, _ = exported
    args = {"path": tmp_path / "out.onnx"} | kwargs
    with pytest.raises(tq.QuantizationError, match=message):
        tq.export_onnx(qm, torch.randn(2, 4), **args)
