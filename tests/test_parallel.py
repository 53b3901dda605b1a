"""Many regions at once (issue 13 item 5): ``verify_equivalence(..., workers=N)`` and
``executor=`` (a real local Dask cluster, a process pool, a thread pool) give exactly the serial
results; bad arguments, errors raised while deciding a region, time limits and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch import nn

import torchqv as tq
from torchqv.verify import engine
from torchqv.verify.parallel import process_pool

REPO = Path(__file__).resolve().parents[1]
SLACK = 1.5  # the engine's stated overrun (tests/test_verify_exact.py)


def tiny_pair() -> tuple[nn.Module, nn.Module]:
    """A 4-16-3 ReLU network and its 3-bit weight, 5-bit activation, 6-bit input copy."""
    gen = torch.Generator().manual_seed(3)
    f = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        for prm in f.parameters():
            prm.copy_(torch.randn(prm.shape, generator=gen) * 0.5)
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=3), activation=tq.FixedPoint(bits=5), input=tq.FixedPoint(bits=6)
    )
    fq = tq.quantize(f, cfg)
    tq.calibrate(fq, [torch.randn(256, 4, generator=gen)], progress=False)
    return f, fq


def tiny_points() -> torch.Tensor:
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(1))


DELTA = 0.3
# A long timeout: region 4 goes past the bounds to the quick z3 pass, whose share is 2% of the
# time left; z3 proves it in about 0.5 s, so with 20 s (a 0.4 s share) it would be proved by z3
# or, after the share ran out, by branch and bound, depending on the machine's load.
KW = dict(relation="top1", timeout=300.0)


def signature(res: tq.verify.Result) -> tuple:
    """Everything of a result but its time: verdict, reason, the decisive stage, counterexamples."""
    stats = {k: v for k, v in res.stats.items() if k != "seconds"}
    cex = None if res.counterexample is None else res.counterexample.tolist()
    exact = None if res.counterexample_exact is None else res.counterexample_exact.tolist()
    return res.verdict, res.reason, stats, cex, exact, res.outputs_exact


@pytest.fixture(scope="module")
def serial() -> list[tq.verify.Result]:
    f, fq = tiny_pair()
    return tq.verify_equivalence(f, fq, tiny_points(), DELTA, **KW)


def test_the_tiny_case_has_both_verdicts(serial: list[tq.verify.Result]) -> None:
    """The regions the other tests compare hold proofs (one by z3) and replayed counterexamples."""
    verdicts = [r.verdict for r in serial]
    assert "EQUIVALENT" in verdicts and "NOT_EQUIVALENT" in verdicts, verdicts
    assert "z3" in [r.stats["method"] for r in serial]
    for r in serial:
        if r.verdict == "NOT_EQUIVALENT":
            assert r.counterexample is not None and r.counterexample_exact is not None


def test_serial_results_are_reproducible_and_per_region(serial: list[tq.verify.Result]) -> None:
    f, fq = tiny_pair()
    again = tq.verify_equivalence(f, fq, tiny_points(), DELTA, **KW)
    assert [signature(r) for r in again] == [signature(r) for r in serial]
    # region i's random points come from (seed, i) alone: other seeds give other generators
    a = torch.rand(4, generator=engine.region_generator(0, 1))
    assert torch.equal(a, torch.rand(4, generator=engine.region_generator(0, 1)))
    assert not torch.equal(a, torch.rand(4, generator=engine.region_generator(0, 2)))
    assert not torch.equal(a, torch.rand(4, generator=engine.region_generator(1, 1)))


def test_workers_give_the_serial_results(serial: list[tq.verify.Result]) -> None:
    f, fq = tiny_pair()
    got = tq.verify_equivalence(f, fq, tiny_points(), DELTA, **KW, workers=2)
    assert [signature(r) for r in got] == [signature(r) for r in serial]


def test_thread_pool_and_chunks_give_the_serial_results(
    serial: list[tq.verify.Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads of one process share its z3 context: the regions run one at a time, correctly."""
    f, fq = tiny_pair()
    monkeypatch.setattr(engine, "REGIONS_PER_TASK", 3)  # tasks of 3, 3 and 2 regions
    with ThreadPoolExecutor(3) as pool:
        got = tq.verify_equivalence(f, fq, tiny_points(), DELTA, **KW, executor=pool)
    assert [signature(r) for r in got] == [signature(r) for r in serial]
    assert not engine._PROBLEMS  # the call's problem is not kept in this process


