"""The one validation layer of revit: numbers, sizes and output paths, for options and file values alike.

Two faces over the same checks:

- argparse ``type=`` factories (:func:`number`, :func:`integer`, :func:`count`):
  a bad option value becomes argparse's one-line usage error naming the option, exit 2;
- plain checkers (:func:`check_number`, :func:`check_int`, :func:`check_count`, :func:`check_fits_memory`,
  :func:`check_output_file`, :func:`check_output_dir`, :func:`check_input_file`) for values read from
  files and for paths: they raise a :class:`~revit.errors.RevitError` (one line, exit 2 in the CLI).

A number is *valid* when it is a real int/float (not a bool, not a string), finite (no NaN, no inf,
no ``1e400`` that overflows to inf) and inside its range.  Torch-free and cheap to import.
"""

from __future__ import annotations

import argparse
import errno
import functools
import math
import os
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from revit.errors import ConfigError, OutputError, RevitError

Number = int | float


# message values --------------------------------------------------------------------------------
def short(value: Any, limit: int = 40, *, quote: bool = True) -> str:
    """``value`` for a message: its repr (or str) cut to ``limit`` characters, so a hostile value (a huge
    number, an expanded YAML alias) never becomes a huge message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {len(str(abs(value))) if value.bit_length() < 10_000 else 'thousands of'} digits"
    try:
        text = repr(value) if quote else str(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text)} characters)"
    return text


def elide(text: str, limit: int = 160) -> str:
    """``text`` cut to about ``limit`` characters by dropping its middle: a 4 KB path keeps its start (where it
    is) and its end (the file name), with the number of characters left out between them."""
    if len(text) <= limit:
        return text
    keep = max(limit // 2 - 10, 1)
    return f"{text[:keep]}...({len(text) - 2 * keep} characters)...{text[-keep:]}"


# machine bounds --------------------------------------------------------------------------------
MAX_COUNT = 2**31 - 1  # counts, sizes, epochs, samples: what an int32 (torch, numpy indexing) holds
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_LR = 10.0  # learning rates: beyond this AdamW diverges at once (1e308 overflowed float32 mid-run)
MAX_BATCH = 1 << 16  # a batch size read from a file (a latency table's): far beyond any measured batch
MAX_LATENCY_S = 3600.0  # one block's latency on one batch, in seconds: an hour is beyond any measurement
WORKER_MEMORY = 1 << 30  # each worker process (torch, a model, a loader) needs about 1 GiB
MAX_PID = 1 << 22  # Linux's highest pid_max: a worker id naming a larger pid names no process
MIN_HEARTBEAT_S = 1.0  # each beat is a storage write (a journal record): 1e-6 s wrote 24k records per trial
MAX_WAIT_S = 7 * 86400.0  # a heartbeat interval or a grace period: beyond a week, a typo (and threading overflows)


@functools.lru_cache(maxsize=1)
def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_workers() -> int:
    """The most worker processes this machine can run at once: one per CPU, and about 1 GiB of memory each."""
    return max(1, min(cpu_count(), memory_bytes() // WORKER_MEMORY))


def max_threads() -> int:
    """The most threads per process: four per CPU (oversubscription beyond that only slows a run down)."""
    return 4 * cpu_count()


# numbers ---------------------------------------------------------------------------------------
def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    """``>= 0 and < 1``: the range as the error message states it."""
    def fmt(x: float) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {fmt(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {fmt(hi)}")
    return " and ".join(parts)


def range_problem(value: Number, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                  hi_open: bool = False) -> str | None:
    """Why ``value`` is not a finite number in the range, or None when it is (ints of any size compare exactly)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        return f"must be {_range_text(lo, hi, lo_open, hi_open)}"
    return None


def check_number(value: Any, name: str, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False, integer: bool = False,
                 error: type[RevitError] = ConfigError) -> Any:
    """``value`` when it is a finite number (an int when ``integer``) in the range; else ``error`` naming it.

    Strings are refused (``lr: fast``, ``seeds: [zero]``); YAML gives numbers as numbers.
    """
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise error(f"{name} must be {kind}, got {short(value)}")
    problem = range_problem(value, lo, hi, lo_open=lo_open, hi_open=hi_open)
    if problem:
        raise error(f"{name} {problem}, got {short(value)}")
    return value


def check_int(value: Any, name: str, lo: int | None = None, hi: int | None = None, *,
              error: type[RevitError] = ConfigError) -> int:
    """An integer in ``[lo, hi]`` (see :func:`check_number`)."""
    return int(check_number(value, name, lo, hi, integer=True, error=error))


