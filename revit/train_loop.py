"""The one training loop: AdamW, timm cosine schedule with warm-up, label smoothing or Mixup/CutMix,
optional distillation from a frozen teacher (KL, or DeiT's hard labels), per-epoch checkpoints with
resume, JSON-lines log, DDP; on any device, with mixed precision and gradient accumulation.

Under ``torchrun`` each process takes its slice of every *global* batch (same order as one
process), and DDP averages gradients, so a run's loss does not depend on the process count
(Mixup/CutMix, which mix within each process's slice, are the exception).  Checkpoints hold CPU
tensors and load with ``map_location="cpu"`` on every device, so a run resumes on another device.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from revit._io import RESUME_HINT, append_text, atomic_write_text, dumps_json
from revit.devices import (
    GlobalBatchSampler,
    autocast,
    dist_info,
    grad_scaler,
    init_distributed,
    make_loader,
    resolve_device,
    size,
    to_cpu,
    to_device,
)
from revit.distill import DistillLoss, distillation_loss
from revit.errors import CheckpointError, ConfigError
from revit.models.checkpoint import save_torch
from revit.recipes import TrainConfig, same_recipe

__all__ = ["GlobalBatchSampler", "TrainConfig", "TrainResult", "dist_info", "distillation_loss", "evaluate",
           "init_distributed", "load_checkpoint_state", "loader", "make_optimizer", "set_distilled_training", "size",
           "to_cpu", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Per-epoch records of a run, and its EMA model when ``model_ema`` was on."""

    history: list[dict[str, Any]] = field(default_factory=list)
    ema: nn.Module | None = None
    prior_seconds: float = 0.0  # wall time of the earlier segments of a resumed run (to their last checkpoint)

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def loader(ds: Dataset[Any], batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
           rank: int = 0, world: int = 1) -> DataLoader[Any]:
    """A single-process-loading DataLoader of the global batches (see :func:`revit.devices.make_loader`)."""
    return make_loader(ds, batch_size, seed, rank=rank, world=world, shuffle=shuffle, drop_last=drop_last)