@pytest.fixture(scope="module")
def pool():
    """One local pool of 2 spawned workers for the tests that give it as the executor."""
    with process_pool(2) as p:
        yield p


@pytest.fixture(scope="module")
def dask_client():
    """A real local Dask cluster: 2 worker processes of 1 thread (``pip install -e .[parallel]``)."""
    import distributed
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_dask_cluster_gives_the_serial_results(serial: list[tq.verify.Result], dask_client) -> None:
    f, fq = tiny_pair()
    got = tq.verify_equivalence(f, fq, tiny_points(), DELTA, **KW, executor=dask_client.get_executor())
    assert [signature(r) for r in got] == [signature(r) for r in serial]
    # the Client itself has submit(): it works too
    got = tq.verify_equivalence(f, fq, tiny_points(), DELTA, **KW, executor=dask_client)
    assert [signature(r) for r in got] == [signature(r) for r in serial]
    kept = dask_client.run(lambda: len(engine._PROBLEMS))  # problems built once per worker and call
    assert len(kept) == 2 and 1 <= sum(kept.values()) and max(kept.values()) <= engine.PROBLEMS_PER_WORKER


class Guarded(nn.Linear):
    """A Linear layer that refuses inputs beyond [-0.9, 0.9] (a model with an input check)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.abs() > 0.9).any()):
            raise tq.QuantizationError(f"Guarded: input {x.abs().max().item():.4f} beyond [-0.9, 0.9]")
        return super().forward(x)


def guarded_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    f = nn.Sequential(Guarded(2, 4), nn.ReLU(), nn.Linear(4, 3))
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=4), activation=tq.FixedPoint(bits=6), input=tq.FixedPoint(bits=6)
    )
    fq = tq.quantize(f, cfg)
    tq.calibrate(fq, [torch.rand(64, 2)], progress=False)
    return f, fq


def test_an_error_while_deciding_a_region_is_the_serial_error(pool, dask_client) -> None:
    """Region 1 runs f on inputs beyond its check: the QuantizationError raised in the worker is
    raised by the caller with the serial run's type and message."""
    f, fq = guarded_pair()
    pts = torch.tensor([[0.2, 0.3], [0.95, 0.5], [0.1, 0.1]])
    with pytest.raises(tq.QuantizationError) as serial:
        tq.verify_equivalence(f, fq, pts, 0.1)
    assert "Guarded: input" in str(serial.value)
    with pytest.raises(tq.QuantizationError) as pooled:
        tq.verify_equivalence(f, fq, pts, 0.1, executor=pool)
    assert type(pooled.value) is type(serial.value) and str(pooled.value) == str(serial.value)
    with pytest.raises(tq.QuantizationError) as dask:
        tq.verify_equivalence(f, fq, pts, 0.1, executor=dask_client.get_executor())
    assert type(dask.value) is type(serial.value) and str(dask.value) == str(serial.value)


def test_empty_regions_raise_the_serial_error_before_any_task(dask_client) -> None:
    f, fq = tiny_pair()
    pts = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.01, 0.01, 0.01, 0.01]])  # between grid points
    with pytest.raises(tq.QuantizationError, match="no grid point") as serial:
        tq.verify_equivalence(f, fq, pts, 0.001)
    with pytest.raises(tq.QuantizationError) as dask:
        tq.verify_equivalence(f, fq, pts, 0.001, executor=dask_client.get_executor())
    assert str(dask.value) == str(serial.value)


