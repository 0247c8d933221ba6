"""Held-out speedup validation of the 197/198-token CPU table (issue 26, items 1 and 6) on DeiT-T/S-shaped configs.

The protocol of ``benchmarks/speedup_heldout.py`` on the ``deit`` preset table (onnxruntime CPU, batch 1, 198
tokens: distilled DeiT at 224 px), against the unpruned DeiT-S (``revit_deit_small_distilled_patch16_224``):
- ``random``: random per-block widths of DeiT-T/S size (EMB <= 384, heads <= 6, QK/V <= 64, MLP <= 1536, on the
  table's grid; some blocks lose their attention or MLP, as a depth-pruned config may);
- ``macs-pruned`` / ``latency-pruned``: ``revit prune --target-macs R`` / ``--target-latency R --table T`` of DeiT-T
  and DeiT-S shaped models (224 px, 10 classes, random init) for a few steps on an ImageFolder of scikit-learn's
  digits: the widths a global pruner leaves, timed with the table's 1000-class head;
- ``generated``: ``paper``, ``paper-table6``, ``less-more-less`` and ``uniform`` at several latency budgets.
Each config and the base are exported with ``torch.onnx`` and timed whole, interleaved (``revit.latency.speedups``).

Usage (run it on an idle machine):
    PYTHONPATH=. python benchmarks/speedup_heldout_deit.py --work runs/speedup-heldout-deit \
        --out benchmarks/results/speedup_heldout_deit.json --plot docs/figures/speedup_heldout_deit.png
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from speedup_heldout import costable, generated, plot  # noqa: E402

TABLE = "cpu_onnxruntime_fp32_bs1_t198"
BASE = "revit_deit_small_distilled_patch16_224"
LIMITS = {"embed_dim": 384, "heads": 6, "qk_dim": 64, "v_dim": 64, "mlp_dim": 1536}


def random_small(table: Any, n: int, seed: int) -> list[Any]:
    """DeiT-T/S-sized configs: per-block widths drawn on the table's grid below :data:`LIMITS`."""
    from revit.config import BlockDims, ViTConfig
    from revit.latency.speedups import HeldOut
    from revit.presets import resolve_config

    setting = resolve_config(BASE).setting
    grid = table.metadata["space"]["axes"]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pick = {k: [v for v in grid[k] if v <= LIMITS[k]] for k in LIMITS}
        blocks = []
        for _ in range(12):
            u = rng.random()
            heads = 0 if u < 0.1 else rng.choice(pick["heads"])
            mlp = 0 if 0.1 <= u < 0.15 else rng.choice(pick["mlp_dim"])
            qk, v = (rng.choice(pick["qk_dim"]), rng.choice(pick["v_dim"])) if heads else (0, 0)
            blocks.append(BlockDims(heads, qk, v, mlp))
        out.append(HeldOut("random", f"random{i}", ViTConfig(rng.choice(pick["embed_dim"]), blocks, setting)))
    return out


def digits_folder(root: Path) -> Path:
    """An ImageFolder of scikit-learn's digits (RGB PNGs, 10 classes), made once."""
    if (root / "9").is_dir():
        return root
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images, d.target, strict=True)):
        (root / str(y)).mkdir(parents=True, exist_ok=True)
        a = (img / 16 * 255).astype(np.uint8)
        Image.fromarray(np.stack([a] * 3, -1)).resize((32, 32)).save(root / str(y) / f"{i}.png")
    return root


def pruned(work: Path, table: str, ratios: tuple[float, ...] = (0.5, 0.7)) -> list[Any]:
    """DeiT-T/S-shaped configs a global pruner leaves (MACs and latency targets), their blocks put back on the
    base's 1000-class setting for timing."""
    from revit.config import ViTConfig
    from revit.latency.speedups import HeldOut
    from revit.presets import resolve_config

    data = digits_folder(work / "digits")
    setting = resolve_config(BASE).setting
    out = []
    for size in ("tiny", "small"):
        cfg = resolve_config(f"revit_deit_{size}_distilled_patch16_224")
        yaml = work / f"deit_{size}_10.yaml"
        ViTConfig(cfg.embed_dim, cfg.blocks, setting, num_classes=10).save(yaml)
        for kind, r in ((k, r) for r in ratios for k in ("macs", "latency")):
            run = work / f"prune-{size}-{kind}{r}"
            if not (run / "pruned.yaml").is_file():
                how = ["--target-macs", str(r)] if kind == "macs" else ["--target-latency", str(r), "--table", table]
                cmd = [sys.executable, "-m", "revit", "prune", "--model", str(yaml), "--data", str(data),
                       "--train-limit", "640", "--val-size", "64", "--test-limit", "0", "--eval-size", "0",
                       "--batch-size", "32", "--interval", "1", "--step-fraction", "0.1", "--seed", "0",
                       "--threads", "2", *how, "--out", str(run), "--no-progress", "--overwrite", "-q"]
                print("+", " ".join(cmd[2:]), flush=True)
                subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            p = ViTConfig.load(run / "pruned.yaml")
            out.append(HeldOut(f"{kind}-pruned", f"deit-{size}-{kind}{r}", ViTConfig(p.embed_dim, p.blocks, setting)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default=TABLE)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "speedup-heldout-deit")
    ap.add_argument("--random", type=int, default=10)
    ap.add_argument("--budgets", default="0.3,0.5,0.7,0.9", help="latency budgets as fractions of the base's")
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--ratios", default="0.5,0.7", help="MACs and latency targets of the DeiT-T/S prunes")
    a = ap.parse_args(argv)

    from revit.latency.accuracy import backend_for_table
    from revit.latency.speedups import HeldOut, base_drift, report, summary, time_speedups
    from revit.latency.table import LatencyTable, resolve_table
    from revit.presets import resolve_config

    t0 = time.perf_counter()
    table = LatencyTable.load(a.table)
    base = resolve_config(BASE)
    held: list[HeldOut] = random_small(table, a.random, a.seed + 11)
    held += pruned(a.work, str(resolve_table(a.table)), tuple(float(x) for x in a.ratios.split(",")))
    held += generated(table, base, [float(x) for x in a.budgets.split(",")],
                      rules=("paper", "paper-table6", "less-more-less", "uniform"), setting=base.setting)
    held = [h for h in held if costable(table, h)]
    load_before = os.getloadavg()
    rows, seconds = time_speedups(table, backend_for_table(table), base, held, passes=a.passes, seed=a.seed)
    load_after = os.getloadavg()
    stats = summary(rows)
    print(f"{len(rows)} configs, timing {seconds:.0f} s, all {time.perf_counter() - t0:.0f} s, "
          f"load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(report(rows))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"table": str(table.source), "calibration": table.calibration_label,
                                     "timing_s": seconds, "total_s": time.perf_counter() - t0,
                                     "loadavg_before": load_before, "loadavg_after": load_after,
                                     "base_drift": base_drift(rows), "passes": a.passes, "summary": stats, "base": BASE,
                                     "command": " ".join(["python benchmarks/speedup_heldout_deit.py",
                                                          *(argv or sys.argv[1:])]),
                                     "rows": [r.to_dict() for r in rows]}, indent=1) + "\n")
    if a.plot:
        plot(rows, a.plot, base="DeiT-S")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
