"""Exact d-QNNT training (Ganian, Sommer & Sorge, "Tractability via low dimensionality: the parameterized
complexity of training quantized neural networks"): the largest instances ``train_exact`` solves within 60 s.

Ladders of growing size, one per family; at each size one instance of each kind is solved
(decision mode, ``max_error`` from the instance, default ``pb`` encoding) and the ladder stops at
the first instance not decided within ``--timeout`` seconds (or when the ladder's share of
``--budget`` is spent).  Families:

* ``thm1-esc``: Theorem 1 on Exact Set Cover, |F| = |U| = n; a planted yes-instance and a random
  family (each element in a set with probability 0.4);
* ``thm3-hs``: Theorem 3 on Hitting Set, |F| = |U| = n, k = 3; planted yes and random;
* ``thm4-3sat``: Theorem 4 on 3-SAT, n variables, round(4.26 n) clauses (the threshold); planted
  yes and uniform random;
* ``random-d{2,3,4}``: fully connected 8-h-2 over Z_d, 10h distinct random inputs labelled by a
  random network of the same architecture (l = 0, feasible), and the same data with 10% of the
  labels changed to another reachable output (l = 0);
* ``random-d2-min``: the relabelled data in optimisation mode (minimum error).

The source problem's own answer (exhaustive search) is recorded where it is cheap, and random
instances with at most 10^5 weight assignments are also solved by brute force.  A second table
compares the three encodings on fixed mid-size instances.  Writes benchmarks/results/qnnt.json
and qnnt.png.
Usage: python benchmarks/bench_qnnt.py [--timeout 60] [--budget 840] [--no-compare] [--families ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from torchqv.theory import reductions as R
from torchqv.theory.qnnt import Architecture, Network, QNNTInstance, Status, brute_force, z_domain
from torchqv.theory.qnnt_z3 import ENCODINGS, train_exact

OUT = Path(__file__).resolve().parent / "results"
Case = tuple[str, QNNTInstance, bool | None, bool]  # kind, instance, source answer, minimise


def random_network_cases(rng: random.Random, d: int, h: int, minimize: bool = False) -> list[Case]:
    """8-h-2 over Z_d; 10h distinct random inputs labelled by a random teacher; 10% relabelled
    (to another reachable output: ReLU_d values are never negative)."""
    arch = Architecture.fully_connected([8, h, 2])
    dom = list(z_domain(d))
    teacher = Network(
        arch, d, {a: rng.choice(dom) for a in arch.arcs}, {v: rng.choice(dom) for v in arch.non_sources}
    )
    codes = rng.sample(range(d**8), 10 * h)
    xs = [tuple(dom[c // d**i % d] for i in range(8)) for c in codes]
    clean = [(x, teacher.forward(x)) for x in xs]
    noisy = [
        (x, rng.choice([z for z in itertools.product(range(d // 2 + 1), repeat=2) if z != y]))
        if rng.random() < 0.1
        else (x, y)
        for x, y in clean
    ]
    if minimize:
        return [("noisy-min", QNNTInstance(arch, tuple(noisy), d, len(noisy)), None, True)]
    return [
        ("planted", QNNTInstance(arch, tuple(clean), d, 0), True, False),
        ("noisy", QNNTInstance(arch, tuple(noisy), d, 0), None, False),
    ]


def source_answer(inst: Any, cheap: bool) -> bool | None:
    return (inst.solve() is not None) if cheap else None


def ladders(seed: int) -> dict[str, tuple[list[int], Callable[[int], list[Case]]]]:
    """Family -> (sizes, instances of a size); each family draws from its own seeded stream."""
    rngs: dict[str, random.Random] = {}

    def rng_of(name: str) -> random.Random:
        return rngs.setdefault(name, random.Random(f"{seed}:{name}"))

    def esc(n: int) -> list[Case]:
        rng = rng_of("thm1-esc")
        out = []
        for kind, answer in (("planted", True), ("random", None)):
            src = R.random_exact_set_cover(rng, n, n, answer)
            out.append((kind, R.exact_set_cover_to_qnnt(src), source_answer(src, True), False))
        return out

    def hs(n: int) -> list[Case]:
        rng, out = rng_of("thm3-hs"), []
        for kind, answer in (("planted", True), ("random", None)):
            src = R.random_hitting_set(rng, n, n, 3, answer)
            out.append(
                (kind, R.hitting_set_to_qnnt(src), source_answer(src, math.comb(n, 3) <= 10**5), False)
            )
        return out

    def sat(n: int) -> list[Case]:
        rng, out = rng_of("thm4-3sat"), []
        for kind, answer in (("planted", True), ("random", None)):
            src = R.random_three_sat(rng, n, round(4.26 * n), answer)
            out.append((kind, R.three_sat_to_qnnt(src), source_answer(src, n <= 80), False))
        return out

    return {
        "thm1-esc": ([25, 50, 100, 200, 300, 400, 600, 800], esc),
        "thm3-hs": ([25, 50, 100, 200, 400, 800], hs),
        "thm4-3sat": ([20, 40, 80, 120, 160, 240, 320], sat),
        **{
            f"random-d{d}": (
                [1, 2, 3, 4, 6, 8, 12, 16, 24],
                lambda h, d=d: random_network_cases(rng_of(f"d{d}"), d, h),
            )
            for d in (2, 3, 4)
        },
        "random-d2-min": (
            [2, 4, 8, 12, 16, 24],
            lambda h: random_network_cases(rng_of("min"), 2, h, minimize=True),
        ),
    }


def solve(case: Case, timeout: float, encoding: str = "pb") -> dict[str, Any]:
    kind, q, answer, minimize = case
    t0 = time.perf_counter()
    r = train_exact(
        q.architecture,
        q.data,
        q.d,
        None if minimize else q.max_error,
        minimize=minimize,
        timeout=timeout,
        encoding=encoding,
    )
    row = {
        "kind": kind,
        "d": q.d,
        "inputs": len(q.architecture.inputs),
        "parameters": q.architecture.n_parameters(),
        "points": len(q.data),
        "max_error": q.max_error,
        "status": r.status.value,
        "error": r.error,
        "lower_bound": r.lower_bound,
        "seconds": round(time.perf_counter() - t0, 3),
        "encode_seconds": round(r.stats.get("encode_seconds", 0.0), 3),
        "source_answer": answer,
    }
    if r.status in (Status.FOUND, Status.INFEASIBLE) and answer is not None:
        row["agrees_with_source"] = (r.status == Status.FOUND) == answer
    if q.d ** q.architecture.n_parameters() <= 10**5:
        ref = brute_force(
            q.architecture,
            q.data,
            q.d,
            None if minimize else q.max_error,
            minimize=minimize,
            max_assignments=10**5,
        )
        row["agrees_with_brute_force"] = (ref.status, ref.error if minimize else None) == (
            r.status,
            r.error if minimize else None,
        )
    return row


def run_ladder(
    name: str, sizes: list[int], make: Callable[[int], list[Case]], timeout: float, budget: float
) -> Iterator[dict]:
    t0 = time.perf_counter()
    for size in sizes:
        if time.perf_counter() - t0 > budget:
            yield {"family": name, "size": size, "status": "SKIPPED", "reason": "ladder budget spent"}
            return
        for case in make(size):
            row = {"family": name, "size": size, **solve(case, timeout)}
            yield row
            if row["status"] == "UNKNOWN":
                return


SHOWN = ("kind", "inputs", "parameters", "points", "max_error", "status", "error", "seconds")


def summarise(rows: list[dict]) -> list[dict]:
    """Per family: the largest size whose instances were all decided, and why the ladder stopped."""
    out = []
    for fam in dict.fromkeys(r["family"] for r in rows):
        by_size: dict[int, list[dict]] = {}
        for r in rows:
            if r["family"] == fam:
                by_size.setdefault(r["size"], []).append(r)
        solved = [
            s for s, rs in by_size.items() if all(r["status"] not in ("UNKNOWN", "SKIPPED") for r in rs)
        ]
        best = max(solved, default=None)
        stop = next((r for rs in by_size.values() for r in rs if r["status"] in ("UNKNOWN", "SKIPPED")), None)
        why = (
            None
            if stop is None
            else f"{stop['size']} ({'timeout' if stop['status'] == 'UNKNOWN' else 'budget'})"
        )
        bad = [
            r
            for rs in by_size.values()
            for r in rs
            if False in (r.get("agrees_with_source"), r.get("agrees_with_brute_force"))
        ]
        out.append({
            "family": fam,
            "largest_size": best,
            "stopped_at": why,
            "instances": [{k: r[k] for k in SHOWN} for r in by_size.get(best, [])],
            "disagreements": bad,
        })  # fmt: skip
    return out


def compare_encodings(rng: random.Random, timeout: float) -> list[dict]:
    esc = R.exact_set_cover_to_qnnt(R.random_exact_set_cover(rng, 200, 200))
    sat = R.three_sat_to_qnnt(R.random_three_sat(rng, 80, 341))
    cases = {
        "thm1-esc n=200 random": ("random", esc, None, False),
        "thm4-3sat n=80 random": ("random", sat, None, False),
        "random-d3 h=4 planted": random_network_cases(rng, 3, 4)[0],
        "random-d4 h=3 planted": random_network_cases(rng, 4, 3)[0],
        "random-d2 h=3 min": random_network_cases(rng, 2, 3, minimize=True)[0],
    }
    rows = []
    for name, case in cases.items():
        row: dict[str, Any] = {"instance": name}
        for enc in ENCODINGS:
            r = solve(case, timeout, enc)
            row[enc] = {"status": r["status"], "seconds": r["seconds"], "error": r["error"]}
        rows.append(row)
        print(row, flush=True)
    return rows


def report(summary: list[dict], encodings: list[dict], timeout: float) -> None:
    print(f"\n| family | largest size solved in {timeout:.0f} s | inputs | unknowns | data points | l | "
          "instances: status, seconds | ladder stopped at |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for s in summary:
        inst = s["instances"]
        first = inst[0] if inst else dict.fromkeys(SHOWN, "-")
        err = ["" if i["error"] is None else f" (error {i['error']})" for i in inst]
        runs = "; ".join(
            f"{i['kind']} {i['status']}{e} {i['seconds']:.1f}" for i, e in zip(inst, err, strict=True)
        )
        cells = [s["family"], s["largest_size"], first["inputs"], first["parameters"], first["points"]]
        cells += [first["max_error"], runs, s["stopped_at"] or "end of ladder"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if encodings:
        print("\n| instance | " + " | ".join(ENCODINGS) + " |")
        print("|---|" + "---|" * len(ENCODINGS))
        for e in encodings:
            print(
                f"| {e['instance']} | "
                + " | ".join(f"{e[k]['status']} {e[k]['seconds']:.2f}" for k in ENCODINGS)
                + " |"
            )
    bad = [d for s in summary for d in s["disagreements"]]
    print(f"\n{len(bad)} runs disagree with the source problem's answer or brute force:")
    for d in bad:
        print(f"  {d['family']} n={d['size']} {d['kind']}: QNNT {d['status']}, source {d['source_answer']}")


def plot(rows: list[dict], timeout: float) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fam in dict.fromkeys(r["family"] for r in rows):
        pts = sorted(
            (r["parameters"], r["seconds"]) for r in rows if r["family"] == fam and r["status"] != "SKIPPED"
        )
        ax.plot(*zip(*pts, strict=True), "o-", label=fam)
    ax.axhline(timeout, color="grey", ls="--", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="unknowns (weights + biases)", ylabel="train_exact seconds")
    ax.set_title("exact d-QNNT with z3 (pb encoding)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "qnnt.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--budget", type=float, default=840.0, help="seconds for all ladders together")
    parser.add_argument("--no-compare", action="store_true", help="skip the encoding comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--families", nargs="+", help="rerun only these; the other families' runs are kept from qnnt.json"
    )
    args = parser.parse_args()
    all_ladders = ladders(args.seed)
    chosen = args.families or list(all_ladders)
    path = OUT / "qnnt.json"
    old = json.loads(path.read_text()) if args.families and path.exists() else {"runs": [], "encodings": []}
    rows = [r for r in old["runs"] if r["family"] not in chosen]
    for name in chosen:
        sizes, make = all_ladders[name]
        for row in run_ladder(name, sizes, make, args.timeout, args.budget / len(chosen)):
            print({k: row.get(k) for k in ("family", "size", *SHOWN)}, flush=True)
            rows.append(row)
    rows.sort(key=lambda r: list(all_ladders).index(r["family"]))
    summary = summarise(rows)
    encodings = (
        old["encodings"] if args.no_compare else compare_encodings(random.Random(args.seed + 1), args.timeout)
    )
    OUT.mkdir(parents=True, exist_ok=True)
    result = {
        "timeout": args.timeout,
        "seed": args.seed,
        "summary": summary,
        "runs": rows,
        "encodings": encodings,
    }
    path.write_text(json.dumps(result, indent=1))
    report(summary, encodings, args.timeout)
    plot(rows, args.timeout)


if __name__ == "__main__":
    main()