def test_bad_workers_and_executors_are_clear_errors() -> None:
    f, fq = tiny_pair()
    pts = tiny_points()[:2]
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(tq.QuantizationError, match=r"workers must be an int >= 1"):
            tq.verify_equivalence(f, fq, pts, DELTA, workers=bad)
    with pytest.raises(
        tq.QuantizationError, match=r"executor must be a concurrent.futures.Executor.*got int"
    ):
        tq.verify_equivalence(f, fq, pts, DELTA, executor=4)
    with pytest.raises(tq.QuantizationError, match=r"got the class ProcessPoolExecutor"):
        tq.verify_equivalence(f, fq, pts, DELTA, executor=ProcessPoolExecutor)
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(tq.QuantizationError, match=r"either executor .* or workers=2"):
            tq.verify_equivalence(f, fq, pts, DELTA, executor=pool, workers=2)

    class Local(nn.Sequential):  # a class inside a function cannot be pickled for the workers
        pass

    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(tq.QuantizationError, match="f and f' must be picklable"):
            tq.verify_equivalence(Local(*f), fq, pts, DELTA, executor=pool)


def deep_pair() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """40-64x6-10 at 8 bits, regions of delta 0.1 that run to any short time limit (D8's test)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(40, 64)]
    for _ in range(5):
        layers += [nn.ReLU(), nn.Linear(64, 64)]
    f = nn.Sequential(*layers, nn.ReLU(), nn.Linear(64, 10))
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=8, per_channel=True),
        activation=tq.FixedPoint(bits=8),
        input=tq.FixedPoint(bits=8, signed=False),
    )
    fq = tq.quantize(f, cfg)
    tq.calibrate(fq, [torch.rand(256, 40)], progress=False)
    return f, fq, torch.rand(2, 40)


def test_the_time_limit_holds_in_workers(pool) -> None:
    f, fq, pts = deep_pair()
    results = tq.verify_equivalence(f, fq, pts, 0.1, domain=(0.0, 1.0), timeout=2.0, samples=0, executor=pool)
    for res in results:
        assert res.verdict == "UNKNOWN" and "timeout" in res.reason, res.reason
        assert 2.0 <= res.stats["seconds"] <= 2.0 + SLACK, res.stats


CTRL_C = """
import os, sys, torch
sys.path.insert(0, {repo!r})
from tests.test_parallel import deep_pair
import torchqv as tq

if __name__ == "__main__":
    f, fq, pts = deep_pair()
    print("solving", flush=True)
    try:
        tq.verify_equivalence(f, fq, pts, 0.1, domain=(0.0, 1.0), timeout=300, samples=0, workers=2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise SystemExit(3)
"""


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry.name))
    return out


def proc_file(pid: int, name: str) -> bytes:
    """``/proc/<pid>/<name>`` (``cmdline``, ``maps``: its loaded libraries), empty once it exited."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


@pytest.mark.slow  # two processes import torch, one spawns a pool: about 10 s each
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_ctrl_c_or_a_killed_parent_leaves_no_worker(tmp_path: Path, how: str) -> None:
    """Ctrl-C while the workers solve: the caller gets KeyboardInterrupt and its workers end; a
    parent killed outright (SIGKILL) leaves workers that notice and exit."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(textwrap.dedent(CTRL_C.format(repo=str(REPO))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        assert proc.stdout.readline().strip() == "solving"
        end = time.monotonic() + 90
        workers: set[int] = set()
        while time.monotonic() < end and len(workers) < 2:  # both workers started (spawned children)
            workers = {c for c in children(proc.pid) if b"spawn_main" in proc_file(c, "cmdline")}
            time.sleep(0.2)
        assert len(workers) >= 2, "the pool did not start"
        while time.monotonic() < end and not all(b"libz3" in proc_file(w, "maps") for w in workers):
            time.sleep(0.2)  # they import torchqv (a worker still importing notices only after)
        assert all(b"libz3" in proc_file(w, "maps") for w in workers), "the workers did not import torchqv"
        time.sleep(2.0)  # they take a region each
        if how == "sigint":  # a terminal's Ctrl-C: SIGINT to the whole process group
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(30) == 3
            assert proc.stdout.read().strip() == "interrupted"
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        end = time.monotonic() + 30
        while time.monotonic() < end and any(alive(w) for w in workers):
            time.sleep(0.2)
        assert not any(alive(w) for w in workers), "a worker outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()
