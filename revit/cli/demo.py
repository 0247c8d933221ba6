"""``revit demo``: the whole pipeline on the embedded default (Fashion-MNIST, revit_micro, CPU)."""

from __future__ import annotations

import argparse
from typing import Any

from revit.cli._common import add_command, add_overwrite_arg, outcome
from revit.input_checks import check_output_dir, count, loader_workers, threads, workers


def register(sub: Any) -> None:
    p = add_command(sub, "demo", "run the whole pipeline on the embedded default (Fashion-MNIST, revit_micro): "
                    "latency table, prune, fit a rule, generate configs, a short study, a report",
                    "revit demo --out runs/demo")
    p.add_argument("--out", default="runs/demo", help="demo folder (stages already done there are reused)")
    p.add_argument("--train-limit", type=count(), help="training images of the base and pruning stages (default 8000)")
    p.add_argument("--study-train-limit", type=count(), help="training images per study trial (default 5000)")
    p.add_argument("--epochs", type=count(), help="epochs per study trial (default 2)")
    p.add_argument("--candidates", type=count(10_000), help="candidate trials of the study (default 3)")
    p.add_argument("--workers", type=workers(), help="study worker processes (default 2; at most one per CPU "
                   "and GiB of memory)")
    p.add_argument("--threads", type=threads(), help="torch threads of the single-process stages (default 1)")
    p.add_argument("--table", help="latency table JSON (default: the shipped micro table built on this CPU model "
                   "where there is one, else the Intel Xeon one)")
    p.add_argument("--device", help="auto (default: CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), help="autocast of every training stage (default off)")
    p.add_argument("--loader-workers", type=loader_workers(),
                   help="DataLoader workers per process (default 0; --workers counts study processes)")
    p.add_argument("--quick", action="store_true", help="a one-minute plan with tiny subsets (smoke test)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (-q sets it too)")
    add_overwrite_arg(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from revit.workflows.demo import DemoPlan, run_demo

    plan = DemoPlan.quick() if args.quick else DemoPlan()
    over = {"train_images": args.train_limit, "study_train_images": args.study_train_limit,
            "study_epochs": args.epochs, "study_candidates": args.candidates, "workers": args.workers,
            "threads": args.threads, "table": args.table, "device": args.device, "amp": args.amp,
            "loader_workers": args.loader_workers}
    plan = dataclasses.replace(plan, **{k: v for k, v in over.items() if v is not None})
    from revit.devices import check_amp, resolve_device
    from revit.run_folders import claim_run

    claim_run(args.out, "demo", resume=True, overwrite=args.overwrite)  # reads only; names another kind first
    check_output_dir(args.out)
    if args.table:  # a broken table is refused before the demo folder is made, not at stage 1
        from revit.latency.table import LatencyTable

        LatencyTable.load(args.table)
    resolve_device(plan.device)  # a missing GPU is one line and exit 2 before anything runs
    check_amp(plan.amp)
    summary = run_demo(args.out, plan, overwrite=args.overwrite, progress=not args.no_progress)
    trials = summary.get("study_trials") or {}
    if trials.get("line"):
        outcome(trials["line"])
    return 1 if trials.get("failed") else 0
