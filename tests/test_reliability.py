"""Issue 21: nothing lost (ownership before deletion), run folders locked, resume cleans up, workers capped.

- A user's files in a revit run folder survive ``--overwrite`` and ``--resume`` byte-identical: only the
  entries the marker lists are revit's.
- A second run into a folder that a run holds (its advisory lock) refuses in one line; two ``train`` runs
  started together into one new ``--out`` give one run whose log holds each epoch once.
- ``--resume`` removes a killed run's stale temp files, and a train run killed after epoch 1's log line but
  before its first checkpoint logs each epoch once.
- ``revit demo --workers N`` beyond this machine's cap is refused before any process starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from revit.run_folders import MARKER, RunMarker, claim_run, read_marker, write_marker

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TINY: dict[str, Any] = {"schema": "revit/vit-config/v1", "embed_dim": 32, "img_size": 8, "patch_size": 4,
                        "in_chans": 1, "num_classes": 10,
                        "blocks": [{"heads": 2, "qk_dim": 8, "v_dim": 8, "mlp_dim": 64} for _ in range(2)]}
TRAIN = ["--data", "digits", "--train-limit", "128", "--val-size", "32", "--test-limit", "32", "--batch-size", "32",
         "--threads", "1", "--no-progress"]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    import yaml

    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def user_files(folder: Path) -> dict[str, str]:
    """A user's own files planted in a run folder: a file, a hidden file and a sub-folder's file."""
    (folder / "notes.txt").write_text("my notes, not revit's\n")
    (folder / ".mine").write_bytes(os.urandom(64))
    (folder / "data").mkdir()
    (folder / "data" / "main.py").write_text("print('mine')\n")
    return sums(folder, ("notes.txt", ".mine", "data/main.py"))


def sums(folder: Path, names: Any) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def revit(*args: Any, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "revit", *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_user_files_survive_overwrite_and_resume(cli: Any, tmp_path: Path, tiny: Path, one_torch_thread: Any) -> None:
    """Item 1: --overwrite deletes only the marker's entries; --resume leaves the rest alone too."""
    out = tmp_path / "run"
    assert cli("train", tiny, *TRAIN, "--epochs", "2", "--out", out)[0] == 0
    marker = read_marker(out)
    assert marker is not None and marker.finished
    assert set(marker.files) >= {"checkpoint.pt", "log.jsonl", "model.safetensors", "metrics.json", "config.yaml"}
    mine = user_files(out)
    code, _, err = cli("train", tiny, *TRAIN, "--epochs", "2", "--overwrite", "--out", out)
    assert code == 0, err
    assert sums(out, mine) == mine and "notes.txt" not in read_marker(out).files  # type: ignore[union-attr]
    log = [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2]  # the replaced run's log is gone, the new one holds each epoch once
    write_marker(out, RunMarker("train", marker.created, finished=False, files=marker.files))  # as if killed
    code, _, err = cli("train", tiny, *TRAIN, "--epochs", "3", "--resume", "--out", out)
    assert code == 2 and "another training recipe" in err  # 3 epochs is another schedule: refused, untouched
    assert sums(out, mine) == mine
    code, _, err = cli("train", tiny, *TRAIN, "--epochs", "2", "--resume", "--out", out)
    assert code == 0, err
    assert sums(out, mine) == mine and read_marker(out).finished  # type: ignore[union-attr]


def test_overwrite_of_a_prune_run_keeps_the_users_files(tmp_path: Path) -> None:
    """The issue's reproduction, on a marked prune run: results.csv next to revit's files survives --overwrite
    (the claim and its begin() alone: the deletion rule, without a pruning run)."""
    out = tmp_path / "p"
    out.mkdir()
    for name in ("trace.jsonl", "state.pt", "metrics.json", "pruned.yaml"):
        (out / name).write_text("revit's\n")
    (out / "plots").mkdir()
    (out / "plots" / "widths_vs_step.png").write_bytes(b"png")
    (out / ".state.pt.k2j3.tmp").write_bytes(b"half")
    write_marker(out, RunMarker("prune", "2026-01-01T00:00:00+00:00", finished=True,
                                files=("trace.jsonl", "state.pt", "metrics.json", "pruned.yaml", "plots")))
    (out / "results.csv").write_text("a,b\n1,2\n")
    (out / "log.jsonl").write_text("{}\n")  # a name revit uses elsewhere, not listed for this run
    claim = claim_run(out, "prune", overwrite=True)
    claim.begin()
    try:
        assert sorted(p.name for p in out.iterdir()) == [MARKER, "log.jsonl", "results.csv"]
        assert (out / "results.csv").read_text() == "a,b\n1,2\n" and (out / "log.jsonl").read_text() == "{}\n"
    finally:
        claim.abandon()


def test_a_locked_folder_refuses_a_second_run(tmp_path: Path, tiny: Path) -> None:
    """Item 5: while a run holds the folder's lock, another process is refused in one line (nothing changes);
    after the lock is released it may resume."""
    out = tmp_path / "run"
    claim = claim_run(out, "train")
    claim.begin()  # this process now holds the lock, as a running `revit train` does
    before = sorted(p.name for p in out.iterdir())
    try:
        r = revit("train", tiny, *TRAIN, "--epochs", "1", "--resume", "--out", out)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "in use by another revit run" in r.stderr and str(out) in r.stderr
        assert sorted(p.name for p in out.iterdir()) == before
    finally:
        claim.abandon()  # releases the lock (and removes the marker-only folder)
    assert not out.exists()


