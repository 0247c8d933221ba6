"""Round four of the hostile inputs to studies (issue 27): each class a test that failed before its fix.

Foreign studies are refused, a refusal writes nothing, two processes never draw the same parameters,
storage paths are literal, journal records and counts are checked, a stale lock of a relative journal
path is released, a full disk is one line, and reports are valid JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from revit.cli.main import main
from revit.search.runner import run_study, run_worker
from revit.search.spec import StudySpec
from revit.search.studies import open_studies
from revit.search.testing import quick_objective, tiny_study_doc

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]
SPEC = tiny_study_doc(n_trials=1, seeds=[0], baselines=[{"rule": "uniform"}])


def _spec(tmp: Path, **over: Any) -> StudySpec:
    p = tmp / "s.yaml"
    p.write_text(yaml.safe_dump({**SPEC, **over}))
    return StudySpec.from_dict({**SPEC, **over}, str(p))


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def _cli(tmp: Path, argv: list[str], capsys: Any, monkeypatch: Any) -> tuple[int, str, str]:
    monkeypatch.chdir(tmp)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(rc: int, err: str, needle: str) -> None:
    assert rc == 2 and err.count("\n") == 1 and err.startswith("revit: error: ") and "Traceback" not in err, err
    assert needle in err, err


# 12: a foreign study is refused, never adopted ---------------------------------------------------------------
def test_a_plain_optuna_study_under_a_part_name_is_refused_not_adopted(tmp_path, capsys, monkeypatch):
    _spec(tmp_path)
    url = f"sqlite:///{tmp_path}/s.db"
    foreign = optuna.create_study(study_name="tiny/less-more-less", storage=url, direction="maximize")
    foreign.enqueue_trial({"x": 1.0})
    foreign.ask()  # a RUNNING trial of another program
    before = _snapshot(tmp_path)
    for cmd in (["run", "s.yaml"], ["worker", "s.yaml"], ["status", "s.yaml"], ["report", "s.yaml", "--out", "r"]):
        rc, out, err = _cli(tmp_path, ["search", *cmd, "--storage", "s.db"], capsys, monkeypatch)
        _one_line(rc, err, "not created by revit")
    assert _snapshot(tmp_path) == before
    trials = optuna.load_study(study_name="tiny/less-more-less", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.RUNNING] and not trials[0].user_attrs


# 16: a refused run writes nothing ---------------------------------------------------------------------------
def test_a_run_refused_for_one_part_creates_no_other_part(tmp_path, capsys, monkeypatch):
    _spec(tmp_path)
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="tiny/less-more-less", storage=url, direction="minimize")  # other direction
    before = _snapshot(tmp_path)
    rc, out, err = _cli(tmp_path, ["search", "run", "s.yaml", "--storage", "s.db"], capsys, monkeypatch)
    _one_line(rc, err, "directions")
    assert _snapshot(tmp_path) == before
    assert optuna.get_all_study_names(url) == ["tiny/less-more-less"]  # no baselines part was created


# 13: two runs on one storage never draw the same parameters ----------------------------------------------------
def test_two_processes_opened_together_draw_different_parameters(tmp_path):
    spec = _spec(tmp_path, baselines=[], n_trials=4, sampler={"name": "tpe", "seed": 0, "n_startup_trials": 10})
    url = f"sqlite:///{tmp_path}/s.db"
    a = open_studies(spec, url)  # two `search run` started at once: both see an empty study
    b = open_studies(spec, url)
    for i, ss in enumerate((a, b, a, b)):
        run_worker(ss, objective=quick_objective(spec), n_trials=i + 1)
    trials = a.families["less-more-less"].get_trials()
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(trials) == 4 and len(set(params)) == 4, params
    # and the draws stay reproducible from the spec's seed: a new storage gives the same first trial
    c = open_studies(spec, f"sqlite:///{tmp_path}/c.db")
    run_worker(c, objective=quick_objective(spec), n_trials=1)
    assert c.families["less-more-less"].get_trials()[0].params == trials[0].params


# 14: storage paths are literal ---------------------------------------------------------------------------------
def test_a_percent_in_a_storage_path_is_taken_literally(tmp_path, capsys, monkeypatch):
    _spec(tmp_path)
    (tmp_path / "uni").mkdir()
    argv = ["--storage", "uni/100%41.db"]
    rc, out, err = _cli(tmp_path, ["search", "run", "s.yaml", "-q", *argv], capsys, monkeypatch)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "uni").iterdir()) == ["100%41.db"]
    rc, out, err = _cli(tmp_path, ["search", "status", "s.yaml", *argv], capsys, monkeypatch)
    assert rc == 0 and "2 trials" in out, (out, err)
    rc, out, err = _cli(tmp_path, ["search", "report", "s.yaml", *argv, "--out", "r", "-q"], capsys, monkeypatch)
    assert rc == 0, err


# 10: heartbeat_s has a sane lower bound ---------------------------------------------------------------------
@pytest.mark.parametrize("field", ["heartbeat_s", "grace_s"])
def test_a_heartbeat_below_its_bound_is_refused_before_any_storage(field, tmp_path, capsys, monkeypatch):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**SPEC, field: 0.000001}))
    rc, out, err = _cli(tmp_path, ["search", "run", "s.yaml", "--storage", "s.db"], capsys, monkeypatch)
    _one_line(rc, err, field)
    assert not (tmp_path / "s.db").exists()


# 17: corrupt journal records and attributes --------------------------------------------------------------------
def _journal(tmp: Path, spec: StudySpec) -> Path:
    log = tmp / "j.log"
    run_study(spec, f"journal:{log}", objective=quick_objective(spec))
    return log


@pytest.mark.parametrize("record", [{"op_code": 99, "worker_id": "w"},  # unknown op code
                                    {"op_code": 5, "worker_id": "w", "user_attr": {"a": 1}},  # no trial_id
                                    [1, 2, 3], "text", None])
def test_a_corrupt_journal_record_is_one_line_for_every_command(record, tmp_path, capsys, monkeypatch):
    log = _journal(tmp_path, _spec(tmp_path))
    with open(log, "a") as f:
        f.write(json.dumps(record) + "\n")
    before = _snapshot(tmp_path)
    for cmd in (["run", "s.yaml"], ["status", "s.yaml"], ["report", "s.yaml", "--out", "r"]):
        rc, out, err = _cli(tmp_path, ["search", *cmd, "--storage", "journal:j.log"], capsys, monkeypatch)
        _one_line(rc, err, "j.log")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("beat", ["soon", float("nan"), 1e308, [1]])
def test_a_running_trial_with_a_bad_heartbeat_or_worker_is_failed_and_retried(beat, tmp_path):
    from revit.search.runner import recover

    spec = _spec(tmp_path, baselines=[])
    url = f"sqlite:///{tmp_path}/s.db"
    ss = open_studies(spec, url)
    study = ss.families["less-more-less"]
    t = study.ask()
    t.set_user_attr("role", "candidate")
    t.set_user_attr("family", "less-more-less")
    t.set_user_attr("worker", f"{socket.gethostname()}:{10**30}")  # a pid no kernel has, on this host
    t.set_user_attr("heartbeat", beat)
    assert recover(study, grace_s=30) == [t.number]
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL and trials[1].user_attrs["retry_of"] == 0


# 6: a relative journal path and a stale lock -----------------------------------------------------------------
def test_a_stale_lock_of_a_relative_journal_path_is_released(tmp_path):
    spec = _spec(tmp_path)
    (tmp_path / "sub").mkdir()
    _journal(tmp_path / "sub", spec)
    lock = tmp_path / "sub" / "j.log.lock"
    lock.symlink_to("sub/j.log")  # what a writer killed while holding the lock of journal:sub/j.log leaves
    old = time.time() - 120
    os.utime(lock, (old, old), follow_symlinks=False)
    code = ("from revit.search.storage import open_storage; import optuna; "
            "s = open_storage('journal:sub/j.log'); print(len(optuna.get_all_study_names(s)))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip() == "2", r.stderr
    assert not lock.is_symlink()


# 15: report JSON is valid JSON --------------------------------------------------------------------------------
def test_a_report_with_one_seed_is_valid_json_with_null_spreads(tmp_path, capsys, monkeypatch):
    spec = _spec(tmp_path)
    run_study(spec, f"sqlite:///{tmp_path}/s.db", objective=quick_objective(spec))
    rc, out, err = _cli(tmp_path, ["search", "report", "s.yaml", "--storage", "s.db", "--out", "r", "--json"],
                        capsys, monkeypatch)
    assert rc == 0, err

    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))

    printed, stored = strict(out), strict((tmp_path / "r" / "report.json").read_text())
    assert printed == stored or printed.keys() <= stored.keys()
    fam = stored["families"]["less-more-less"]
    assert fam["val"][1] is None and isinstance(fam["val"][0], float) and not math.isnan(fam["val"][0])


# 18: a full disk is one line: the report leaves no half report, a journal run no Optuna AssertionError ----------
def _fill_but(mnt: Path, room: int) -> None:
    """Fill the file system of ``mnt`` but ``room`` bytes."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(mnt / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - room))


