"""Create, join and finish studies: baselines and repeats as enqueued trials, workers, stale trials.

A study is run by one ``run`` process (creates the study, enqueues the baselines and ``n_trials``
candidates *per searched family*, runs them, then enqueues and runs the repeats of each family's
best candidates) and any number of ``worker`` processes (join, take waiting trials; when none waits,
enqueue one more candidate of the family with the fewest until every family has ``n_trials``).
Candidates are enqueued with their ``family`` tag and no parameters: the family's own sampler
(:mod:`revit.search.perfamily`) draws them when the trial starts, from that family's trials only.
Enqueued trials are claimed atomically by Optuna's storages, so a trial runs in one worker only.

Faults: a trial that raises is marked FAIL and the worker goes on.  A worker that dies leaves its
trial RUNNING; every worker, before each trial, marks such *stale* trials FAIL and enqueues one
retry (same parameters and tags, ``retry_of``).  A trial is stale when its worker process is gone
(same host) or its heartbeat (a user attribute refreshed every ``heartbeat_s``) is older than
``grace_s`` (other hosts).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revit.errors import ConfigError, StorageError
from revit.search.objective import FAMILY, ROLE, SEED, OutsideDomainError, StudyObjective, baseline_arm
from revit.search.samplers import build_family_pruner, build_family_sampler
from revit.search.spec import StudySpec
from revit.search.storage import open_storage

WORKER, HEARTBEAT = "worker", "heartbeat"
_RESULT_ATTRS = {WORKER, HEARTBEAT, "val_acc", "test_acc", "val_curve", "train_seconds", "infeasible"}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_study(spec: StudySpec, storage: str | None = None, *, create: bool = True,
               sampler_seed_offset: int = 0) -> Any:
    """The study of ``spec`` in ``storage`` (default: the spec's); ``create`` makes it if missing.

    Raises :class:`StorageError` when the storage cannot be reached, when joining a study that does
    not exist, or when the stored study has other directions than the spec.
    """
    import optuna

    url = spec.storage_url(storage)
    sampler_spec = dict(spec.sampler)
    if sampler_seed_offset and sampler_spec.get("seed") is not None:
        sampler_spec["seed"] = int(sampler_spec["seed"]) + sampler_seed_offset
    sampler = build_family_sampler(sampler_spec, spec.family_names)
    pruner = build_family_pruner(spec.pruner, spec.family_names[0])
    st = open_storage(url)
    if create:
        directions = [optuna.study.StudyDirection[d.upper()] for d in spec.directions]
        study = optuna.create_study(storage=st, study_name=spec.name, directions=directions,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    else:
        try:
            study = optuna.load_study(study_name=spec.name, storage=st, sampler=sampler, pruner=pruner)
        except KeyError:
            raise StorageError(f"no study {spec.name!r} in {url}; start it with 'revit search run "
                               f"{spec.source} --storage {url}'") from None
    want = [d.upper() for d in spec.directions]
    have = [d.name for d in study.directions]
    if have != want:
        raise StorageError(f"study {spec.name!r} in {url} has directions {have}, the spec {want}; "
                           "use another name or storage")
    if create and "spec" not in study.user_attrs:
        study.set_user_attr("spec", {"source": spec.source, "objectives": list(spec.objectives),
                                     "budget": spec.budget.describe(), "family": spec.family,
                                     "families": spec.family_names,
                                     "n_trials": spec.n_trials, "seeds": list(spec.seeds)})
    return study


def _key(t: Any) -> tuple[Any, ...]:
    u = t.user_attrs
    return (u.get("arm"), u.get(SEED), u.get("budget"))


def enqueue_baselines(spec: StudySpec, study: Any, objective: StudyObjective | None = None) -> list[str]:
    """Enqueue every baseline arm x budget x seed not yet in the study; return notes on arms left out.

    A baseline that cannot be built (outside its rule's domain, budget unreachable) is left out and
    the reason is returned and stored as the study user attribute ``skipped_baselines``.
    """
    from revit.errors import BudgetError

    objective = objective or StudyObjective(spec)
    have = {_key(t) for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(ROLE) == "baseline" and "retry_of" not in t.user_attrs}
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
                    study.enqueue_trial({}, user_attrs={ROLE: "baseline", "arm": b.arm, SEED: seed, "budget": budget})
    if skipped and study.user_attrs.get("skipped_baselines") != skipped:
        study.set_user_attr("skipped_baselines", skipped)
    return skipped


def _is_original_candidate(t: Any) -> bool:
    u = t.user_attrs
    return u.get(ROLE, "candidate") == "candidate" and "repeat_of" not in u and "retry_of" not in u


def family_of(spec: StudySpec, t: Any) -> str:
    """A trial's family tag (untagged candidates: the first searched family; baselines: baseline:ARM)."""
    from revit.search.perfamily import trial_family

    return trial_family(t, spec.family_names[0])


def enqueue_candidates(spec: StudySpec, study: Any, n_per_family: int | None = None, *, at_most: int | None = None,
                       trials: Sequence[Any] | None = None) -> int:
    """Enqueue candidates until every searched family has ``n_per_family`` (default: the spec's ``n_trials``).

    Round robin over the families, the one with the fewest first, so the families advance together;
    ``at_most`` caps how many this call adds.  Returns how many it enqueued.
    """
    target = spec.n_trials if n_per_family is None else n_per_family
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    count = dict.fromkeys(spec.family_names, 0)
    for t in trials:
        if _is_original_candidate(t) and family_of(spec, t) in count:
            count[family_of(spec, t)] += 1
    added = 0
    while at_most is None or added < at_most:
        short = [f for f in spec.family_names if count[f] < target]
        if not short:
            break
        fam = min(short, key=lambda f: count[f])  # min keeps the spec order among ties
        study.enqueue_trial({}, user_attrs={ROLE: "candidate", FAMILY: fam})
        count[fam] += 1
        added += 1
    return added


def enqueue_repeats(spec: StudySpec, study: Any) -> list[int]:
    """Enqueue each family's best ``repeat_top_k`` complete candidates with every other seed; return them."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _is_original_candidate(t)]
    done.sort(key=lambda t: -t.values[0])
    best = [t for fam in spec.family_names for t in [t for t in done if family_of(spec, t) == fam][: spec.repeat_top_k]]
    have = {(t.user_attrs.get("repeat_of"), t.user_attrs.get(SEED)) for t in study.get_trials(deepcopy=False)}
    for t in best:
        for seed in spec.seeds[1:]:
            if (t.number, seed) not in have:
                study.enqueue_trial(dict(t.params), user_attrs={ROLE: "candidate", FAMILY: family_of(spec, t),
                                                                SEED: seed, "repeat_of": t.number})
    return [t.number for t in best]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale(study: Any, grace_s: float, *, retry: bool = True, log: Callable[[str], None] = _say) -> list[int]:
    """Mark trials of dead workers FAIL and enqueue one retry each; return the failed numbers."""
    from optuna.trial import TrialState

    now, host = time.time(), socket.gethostname()
    failed = []
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        w = str(t.user_attrs.get(WORKER, ""))
        beat = float(t.user_attrs.get(HEARTBEAT) or (t.datetime_start.timestamp() if t.datetime_start else now))
        w_host, _, w_pid = w.rpartition(":")
        if w_host == host and w_pid.isdigit():
            stale = not _pid_alive(int(w_pid))
        else:
            stale = now - beat > grace_s
        if not stale:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):
            continue  # another worker got there first
        failed.append(t.number)
        reason = f"worker {w or '?'} is gone" if w_host == host else f"no heartbeat for {now - beat:.0f} s"
        if retry and "retry_of" not in t.user_attrs and t.number not in retried:
            attrs = {k: v for k, v in t.user_attrs.items()
                     if k in (ROLE, FAMILY, "arm", SEED, "budget", "repeat_of")}
            attrs["retry_of"] = t.number
            study.enqueue_trial(dict(t.params), user_attrs=attrs)
            log(f"trial {t.number} failed ({reason}); enqueued a retry")
        else:
            log(f"trial {t.number} failed ({reason}); already retried once, not again")
    return failed


class _Heartbeat:
    """A daemon thread refreshing a trial's heartbeat attribute until stopped."""

    def __init__(self, trial: Any, interval: float) -> None:
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{trial.number}")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.trial.set_user_attr(HEARTBEAT, time.time())
            except Exception:  # noqa: BLE001 - a missed beat must not kill the trial
                pass

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class WorkerStats:
    """What one worker did (its trial numbers by final state)."""

    worker: str
    trials: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.trials.values())


def run_worker(spec: StudySpec, study: Any, *, objective: Callable[[Any], Any] | None = None,
               n_trials: int | None = None, max_trials: int | None = None, timeout: float | None = None,
               log: Callable[[str], None] = _say) -> WorkerStats:
    """Run trials until every family has ``n_trials`` candidates (default: the spec's) and no trial waits.

    Also stops after ``max_trials`` trials of this worker or once ``timeout`` seconds have passed
    (a trial started before the deadline finishes).  A trial that raises is FAIL and the loop goes on.
    """
    import optuna
    from optuna.trial import TrialState

    target = spec.n_trials if n_trials is None else n_trials
    obj = objective or StudyObjective(spec, log=log)
    me = worker_id()
    stats = WorkerStats(me)
    t0 = time.monotonic()

    def wrapped(trial: Any) -> Any:
        trial.set_user_attr(WORKER, me)
        trial.set_user_attr(HEARTBEAT, time.time())
        with _Heartbeat(trial, spec.heartbeat_s):
            try:
                return obj(trial)
            except optuna.TrialPruned:
                raise
            except Exception as e:
                trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])  # shown in the report
                raise

    def record(study: Any, ft: Any) -> None:
        stats.trials.setdefault(ft.state.name, []).append(ft.number)

    while True:
        if timeout is not None and time.monotonic() - t0 >= timeout:
            break
        if max_trials is not None and stats.count >= max_trials:
            break
        reap_stale(study, spec.grace_s, log=log)
        trials = study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if waiting == 0 and not enqueue_candidates(spec, study, target, at_most=1, trials=trials):
            break
        study.optimize(wrapped, n_trials=1, catch=(Exception,), callbacks=[record])
    stats.seconds = time.monotonic() - t0
    return stats


