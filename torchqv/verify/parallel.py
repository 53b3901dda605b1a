"""Running the verifier's regions on other processes or machines.

The engine (:func:`torchqv.verify.verify_equivalence`) decides regions independently; this module
holds what it needs to hand them to an executor:

* :func:`check_workers` and :func:`check_executor` validate the ``workers`` / ``executor``
  arguments (``VerificationInputError`` with the fix);
* :func:`process_pool` starts a local pool of ``workers`` processes (``spawn``: a fresh
  interpreter, safe with torch's threads) and ends it: normally its idle processes exit, on an
  error or Ctrl-C (``KeyboardInterrupt``) it cancels what has not started and terminates the
  worker processes, so no region keeps running and no process is left behind.  Its workers
  ignore SIGINT (the terminal sends Ctrl-C to the whole process group; the parent decides),
  use one torch thread each, and exit by themselves when their parent dies (even by SIGKILL);
* :func:`in_order` submits tasks to any executor and returns their results in submission order;
  the first failure in that order is raised as it is (same type and message as in the serial
  path) after the other tasks are cancelled.

An executor is anything with ``submit(fn, *args) -> future`` whose futures have ``result()`` and
``cancel()``: a ``concurrent.futures`` executor, a Dask ``distributed.Client`` or its
``client.get_executor()``, an adapter submitting Ray tasks (README), ...  A thread pool is
accepted, but regions in one process run one at a time (z3's context is per process): threads
give no speed-up.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import torch

from ..errors import VerificationInputError

PARENT_POLL = 0.5  # seconds between a worker's checks that its parent is alive


def check_workers(workers: Any, what: str = "workers") -> int:
    """``workers`` as an int >= 1, or ``VerificationInputError`` naming ``what``."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise VerificationInputError(
            f"{what} must be an int >= 1 (1: no worker processes; N: a local pool of N processes), "
            f"got {workers!r}"
        )
    return workers


def check_executor(executor: Any, workers: int = 1, owner: str = "") -> None:
    """``executor`` (``None`` or able to ``submit(fn, *args)``) and ``workers`` (an int >= 1), not
    both given; else ``VerificationInputError`` (its message starts with ``owner``, e.g.
    ``"EquivalenceCheck: "``)."""
    check_workers(workers, f"{owner}workers")
    if executor is None:
        return
    if isinstance(executor, type):
        raise VerificationInputError(
            f"{owner}executor must be an executor object, got the class {executor.__name__}; "
            f"create one, e.g. executor={executor.__name__}(...)"
        )
    if not callable(getattr(executor, "submit", None)):
        raise VerificationInputError(
            f"{owner}executor must be a concurrent.futures.Executor or any object with submit(fn, *args) "
            "returning a future (e.g. a Dask distributed Client's client.get_executor()), got "
            f"{type(executor).__name__} {executor!r}; for a local process pool give workers=N instead"
        )
    if workers > 1:
        raise VerificationInputError(
            f"{owner}give either executor (regions run on it) or workers={workers} (a local pool), not both"
        )


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:  # re-parented: the parent died without ending the pool
            os._exit(1)
        time.sleep(PARENT_POLL)


def _init_worker(parent: int, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="torchqv-parent-watch").start()


def terminate(pool: ProcessPoolExecutor, grace: float = 5.0) -> None:
    """Cancel the pool's waiting tasks and end its processes now (running tasks are lost)."""
    procs = getattr(pool, "_processes", None)  # taken before shutdown forgets them
    processes = list(procs.values()) if isinstance(procs, dict) else []
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    end = time.monotonic() + grace
    for proc in processes:
        proc.join(max(0.0, end - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


@contextlib.contextmanager
def _standard_start_method() -> Iterator[None]:
    """A spawned child restores its parent's default start method before anything else; in a
    joblib (loky) worker, e.g. a job of Hydra's joblib launcher, that is ``"loky"``, which the
    child does not know (``ValueError: cannot find context for 'loky'``).  There the default is
    ``"spawn"`` while the block runs (the pool starts its processes when tasks arrive)."""
    method = multiprocessing.get_start_method(allow_none=True)
    if method in (None, *multiprocessing.get_all_start_methods()):
        yield
        return
    multiprocessing.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(method, force=True)


@contextlib.contextmanager
def process_pool(workers: int, threads: int = 1) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``workers`` spawned processes (``threads`` torch threads each) for a ``with``
    block.  On a normal exit its processes end once idle; tasks still queued or running then
    (results nobody will read, e.g. regions of a refuted CEG4N candidate) are cancelled and their
    processes terminated.  On an exception or Ctrl-C its tasks are cancelled and its processes
    terminated before the exception goes on."""
    check_workers(workers)
    with _standard_start_method():
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(), threads),
        )
        try:
            yield pool
        except BaseException:
            terminate(pool)
            raise
        if getattr(pool, "_pending_work_items", None):  # abandoned tasks: do not wait for them
            terminate(pool)
        else:
            pool.shutdown(wait=True)


@contextlib.contextmanager
def optional_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """:func:`process_pool` for ``workers > 1``, else ``None`` (run in this process)."""
    if check_workers(workers) == 1:
        yield None
        return
    with process_pool(workers) as pool:
        yield pool


def in_order(executor: Executor | Any, fn: Callable[..., Any], tasks: Iterable[Sequence[Any]]) -> list[Any]:
    """``[fn(*args) for args in tasks]`` on ``executor``, in the order of ``tasks`` whatever the
    order of completion.  The first task (in that order) that raised raises here, unchanged; the
    tasks not started are then cancelled (also on Ctrl-C)."""
    futures: list[Any] = []
    try:
        for args in tasks:
            futures.append(executor.submit(fn, *args))
        return [fut.result() for fut in futures]
    except BaseException:
        for fut in futures:
            with contextlib.suppress(Exception):
                fut.cancel()
        raise
