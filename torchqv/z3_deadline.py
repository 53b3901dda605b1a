"""A hard deadline for a z3 call.

z3's own ``timeout`` parameter is not always honoured (preprocessing and some MaxSAT relaxation
steps run on for minutes past it), so a watchdog thread interrupts the context at the deadline
and keeps interrupting until the call returns; the interrupted call answers ``unknown`` (once, under
a loaded test run, an interrupted check answered ``sat`` on an unsatisfiable formula: callers must
not trust any answer of an interrupted call that they do not check, as the verifier does by
replaying every model exactly).  Used by
the equivalence verifier (``torchqv.verify``) and the exact trainer (``torchqv.theory``).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from .extras import require

if TYPE_CHECKING:
    import z3
else:
    z3 = require("z3", "torchqv.verify")


class Z3Deadline:
    """``with Z3Deadline(ctx, deadline): solver.check()`` (``deadline``: ``time.perf_counter()``)."""

    def __init__(self, ctx: z3.Context, deadline: float) -> None:
        self.ctx, self.deadline, self.done = ctx, deadline, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.done.wait(max(0.0, self.deadline - time.perf_counter())):
            return
        while not self.done.is_set():
            self.ctx.interrupt()
            self.done.wait(0.05)

    def __enter__(self) -> Z3Deadline:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
