"""What each half of NViT's distillation adds (issue 29): prune revit_micro and fine-tune it under four arms.

Everything runs through revit's own commands (``revit.cli.main.main``, in this process):

1. the base: ``revit train revit_micro --data fashion-mnist --train-limit N --epochs E`` (as ``runs/micro-base``
   in the Makefile; ``--base RUN`` reuses a finished one);
2. the CNN teacher: ``revit train resnet10t`` (a timm CNN, ``timm.create_model``, random init) on the same images;
3. per MACs ratio (0.5 and 0.25 of the base) and seed, for each arm, ``revit prune --target-macs R`` then
   ``revit train pruned.yaml --init pruned.safetensors`` (the fine-tune), with
   - ``none``: cross-entropy only (``--kl-weight 0`` in the prune, no teacher in the fine-tune);
   - ``unpruned``: KL to the unpruned model (the prune's default; ``--self-teacher PRUNE_RUN`` in the fine-tune);
   - ``cnn``: the CNN teacher only (``--kl-weight 0 --teacher CNN`` in the prune, ``--teacher CNN`` after);
   - ``both``: NViT's whole objective (both, in both stages).
   Every arm has the same pruning schedule, the same fine-tune epochs (so the same optimizer steps) and the same
   temperature (3) and weights (1).

Each finished (arm, ratio, seed) keeps a small JSON under ``OUT/results`` (and ``--mirror DIR/results``); a
re-run skips them, and a killed command resumes (``--resume``).  The table gives the test top-1 after pruning
and after the fine-tune (mean +- std over seeds) and, per arm, its difference to ``both`` with a 95% Welch
interval; a plot (``ablation.png``) and ``ablation.json`` go beside it.

Full ablation (12k images, 3 seeds, 24 prune + fine-tune pairs; not yet timed at this scale):
    python benchmarks/distill_ablation.py --out runs/bench-distill-ablation \
        --mirror benchmarks/results/distill-ablation
Smoke test (under 2 minutes): python benchmarks/distill_ablation.py --quick --out /tmp/distill-quick
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prune_quality import _ms, log, write_json  # noqa: E402 - benchmarks/ on the path first

ARMS = ("none", "unpruned", "cnn", "both")
REF = "both"
# settings that change results: a cache folder holds one combination only
RESULT_KEYS = ("train_limit", "val_size", "test_limit", "base_epochs", "teacher", "teacher_epochs", "prune_epochs",
               "finetune_epochs", "batch_size", "temperature", "base")
QUICK = {"train_limit": 320, "val_size": 64, "test_limit": 200, "base_epochs": 1, "teacher": "test_resnet",
         "teacher_epochs": 1, "prune_epochs": 0.5, "finetune_epochs": 1, "seeds": "0,1", "ratios": "0.5",
         "batch_size": 32, "threads": 1}


def revit(*argv: Any) -> None:
    """One revit command in this process; a failure stops the script with its exit code."""
    from revit.cli.main import main

    code = main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"revit {' '.join(map(str, argv))} failed (exit {code})")


def finished(folder: Path) -> bool:
    """Whether ``folder`` holds a finished revit run (its marker says so)."""
    from revit.run_folders import read_marker

    m = read_marker(folder) if folder.is_dir() else None
    return m is not None and m.finished


def run_to_end(folder: Path, *argv: Any) -> dict[str, Any]:
    """``revit ARGV --out folder`` unless it finished already (resuming a killed one); its metrics.json."""
    if not finished(folder):
        revit(*argv, "--out", folder, *(["--resume"] if folder.exists() else []))
    return dict(json.loads((folder / "metrics.json").read_text()))


def data_args(a: argparse.Namespace, seed: int) -> list[Any]:
    return ["--data", "fashion-mnist", "--train-limit", a.train_limit, "--val-size", a.val_size,
            "--test-limit", a.test_limit, "--batch-size", a.batch_size, "--seed", seed, "--threads", a.threads,
            "--no-progress"]


def prepare(a: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """The base run folder and the CNN teacher's weights (trained here unless found finished)."""
    base = Path(a.base) if a.base else out / "base"
    if not a.base:
        run_to_end(base, "train", "revit_micro", *data_args(a, 0), "--epochs", a.base_epochs)
    elif not finished(base):
        raise SystemExit(f"--base {base}: not a finished revit train run")
    cnn = out / "cnn-teacher"
    m = run_to_end(cnn, "train", a.teacher, *data_args(a, 0), "--epochs", a.teacher_epochs)
    b = json.loads((base / "metrics.json").read_text())
    log(f"CNN teacher {a.teacher}: test top-1 {m['test_acc']:.4f}; base revit_micro {b['test_acc']:.4f}")
    return base, cnn / "model.safetensors"