def check_count(value: Any, name: str, *, hi: int = MAX_COUNT, error: type[RevitError] = ConfigError) -> int:
    """A count: an integer in ``[1, hi]`` (by default what an int32 holds)."""
    return check_int(value, name, 1, hi, error=error)


def check_workers(value: Any, name: str, *, lo: int = 1, error: type[RevitError] = ConfigError) -> int:
    """A number of worker processes: at most :func:`max_workers` (this machine's CPUs and memory)."""
    v = check_int(value, name, lo, error=error)
    if v > max_workers():
        raise error(workers_problem(name, v))
    return v


def workers_problem(name: str, value: int) -> str:
    return (f"{name} {short(value)} is more than this machine can run: at most {max_workers()} worker "
            f"process(es) ({cpu_count()} CPU(s), {format_bytes(memory_bytes())} of memory, about "
            f"{format_bytes(WORKER_MEMORY)} each)")


def check_optional(value: Any, check: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
    """``None``, or ``check(value, name, ...)``."""
    return None if value is None else check(value, name, *args, **kwargs)


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite float in the range (``nan``, ``inf``, ``1e400`` and out-of-range refused)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {short(text)}") from None
        problem = range_problem(v, lo, hi, lo_open=lo_open, hi_open=hi_open)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {short(text)}")
        return v

    parse.__name__ = "number"
    return parse


def integer(lo: int | None = None, hi: int | None = MAX_COUNT) -> Callable[[str], int]:
    """argparse type: an integer in ``[lo, hi]`` (``hi`` defaults to :data:`MAX_COUNT`; digits are counted
    before converting, so a 5000-digit value is one line too)."""

    def parse(text: str) -> int:
        digits = text.strip().lstrip("+-").replace("_", "")
        if len(digits) > 40 and digits.isdigit():  # beyond any bound; int() of 4300+ digits raises
            sign = "-" if text.strip().startswith("-") else ""
            huge = int(f"{sign}1{'0' * 41}")
            raise argparse.ArgumentTypeError(f"{range_problem(huge, lo, hi) or 'out of range'}, got an integer of "
                                             f"{len(digits)} digits")
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {short(text)}") from None
        problem = range_problem(v, lo, hi)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {short(text)}")
        return v

    parse.__name__ = "integer"
    return parse


def count(hi: int = MAX_COUNT) -> Callable[[str], int]:
    """argparse type: an integer in ``[1, hi]`` (sizes, samples, epochs)."""
    return integer(1, hi)


def non_negative(hi: int = MAX_COUNT) -> Callable[[str], int]:
    """argparse type: an integer in ``[0, hi]`` (``0: none`` options)."""
    return integer(0, hi)


def seed() -> Callable[[str], int]:
    """argparse type: a seed, an integer in ``[0, 2**32 - 1]`` (numpy's range)."""
    return integer(0, MAX_SEED)


def threads() -> Callable[[str], int]:
    """argparse type: torch threads per process, in ``[1, max_threads()]`` (four per CPU of this machine)."""
    f = integer(1, max_threads())
    f.__name__ = "threads"
    return f


def loader_workers() -> Callable[[str], int]:
    """argparse type: DataLoader worker processes per process, in ``[0, max_threads()]`` (four per CPU: they
    mostly wait on I/O and decoding, unlike the study's training processes of :func:`workers`)."""
    f = integer(0, max_threads())
    f.__name__ = "loader_workers"
    return f


def check_loader_workers(value: Any, name: str, *, error: type[RevitError] = ConfigError) -> int:
    """DataLoader workers read from a file or a dataclass: an integer in ``[0, max_threads()]``."""
    return check_int(value, name, 0, max_threads(), error=error)


def workers(lo: int = 1) -> Callable[[str], int]:
    """argparse type: worker processes, in ``[lo, max_workers()]`` (this machine's CPUs and memory)."""

    def parse(text: str) -> int:
        v = integer(lo, None)(text)
        if v > max_workers():
            raise argparse.ArgumentTypeError(workers_problem("", v).strip())
        return v

    parse.__name__ = "workers"
    return parse


def fraction(*, lo_open: bool = True, hi_open: bool = True) -> Callable[[str], float]:
    """argparse type: a number in (0, 1) (ends included when asked)."""
    return number(0.0, 1.0, lo_open=lo_open, hi_open=hi_open)


def check_fields(cls: type, raw: Mapping[str, Any], where: str, *, error: type[RevitError] = ConfigError) -> None:
    """Check each value of ``raw`` against the annotation of ``cls``'s dataclass field of that name.

    ``int`` fields take integers, ``float`` fields finite numbers, ``str``/``bool`` their own type, and
    ``X | None`` also ``None``: a YAML value of the wrong type (``lr: fast``, ``train_limit: lots``) is
    one line naming ``where.key``, not a traceback deep inside the consumer.
    """
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        v, hint = raw[f.name], hints.get(f.name)
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if v is None and type(None) in args:
            continue
        name = f"{where}.{f.name}"
        if int in args and float not in args:
            check_int(v, name, error=error)
        elif float in args:
            check_number(v, name, error=error)
        elif str in args and not isinstance(v, str):
            raise error(f"{name} must be a string, got {short(v)}")
        elif bool in args and not isinstance(v, bool):
            raise error(f"{name} must be true or false, got {short(v)}")


# memory ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def memory_bytes() -> int:
    """The memory this process may use: physical RAM, or the cgroup limit when lower."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 1 << 62
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(f).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return int(total)


def format_bytes(n: float) -> str:
    """``7.9 TiB``: a size for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def check_fits_memory(nbytes: float, what: str, *, hint: str = "use smaller widths",
                      error: type[RevitError] = ConfigError) -> None:
    """Refuse, before any allocation, something that needs more than this machine's memory."""
    avail = memory_bytes()
    if not math.isfinite(nbytes) or nbytes > avail:
        raise error(f"{what} needs {format_bytes(nbytes)} of memory, more than this machine's "
                    f"{format_bytes(avail)}; {hint}")


# paths -----------------------------------------------------------------------------------------
_REASONS = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied", errno.EPERM: "not permitted", errno.EISDIR: "is a directory",
            errno.ENOTDIR: "a parent is not a directory", errno.EDQUOT: "disk quota exceeded",
            errno.EEXIST: "exists", errno.ENAMETOOLONG: "name too long", errno.EFBIG: "file too large"}