def wait_for_candidates(spec: StudySpec, study: Any, *, poll_s: float = 5.0,
                        log: Callable[[str], None] = _say) -> None:
    """Block until no original candidate trial is RUNNING (other workers' trials included).

    Stale trials of dead workers are failed (and retried) meanwhile, so this cannot hang on them.
    """
    from optuna.trial import TrialState

    said = False
    while True:
        reap_stale(study, spec.grace_s, log=log)
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if _is_original_candidate(t)]
        if not running:
            return
        if not said:
            log(f"waiting for candidate trial(s) {running} of other workers before choosing the repeats")
            said = True
        time.sleep(poll_s)


def spawn_workers(spec: StudySpec, storage: str, devices: Sequence[str], *, n_trials: int | None = None,
                  timeout: float | None = None, worker_args: Sequence[str] = (),
                  log: Callable[[str], None] = _say) -> list[int]:
    """Start one ``revit search worker`` process per device (``--device D``) on ``storage``; wait for all.

    Returns their exit codes.  The spec must come from a file (the workers read it again);
    ``worker_args`` are extra worker options (``--threads``, ``--amp``, ``--quiet``...).
    """
    if not Path(spec.source).is_file():
        raise ConfigError(f"worker processes read the spec from its file, and {spec.source!r} is none")
    base = [sys.executable, "-m", "revit", "search", "worker", spec.source, "--storage", storage, *worker_args]
    if n_trials is not None:
        base += ["--n-trials", str(n_trials)]
    if timeout is not None:
        base += ["--timeout", str(timeout)]
    procs = []
    for d in devices:
        procs.append((d, subprocess.Popen([*base, "--device", d])))
        log(f"worker process {procs[-1][1].pid} on {d}")
    codes = []
    try:
        for d, p in procs:
            codes.append(p.wait())
            if codes[-1] != 0:
                log(f"worker process {p.pid} on {d} exited with code {codes[-1]}")
    except BaseException:
        for _, p in procs:
            if p.poll() is None:
                p.terminate()
        raise
    return codes


