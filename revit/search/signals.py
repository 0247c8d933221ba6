"""Ctrl-C and SIGTERM during a study: delivered inside a trial's training, held through its bookkeeping.

A trial's life has bookkeeping around its training: Optuna creates it, revit tags it (role, family,
worker), Optuna ends it, and a stale trial is failed before its retry is enqueued.  A KeyboardInterrupt in
the middle of one of these steps left a trial FAIL without its ``interrupted`` flag (never retried), or a
failed trial without its retry.  While :func:`held` is active, SIGINT (and SIGTERM where the CLI made it an
interrupt) is recorded instead of raised, and raised as KeyboardInterrupt at the next safe point: at once
inside :func:`delivered` (a trial's training, where the trial flags itself interrupted; a wait) or at
:func:`checkpoint` (between trials).  A second signal while one is held is raised at once: a user who
insists stops even a storage that hangs.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any


class _Guard:
    """The process's held signals: how many are pending and whether they are delivered at once."""

    def __init__(self) -> None:
        self.depth = 0  # nesting of held()
        self.open = 0  # nesting of delivered()
        self.pending = 0  # signals received while held
        self.saved: dict[int, Any] = {}
        self.saved_hook: Any = sys.unraisablehook

    def handler(self, signum: int, frame: Any) -> None:
        self.pending += 1  # forgotten only once the KeyboardInterrupt is seen to propagate (see delivered)
        if self.open or self.pending > 1:
            raise KeyboardInterrupt

    def unraisable(self, u: Any) -> None:
        """A KeyboardInterrupt raised where Python cannot raise (a garbage-collector callback) is dropped
        quietly: it is still pending and raised at the next safe point.  Anything else goes to the old hook."""
        if self.pending and u.exc_type is not None and issubclass(u.exc_type, KeyboardInterrupt):
            return
        self.saved_hook(u)

    def take(self) -> None:
        """Raise KeyboardInterrupt when a signal is pending (and forget it)."""
        if self.pending:
            self.pending = 0
            raise KeyboardInterrupt


_GUARD = _Guard()


def _interrupts() -> list[int]:
    """The signals that raise KeyboardInterrupt here: SIGINT with Python's default handler, and SIGTERM
    when a Python handler (the CLI's) was installed for it."""
    out: list[int] = []
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        out.append(signal.SIGINT)
    if callable(signal.getsignal(signal.SIGTERM)):
        out.append(signal.SIGTERM)
    return out


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM within the block (re-entrant; main thread only, elsewhere a no-op).

    A signal still pending when the outermost block ends is raised there, after the handlers are restored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    g = _GUARD
    if g.depth == 0:
        g.pending, g.open = 0, 0
        g.saved = {s: signal.getsignal(s) for s in _interrupts()}
        g.saved_hook, sys.unraisablehook = sys.unraisablehook, g.unraisable
        for s in g.saved:
            signal.signal(s, g.handler)
    g.depth += 1
    try:
        yield
    finally:
        g.depth -= 1
        if g.depth == 0:
            for s, h in g.saved.items():
                signal.signal(s, h)
            g.saved, sys.unraisablehook = {}, g.saved_hook
            pending, g.pending = g.pending, 0
            if pending:
                raise KeyboardInterrupt


@contextlib.contextmanager
def delivered() -> Iterator[None]:
    """Within the block a signal raises at once (a pending one on entry): a trial's training, a wait.

    One that Python swallowed (raised in a garbage-collector callback) stays pending for the next safe point."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    g = _GUARD
    g.take()
    g.open += 1
    try:
        yield
    except KeyboardInterrupt:
        g.pending = 0  # delivered
        raise
    finally:
        g.open -= 1


@contextlib.contextmanager
def closed() -> Iterator[None]:
    """Within the block signals are held again, even inside :func:`delivered`: a trained trial's results
    are stored whole (a signal there would throw the finished training away and train the config twice)."""
    g = _GUARD
    opened, g.open = g.open, 0
    try:
        yield
    finally:
        g.open = opened


def poll() -> None:
    """Inside :func:`delivered`: raise a signal that came during a :func:`closed` block, now that the block's
    storage write is whole (outside ``delivered`` it stays pending for the next checkpoint)."""
    if _GUARD.open:
        _GUARD.take()


def checkpoint() -> None:
    """A safe point between trials: raise the signal held meanwhile, if any."""
    _GUARD.take()


__all__ = ["checkpoint", "closed", "delivered", "held", "poll"]
