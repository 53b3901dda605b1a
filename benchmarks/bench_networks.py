"""Real networks through the quantized graph: time and memory of every stage, side by side with float.

For each network (torchvision resnet18, mobilenet_v2, squeezenet1_1, vgg11_bn with 10 classes, the
CIFAR ResNet-20, and the small test networks) at 3x32x32 (their own shapes for the small ones),
8-bit per-channel weights, 8-bit activations and input:

* float eval and exact eval (``qm.eval()(x)``): median time per batch, the peak resident memory
  of the process during the eval calls (``VmHWM`` after resetting it with ``/proc/self/clear_refs``;
  each measured in its own process, after building the model) and the eval's working memory (that
  peak minus the resident memory once the float model is built: for the exact eval it includes the
  quantized model's own state, its integer weights and caches);
* the integer reference (``tq.reference_forward``): seconds per image;
* ONNX export (integer and QDQ form): seconds and file size;
* ``round_weights`` at 4 bits: seconds (``solver="auto"``; the annealer is skipped, ``solver="nearest"``,
  on the three largest networks, as in the tests).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_networks.py [--models resnet18 ...] [--batch 32]``;
prints a Markdown table and writes ``benchmarks/results/networks.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS = [
    "resnet18",
    "mobilenet_v2",
    "squeezenet1_1",
    "vgg11_bn",
    "resnet20",
    "depthwise_cnn",
    "conv1d",
    "layernorm_mlp",
]
BIG = {"resnet18", "mobilenet_v2", "vgg11_bn"}


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _build(name: str):
    sys.path.insert(0, str(ROOT))
    from tests.test_networks import network

    return network(name)


def measure_eval(name: str, mode: str, batch: int, reps: int) -> dict:
    """One eval (float or exact) in this process: median seconds and the call's peak RSS."""
    import gc

    import torchqv as tq
    from tests.test_networks import W8

    model, shape = _build(name)
    x = torch.randn(batch, *shape)
    gc.collect()
    built = _status_kib("VmRSS")  # the float model built: what both modes start from
    if mode == "exact":
        qm = tq.quantize(model, W8)
        tq.calibrate(qm, [torch.randn(8, *shape)], progress=False)
        del model
        gc.collect()
        run = qm.eval()
        with torch.no_grad():
            run(x[:1])  # weight codes and tables are computed once, on the first call
    else:
        run = model.eval()
    gc.collect()
    times = []
    _reset_peak()
    with torch.no_grad():
        for _ in range(reps):
            t0 = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - t0)
    peak = _status_kib("VmHWM")
    seconds = statistics.median(times)
    return {"seconds": seconds, "peak_mib": peak / 1024, "working_mib": (peak - built) / 1024}


def measure_stages(name: str, batch: int) -> dict:
    import torchqv as tq
    from tests.test_networks import W4, W8

    model, shape = _build(name)
    qm = tq.quantize(model, W8)
    tq.calibrate(qm, [torch.randn(8, *shape)], progress=False)
    qm.eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        qm(x)
    t0 = time.perf_counter()
    exact = torch.equal(qm(x), tq.reference_forward(qm, x))
    out = {"reference_s_per_image": (time.perf_counter() - t0) / len(x), "reference_equal": exact}
    with tempfile.TemporaryDirectory() as tmp:
        for form in ("integer", "qdq"):
            path = Path(tmp) / f"{form}.onnx"
            t0 = time.perf_counter()
            tq.export_onnx(qm, x[:1], path, form=form)
            out[f"onnx_{form}_s"] = time.perf_counter() - t0
            out[f"onnx_{form}_mb"] = path.stat().st_size / 2**20
            out[f"onnx_{form}_exact"] = tq.check_onnx_parity(qm, path, torch.randn(batch, *shape)).exact
    q4 = tq.quantize(model, W4)
    data = [torch.randn(8, *shape)]
    tq.calibrate(q4, data, progress=False)
    solver = "nearest" if name in BIG else "auto"
    t0 = time.perf_counter()
    tq.round_weights(q4, data, solver=solver, bound=False, progress=False)
    out |= {"round_weights_s": time.perf_counter() - t0, "round_solver": solver}
    return out


def child(args: argparse.Namespace) -> None:
    if args.what == "stages":
        result = measure_stages(args.name, args.batch)
    else:
        result = measure_eval(args.name, args.what, args.batch, args.reps)
    print(json.dumps(result))


def run_child(what: str, name: str, batch: int, reps: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        what,
        "--name",
        name,
        "--batch",
        str(batch),
        "--reps",
        str(reps),
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=True, env=os.environ | {"PYTHONPATH": str(ROOT)}
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--child", dest="what", default=None)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    if args.what is not None:
        child(args)
        return
    rows = []
    for name in args.models:
        row = {"model": name, "batch": args.batch}
        row["float"] = run_child("float", name, args.batch, args.reps)
        row["exact"] = run_child("exact", name, args.batch, args.reps)
        row |= run_child("stages", name, args.batch, args.reps)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = ROOT / "benchmarks" / "results" / "networks.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, indent=1)
    )
    print()
    print(
        "| model | float eval (ms) | exact eval (ms) | ratio | float peak (MiB) | exact peak (MiB) | ratio | "
        "working float / exact (MiB) | ratio | reference (s/image) | ONNX int (s, MB) | ONNX QDQ (s, MB) "
        "| round_weights 4-bit (s) |"
    )
    print("|---|" + "---|" * 12)
    for r in rows:
        f, e = r["float"], r["exact"]
        cells = [
            r["model"],
            f"{f['seconds'] * 1e3:.1f}",
            f"{e['seconds'] * 1e3:.1f}",
            f"{e['seconds'] / f['seconds']:.1f}x",
            f"{f['peak_mib']:.0f}",
            f"{e['peak_mib']:.0f}",
            f"{e['peak_mib'] / f['peak_mib']:.2f}x",
            f"{f['working_mib']:.0f} / {e['working_mib']:.0f}",
            f"{e['working_mib'] / max(f['working_mib'], 1):.2f}x",
            f"{r['reference_s_per_image']:.2f}",
            f"{r['onnx_integer_s']:.1f}, {r['onnx_integer_mb']:.1f}",
            f"{r['onnx_qdq_s']:.1f}, {r['onnx_qdq_mb']:.1f}",
            f"{r['round_weights_s']:.1f} ({r['round_solver']})",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