def run_arm(arm: str, ratio: float, seed: int, a: argparse.Namespace, out: Path, base: Path,
            cnn: Path) -> dict[str, Any]:
    """Prune and fine-tune one (arm, ratio, seed); its result JSON (cached)."""
    key = f"{arm}_r{ratio:g}_s{seed}"
    final = out / "results" / f"{key}.json"
    if final.is_file():
        return dict(json.loads(final.read_text()))
    t0 = time.perf_counter()
    work = out / "work" / key
    teacher = ["--teacher", a.teacher, "--teacher-weights", cnn] if arm in ("cnn", "both") else []
    kl = ["--kl-weight", "0"] if arm in ("none", "cnn") else []
    pm = run_to_end(work / "prune", "prune", "--model", "revit_micro", "--checkpoint", base / "model.safetensors",
                    *data_args(a, seed), "--target-macs", ratio, "--epochs", a.prune_epochs, "--temperature",
                    a.temperature, "--eval-size", 0, *kl, *teacher)
    self_teacher = ["--self-teacher", work / "prune"] if arm in ("unpruned", "both") else []
    fm = run_to_end(work / "ft", "train", work / "prune" / "pruned.yaml", "--init", work / "prune" /
                    "pruned.safetensors", *data_args(a, seed), "--epochs", a.finetune_epochs, "--temperature",
                    a.temperature, *teacher, *self_teacher)
    steps = sum(r["steps"] for r in (json.loads(x) for x in (work / "ft" / "log.jsonl").read_text().splitlines()))
    result = {"arm": arm, "ratio": ratio, "seed": seed, "macs_ratio": pm["macs_ratio"],
              "top1_after_pruning": pm.get("test_accuracy"), "top1_after_finetune": fm["test_acc"],
              "prune_batches": pm["batches"], "finetune_steps": steps, "teachers_prune": pm.get("teachers", []),
              "teachers_finetune": fm.get("teachers", []), "seconds": time.perf_counter() - t0}
    write_json(final, result)
    if a.mirror:
        write_json(Path(a.mirror) / "results" / final.name, result)
    return result


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per ratio and arm: mean, std, n of each stage's top-1, and the Welch difference to ``both``."""
    from revit.search.results import welch

    out: dict[str, Any] = {}
    for ratio in sorted({r["ratio"] for r in results}, reverse=True):
        rows = {}
        for arm in ARMS:
            rs = [r for r in results if r["ratio"] == ratio and r["arm"] == arm]
            if not rs:
                continue
            row: dict[str, Any] = {"n": len(rs), "macs_ratio": statistics.fmean(r["macs_ratio"] for r in rs)}
            for stage in ("after_pruning", "after_finetune"):
                xs = [r[f"top1_{stage}"] for r in rs if r.get(f"top1_{stage}") is not None]
                ref = [r[f"top1_{stage}"] for r in results if r["ratio"] == ratio and r["arm"] == REF
                       and r.get(f"top1_{stage}") is not None]
                d, lo, hi, df, p = welch(xs, ref) if xs and ref else (math.nan,) * 5
                row[stage] = {"values": xs, "mean": statistics.fmean(xs) if xs else None,
                              "std": statistics.stdev(xs) if len(xs) > 1 else None,
                              "minus_both": None if math.isnan(d) else d,
                              "interval95": None if math.isnan(lo) else [lo, hi], "p": None if math.isnan(p) else p}
            rows[arm] = row
        out[f"{ratio:g}"] = rows
    return out


