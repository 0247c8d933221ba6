"""``revit demo``: the whole pipeline on the embedded default (Fashion-MNIST, revit_micro, CPU)."""

from __future__ import annotations

import argparse
from typing import Any

from revit.cli._common import add_command, info


def register(sub: Any) -> None:
    p = add_command(sub, "demo", "run the pipeline on the embedded default (Fashion-MNIST, revit_micro)",
                    "revit demo --out runs/demo")
    p.add_argument("--out", default="runs/demo", help="report folder")
    p.add_argument("--train-limit", type=int, default=10000, help="training images (subset for speed)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from revit import counting
    from revit.data import DataSpec
    from revit.presets import get_preset
    from revit.train import TrainConfig
    from revit.workflows import run_training

    cfg = get_preset("revit_micro")
    info(f"demo: revit_micro ({counting.format_count(counting.macs(cfg))} MACs, "
         f"{counting.format_count(counting.params(cfg))} params) on Fashion-MNIST, "
         f"{args.train_limit} training images, {args.epochs} epochs")
    m = run_training(cfg, DataSpec(train_limit=args.train_limit, val_size=2000), TrainConfig(epochs=args.epochs),
                     f"{args.out}/train-micro", threads=args.threads)
    print(f"revit_micro: test top-1 {m['test_acc']:.4f}, {counting.format_count(m['macs'])} MACs, "
          f"{counting.format_count(m['params'])} params, {m['seconds_per_epoch']:.0f} s/epoch")
    return 0
