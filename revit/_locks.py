"""Advisory locks on run folders and table journals: one revit run writes a folder at a time.

A lock is an exclusive ``flock`` on the folder (or journal) itself, held until :func:`release` or the end of
the process; a second run into it refuses in one line (:class:`RunLockedError`).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from revit.errors import RunExistsError


class RunLockedError(RunExistsError):
    """An output folder (or table journal) is in use by another revit run that holds its lock."""


_HELD: dict[str, int] = {}  # realpath of a locked folder or journal -> the descriptor holding its flock


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _try_lock(path: Path, *, directory: bool) -> int | None:
    """A descriptor of ``path`` holding an exclusive ``flock``, or None when another process holds it."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0) | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _locked_error(path: Path, flag: str) -> RunLockedError:
    return RunLockedError(f"{path} is in use by another revit run (it holds the folder's lock)",
                          hint=f"wait for that run to end or choose another {flag}")


def check_unlocked(path: str | os.PathLike[str], *, flag: str = "--out") -> None:
    """Refuse (reading only) a folder or journal whose lock another process holds."""
    p = Path(path)
    if not p.exists() or p.is_symlink() or _key(p) in _HELD:
        return
    try:
        fd = _try_lock(p, directory=p.is_dir())
    except OSError:
        return  # unreadable: the command's own checks name it
    if fd is None:
        raise _locked_error(p, flag)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def acquire(path: str | os.PathLike[str], *, flag: str = "--out") -> None:
    """Hold ``path``'s advisory lock until :func:`release` or the end of the process (re-entrant)."""
    p = Path(path)
    if _key(p) in _HELD:
        return
    try:
        fd = _try_lock(p, directory=p.is_dir())
    except OSError as e:
        from revit.input_checks import output_error

        raise output_error(e, p) from None
    if fd is None:
        raise _locked_error(p, flag)
    _HELD[_key(p)] = fd


def release(path: str | os.PathLike[str]) -> None:
    """Let go of ``path``'s lock (after the run finished, or when it was abandoned)."""
    fd = _HELD.pop(_key(Path(path)), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock
