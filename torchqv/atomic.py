"""Calls that change a model are all or nothing from the caller's view.

``round_weights`` rewrites weights layer by layer and the verifier switches models to eval mode;
an error or a ``KeyboardInterrupt`` (Ctrl-C) part way must not leave a half-rounded model or a
changed mode behind.  :func:`atomic` keeps the modules' training flags, snapshots tensors and puts
them back if the body raises anything (``BaseException``: interrupts included), and adds a note to
the exception (logged too for interrupts) that says the model is as it was.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def _tell(exc: BaseException, message: str) -> None:
    """Attach ``message`` to ``exc`` (shown under its traceback, Python 3.11+); an interrupt, or
    any exception before Python 3.11, is also logged."""
    if hasattr(exc, "add_note"):
        exc.add_note(message)
    if not isinstance(exc, Exception) or not hasattr(exc, "add_note"):
        log.warning(message)


@contextmanager
def atomic(call: str, modules: Iterable[nn.Module], tensors: Iterable[torch.Tensor] = ()) -> Iterator[None]:
    """Run the body of ``call``; the training flag of every module (``modules`` and their
    sub-modules) is the same afterwards, and if the body raises, the ``tensors`` get their values
    back and the exception says so."""
    modes = [(m, m.training) for top in modules for m in top.modules()]
    saved = [(t, t.detach().clone()) for t in tensors]
    try:
        yield
    except BaseException as exc:
        with torch.no_grad():
            for t, value in saved:
                t.copy_(value)
        what = "weights and modes" if saved else "modes"
        _tell(
            exc, f"{call} stopped ({type(exc).__name__}): the model is unchanged (its {what} were restored)"
        )
        raise
    finally:
        for m, training in modes:
            m.training = training


def keeps_modes(*arguments: str) -> Callable[[F], F]:
    """Decorator: the call runs under :func:`atomic` for the modules passed as ``arguments``
    (parameter names), so their training flags are the same afterwards, whatever happens."""

    def deco(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind_partial(*args, **kwargs).arguments
            modules = [bound[a] for a in arguments if isinstance(bound.get(a), nn.Module)]
            with atomic(fn.__name__, modules):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco
