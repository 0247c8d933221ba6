"""benchmarks/gpu_check.py: every part in its own process at toy sizes (``--dry-run``), isolated from the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
ALL = {"a_train_throughput", "b_prune_overhead", "c_torch_table", "d_tensorrt", "e_latency_vs_macs_pruning",
       "f_nccl", "g_prune_cli_cuda_bf16", "h_study_trial", "i_predicted_speedup"}


def run_check(out: Path, *args: str, fault: str | None = None, timeout: float = 900) -> tuple[int, str, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("GPU_CHECK_FAULT", None)
    if fault:
        env["GPU_CHECK_FAULT"] = fault
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--dry-run", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr, json.loads((out / "gpu_check.json").read_text())


def test_dry_run_every_part_in_its_own_process_survives_a_raise_and_an_abort(tmp_path: Path) -> None:
    """Part (b) raises and part (f) aborts its process (as a CUDA fault does): the seven others still report."""
    rc, output, rep = run_check(tmp_path, fault="b:raise,f:abort")
    parts = rep["parts"]
    assert set(parts) == ALL, output[-3000:]
    assert rc == 1  # not every part finished ok
    assert parts["b_prune_overhead"]["status"] == "error"
    assert "fault injected into part b" in parts["b_prune_overhead"]["error"]
    assert parts["f_nccl"]["status"] == "crashed" and parts["f_nccl"]["returncode"] == -6  # SIGABRT
    assert "SIGABRT" in parts["f_nccl"]["error"] and "aborting part f" in parts["f_nccl"]["output_tail"]
    ok = {k: p for k, p in parts.items() if k not in ("b_prune_overhead", "f_nccl")}
    bad = {k: (p["status"], p.get("error"), p.get("output_tail", "")[-800:])
           for k, p in ok.items() if p["status"] != "ok"}
    assert not bad, bad
    # each part ran in a process of its own, none of which imported optuna or revit.search ((h) runs the CLI)
    assert all(p["search_modules"] == [] for p in ok.values())
    assert parts["a_train_throughput"]["ratio_bf16"] > 0
    assert parts["c_torch_table"]["samples"] == 3 and parts["c_torch_table"]["mape"] >= 0
    assert parts["e_latency_vs_macs_pruning"]["macs_eta1"]["macs"] > 0
    g = parts["g_prune_cli_cuda_bf16"]
    assert g["amp"] == "bf16" and g["met"] and 0 < g["macs_ratio"] <= 0.5 + 1e-9
    assert parts["h_study_trial"]["complete_trials"] == 1
    i = parts["i_predicted_speedup"]
    assert i["predicted_speedup"] == round(i["predicted_ms"]["base"] / i["predicted_ms"]["pruned"], 4)
    assert i["eager"]["measured_speedup"] > 0 and i["table"] == "torch_fp32_table.json"
    assert rep["meta"]["dry_run"] is True and rep["meta"]["fault"] == "b:raise,f:abort"
    # the summary table: one line per part, the met column from the parts' results
    lines = [ln for ln in output.splitlines() if ln.split(" ")[0] in {k[:22] for k in ALL}]
    assert len(lines) == len(ALL)
    assert ["g_prune_cli_cuda_bf16", "yes", "ok"] in [ln.split()[:3] for ln in lines]
    assert ["f_nccl", "-", "crashed"] in [ln.split()[:3] for ln in lines]


def test_a_hung_part_is_killed_at_its_cap_and_the_next_part_runs(tmp_path: Path) -> None:
    rc, output, rep = run_check(tmp_path, "--parts", "d,f", "--cap", "d=4", fault="d:hang", timeout=300)
    d, f = rep["parts"]["d_tensorrt"], rep["parts"]["f_nccl"]
    assert d["status"] == "timeout" and d["cap_s"] == 4 and d["wall_s"] < 30, d
    assert f["status"] == "ok" and f["backend"] == "gloo", f.get("error")
    assert rc == 1


def test_bad_part_name_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--parts", "a,z"], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "z" in r.stderr


def test_synthetic_fashion_mnist_reads_back(tmp_path: Path) -> None:
    """Parts (g) and (h) train on these files through revit's own IDX reader."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from revit.data.datasets import read_idx

    d = gpu_check.synthetic_fashion_mnist(tmp_path, 30, 7)
    x, y = read_idx(d / "train-images-idx3-ubyte.gz"), read_idx(d / "train-labels-idx1-ubyte.gz")
    assert x.shape == (30, 28, 28) and y.shape == (30,) and set(np.unique(y)) <= set(range(10))
    assert read_idx(d / "t10k-images-idx3-ubyte.gz").shape == (7, 28, 28)
    # brightness depends on the class, so a trial has something to learn
    assert np.corrcoef(x.reshape(30, -1).mean(1), y)[0, 1] > 0.5