def run_study(spec: StudySpec, storage: str | None = None, *, n_trials: int | None = None, repeats: bool = True,
              timeout: float | None = None, log: Callable[[str], None] = _say, devices: Sequence[str] | None = None,
              worker_args: Sequence[str] = ()) -> Any:
    """``revit search run``: create or resume the study, baselines, candidates, then repeats.

    With ``devices`` (``--gpus``: one ``cuda:N`` each), the trials run in one worker process per
    device on the same storage (:func:`spawn_workers`) while this process waits; otherwise here.
    """
    study = open_study(spec, storage, create=True)
    objective = StudyObjective(spec, log=log)
    skipped = enqueue_baselines(spec, study, objective)
    for s in skipped:
        log(f"baseline left out: {s}")
    enqueue_candidates(spec, study, n_trials)
    url = spec.storage_url(storage)
    log(f"study {spec.name!r} in {url}: budget {spec.budget.describe()}, "
        f"{n_trials if n_trials is not None else spec.n_trials} candidate trials per family "
        f"{spec.family_names}, seeds {list(spec.seeds)}, baselines {[b.arm for b in spec.baselines]}")

    def work() -> None:
        if devices:
            spawn_workers(spec, url, devices, n_trials=n_trials, timeout=timeout, worker_args=worker_args, log=log)
        else:
            run_worker(spec, study, objective=objective, n_trials=n_trials, timeout=timeout, log=log)

    work()
    if repeats and len(spec.seeds) > 1 and spec.repeat_top_k > 0:
        wait_for_candidates(spec, study, log=log)  # pick the best among *all* candidates, not the finished ones
        best = enqueue_repeats(spec, study)
        if best:
            log(f"repeating the best candidates {best} with seeds {list(spec.seeds[1:])}")
            work()
    return study


def join_study(spec: StudySpec, storage: str, *, n_trials: int | None = None, timeout: float | None = None,
               max_trials: int | None = None, log: Callable[[str], None] = _say) -> WorkerStats:
    """``revit search worker``: join an existing study and run trials until it is done."""
    if not storage:
        raise ConfigError("a worker needs --storage URL (the storage the study runs in)")
    study = open_study(spec, storage, create=False, sampler_seed_offset=os.getpid())
    return run_worker(spec, study, n_trials=n_trials, timeout=timeout, max_trials=max_trials, log=log)


__all__ = ["WorkerStats", "enqueue_baselines", "enqueue_candidates", "enqueue_repeats", "family_of", "join_study",
           "open_study", "reap_stale", "run_study", "run_worker", "spawn_workers", "wait_for_candidates", "worker_id"]
