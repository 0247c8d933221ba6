"""Depth vs width (issue 30, item 4): prune with branch and block removals allowed, or widths only, at equal steps.

Everything runs through revit's own commands (``revit.cli.main.main``, in this process), per model family
(``micro``: ``revit_micro``, 8 blocks; ``micro12``: ``benchmarks/configs/micro12.yaml``, the same with 12 blocks):

1. the base: ``revit train MODEL --data fashion-mnist`` once per family (seed 0), cached;
2. per target (``macs:0.25``, ``macs:0.5`` of the base MACs, ``latency:0.5`` of the base latency predicted by a
   v2 table), seed and arm, ``revit prune --target-... R`` then ``revit train pruned.yaml --init
   pruned.safetensors --self-teacher PRUNE_RUN`` (the fine-tune), with
   - ``depth``: the default, a branch (attention or MLP) or a whole block may go;
   - ``width``: ``--keep-depth``, widths only.
   Both arms have the same pruning schedule (``--prune-epochs``, ``--prune-steps``) and the same fine-tune epochs.
3. at the end, every model of one family (its base too) is exported with revit's ONNX export
   (``revit.models.export.export_onnx``) and timed interleaved, ``--latency-passes`` passes in a fresh random order
   each (``revit.latency.timing.shuffled_passes``), onnxruntime CPU, 1 thread, thread clock, batch 64, median.

The latency target needs a v2 table (one that prices a removal): ``--table T`` (the shipped micro table is v2 since
2026-12-07: ``--table latency_tables/cpu_onnxruntime_fp32_bs64_t17.json``), or one built once into ``OUT/table/`` by
``revit latency build --preset micro`` (its build time is recorded).

Each finished (model, target, arm, seed) keeps a small JSON under ``OUT/results`` (and ``--mirror DIR/results``); a
re-run skips them, and a killed command resumes (``--resume``).  ``report.md`` gives per (model, target) both arms
(mean +- sd over seeds), depth - width with a 95% Welch interval, the measured latency ratio to the base and which
blocks lost their attention, MLP or the whole block (counts over seeds); ``depth_vs_width.png`` plots top-1 against
measured latency.

Full scale (2 models x 3 targets x 2 arms x 3 seeds = 36 prune + fine-tune pairs; train with ``--latency-passes 0``
while other work runs, then time on an idle machine with the same command and ``--latency-passes 10``):
    python benchmarks/depth_vs_width.py --out runs/bench-depth-vs-width --mirror benchmarks/results/depth-vs-width \
        --table latency_tables/cpu_onnxruntime_fp32_bs64_t17.json --figure docs/figures/depth_vs_width.png
Smoke (seconds): python benchmarks/depth_vs_width.py --out /tmp/dvw --models micro --targets macs:0.5 --seeds 0 \
        --train-limit 256 --test-limit 128 --base-epochs 1 --prune-epochs 1 --epochs 1 --latency-passes 1
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill_ablation import revit, run_to_end  # noqa: E402 - benchmarks/ on the path first
from prune_quality import _ms, log, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS = {"micro": "revit_micro", "micro12": str(HERE / "configs" / "micro12.yaml")}
ARMS = ("depth", "width")
KINDS = ("macs", "latency")
LAT_BATCH, LAT_WARMUP, LAT_REPEATS = 64, 2, 5
# settings that change results: a cache folder holds one combination only
RESULT_KEYS = ("data", "train_limit", "val_size", "test_limit", "base_epochs", "prune_epochs", "prune_steps",
               "epochs", "batch_size", "table")


def parse_targets(text: str) -> list[tuple[str, float]]:
    """``macs:0.25,latency:0.5`` -> [("macs", 0.25), ("latency", 0.5)]; a bad entry stops the script in one line."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        kind, _, r = item.partition(":")
        try:
            ratio = float(r)
        except ValueError:
            ratio = math.nan
        if kind not in KINDS or not 0 < ratio < 1:
            raise SystemExit(f"--targets: {item!r} is not KIND:R with KIND in {KINDS} and 0 < R < 1")
        out.append((kind, ratio))
    return out


def tname(kind: str, ratio: float) -> str:
    return f"{kind}{ratio:g}"


