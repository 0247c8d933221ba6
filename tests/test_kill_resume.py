"""SIGKILL at chosen and at seeded random points of real ``revit`` processes, then resume.

Kill points are either *named* (a wrapper process patches one function to SIGKILL itself on its n-th
call, before or after it runs: exact windows such as "the trace line is written but not the state") or
*random* (a seeded draw of the call count, or of the wall time into the run).  The resumed result must
equal the uninterrupted one: byte-identical trace, weights and configs where the run is deterministic
(prune, train); for a latency build nothing measured is lost or measured twice and the table is the one
its measurements give; for a study every trial is accounted for and the killed one failed and was retried.
The default suite kills prune (twice: before its first state save, and a full disk there), train and a latency
build once each (a worker is killed mid-trial in tests/test_search_workers.py); ``-m slow`` runs every named
point and the random ones.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from revit.config import BlockDims, ViTConfig
from revit.run_folders import MARKER

# run ``revit ARGV`` with TARGET ("module:Owner.attr") patched to SIGKILL the process on its N-th call
HOOK = r"""
import importlib, os, signal, sys
target, n, when, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
mod, attr = target.split(":")
owner = importlib.import_module(mod)
*path, name = attr.split(".")
for p in path:
    owner = getattr(owner, p)
orig = getattr(owner, name)
calls = [0]
def hooked(*a, **k):
    calls[0] += 1
    if calls[0] == n and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    r = orig(*a, **k)
    if calls[0] == n and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return r
setattr(owner, name, hooked)
from revit.cli.main import main
sys.exit(main(argv))
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def revit(args: list[Any], *, hook: tuple[str, int, str] | None = None, after_s: float | None = None,
          expect: int | None = 0) -> subprocess.CompletedProcess[str]:
    """Run ``revit ARGS`` as a real process, SIGKILLed at ``hook`` (target, n, before|after) or ``after_s``."""
    argv = [str(a) for a in args]
    if hook is not None:
        cmd = [sys.executable, "-c", HOOK, hook[0], str(hook[1]), hook[2], *argv]
    else:
        cmd = [sys.executable, "-m", "revit", *argv]
    if after_s is None:
        r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    else:
        p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=after_s)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            out, err = p.communicate()
        r = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    if expect is not None and hook is not None and expect == 0:
        expect = -signal.SIGKILL
    if expect is not None:
        assert r.returncode == expect, (hook, r.returncode, r.stderr[-3000:])
    return r


def refused(args: list[Any]) -> str:
    """Run ``revit ARGS`` in this process (cheaper than a new one): it must be refused with one line; stderr."""
    import contextlib
    import io

    from revit.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    assert code == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    return err.getvalue()


def add_seconds(path: Path, extra: float) -> float:
    """Pretend the earlier segments took ``extra`` more seconds (so a count of the last segment alone fails)."""
    import torch

    st = torch.load(path, weights_only=False)
    st["seconds"] = float(st.get("seconds", 0.0)) + extra
    torch.save(st, path)
    return float(st["seconds"])