def test_a_report_on_a_full_disk_is_one_line_and_leaves_no_half_report(small_tmpfs, tmp_path, capsys, monkeypatch):
    spec = _spec(tmp_path)
    run_study(spec, f"sqlite:///{tmp_path}/s.db", objective=quick_objective(spec))
    _fill_but(small_tmpfs, 24 * 1024)  # the marker and the text fit, the plots do not
    rc, out, err = _cli(tmp_path, ["search", "report", "s.yaml", "--storage", "s.db", "--out", f"{small_tmpfs}/r"],
                        capsys, monkeypatch)
    _one_line(rc, err, "no space left")
    left = sorted(p.name for p in small_tmpfs.rglob("*") if p.name != "filler")
    assert left == [], left  # no half report, no temp file, no marker-only folder
    (small_tmpfs / "filler").unlink()
    rc, out, err = _cli(tmp_path, ["search", "report", "s.yaml", "--storage", "s.db", "--out", f"{small_tmpfs}/r"],
                        capsys, monkeypatch)
    assert rc == 0 and (small_tmpfs / "r" / "history.png").is_file(), err


@pytest.mark.parametrize("room", [2048, 6 * 1024, 10 * 1024])
def test_a_journal_run_on_a_disk_that_fills_is_one_line_and_resumes(room, small_tmpfs, tmp_path, capsys,
                                                                    monkeypatch):
    _spec(tmp_path, n_trials=2, grace_s=2)  # the rerun (same pid here) fails the stopped trial after 2 s
    _fill_but(small_tmpfs, room)  # room for the study's creation (some of it), not for its trials
    url = f"journal:{small_tmpfs}/j.log"
    rc, out, err = _cli(tmp_path, ["search", "run", "s.yaml", "--storage", url, "-q"], capsys, monkeypatch)
    assert rc == 2 and "Traceback" not in err and "AssertionError" not in err, err
    assert err.startswith("revit: error: ") and "no space left" in err.lower() and err.count("\n") == 1, err
    (small_tmpfs / "filler").unlink()  # room again: the same command finishes the study
    rc, out, err = _cli(tmp_path, ["search", "run", "s.yaml", "--storage", url, "-q"], capsys, monkeypatch)
    assert rc == 0, err


def test_the_demo_readme_reads_a_report_summary_with_null_spreads(tmp_path):
    """The demo's README and headline take the report's summary as JSON gives it back (null, not NaN)."""
    from revit.workflows.demo import DemoPlan, write_demo_readme

    summary = {"base": {"test_acc": 0.5}, "base_latency_ms": 46.6, "fit_r2": {"heads": None}, "configs": {},
               "prune": {"steps": 13, "macs_ratio": 0.42, "cost_ratio": 0.499, "test_accuracy": 0.7},
               "seconds": {"study": 76.0},
               "study": {"best": "b", "best_test": [0.8, None], "best_n": 1, "uniform": "u",
                         "uniform_test": [0.7, None], "uniform_n": 1},
               "study_headline": {"a": "b", "b": "u", "metric": "test_acc", "n_a": 1, "n_b": 1, "diff": 0.1,
                                  "low": None, "high": None, "df": None, "p": None}}
    write_demo_readme(tmp_path, tmp_path / "report", DemoPlan(), summary)
    text = (tmp_path / "report" / "README.md").read_text()
    assert "test top-1 80.00% (n = 1) vs best uniform u test top-1 70.00% (n = 1)" in text
    assert "+10.00 points (no interval: fewer than 2 seeds on a side" in text