# errors that come from where an output goes, not from a bug: the CLI reports them in one line
OUTPUT_ERRNOS = frozenset(_REASONS) - {errno.EEXIST}


def output_error(e: OSError, path: str | os.PathLike[str]) -> OutputError:
    """An :class:`OutputError` naming ``path`` and the reason of ``e`` (no space, read-only, ...)."""
    reason = _REASONS.get(e.errno or 0) or e.strerror or type(e).__name__
    return OutputError(f"cannot write {path}: {reason}")


def _existing_ancestor(p: Path) -> Path:
    """``p`` or its nearest existing parent (where a new output's folders would be created)."""
    q = p
    while not q.exists() and q != q.parent:
        q = q.parent
    return q


def _check_writable_dir(folder: Path, name: str, path: str | os.PathLike[str]) -> None:
    """The nearest existing ancestor of ``folder`` is a folder this process can write in."""
    anc = _existing_ancestor(folder)
    if not anc.is_dir():
        raise OutputError(f"{name} {path}: {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK) or _read_only(anc):
        why = "read-only file system" if _read_only(anc) else "permission denied"
        raise OutputError(f"{name} {path}: cannot write in {anc} ({why})")


def _read_only(p: Path) -> bool:
    """Whether ``p`` lies on a file system mounted read-only (root passes ``os.access`` there)."""
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output_file(path: str | os.PathLike[str], name: str = "--out") -> Path:
    """An output file path that can be written: not a directory, its folder creatable and writable."""
    p = Path(path)
    if str(path) == "" or p.is_dir() or str(path).endswith(os.sep):
        raise OutputError(f"{name} {path}: is a directory; give a file path")
    _check_writable_dir(p.parent, name, path)
    return p


def check_output_dir(path: str | os.PathLike[str], name: str = "--out") -> Path:
    """An output folder that can be created or written: not an existing file, writable."""
    p = Path(path)
    if str(path) == "":
        raise OutputError(f"{name}: give a folder")
    if p.exists() and not p.is_dir():
        raise OutputError(f"{name} {path}: is a file, not a folder")
    _check_writable_dir(p, name, path)
    return p


def check_input_file(path: str | os.PathLike[str], what: str, *, error: type[RevitError] = ConfigError) -> Path:
    """An existing regular file (a database, a table) that must not be created by opening it."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {path}: no such file")
    return p


__all__ = ["MAX_BATCH", "MAX_COUNT", "MAX_LATENCY_S", "MAX_LR", "MAX_SEED", "OUTPUT_ERRNOS", "check_count",
           "check_fields", "check_fits_memory", "check_input_file", "check_int", "check_loader_workers",
           "check_number", "check_optional", "check_output_dir", "check_output_file", "check_workers", "count",
           "cpu_count", "elide", "format_bytes", "fraction", "integer", "loader_workers", "max_threads", "max_workers",
           "memory_bytes", "non_negative", "number", "output_error", "range_problem", "seed", "short", "threads",
           "workers", "workers_problem"]