def data_args(a: argparse.Namespace, seed: int) -> list[Any]:
    lim = ["--test-limit", a.test_limit] if a.test_limit else []
    return ["--data", a.data, "--train-limit", a.train_limit, "--val-size", a.val_size, *lim, "--batch-size",
            a.batch_size, "--seed", seed, "--threads", a.threads, "--no-progress"]


def get_table(a: argparse.Namespace, out: Path, mirror: Path | None) -> str:
    """The v2 table for latency targets: ``--table``, or ``revit latency build --preset micro`` once into the cache
    (resumed after a kill), its build time kept in ``table/build.json`` (and the mirror)."""
    from revit.latency.profiler import journal_path

    if a.table:
        return str(a.table)
    path, info = out / "table" / "micro_v2.json", out / "table" / "build.json"
    if not info.is_file():
        t0 = time.perf_counter()
        found = path.is_file()  # built, then killed before its build time was written: the time is unknown
        resume = ["--resume"] if not found and journal_path(path).is_file() else []
        if not found:
            revit("latency", "build", "--preset", "micro", "--backend", "onnxruntime", "--out", path,
                  "--no-progress", *resume)
        write_json(info, {"command": "revit latency build --preset micro --backend onnxruntime", "table": str(path),
                          "seconds": None if found else time.perf_counter() - t0, "resumed": bool(resume)})
    built = json.loads(info.read_text())
    if mirror is not None:
        write_json(mirror / "table_build.json", built)
    secs = "an unknown time" if built["seconds"] is None else f"{built['seconds']:.0f} s"
    log(f"table {path}: built in {secs}")
    return str(path)


def check_table(table: str) -> None:
    """Stop in one line unless ``table`` is a v2 latency table (a v1 one cannot price a removal)."""
    from revit.errors import RevitError
    from revit.latency.table import LatencyTable

    try:
        v2 = LatencyTable.load(table).prices_absent_branches
    except RevitError as e:
        raise SystemExit(f"--table: {e}") from None
    if not v2:
        raise SystemExit(f"--table {table}: a v1 table cannot price a removal (both arms would prune widths only); "
                         "rebuild it with `revit latency build`")


def get_base(model: str, a: argparse.Namespace, out: Path) -> Path:
    """The family's base run folder: ``revit train MODEL`` once (seed 0), cached."""
    base = out / "base" / model
    m = run_to_end(base, "train", MODELS[model], *data_args(a, 0), "--epochs", a.base_epochs)
    log(f"base {model}: test top-1 {m['test_acc']:.4f}")
    return base


def removals(prune_run: Path) -> dict[str, list[int]]:
    """The base's block indices that lost their attention, their MLP or the whole block (the trace's last step)."""
    from revit.trace import Trace

    trace = Trace.load(prune_run / "trace.jsonl")
    return trace.steps[-1].removed_parts(trace.base_config)


def run_arm(model: str, target: tuple[str, float], arm: str, seed: int, a: argparse.Namespace, out: Path,
            base: Path, table: str | None) -> dict[str, Any]:
    """Prune and fine-tune one (model, target, arm, seed); its result JSON (cached)."""
    from revit import counting
    from revit.config import ViTConfig

    kind, ratio = target
    key = f"{model}_{tname(kind, ratio)}_{arm}_s{seed}"
    final = out / "results" / f"{key}.json"
    if final.is_file():
        return dict(json.loads(final.read_text()))
    t0 = time.perf_counter()
    work = out / "work" / key
    how = ["--table", table] if kind == "latency" else []
    keep = ["--keep-depth"] if arm == "width" else []
    pm = run_to_end(work / "prune", "prune", "--model", MODELS[model], "--checkpoint", base / "model.safetensors",
                    *data_args(a, seed), f"--target-{kind}", ratio, *how, "--epochs", a.prune_epochs,
                    "--prune-steps", a.prune_steps, "--eval-size", 0, *keep)
    fm = run_to_end(work / "ft", "train", work / "prune" / "pruned.yaml", "--init", work / "prune" /
                    "pruned.safetensors", *data_args(a, seed), "--epochs", a.epochs, "--self-teacher", work / "prune")
    steps = sum(r["steps"] for r in (json.loads(x) for x in (work / "ft" / "log.jsonl").read_text().splitlines()))
    cfg = ViTConfig.load(work / "prune" / "pruned.yaml")
    result = {"model": model, "target": tname(kind, ratio), "kind": kind, "ratio": ratio, "arm": arm, "seed": seed,
              "macs": counting.macs(cfg), "macs_ratio": pm["macs_ratio"], "cost_ratio": pm["cost_ratio"],
              "params": counting.params(cfg), "depth": cfg.depth, "removed": removals(work / "prune"),
              "top1_after_pruning": pm.get("test_accuracy"), "top1_after_finetune": fm["test_acc"],
              "prune_batches": pm["batches"], "prune_steps": pm["steps"], "finetune_steps": steps,
              "config": cfg.to_dict(), "seconds": time.perf_counter() - t0}
    write_json(final, result)
    if a.mirror:
        write_json(Path(a.mirror) / "results" / final.name, result)
    return result


