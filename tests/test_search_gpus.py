"""Studies on several devices: ``revit search run --gpus`` starts one worker process per device on the
same storage; checked on the CPU with CPU devices (the same code path, another device string)."""

import subprocess
import sys
from collections import Counter

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from revit.search.testing import tiny_study_doc

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.slow
def test_run_with_one_worker_process_per_device(tmp_path, caplog):
    from revit.search.runner import run_study
    from revit.search.spec import StudySpec

    doc = tiny_study_doc(name="per-device", pruner={"name": "none"}, n_trials=1, baselines=[{"rule": "uniform"}])
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    spec = StudySpec.load(path)
    url = f"journal:{tmp_path / 's.log'}"
    import logging

    with caplog.at_level(logging.INFO, logger="revit"):
        study = run_study(spec, url, devices=["cpu", "cpu"], worker_args=["--threads", "1", "--quiet"])
    lines = [r.getMessage() for r in caplog.records]
    trials = study.trials()
    assert trials and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 3
    workers = Counter(t.user_attrs["worker"] for t in trials)
    pids = {int(line.split()[2]) for line in lines if line.startswith("worker process")}
    assert {int(w.rsplit(":", 1)[1]) for w in workers} <= pids and len(pids) == 2  # one round: seeds are in trials
    # the candidate trained both seeds inside its trial, in one worker process
    cands = study.families["less-more-less"].get_trials()
    assert [[r["seed"] for r in t.user_attrs["runs"]] for t in cands] == [[0, 1]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
@pytest.mark.parametrize("args", [["run", "smoke", "--gpus", "0,1"], ["worker", "smoke", "--device", "cuda:0"],
                                  ["run", "smoke", "--device", "cuda"]])
def test_gpu_flags_without_gpu_are_one_line(args, tmp_path):
    p = subprocess.run([sys.executable, "-m", "revit", "search", *args, "--storage", f"journal:{tmp_path}/x.log"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no CUDA GPU" in p.stderr, p.stderr
    assert not (tmp_path / "x.log").exists()


def test_bad_gpu_list_and_bad_override(tmp_path):
    for extra, msg in ((["--gpus", "0,x"], "distinct GPU indices"), (["--loader-workers", "-1"], "--loader-workers")):
        p = subprocess.run([sys.executable, "-m", "revit", "search", "run", "smoke", *extra, "--storage",
                            f"journal:{tmp_path}/x.log"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and msg in p.stderr and p.stderr.count("\n") == 1, p.stderr
