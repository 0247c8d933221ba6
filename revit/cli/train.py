"""``revit train``: train (or fine-tune, with ``--init``) a config on a dataset; DDP under torchrun."""

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
    runtime_kwargs,
)
from revit.input_checks import MAX_LR, check_output_dir, count, number


def register(sub: Any) -> None:
    p = add_command(sub, "train", "train a config from scratch or from --init weights",
                    "revit train revit_micro --data fashion-mnist --epochs 3 --out runs/micro\n"
                    "  revit train revit_deit_small_patch16_224 --data /datasets/imagenet --recipe deit --amp bf16 "
                    "-j 8 --epochs 300 --batch-size 256 --out runs/deit-s\n"
                    "  torchrun --nproc-per-node 2 -m revit train revit_micro --epochs 1 --out runs/micro-ddp\n"
                    "  revit train resnet10t --data fashion-mnist --epochs 2 --out runs/cnn-teacher\n"
                    "  revit train runs/p/pruned.yaml --init runs/p/pruned.safetensors --teacher resnet10t "
                    "--teacher-weights runs/cnn-teacher/model.safetensors --self-teacher runs/p --out runs/ft")
    p.add_argument("config", help="registered name or ViT-config YAML, or a timm model name (e.g. resnet10t: a CNN "
                                  "teacher, built by timm.create_model for the data's classes and channels)")
    add_data_args(p)
    p.add_argument("--epochs", type=count(), default=3)
    p.add_argument("--batch-size", type=count(), default=128, help="global batch (split across processes)")
    p.add_argument("--recipe", default="basic", choices=("basic", "deit"),
                   help="basic: AdamW lr 1e-3, 0.5 warm-up epochs, no augmentation on tensor datasets; deit: "
                        "DeiT's (lr 5e-4 x batch/512, wd 0.05, 5 warm-up epochs, drop path 0.1, RandAugment, "
                        "random erasing 0.25, Mixup 0.8/CutMix 1.0, hard-label distillation)")
    p.add_argument("--lr", type=number(0, MAX_LR, lo_open=True), help="peak learning rate (default: the recipe's)")
    p.add_argument("--weight-decay", type=number(0), help="default: 0.05")
    p.add_argument("--warmup-epochs", type=number(0), help="default: the recipe's (basic 0.5, deit 5)")
    p.add_argument("--label-smoothing", type=number(0, 1, hi_open=True), help="default: 0.1")
    p.add_argument("--drop-path", type=number(0, 1, hi_open=True), help="default: the recipe's (basic 0, deit 0.1)")
    p.add_argument("--mixup", type=number(0), help="Mixup alpha (default: the recipe's; basic 0, deit 0.8)")
    p.add_argument("--cutmix", type=number(0), help="CutMix alpha (default: the recipe's; basic 0, deit 1.0)")
    p.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights (timm ModelEmaV3)")
    p.add_argument("--model-ema-decay", type=number(0, 1, lo_open=True, hi_open=True), default=0.99996)
    add_runtime_args(p)
    p.add_argument("--init", help="start from these weights (.safetensors/.pth matching the config)")
    add_teacher_args(p)
    p.add_argument("--self-teacher", metavar="RUN",
                   help="also distill (KL, weight --kl-weight) from the unpruned model of this `revit prune` run "
                        "folder (its teacher.safetensors and trace header)")
    p.add_argument("--kl-weight", type=number(0), default=1.0, help="weight of the KL to --self-teacher's model")
    p.add_argument("--ce-weight", type=number(0), default=1.0, help="weight of the cross-entropy")
    p.add_argument("--distill-weight", "--teacher-weight", dest="distill_weight", type=number(0), default=1.0,
                   help="weight of the teacher's term when --teacher is set")
    p.add_argument("--distill-type", choices=("kl", "hard"),
                   help="kl: KL at --temperature; hard: CE on the teacher's argmax (DeiT); default: the recipe's")
    p.add_argument("--temperature", type=number(0, lo_open=True), default=1.0)
    add_run_folder_args(p, "checkpoint, log.jsonl, model.safetensors, metrics, hf/ (timm's hub format + card)",
                        "checkpoint.pt", "no progress bar and no per-epoch lines")
    p.add_argument("--json", action="store_true", help="print one JSON object (run folder, metrics) on stdout")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from revit.distill import is_timm_name
    from revit.presets import resolve_config
    from revit.recipes import TrainConfig
    from revit.run_folders import claim_run
    from revit.workflows import run_training

    check_teacher(args)
    claim_run(args.out, "train", resume=args.resume, overwrite=args.overwrite)  # reads only; names another kind
    check_output_dir(args.out)
    cfg: Any = args.config if is_timm_name(args.config) else resolve_config(args.config)
    tc = TrainConfig.for_recipe(
        args.recipe, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, drop_path_rate=args.drop_path,
        seed=args.seed, distill_weight=args.distill_weight if args.teacher else 0.0, ce_weight=args.ce_weight,
        self_distill_weight=args.kl_weight if args.self_teacher else 0.0,
        distill_temperature=args.temperature, distill_type=args.distill_type, mixup=args.mixup, cutmix=args.cutmix,
        model_ema=args.model_ema, model_ema_decay=args.model_ema_decay, **runtime_kwargs(args))
    from pathlib import Path

    from revit.models.hub import HUB_DIR
    from revit.train_loop import dist_info

    metrics = run_training(cfg, data_spec_from_args(args, getattr(cfg, "img_size", None)), tc, args.out,
                           init=args.init, teacher=args.teacher, teacher_weights=args.teacher_weights,
                           self_teacher=args.self_teacher, resume=args.resume,
                           overwrite=args.overwrite, threads=args.threads, progress=not args.no_progress)
    if dist_info()[0] == 0:
        hub = f" and {HUB_DIR}/ (timm's hub format with a model card)" if not isinstance(cfg, str) else ""
        info(f"wrote {args.out}/model.safetensors, metrics.json{hub}")
        if args.json:
            print_json({"run": str(args.out), "hub": str(Path(args.out) / HUB_DIR), "metrics": metrics})
    return 0


def data_spec_from_args(args: argparse.Namespace, img_size: int | None) -> Any:
    from revit.data import DataSpec

    return DataSpec(source=args.data, train_limit=args.train_limit, val_size=args.val_size,
                    test_limit=args.test_limit, seed=args.seed, img_size=img_size)
