"""Latency-aware vs MACs-only pruning of revit_micro, stopped at equal MACs (issue 4).

Both runs start from the same base weights and prune with the same criterion, schedule and data to
the same MACs target; one penalises each unit by its latency saving from the shipped onnxruntime
micro table (``--eta`` scale-free), the other by its MACs saving.  Both pruned models are then
exported with ``torch.onnx`` and timed whole on onnxruntime CPU with the protocol of ``revit latency validate``
(the table's batch 64, one intra-op thread, thread clock, 2 warm-ups, then passes x repeats samples in a random
order per pass so that the models interleave in time, a fresh session each pass; medians).  ``--etas`` gives one pair of
runs per penalty weight (default 1 and 4): at eta 1 the saliency dominates the choice, a larger eta
lets the penalty steer towards units that cost more latency per MAC (on this CPU table a head costs
3.3 ms per MMAC saved, an MLP neuron 1.9).
Usage: python benchmarks/prune_latency.py [--etas 1,4] [--passes 30]   (about 10 min on 2 busy cores)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

TABLE = Path(__file__).resolve().parents[1] / "latency_tables" / "cpu_onnxruntime_fp32_bs64_t17.json"


def measure_models(cfgs: list[Any], batch: int = 64, passes: int = 3, repeats: int = 5, warmup: int = 2,
                   seed: int = 0, threads: int = 1) -> list[float]:
    """Median seconds per batch of each whole model as a user deploys it (exported with ``torch.onnx``), with
    ``revit latency validate``'s protocol: interleaved passes, a fresh onnxruntime session for each."""
    import tempfile

    from revit.latency.accuracy import whole_models
    from revit.latency.backends.ort import OrtBackend
    from revit.latency.timing import shuffled_passes

    be = OrtBackend(threads=threads, clock="thread" if threads == 1 else "wall")
    got: list[list[float]] = [[] for _ in cfgs]
    with tempfile.TemporaryDirectory() as tmp:
        models = whole_models(be, cfgs, batch, "exported", tmp)
        for i in shuffled_passes(list(range(len(cfgs))), passes, seed):
            with models[i].visit() as w:
                w.time(warmup)
                got[i] += w.time(repeats)
        for m in models:
            m.close()
    be.close()
    return [float(np.median(g)) for g in got]


def _fmt(cfg: Any) -> str:
    """Compact widths: EMB, then heads/QK/V/MLP per block."""
    return (f"EMB {cfg.embed_dim}; heads {[b.heads for b in cfg.blocks]}; QK {[b.qk_dim for b in cfg.blocks]}; "
            f"V {[b.v_dim for b in cfg.blocks]}; MLP {[b.mlp_dim for b in cfg.blocks]}")


