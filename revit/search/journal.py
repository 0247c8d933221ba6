"""A journal file is the user's data: refuse what is not one, and recover a torn tail as Optuna reads it.

Optuna's journal is JSON lines appended under a file lock.  A writer killed mid-append leaves a last line
without its newline; Optuna's reader skips such a tail, but the next append would glue a new record to
it and leave a corrupt line in the middle of the file.  :func:`repair_torn_tail` moves the torn bytes
to ``PATH.torn-TIME`` (kept, never deleted) under the journal's own lock, before anything is appended.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path

from revit.errors import StorageError

log = logging.getLogger(__name__)
_PROBE = 1 << 16  # bytes read to recognise a journal's first record


def check_journal(path: Path) -> None:
    """Refuse a path that is not a journal file: a device, a folder, or a file (or a link to one) whose
    first line is not an Optuna journal record.  A missing or empty file is a new journal."""
    try:
        st = path.stat()  # follows a symbolic link: its target is what would be written
    except FileNotFoundError:
        if path.is_symlink():
            raise StorageError(f"journal {path} is a symbolic link to a missing file; give the file itself") from None
        return
    except OSError as e:
        raise StorageError(f"cannot read the journal file {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise StorageError(f"journal {path} is not a regular file (a device or a folder); give a file path")
    if st.st_size == 0:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(_PROBE)
    except OSError as e:
        raise StorageError(f"cannot read the journal file {path}: {e.strerror}") from None
    first = head.split(b"\n", 1)[0]
    try:
        record = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        record = None
    if not (isinstance(record, dict) and "op_code" in record):
        raise StorageError(f"{path} is not an Optuna journal file (its first line is no journal record); "
                           "refusing to append to it: give a new file or an existing journal")


LOCK_GRACE_S = 30.0  # Optuna's own grace period before it releases a lock link whose journal is not written


def release_dangling_lock(path: Path, grace_s: float = LOCK_GRACE_S) -> bool:
    """Release the lock a killed writer left on ``path`` where Optuna cannot judge it stale; True when released.

    Optuna's lock is a symbolic link ``PATH.lock -> PATH`` judged stale by its target's age.  A writer given
    a relative path (``journal:sub/j.log``) wrote a link that dangles (a link's target is relative to its own
    folder), so Optuna retried forever at full speed.  A dangling lock link whose target names this journal
    is waited for until it is ``grace_s`` old, then removed as Optuna releases a lock (rename, then unlink).
    revit itself gives Optuna absolute paths, so the links it writes never dangle.
    """
    lock = path.with_name(path.name + ".lock")
    while True:
        try:
            st = os.lstat(lock)
        except FileNotFoundError:
            return False
        if not stat.S_ISLNK(st.st_mode) or lock.exists() or Path(os.readlink(lock)).name != path.name:
            return False  # no lock, a live one Optuna judges itself, or not this journal's
        age = time.time() - st.st_mtime
        if age < grace_s:
            time.sleep(min(1.0, grace_s - age))
            continue
        side = lock.with_name(f"{lock.name}.{os.getpid()}-{time.monotonic_ns()}.rename")
        try:
            os.rename(lock, side)
        except FileNotFoundError:
            continue  # another process released it first
        os.unlink(side)
        log.warning("journal %s: released the lock a killed writer left (%s, %.0f s old)", path, lock, age)
        return True


def repair_torn_tail(path: Path) -> int:
    """Move a last line without its newline (a killed writer's) aside; return the bytes moved (0: none).

    Runs under the journal's file lock, so a live writer's append is never mistaken for a torn one.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return 0
            start = size
            chunk = 1 << 16
            while start > 0:  # find the last newline from the end
                lo = max(0, start - chunk)
                f.seek(lo)
                buf = f.read(start - lo)
                i = buf.rfind(b"\n")
                if i >= 0:
                    start = lo + i + 1
                    break
                start = lo
            f.seek(start)
            torn = f.read()
            side = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            side.write_bytes(torn)
            f.truncate(start)
            f.flush()
            os.fsync(f.fileno())
    finally:
        lock.release()
    log.warning("journal %s ended in a torn record (%d bytes, a killed writer's); moved it to %s", path, len(torn),
                side)
    return len(torn)


__all__ = ["LOCK_GRACE_S", "check_journal", "release_dangling_lock", "repair_torn_tail"]
