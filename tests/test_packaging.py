"""The wheel carries the shipped data (rules/, search/, latency_tables/) where revit.paths finds it."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from revit.paths import shipped_dir

ROOT = Path(__file__).resolve().parents[1]


def test_source_checkout_finds_shipped_data():
    assert (shipped_dir("rules") / "paper.yaml").is_file()
    assert any(shipped_dir("latency_tables").glob("*.json"))
    with pytest.raises(ValueError, match="known: rules"):
        shipped_dir("weights")


def test_wheel_contains_shipped_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("revit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind, pattern in (("rules", "*.yaml"), ("search", "*.yaml"), ("latency_tables", "*.json")):
        for f in (ROOT / kind).glob(pattern):
            assert f"revit/_shipped/{kind}/{f.name}" in names, f
    assert "revit/cli/main.py" in names and "revit/models/vit.py" in names
    assert "revit/py.typed" in names  # PEP 561: mypy on user code sees revit's types
    assert any(n.endswith("entry_points.txt") for n in names)
