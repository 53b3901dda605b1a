"""The hard deadline around z3 calls (``torchqv.z3_deadline``)."""

from __future__ import annotations

import time

import z3

from torchqv.z3_deadline import Z3Deadline


def _pigeonhole(s: z3.Solver, pigeons: int, guard: z3.BoolRef) -> None:
    """``pigeons`` pigeons in ``pigeons - 1`` holes, behind ``guard``: unsat, and exponential for
    resolution, so z3 cannot finish it at this size."""
    holes = pigeons - 1
    x = [[z3.Bool(f"p{i}h{j}") for j in range(holes)] for i in range(pigeons)]
    for i in range(pigeons):
        s.add(z3.Implies(guard, z3.Or(x[i])))
    for j in range(holes):
        for a in range(pigeons):
            for b in range(a + 1, pigeons):
                s.add(z3.Implies(guard, z3.Not(z3.And(x[a][j], x[b][j]))))


def test_interrupted_check_answers_unknown_and_the_solver_stays_usable() -> None:
    s = z3.Solver()
    hard, easy = z3.Bools("hard easy")
    _pigeonhole(s, 14, hard)
    y = z3.Int("y")
    s.add(z3.Implies(easy, z3.And(y > 3, y < 5)))
    start = time.perf_counter()
    with Z3Deadline(s.ctx, start + 0.3):
        answer = s.check(hard)
    assert time.perf_counter() - start < 2.0  # interrupted, not solved
    # unknown; once (a loaded run) an interrupted check answered sat on this unsat formula, which
    # is why the verifier replays every model exactly and distrusts interrupted answers
    assert answer != z3.unsat
    with Z3Deadline(s.ctx, time.perf_counter() + 60):
        assert s.check(easy) == z3.sat  # the interrupted context answers the next query
    assert s.model().eval(y).as_long() == 4
