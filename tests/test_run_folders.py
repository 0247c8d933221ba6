"""Run folders are owned (revit.run_folders): every command that writes a run refuses a folder of another kind,
a finished run without --overwrite, an unfinished one without --resume and a folder of foreign files; each
refusal is one line and exit 2, and every file that was there keeps its checksum."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from revit.run_folders import KINDS, MARKER, RunMarker, claim_run, read_marker, write_marker

TABLE = Path(__file__).resolve().parents[1] / "latency_tables" / "cpu_onnxruntime_fp32_bs64_t17.json"
FOLDER_KINDS = [k for k in KINDS if k != "latency-build"]  # latency build writes one file, not a folder

# the command of each kind, writing to OUT (refused before any data is loaded or anything is built)
COMMANDS: dict[str, list[str]] = {
    "train": ["train", "revit_micro", "--data", "digits", "--epochs", "1", "--out", "OUT"],
    "prune": ["prune", "--model", "revit_micro", "--data", "digits", "--target-macs", "0.5", "--out", "OUT"],
    "model-convert": ["model", "convert", "vit_tiny_patch16_224", "--out", "OUT"],
    "demo": ["demo", "--quick", "--out", "OUT"],
    "study-report": ["search", "report", "smoke", "--out", "OUT"],
    "latency-build": ["latency", "build", "--preset", "micro", "--design", "full", "--max-cells", "100000",
                      "--no-progress", "--out", "OUT"],
    "model": ["model", "save", "revit_micro", "--out", "OUT"],  # a hub model folder carries the same marker
}


def _argv(kind: str, out: Path, *extra: str) -> list[str]:
    return [str(out) if a == "OUT" else a for a in COMMANDS[kind]] + list(extra)


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (the folder's whole content, hidden files included)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_run(root: Path, kind: str, finished: bool = True) -> Path:
    """A run of ``kind`` as its command leaves it: the marker (or the table file) and some payload."""
    if kind == "latency-build":
        out = root / "table.json"
        shutil.copyfile(TABLE, out)
        return out
    out = root / f"{kind}-run"
    out.mkdir()
    write_marker(out, RunMarker(kind=kind, created="2026-01-01T00:00:00+00:00", finished=finished))
    (out / "payload.bin").write_bytes(hashlib.sha256(kind.encode()).digest() * 100)
    (out / "metrics.json").write_text(json.dumps({"kind": kind}))
    return out


def _refused(cli: Any, argv: list[str], root: Path, *fragments: str) -> str:
    before = checksums(root)
    code, out, err = cli(*argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("revit: error:") and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err
    assert checksums(root) == before  # nothing changed, nothing added
    return err


@pytest.mark.parametrize(("command", "folder_kind"), [(c, f) for f in KINDS for c in KINDS if c != f])
def test_a_command_refuses_a_run_of_another_kind(cli, tmp_path, command, folder_kind):
    """Every command against every other kind's run (its own kind: test_a_finished_run_needs_overwrite)."""
    out = make_run(tmp_path, folder_kind)
    for extra in ((), ("--overwrite",)):  # --overwrite never replaces another kind's run
        _refused(cli, _argv(command, out, *extra), tmp_path, folder_kind, command, "choose another --out")


@pytest.mark.parametrize("kind", KINDS)
def test_a_finished_run_needs_overwrite(cli, tmp_path, kind):
    out = make_run(tmp_path, kind, finished=True)
    _refused(cli, _argv(kind, out), tmp_path, f"finished {kind} run", "--overwrite")
    if kind in ("train", "prune", "latency-build"):  # nothing to resume in a finished run
        _refused(cli, _argv(kind, out, "--resume"), tmp_path, f"finished {kind} run", "--overwrite")


@pytest.mark.parametrize("kind", ["train", "prune"])
def test_an_unfinished_run_needs_resume(cli, tmp_path, kind):
    out = make_run(tmp_path, kind, finished=False)
    _refused(cli, _argv(kind, out), tmp_path, f"unfinished {kind} run", "--resume", "--overwrite")


def test_an_unfinished_latency_build_needs_resume(cli, tmp_path):
    out = tmp_path / "t.json"
    (tmp_path / "t.json.journal.jsonl").write_text('{"type":"header"}\n')
    _refused(cli, _argv("latency-build", out), tmp_path, "unfinished latency-build run", "--resume")


@pytest.mark.parametrize("kind", KINDS)
def test_foreign_files_are_never_taken(cli, tmp_path, kind):
    """A folder (or a file) that holds no revit run is refused, with and without --overwrite/--resume."""
    if kind == "latency-build":
        out = tmp_path / "notes.json"
        out.write_text('{"mine": 1}')
    else:
        out = tmp_path / "mine"
        out.mkdir()
        (out / "notes.txt").write_text("my notes")
        (out / "config.yaml").write_text("precious: true\n")
    for extra in ((), ("--overwrite",), ("--resume",) if kind in ("train", "prune", "latency-build") else ()):
        _refused(cli, _argv(kind, out, *extra), tmp_path, kind)


