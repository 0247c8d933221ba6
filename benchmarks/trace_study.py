"""Trace study (issue 13 item 4): train bases, prune each with several seeds, fit less-more-less with
bootstrap intervals.  Resumable: a step whose output exists is skipped.  One torch thread per run.

    OMP_NUM_THREADS=1 python benchmarks/trace_study.py [--bases micro,micro12] [--seeds 0,1,2] [--only train|prune|fit]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASES = {"micro": "revit_micro", "micro12": "benchmarks/configs/micro12.yaml",
         "micro_p4": "benchmarks/configs/micro_p4.yaml"}
DATA = ["--data", "fashion-mnist", "--train-limit", "12000", "--val-size", "2000", "--test-limit", "2000",
        "--threads", "1"]
OUT = Path("runs/traces")
TRACES = Path("benchmarks/results/traces")
FIGS = Path("docs/figures")


def _revit(*args: str, stdout: Path | None = None) -> None:
    """Run ``revit ARGS`` in a child process with one thread (stdout to a file if given); fail loudly."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "revit", *args]
    print("$ revit " + " ".join(args), flush=True)
    t0 = time.time()
    if stdout is None:
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    else:
        with open(ROOT / stdout, "w") as f:
            subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=f)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def train(base: str) -> None:
    """Train the base once (3 epochs), skipped when its weights exist."""
    out = OUT / f"{base}-base"
    if not (ROOT / out / "model.safetensors").exists():
        _revit("train", BASES[base], *DATA, "--epochs", "3", "--seed", "0", "--out", str(out))


def prune(base: str, seed: int) -> None:
    """Prune the base to 0.5 MACs with seed ``seed`` and copy its trace and plots into the repository."""
    out = OUT / f"{base}-s{seed}"
    if not (ROOT / out / "metrics.json").exists():
        _revit("prune", "--model", BASES[base], "--checkpoint", str(OUT / f"{base}-base" / "model.safetensors"),
               *DATA, "--target-macs", "0.5", "--epochs", "1", "--seed", str(seed), "--out", str(out))
    (ROOT / TRACES).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / out / "trace.jsonl", ROOT / TRACES / f"{base}-s{seed}.jsonl")
    shutil.copyfile(ROOT / out / "metrics.json", ROOT / TRACES / f"{base}-s{seed}.metrics.json")
    for png in sorted((ROOT / out / "plots").glob("*.png")):
        if seed == 0:
            shutil.copyfile(png, ROOT / FIGS / f"traces_{base}_s{seed}_{png.name}")


def fit(base: str, seeds: list[int], n_boot: int) -> None:
    """Fit less-more-less to the base's traces at 0.5 MACs with bootstrap intervals."""
    traces = [str(TRACES / f"{base}-s{s}.jsonl") for s in seeds]
    _revit("rules", "fit", *traces, "--family", "less-more-less", "--at-ratio", "0.5", "--bootstrap",
           str(n_boot), "--seed", "0", "--name", f"{base}-traces-fit",
           "--out", str(TRACES / f"{base}-fit.yaml"), "--plot", str(FIGS / f"traces_fit_{base}.png"), "--json",
           stdout=TRACES / f"{base}-fit.json")


def report(bases: list[str]) -> None:
    """Markdown tables from the fit reports: parameters with intervals, and the region contrasts per kind."""
    import json

    reps = {b: json.loads((ROOT / TRACES / f"{b}-fit.json").read_text()) for b in bases}
    print("| parameter | " + " | ".join(bases) + " |")
    print("|---|" + "---|" * len(bases))
    for k in reps[bases[0]]["rule"]["params"]:
        cells = []
        for b in bases:
            v = reps[b]["rule"]["params"][k]
            lo, hi = reps[b]["bootstrap"]["intervals"][k]
            bound = " (bound)" if k in reps[b]["bootstrap"]["at_bound"] else ""
            cells.append(f"{v:.4g} [{lo:.4g}, {hi:.4g}]{bound}")
        print(f"| {k} | " + " | ".join(cells) + " |")
    print()
    print("| base | kind | R^2 | first / middle / last | middle - wider end [95%] | verdict | first - last [95%] |")
    print("|---|---|---|---|---|---|---|")
    for b in bases:
        nm = reps[b]["bootstrap"]["non_monotone"]["kinds"]
        for k, c in nm.items():
            r2 = reps[b]["r2"][k]
            lo, hi = c["interval"]
            flo, fhi = c["first_minus_last_interval"]
            print(f"| {b} | {k} | {'n/a' if r2 is None else f'{r2:.2f}'} | {c['first']:.2f} / {c['middle']:.2f} / "
                  f"{c['last']:.2f} | {c['diff'] + 0:+.3f} [{lo + 0:+.3f}, {hi + 0:+.3f}] | {c['verdict']} | "
                  f"{c['first_minus_last'] + 0:+.3f} [{flo + 0:+.3f}, {fhi + 0:+.3f}] |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bases", default="micro,micro12")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--only", choices=("train", "prune", "fit", "report"))
    a = ap.parse_args()
    bases = a.bases.split(",")
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.only == "report":
        report(bases)
        return 0
    for b in bases:
        if a.only in (None, "train"):
            train(b)
        if a.only in (None, "prune"):
            for s in seeds:
                prune(b, s)
        if a.only in (None, "fit"):
            fit(b, seeds, a.bootstrap)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