def table(summary: dict[str, Any]) -> str:
    """Markdown: top-1 (%) after pruning and after the fine-tune, and each arm minus ``both`` (points, 95% CI)."""
    lines = ["| MACs ratio | arm | seeds | top-1 after pruning | top-1 after fine-tune | minus `both` (95% Welch) |",
             "|---|---|---|---|---|---|"]
    for ratio, rows in summary.items():
        for arm, row in rows.items():
            ft = row["after_finetune"]
            diff = "-" if arm == REF or ft["minus_both"] is None else (
                f"{100 * ft['minus_both']:+.2f}" + (f" [{100 * ft['interval95'][0]:+.2f}, "
                                                    f"{100 * ft['interval95'][1]:+.2f}]" if ft["interval95"] else ""))
            lines.append(f"| {ratio} ({row['macs_ratio']:.3f}) | {arm} | {row['n']} | "
                         f"{_ms(row['after_pruning']['values'], digits=2)} | {_ms(ft['values'], digits=2)} | {diff} |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Top-1 after the fine-tune per arm (mean, std bars, every seed as a dot), one panel per MACs ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(4.5 * len(summary), 3.6), squeeze=False)
    for ax, (ratio, rows) in zip(axes[0], summary.items(), strict=True):
        arms = list(rows)
        for i, arm in enumerate(arms):
            ft = rows[arm]["after_finetune"]
            ax.bar(i, 100 * ft["mean"], yerr=100 * (ft["std"] or 0.0), color="C0" if arm != REF else "C3",
                   alpha=0.6, capsize=4)
            ax.plot([i] * len(ft["values"]), [100 * v for v in ft["values"]], "k.", ms=5)
        lo = min(100 * v for r in rows.values() for v in r["after_finetune"]["values"])
        hi = max(100 * v for r in rows.values() for v in r["after_finetune"]["values"])
        ax.set_ylim(lo - max(1.0, 0.5 * (hi - lo)), hi + max(0.5, 0.2 * (hi - lo)))
        ax.set_xticks(range(len(arms)), arms)
        ax.set_title(f"{ratio} x base MACs")
        ax.set_ylabel("test top-1 after fine-tune (%)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-distill-ablation", help="cache folder (runs, result JSON)")
    ap.add_argument("--mirror", help="also keep the small results here (e.g. benchmarks/results/distill-ablation); "
                                     "runs found there are not re-run")
    ap.add_argument("--base", help="reuse this finished `revit train revit_micro` run (e.g. runs/micro-base)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ratios", default="0.5,0.25", help="MACs targets as fractions of the base")
    ap.add_argument("--train-limit", type=int, default=12000)
    ap.add_argument("--val-size", type=int, default=2000)
    ap.add_argument("--test-limit", type=int, default=10000)
    ap.add_argument("--base-epochs", type=int, default=3)
    ap.add_argument("--teacher", default="resnet10t", help="timm CNN teacher (trained here by `revit train`)")
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--prune-epochs", type=float, default=1.0)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a tiny smoke setting (320 images, 2 seeds, ratio 0.5, "
                                                         "test_resnet teacher): under 2 minutes")
    a = ap.parse_args()
    if a.quick:
        for k, v in QUICK.items():
            setattr(a, k, v)
    return a


def main() -> None:
    """Run every (seed, ratio, arm) not cached yet, then print and write the table, the JSON and the plot."""
    a = parse()
    t0 = time.perf_counter()
    out, mirror = Path(a.out), Path(a.mirror) if a.mirror else None
    settings = {k: getattr(a, k) for k in RESULT_KEYS}
    for folder in (out, mirror):
        sp = folder / "settings.json" if folder else None
        if sp is not None and sp.is_file() and json.loads(sp.read_text()) != settings:
            raise SystemExit(f"{folder} caches results of other settings; use another --out / --mirror")
        if sp is not None:
            write_json(sp, settings)
    if mirror is not None:  # results committed in the mirror count as done
        for f in sorted((mirror / "results").glob("*.json")):
            if not (out / "results" / f.name).is_file():
                write_json(out / "results" / f.name, json.loads(f.read_text()))
    log(f"settings {json.dumps(settings)}; seeds {a.seeds}, ratios {a.ratios}")
    base, cnn = prepare(a, out)
    results = []
    for seed in (int(s) for s in a.seeds.split(",")):  # seed-major: a partial run covers every arm
        for ratio in (float(r) for r in a.ratios.split(",")):
            for arm in ARMS:
                r = run_arm(arm, ratio, seed, a, out, base, cnn)
                results.append(r)
                log(f"{arm} r={ratio:g} seed {seed}: MACs {r['macs_ratio']:.3f}, top-1 after pruning "
                    f"{r['top1_after_pruning']:.4f}, after fine-tune {r['top1_after_finetune']:.4f}")
    summary = summarize(results)
    text = f"settings: {json.dumps(settings)}\n\n{table(summary)}\n"
    for folder in (out, mirror):
        if folder is not None:
            write_json(folder / "ablation.json", {"settings": settings, "summary": summary, "results": results})
            (folder / "ablation.md").write_text(text)
            plot(summary, folder / "ablation.png")
    print(text, flush=True)
    log(f"done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