@torch.no_grad()
def evaluate(model: nn.Module, ds: Dataset[Any], batch_size: int = 512, *, amp: str = "off",
             workers: int = 0) -> float:
    """Top-1 accuracy (in [0, 1]) of ``model`` on ``ds``, on the model's device; sharded and all-reduced
    under DDP."""
    rank, world = dist_info()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    dl = make_loader(ds, batch_size * world, shuffle=False, drop_last=False, rank=rank, world=world,
                     workers=workers, device=device)
    for x, y in dl:
        x, y = to_device((x, y), device)
        with autocast(device, amp):
            out = model(x)
        correct[0] += (out.argmax(-1) == y).sum()
        correct[1] += len(y)
    if world > 1:
        dist.all_reduce(correct)
    model.train(was_training)
    return float(correct[0]) / max(float(correct[1]), 1.0)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (timm's ``create_optimizer_v2``): no weight decay on biases, norms and ``no_weight_decay`` names."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)


def load_checkpoint_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A training checkpoint's contents on the CPU, whatever device wrote it (the one load path).

    Models and optimizers then copy the tensors to their own device in ``load_state_dict``.
    """
    from revit.safe_load import torch_load

    state = torch_load(path, "training checkpoint")  # weights_only: a crafted pickle is refused, never run
    want = {"model": dict, "optimizer": dict, "epoch": int, "history": list, "rng": torch.Tensor}
    if not isinstance(state, dict) or any(not isinstance(state.get(k), t) for k, t in want.items()):
        raise CheckpointError(f"{path}: not a revit training checkpoint (needs {', '.join(want)})")
    return state


def set_distilled_training(model: nn.Module, on: bool) -> bool:
    """Make a distilled model (DeiT dist token) return (class, distillation) logits in training."""
    setter = getattr(model, "set_distilled_training", None)
    if callable(setter):
        setter(on)
        return True
    if getattr(model, "dist_token", None) is not None and hasattr(model, "distilled_training"):
        object.__setattr__(model, "distilled_training", on)
        return True
    return False


def _num_classes(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if not isinstance(n, int) or n < 1:
        raise ConfigError("Mixup/CutMix need a classifier with a num_classes attribute")
    return n


class _Trainer:
    """One run of :func:`train`: its loader, loss, optimizer, schedule, EMA and DDP wrapper, and its epochs."""

    def __init__(self, model: nn.Module, train_ds: Dataset[Any], cfg: TrainConfig, teacher: nn.Module | None,
                 progress: bool, self_teacher: nn.Module | None = None) -> None:
        self.model, self.cfg, self.teacher, self.progress = model, cfg, teacher, progress
        self.self_teacher = self_teacher
        self.extra: dict[str, Any] = {}  # more entries of every checkpoint (what names the teachers)
        self.t_start = time.perf_counter()
        self.r = cfg.resolved()
        self.device = resolve_device(cfg.device)
        self.rank, self.world = init_distributed(self.device)
        torch.manual_seed(cfg.seed)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self._setup_data(train_ds)
        self._setup_optimizer()
        self._setup_models()
        self.result = TrainResult()

    def _setup_data(self, train_ds: Dataset[Any]) -> None:
        """The loader of global batches, the steps per epoch, Mixup/CutMix and the criterion."""
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        cfg, r, world = self.cfg, self.r, self.world
        self.dl = make_loader(train_ds, cfg.batch_size, cfg.seed, rank=self.rank, world=world,
                              workers=cfg.loader_workers, device=self.device)
        self.accum = cfg.grad_accum
        self.steps_per_epoch = len(self.dl) // self.accum
        if cfg.max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"training set of {size(train_ds)} images is smaller than one optimizer step of "
                              f"{cfg.batch_size} x {self.accum} images")
        self.mixup: Any = None
        if r.mixup or r.cutmix:
            if (cfg.batch_size // world) % 2:
                raise ConfigError(f"Mixup/CutMix need an even batch per process, got {cfg.batch_size // world}")
            self.mixup = Mixup(mixup_alpha=float(r.mixup or 0.0), cutmix_alpha=float(r.cutmix or 0.0),
                               label_smoothing=cfg.label_smoothing, num_classes=_num_classes(self.model))
        self.criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
        if self.mixup is not None:
            self.criterion = SoftTargetCrossEntropy()
        else:
            def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                return F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
            self.criterion = criterion

    def _setup_optimizer(self) -> None:
        """AdamW, the gradient scaler of mixed precision and the per-step cosine schedule."""
        from timm.scheduler import CosineLRScheduler

        cfg, steps = self.cfg, self.steps_per_epoch
        self.opt = make_optimizer(self.model, cfg)
        self.scaler = grad_scaler(self.device, cfg.amp)
        self.sched = CosineLRScheduler(self.opt, t_initial=cfg.epochs * steps, lr_min=cfg.min_lr,
                                       warmup_t=int(cfg.warmup_epochs * steps), warmup_lr_init=cfg.lr * 0.01,
                                       t_in_epochs=False)

    def _setup_models(self) -> None:
        """The frozen teacher, the distilled head switch, the EMA copy and the DDP/compiled forward."""
        cfg, model, device = self.cfg, self.model, self.device
        self.distill = self.teacher is not None and cfg.distill_weight > 0
        self.self_distill = self.self_teacher is not None and cfg.self_distill_weight > 0
        self.terms = DistillLoss(kl_weight=cfg.self_distill_weight, teacher_weight=cfg.distill_weight,
                                 temperature=cfg.distill_temperature, teacher_type=str(self.r.distill_type))
        for t in (self.teacher, self.self_teacher):
            if t is not None:
                t.to(device).eval().requires_grad_(False)
        self.two_heads = self.distill and set_distilled_training(model, True)
        self.ema: Any = None
        if cfg.model_ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=True)
        self.ddp_model: nn.Module = model
        if self.world > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward: Callable[..., Any] = torch.compile(self.ddp_model) if cfg.compile else self.ddp_model

    def start(self, out: Path | None, resume: bool) -> int:
        """The first epoch to run: after the checkpoint's with ``resume``, else 0 (with a fresh log)."""
        ckpt = out / "checkpoint.pt" if out is not None else None
        if resume and ckpt is not None and ckpt.is_file():
            epoch = self._load(ckpt)
            if self.rank == 0:  # the log as of the checkpoint (drops a line written after it by a killed run)
                atomic_write_text(ckpt.with_name("log.jsonl"),
                                  "".join(dumps_json(r, "log.jsonl", nonfinite="null") + "\n"
                                          for r in self.result.history))
            return epoch
        if out is not None and self.rank == 0:  # no checkpoint, no finished epoch: a fresh log (each epoch once)
            out.mkdir(parents=True, exist_ok=True)
            if (out / "log.jsonl").exists() or (out / "log.jsonl").is_symlink():
                (out / "log.jsonl").unlink()
        return 0

    def _load(self, ckpt: Path) -> int:
        """Restore model, optimizer, scaler, EMA, history and RNG from ``ckpt``; the next epoch."""
        state = load_checkpoint_state(ckpt)
        try:
            return self._restore(ckpt, state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt}: damaged training checkpoint ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:160] if str(e) else ''})", hint="use a new --out") \
                from None

    def _restore(self, ckpt: Path, state: dict[str, Any]) -> int:
        if not same_recipe(state.get("train_config") or {}, self.cfg):
            raise CheckpointError(f"{ckpt}: was written with another training recipe; use a new --out")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("model_ema") is not None:
            self.ema.module.load_state_dict(state["model_ema"])
        self.result.history = state["history"]
        self.result.prior_seconds = float(state.get("seconds", sum(r["seconds"] for r in state["history"])))
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        return int(state["epoch"]) + 1

    def loss_of(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of one micro-batch: the criterion, plus the teachers' terms (:class:`DistillLoss`): the
        teacher on the distillation token of a DeiT-style model, the unpruned model's KL on the class head."""
        cfg = self.cfg
        with autocast(self.device, cfg.amp):
            logits = self.forward(x)
            cls_out = logits[0] if isinstance(logits, tuple) else logits
            loss = self.criterion(cls_out, target)
            if cfg.ce_weight != 1.0:
                loss = cfg.ce_weight * loss
            if self.distill or self.self_distill:
                with torch.no_grad():
                    t_logits = self.teacher(x) if self.distill and self.teacher is not None else None
                    b_logits = self.self_teacher(x) if self.self_distill and self.self_teacher is not None else None
                loss = loss + self.terms.terms(logits, b_logits, t_logits)
        return loss

    def step(self, batches: Any, total: torch.Tensor) -> torch.Tensor:
        """One optimizer step over ``accum`` micro-batches (summed into ``total``); the last micro-batch's loss."""
        opt, scaler, accum = self.opt, self.scaler, self.accum
        opt.zero_grad(set_to_none=True)
        for k in range(accum):
            x, y = to_device(next(batches), self.device, self.cfg.channels_last)
            target = y
            if self.mixup is not None:
                x, target = self.mixup(x, y)
            no_sync = self.world > 1 and k < accum - 1
            with self.ddp_model.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[operator]
                loss = self.loss_of(x, target)
                scaled = loss / accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            total[0] += loss.detach().double() * len(y)
            total[1] += len(y)
        if scaler is not None:
            scaler.unscale_(opt)
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return loss

    def epoch(self, epoch: int) -> torch.Tensor:
        """Train one epoch; the all-reduced (loss sum, image count)."""
        from tqdm import tqdm

        cfg, steps = self.cfg, self.steps_per_epoch
        show = self.progress and self.rank == 0
        self.model.train()
        self.dl.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
        np.random.seed((cfg.seed * 1_000_003 + epoch) % 2**32)  # timm's Mixup draws from numpy
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False,
                   dynamic_ncols=True)
        batches = iter(self.dl)
        for i in range(steps):
            loss = self.step(batches, total)
            step = epoch * steps + i + 1
            if self.ema is not None:
                self.ema.update(self.model, step=step)
            self.sched.step_update(step)
            if show and (i % 10 == 0 or i == steps - 1):
                bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update()
        bar.close()
        del batches
        if self.world > 1:
            dist.all_reduce(total)
        return total

    def record(self, epoch: int, total: torch.Tensor, t0: float, val_ds: Dataset[Any] | None) -> dict[str, Any]:
        """The epoch's record (loss, steps, lr, seconds, val accuracy of the model and its EMA), appended."""
        cfg = self.cfg
        record: dict[str, Any] = {
            "epoch": epoch + 1, "train_loss": float(total[0] / total[1]), "steps": self.steps_per_epoch,
            "lr": self.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
        }
        if val_ds is not None and size(val_ds) > 0:
            record["val_acc"] = evaluate(self.model, val_ds, cfg.eval_batch_size, amp=cfg.amp,
                                         workers=cfg.loader_workers)
            if self.ema is not None:
                record["val_acc_ema"] = evaluate(self.ema.module, val_ds, cfg.eval_batch_size, amp=cfg.amp,
                                                 workers=cfg.loader_workers)
        self.result.history.append(record)
        return record

    def save(self, out: Path, epoch: int, record: dict[str, Any]) -> None:
        """Append ``record`` to ``log.jsonl`` and write ``checkpoint.pt`` (atomic, CPU tensors)."""
        append_text(out / "log.jsonl", dumps_json(record, "log.jsonl", nonfinite="null") + "\n")
        ema, scaler = self.ema, self.scaler
        save_torch(to_cpu({
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "epoch": epoch,
            "history": self.result.history, "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "model_ema": ema.module.state_dict() if ema is not None else None,
            "seconds": self.result.prior_seconds + time.perf_counter() - self.t_start,
            "train_config": asdict(self.cfg), **self.extra}), out / "checkpoint.pt", hint=RESUME_HINT)


