"""Create, join and finish studies: baselines and candidates, workers, stale and interrupted trials.

A study (:class:`~revit.search.studies.StudySet`) is run by one ``run`` process (creates the parts,
enqueues the baselines, runs trials) and any number of ``worker`` processes (join, run trials).  A
candidate trial is one config with all its seeds (:class:`~revit.search.objective.StudyObjective`), so a
family study holds one trial per config and its ``best_trial`` is the family's best config.  Each process loops: take a
waiting trial of any part (baselines first), else start one new candidate in the family with the
fewest, until every family has ``n_trials``.  A new candidate is an ordinary ``optimize`` trial of its
family's study, drawn by that study's own sampler; nothing is queued ahead, so ``n_trials`` costs
nothing until trials run.  Optuna's storages hand a waiting trial to one worker only.

Faults: a trial that raises is FAIL (its error kept as a user attribute) and the loop goes on.  A
worker that dies leaves its trial RUNNING; every worker, before each trial, marks such *stale* trials
FAIL and enqueues one retry (same parameters and tags, ``retry_of``).  A trial is stale when its worker
process is gone (same host) or its heartbeat is older than ``grace_s`` (other hosts).  A trial stopped
by Ctrl-C or SIGTERM is FAIL with ``interrupted`` and is retried by the next run or worker; the signal is
held through a trial's bookkeeping and delivered only in its training or between trials
(:mod:`revit.search.signals`), so wherever it lands no trial is lost.  Stale-trial checks live in
:mod:`revit.search.liveness`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from revit._io import open_no_follow
from revit.errors import BudgetError, ConfigError, OutsideDomainError, StorageError
from revit.search import attrs as A
from revit.search import signals
from revit.search.arms import baseline_arm
from revit.search.liveness import Heartbeat, recover
from revit.search.objective import StudyObjective
from revit.search.spec import StudySpec
from revit.search.studies import BASELINES, StudySet, open_studies

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial, Trial

    Objective = Callable[[Trial], float | Sequence[float]]  # what Study.optimize runs

log = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _key(t: FrozenTrial) -> tuple[Any, ...]:
    u = t.user_attrs
    return (u.get(A.ARM), u.get(A.SEED), u.get(A.BUDGET))


def enqueue_baselines(ss: StudySet, objective: StudyObjective | None = None) -> list[str]:
    """Enqueue every baseline arm x budget x seed not yet in the study; return notes on arms left out.

    A baseline that cannot be built (outside its rule's domain, budget unreachable) is left out and
    the reason is returned and stored as the baselines study's user attribute ``skipped_baselines``.
    """
    spec, study = ss.spec, ss.baselines
    objective = objective or StudyObjective(spec)
    have = {_key(t) for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(A.ROLE) == A.BASELINE and A.RETRY_OF not in t.user_attrs}
    skipped: list[str] = []
    for b in spec.baselines:
        for budget in spec.budget.baseline_values():
            try:
                baseline_arm(spec, b, budget, objective.table())
            except (OutsideDomainError, BudgetError) as e:
                skipped.append(str(e))
                continue
            for seed in spec.seeds:
                if (b.arm, seed, budget) not in have:
                    study.enqueue_trial({}, user_attrs={A.ROLE: A.BASELINE, A.ARM: b.arm, A.SEED: seed,
                                                        A.BUDGET: budget, A.FAMILY: f"baseline:{b.arm}"})
    if skipped and study.user_attrs.get(A.SKIPPED_BASELINES) != skipped:
        study.set_user_attr(A.SKIPPED_BASELINES, skipped)
    return skipped


def candidate_counts(ss: StudySet) -> dict[str, int]:
    """Original candidates (any state) per family, in spec order."""
    return {fam: sum(A.is_original_candidate(t) for t in s.get_trials(deepcopy=False))
            for fam, s in ss.families.items()}


@dataclass
class WorkerStats:
    """What one worker did: its trials as ``part#number`` by final state."""

    worker: str
    trials: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.trials.values())


