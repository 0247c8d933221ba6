"""Predicted vs measured speedup of pruned revit_micro models on onnxruntime CPU (issue 20, part i on the CPU).

What a user does: prune ``revit_micro`` to R x the shipped table's latency (``revit prune --target-latency R
--table cpu_onnxruntime_fp32_bs64_t17``), export the dense model with ``torch.onnx`` (``revit.models.export``),
run it in onnxruntime.  The table predicts the speedup ``predict(base).total_s / predict(pruned).total_s``; this
script measures it on the whole exported graphs, the unpruned model beside the pruned ones, with the table's
protocol (batch 64, one intra-op thread, the table's clock).

Timing on a shared machine: every round times every model ``--repeats`` times, the order reversed each round
(A B C, C B A, ...: ABAB interleaving), after ``--warmup`` runs per model per round.  Reported per model: the
median and the minimum of all samples; per target: the speedup from medians (the figure), from minimums, and
the spread of the per-round speedups (the noise seen), with the load average before and after.

To say *why* a prediction is off, the parts the table sums are timed now as well, interleaved with the wholes:
every block of each model (the table's block graph), the fixed parts and the empty call.  ``parts`` is the
table's formula on fresh figures (sum of blocks less the per-call overhead, plus the fixed parts), so
``whole / parts`` tests the formula (per-block sums against the whole graph) and ``table / parts`` tests the
table's cells (build-time load, interpolation) without the formula.

Usage (about 3 minutes on 2 idle cores; the prunes are skipped when their run folders exist):
    PYTHONPATH=. python benchmarks/speedup_cpu.py --work runs/speedup-cpu --out benchmarks/results/speedup_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TABLE = "cpu_onnxruntime_fp32_bs64_t17"
MODEL = "revit_micro"


def prune(target: float, table: str, base_cost: float, out: Path, train_limit: int, seed: int) -> Path:
    """``revit prune --target-latency target`` on Fashion-MNIST; a finished run pruned against the same table
    costs (``base_cost``, the table's prediction of the unpruned model) is reused."""
    metrics = out / "metrics.json"
    if (out / "pruned.yaml").is_file() and metrics.is_file():
        done = json.loads(metrics.read_text())
        if abs(done["base"]["cost"] / base_cost - 1) < 1e-9 and done["target"]["ratio"] == target:
            return out
    cmd = [sys.executable, "-m", "revit", "prune", "--model", MODEL, "--data", "fashion-mnist",
           "--train-limit", str(train_limit), "--val-size", "200", "--test-limit", "0", "--eval-size", "0",
           "--seed", str(seed), "--threads", "1", "--target-latency", str(target), "--table", table,
           "--out", str(out), "--no-progress", "--overwrite"]
    print("+", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out


def export(cfg: Any, weights: Path | None, path: Path) -> Path:
    """The dense model of ``cfg`` (with ``weights`` when given) exported by torch.onnx, as a user deploys it."""
    from revit.models import build_model
    from revit.models.checkpoint import load_checkpoint
    from revit.models.export import export_onnx

    model = build_model(cfg)
    if weights is not None:
        load_checkpoint(model, weights)
    return export_onnx(model, path)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def interleaved(loads: dict[str, list[Any]], rounds: int, repeats: int, warmup: int) -> dict[str, list[list[float]]]:
    """Per workload, per round, ``repeats`` samples; the order of the workloads is reversed every round (ABAB)."""
    names = list(loads)
    got: dict[str, list[list[float]]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            samples: list[float] = []
            for w in loads[n]:  # a model's parts: one workload each, summed sample by sample
                w.time(warmup)
                t = w.time(repeats)
                samples = t if not samples else [a + b for a, b in zip(samples, t, strict=True)]
            got[n].append(samples)
    return got


def stats(rounds: list[list[float]]) -> dict[str, float]:
    flat = np.concatenate(rounds)
    return {"median_s": float(np.median(flat)), "min_s": float(np.min(flat)),
            "iqr_rel": float(np.subtract(*np.percentile(flat, [75, 25])) / np.median(flat))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default=TABLE, help="latency table (shipped name or path)")
    ap.add_argument("--targets", default="0.5,0.7", help="latency ratios to prune to")
    ap.add_argument("--work", type=Path, default=Path("runs/speedup-cpu"), help="prune runs and ONNX files")
    ap.add_argument("--out", type=Path, help="write the figures here (JSON)")
    ap.add_argument("--train-limit", type=int, default=2000, help="training images for each prune")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=40, help="interleaved rounds (each times every model)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per model per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per model per round")
    ap.add_argument("--no-parts", action="store_true", help="time the whole models only (no decomposition)")
    args = ap.parse_args(argv)

    from revit.config import ViTConfig
    from revit.latency.accuracy import backend_for_table
    from revit.latency.table import LatencyTable, resolve_table
    from revit.presets import get_preset

    table_path = resolve_table(args.table)
    table = LatencyTable.load(table_path)
    targets = [float(t) for t in args.targets.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    cfgs: dict[str, Any] = {"base": get_preset(MODEL)}
    files = {"base": export(cfgs["base"], None, args.work / "base.onnx")}
    for t in targets:
        run = prune(t, str(table_path), table.predict(cfgs["base"]).total_s, args.work / f"prune-{t:g}",
                    args.train_limit, args.seed)
        name = f"pruned-{t:g}"
        cfgs[name] = ViTConfig.load(run / "pruned.yaml")
        files[name] = export(cfgs[name], run / "pruned.safetensors", args.work / f"{name}.onnx")

    backend = backend_for_table(table)  # the table's own setting: onnxruntime CPU, 1 thread, its clock
    batch = table.batch_size
    loads: dict[str, list[Any]] = {n: [backend.onnx_file(str(files[n]), c, batch)] for n, c in cfgs.items()}
    if not args.no_parts:
        for n, c in cfgs.items():
            loads[f"{n}/parts"] = [backend.block(c.embed_dim, b, table.tokens, batch) for b in c.blocks] + \
                                  [backend.fixed(c.setting.fixed_parts(), c.embed_dim, batch)]
        loads["overhead"] = [backend.overhead(table.tokens, cfgs["base"].embed_dim, batch)]
    load_before = loadavg()
    t0 = time.perf_counter()
    got = interleaved(loads, args.rounds, args.repeats, args.warmup)
    seconds = time.perf_counter() - t0
    load_after = loadavg()
    for ws in loads.values():
        for w in ws:
            w.close()

    st = {n: stats(r) for n, r in got.items()}
    overhead = st["overhead"]["median_s"] if "overhead" in st else 0.0
    models: dict[str, Any] = {}
    for n, c in cfgs.items():
        p = table.predict(c)
        m: dict[str, Any] = {"config": c.to_dict(), "predicted_s": p.total_s, "predicted_blocks_s": p.blocks_s,
                             "predicted_fixed_s": p.fixed_s, "measured": st[n]}
        if f"{n}/parts" in st:  # the table's formula on fresh timings: blocks less the per-call overhead + fixed
            parts = st[f"{n}/parts"]["median_s"] - overhead * c.depth
            m["parts_now_s"] = parts
            m["whole_over_parts"] = st[n]["median_s"] / parts
            m["table_over_parts"] = p.total_s / parts
        models[n] = m
    base = models["base"]
    rows: dict[str, Any] = {}
    for t in targets:
        n = f"pruned-{t:g}"
        pm = models[n]
        per_round = [float(np.median(a) / np.median(b)) for a, b in zip(got["base"], got[n], strict=True)]
        row = {"target": t, "predicted": base["predicted_s"] / pm["predicted_s"],
               "measured": base["measured"]["median_s"] / pm["measured"]["median_s"],
               "measured_from_min": base["measured"]["min_s"] / pm["measured"]["min_s"],
               "per_round_median": float(np.median(per_round)),
               "per_round_iqr": float(np.subtract(*np.percentile(per_round, [75, 25]))),
               "per_round_min": float(np.min(per_round)), "per_round_max": float(np.max(per_round))}
        row["error"] = row["predicted"] / row["measured"] - 1
        if "parts_now_s" in pm:
            row["parts_now"] = base["parts_now_s"] / pm["parts_now_s"]
        rows[f"{t:g}"] = row
    result = {"schema": "revit/benchmark-speedup-cpu/v1", "table": table_path.name, "table_batch": batch,
              "backend": backend.info(), "clock": backend.clock_name, "rounds": args.rounds, "repeats": args.repeats,
              "warmup": args.warmup, "timing_s": round(seconds, 1), "loadavg_before": load_before,
              "loadavg_after": load_after, "overhead_now_s": overhead,
              "command": "PYTHONPATH=. python benchmarks/speedup_cpu.py " + " ".join(argv or sys.argv[1:]),
              "speedup": rows, "models": models, "goal": "|predicted / measured - 1| <= 5%",
              "met": all(abs(r["error"]) <= 0.05 for r in rows.values())}

    print(f"table {table_path.name}; onnxruntime CPU, 1 thread, clock {backend.clock_name}, batch {batch}; "
          f"{args.rounds} rounds x {args.repeats} ABAB; load {load_before} -> {load_after}")
    print(f"{'model':<12} {'predicted ms':>12} {'measured ms':>12} {'min ms':>8} {'IQR':>6} {'whole/parts':>11} "
          f"{'table/parts':>11}")
    for n, m in models.items():
        print(f"{n:<12} {m['predicted_s'] * 1e3:12.3f} {m['measured']['median_s'] * 1e3:12.3f} "
              f"{m['measured']['min_s'] * 1e3:8.3f} {m['measured']['iqr_rel']:6.1%} "
              f"{m.get('whole_over_parts', float('nan')):11.3f} {m.get('table_over_parts', float('nan')):11.3f}")
    print(f"{'target':<8} {'predicted':>9} {'measured':>9} {'from min':>9} {'rounds IQR':>10} {'parts now':>9} "
          f"{'error':>7}")
    for k, r in rows.items():
        print(f"{k:<8} {r['predicted']:9.3f} {r['measured']:9.3f} {r['measured_from_min']:9.3f} "
              f"{r['per_round_iqr']:10.3f} {r.get('parts_now', float('nan')):9.3f} {r['error']:+7.1%}")
    print(f"goal {result['goal']}: {'met' if result['met'] else 'NOT met'}")
    if args.out:
        from revit._io import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
