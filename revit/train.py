"""The one training loop: AdamW, timm cosine schedule with warm-up, label smoothing, optional KL
distillation from a frozen teacher, per-epoch checkpoints with resume, JSON-lines log, DDP.

Under ``torchrun`` each process takes its slice of every *global* batch (same order as one
process), and DDP averages gradients, so a run's loss does not depend on the process count.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from revit._io import atomic_write_text
from revit.errors import CheckpointError, ConfigError
from revit.recipes import TrainConfig
from revit.runtime import GlobalBatchSampler, dist_info, init_distributed, make_loader, size

__all__ = ["GlobalBatchSampler", "TrainConfig", "TrainResult", "dist_info", "distillation_loss", "evaluate",
           "init_distributed", "loader", "make_optimizer", "size", "train"]


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def loader(ds: Dataset[Any], batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
           rank: int = 0, world: int = 1) -> DataLoader[Any]:
    """A single-process-loading DataLoader of the global batches (see :func:`revit.runtime.make_loader`)."""
    return make_loader(ds, batch_size, seed, rank=rank, world=world, shuffle=shuffle, drop_last=drop_last)


@torch.no_grad()
def evaluate(model: nn.Module, ds: Dataset[Any], batch_size: int = 512) -> float:
    """Top-1 accuracy (in [0, 1]) of ``model`` on ``ds``; sharded and all-reduced under DDP."""
    rank, world = dist_info()
    was_training = model.training
    model.eval()
    correct = torch.zeros(2, dtype=torch.float64)
    dl = loader(ds, batch_size * world, shuffle=False, drop_last=False, rank=rank, world=world)
    device = next(model.parameters()).device
    for x, y in dl:
        out = model(x.to(device))
        correct[0] += (out.argmax(-1).cpu() == y).sum().item()
        correct[1] += len(y)
    if world > 1:
        dist.all_reduce(correct)
    model.train(was_training)
    return float(correct[0]) / max(float(correct[1]), 1.0)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, times T^2 (Hinton), mean over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                    log_target=True) * t * t


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases, norms and embeddings/tokens (as timm)."""
    skip: set[str] = getattr(model, "no_weight_decay", lambda: set())()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip or name.endswith(".bias") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(model: nn.Module, train_ds: Dataset[Any], val_ds: Dataset[Any] | None, cfg: TrainConfig,
          out_dir: str | os.PathLike[str] | None = None, teacher: nn.Module | None = None, resume: bool = False,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, progress: bool = True) -> TrainResult:
    """Train ``model`` in place; returns per-epoch records (loss, val accuracy, lr, seconds).

    With ``out_dir``: ``checkpoint.pt`` after every epoch (atomic) and ``log.jsonl``; ``resume``
    continues from the last completed epoch.  ``on_epoch`` may raise to stop (e.g. an Optuna prune).
    """
    from timm.scheduler import CosineLRScheduler
    from tqdm import tqdm

    rank, world = init_distributed()
    torch.manual_seed(cfg.seed)
    out = Path(out_dir) if out_dir is not None else None
    dl = loader(train_ds, cfg.batch_size, cfg.seed, rank=rank, world=world)
    steps_per_epoch = len(dl) if cfg.max_steps_per_epoch is None else min(len(dl), cfg.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ConfigError(f"training set of {size(train_ds)} images is smaller than one batch of {cfg.batch_size}")
    opt = make_optimizer(model, cfg)
    sched = CosineLRScheduler(opt, t_initial=cfg.epochs * steps_per_epoch, lr_min=cfg.min_lr,
                              warmup_t=int(cfg.warmup_epochs * steps_per_epoch), warmup_lr_init=cfg.lr * 0.01,
                              t_in_epochs=False)
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    result, start_epoch = TrainResult(), 0
    ckpt = out / "checkpoint.pt" if out is not None else None
    if resume and ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state.get("train_config") != asdict(cfg):
            raise CheckpointError(f"{ckpt}: was written with another training recipe; use a new --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, result.history = state["epoch"] + 1, state["history"]
        torch.set_rng_state(state["rng"])
    elif out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if (out / "log.jsonl").exists() and not resume:
            (out / "log.jsonl").unlink()
    device = next(model.parameters()).device
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        dl.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
        total, count = torch.zeros(2, dtype=torch.float64), 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or rank != 0,
                   leave=False, dynamic_ncols=True)
        for i, (x, y) in enumerate(dl):
            if i >= steps_per_epoch:
                break
            x, y = x.to(device), y.to(device)
            logits = ddp_model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if teacher is not None and cfg.distill_weight > 0:
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = loss + cfg.distill_weight * distillation_loss(logits, t_logits, cfg.distill_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step = epoch * steps_per_epoch + i + 1
            sched.step_update(step)
            total += torch.tensor([loss.item() * len(y), len(y)], dtype=torch.float64)
            count += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update()
        bar.close()
        if world > 1:
            dist.all_reduce(total)
        record: dict[str, Any] = {
            "epoch": epoch + 1, "train_loss": float(total[0] / total[1]), "steps": count,
            "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
        }
        if val_ds is not None and size(val_ds) > 0:
            record["val_acc"] = evaluate(model, val_ds, cfg.eval_batch_size)
        result.history.append(record)
        if rank == 0:
            if out is not None and ckpt is not None:
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                _atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                                    "history": result.history, "rng": torch.get_rng_state(),
                                    "train_config": asdict(cfg)}, ckpt)
            if progress:
                msg = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
                print(msg, flush=True)
        if on_epoch is not None:
            on_epoch(record)
    if out is not None and rank == 0:
        atomic_write_text(out / "history.json", json.dumps(result.history, indent=1))
    return result