def _next_part(ss: StudySet, target: int) -> tuple[str, Study] | None:
    """The part to run a trial of: one with a waiting trial (baselines first), else the family with the
    fewest original candidates below ``target``; None when the study has nothing left to run."""
    from optuna.trial import TrialState

    for part, study in ss.parts():
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return part, study
    counts = candidate_counts(ss)
    short = [f for f in ss.families if counts[f] < target]
    if not short:
        return None
    fam = min(short, key=lambda f: counts[f])  # min keeps the spec order among ties
    return fam, ss.families[fam]


def _tag(trial: Trial, part: str, worker: str) -> None:
    """Tag a trial as it starts: a new candidate's role and family, and the worker running it."""
    import optuna

    if A.ROLE not in trial.user_attrs:
        if part == BASELINES:  # another worker took the waiting baseline first
            trial.set_user_attr(A.INFEASIBLE, "no baseline was left waiting (another worker took it)")
            raise optuna.TrialPruned("no baseline left")
        trial.set_user_attr(A.ROLE, A.CANDIDATE)
        trial.set_user_attr(A.FAMILY, part)
    trial.set_user_attr(A.WORKER, worker)
    trial.set_user_attr(A.HEARTBEAT, time.time())


def run_worker(ss: StudySet, *, objective: Objective | None = None, n_trials: int | None = None,
               max_trials: int | None = None, timeout: float | None = None) -> WorkerStats:
    """Run trials until every family has ``n_trials`` candidates (default: the spec's) and no trial waits.

    Also stops after ``max_trials`` trials of this worker or once ``timeout`` seconds have passed
    (a trial started before the deadline finishes).  A trial that raises is FAIL and the loop goes on.
    """
    import optuna

    spec = ss.spec
    target = spec.n_trials if n_trials is None else n_trials
    obj = objective or StudyObjective(spec)
    me = worker_id()
    stats = WorkerStats(me)
    t0 = time.monotonic()

    def wrapped(part: str) -> Objective:
        def run(trial: Trial) -> float | Sequence[float]:
            # signals are held (signals.held) through the tagging and Optuna's own steps, delivered only in
            # the training; whatever raises KeyboardInterrupt from the trial's first line on flags it for a retry
            try:
                _tag(trial, part, me)
                with Heartbeat(trial, spec.heartbeat_s), signals.delivered():
                    return obj(trial)
            except optuna.TrialPruned:
                raise
            except KeyboardInterrupt:
                trial.set_user_attr(A.INTERRUPTED, True)  # the next run or worker retries it
                raise
            except Exception as e:
                trial.set_user_attr(A.ERROR, f"{type(e).__name__}: {e}"[:500])  # shown in the report
                raise
        return run

    def record(part: str) -> Callable[[Study, FrozenTrial], None]:
        def cb(study: Study, ft: FrozenTrial) -> None:
            stats.trials.setdefault(ft.state.name, []).append(f"{part}#{ft.number}")
            if ft.state.name == "FAIL":
                log.warning("trial %s#%s failed: %s", part, ft.number, ft.user_attrs.get(A.ERROR, "?"))
        return cb

    with signals.held():  # a signal between trials stops the loop at the next checkpoint, losing nothing
        while True:
            signals.checkpoint()
            if timeout is not None and time.monotonic() - t0 >= timeout:
                break
            if max_trials is not None and stats.count >= max_trials:
                break
            for _, study in ss.parts():
                recover(study, spec.grace_s)
            nxt = _next_part(ss, target)
            if nxt is None:
                break
            part, study = nxt
            study.optimize(wrapped(part), n_trials=1, catch=(Exception,), callbacks=[record(part)])
    stats.seconds = time.monotonic() - t0
    return stats


def wait_for_candidates(ss: StudySet, *, poll_s: float = 5.0, every_trial: bool = False) -> None:
    """Block until no original candidate trial (``every_trial``: no trial of any part) is RUNNING in any
    worker.  Stale trials of dead workers are failed (and retried) meanwhile, so this cannot hang on them."""
    from optuna.trial import TrialState

    said = False
    parts = list(ss.parts()) if every_trial else list(ss.families.items())
    while True:
        running = []
        for part, study in parts:
            recover(study, ss.spec.grace_s)
            running += [f"{part}#{t.number}" for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                        if every_trial or A.is_original_candidate(t)]
        if not running:
            return
        if not said:
            log.info("waiting for trial(s) %s of other workers %s", running,
                     "to end" if every_trial else "(candidates)")
            said = True
        with signals.delivered():
            time.sleep(poll_s)


