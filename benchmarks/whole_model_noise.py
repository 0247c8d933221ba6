"""What a whole-model timing carries besides the model: a session's own speed, and the reference block's bias.

``sessions``: each named config of a held-out result (and the base) opened as ``--copies`` onnxruntime sessions,
timed in interleaved passes as one held-out run times them; each session's median against the mean of its
model's, and the speedup each session would report. One session per model (as held-out runs, validations and
calibrations timed until 2026-12-07) freezes that session's speed into every pass.

``reference``: the calibration's models (``revit latency calibrate``'s choice) timed with the reference block
around each; each model's measured/predicted ratio raw and divided by the reference. A reference that runs
faster after a small model than after a large one makes small models look dearer than raw seconds say.

Usage (idle machine):
    PYTHONPATH=. python benchmarks/whole_model_noise.py sessions --names tp-hessian@0.5,uniform@0.5,hessian@0.5
    PYTHONPATH=. python benchmarks/whole_model_noise.py reference
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

TABLE = "latency_tables/cpu_onnxruntime_fp32_bs64_t17.json"
ROWS = "benchmarks/results/speedup_heldout.json"


def sessions(table_path: str, rows_path: str, names: list[str], copies: int, passes: int) -> dict[str, object]:
    """Every model opened ``copies`` times, timed interleaved: per-session medians and speedups."""
    from revit.config import ViTConfig
    from revit.latency.accuracy import backend_for_table, export_for_timing
    from revit.latency.table import LatencyTable
    from revit.latency.timing import shuffled_passes
    from revit.presets import resolve_config

    t = LatencyTable.load(table_path)
    be = backend_for_table(t)
    rows = {r["name"]: r for r in json.loads(Path(rows_path).read_text())["rows"]}
    cfgs = {"base": resolve_config("revit_micro"), **{n: ViTConfig.from_dict(rows[n]["config"]) for n in names}}
    with tempfile.TemporaryDirectory() as tmp:
        loads = {}
        for n, c in cfgs.items():
            path = export_for_timing(be, c, t.batch_size, tmp)
            for k in range(copies):
                loads[(n, k)] = be.onnx_file(path, c, t.batch_size)
        samples: dict[tuple[str, int], list[float]] = {key: [] for key in loads}
        for key in shuffled_passes(list(loads), passes, 0):
            loads[key].time(2)
            samples[key] += loads[key].time(5)
        for w in loads.values():
            w.close()
    med = {key: float(np.median(v)) for key, v in samples.items()}
    base = float(np.mean([med[("base", k)] for k in range(copies)]))
    out: dict[str, object] = {}
    for n in cfgs:
        m = np.array([med[(n, k)] for k in range(copies)])
        sp = [base / x for x in m] if n != "base" else []
        out[n] = {"session_over_mean": (m / m.mean()).round(4).tolist(), "sd": float(m.std() / m.mean()),
                  "speedup_per_session": np.round(sp, 4).tolist()}
        print(f"{n:20s} sessions / their mean {np.round(m / m.mean(), 3)} (sd {m.std() / m.mean():.2%})"
              + (f"; speedup per session {np.round(sp, 3)}" if sp else ""))
    return out


def reference(table_path: str, models: int, passes: int) -> dict[str, object]:
    """The calibration's models: measured/predicted, raw and divided by the reference timed around each."""
    from revit.latency.accuracy import backend_for_table, validate
    from revit.latency.calibration import calibration_configs
    from revit.latency.table import LatencyTable

    raw = LatencyTable.load(table_path, calibrated=False)
    cfgs = calibration_configs(raw, models, 0)
    r = validate(raw, backend_for_table(raw), len(cfgs), seed=0, noise_k=0, passes=passes, configs=cfgs,
                 progress=False)
    out = []
    for c, p, m, rm in zip(cfgs, r.predicted, r.measured, r.raw_measured, strict=True):
        out.append({"embed_dim": c.embed_dim, "predicted_s": p, "normalised_ratio": m / p, "raw_ratio": rm / p})
        print(f"EMB {c.embed_dim:3d} table {p * 1e3:7.3f} ms: measured / table, divided by the reference x{m / p:.3f}, "
              f"raw x{rm / p:.3f}")
    return {"models": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("sessions", "reference"))
    ap.add_argument("--table", default=TABLE)
    ap.add_argument("--rows", default=ROWS, help="a held-out result JSON (sessions: the configs named)")
    ap.add_argument("--names", default="tp-hessian@0.5,uniform@0.5,tp-taylor@0.25,hessian@0.5")
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--models", type=int, default=6)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    res = (sessions(a.table, a.rows, a.names.split(","), a.copies, a.passes) if a.what == "sessions"
           else reference(a.table, a.models, a.passes))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
