"""``revit prune``: global Hessian-aware, latency-aware pruning of a ViT to a MACs or latency target."""

from __future__ import annotations

import argparse
from typing import Any

from revit.cli._common import (
    add_command,
    add_data_args,
    add_run_folder_args,
    add_runtime_args,
    add_teacher_args,
    check_teacher,
    info,
    print_json,
)
from revit.cost import COSTS, MACS
from revit.input_checks import MAX_LR, count, fraction, non_negative, number
from revit.options import parse_assignments
from revit.recipes import RANKINGS
from revit.registry import lazy_choices


def register(sub: Any) -> None:
    p = add_command(sub, "prune", "prune a ViT globally (NViT saliency, latency/MACs penalty) and export it",
                    "revit prune --model revit_micro --checkpoint runs/micro-base/model.safetensors "
                    "--data fashion-mnist --target-macs 0.5 --out runs/micro-prune\n"
                    "  torchrun --nproc-per-node 2 -m revit prune --model revit_micro --data digits "
                    "--target-latency 0.6 --table latency_tables/X.json --out runs/p\n"
                    "  revit prune --model revit_micro --checkpoint runs/micro-base/model.safetensors "
                    "--target-macs 0.5 --teacher resnet10t --teacher-weights runs/cnn-teacher/model.safetensors "
                    "--out runs/p2")
    p.add_argument("--model", required=True, help="registered name or ViT-config YAML")
    p.add_argument("--checkpoint", help="weights to start from (.safetensors/.pth matching the config)")
    add_data_args(p, test_limit_zero=True)
    tgt = p.add_mutually_exclusive_group(required=True)
    for name, cost in COSTS.loaded().items():  # one flag per registered cost model: --target-macs, --target-latency
        needs = " (needs --table)" if cost.needs_table else ""
        tgt.add_argument(f"--target-{name}", dest=_target_dest(name), type=fraction(), metavar="R",
                         help=f"stop at R x the base {name} (0 < R < 1){needs}")
    p.add_argument("--table", help="latency table (a JSON file or a shipped table's name) for --target-latency and "
                                   "the latency penalty")
    p.add_argument("--criterion", default="hessian", choices=lazy_choices("revit.prune.criteria", "CRITERIA"),
                   metavar="NAME", help="importance criterion: %(choices)s (default %(default)s; an installed "
                                        "package adds more through the revit.criteria entry point group)")
    p.add_argument("--criterion-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option the criterion declares (repeatable; listed below and by revit plugins)")
    p.add_argument("--epochs", type=number(0, lo_open=True), default=1.0,
                   help="budget: the removals are spread so the target is reached within this many epochs "
                        "(default 1)")
    p.add_argument("--prune-steps", type=count(), help="number of pruning steps within the budget (default: automatic)")
    p.add_argument("--interval", type=count(), help="NViT's fixed schedule: batches between pruning steps (NViT: 100); "
                                                "with --per-step/--step-fraction the run goes on until the target")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--per-step", type=count(), help="fixed schedule: units removed per step (NViT: 2)")
    step.add_argument("--step-fraction", type=fraction(),
                      help="fixed schedule: remove units until the cost fell by this "
                           "fraction of the base cost per step")
    p.add_argument("--eta", type=number(0), default=1.0, help="scale-free penalty weight: 1 = a unit of median saving "
                                                         "weighs a median saliency; 0 = no penalty")
    p.add_argument("--ranking", choices=RANKINGS, default="nvit",
                   help="how a step ranks candidates: nvit (the paper: saliency - eta x saving) or knapsack (that "
                        "score per unit of the target's cost saved: lets a latency penalty trade dear units for "
                        "cheap ones at equal MACs; default %(default)s)")
    p.add_argument("--keep-depth", action="store_true",
                   help="prune widths only: never remove a block's attention, its MLP or the block (by default a "
                        "branch whose widths are at their minimum competes as a whole)")
    p.add_argument("--granularity", default="auto",
                   help="auto (from the model's widths: standard steps for DeiT-Tiny and wider, micro below), "
                        "standard, micro, one, or E,H,QK,V,MLP steps")
    p.add_argument("--batch-size", type=count(), default=128, help="global batch (split across processes)")
    p.add_argument("--lr", type=number(0, MAX_LR, lo_open=True),
                   default=1e-4, help="AdamW learning rate while pruning (constant)")
    p.add_argument("--weight-decay", type=number(0), default=0.05)
    p.add_argument("--kl-weight", type=number(0), default=1.0, help="weight of the KL to the unpruned model")
    p.add_argument("--ce-weight", type=number(0), default=1.0, help="weight of the cross-entropy")
    add_teacher_args(p)
    p.add_argument("--teacher-weight", type=number(0), default=1.0,
                   help="weight of --teacher's term, beside the KL to the unpruned model")
    p.add_argument("--teacher-type", choices=("kl", "hard"), default="kl",
                   help="kl: KL at --temperature; hard: CE on the teacher's argmax (DeiT)")
    p.add_argument("--temperature", type=number(0, lo_open=True),
                   default=3.0, help="distillation temperature (NViT: 3)")
    p.add_argument("--eval-size", type=non_negative(),
                   default=1000, help="held-out images scored at every step (0: none)")
    p.add_argument("--max-steps", type=count(), default=10000,
                   help="give up (exit 2) after this many pruning steps without reaching the target")
    add_runtime_args(p, training=False)
    add_run_folder_args(p, "trace.jsonl, pruned.yaml/.safetensors, metrics, plots, hf/ (timm's hub format + card)",
                        "state.pt", "no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object (run folder, config, metrics) on stdout")
    p.set_defaults(func=cmd_prune)