def start_workers(spec: StudySpec, storage: str, devices: Sequence[str | None], *, n_trials: int | None = None,
                  timeout: float | None = None, worker_args: Sequence[str] = (), env: dict[str, str] | None = None,
                  log_dir: Path | None = None) -> list[tuple[str, Any]]:
    """Start one ``revit search worker`` process per entry of ``devices`` (``--device D``; None: the spec's).

    The spec must come from a file (the workers read it again); ``worker_args`` are extra worker
    options (``--threads``, ``--amp``, ``--quiet``...); with ``log_dir`` each worker writes to
    ``worker-I.log`` there.  Returns (label, process) pairs for :func:`wait_workers`.
    """
    if not Path(spec.source).is_file():
        raise ConfigError(f"worker processes read the spec from its file, and {spec.source!r} is none")
    base = [sys.executable, "-m", "revit", "search", "worker", spec.source, "--storage", storage, *worker_args]
    if n_trials is not None:
        base += ["--n-trials", str(n_trials)]
    if timeout is not None:
        base += ["--timeout", str(timeout)]
    procs: list[tuple[str, Any]] = []
    try:
        for i, d in enumerate(devices):
            cmd = [*base, "--device", d] if d else base
            if log_dir is not None:  # never written through a symbolic link; the child keeps its own handle
                fd = open_no_follow(log_dir / f"worker-{i + 1}.log", os.O_APPEND)
                try:
                    p = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, env=env)
                finally:
                    os.close(fd)
            else:
                p = subprocess.Popen(cmd, env=env)
            procs.append((f"{p.pid}" + (f" on {d}" if d else ""), p))
            log.info("worker process %s", procs[-1][0])
    except BaseException:
        stop_workers(procs)
        raise
    return procs


def stop_workers(procs: Sequence[tuple[str, Any]]) -> None:
    """Terminate the worker processes still running (their trials are retried by the next run)."""
    for _, p in procs:
        if p.poll() is None:
            p.terminate()
    for _, p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_workers(procs: Sequence[tuple[str, Any]]) -> list[int]:
    """Wait for the worker processes; return their exit codes (stops them all if this one is interrupted)."""
    codes = []
    try:
        for label, p in procs:
            with signals.delivered():
                codes.append(p.wait())
            if codes[-1] != 0:
                log.warning("worker process %s exited with code %s", label, codes[-1])
    except BaseException:
        stop_workers(procs)
        raise
    return codes


def spawn_workers(spec: StudySpec, storage: str, devices: Sequence[str | None], **kw: Any) -> list[int]:
    """:func:`start_workers`, then :func:`wait_workers`: one worker process per device; their exit codes."""
    return wait_workers(start_workers(spec, storage, devices, **kw))


def _os_cause(e: BaseException | None) -> OSError | None:
    """The OSError in ``e``'s chain (Optuna raises AssertionError when its journal append failed mid-trial)."""
    seen = 0
    while e is not None and seen < 16:
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """A storage that fails to write mid-study (a full disk under a journal) is one :class:`StorageError` line.

    A trial's own errors never get here (Optuna catches them): what escapes with an OSError in its chain is
    the storage's.  The trial it left RUNNING is failed and retried by the next run, as a dead worker's.
    """
    try:
        yield
    except (OSError, AssertionError) as e:
        cause = _os_cause(e)
        if cause is None:
            raise
        raise StorageError(f"cannot write the study storage {url}: {cause.strerror or type(cause).__name__}; "
                           "free space, then run the same command again (the study resumes)") from None


