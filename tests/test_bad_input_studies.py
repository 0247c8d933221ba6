"""Hostile inputs to the study commands: each refused in one line with exit 2 and nothing changed on disk,
or the behaviour named (failed trials exit non-zero, torn journals survive, interrupts are retried once).

The table-driven part is :data:`CASES` (argv, the needle stderr must hold, the files it needs, all made
here); the behaviours after it each have their own test.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import fill_disk
from optuna.trial import TrialState

from revit.cli.main import main
from revit.search.spec import StudySpec
from revit.search.testing import quick_objective, tiny_study_doc

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPEC = tiny_study_doc(n_trials=1, seeds=[0], baselines=[{"rule": "uniform"}])
UNI = {"family": "uniform", "params": {"head_dim": [8, 32], "mlp_ratio": [1.5, 6.0]}}
JOURNAL_LINE = json.dumps({"op_code": 0, "worker_id": "w", "study_name": "x", "directions": [2]}) + "\n"


def _spec_with(**over: Any) -> str:
    return yaml.safe_dump({**SPEC, **over})


def _train_with(**over: Any) -> str:
    return _spec_with(train={**SPEC["train"], **over})


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    needle: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # name -> target (symbolic links)


CASES: list[Case] = []


def case(id: str, argv: str, needle: str, files: dict[str, str | bytes] | None = None,
         links: dict[str, str] | None = None) -> None:
    CASES.append(Case(id, tuple(argv.split()), needle, files or {}, links or {}))


# validate before the storage: values every trial would fail on, types that used to end in tracebacks
for cid, text, needle in [
    ("seed-huge", _spec_with(seeds=[10**30]), "seeds[]"),
    ("threads-huge", _spec_with(threads=10**30), "threads"),
    ("batch-huge", _train_with(batch_size=10**30), "batch_size"),
    ("lr-huge", _train_with(lr=1e308), "lr"),
    ("gp-startup-text", _spec_with(sampler={"name": "gp", "n_startup_trials": "x"}), "n_startup_trials"),
    ("objectives-int", _spec_with(objectives=5), "objectives"),
    ("objectives-nested", _spec_with(objectives=[["accuracy"]]), "objectives"),
    ("baselines-int", _spec_with(baselines=5), "baselines"),
    ("sampler-seed-text", _spec_with(sampler={"name": "tpe", "seed": "abc"}), "sampler.seed"),
    ("sampler-seed-nan", _spec_with(sampler={"name": "tpe", "seed": float("nan")}), "sampler.seed"),
    ("sampler-seed-list", _spec_with(sampler={"name": "tpe", "seed": [1]}), "sampler.seed"),
    ("n-trials-huge", _spec_with(n_trials=10**30), "n_trials"),
    ("family-named-baselines", _spec_with(space={**SPEC["space"], "name": "baselines"}), "baselines"),
    ("storage-in-memory", _spec_with(storage="sqlite:///"), "in-memory"),
    ("storage-in-memory-explicit", _spec_with(storage="sqlite:///:memory:"), "in-memory"),
]:
    case(f"spec-{cid}", f"search run s_{cid}.yaml", needle, {f"s_{cid}.yaml": text})
case("storage-question-mark", "search run s.yaml --storage weird?name.db", "'?'")
# issue 30 item 3: a searched depth below 1, above the base rule's limit, or at which no config meets the budget
LML_CAPPED = {"schema": "revit/rule/v1", "kind": "rule", "name": "lml-capped", "family": "less-more-less",
              "max_depth": 3}
for cid, space, needle in [
    ("0", {**SPEC["space"], "depth": [0, 4]}, "space.depth low"),
    ("reversed", {**SPEC["space"], "depth": [4, 2]}, "low <= high"),
    ("text", {**SPEC["space"], "depth": "four"}, "space.depth"),
    ("float", {**SPEC["space"], "depth": [1, 2.5]}, "space.depth high"),
    ("extra-key", {**SPEC["space"], "depth": {"low": 1, "high": 4, "step": 2}}, "step"),
    ("above-base-limit", {**SPEC["space"], "base": "lml_capped.yaml", "depth": [1, 4]}, "limit of 3 blocks"),
    ("unreachable", [{**SPEC["space"], "depth": [40, 60]}, UNI], "no depth in 40..60 meets"),
    ("unreachable-uniform", [{**SPEC["space"], "depth": [1, 2]}, {**UNI, "depth": [40, 60]}],
     "space 'uniform' depth 40..60"),
]:
    case(f"spec-i30-depth-{cid}", f"search run s_depth_{cid}.yaml", needle,
         {f"s_depth_{cid}.yaml": _spec_with(space=space), "lml_capped.yaml": yaml.safe_dump(LML_CAPPED)})
# round four (issue 27): liveness counts have sane bounds (a beat is a storage write), journal records are checked
for cid, over, needle in [("heartbeat-micro", {"heartbeat_s": 0.000001}, "heartbeat_s"),
                          ("heartbeat-huge", {"heartbeat_s": 1e30}, "heartbeat_s"),
                          ("grace-below-two-beats", {"heartbeat_s": 10, "grace_s": 15}, "grace_s")]:
    case(f"spec-{cid}", f"search run s_{cid}.yaml", needle, {f"s_{cid}.yaml": _spec_with(**over)})
for cid, record in [("unknown-op", {"op_code": 99, "worker_id": "w"}),
                    ("no-trial-id", {"op_code": 5, "worker_id": "w", "user_attr": {"a": 1}}),
                    ("a-list", [1, 2, 3])]:
    for cmd in ("run", "status", "worker"):
        case(f"journal-record-{cid}-{cmd}", f"search {cmd} s.yaml --storage journal:rec-{cid}.log", f"rec-{cid}.log",
             {f"rec-{cid}.log": JOURNAL_LINE + json.dumps(record) + "\n"})

# journals are the user's data
case("journal-not-a-journal", "search run s.yaml --storage journal:notes.txt", "not an Optuna journal",
     {"notes.txt": "my notes\n"})
case("journal-link-to-not-a-journal", "search run s.yaml --storage journal:link.log", "not an Optuna journal",
     {"notes2.txt": "my notes\n"}, {"link.log": "notes2.txt"})
case("journal-dangling-link", "search run s.yaml --storage journal:dangling.log", "missing file",
     links={"dangling.log": "nowhere.log"})
case("journal-binary", "search worker s.yaml --storage journal:bin.log", "not an Optuna journal",
     {"bin.log": bytes(range(256)) * 4})
case("journal-corrupt-middle", "search report s.yaml --storage journal:corrupt.log --out rep", "corrupt.log",
     {"corrupt.log": JOURNAL_LINE + "{not json\n" + JOURNAL_LINE})
case("journal-dev-null", "search run s.yaml --storage journal:/dev/null", "not a regular file")
case("journal-dev-null-report", "search report s.yaml --storage journal:/dev/null --out rep", "/dev/null")
for cid, url in [("port", "postgresql://u@127.0.0.1:notaport/x"), ("bracket", "postgresql://u@[::1/x")]:
    case(f"postgres-malformed-{cid}", f"search run s.yaml --storage {url}", "invalid storage URL")
# a report never writes to the storage, not even Optuna's schema into an empty file
case("report-empty-db", "search report s.yaml --storage empty.db --out rep", "empty file", {"empty.db": b""})
case("worker-empty-db", "search worker s.yaml --storage empty2.db", "empty file", {"empty2.db": b""})
case("status-missing", "search status s.yaml --storage missing.db", "no such study storage")


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        else:
            out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_studies")
    (root / "s.yaml").write_text(yaml.safe_dump(SPEC))
    for c in CASES:
        for name, data in c.files.items():
            (root / name).write_bytes(data if isinstance(data, bytes) else data.encode())
        for name, target in c.links.items():
            if not (root / name).is_symlink():
                (root / name).symlink_to(target)
    return root


def run(ws: Path, argv: list[str] | tuple[str, ...], capsys: Any, monkeypatch: Any) -> tuple[int, str, str]:
    monkeypatch.chdir(ws)
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_study_input(c: Case, ws: Path, capsys: Any, monkeypatch: Any) -> None:
    before = snapshot(ws)
    rc, out, err = run(ws, c.argv, capsys, monkeypatch)
    assert rc == 2, f"exit {rc}; stderr: {err!r}"
    assert err.count("\n") == 1 and err.startswith("revit: error: ") and "Traceback" not in err, err
    assert c.needle in err, f"{c.needle!r} not in {err!r}"
    assert snapshot(ws) == before, "a refused command created, changed or removed a file"


# behaviours -------------------------------------------------------------------------------------------------
def _write(tmp_path: Path, **over: Any) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({**SPEC, **over}))
    return p


def test_failing_trials_exit_non_zero_and_the_last_line_counts_them(tmp_path, capsys, monkeypatch):
    from revit.search.objective import StudyObjective

    def boom(self, cfg, seed, trial=None):
        raise RuntimeError("the GPU fell off")

    monkeypatch.setattr(StudyObjective, "train", boom)
    p = _write(tmp_path)
    rc, out, err = run(tmp_path, ["search", "run", str(p), "--storage", "s.db", "-q", "--json"], capsys, monkeypatch)
    assert rc == 1
    assert err.splitlines()[-1] == ("study tiny: 2 trials (FAIL 2); 2 failed: baselines#0, less-more-less#0")
    assert json.loads(out)["states"] == {"FAIL": 2}
    rc, out, err = run(tmp_path, ["search", "worker", str(p), "--storage", "s.db", "-q"], capsys, monkeypatch)
    assert rc == 1 and err.splitlines()[-1].endswith("2 failed: baselines#0, less-more-less#0")


def test_a_worker_with_another_spec_is_refused(tmp_path, capsys, monkeypatch):
    from revit.search.runner import run_study

    spec = StudySpec.from_dict(SPEC, str(_write(tmp_path)))
    run_study(spec, f"sqlite:///{tmp_path}/s.db", objective=quick_objective(spec))
    other = _write(tmp_path, budget={"macs": "300K"})
    before = snapshot(tmp_path)
    rc, out, err = run(tmp_path, ["search", "worker", str(other), "--storage", "s.db"], capsys, monkeypatch)
    assert rc == 2 and "was started from another spec" in err and err.count("\n") == 1
    assert snapshot(tmp_path) == before
    # runtime options (threads, device) are not part of the spec's fingerprint
    same = _write(tmp_path, threads=2)
    rc, out, err = run(tmp_path, ["search", "status", str(same), "--storage", "s.db"], capsys, monkeypatch)
    assert rc == 0, err


def test_a_study_in_the_old_single_study_layout_is_refused_never_misreported(tmp_path, capsys, monkeypatch):
    p = _write(tmp_path)
    url = f"sqlite:///{tmp_path}/old.db"
    old = optuna.create_study(study_name="tiny", storage=url, direction="maximize")
    old.set_user_attr("spec", {"source": str(p)})
    old.enqueue_trial({}, user_attrs={"role": "baseline", "arm": "uniform"})
    before = snapshot(tmp_path)
    for cmd in (["report", str(p), "--storage", url, "--out", "rep"], ["run", str(p), "--storage", url],
                ["worker", str(p), "--storage", url], ["status", str(p), "--storage", url]):
        rc, out, err = run(tmp_path, ["search", *cmd], capsys, monkeypatch)
        assert rc == 2 and "old single-study layout" in err and "revit search run" in err, (cmd, err)
    assert snapshot(tmp_path) == before


def test_a_report_on_an_empty_sqlite_file_writes_nothing(tmp_path, capsys, monkeypatch):
    p = _write(tmp_path)
    (tmp_path / "e.db").write_bytes(b"")
    rc, out, err = run(tmp_path, ["search", "report", str(p), "--storage", "e.db", "--out", "r"], capsys, monkeypatch)
    assert rc == 2 and (tmp_path / "e.db").read_bytes() == b""


def test_a_report_opens_sqlite_read_only(tmp_path):
    """The report path opens the database read-only: a write through it fails."""
    from revit.search.runner import run_study
    from revit.search.studies import open_studies

    spec = StudySpec.from_dict(SPEC, str(_write(tmp_path)))
    url = f"sqlite:///{tmp_path}/s.db"
    run_study(spec, url, objective=quick_objective(spec))
    digest = hashlib.sha256((tmp_path / "s.db").read_bytes()).hexdigest()
    ss = open_studies(spec, url, create=False, read_only=True)
    assert len(ss.trials()) == 2
    with pytest.raises(Exception):  # noqa: B017 - Optuna wraps sqlite3 "attempt to write a readonly database"
        ss.baselines.set_user_attr("x", 1)
    assert hashlib.sha256((tmp_path / "s.db").read_bytes()).hexdigest() == digest
    with sqlite3.connect(tmp_path / "s.db") as con:  # still a sound database
        assert con.execute("pragma integrity_check").fetchone() == ("ok",)


def test_a_torn_journal_line_survives_run_worker_and_report(tmp_path, capsys, monkeypatch):
    from revit.search.runner import run_study
    from revit.search.studies import open_studies

    p = _write(tmp_path, space=[SPEC["space"], UNI], n_trials=1)
    spec = StudySpec.from_dict(yaml.safe_load(p.read_text()), str(p))
    log = tmp_path / "j.log"
    run_study(spec, f"journal:{log}", objective=quick_objective(spec))
    done = {(t.user_attrs["family"], t.number): t.values for t in open_studies(spec, f"journal:{log}").trials()}
    torn = b'{"op_code":5,"worker_id":"dead","trial_id":3,"us'  # a killed writer's half record
    with open(log, "ab") as f:
        f.write(torn)
    rc, out, err = run(tmp_path, ["search", "report", str(p), "--storage", f"journal:{log}", "--out", "r"], capsys,
                       monkeypatch)
    assert rc == 0 and log.read_bytes().endswith(torn)  # a report reads, never repairs
    spec2 = StudySpec.from_dict({**yaml.safe_load(p.read_text()), "n_trials": 2}, str(p))
    p.write_text(yaml.safe_dump({**yaml.safe_load(p.read_text()), "n_trials": 1}))
    rc, out, err = run(tmp_path, ["search", "worker", str(p), "--storage", f"journal:{log}", "--n-trials", "2",
                                  "-q"], capsys, monkeypatch)
    assert rc == 0, err
    side = list(tmp_path.glob("j.log.torn-*"))
    assert len(side) == 1 and side[0].read_bytes() == torn  # moved aside, not lost
    ss = open_studies(spec2, f"journal:{log}", create=False, read_only=True)
    after = {(t.user_attrs["family"], t.number): t.values for t in ss.trials()}
    assert {k: v for k, v in after.items() if k in done} == done  # every complete trial intact
    assert len(after) == len(done) + 2  # and the worker added one candidate per family
    rc, out, err = run(tmp_path, ["search", "run", str(p), "--storage", f"journal:{log}", "-q"], capsys, monkeypatch)
    assert rc == 0, err


def test_an_interrupted_trial_is_retried_with_its_parameters_and_not_drawn_again(tmp_path):
    from revit.search.runner import run_study, tally

    spec = StudySpec.from_dict({**SPEC, "baselines": [], "n_trials": 2}, str(_write(tmp_path)))
    url = f"sqlite:///{tmp_path}/s.db"
    quick = quick_objective(spec)

    class Stop(type(quick)):  # Ctrl-C during the second candidate
        def train(self, cfg, seed, trial=None, step0=0):
            if trial is None or trial.number == 1:
                raise KeyboardInterrupt
            return super().train(cfg, seed, trial, step0)

    with pytest.raises(KeyboardInterrupt):
        run_study(spec, url, objective=Stop(spec))
    ss = run_study(spec, url, objective=quick_objective(spec))
    trials = ss.families["less-more-less"].get_trials()
    stopped = trials[1]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"] is True
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == stopped.params
    originals = [t for t in trials if "retry_of" not in t.user_attrs and "repeat_of" not in t.user_attrs]
    assert len(originals) == 2 and originals[0].params != originals[1].params
    assert tally(ss).unrecovered == []  # made good by its retry: the study exits 0


def test_sigterm_stops_a_study_as_ctrl_c_does(tmp_path):
    """SIGTERM in the CLI raises KeyboardInterrupt in the main thread (the trial is then marked interrupted)."""
    import signal

    from revit.cli.search import _sigterm_is_interrupt

    old = signal.getsignal(signal.SIGTERM)
    try:
        _sigterm_is_interrupt()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0.5) if hasattr(signal, "sigtimedwait") else None
    finally:
        signal.signal(signal.SIGTERM, old)


def test_latency_objective_outside_the_table_is_pruned_with_its_reason_and_coverage_is_said(tmp_path, caplog):
    import logging

    from revit.search.checks import table_coverage
    from revit.search.runner import run_study, tally

    table = str(Path(__file__).resolve().parents[1] / "latency_tables" / "cpu_onnxruntime_fp32_bs64_t17.json")
    doc = {**SPEC, "setting": "micro", "budget": {"macs": "4M"}, "objectives": ["accuracy", "latency"],
           "latency_table": table, "pruner": {"name": "none"}, "n_trials": 3, "baselines": [],
           "space": [{"family": "uniform", "params": {"head_dim": [8, 48], "mlp_ratio": [1.5, 6.0]}}],
           "data": {"source": "fashion-mnist", "train_limit": 100, "val_size": 50}}
    spec = StudySpec.from_dict(doc, str(tmp_path / "s.yaml"))
    cov = table_coverage(spec)
    assert 0 < cov["uniform"] < 1  # head widths above the table's 24 fall outside it
    ss = run_study(spec, f"sqlite:///{tmp_path}/s.db", objective=quick_objective(spec))
    t = tally(ss)
    assert t.unrecovered == [] and "FAIL" not in t.states
    for tr in ss.trials():
        if tr.state == TrialState.PRUNED:
            assert "cannot predict this config" in tr.user_attrs["infeasible"]
        else:
            assert tr.values[1] == pytest.approx(tr.user_attrs["latency_ms"])
    with caplog.at_level(logging.INFO, logger="revit"):
        from revit.search.checks import check_table_coverage

        check_table_coverage(spec)
    assert "latency table covers" in caplog.text


@pytest.fixture
def full_disk(small_tmpfs: Path) -> Path:
    """A small tmpfs filled to the last byte (conftest's; root only, as CI runs)."""
    fill_disk(small_tmpfs)
    return small_tmpfs


@pytest.mark.parametrize("storage", ["s.db", "journal:s.log"])
def test_a_full_disk_is_one_line_naming_the_cause_and_blocks_no_later_run(storage, full_disk, tmp_path, capsys,
                                                                           monkeypatch):
    p = _write(tmp_path)
    url = storage.replace("s.", f"{full_disk}/s.")
    rc, out, err = run(tmp_path, ["search", "run", str(p), "--storage", url], capsys, monkeypatch)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "server running" not in err and ("space" in err or "full" in err), err
    (full_disk / "filler").unlink()  # room again: the same command now runs the study
    rc, out, err = run(tmp_path, ["search", "run", str(p), "--storage", url, "-q"], capsys, monkeypatch)
    assert rc == 0, err
    assert err.splitlines()[-1] == "study tiny: 2 trials (COMPLETE 2)"
