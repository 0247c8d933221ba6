"""Re-price stored held-out measurements under other tables: how a table change would have scored, without timing.

A held-out run (``benchmarks/speedup_heldout*.py --out``) stores each config with its *measured* speedup over the
base; what a table predicts for it can be computed again at any time, torch-free.  Given several result files
(runs on different days, each with its own latency-pruned and generated configs) and several tables (say, a table
before and after ``revit latency smooth``), this prints each table's per-group share within 5%, median, 95th
percentile and worst over every stored row, and the configs whose error is systematic (the same sign and size in
every run that has them) - a table's shape, not the measurement's noise.

Each table is used as loaded, with its own newest calibration (the offset of a calibration moves speedups of
small and large models apart, so compare tables each calibrated on the same machine).

Usage:
    PYTHONPATH=. python benchmarks/heldout_rescore.py --table OLD.json \\
        --table latency_tables/cpu_onnxruntime_fp32_bs64_t17.json \\
        --rows benchmarks/results/speedup_heldout.json benchmarks/results/speedup_heldout_builds/micro_*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def rescore(table: Any, files: list[Path]) -> tuple[dict[str, dict[str, float]], dict[tuple[str, str], list[float]]]:
    """Per group (and ``all``): n, median, p95, max of |error|, share within 5%; and every config's errors."""
    from revit.config import ViTConfig
    from revit.latency.speedups import error_summary
    from revit.presets import resolve_config

    errors: list[tuple[str, float]] = []
    per_config: dict[tuple[str, str], list[float]] = {}
    for f in files:
        doc = json.loads(f.read_text())
        base = resolve_config(doc.get("base") or "revit_micro")
        base_s = table.predict(base).total_s
        for r in doc["rows"]:
            cfg = ViTConfig.from_dict(r["config"])
            err = base_s / table.predict(cfg).total_s / r["measured_speedup"] - 1
            errors.append((r["group"], err))
            key = (r["group"], f"{r['name']} {json.dumps(r['config']['blocks'], sort_keys=True)}")
            per_config.setdefault(key, []).append(err)
    stats = error_summary(errors)
    return stats, per_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", action="append", required=True, help="a table (repeatable)")
    ap.add_argument("--rows", nargs="+", type=Path, required=True, help="held-out result JSON files")
    ap.add_argument("--top", type=int, default=8, help="systematic configs listed per table")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args(argv)

    from revit.latency.table import LatencyTable

    out: dict[str, Any] = {"rows": [str(p) for p in a.rows], "tables": {}}
    for name in a.table:
        t = LatencyTable.load(name)
        stats, per = rescore(t, a.rows)
        print(f"{name} ({t.calibration_label[:60]}...)")
        print("  group            n  median    p95   worst  within 5%")
        for g, s in stats.items():
            print(f"  {g:15s} {s['n']:3d}  {s['median']:5.1%}  {s['p95']:5.1%}  {s['max']:5.1%}  "
                  f"{s['within_5pct']:6.0%}")
        syst = sorted(per.items(), key=lambda kv: -abs(float(np.mean(kv[1]))))[: a.top]
        print("  most systematic (mean error over the runs that have the config):")
        for (g, key), e in syst:
            print(f"    {g:15s} {key.split()[0]:22s} runs {len(e)}  mean {np.mean(e):+.1%}  "
                  f"range {min(e):+.1%}..{max(e):+.1%}")
        out["tables"][name] = {"summary": stats, "systematic": [
            {"group": g, "name": key.split()[0], "runs": len(e), "mean": float(np.mean(e))} for (g, key), e in syst]}
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