def test_a_garbled_marker_is_one_line(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKER).write_text('{"schema": "revit/run/v9", "kind": "train"}')
    _refused(cli, _argv("train", out), tmp_path, MARKER, "revit/run/v1")


def test_claim_reads_only_and_marks(tmp_path):
    """The claim writes nothing; begin() writes an unfinished marker, finish() a finished one (atomic JSON)."""
    out = tmp_path / "run"
    claim = claim_run(out, "prune")
    assert not out.exists() and claim.mode == "new"
    claim.begin()
    doc = json.loads((out / MARKER).read_text())
    assert doc["schema"] == "revit/run/v1" and doc["kind"] == "prune" and doc["finished"] is False
    assert [p.name for p in out.iterdir()] == [MARKER]  # no temp file left
    claim_run(out, "prune", resume=True).begin()
    assert json.loads((out / MARKER).read_text())["created"] == doc["created"]  # a resume keeps the birth date
    claim.finish()
    marker = read_marker(out)
    assert marker is not None and marker.finished and marker.kind == "prune"


@pytest.mark.parametrize("kind", ["train", "prune", "demo"])
def test_folders_without_a_marker_are_never_taken(cli, tmp_path, kind):
    """Issue 21 item 1: files that once made a folder count as an old-style run (trace.jsonl, log.jsonl,
    history.json next to metrics.json) no longer do: --overwrite and --resume refuse in one line naming the
    files found, and every file keeps its bytes."""
    d = tmp_path / "p"
    d.mkdir()
    (d / "results.csv").write_text("a,b\n1,2\n")
    (d / "trace.jsonl").write_text("{}\n")
    (d / "log.jsonl").write_text("{}\n")
    (d / "history.json").write_text("[]")
    (d / "metrics.json").write_text("{}")
    (d / "1-base").mkdir()
    assert read_marker(d) is None
    for extra in ((), ("--overwrite",), ("--resume",) if kind != "demo" else ()):
        err = _refused(cli, _argv(kind, d, *extra), tmp_path, "results.csv", "without revit's run marker")
        assert "--overwrite" not in err and "--resume" not in err  # no flag is suggested that would touch them


def test_overwrite_replaces_a_finished_convert(cli, tmp_path):
    """--overwrite on a finished run of the same kind replaces it (and only then)."""
    out = tmp_path / "conv"
    assert cli("model", "convert", "vit_tiny_patch16_224", "--out", out)[0] == 0
    first = checksums(out)
    marker = read_marker(out)
    assert marker == RunMarker("model-convert", marker.created, True,  # type: ignore[union-attr]
                               files=("config.yaml", "hf", "model.safetensors"))
    _refused(cli, ["model", "convert", "vit_tiny_patch16_224", "--out", str(out)], tmp_path, "--overwrite")
    (out / "mine.txt").write_text("the user's own file, not listed in the marker")
    (out / ".model.safetensors.abc123.tmp").write_bytes(b"half a file of a killed run")
    assert cli("model", "convert", "vit_tiny_patch16_224", "--out", out, "--overwrite")[0] == 0
    after = checksums(out)
    assert (out / "mine.txt").read_text() == "the user's own file, not listed in the marker"  # never revit's
    assert set(after) == set(first) | {"mine.txt"}  # the stale temp file of revit's is gone


_TRAIN = ["--data", "digits", "--train-limit", "256", "--val-size", "64", "--test-limit", "64", "--epochs", "2",
          "--batch-size", "64", "--threads", "1", "--no-progress"]


def test_refused_train_resume_leaves_the_run_intact(cli, tmp_path, one_torch_thread):
    """Issue 10 item 1: resuming a run with another model config (or recipe) is refused before any write."""
    from revit.config import BlockDims, ViTConfig
    from revit.presets import get_preset

    out = tmp_path / "tk"
    assert cli("train", "revit_micro", *_TRAIN, "--out", out)[0] == 0
    m = read_marker(out)
    assert m is not None and m.finished
    write_marker(out, RunMarker("train", m.created, finished=False))  # as if killed before metrics.json
    micro = get_preset("revit_micro")
    small = ViTConfig(embed_dim=micro.embed_dim // 2, blocks=(BlockDims(2, 8, 8, 64),) * micro.depth,
                      img_size=micro.img_size, patch_size=micro.patch_size, in_chans=micro.in_chans,
                      num_classes=micro.num_classes)
    small.save(tmp_path / "small.yaml")
    _refused(cli, ["train", str(tmp_path / "small.yaml"), *_TRAIN, "--resume", "--out", str(out)], tmp_path,
             "another model config")
    (out / "config.yaml").unlink()  # even without config.yaml, the checkpoint's weights say it
    _refused(cli, ["train", str(tmp_path / "small.yaml"), *_TRAIN, "--resume", "--out", str(out)], tmp_path,
             "weights of another model")
    _refused(cli, ["train", "revit_micro", *_TRAIN, "--lr", "0.5", "--resume", "--out", str(out)], tmp_path,
             "another training recipe")
    code, _, err = cli("train", "revit_micro", *_TRAIN, "--resume", "--out", out)  # the same options go on
    assert code == 0, err
    assert read_marker(out).finished  # type: ignore[union-attr]