def run_study(spec: StudySpec, storage: str | None = None, *, n_trials: int | None = None, repeats: bool = True,
              timeout: float | None = None, devices: Sequence[str] | None = None, worker_args: Sequence[str] = (),
              objective: Objective | None = None) -> StudySet:
    """``revit search run``: create or resume the study, then run its baselines and candidates.

    With ``devices`` (``--gpus``: one ``cuda:N`` each), the trials run in one worker process per
    device on the same storage (:func:`spawn_workers`) while this process waits; otherwise here.
    ``repeats=False`` (``--no-repeats``): candidates train the first seed only.
    """
    ss = open_studies(spec, storage, create=True)
    obj = objective or StudyObjective(spec, repeats=repeats)
    if not repeats:
        worker_args = [*worker_args, "--no-repeats"]
    skipped = enqueue_baselines(ss, obj if isinstance(obj, StudyObjective) else None)
    for s in skipped:
        log.info("baseline left out: %s", s)
    log.info("study %r in %s: budget %s, %s candidate trials per family %s, seeds %s, baselines %s", spec.name,
             ss.url, spec.budget.describe(), n_trials if n_trials is not None else spec.n_trials, spec.family_names,
             list(spec.seeds), [b.arm for b in spec.baselines])

    def work() -> None:
        if devices:
            spawn_workers(spec, ss.url, devices, n_trials=n_trials, timeout=timeout, worker_args=worker_args)
        else:
            run_worker(ss, objective=obj, n_trials=n_trials, timeout=timeout)

    with storage_errors(ss.url), signals.held():  # a retry is never cut in two by a signal
        work()
        wait_for_candidates(ss, every_trial=True)  # the study is done when run returns: other workers' trials too
    return ss


def join_study(spec: StudySpec, storage: str, *, n_trials: int | None = None, timeout: float | None = None,
               max_trials: int | None = None, objective: Objective | None = None,
               repeats: bool = True) -> WorkerStats:
    """``revit search worker``: join an existing study and run trials until it is done (``repeats=False``:
    candidates train the first seed only)."""
    if not storage:
        raise ConfigError("a worker needs --storage URL (the storage the study runs in)")
    ss = open_studies(spec, storage, create=False)  # each trial's number seeds its draw
    with storage_errors(ss.url):
        return run_worker(ss, n_trials=n_trials, timeout=timeout, max_trials=max_trials,
                          objective=objective or StudyObjective(spec, repeats=repeats))


@dataclass(frozen=True)
class Tally:
    """A study's trials by state, and the failures no retry made good."""

    states: dict[str, int]
    unrecovered: list[str]  # part#number of FAIL trials without a COMPLETE or PRUNED retry
    pending: list[str] = field(default_factory=list)  # FAIL trials whose retry waits or runs

    @property
    def total(self) -> int:
        return sum(self.states.values())

    def line(self, name: str) -> str:
        """``study NAME: 12 trials (COMPLETE 10, PRUNED 1, FAIL 1); 1 failed: uniform#3``."""
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.states.items())) or "none"
        tail = f"; {len(self.unrecovered)} failed: {', '.join(self.unrecovered[:10])}" if self.unrecovered else ""
        if self.pending:
            tail += f"; {len(self.pending)} retried in another worker: {', '.join(self.pending[:10])}"
        return f"study {name}: {self.total} trials ({counts}){tail}"


def tally(ss: StudySet) -> Tally:
    """Count the trials of every part by state; list the failed ones that were not retried successfully."""
    from optuna.trial import TrialState

    states: dict[str, int] = {}
    bad: list[str] = []
    pending: list[str] = []
    for part, study in ss.parts():
        trials = study.get_trials(deepcopy=False)
        ok = {t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
        later = {t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)}
        retries = [(of, t.number) for t in trials if (of := A.retry_of(t)) is not None]
        grew = True
        while grew:  # a trial is made good by a retry that ended well, or was itself made good (chains)
            before = len(ok) + len(later)
            ok |= {of for of, n in retries if n in ok}
            later |= {of for of, n in retries if n in later} - ok
            grew = len(ok) + len(later) > before
        for t in trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
            if t.state == TrialState.FAIL and t.number not in ok:
                (pending if t.number in later else bad).append(f"{part}#{t.number}")
    return Tally(states, bad, pending)


__all__ = ["Tally", "WorkerStats", "candidate_counts", "enqueue_baselines", "join_study", "recover",
           "run_study", "run_worker", "spawn_workers", "start_workers", "stop_workers", "tally", "wait_for_candidates",
           "wait_workers", "worker_id"]
