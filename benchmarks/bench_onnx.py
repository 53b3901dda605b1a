"""Inference time and file size of exported quantized models in onnxruntime.

For an MNIST-shaped MLP (784-256-128-10) and a small CNN (two 3x3 conv + pool, linear), 8-bit
per-channel weights, 8-bit activations and input (observer steps), compares in one run:
the float model exported by torch.onnx, torchqv's integer form and QDQ form (onnxruntime CPU,
default graph optimizations), and the torch float model and eval-mode simulation.
Weights are random (timing does not depend on their values).
Usage: python benchmarks/bench_onnx.py [--batch 128] [--repeats 30]
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import warnings

import onnxruntime as ort
import torch
from bench_qat import cnn, mlp, timed

import torchqv as tq


def session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    fmt = tq.FixedPoint(bits=8)
    cfg = tq.QConfig(weight=tq.FixedPoint(bits=8, per_channel=True), activation=fmt, input=fmt)
    tmp = tempfile.mkdtemp()
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, onnxruntime {ort.__version__}")
    print(
        "| model | float ONNX (ms) | integer form (ms) | QDQ form (ms) | torch float (ms) "
        "| torch simulation (ms) | int/float ONNX | float ONNX size | integer size | QDQ size "
        "| integer: outputs off the simulation | QDQ: outputs off (max steps) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, build in (("MLP 784-256-128-10", mlp), ("CNN 2xconv3x3+linear", cnn)):
        x = torch.randn(args.batch, 1, 28, 28)
        fm = build().eval()
        qm = tq.quantize(fm, cfg)
        tq.calibrate(qm, [x], progress=False)
        qm.eval()
        paths = {k: os.path.join(tmp, f"{name[:3]}_{k}.onnx") for k in ("float", "integer", "qdq")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                fm,
                (x[:1],),
                paths["float"],
                dynamo=False,
                input_names=["x"],
                dynamic_axes={"x": {0: "batch"}},
            )
        tq.export_onnx(qm, x[:1], paths["integer"], form="integer")
        tq.export_onnx(qm, x[:1], paths["qdq"], form="qdq")
        feeds = {"x": x.numpy()}
        times = {
            k: timed(functools.partial(session(p).run, None, feeds), args.repeats) for k, p in paths.items()
        }
        with torch.no_grad():
            t_float = timed(functools.partial(fm, x), args.repeats)
            t_sim = timed(functools.partial(qm, x), args.repeats)
        apart = {k: tq.check_onnx_parity(qm, paths[k], x) for k in ("integer", "qdq")}
        size = {k: os.path.getsize(p) / 1024 for k, p in paths.items()}
        print(
            f"| {name} | {times['float'] * 1e3:.2f} | {times['integer'] * 1e3:.2f} "
            f"| {times['qdq'] * 1e3:.2f} "
            f"| {t_float * 1e3:.2f} | {t_sim * 1e3:.2f} | {times['integer'] / times['float']:.2f}x "
            f"| {size['float']:.0f} KiB | {size['integer']:.0f} KiB | {size['qdq']:.0f} KiB "
            f"| {apart['integer'].mismatched}/{apart['integer'].total} "
            f"| {apart['qdq'].mismatched}/{apart['qdq'].total} ({apart['qdq'].max_step_diff:g}) |"
        )


if __name__ == "__main__":
    main()
