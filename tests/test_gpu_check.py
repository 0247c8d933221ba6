"""benchmarks/gpu_check.py: its CPU-safe parts run end to end at toy sizes (``--dry-run``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_dry_run_writes_every_part(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert gpu_check.main(["--out", str(tmp_path), "--dry-run"]) == 0
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = rep["parts"]
    assert set(parts) == {"a_train_throughput", "b_prune_overhead", "c_torch_table", "d_tensorrt",
                          "e_latency_vs_macs_pruning", "f_nccl"}
    assert all(p["status"] == "ok" for p in parts.values()), {k: p.get("error") for k, p in parts.items()}
    assert parts["a_train_throughput"]["ratio_bf16"] > 0 and parts["b_prune_overhead"]["eager_overhead"] > -1
    assert parts["c_torch_table"]["samples"] == 3 and parts["c_torch_table"]["mape"] >= 0
    assert parts["e_latency_vs_macs_pruning"]["macs_eta1"]["macs"] > 0 and parts["f_nccl"]["backend"] == "gloo"
    assert rep["meta"]["dry_run"] is True


def test_imports_neither_optuna_nor_revit_search(tmp_path: Path) -> None:
    """The GPU machine has no optuna: the script (every part) must not need it."""
    import subprocess

    code = ("import sys; sys.path.insert(0, 'benchmarks'); import gpu_check; "
            f"assert gpu_check.main(['--out', {str(tmp_path)!r}, '--dry-run', '--parts', 'a,b,f']) == 0; "
            "bad = [m for m in sys.modules if m.startswith(('optuna', 'revit.search'))]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
