"""revit's logging convention: modules log, the CLI decides what is shown.

Every module logs through its own logger, ``log = logging.getLogger(__name__)``: ``log.info`` for what
a command reports to a person (a summary, a file written), ``log.warning`` for what may be a
mistake, ``log.debug`` for detail.  Library code never adds handlers or prints diagnostics: a
program that uses revit configures ``logging`` as it likes (Python shows warnings by default).  Only
a command's result (a config YAML, a JSON object) goes to stdout.

The CLI calls :func:`configure` once with ``-v`` minus ``-q``: 0 shows INFO lines as plain
sentences on stderr and warnings as ``revit: warning: ...``; -1 warnings only; -2 errors only; 1 adds
DEBUG lines and Optuna's own INFO lines (quiet otherwise, so a trial is reported once, by revit).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

ROOT = "revit"
_state = {"verbosity": 0}


def level_for(verbosity: int) -> int:
    """The logging level of a verbosity (``-v`` count minus ``-q`` count)."""
    if verbosity <= -2:
        return logging.ERROR
    return {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)


def verbosity() -> int:
    """The verbosity the CLI configured (0 when it did not)."""
    return _state["verbosity"]


class _Stderr(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is at the time of each record (tests and callers may swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _Format(logging.Formatter):
    """INFO and DEBUG lines as they are; warnings and errors prefixed like every revit error line."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            msg = f"revit: {record.levelname.lower()}: {msg}"
        if record.exc_info and logging.getLogger(ROOT).isEnabledFor(logging.DEBUG):
            msg += "\n" + self.formatException(record.exc_info)
        return msg


def configure(verbosity: int = 0) -> None:
    """Send revit's log records to stderr at the level of ``verbosity`` (the CLI's ``-v``/``-q``)."""
    _state["verbosity"] = verbosity
    logger = logging.getLogger(ROOT)
    for h in [h for h in logger.handlers if isinstance(h, _Stderr)]:
        logger.removeHandler(h)
    handler = _Stderr()
    handler.setFormatter(_Format())
    logger.addHandler(handler)
    logger.setLevel(level_for(verbosity))
    logger.propagate = False  # a root handler configured elsewhere would print every line twice


@contextlib.contextmanager
def cli_session(verbosity: int = 0) -> Iterator[None]:
    """:func:`configure` and :func:`warnings_as_log_lines` for one command; the logger's previous handlers,
    level and propagation come back afterwards (``main()`` called in-process leaves logging as it was)."""
    logger = logging.getLogger(ROOT)
    saved = (list(logger.handlers), logger.level, logger.propagate, _state["verbosity"])
    configure(verbosity)
    try:
        with warnings_as_log_lines():
            yield
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
        _state["verbosity"] = saved[3]


def configure_optuna() -> None:
    """Optuna's own logger at the configured verbosity: its INFO lines (one per trial) only with ``-v``.

    Call it after importing optuna (optuna sets its level when first imported); the CLI does for the
    commands that run studies.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbosity() >= 1 else optuna.logging.WARNING)
    for h in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NoInterruptTrace) for f in h.filters):
            h.addFilter(_NoInterruptTrace())


class _NoInterruptTrace(logging.Filter):
    """Drops Optuna's "trial failed" record of a trial stopped by Ctrl-C or SIGTERM (a traceback of
    KeyboardInterrupt): revit flags the trial for a retry and ends with one ``revit: interrupted`` line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0] if record.exc_info else None
        return not (exc is not None and issubclass(exc, KeyboardInterrupt))


@contextlib.contextmanager
def warnings_as_log_lines() -> Iterator[None]:
    """Within the block, ``warnings.warn`` shows as one ``revit: warning: ...`` line (no file and source line)."""
    old = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        logging.getLogger(ROOT).warning("%s", message)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old


__all__ = ["cli_session", "configure", "configure_optuna", "level_for", "verbosity", "warnings_as_log_lines"]
