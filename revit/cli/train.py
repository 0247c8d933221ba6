"""``revit train``: train (or fine-tune, with ``--init``) a config on a dataset; DDP under torchrun."""

from __future__ import annotations

import argparse
from typing import Any

from revit.cli._common import add_command


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Dataset options shared by train, prune and demo."""
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, digits, or an ImageFolder path")
    p.add_argument("--train-limit", type=int, help="use this many training images (default: all)")
    p.add_argument("--val-size", type=int, default=5000, help="images held out of the training set for selection")
    p.add_argument("--test-limit", type=int, help="evaluate on this many test images (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the init and the batch order")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")


def register(sub: Any) -> None:
    p = add_command(sub, "train", "train a config from scratch or from --init weights",
                    "revit train revit_micro --data fashion-mnist --epochs 3 --out runs/micro\n"
                    "  torchrun --nproc-per-node 2 -m revit train revit_micro --epochs 1 --out runs/micro-ddp")
    p.add_argument("config", help="registered name or ViT-config YAML")
    add_data_args(p)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (split across processes)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--init", help="start from these weights (.safetensors/.pth matching the config)")
    p.add_argument("--teacher", help="distill from this config/name (with --teacher-weights)")
    p.add_argument("--teacher-weights", help="weights of the teacher")
    p.add_argument("--distill-weight", type=float, default=1.0, help="weight of the KL term when --teacher is set")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--out", required=True, help="run folder: checkpoint, log.jsonl, model.safetensors, metrics")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from revit.presets import resolve_config
    from revit.recipes import TrainConfig
    from revit.workflows import run_training

    cfg = resolve_config(args.config)
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                     warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                     drop_path_rate=args.drop_path, seed=args.seed,
                     distill_weight=args.distill_weight if args.teacher else 0.0,
                     distill_temperature=args.temperature)
    run_training(cfg, data_spec_from_args(args, cfg.img_size), tc, args.out, init=args.init,
                 teacher=args.teacher, teacher_weights=args.teacher_weights, resume=args.resume,
                 threads=args.threads)
    return 0


def data_spec_from_args(args: argparse.Namespace, img_size: int | None) -> Any:
    from revit.data import DataSpec

    return DataSpec(source=args.data, train_limit=args.train_limit, val_size=args.val_size,
                    test_limit=args.test_limit, seed=args.seed, img_size=img_size)
