"""torchqv on a GPU: QAT step and exact eval against float and torch.ao, in one run.

For the CIFAR ResNet-20 and torchvision resnet18 (10 classes, 3x32x32, batch 128 and 32), 8-bit
per-channel weights, 8-bit activations and input, every tensor on ``cuda``:

* training step (forward, backward, SGD step): float, torch.ao QAT (``prepare_qat_fx``, default x86
  qconfig: its fake quantization runs on the GPU), torchqv QAT;
* eval forward: float, torchqv's exact simulation (eager, and with ``tq.use_compiled_kernels``);
  torch.ao's int8 conversion has CPU kernels only, so it has no GPU column;
* exactness: the GPU simulation equals the CPU simulation and ``reference_forward`` on a sample.

CUDA-synchronised median of ``--repeats`` timings after warm-up.  Needs a CUDA device (the
``device`` tool lends one to some sessions); on a machine without one it says so and exits 2.
Usage: ``python benchmarks/bench_gpu.py [--models resnet20 resnet18] [--repeats 20]``; prints a
Markdown table and writes ``benchmarks/results/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from bench_speed import CFG, torch_ao, train_step  # the same models' settings as the CPU table

import torchqv as tq
from torchqv.models import resnet20

ROOT = Path(__file__).resolve().parents[1]
MODELS: dict[str, tuple[Callable[[], torch.nn.Module], int]] = {
    "resnet20": (resnet20, 128),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 32),
}


def timed(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure(name: str, repeats: int) -> dict:
    build, batch = MODELS[name]
    torch.manual_seed(0)
    model = build().cuda()
    x, y = torch.randn(batch, 3, 32, 32, device="cuda"), torch.randint(0, 10, (batch,), device="cuda")
    qm = tq.quantize(model, CFG)
    tq.calibrate(qm, [x], progress=False)
    ao_qat, _ = torch_ao(model, x)
    row: dict = {"model": name, "batch": batch, "gpu": torch.cuda.get_device_name()}
    row["train_float"] = timed(train_step(model.train(), x, y), repeats)
    row["train_ao"] = timed(train_step(ao_qat.cuda(), x, y), repeats)
    row["train_torchqv"] = timed(train_step(qm.train(), x, y), repeats)
    model.eval()
    qm.eval()
    with torch.no_grad():
        row["eval_float"] = timed(lambda: model(x), repeats)
        row["eval_torchqv"] = timed(lambda: qm(x), repeats)
        out = qm(x)
        tq.use_compiled_kernels(True)
        row["eval_torchqv_compiled"] = timed(lambda: qm(x), repeats)
        tq.use_compiled_kernels(False)
        sample = x[:2].cpu()
        on_gpu = qm(x[:2]).cpu()
        row["exact"] = bool(torch.equal(on_gpu, out[:2].cpu())) and bool(
            torch.equal(on_gpu, tq.reference_forward(qm.cpu(), sample))
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine; run it where one is present", file=sys.stderr)
        sys.exit(2)
    rows = []
    for name in args.models:
        rows.append(measure(name, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "benchmarks" / "results" / "gpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))
    ms = lambda v: f"{v * 1e3:.2f}"  # noqa: E731
    print("\n| model (batch) | float step | torch.ao QAT | torchqv QAT | vs torch.ao | vs float "
          "| float eval | torchqv exact | compiled | vs float | exact |")
    print("|---|" + "---|" * 10)
    for r in rows:
        cells = [
            f"{r['model']} ({r['batch']})",
            ms(r["train_float"]),
            ms(r["train_ao"]),
            ms(r["train_torchqv"]),
            f"{r['train_torchqv'] / r['train_ao']:.2f}x",
            f"{r['train_torchqv'] / r['train_float']:.2f}x",
            ms(r["eval_float"]),
            ms(r["eval_torchqv"]),
            ms(r["eval_torchqv_compiled"]),
            f"{min(r['eval_torchqv'], r['eval_torchqv_compiled']) / r['eval_float']:.2f}x",
            str(r["exact"]),
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