def no_temp_files(root: Path) -> None:
    left = [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert not left, left


def finished(out: Path) -> bool:
    return (out / MARKER).is_file() and bool(json.loads((out / MARKER).read_text())["finished"])


def tiny_cfg(path: Path) -> Path:
    cfg = ViTConfig(embed_dim=32, blocks=(BlockDims(2, 8, 8, 64),) * 2, img_size=8, patch_size=4, in_chans=1,
                    num_classes=10)
    cfg.save(path)
    return path


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


# --- prune --------------------------------------------------------------------------------------------------
PRUNE = ["--data", "digits", "--train-limit", "256", "--val-size", "64", "--test-limit", "64", "--batch-size", "32",
         "--target-macs", "0.6", "--epochs", "1", "--eval-size", "64", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def prune_ref(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("prune-ref")
    cfg = tiny_cfg(root / "tiny.yaml")
    revit(["prune", "--model", cfg, *PRUNE, "--out", root / "ref"])
    return cfg, root / "ref"


def check_prune_equal(out: Path, ref: Path) -> None:
    """Byte-identical trace, pruned config and weights; the same metrics but for the wall time."""
    for f in ("trace.jsonl", "pruned.yaml", "pruned.safetensors", "teacher.safetensors"):
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f
    m, r = (json.loads((d / "metrics.json").read_text()) for d in (out, ref))
    assert _without(m, "seconds") == _without(r, "seconds")
    assert finished(out)
    no_temp_files(out)


def kill_and_resume_prune(prune_ref: tuple[Path, Path], out: Path, kills: list[dict[str, Any]],
                          extra: tuple[Any, ...] = ()) -> None:
    cfg, ref = prune_ref
    args = ["prune", "--model", cfg, *PRUNE, "--out", out, *extra]
    for k in kills:
        r = revit(args + (["--resume"] if out.exists() else []), **k, expect=None)
        if r.returncode == 0 or finished(out):  # killed after the end (or on the way out): nothing to resume
            break
        assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
        if out.exists() and any(out.iterdir()):  # a killed run is refused without --resume, untouched
            before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
            msg = refused(args)
            assert "unfinished prune run" in msg and "--resume" in msg
            assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    else:
        prior = 0.0
        if (out / "state.pt").is_file():
            prior = add_seconds(out / "state.pt", 1000.0)
        t0 = time.perf_counter()
        revit(args + ["--resume"])
        wall = time.perf_counter() - t0
        seconds = json.loads((out / "metrics.json").read_text())["seconds"]
        assert prior <= seconds <= prior + wall  # every segment counted (to its last state save)
    check_prune_equal(out, ref)


def test_prune_killed_before_its_first_state_save_resumes(prune_ref: tuple[Path, Path], tmp_path: Path) -> None:
    """Issue 10 item 2: teacher and trace written, no state.pt: --resume starts over and gives the same run."""
    kill_and_resume_prune(prune_ref, tmp_path / "p", [{"hook": ("revit.prune.loop:save_torch", 1, "before")}])


PRUNE_POINTS = [
    ("revit.prune.loop:save_weights", 1, "before"),  # marker only: before the teacher
    ("torch:save", 1, "after"),  # the first state in its temp file, not yet renamed into place
    ("revit.prune.loop:PruneRun._save_state", 1, "after"),  # the first state, nothing trained
    ("revit.trace:TraceWriter.append", 2, "after"),  # step 2's trace line written, its state not
    ("revit.prune.loop:PruneRun._save_state", 3, "after"),  # after step 2's state
    ("revit.prune.plots:plot_trace", 1, "before"),  # pruned.safetensors written, metrics not
    ("revit.run_folders:Claim.finish", 1, "before"),  # metrics written, the marker not yet finished
]


@pytest.mark.slow
@pytest.mark.parametrize("point", PRUNE_POINTS, ids=lambda p: f"{p[0].split(':')[1]}-{p[1]}-{p[2]}")
def test_prune_killed_at_a_named_point(prune_ref: tuple[Path, Path], tmp_path: Path, point: Any) -> None:
    kill_and_resume_prune(prune_ref, tmp_path / "p", [{"hook": point}])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_prune_killed_twice_at_random_times(prune_ref: tuple[Path, Path], tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    kill_and_resume_prune(prune_ref, tmp_path / "p", [{"after_s": rng.uniform(2.0, 9.0)} for _ in range(2)])


# --- train --------------------------------------------------------------------------------------------------
TRAIN = ["--data", "digits", "--train-limit", "256", "--val-size", "64", "--test-limit", "64", "--batch-size", "32",
         "--epochs", "3", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def train_ref(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train-ref")
    cfg = tiny_cfg(root / "tiny.yaml")
    revit(["train", cfg, *TRAIN, "--out", root / "ref"])
    return cfg, root / "ref"


def _log(out: Path) -> list[dict[str, Any]]:
    return [_without(json.loads(x), "seconds") for x in (out / "log.jsonl").read_text().splitlines()]


def check_train_equal(out: Path, ref: Path) -> None:
    """Byte-identical weights and config; the same log and metrics but for the wall times."""
    for f in ("model.safetensors", "config.yaml"):
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f
    assert _log(out) == _log(ref)  # one line per epoch: none lost, none duplicated
    m, r = (json.loads((d / "metrics.json").read_text()) for d in (out, ref))
    assert _without(m, "seconds", "seconds_per_epoch") == _without(r, "seconds", "seconds_per_epoch")
    assert finished(out)
    no_temp_files(out)


def kill_and_resume_train(train_ref: tuple[Path, Path], out: Path, kills: list[dict[str, Any]],
                          extra: tuple[Any, ...] = ()) -> None:
    cfg, ref = train_ref
    args = ["train", cfg, *TRAIN, "--out", out, *extra]
    for k in kills:
        r = revit(args + (["--resume"] if out.exists() else []), **k, expect=None)
        if r.returncode == 0 or finished(out):
            break
        assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    else:
        prior = 0.0
        if (out / "checkpoint.pt").is_file():
            prior = add_seconds(out / "checkpoint.pt", 1000.0)
        t0 = time.perf_counter()
        revit(args + ["--resume"])
        wall = time.perf_counter() - t0
        seconds = json.loads((out / "metrics.json").read_text())["seconds"]
        assert prior <= seconds <= prior + wall
    check_train_equal(out, ref)


def test_train_killed_between_log_line_and_checkpoint(train_ref: tuple[Path, Path], tmp_path: Path) -> None:
    """Epoch 2's log line is written, its checkpoint not: the resumed log holds each epoch once."""
    kill_and_resume_train(train_ref, tmp_path / "t", [{"hook": ("revit.train_loop:save_torch", 2, "before")}])


TRAIN_POINTS = [
    ("revit.train_loop:_Trainer.epoch", 1, "before"),  # marker and config.yaml only
    ("revit.train_loop:save_torch", 1, "after"),  # epoch 1 checkpointed
    ("revit.train_loop:_Trainer.epoch", 3, "after"),  # last epoch trained, not checkpointed
    ("revit.models.checkpoint:save_weights", 1, "after"),  # weights written, metrics not (imported at its call)
    ("revit.run_folders:Claim.finish", 1, "before"),  # metrics written, the marker not yet finished
]


@pytest.mark.slow
@pytest.mark.parametrize("point", TRAIN_POINTS, ids=lambda p: f"{p[0].split(':')[1]}-{p[1]}-{p[2]}")
def test_train_killed_at_a_named_point(train_ref: tuple[Path, Path], tmp_path: Path, point: Any) -> None:
    kill_and_resume_train(train_ref, tmp_path / "t", [{"hook": point}])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_train_killed_twice_at_random_times(train_ref: tuple[Path, Path], tmp_path: Path, seed: int) -> None:
    rng = random.Random(100 + seed)
    kill_and_resume_train(train_ref, tmp_path / "t", [{"after_s": rng.uniform(2.0, 7.0)} for _ in range(2)])


# --- two teachers (issue 29): a timm CNN and the unpruned model, in pruning and in the fine-tune --------------
@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trained timm CNN; an uninterrupted two-teacher prune and two-teacher fine-tune of its result."""
    root = tmp_path_factory.mktemp("two-teachers")
    cfg = tiny_cfg(root / "tiny.yaml")
    revit(["train", "test_resnet", *TRAIN[:-5], "--epochs", "1", "--threads", "1", "--no-progress",
           "--out", root / "cnn"])
    cnn = ("--teacher", "test_resnet", "--teacher-weights", root / "cnn" / "model.safetensors")
    prune = (*cnn, "--teacher-weight", "0.5")
    revit(["prune", "--model", cfg, *PRUNE, "--out", root / "prune", *prune])
    ft = ("--init", root / "prune" / "pruned.safetensors", *cnn, "--self-teacher", root / "prune")
    revit(["train", root / "prune" / "pruned.yaml", *TRAIN, "--out", root / "ft", *ft])
    return {"cfg": cfg, "root": root, "prune": prune, "ft": ft}


@pytest.mark.slow
@pytest.mark.parametrize("point", [PRUNE_POINTS[3], PRUNE_POINTS[5]], ids=["trace-line", "before-plots"])
def test_two_teacher_prune_killed_resumes_byte_identical(two_teachers: dict[str, Any], tmp_path: Path,
                                                         point: Any) -> None:
    t = two_teachers
    kill_and_resume_prune((t["cfg"], t["root"] / "prune"), tmp_path / "p", [{"hook": point}], t["prune"])


@pytest.mark.slow
@pytest.mark.parametrize("point", [TRAIN_POINTS[1], TRAIN_POINTS[2]], ids=["checkpointed", "not-checkpointed"])
def test_two_teacher_finetune_killed_resumes_byte_identical(two_teachers: dict[str, Any], tmp_path: Path,
                                                            point: Any) -> None:
    t = two_teachers
    kill_and_resume_train((t["root"] / "prune" / "pruned.yaml", t["root"] / "ft"), tmp_path / "t",
                          [{"hook": point}], t["ft"])


# --- latency build ------------------------------------------------------------------------------------------
SPACE = {"schema": "revit/latency-space/v1", "name": "tiny", "depth": 2,
         "setting": {"img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": 10},
         "axes": {"embed_dim": [16, 32], "heads": [1, 2], "qk_dim": [4], "v_dim": [4], "mlp_dim": [16, 32]}}
PASSES = 2
# 8 block cells, the call overhead, the fixed parts at both embed_dims, the half blocks (4 attention, 4 MLP)
KEYS = 8 + 1 + 2 + 8
BUILD = ["--backend", "torch", "--design", "full", "--passes", str(PASSES), "--repeats", "2", "--warmup", "1",
         "--batch", "8", "--no-reference", "--no-progress"]


def _measures(journal: Path) -> list[tuple[Any, ...]]:
    recs = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
    assert recs[0]["type"] == "header"
    return [(r["what"], json.dumps(r["cell"]), r["pass"]) for r in recs[1:] if r["type"] == "measure"]


def expected_table(journal: Path) -> dict[tuple[Any, ...], float]:
    """The table's block and half-block values computed from the journal alone: median of a cell's samples less
    the overhead's, keyed by (what, *cell)."""
    recs = [json.loads(x) for x in journal.read_text().splitlines()[1:] if x.strip()]
    samples: dict[Any, list[float]] = {}
    for r in recs:
        samples.setdefault((r["what"], json.dumps(r["cell"])), []).extend(r["samples"])
    over = float(np.median(samples[("overhead", "null")]))
    return {(w, *json.loads(c)): max(float(np.median(s)) - over, 0.0) for (w, c), s in samples.items()
            if w in ("block", "attention", "mlp")}


def kill_and_resume_build(tmp_path: Path, kills: list[tuple[str, int, str]]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    out = tmp_path / "t.json"
    journal = tmp_path / "t.json.journal.jsonl"
    args = ["latency", "build", "--space", space, *BUILD, "--out", out]
    for i, hook in enumerate(kills):
        revit(args + (["--resume"] if i else []), hook=hook)
        got = _measures(journal)
        assert len(got) == len(set(got))  # nothing measured twice
    if kills:  # a killed build is refused without --resume, untouched
        before = journal.read_bytes()
        assert "unfinished latency-build run" in refused(args)
        assert journal.read_bytes() == before
    # resume to the end of the measurements (killed just before the table is saved): the journal is complete
    revit(args + (["--resume"] if kills else []), hook=("revit.latency.table:LatencyTable.save", 1, "before"))
    got = _measures(journal)
    assert len(got) == len(set(got)) == KEYS * PASSES
    expect = expected_table(journal)
    revit(args + ["--resume"])
    assert not journal.exists() and not out.with_name(f".{out.name}.tmp").exists()
    from revit.latency.table import LatencyTable

    t = LatencyTable.load(out)
    assert t.metadata["design"]["cells_measured"] == 8
    assert {a: list(v) for a, v in t.axes.items()} == SPACE["axes"]
    assert t.branches is not None and len(expect) == 8 + t.half_cells
    for (what, *cell), v in expect.items():
        axes, values = (t.axes, t.values) if what == "block" else (t.branches[what].axes, t.branches[what].values)
        idx = tuple(list(axes[a]).index(x) for a, x in zip(axes, cell, strict=True))
        assert values[idx] == pytest.approx(v, rel=1e-12, abs=1e-15)
    assert "finished latency-build run" in refused(args + ["--resume"])


def test_latency_build_killed_at_a_random_measurement(tmp_path: Path) -> None:
    k = random.Random(7).randint(2, KEYS * PASSES)  # Journal.append call 1 is the header
    kill_and_resume_build(tmp_path, [("revit.latency.profiler:Journal.append", k, "after")])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_latency_build_killed_twice_at_random_measurements(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    first = rng.randint(1, KEYS * PASSES)
    second = rng.randint(1, KEYS * PASSES - max(first - 1, 0))  # counted from the resumed process's start
    kill_and_resume_build(tmp_path, [("revit.latency.profiler:Journal.append", first, rng.choice(["before", "after"])),
                                     ("revit.latency.profiler:Journal.append", second, "before")])


# --- study worker -------------------------------------------------------------------------------------------
def _study(tmp_path: Path, name: str) -> tuple[Any, Any, Path, str]:
    from revit.search.runner import enqueue_baselines
    from revit.search.spec import StudySpec
    from revit.search.studies import open_studies
    from revit.search.testing import storage_url, tiny_study_doc

    url = storage_url("sqlite", tmp_path, name=name)
    doc = tiny_study_doc(name=name, pruner={"name": "none"}, n_trials=2, seeds=[0], repeats={"top_k": 0},
                         baselines=[{"rule": "uniform"}], train={"epochs": 2, "batch_size": 64})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    spec = StudySpec.load(path)
    ss = open_studies(spec, url)
    enqueue_baselines(ss)
    return spec, ss, path, url


def kill_and_resume_worker(tmp_path: Path, kill: dict[str, Any]) -> None:
    from optuna.trial import TrialState

    spec, study, path, url = _study(tmp_path, "kill")
    args = ["search", "worker", path, "--storage", url, "--quiet", "--threads", "1"]
    victim = revit(args, **kill, expect=None)
    assert victim.returncode in (0, -signal.SIGKILL), victim.stderr[-3000:]
    revit(args)  # a new worker fails the dead worker's trial, retries it and finishes the study
    trials = study.trials()
    for _, part in study.parts():
        assert sorted(t.number for t in part.get_trials()) == list(range(len(part.get_trials())))
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) <= 1 and (len(failed) == 1 or "hook" not in kill)
    for f in failed:  # the killed trial: failed and retried exactly once, with the same arm and seed
        assert "is gone" in f.user_attrs.get("error", "is gone")
        retries = [t for t in trials if t.user_attrs.get("retry_of") == f.number
                   and t.user_attrs.get("family") == f.user_attrs.get("family")]
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
        assert {k: retries[0].user_attrs.get(k) for k in ("role", "arm", "seed")} == \
            {k: f.user_attrs.get(k) for k in ("role", "arm", "seed")}
    # everything else completed (or was an infeasible point of the space, pruned with the reason)
    assert all(t.state == TrialState.COMPLETE or (t.state == TrialState.PRUNED and "infeasible" in t.user_attrs)
               for t in trials if t not in failed)
    originals = [t for t in trials if t.user_attrs.get("role", "candidate") == "candidate"
                 and "retry_of" not in t.user_attrs]
    assert len(originals) == spec.n_trials
    baselines = [t for t in trials if t.user_attrs.get("role") == "baseline" and t.state == TrialState.COMPLETE]
    assert len(baselines) == 1


@pytest.mark.slow  # the default suite kills a worker mid-trial on a journal: tests/test_search_workers.py
def test_study_worker_killed_mid_trial(tmp_path: Path) -> None:
    """The worker dies in its second trial's second epoch (sqlite storage)."""
    kill_and_resume_worker(tmp_path, {"hook": ("revit.train_loop:_Trainer.epoch", 4, "before")})


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_study_worker_killed_at_a_random_time(tmp_path: Path, seed: int) -> None:
    kill_and_resume_worker(tmp_path, {"after_s": random.Random(seed).uniform(3.0, 15.0)})


# --- a full disk at the first state save --------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A tmpfs mounted under tmp_path (root only), yielding (folder, resize(kib))."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()

    def mount(kib: int, remount: bool = False) -> None:
        opts = f"{'remount,' if remount else ''}size={kib}k"
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(disk)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")

    yield disk, mount
    subprocess.run(["umount", str(disk)], capture_output=True)


def test_prune_with_a_full_disk_at_the_first_state_save(prune_ref: tuple[Path, Path], small_disk: Any) -> None:
    """Issue 10 item 2: the first state.pt does not fit: one line, no temp file, and --resume (after freeing
    space) gives the uninterrupted run."""
    cfg, ref = prune_ref
    disk, mount = small_disk
    teacher, state = (ref / "teacher.safetensors").stat().st_size, (ref / "state.pt").stat().st_size
    kib = (teacher + len((ref / "trace.jsonl").read_text().splitlines()[0]) + 16 * 1024) // 1024 + 4
    assert state > kib * 1024 - teacher  # the teacher fits, the state cannot
    mount(kib)
    out = disk / "p"
    args = ["prune", "--model", cfg, *PRUNE, "--out", out]
    r = revit(args, expect=2)
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("revit: error: cannot write") and "state.pt" in lines[-1], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    no_temp_files(disk)
    assert (out / "teacher.safetensors").is_file() and not (out / "state.pt").exists()
    mount(16 * 1024, remount=True)  # space freed
    assert "--resume" in refused(args)
    revit(args + ["--resume"])
    check_prune_equal(out, ref)
