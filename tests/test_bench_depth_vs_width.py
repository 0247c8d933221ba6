"""benchmarks/depth_vs_width.py end to end at a tiny scale: both arms, equal steps, removals, intervals, resumable."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from revit import counting
from revit.config import ViTConfig
from revit.presets import revit_micro

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
# a v1 table: the micro table shipped before its v2 rebuild
SHIPPED_V1 = Path(__file__).resolve().parent / "fixtures" / "cost_target" / "cpu_onnxruntime_fp32_bs64_t17_v1_amd.json"
TINY = ["--models", "micro", "--seeds", "0", "--train-limit", "256", "--val-size", "32", "--test-limit", "64",
        "--batch-size", "64", "--base-epochs", "1", "--prune-epochs", "1", "--prune-steps", "4", "--epochs", "1",
        "--threads", "1"]


def run_bench(monkeypatch: pytest.MonkeyPatch, *argv: Any) -> None:
    """The script's main() in this process (torch already imported: seconds, not a fresh interpreter)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import depth_vs_width

    monkeypatch.setattr(sys, "argv", ["depth_vs_width.py", *map(str, argv)])
    depth_vs_width.main()


def results(folder: Path) -> dict[str, dict[str, Any]]:
    return {f.stem: json.loads(f.read_text()) for f in sorted((folder / "results").glob("*.json"))}


def test_depth_vs_width_smoke_both_arms_equal_steps_removals_and_intervals(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None) -> None:
    out, mirror = tmp_path / "out", tmp_path / "mirror"
    run_bench(monkeypatch, *TINY, "--targets", "macs:0.1", "--latency-passes", "0", "--out", out, "--mirror", mirror)
    rs = results(out)
    assert set(rs) == {"micro_macs0.1_depth_s0", "micro_macs0.1_width_s0"}
    depth, width = rs["micro_macs0.1_depth_s0"], rs["micro_macs0.1_width_s0"]
    base_macs = counting.macs(revit_micro())
    for r in (depth, width):  # the MACs and params are the pruned config's, counted here independently
        cfg = ViTConfig.from_dict(r["config"])
        assert r["macs"] == counting.macs(cfg) and r["params"] == counting.params(cfg)
        assert r["macs_ratio"] == pytest.approx(counting.macs(cfg) / base_macs) and r["macs_ratio"] <= 0.1
        # which blocks lost what (base indices): exactly the blocks and branches the config lacks
        kept = [i for i in range(revit_micro().depth) if i not in r["removed"]["blocks"]]
        assert cfg.depth == len(kept) == r["depth"]
        assert r["removed"]["attention"] == [i for i, b in zip(kept, cfg.blocks, strict=True) if not b.has_attention]
        assert r["removed"]["mlp"] == [i for i, b in zip(kept, cfg.blocks, strict=True) if not b.has_mlp]
    # equal steps for both arms; only the depth arm removes, and at 10% of the MACs it does
    assert (depth["prune_batches"], depth["finetune_steps"]) == (width["prune_batches"], width["finetune_steps"]) \
        and depth["finetune_steps"] > 0
    assert any(depth["removed"].values()) and not any(width["removed"].values())
    assert all(b.heads >= 1 and b.mlp_dim >= 1 for b in ViTConfig.from_dict(width["config"]).blocks)
    report = (out / "report.md").read_text()
    assert "| micro | macs0.1 | depth | 1 |" in report and "| micro | macs0.1 | width | 1 |" in report
    assert "| model | target | after pruning | after fine-tune | latency depth / width |" in report
    att = ", ".join(f"{i} (1/1)" for i in depth["removed"]["attention"]) or "none"
    assert f"- micro macs0.1 `depth`: attention: {att};" in report
    assert "- micro macs0.1 `width`: attention: none; MLP: none; whole block: none" in report
    assert (out / "depth_vs_width.png").stat().st_size > 0 and (mirror / "report.md").read_text() == report
    # a run found in the mirror is never re-run: a fresh cache (with the base) reports the same, pruning nothing
    out2 = tmp_path / "out2"
    shutil.copytree(out / "base", out2 / "base")
    run_bench(monkeypatch, *TINY, "--targets", "macs:0.1", "--latency-passes", "0", "--out", out2, "--mirror", mirror)
    assert not (out2 / "work").exists() and results(out2) == rs
    assert (out2 / "report.md").read_text() == report


@pytest.mark.slow  # three ONNX exports (dynamo) take most of its ~30 s
def test_depth_vs_width_latency_target_with_a_v2_table_and_measured_latency(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None) -> None:
    from test_latency_branches import SETTING, synthetic
    from test_latency_build import FakeBackend

    from revit.config import Setting
    from revit.latency.grid import WidthGrid
    from revit.latency.profiler import BuildSettings, build_table

    axes = {"embed_dim": (32, 96), "heads": (1, 4), "qk_dim": (4, 24), "v_dim": (4, 24), "mlp_dim": (8, 384)}
    table = tmp_path / "v2.json"
    build_table(WidthGrid("micro-fake", axes, Setting(**SETTING, depth=8)),  # type: ignore[arg-type]
                FakeBackend(synthetic), table, BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, design="full"),
                progress=False)
    out = tmp_path / "out"
    run_bench(monkeypatch, *TINY, "--targets", "latency:0.5", "--table", table, "--latency-passes", "1",
              "--out", out)
    rs = results(out)
    assert set(rs) == {"micro_latency0.5_depth_s0", "micro_latency0.5_width_s0"}
    assert all(r["cost_ratio"] <= 0.5 for r in rs.values())
    doc = json.loads((out / "depth_vs_width.json").read_text())
    base_ms = doc["bases"]["micro"]["latency_ms"]
    for r in doc["results"]:
        assert r["latency_ms"] > 0 and r["latency_ratio_to_base"] == pytest.approx(r["latency_ms"] / base_ms)
    assert (out / "onnx" / "micro_base.onnx").is_file() and "latency ms (x base, measured)" in \
        (out / "report.md").read_text()


@pytest.mark.parametrize(("argv", "says"), [
    (["--targets", "latency:0.5", "--table", str(SHIPPED_V1)], "a v1 table cannot price a removal"),
    (["--targets", "macs:1.5"], "is not KIND:R"), (["--targets", "flops:0.5"], "is not KIND:R"),
    (["--models", "micro,deit"], "--models: unknown ['deit']")])
def test_depth_vs_width_refuses_what_it_cannot_compare_before_training(
        argv: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as e:
        run_bench(monkeypatch, "--out", tmp_path / "out", *argv)
    assert says in str(e.value) and not (tmp_path / "out").exists()
