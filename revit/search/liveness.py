"""Liveness of a study's trials: heartbeats, dead workers, and the retries of failed and interrupted trials.

Every value read here comes from the storage, where any program (or a corrupt journal) may have written
it: a worker's pid and a heartbeat go through the validation layer's bounds, and a value out of them
counts as absent (a trial without a heartbeat is judged by its start time).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from revit.errors import ConfigError
from revit.input_checks import MAX_PID, check_int, check_number
from revit.search import attrs as A

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial, Trial

log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_gone(pid_text: str) -> bool:
    """A worker id's pid (digits) names no live process here; a pid beyond any kernel's names none."""
    if not (pid_text.isascii() and pid_text.isdigit()):
        return False
    try:
        pid = check_int(int(pid_text), "pid", 1, MAX_PID)
    except (ValueError, ConfigError):  # a pid of thousands of digits, 0, or beyond pid_max
        return True
    return not _pid_alive(pid)


def _last_beat(t: FrozenTrial, now: float, grace_s: float) -> float:
    """A trial's last heartbeat: its attribute when that is a time no later than ``now + grace_s``, else (no
    heartbeat, or text, NaN, a time far ahead: a foreign or corrupt value) the time it started."""
    start = t.datetime_start.timestamp() if t.datetime_start else now
    try:
        return float(check_number(t.user_attrs.get(A.HEARTBEAT), "heartbeat", 0, now + grace_s))
    except ConfigError:
        return start


def _retry(study: Study, t: FrozenTrial, reason: str, level: int = logging.WARNING) -> None:
    attrs = {k: v for k, v in t.user_attrs.items() if k in A.IDENTITY}
    attrs[A.RETRY_OF] = t.number
    study.enqueue_trial(dict(t.params), user_attrs=attrs)
    log.log(level, "trial %s of %s %s; enqueued a retry", t.number, study.study_name, reason)


def recover(study: Study, grace_s: float, *, retry: bool = True) -> list[int]:
    """Mark trials of dead workers FAIL, and enqueue one retry of each and of each interrupted trial.

    Returns the numbers of the trials failed here.  A dead worker's trial is retried once (a retry
    that dies too is not); an interrupted trial is always retried, as the user stopped it, not a fault.
    """
    from optuna.trial import TrialState

    now, host = time.time(), socket.gethostname()
    failed = []
    trials = study.get_trials(deepcopy=False)
    retried = {A.retry_of(t) for t in trials}
    for t in trials:
        can_retry = retry and A.RETRY_OF not in t.user_attrs and t.number not in retried
        if t.state == TrialState.FAIL and t.user_attrs.get(A.INTERRUPTED) and retry and t.number not in retried:
            _retry(study, t, "was interrupted", logging.INFO)
            retried.add(t.number)
            continue
        if t.state != TrialState.RUNNING:
            continue
        w = str(t.user_attrs.get(A.WORKER, ""))
        beat = _last_beat(t, now, grace_s)
        w_host, _, w_pid = w.rpartition(":")
        # gone when its process is (same host), or when its heartbeat stopped (any host: a pid of a machine that
        # restarted may belong to another process now)
        stale = (w_host == host and _process_gone(w_pid)) or now - beat > grace_s
        if not stale:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):
            continue  # another worker got there first
        failed.append(t.number)
        reason = f"failed (worker {w or '?'} is gone)" if w_host == host else \
            f"failed (no heartbeat for {now - beat:.0f} s)"
        if can_retry:
            _retry(study, t, reason)
            retried.add(t.number)
        else:
            log.warning("trial %s of %s %s; already retried once, not again", t.number, study.study_name, reason)
    return failed


class Heartbeat:
    """A daemon thread refreshing a trial's heartbeat attribute until stopped."""

    def __init__(self, trial: Trial, interval: float) -> None:
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{trial.number}")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.trial.set_user_attr(A.HEARTBEAT, time.time())
            except Exception as e:  # noqa: BLE001 - a missed beat must not kill the trial
                log.debug("trial %d: heartbeat not written (%s)", self.trial.number, e)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


__all__ = ["Heartbeat", "recover"]
