"""When torchqv shows a progress bar.

``progress=True`` always shows one, ``False`` never; ``None`` (automatic, the default where a
signature allows it) shows one only when the work is long, more than :data:`FEW` items (or of
unknown length, then only after :data:`DELAY` seconds), and only when stderr is a terminal: a
captured or redirected stream (a log file, CI, a pipe) gets no bar text at all.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

FEW = 4  # this many items or fewer: no bar unless asked for
DELAY = 1.0  # seconds before a bar of unknown length appears (automatic mode)


def on_terminal() -> bool:
    """Whether stderr (where tqdm writes) is an interactive terminal."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def show_progress(progress: bool | None, total: int | None = None) -> bool:
    """``progress`` when given; automatic (``None``): a terminal and more than :data:`FEW` items."""
    if progress is not None:
        return bool(progress)
    return on_terminal() and (total is None or total > FEW)


def progress_bar(
    iterable: Iterable[Any] | None = None,
    desc: str | None = None,
    total: int | None = None,
    progress: bool | None = None,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or of ``total`` steps), shown as :func:`show_progress` says."""
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if progress is None and total is None:
        kwargs.setdefault("delay", DELAY)
    return tqdm(iterable, desc=desc, total=total, disable=not show_progress(progress, total), **kwargs)