def main() -> None:
    """Prune twice (latency penalty vs MACs penalty) to the same MACs target, then time both models."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/micro-base/model.safetensors",
                    help="revit_micro weights to prune (see docs/evidence/pruning.md for the command that trains them)")
    ap.add_argument("--table", default=str(TABLE))
    ap.add_argument("--target", type=float, default=0.5, help="MACs target (fraction of the base)")
    ap.add_argument("--criterion", default="hessian")
    ap.add_argument("--ranking", default="nvit", choices=("nvit", "knapsack"),
                    help="how both runs rank candidates (revit prune --ranking): nvit by score, knapsack by score per "
                         "MAC saved (the only one under which a latency penalty trades dear units for cheap ones)")
    ap.add_argument("--etas", default="1,4", help="scale-free penalty weights; each gives one pair of runs")
    ap.add_argument("--keep-depth", action="store_true", help="both runs prune widths only (revit prune --keep-depth)")
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--step-fraction", type=float, default=0.04)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--train-limit", type=int, default=12000)
    ap.add_argument("--passes", type=int, default=30, help="interleaved timing passes (each: 2 warm-ups, 5 repeats)")
    ap.add_argument("--copies", type=int, default=2, help="independent sessions per model (shows the noise)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads while pruning")
    ap.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    import tempfile

    import torch

    from revit import counting
    from revit.data import DataSpec, load_splits
    from revit.devices import size
    from revit.latency.table import LatencyTable
    from revit.models import build_model
    from revit.presets import get_preset
    from revit.prune import CostTarget, PruneConfig, PruneRun

    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"{args.checkpoint} not found: train revit_micro first (docs/evidence/pruning.md) or pass "
                         "--checkpoint")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    table = LatencyTable.load(args.table)
    base_cfg = get_preset("revit_micro")
    splits = load_splits(DataSpec("fashion-mnist", train_limit=args.train_limit, val_size=2000, test_limit=2000))
    out = Path(args.out or tempfile.mkdtemp(prefix="prune_latency_"))
    etas = [float(e) for e in args.etas.split(",")]
    print(f"revit_micro from {args.checkpoint}; {args.criterion} ranked {args.ranking}, MACs target {args.target}, "
          f"etas {etas}, "
          f"interval {args.interval}, step fraction {args.step_fraction}, {size(splits.train)} images; table "
          f"{Path(args.table).name}; runs in {out}", flush=True)
    runs: dict[str, Any] = {}
    for eta in etas:
        for kind, tbl in (("latency-aware", table), ("macs-only", None)):
            # under the knapsack a MACs penalty shifts every key by eta_abs: one MACs-only run serves every eta
            name = "macs-only" if kind == "macs-only" and args.ranking == "knapsack" else f"{kind} eta {eta:g}"
            if name in runs:
                continue
            pc = PruneConfig(target=CostTarget.macs(args.target), criterion=args.criterion, interval=args.interval,
                             per_step=None, step_fraction=args.step_fraction, eta=eta, lr=args.lr, eval_size=0,
                             seed=0, ranking=args.ranking, keep_depth=args.keep_depth)
            torch.manual_seed(0)
            model = build_model(base_cfg, checkpoint=args.checkpoint)
            t0 = time.perf_counter()
            folder = out / name.replace(" ", "_")
            if (folder / "metrics.json").is_file():  # finished by an earlier invocation: reuse it
                from types import SimpleNamespace

                from revit.config import ViTConfig

                m = json.loads((folder / "metrics.json").read_text())
                res: Any = SimpleNamespace(config=ViTConfig.load(folder / "pruned.yaml"), steps=m["steps"], metrics=m)
            else:
                res = PruneRun(model, splits.train, None, pc, folder, table=tbl, resume=True, progress=False,
                               test_ds=splits.test).run()
            macs = counting.macs(res.config)
            runs[name] = {"config": res.config, "macs": macs, "params": counting.params(res.config),
                          "predicted_s": table.predict(res.config).total_s, "steps": res.steps,
                          "test_top1": res.metrics.get("test_accuracy"), "eta": eta, "eta_abs": res.metrics["eta_abs"],
                          "seconds": time.perf_counter() - t0}
            print(f"{name}: {res.steps} steps in {runs[name]['seconds']:.0f} s, MACs {macs / 1e6:.2f}M "
                  f"({macs / counting.macs(base_cfg):.3f}), test top-1 {runs[name]['test_top1']:.4f}\n"
                  f"  {_fmt(res.config)}", flush=True)
    names = list(runs)
    cfgs = [base_cfg] + [runs[n]["config"] for n in names for _ in range(args.copies)]
    t0 = time.perf_counter()
    lat = measure_models(cfgs, passes=args.passes, seed=1)
    t_meas = time.perf_counter() - t0
    base_s = lat[0]
    for i, n in enumerate(names):
        copies = lat[1 + i * args.copies:1 + (i + 1) * args.copies]
        runs[n]["measured_s"] = float(np.median(copies))
        runs[n]["measured_copies_s"] = copies
    print(f"\nmeasured on onnxruntime CPU, batch {table.batch_size}, 1 thread, thread clock, {args.passes} "
          f"interleaved passes x 5 repeats, {args.copies} sessions per model ({t_meas:.0f} s):")
    print(f"  {'model':22s} {'MACs':>8s} {'params':>8s} {'top-1':>6s} {'predicted ms':>13s} {'measured ms':>12s} "
          f"{'copies ms':>14s}")
    print(f"  {'base':22s} {counting.macs(base_cfg) / 1e6:7.2f}M {counting.params(base_cfg) / 1e3:7.0f}K {'':6s} "
          f"{table.predict(base_cfg).total_s * 1e3:13.2f} {base_s * 1e3:12.2f}")
    for n in names:
        r = runs[n]
        print(f"  {n:22s} {r['macs'] / 1e6:7.2f}M {r['params'] / 1e3:7.0f}K {r['test_top1'] * 100:6.2f} "
              f"{r['predicted_s'] * 1e3:13.2f} {r['measured_s'] * 1e3:12.2f} "
              f"{', '.join(f'{c * 1e3:.2f}' for c in r['measured_copies_s']):>14s}")
    speedups = {}
    for eta in etas:
        la = runs[f"latency-aware eta {eta:g}"]
        mo = runs["macs-only" if args.ranking == "knapsack" else f"macs-only eta {eta:g}"]
        speed = mo["measured_s"] / la["measured_s"]
        speedups[f"{eta:g}"] = speed
        # the goal is per device: at least half of the room `revit latency room TABLE --measure` measures there
        print(f"eta {eta:g}: latency-aware is x{speed:.3f} faster than MACs-only ({(speed - 1) * 100:+.1f}%; the goal: "
              f"half of the device's measured room) at {la['macs'] / mo['macs']:.3f} of its MACs; predicted x"
              f"{mo['predicted_s'] / la['predicted_s']:.3f}; top-1 {la['test_top1'] * 100:.2f} vs "
              f"{mo['test_top1'] * 100:.2f}")
    print(f"wall {time.perf_counter() - t_start:.0f} s")
    if args.json:
        rows = {n: {k: (v.to_dict() if k == "config" else v) for k, v in r.items()} for n, r in runs.items()}
        Path(args.json).write_text(json.dumps({"speedup": speedups, "base_measured_s": base_s, "runs": rows,
                                               "settings": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
