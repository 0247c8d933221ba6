"""Train a config from scratch (or from weights) into a run folder: the library side of ``revit train``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from revit._io import atomic_write_text, dumps_json
from revit.config import ViTConfig
from revit.data import DataSpec
from revit.errors import ConfigError
from revit.recipes import TrainConfig

log = logging.getLogger(__name__)


def train_card(run_dir: str | os.PathLike[str], metrics: dict[str, Any], cfg: ViTConfig, data: str | None = None,
               init: str | None = None) -> Any:
    """The :class:`~revit.models.hub.ModelCard` of a training run from its ``metrics.json`` contents."""
    from revit.distill import teacher_notes as _teacher_notes
    from revit.models.hub import ModelCard

    acc = {f"{k.removesuffix('_acc').replace('_acc_', ' ')} top-1": float(metrics[k])
           for k in ("val_acc", "test_acc", "test_acc_ema") if metrics.get(k) is not None}
    how = f"Fine-tuned from `{Path(init).name}`" if init else "Trained"
    on = f" of {data}" if data else ""
    return ModelCard(title=f"{cfg.name or 'ReViT'} trained{' on ' + data if data else ''}", dataset=data,
                     accuracy=acc, training_run=Path(run_dir).name or str(run_dir), base=cfg.name,
                     notes=(f"{how} by `revit train` for {metrics.get('epochs', '?')} epochs on "
                            f"{metrics.get('train_images', '?')} images{on}.", *_teacher_notes(metrics)))


def run_teachers(teacher: Any, self_teacher: Any, tc: TrainConfig) -> list[dict[str, Any]]:
    """The teachers of a run as metrics.json names them (role, name, weights file and hash, weight)."""
    out = []
    if teacher is not None and tc.distill_weight > 0:
        out.append(teacher.describe("teacher", tc.distill_weight))
    if self_teacher is not None and tc.self_distill_weight > 0:
        out.append(self_teacher.describe("unpruned model", tc.self_distill_weight))
    return out


def run_training(cfg: ViTConfig | str, data: DataSpec, tc: TrainConfig, out: str | os.PathLike[str], *,
                 init: str | None = None, teacher: str | None = None, teacher_weights: str | None = None,
                 self_teacher: str | None = None, resume: bool = False, overwrite: bool = False,
                 threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` on ``data`` into run folder ``out``; returns the metrics written to metrics.json.

    ``cfg`` is a ViT config, or a timm model name (a CNN teacher: ``timm.create_model`` for the data's
    classes and channels; no config.yaml or hf/ then).  ``teacher`` is a revit config/name or a timm
    model name with its ``teacher_weights``; ``self_teacher`` a prune run folder whose unpruned model
    is distilled from too (:mod:`revit.distill`).  Nothing is written to ``out`` before every check
    passed: the folder claim, the teachers, and with ``resume`` the model config and recipe of the run.
    """
    import torch

    from revit import counting
    from revit.devices import resolve_device
    from revit.models.checkpoint import save_weights
    from revit.run_folders import claim_run
    from revit.train_loop import dist_info, evaluate, init_distributed, size, train

    t0 = time.perf_counter()
    claim = claim_run(out, "train", resume=resume, overwrite=overwrite)
    if threads:
        torch.set_num_threads(threads)
    rank, world = init_distributed(resolve_device(tc.device))
    torch.manual_seed(tc.seed)
    vit = cfg if isinstance(cfg, ViTConfig) else None
    model, splits = _student(cfg, data, tc, init, claim)
    t_model, s_model, named = _teachers(splits, tc, teacher, teacher_weights, self_teacher, claim)
    out = Path(out)
    step_images = tc.batch_size * tc.grad_accum
    if step_images > size(splits.train):  # refused before the folder exists, not after
        raise ConfigError(f"training set of {size(splits.train)} images is smaller than one optimizer step of "
                          f"{tc.batch_size} x {tc.grad_accum} images")
    if world > 1:  # every rank checked the folder before rank 0 writes its marker
        torch.distributed.barrier()
    try:
        if rank == 0:
            claim.begin()  # locks the folder: a second run into it refuses in one line
            if vit is not None:
                vit.save(out / "config.yaml", derived=counting.derived(vit))
        result = train(model, splits.train, splits.val, tc, out, resume=claim.resuming, progress=progress,
                       teacher=t_model.module if t_model else None,
                       self_teacher=s_model.module if s_model else None,
                       checkpoint_extra={"teachers": named} if named else None)
    except BaseException:
        if rank == 0:
            claim.abandon()  # a new folder with nothing but its setup files is removed again
        raise
    test_acc = evaluate(model, splits.test, tc.eval_batch_size, amp=tc.amp, workers=tc.loader_workers)
    metrics = {
        "test_acc": test_acc, "val_acc": result.final.get("val_acc"), "train_loss": result.final.get("train_loss"),
        "epochs": tc.epochs, "seconds": result.prior_seconds + time.perf_counter() - t0,
        "seconds_per_epoch": sum(r["seconds"] for r in result.history) / max(len(result.history), 1),
        **_size_metrics(cfg, model), "train_images": size(splits.train),
    }
    if t_model is not None or s_model is not None:
        metrics.update(teachers=run_teachers(t_model, s_model, tc), ce_weight=tc.ce_weight)
    if result.ema is not None:
        metrics["test_acc_ema"] = evaluate(result.ema, splits.test, tc.eval_batch_size, amp=tc.amp,
                                           workers=tc.loader_workers)
    if dist_info()[0] == 0:
        save_weights(model, out / "model.safetensors")
        if result.ema is not None:
            save_weights(result.ema, out / "model_ema.safetensors")
        atomic_write_text(out / "metrics.json", dumps_json(metrics, "metrics.json", nonfinite="null", indent=1))
        if vit is not None:
            from revit.models.hub import HUB_DIR, save_pretrained

            save_pretrained(model, out / HUB_DIR, card=train_card(out, metrics, vit, data.source, init),
                            overwrite=True)
        claim.finish()
        log.info("test top-1 %.4f (%d images) -> %s", test_acc, size(splits.test), out)
    return metrics


