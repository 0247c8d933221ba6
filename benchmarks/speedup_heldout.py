"""Held-out speedup validation of a latency table on configs a user may deploy (issue 26, item 1).

Groups, none of them chosen by hand:
- ``random``: random per-block widths inside the table (``revit.latency.accuracy.random_configs``);
- ``macs-pruned``: the final configs of the committed MACs-pruned runs (``benchmarks/results/prune-quality-12k``:
  revit's criteria and Torch-Pruning's at 25% and 50% of the MACs, seed 0) and the 0.7 step of the five committed
  micro traces (``benchmarks/results/traces/micro-s*.jsonl``);
- ``latency-pruned``: ``revit prune --target-latency R --table TABLE`` from the micro base at several R
  (run here, reused when their folders exist); with ``--knapsack-etas``, also latency-aware prunes as
  ``benchmarks/prune_latency.py`` runs them (``--target-macs 0.5 --table TABLE --ranking knapsack --eta E``, seed
  0): configs short of heads or whole branches, which NViT's ranking never makes;
- ``generated``: ``paper``, ``less-more-less``, ``micro-fit`` and ``uniform`` at several latency budgets on the
  table (``revit.rules.generate``).
Each config and the unpruned base are exported with ``torch.onnx`` and timed whole with the table's protocol,
all interleaved (``revit.latency.speedups``); the error is predicted speedup / measured speedup - 1.

Usage (about 6 minutes on 2 idle cores, the latency prunes included; run it on an idle machine):
    PYTHONPATH=. python benchmarks/speedup_heldout.py --work runs/speedup-heldout \
        --out benchmarks/results/speedup_heldout.json --plot docs/figures/speedup_heldout.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TABLE = "cpu_onnxruntime_fp32_bs64_t17"
BASE_WEIGHTS = ROOT / "runs" / "micro-base" / "model.safetensors"


def macs_pruned(base: Any) -> list[Any]:
    from revit.config import ViTConfig
    from revit.latency.speedups import HeldOut
    from revit.trace import Trace

    out = []
    res = ROOT / "benchmarks" / "results" / "prune-quality-12k" / "results"
    for f in sorted(res.glob("*_s0.json")):
        d = json.loads(f.read_text())
        out.append(HeldOut("macs-pruned", f"{d['method']}@{d['ratio']}", ViTConfig.from_dict(d["config"], str(f))))
    from revit import counting

    for f in sorted((ROOT / "benchmarks" / "results" / "traces").glob("micro-s*.jsonl")):
        t = Trace.load(f)
        full = counting.macs(t.base_config)
        step = min(t.steps, key=lambda s: abs(counting.macs(s.config(t.base_config)) / full - 0.7))
        out.append(HeldOut("macs-pruned", f"{f.stem}@0.7", step.config(t.base_config)))
    return out


def latency_pruned(work: Path, ratios: list[float], seeds: list[int], train_limit: int,
                   table: str = TABLE, knapsack_etas: tuple[float, ...] = ()) -> list[Any]:
    from revit.config import ViTConfig
    from revit.latency.speedups import HeldOut

    runs = [(f"lat{r}-s{seed}", seed, ["--target-latency", str(r)]) for r in ratios for seed in seeds]
    # under the knapsack a latency target makes eta moot (its penalty is the target's cost): a MACs target, as the
    # latency-aware benchmark prunes
    runs += [(f"macs0.5-knapsack-eta{e:g}", 0, ["--target-macs", "0.5", "--ranking", "knapsack", "--eta", f"{e:g}"])
             for e in knapsack_etas]
    out = []
    for name, seed, extra in runs:
        run = work / f"prune-{name}"
        if not (run / "pruned.yaml").is_file():
            cmd = [sys.executable, "-m", "revit", "prune", "--model", "revit_micro", "--data", "fashion-mnist",
                   "--train-limit", str(train_limit), "--val-size", "200", "--test-limit", "0",
                   "--eval-size", "0", "--seed", str(seed), "--threads", "1", *extra,
                   "--table", table, "--out", str(run), "--no-progress", "--overwrite", "-q"]
            if BASE_WEIGHTS.is_file():
                cmd += ["--checkpoint", str(BASE_WEIGHTS)]
            print("+", " ".join(cmd[2:]), flush=True)
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        out.append(HeldOut("latency-pruned", name, ViTConfig.load(run / "pruned.yaml")))
    return out


def generated(table: Any, base: Any, budgets: list[float],
              rules: tuple[str, ...] = ("paper", "less-more-less", "micro-fit", "uniform"),
              setting: Any = "micro") -> list[Any]:
    """Each rule's config at each budget (a fraction of the base's predicted latency); a rule the table cannot
    cost there is said and left out."""
    from revit.errors import RevitError
    from revit.latency.speedups import HeldOut
    from revit.rules.generate import generate, latency_budget

    out = []
    base_s = table.predict(base).total_s
    for rule in rules:
        for b in budgets:
            try:
                g = generate(rule, latency_budget(b * base_s, table), setting)
            except RevitError as e:  # a rule this table cannot cost at this budget: said, not hidden
                print(f"skip {rule}@{b}: {e}", flush=True)
                continue
            out.append(HeldOut("generated", f"{rule}@{b}", g.config))
    return out


def costable(table: Any, h: Any) -> bool:
    """A config the table prices without extrapolating (a width outside it is said and left out)."""
    from revit.errors import TableRangeError

    try:
        table.predict(h.config)
    except TableRangeError as e:
        print(f"skip {h.group} {h.name}: {e}", flush=True)
        return False
    return True


def plot(rows: list[Any], path: Path, base: str = "revit_micro") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    lim = [min(min(r.measured, r.predicted) for r in rows) * 0.95, max(max(r.measured, r.predicted) for r in rows)
           * 1.05]
    ax.plot(lim, lim, "k-", lw=0.8)
    ax.fill_between(lim, [x * 0.95 for x in lim], [x * 1.05 for x in lim], color="0.85", label="within 5%")
    for g, m in zip(("random", "macs-pruned", "latency-pruned", "generated"), "o^sD", strict=True):
        pts = [r for r in rows if r.group == g]
        if pts:
            ax.scatter([r.measured for r in pts], [r.predicted for r in pts], marker=m, s=22, label=g)
    ax.set_xlabel(f"measured speedup over {base} (exported, onnxruntime)")
    ax.set_ylabel("predicted speedup (table)")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default=TABLE)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "speedup-heldout")
    ap.add_argument("--random", type=int, default=10, help="random configs")
    ap.add_argument("--lat-ratios", default="0.4,0.55,0.7")
    ap.add_argument("--lat-seeds", default="0,1")
    ap.add_argument("--knapsack-etas", default="", help="also latency prunes ranked by the knapsack at these etas "
                                                        "(the middle ratio, seed 0), e.g. 16,256")
    ap.add_argument("--budgets", default="0.4,0.55,0.7", help="latency budgets as fractions of the base's")
    ap.add_argument("--train-limit", type=int, default=3000, help="images of the latency prunes")
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plot", type=Path)
    a = ap.parse_args(argv)

    from revit.latency.accuracy import backend_for_table, random_configs
    from revit.latency.speedups import HeldOut, base_drift, report, summary, time_speedups
    from revit.latency.table import LatencyTable
    from revit.presets import resolve_config

    table = LatencyTable.load(a.table)
    base = resolve_config("revit_micro")
    held = [HeldOut("random", f"random{i}", c) for i, c in enumerate(random_configs(table, a.random, seed=a.seed + 11))]
    held += macs_pruned(base)
    held += latency_pruned(a.work, [float(x) for x in a.lat_ratios.split(",")],
                           [int(x) for x in a.lat_seeds.split(",")], a.train_limit, a.table,
                           tuple(float(x) for x in a.knapsack_etas.split(",") if x))
    held += generated(table, base, [float(x) for x in a.budgets.split(",")])
    held = [h for h in held if costable(table, h)]
    load_before = os.getloadavg()
    rows, seconds = time_speedups(table, backend_for_table(table), base, held, passes=a.passes, seed=a.seed)
    load_after = os.getloadavg()
    stats = summary(rows)
    print(f"{len(rows)} configs, timing {seconds:.0f} s, load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(report(rows))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"table": str(table.source), "calibration": table.calibration_label,
                                     "timing_s": seconds, "loadavg_before": load_before, "loadavg_after": load_after,
                                     "base_drift": base_drift(rows),
                                     "passes": a.passes, "summary": stats,
                                     "command": " ".join(["python benchmarks/speedup_heldout.py",
                                                          *(argv or sys.argv[1:])]),
                                     "rows": [r.to_dict() for r in rows]}, indent=1) + "\n")
    if a.plot:
        plot(rows, a.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
