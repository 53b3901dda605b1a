"""Import time: ``python -c "import torch"`` against ``python -c "import torchqv"``.

Each sample is a fresh interpreter: wall clock around ``subprocess.run`` (interpreter start
included in both) and the child's CPU time, user + system, which a busy shared machine disturbs
less.  Bytecode is cached as for an installed package: a first run writes the ``.pyc`` files,
even where ``PYTHONDONTWRITEBYTECODE`` is set (without them every run would compile torchqv's
modules, about 0.1 s).  The two commands alternate so that a change in machine load hits both
alike.  Goal: ``import torchqv`` no slower than ``import torch`` + 0.3 s (it loads only the core;
the optional parts import on first use).

Usage: ``python benchmarks/bench_import.py [--repeats 5] [--root CHECKOUT]`` (``--root``: the
checkout whose torchqv to import, default this one, e.g. an older one for a before/after); prints
the medians, their difference and ratio, torchqv's own share (``import torchqv`` timed inside an
interpreter that has already imported torch) and the load average.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 0.3


def time_import(module: str, root: Path = ROOT) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``python -c "import <module>"`` in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    # bytecode is cached as for any installed package (pip compiles .pyc files at install time)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    code = f"import {module}; assert {module}.__file__.startswith({str(root)!r}) or {module!r} == 'torch'"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def own_time(root: Path = ROOT) -> float:
    """Seconds ``import torchqv`` takes once torch is imported, measured inside one fresh
    interpreter (torchqv's own share; much less noisy than the difference of two process times)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    code = "import time, torch; t = time.perf_counter(); import torchqv; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root, capture_output=True)
    return float(out.stdout)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh interpreters per command")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose torchqv to import")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    time_import("torchqv", root)  # warm the file cache and write the .pyc files before timing
    samples: dict[str, list[tuple[float, float]]] = {"torch": [], "torchqv": []}
    for _ in range(args.repeats):
        for module in samples:
            samples[module].append(time_import(module, root))
    own = statistics.median(own_time(root) for _ in range(args.repeats))
    med = {m: [statistics.median(t[i] for t in samples[m]) for i in (0, 1)] for m in samples}
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"] * 3
    print(f"torchqv from {root}; {args.repeats} fresh interpreters each, alternating")
    for module in samples:
        runs = ", ".join(f"{t[0]:.2f}" for t in samples[module])
        print(
            f"python -c 'import {module}'{' ' * (8 - len(module))}: wall median {med[module][0]:.2f} s "
            f"({runs}); CPU median {med[module][1]:.2f} s"
        )
    (torch_s, torch_cpu), (torchqv_s, torchqv_cpu) = med["torch"], med["torchqv"]
    diff = torchqv_s - torch_s
    verdict = "within" if diff <= GOAL_S else "OVER"
    print(f"wall: difference {diff:+.2f} s, ratio {torchqv_s / torch_s:.2f} ({verdict} the {GOAL_S} s goal)")
    print(f"CPU:  difference {torchqv_cpu - torch_cpu:+.2f} s, ratio {torchqv_cpu / torch_cpu:.2f}")
    print(f"import torchqv after import torch, in one interpreter: median {own:.3f} s")
    print(f"load average {' '.join(load)}")
    return {"torch_s": torch_s, "torchqv_s": torchqv_s, "difference_s": diff, "own_s": own}


if __name__ == "__main__":
    main()