def _teachers(splits: Any, tc: TrainConfig, teacher: str | None, weights: str | None, self_teacher: str | None,
              claim: Any) -> tuple[Any, Any, list[list[Any]]]:
    """The teacher and the self-teacher (each checked against the student's data), and what names them; on
    resume, refused when the run's checkpoint names other ones."""
    from revit.distill import check_fits, load_teacher, unpruned_teacher
    from revit.train_loop import size

    img = int(splits.train[0][0].shape[-1]) if size(splits.train) else 0
    fit = {"num_classes": splits.num_classes, "in_chans": splits.in_chans, "img_size": img}
    t_model = load_teacher(teacher, weights, **fit) if teacher else None
    s_model = unpruned_teacher(self_teacher) if self_teacher else None
    if s_model is not None:
        check_fits(s_model.module, f"--self-teacher {self_teacher}", **fit)
    named = teacher_identity(t_model, s_model, tc)
    if claim.resuming:
        check_resume_teachers(claim.folder, named)
    return t_model, s_model, named


def _student(cfg: ViTConfig | str, data: DataSpec, tc: TrainConfig, init: str | None, claim: Any) -> tuple[Any, Any]:
    """The model to train (a revit ViT, or a timm model for the data's classes and channels) and the data."""
    from revit.data import load_splits
    from revit.distill import create_timm, load_weights
    from revit.models import build_model

    if not isinstance(cfg, ViTConfig):
        splits = load_splits(data, tc)
        model = create_timm(cfg, num_classes=splits.num_classes, in_chans=splits.in_chans)
        if init is not None:
            load_weights(model, init, cfg)
        return model, splits
    model = build_model(cfg, checkpoint=init, drop_path_rate=tc.drop_path_rate)
    if claim.resuming:
        check_resume(claim.folder, cfg, tc, model)
    splits = load_splits(data, tc, model=model)
    splits.check_fits(cfg, data.source)
    return model, splits


def _size_metrics(cfg: ViTConfig | str, model: Any) -> dict[str, Any]:
    """MACs and params of a ViT config; the params and timm name of a timm model (its MACs are not counted)."""
    from revit import counting

    if isinstance(cfg, ViTConfig):
        return {"macs": counting.macs(cfg), "params": counting.params(cfg)}
    return {"macs": None, "params": sum(p.numel() for p in model.parameters()), "timm_model": cfg}


def teacher_identity(teacher: Any, self_teacher: Any, tc: TrainConfig) -> list[list[Any]]:
    """[role, name, SHA-256 of the weights] per teacher of a run: what its checkpoints record and a resume checks."""
    return [[t["role"], t["name"], t["sha256"]] for t in run_teachers(teacher, self_teacher, tc)]


def check_resume_teachers(out: Path, named: list[list[Any]]) -> None:
    """Refuse to continue a run that distilled from other teachers (names or weights' contents); checkpoints
    written before teachers were recorded are taken as they are."""
    from revit.errors import CheckpointError
    from revit.train_loop import load_checkpoint_state

    ckpt = out / "checkpoint.pt"
    if not ckpt.is_file():
        return
    saved = load_checkpoint_state(ckpt).get("teachers")
    if saved is not None and saved != named:
        was = ", ".join(f"{r} {n} ({str(h)[:12]})" for r, n, h in saved) or "none"
        now = ", ".join(f"{r} {n} ({str(h)[:12]})" for r, n, h in named) or "none"
        raise CheckpointError(f"{ckpt}: was written with other teachers (then {was}; now {now})",
                              hint="resume with the same --teacher, --teacher-weights and --self-teacher, or use a "
                                   "new --out")


def check_resume(out: Path, cfg: ViTConfig, tc: TrainConfig, model: Any) -> None:
    """Refuse (before anything is written) to continue a run of another model config or recipe."""
    from revit.errors import CheckpointError
    from revit.recipes import same_recipe
    from revit.train_loop import load_checkpoint_state

    if (out / "config.yaml").is_file():
        old = ViTConfig.load(out / "config.yaml")
        if old != cfg:
            raise CheckpointError(f"{out} holds a training run of another model config "
                                  f"(embed {old.embed_dim}, depth {old.depth}; now embed {cfg.embed_dim}, depth "
                                  f"{cfg.depth})", hint="resume with the same config or use a new --out")
    ckpt = out / "checkpoint.pt"
    if not ckpt.is_file():
        return
    state = load_checkpoint_state(ckpt)
    if not same_recipe(state.get("train_config") or {}, tc):
        raise CheckpointError(f"{ckpt}: was written with another training recipe",
                              hint="resume with the same options or use a new --out")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state["model"].items()}
    if want != got:
        bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        raise CheckpointError(f"{ckpt}: holds weights of another model ({len(bad)} tensor(s) differ, e.g. {bad[0]})",
                              hint="resume with the same config or use a new --out")
