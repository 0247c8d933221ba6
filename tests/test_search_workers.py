"""Two concurrent worker processes on one study (journal file and a real PostgreSQL server), and a
worker killed mid-trial: no trial is lost or duplicated, the other worker is unaffected."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from revit.search.testing import storage_url
from revit.search.testing import tiny_study_doc as tiny_doc

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _url(mode, tmp_path, request):
    return storage_url(mode, tmp_path, request.getfixturevalue("pg_url") if mode == "postgresql" else None)


def _prepare(tmp_path, url, name, **over):
    from revit.search.runner import enqueue_baselines
    from revit.search.spec import StudySpec
    from revit.search.studies import open_studies

    doc = tiny_doc(name=name, **{"pruner": {"name": "none"}, **over})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    spec = StudySpec.load(path)
    ss = open_studies(spec, url)
    enqueue_baselines(ss)
    return spec, ss, path


def _worker(path, url, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "revit", "search", "worker", str(path), "--storage", url,
                             "--quiet", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ok(t):
    return t.state == TrialState.COMPLETE or (t.state == TrialState.PRUNED and "infeasible" in t.user_attrs)


def _check_nothing_lost(ss, spec, n_workers):
    trials = ss.trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for _, study in ss.parts():  # every trial once, in every part
        numbers = [t.number for t in study.get_trials()]
        assert sorted(numbers) == list(range(len(numbers)))
    # every baseline (arm, seed) ran to completion exactly once
    done = Counter((t.user_attrs["arm"], t.user_attrs["seed"]) for t in trials
                   if t.user_attrs.get("role") == "baseline" and t.state == TrialState.COMPLETE)
    assert done == {("uniform", s): 1 for s in spec.seeds}
    originals = [t for t in trials if t.user_attrs.get("role", "candidate") == "candidate"
                 and "retry_of" not in t.user_attrs and "repeat_of" not in t.user_attrs]
    # workers check the budget before they ask: at most one extra candidate per other worker
    assert spec.n_trials <= len(originals) <= spec.n_trials + n_workers - 1
    return trials


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["journal", "postgresql"])
def test_two_worker_processes_share_one_study(mode, tmp_path, request):
    url = _url(mode, tmp_path, request)
    spec, study, path = _prepare(tmp_path, url, f"two-{mode}", n_trials=4, baselines=[{"rule": "uniform"}])
    procs = [_worker(path, url) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    trials = _check_nothing_lost(study, spec, 2)
    # every trial completed (or was an infeasible point of the space: pruned with the reason)
    assert all(_ok(t) for t in trials), [(t.number, t.state) for t in trials]
    # both workers took trials, and their own counts add up to the study's
    per_worker = Counter(t.user_attrs["worker"] for t in trials)
    assert len(per_worker) == 2
    reported = [int(o[1].rsplit("worker ", 1)[1].split(": ", 1)[1].split(" trial")[0]) for o in outs]
    assert sorted(reported) == sorted(per_worker.values()) and sum(reported) == len(trials)


@pytest.mark.parametrize("mode", ["journal", pytest.param("postgresql", marks=[pytest.mark.postgres,
                                                                                   pytest.mark.slow])])
def test_worker_killed_mid_trial(mode, tmp_path, request):
    url = _url(mode, tmp_path, request)
    spec, study, path = _prepare(tmp_path, url, f"kill-{mode}", n_trials=4, baselines=[{"rule": "uniform"}],
                                 train={"epochs": 6, "batch_size": 32})
    victim, survivor = _worker(path, url), _worker(path, url)
    victim_trial = None
    deadline = time.monotonic() + 120
    while victim_trial is None and time.monotonic() < deadline:
        for t in study.trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker", "").endswith(f":{victim.pid}") and "macs" in t.user_attrs:
                victim_trial = t.number
                victim_part = study.baselines if t.user_attrs["role"] == "baseline" else \
                    study.families[t.user_attrs["family"]]
        time.sleep(0.2)
    assert victim_trial is not None, "the victim never started a trial"
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err[-2000:]
    _check_nothing_lost(study, spec, 2)
    trials = victim_part.get_trials()
    by_number = {t.number: t for t in trials}
    assert by_number[victim_trial].state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == victim_trial]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].user_attrs["worker"].endswith(f":{survivor.pid}")
    assert {k: retries[0].user_attrs.get(k) for k in ("role", "arm", "seed")} == \
        {k: by_number[victim_trial].user_attrs.get(k) for k in ("role", "arm", "seed")}
    # everything but the killed trial completed; the survivor ran everything after the kill
    assert [t.number for t in trials if not _ok(t)] == [victim_trial]
    assert [t for t in study.trials() if not _ok(t)] == [by_number[victim_trial]]
    assert f"trial {victim_trial} of {victim_part.study_name} failed (worker" in err and "enqueued a retry" in err
