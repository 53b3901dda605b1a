"""Exact at integer speed? torchqv's exact simulation, QAT and integer ONNX side by side with float
and with torch.ao (the tool a PyTorch user would otherwise pick), in one run.

For each model (MLP 784-256-128-10 and a 2-conv CNN on 1x28x28, batch 128; the CIFAR ResNet-20,
torchvision resnet18 and mobilenet_v2 on 3x32x32, batch 32), 8-bit per-channel weights, 8-bit
activations and input:

* training step (forward, backward, SGD step): float, torch.ao QAT (``prepare_qat_fx`` with the
  default x86 qconfig), torchqv QAT (fake quantization, STE), eager and with
  ``tq.use_compiled_kernels(True)`` (each fake quantization one fused kernel);
* eval forward: float, torch.ao int8 (``convert_fx``), torchqv's exact simulation, eager and
  compiled;
* onnxruntime (CPU, one thread): float ONNX (``torch.onnx.export``), torchqv's QDQ form and its
  integer form (bit-exact).

Median of ``--repeats`` timings after warm-up, one thread (``torch.set_num_threads(1)``).
Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_speed.py [--models mlp cnn ...] [--repeats 20]``;
prints a Markdown table and writes ``benchmarks/results/speed.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from bench_qat import cnn, mlp, timed  # the first QAT benchmark's models and median timing
from torch import nn

import torchqv as tq
from torchqv.models import resnet20

ROOT = Path(__file__).resolve().parents[1]


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "mlp": (mlp, (1, 28, 28), 128),
    "cnn": (cnn, (1, 28, 28), 128),
    "resnet20": (resnet20, (3, 32, 32), 32),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 32, 32), 32),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (3, 32, 32), 32),
}
A8 = tq.FixedPoint(bits=8)
CFG = tq.QConfig(weight=tq.FixedPoint(bits=8, per_channel=True), activation=A8, input=A8)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def torch_ao(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, nn.Module]:
    """torch.ao's QAT model (prepared) and its int8 conversion."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_qat_fx(copy.deepcopy(model).train(), get_default_qat_qconfig_mapping("x86"), (x,))
        prepared(x)
        converted = convert_fx(copy.deepcopy(prepared).eval())
    return prepared, converted


def onnx_times(model: nn.Module, qm: tq.QuantizedModel, x: torch.Tensor, repeats: int) -> dict[str, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"float": Path(tmp) / "f.onnx", "qdq": Path(tmp) / "q.onnx", "integer": Path(tmp) / "i.onnx"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(copy.deepcopy(model).eval(), (x,), str(paths["float"]), dynamo=False)
        tq.export_onnx(qm, x[:1], paths["qdq"], form="qdq")
        tq.export_onnx(qm, x[:1], paths["integer"])
        out["onnx_integer_exact"] = tq.check_onnx_parity(qm, paths["integer"], x).exact
        for form, path in paths.items():
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x.numpy()}
            out[f"onnx_{form}"] = timed(lambda s=sess, f=feed: s.run(None, f), repeats)
    return out


def measure(name: str, repeats: int) -> dict:
    build, shape, batch = MODELS[name]
    torch.manual_seed(0)
    model = build()
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    qm = tq.quantize(model, CFG)
    tq.calibrate(qm, [x], progress=False)
    ao_qat, ao_int8 = torch_ao(model, x)
    row = {"model": name, "batch": batch}
    row["train_float"] = timed(train_step(model.train(), x, y), repeats)
    row["train_ao"] = timed(train_step(ao_qat, x, y), repeats)
    row["train_torchqv"] = timed(train_step(qm.train(), x, y), repeats)
    tq.use_compiled_kernels(True)
    row["train_torchqv_compiled"] = timed(train_step(qm, x, y), repeats)
    tq.use_compiled_kernels(False)
    model.eval()
    qm.eval()
    with torch.no_grad():
        row["eval_float"] = timed(lambda: model(x), repeats)
        row["eval_ao_int8"] = timed(lambda: ao_int8(x), repeats)
        row["eval_torchqv"] = timed(lambda: qm(x), repeats)
        tq.use_compiled_kernels(True)
        t0 = time.perf_counter()
        y = qm(x)
        row["compile_s"] = time.perf_counter() - t0
        row["eval_torchqv_compiled"] = timed(lambda: qm(x), repeats)
        tq.use_compiled_kernels(False)
        row["exact"] = bool(torch.equal(qm(x), y)) and bool(
            torch.equal(qm(x[:2]), tq.reference_forward(qm, x[:2]))
        )
    row |= onnx_times(model, qm, x, repeats)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        rows.append(measure(name, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "benchmarks" / "results" / "speed.json"
    out.parent.mkdir(exist_ok=True)
    meta = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "threads": 1}
    out.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    ms = lambda v: f"{v * 1e3:.2f}"  # noqa: E731
    best = lambda r: min(r["eval_torchqv"], r["eval_torchqv_compiled"])  # noqa: E731
    print()
    print(
        "| model (batch) | float step | torch.ao QAT | torchqv QAT | compiled | vs torch.ao | float eval "
        "| torch.ao int8 | torchqv exact | compiled | vs float | vs torch.ao "
        "| ONNX float | ONNX QDQ | ONNX integer | int vs QDQ |"
    )
    print("|---|" + "---|" * 15)
    for r in rows:
        cells = [
            f"{r['model']} ({r['batch']})",
            ms(r["train_float"]),
            ms(r["train_ao"]),
            ms(r["train_torchqv"]),
            ms(r["train_torchqv_compiled"]),
            f"{min(r['train_torchqv'], r['train_torchqv_compiled']) / r['train_ao']:.2f}x",
            ms(r["eval_float"]),
            ms(r["eval_ao_int8"]),
            ms(r["eval_torchqv"]),
            ms(r["eval_torchqv_compiled"]),
            f"{best(r) / r['eval_float']:.2f}x",
            f"{best(r) / r['eval_ao_int8']:.2f}x",
            ms(r["onnx_float"]),
            ms(r["onnx_qdq"]),
            ms(r["onnx_integer"]),
            f"{r['onnx_integer'] / r['onnx_qdq']:.2f}x",
        ]
        print("| " + " | ".join(cells) + " |")
    print(
        "\n(milliseconds, median; compiled: tq.use_compiled_kernels(True); the ratios use the faster "
        "of the two; the simulation equals tq.reference_forward bit for bit either way)"
    )


if __name__ == "__main__":
    main()