def train(model: nn.Module, train_ds: Dataset[Any], val_ds: Dataset[Any] | None, cfg: TrainConfig,
          out_dir: str | os.PathLike[str] | None = None, teacher: nn.Module | None = None, resume: bool = False,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, progress: bool = True,
          self_teacher: nn.Module | None = None, checkpoint_extra: dict[str, Any] | None = None) -> TrainResult:
    """Train ``model`` in place on ``cfg.device``; returns per-epoch records (loss, val accuracy, lr, seconds).

    ``teacher`` (weight ``cfg.distill_weight``) and ``self_teacher`` (the unpruned model of a pruned one,
    KL with weight ``cfg.self_distill_weight``) are frozen teachers (:class:`revit.distill.DistillLoss`).
    The model (and the teachers) stay on that device afterwards.  With ``out_dir``: ``checkpoint.pt``
    after every epoch (atomic, CPU tensors) and ``log.jsonl``; ``resume`` continues from the last
    completed epoch (on any device); ``checkpoint_extra`` entries are saved in every checkpoint (plain
    data: the caller checks them on resume).  ``on_epoch`` may raise to stop (e.g. an Optuna prune).
    """
    t = _Trainer(model, train_ds, cfg, teacher, progress, self_teacher)
    t.extra = dict(checkpoint_extra or {})
    out = Path(out_dir) if out_dir is not None else None
    for epoch in range(t.start(out, resume), cfg.epochs):
        t0 = time.perf_counter()
        total = t.epoch(epoch)
        record = t.record(epoch, total, t0, val_ds)
        if t.rank == 0:
            if out is not None:
                t.save(out, epoch, record)
            if progress:
                msg = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
                log.info("%s", msg)
        if on_epoch is not None:
            on_epoch(record)
    if t.two_heads:
        set_distilled_training(model, False)
    result = t.result
    result.ema = t.ema.module if t.ema is not None else None
    if out is not None and t.rank == 0:
        atomic_write_text(out / "history.json", dumps_json(result.history, "history.json", nonfinite="null", indent=1))
    return result