def test_two_train_runs_into_one_new_folder(tmp_path: Path, tiny: Path) -> None:
    """Item 5: two runs started together into the same new --out: one runs, the other refuses in one line, and
    the log shows every epoch once."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "revit", "train", str(tiny), *TRAIN, "--epochs", "3", "--out", str(out)]
    procs = [subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    err = next(r[2] for r in results if r[0] == 2)
    assert err.count("\n") == 1 and str(out) in err, err
    assert any(w in err for w in ("in use by another revit run", "holds an unfinished train run",
                                  "holds a finished train run", "changed while this run was starting")), err
    assert [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert read_marker(out).finished  # type: ignore[union-attr]


HOOK = r"""
import os, signal, sys
import revit.train_loop as t
orig = t.save_torch
def killed(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
t.save_torch = killed
from revit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_a_kill_before_the_first_checkpoint(tmp_path: Path, tiny: Path) -> None:
    """Item 5: killed after epoch 1's log line but before its first checkpoint (and with a stale temp file of
    a checkpoint): --resume logs each epoch once and removes the temp file."""
    out = tmp_path / "run"
    args = ["train", str(tiny), *TRAIN, "--epochs", "2", "--out", str(out)]
    r = subprocess.run([sys.executable, "-c", HOOK, *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()] == [1]
    assert not (out / "checkpoint.pt").exists()
    (out / ".checkpoint.pt.x1y2z3.tmp").write_bytes(b"half a checkpoint")
    (out / ".log.jsonl.abc.tmp").write_bytes(b"half a log")
    r = revit(*args, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_demo_workers_beyond_the_cap_start_nothing(tmp_path: Path) -> None:
    """Item 3: ``revit demo --workers 10**30`` (and the cap plus one) is refused in one line before any worker
    process starts; the cap is at most one process per CPU."""
    from revit.input_checks import cpu_count, max_workers

    assert 1 <= max_workers() <= cpu_count()
    for n in (10**30, max_workers() + 1):
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "revit", "demo", "--quick", "--workers", str(n), "--out",
                              str(tmp_path / "d")], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        children = set()
        while p.poll() is None:  # watch for worker processes while it runs
            try:
                children |= set(Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split())
            except OSError:
                pass
            time.sleep(0.02)
        out, err = p.communicate()
        assert p.returncode == 2 and err.count("\n") == 1 and "--workers" in err, err
        assert f"at most {max_workers()} worker process" in err
        assert not children and time.perf_counter() - t0 < 60
        assert not (tmp_path / "d").exists()


def test_a_dangling_journal_symlink_is_never_followed(cli: Any, tmp_path: Path) -> None:
    """Item 6: ``OUT.journal.jsonl`` is a dangling symlink: latency build refuses in one line and creates
    nothing outside (it used to follow the link and write a 31 KB file there)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (work / "t.json.journal.jsonl").symlink_to(outside / "stolen.jsonl")
    code, _, err = cli("latency", "build", "--preset", "micro", "--design", "full", "--max-cells", "100000",
                       "--no-progress", "--out", work / "t.json")
    assert code == 2 and err.count("\n") == 1 and "symbolic link" in err, err
    assert list(outside.iterdir()) == [] and sorted(p.name for p in work.iterdir()) == ["t.json.journal.jsonl"]


def test_appends_never_go_through_a_symlink(tmp_path: Path) -> None:
    """Item 6: the log and trace appends (``append_text``) refuse a link planted where the file goes."""
    from revit._io import append_text, open_new_text
    from revit.errors import OutputError

    (tmp_path / "log.jsonl").symlink_to(tmp_path / "elsewhere.txt")
    for write in (lambda: append_text(tmp_path / "log.jsonl", "x\n"), lambda: open_new_text(tmp_path / "log.jsonl")):
        with pytest.raises(OutputError, match="symbolic link"):
            write()
    assert not (tmp_path / "elsewhere.txt").exists()


def test_files_past_the_size_limit_are_one_line(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 3: every YAML/JSON file is read with a size limit (256 MiB; lowered here to keep the test small)."""
    import revit._io

    monkeypatch.setattr(revit._io, "MAX_FILE_BYTES", 1000)
    (tmp_path / "big.yaml").write_text("# padding\n" * 200 + "embed_dim: 32\n")
    code, _, err = cli("model", "info", tmp_path / "big.yaml")
    assert code == 2 and err.count("\n") == 1 and "more than the 1000 bytes" in err, err


def test_yaml_aliases_of_ordinary_files_still_load() -> None:
    """The alias cap refuses bombs, not PyYAML's own dumps (``[block] * 12`` is dumped as anchors and aliases)."""
    import yaml

    from revit._io import parse_yaml

    doc = {"blocks": [{"heads": 2, "mlp_dim": 64}] * 12}
    text = yaml.safe_dump(doc)
    assert "*id" in text and parse_yaml(text, "x.yaml") == doc


def test_run_folders_are_never_written_through_symlinks(cli: Any, tmp_path: Path, tiny: Path) -> None:
    """Item 6: an --out that is a link, or a link where a run's file goes (a folder copied from elsewhere),
    is refused in one line before anything is written; the link's target stays untouched."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "precious.txt").write_text("keep\n")
    (tmp_path / "link").symlink_to(target)
    code, _, err = cli("train", tiny, *TRAIN, "--epochs", "1", "--out", tmp_path / "link")
    assert code == 2 and err.count("\n") == 1 and "symbolic link" in err, err
    run = tmp_path / "run"
    run.mkdir()
    write_marker(run, RunMarker("train", "2026-01-01T00:00:00+00:00", finished=False))
    (run / "log.jsonl").symlink_to(target / "log.jsonl")
    code, _, err = cli("train", tiny, *TRAIN, "--epochs", "1", "--resume", "--out", run)
    assert code == 2 and err.count("\n") == 1 and "log.jsonl is a symbolic link" in err, err
    assert sorted(p.name for p in target.iterdir()) == ["precious.txt"]
