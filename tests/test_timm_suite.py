"""timm's own model tests (tests/test_models.py of the installed timm's sdist) on revit's models.

The default suite runs them on revit_micro (about 30 s, most of it timm collecting its ~18k
cases); ``make test-timm`` (or the slow test below) runs every revit_* model but the DeiT-B-sized
ones next to timm's deit_tiny_patch16_224.  The sdist is fetched from the package index once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent / "timm_suite" / "run.py"


def _run(tmp_path: Path, *args: str) -> dict[str, dict[str, int]]:
    out = tmp_path / "counts.json"
    proc = subprocess.run([sys.executable, str(RUN), "--threads", "1", "--json", str(out), *args],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())["models"]  # type: ignore[no-any-return]


def test_timm_model_suite_on_revit_micro(tmp_path):
    counts = _run(tmp_path, "--models", "revit_micro", "--no-reference")["revit_micro"]
    assert counts["test_functions"] > 5 and counts["failed"] == 0
    assert counts["passed"] == counts["collected"]


@pytest.mark.slow
def test_timm_model_suite_on_every_revit_model(tmp_path):
    counts = _run(tmp_path)
    ref = counts.pop("deit_tiny_patch16_224")
    assert ref["collected"] > 5 and ref["failed"] == 0
    assert "revit_deit_base_patch16_224" not in counts and {"revit_micro", "revit_tiny", "revit_small"} <= set(counts)
    for name, c in counts.items():
        assert c["passed"] == c["collected"] >= ref["collected"], (name, c)
