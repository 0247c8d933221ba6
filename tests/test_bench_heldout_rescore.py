"""benchmarks/heldout_rescore.py: stored held-out measurements re-priced under a table, torch-free."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from revit.latency.table import LatencyTable
from revit.presets import revit_micro

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_rescore_recomputes_each_error_from_the_measured_speedup(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import heldout_rescore

    t = LatencyTable.load("cpu_onnxruntime_fp32_bs64_t17")
    base = revit_micro()
    cfgs = [base.with_blocks(base.blocks, embed_dim=48)]
    # the measured speedup is what the table predicts, times a known factor per row
    factors = [1.0, 1.1]
    rows = []
    for c, f in zip(cfgs * 2, factors, strict=True):
        pred = t.predict(base).total_s / t.predict(c).total_s
        rows.append({"group": "g", "name": f"x{f}", "config": c.to_dict(), "measured_speedup": pred * f})
    (tmp_path / "r.json").write_text(json.dumps({"rows": rows}))
    stats, per = heldout_rescore.rescore(t, [tmp_path / "r.json"])
    assert stats["g"]["n"] == 2 and stats["g"]["within_5pct"] == 0.5
    assert stats["g"]["max"] == pytest.approx(1 - 1 / 1.1)
    assert stats["all"]["median"] == pytest.approx((1 - 1 / 1.1) / 2)
    assert sorted(np.round(e[0], 6) for e in per.values()) == sorted([0.0, round(1 / 1.1 - 1, 6)])
    assert heldout_rescore.main(["--table", "cpu_onnxruntime_fp32_bs64_t17", "--rows", str(tmp_path / "r.json"),
                                 "--json", str(tmp_path / "o.json")]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["tables"]["cpu_onnxruntime_fp32_bs64_t17"]["summary"]