def _target_dest(name: str) -> str:
    return "target_" + name.replace("-", "_")


def cmd_prune(args: argparse.Namespace) -> int:
    from revit.cost import CostTarget
    from revit.data import DataSpec
    from revit.presets import resolve_config
    from revit.recipes import PruneConfig
    from revit.workflows import run_prune

    check_teacher(args)
    target = CostTarget.of(**{name: getattr(args, _target_dest(name)) for name in COSTS.loaded()})
    pc = PruneConfig(
        target=target,
        criterion=args.criterion, criterion_options=parse_assignments(args.criterion_option, "--criterion-option"),
        epochs=args.epochs, prune_steps=args.prune_steps, interval=args.interval,
        per_step=args.per_step, step_fraction=args.step_fraction, device=args.device, amp=args.amp,
        workers=args.loader_workers,
        eta=args.eta, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        kl_weight=args.kl_weight, ce_weight=args.ce_weight, temperature=args.temperature,
        teacher_weight=args.teacher_weight, teacher_type=args.teacher_type,
        granularity=args.granularity, eval_size=args.eval_size, max_steps=args.max_steps, seed=args.seed,
        keep_depth=args.keep_depth, ranking=args.ranking,
    )
    cfg = resolve_config(args.model)
    data = DataSpec(source=args.data, train_limit=args.train_limit, val_size=args.val_size,
                    test_limit=args.test_limit or None, seed=args.seed, img_size=cfg.img_size)

    def started(run: Any) -> None:
        if run.rank == 0:
            info(f"schedule: {run.pruner.schedule.describe()}; {run.per_epoch} batches per epoch; "
                 f"device {run.device}, amp {args.amp}")

    res = run_prune(cfg, data, pc, args.out, checkpoint=args.checkpoint, table=args.table, teacher=args.teacher,
                    teacher_weights=args.teacher_weights, resume=args.resume, overwrite=args.overwrite,
                    threads=args.threads, progress=not args.no_progress, score_test=args.test_limit != 0,
                    on_start=started)
    from revit.devices import dist_info

    if dist_info()[0] == 0:
        from revit.models.hub import HUB_DIR

        m = res.metrics
        info(summary(res.steps, m))
        info(f"wrote {args.out}/trace.jsonl, pruned.yaml, pruned.safetensors, metrics.json, plots/ and {HUB_DIR}/ "
             "(timm's hub format with a model card)")
        if args.json:
            from pathlib import Path

            print_json({"run": str(args.out), "hub": str(Path(args.out) / HUB_DIR), "config": res.config.to_dict(),
                        "metrics": m})
    return 0


def summary(steps: int, m: dict[str, Any]) -> str:
    """The sentence that ends a pruning run: counts before and after, accuracy, the penalty weight used."""
    from revit.counting import format_count
    from revit.trace import describe_removals

    acc = "".join(f", {k.removesuffix('_accuracy')} top-1 {m[k]:.4f}" for k in ("val_accuracy", "test_accuracy")
                  if k in m)
    kind, penalty = str(m["target"]["kind"]), str(m.get("penalty"))
    lat = f", {kind} {m['cost_ratio']:.3f} of the base" if kind != MACS else ""
    unit = COSTS.get(penalty).per_unit if penalty in COSTS else "unit of cost"
    removed = f", removed: {describe_removals(m['removed'])}" if m.get("removed") else ""
    eta = f"; penalty weight {m['eta_abs']:.3g} saliency per {unit} saved" if m.get("eta_abs") else ""
    return (f"pruned in {steps} steps: MACs {format_count(m['base']['macs'])} -> {format_count(m['pruned']['macs'])} "
            f"({m['macs_ratio']:.3f} of the base), params {format_count(m['base']['params'])} -> "
            f"{format_count(m['pruned']['params'])}{lat}{acc}{removed}"
            f"{eta}; dense and masked outputs differ by at most {m['dense_vs_masked_max_abs_diff']:.2e}")