def export(cfg: Any, weights: Path, path: Path) -> Path:
    """The dense model exported with revit's ONNX export (cached); its trained weights when they are here (a result
    taken from the mirror has none: the same graph with fresh weights times the same)."""
    import torch

    from revit.models import build_model
    from revit.models.export import export_onnx

    if not path.is_file():
        model = build_model(cfg, checkpoint=weights if weights.is_file() else None).eval()
        export_onnx(model, path, torch.randn(LAT_BATCH, cfg.in_chans, cfg.img_size, cfg.img_size))
    return path


def time_family(model: str, results: list[dict[str, Any]], out: Path, passes: int) -> float:
    """Export every model of one family and its base, time them interleaved; sets ``latency_ms`` and
    ``latency_ratio_to_base`` in place and returns the base's seconds per batch."""
    import numpy as np

    from revit.config import ViTConfig
    from revit.latency.backends.ort import OrtBackend
    from revit.latency.timing import shuffled_passes
    from revit.presets import resolve_config

    mine = [r for r in results if r["model"] == model]
    base_dir = out / "base" / model
    cfgs = [resolve_config(MODELS[model])]
    cfgs += [ViTConfig.from_dict(r["config"]) for r in mine]
    keys = ["base"] + [f"{r['model']}_{r['target']}_{r['arm']}_s{r['seed']}" for r in mine]
    files = [export(cfgs[0], base_dir / "model.safetensors", out / "onnx" / f"{model}_base.onnx")]
    files += [export(c, out / "work" / k / "ft" / "model.safetensors", out / "onnx" / f"{k}.onnx")
              for c, k in zip(cfgs[1:], keys[1:], strict=True)]
    be = OrtBackend(threads=1, clock="thread")
    loads = [be.onnx_file(str(f), c, LAT_BATCH) for f, c in zip(files, cfgs, strict=True)]
    got: list[list[float]] = [[] for _ in loads]
    try:
        for i in shuffled_passes(range(len(loads)), passes, seed=0):
            loads[i].time(LAT_WARMUP)
            got[i] += loads[i].time(LAT_REPEATS)
    finally:
        for w in loads:
            w.close()
        be.close()
    med = [float(np.median(g)) for g in got]
    for r, t in zip(mine, med[1:], strict=True):
        r["latency_ms"], r["latency_ratio_to_base"] = t * 1e3, t / med[0]
    log(f"latency {model}: {len(loads)} models x {passes} passes, base {med[0] * 1e3:.2f} ms per batch of "
        f"{LAT_BATCH}")
    return med[0]


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, target): each arm's values, and depth - width per stage with a 95% Welch interval."""
    from revit.search.results import welch

    rows = []
    for model, target in sorted({(r["model"], r["target"]) for r in results}):
        group = [r for r in results if r["model"] == model and r["target"] == target]
        row: dict[str, Any] = {"model": model, "target": target, "arms": {}}
        for arm in ARMS:
            rs = [r for r in group if r["arm"] == arm]
            lat = [r["latency_ratio_to_base"] for r in rs if r.get("latency_ratio_to_base") is not None]
            row["arms"][arm] = {
                "n": len(rs), "macs_ratio": [r["macs_ratio"] for r in rs],
                "cost_ratio": [r["cost_ratio"] for r in rs], "params": [r["params"] for r in rs],
                "latency_ms": [r["latency_ms"] for r in rs if r.get("latency_ms") is not None],
                "latency_ratio": lat, "removed": removal_counts(rs),
                **{s: [r[f"top1_{s}"] for r in rs if r.get(f"top1_{s}") is not None]
                   for s in ("after_pruning", "after_finetune")}}
        for stage in ("after_pruning", "after_finetune"):
            d, lo, hi, _, p = welch(row["arms"]["depth"][stage], row["arms"]["width"][stage])
            row[f"diff_{stage}"] = {"depth_minus_width": None if math.isnan(d) else d,
                                    "interval95": None if math.isnan(lo) else [lo, hi],
                                    "p": None if math.isnan(p) else p}
        rows.append(row)
    return rows


