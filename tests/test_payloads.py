"""Issue 21 item 2: no file revit reads runs code.

A payload (a pickle whose ``__reduce__`` calls ``os.mkdir(MARKER_DIR)``) is planted in every state file
revit reads outside the study code: a training run's ``checkpoint.pt`` (``train --resume``), a pruning
run's ``state.pt`` (``prune --resume``), the demo's resumed pruning stage (``demo --out D``, no flag), files
passed in (``--init``, ``--teacher-weights``, ``model convert --checkpoint``) and a latency build's journal
(``latency build --resume``).  Each answer is exit 2 with one ``revit: error:`` line naming the file, and the
marker folder is never created.  A first check proves the payload fires under a plain ``torch.load`` (so the
test can fail), and a static check finds ``torch.load`` nowhere in revit but its one load module.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from revit.run_folders import RunMarker, write_marker

ROOT = Path(__file__).resolve().parents[1]
TINY: dict[str, Any] = {"schema": "revit/vit-config/v1", "embed_dim": 32, "img_size": 8, "patch_size": 4,
                        "in_chans": 1, "num_classes": 10,
                        "blocks": [{"heads": 2, "qk_dim": 8, "v_dim": 8, "mlp_dim": 64} for _ in range(2)]}
DATA = ["--data", "digits", "--train-limit", "128", "--val-size", "32", "--test-limit", "32", "--threads", "1",
        "--no-progress"]


class Payload:
    """Unpickling this calls ``os.mkdir(path)``: the stand-in for any code a crafted file could run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def plant(path: Path, marker: Path, **extra: Any) -> Path:
    """A ``torch.save`` file at ``path`` shaped like revit's state (dicts of tensors) with the payload inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(2)}, "optimizer": {}, "epoch": 0, "history": [], "rng": torch.zeros(2),
                "payload": Payload(marker), **extra}, path)
    return path


def refused(cli: Any, args: list[Any], marker: Path, needle: str, *, last_line: bool = False) -> str:
    code, out, err = cli(*args)
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    if last_line:  # the demo logs its plan to stderr first; the refusal is its last line
        lines = lines[-1:]
        assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("revit: error: ") and needle in lines[0], err[-2000:]
    assert not marker.exists(), "the payload ran"
    return lines[0]


def test_the_payload_runs_under_a_plain_torch_load(tmp_path: Path) -> None:
    """The planted file is a real threat: torch.load(weights_only=False) creates the marker."""
    marker = tmp_path / "PWNED"
    f = plant(tmp_path / "state.pt", marker)
    torch.load(f, weights_only=False)
    assert marker.is_dir()


def test_no_torch_load_outside_the_one_load_module() -> None:
    """Every torch.load (and pickle load) of the package is in revit/safe_load.py, always weights_only=True."""
    sites = []
    for p in (ROOT / "revit").rglob("*.py"):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r"\btorch\.load\(|\bpickle\.loads?\(|\bweights_only\s*=\s*False", line):
                sites.append(f"{p.relative_to(ROOT)}:{i}")
    assert sites and all(s.startswith("revit/safe_load.py:") for s in sites), sites
    text = (ROOT / "revit" / "safe_load.py").read_text()
    assert "weights_only=True" in text and "weights_only=False" not in text


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    import yaml

    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def test_train_resume_refuses_a_payload_checkpoint(cli: Any, tmp_path: Path, tiny: Path) -> None:
    marker, out = tmp_path / "PWNED", tmp_path / "run"
    out.mkdir()
    write_marker(out, RunMarker("train", "2026-01-01T00:00:00+00:00", finished=False))
    plant(out / "checkpoint.pt", marker)
    refused(cli, ["train", tiny, *DATA, "--epochs", "1", "--batch-size", "32", "--resume", "--out", out], marker,
            "checkpoint.pt")


def test_prune_resume_refuses_a_payload_state(cli: Any, tmp_path: Path, tiny: Path) -> None:
    marker, out = tmp_path / "PWNED", tmp_path / "run"
    out.mkdir()
    write_marker(out, RunMarker("prune", "2026-01-01T00:00:00+00:00", finished=False))
    plant(out / "state.pt", marker, pruner={}, settings={}, base_config={})
    refused(cli, ["prune", "--model", tiny, *DATA, "--batch-size", "32", "--target-macs", "0.6", "--resume",
                  "--out", out], marker, "state.pt")


@pytest.mark.parametrize("flag", ["--init", "--teacher-weights", "--checkpoint"])
def test_files_passed_in_refuse_a_payload(cli: Any, tmp_path: Path, tiny: Path, flag: str) -> None:
    marker = tmp_path / "PWNED"
    f = plant(tmp_path / "weights.pth", marker)
    if flag == "--checkpoint":
        args: list[Any] = ["model", "convert", "vit_tiny_patch16_224", "--checkpoint", f, "--out", tmp_path / "c"]
    elif flag == "--init":
        args = ["train", tiny, *DATA, "--epochs", "1", "--init", f, "--out", tmp_path / "t"]
    else:
        args = ["train", tiny, *DATA, "--epochs", "1", "--teacher", tiny, "--teacher-weights", f,
                "--out", tmp_path / "t"]
    refused(cli, args, marker, "weights.pth")
    assert not (tmp_path / "t").exists() and not (tmp_path / "c").exists()


def test_latency_build_resume_refuses_a_payload_journal(cli: Any, tmp_path: Path) -> None:
    """The journal is JSON lines: pickle bytes there are a damaged journal (one line), never unpickled."""
    marker = tmp_path / "PWNED"
    out = tmp_path / "t.json"
    plant(tmp_path / "t.json.journal.jsonl", marker)
    refused(cli, ["latency", "build", "--preset", "micro", "--design", "full", "--max-cells", "100000",
                  "--no-progress", "--resume", "--out", out], marker, "t.json.journal.jsonl")


def test_the_demo_refuses_a_payload_in_its_resumed_prune_stage(cli: Any, tmp_path: Path) -> None:
    """``revit demo --out D`` resumes its stages by itself: a payload in ``2-prune/state.pt`` is refused."""
    from safetensors.torch import save_file

    from revit import counting
    from revit.models import build_model
    from revit.presets import get_preset

    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("the demo's data (apt-get install dataset-fashion-mnist) is not installed")
    marker, d = tmp_path / "PWNED", tmp_path / "demo"
    base = d / "1-base"
    base.mkdir(parents=True)
    write_marker(d, RunMarker("demo", "2026-01-01T00:00:00+00:00", finished=False))
    cfg = get_preset("revit_micro")
    save_file({k: v.contiguous() for k, v in build_model(cfg).state_dict().items()}, str(base / "model.safetensors"))
    (base / "metrics.json").write_text(json.dumps({"test_acc": 0.5, "macs": counting.macs(cfg)}))
    write_marker(base, RunMarker("train", "2026-01-01T00:00:00+00:00", finished=True))
    (d / "2-prune").mkdir()
    write_marker(d / "2-prune", RunMarker("prune", "2026-01-01T00:00:00+00:00", finished=False))
    plant(d / "2-prune" / "state.pt", marker, pruner={}, settings={}, base_config={})
    refused(cli, ["demo", "--quick", "--threads", "1", "--out", d], marker, "state.pt", last_line=True)