def removal_counts(rs: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per part (attention, mlp, blocks): base block index -> how many seeds removed it."""
    return {part: dict(sorted(collections.Counter(str(i) for r in rs for i in r["removed"].get(part, [])).items(),
                              key=lambda kv: int(kv[0])))
            for part in ("attention", "mlp", "blocks")}


def _mean(xs: list[float], fmt: str = "{:.3f}") -> str:
    return fmt.format(statistics.fmean(xs)) if xs else "-"


def _diff(d: dict[str, Any]) -> str:
    if d["depth_minus_width"] is None:
        return "-"
    iv = d["interval95"]
    return f"{100 * d['depth_minus_width']:+.2f}" + (f" [{100 * iv[0]:+.2f}, {100 * iv[1]:+.2f}]" if iv else
                                                     " [n/a: < 2 seeds or no spread]")


def report(rows: list[dict[str, Any]], settings: dict[str, Any], bases: dict[str, Any]) -> str:
    """Markdown: both arms side by side, depth - width with 95% Welch intervals, and the removals per arm."""
    lines = [f"settings: {json.dumps(settings)}", ""]
    lines += [f"- base `{m}`: test top-1 {100 * b['test_acc']:.2f}%" + (
        f", measured {b['latency_ms']:.2f} ms per batch of {LAT_BATCH}" if b.get("latency_ms") else "")
        for m, b in bases.items()]
    lines += ["", "| model | target | arm | seeds | MACs x base | target's cost x base | params | "
                  "latency ms (x base, measured) | top-1 after pruning | top-1 after fine-tune |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for arm, v in row["arms"].items():
            lat = f"{_mean(v['latency_ms'], '{:.2f}')} ({_mean(v['latency_ratio'])})" if v["latency_ms"] else "-"
            lines.append(f"| {row['model']} | {row['target']} | {arm} | {v['n']} | {_mean(v['macs_ratio'])} | "
                         f"{_mean(v['cost_ratio'])} | {_mean([p / 1e3 for p in v['params']], '{:.0f}K')} | {lat} | "
                         f"{_ms(v['after_pruning'], digits=2)} | {_ms(v['after_finetune'], digits=2)} |")
    lines += ["", "depth - width, top-1 points (mean over seeds, 95% Welch interval), and the measured latency "
                  "ratio of the arms:", "",
              "| model | target | after pruning | after fine-tune | latency depth / width |", "|---|---|---|---|---|"]
    for row in rows:
        ld, lw = row["arms"]["depth"]["latency_ms"], row["arms"]["width"]["latency_ms"]
        ratio = f"{statistics.fmean(ld) / statistics.fmean(lw):.3f}" if ld and lw else "-"
        lines.append(f"| {row['model']} | {row['target']} | {_diff(row['diff_after_pruning'])} | "
                     f"{_diff(row['diff_after_finetune'])} | {ratio} |")
    lines += ["", "What each arm removed (base block index: seeds that removed it):", ""]
    for row in rows:
        for arm, v in row["arms"].items():
            parts = [f"{name}: " + (", ".join(f"{i} ({c}/{v['n']})" for i, c in v["removed"][part].items()) or "none")
                     for part, name in (("attention", "attention"), ("mlp", "MLP"), ("blocks", "whole block"))]
            lines.append(f"- {row['model']} {row['target']} `{arm}`: " + "; ".join(parts))
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Top-1 after the fine-tune against measured latency (x base; MACs x base when not timed), one panel per
    model, both arms, one marker per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in results})
    targets = sorted({r["target"] for r in results})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        timed = all(r.get("latency_ratio_to_base") is not None for r in results if r["model"] == model)
        for ci, arm in enumerate(ARMS):
            for mi, target in enumerate(targets):
                rs = [r for r in results if r["model"] == model and r["arm"] == arm and r["target"] == target]
                xs = [r["latency_ratio_to_base"] if timed else r["macs_ratio"] for r in rs]
                ax.scatter(xs, [100 * r["top1_after_finetune"] for r in rs], c=f"C{ci}", marker="osD^v"[mi % 5],
                           label=f"{arm} {target}", alpha=0.8)
        ax.set_xlabel("measured latency x base" if timed else "MACs x base (latency not timed)")
        ax.set_ylabel("test top-1 after fine-tune (%)")
        ax.set_title(model)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-depth-vs-width", help="cache folder (runs, table, result JSON)")
    ap.add_argument("--mirror", help="also keep the small results here (e.g. benchmarks/results/depth-vs-width); "
                                     "runs found there are not re-run")
    ap.add_argument("--figure", help="also write the plot here (e.g. docs/figures/depth-vs-width.png)")
    ap.add_argument("--models", default="micro,micro12", help=f"model families: {', '.join(MODELS)}")
    ap.add_argument("--targets", default="macs:0.25,macs:0.5,latency:0.5",
                    help="KIND:R, KIND macs (fraction of the base MACs) or latency (of the base, by the v2 table)")
    ap.add_argument("--table", help="a v2 latency table for latency targets (default: built once into OUT/table)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--train-limit", type=int, default=12000)
    ap.add_argument("--val-size", type=int, default=2000)
    ap.add_argument("--test-limit", type=int, default=10000)
    ap.add_argument("--base-epochs", type=int, default=6)
    ap.add_argument("--prune-epochs", type=float, default=1.0, help="the pruning phase (both arms alike)")
    ap.add_argument("--prune-steps", type=int, default=10, help="pruning steps within it (both arms alike)")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tune epochs after pruning (both arms alike)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency-passes", type=int, default=10, help="interleaved timing passes at the end (0: none)")
    a = ap.parse_args()
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    if set(a.models) - set(MODELS):
        raise SystemExit(f"--models: unknown {sorted(set(a.models) - set(MODELS))}; known: {', '.join(MODELS)}")
    a.target_list = parse_targets(a.targets)
    a.seed_list = [int(s) for s in a.seeds.split(",")]
    if a.table:
        check_table(a.table)
    return a


def prepare(a: argparse.Namespace, out: Path, mirror: Path | None) -> dict[str, Any]:
    """Check and write the settings of the cache and the mirror; copy the mirror's finished results in."""
    settings = {k: getattr(a, k) for k in RESULT_KEYS}
    settings["table"] = a.table or "built: revit latency build --preset micro"
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
    return settings


def main() -> None:
    """Run every (model, seed, target, arm) not cached yet, time the exports, then write the report and the plot."""
    a = parse()
    t0 = time.perf_counter()
    out, mirror = Path(a.out), Path(a.mirror) if a.mirror else None
    settings = prepare(a, out, mirror)
    log(f"settings {json.dumps(settings)}; models {a.models}, targets {a.targets}, seeds {a.seeds}")
    table = get_table(a, out, mirror) if any(k == "latency" for k, _ in a.target_list) else None
    results, bases = [], {}
    for model in a.models:
        base = get_base(model, a, out)
        bases[model] = {"test_acc": json.loads((base / "metrics.json").read_text())["test_acc"]}
        for seed in a.seed_list:  # seed-major: a partial run covers every target and arm
            for target in a.target_list:
                for arm in ARMS:
                    r = run_arm(model, target, arm, seed, a, out, base, table)
                    results.append(r)
                    log(f"{model} {r['target']} {arm} seed {seed}: MACs {r['macs_ratio']:.3f}, depth {r['depth']}, "
                        f"top-1 after pruning {r['top1_after_pruning']}, after fine-tune "
                        f"{r['top1_after_finetune']:.4f}")
        if a.latency_passes > 0:
            bases[model]["latency_ms"] = time_family(model, results, out, a.latency_passes) * 1e3
    rows = summarize(results)
    text = report(rows, settings, bases) + "\n"
    for folder in (out, mirror):
        if folder is not None:
            write_json(folder / "depth_vs_width.json", {"settings": settings, "bases": bases, "summary": rows,
                                                        "results": results})
            (folder / "report.md").write_text(text)
            plot(results, folder / "depth_vs_width.png")
    if a.figure:
        plot(results, Path(a.figure))
    print(text, flush=True)
    log(f"done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
