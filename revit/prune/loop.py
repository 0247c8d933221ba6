"""A whole pruning run into a folder: ``GlobalPruner`` inside revit's fine-tuning loop.

Between pruning steps the weights train with KL distillation from the frozen unpruned model plus
cross-entropy (NVIT_SPEC.md section 4) and, given one, a CNN teacher's term as DeiT's (NViT's whole
objective, :class:`revit.distill.DistillLoss`), on any device, with optional autocast, under ``torchrun``.
The run writes ``trace.jsonl`` (a line per pruning step), ``state.pt`` (everything needed to
resume, saved atomically right after the start and after every pruning step, device-agnostic),
and at the end ``pruned.yaml``, ``pruned.safetensors``, ``metrics.json`` and ``plots/``.  The folder is claimed
with :func:`revit.run_folders.claim_run` (kind ``prune``) before anything is written.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from revit import counting
from revit._io import RESUME_HINT, atomic_write_text, dumps_json
from revit.config import ViTConfig
from revit.cost import MACS, LatencyTableLike
from revit.devices import (
    GlobalBatchSampler,
    autocast,
    grad_scaler,
    init_distributed,
    resolve_device,
    size,
    to_cpu,
    to_device,
)
from revit.distill import Teacher
from revit.errors import CheckpointError, ConfigError, RevitError
from revit.models.checkpoint import save_torch, save_weights
from revit.prune.global_pruner import GlobalPruner
from revit.recipes import WHEN_SET, PruneConfig
from revit.run_folders import Claim
from revit.trace import Trace, TraceWriter


class PruneError(RevitError):
    """The pruning run cannot go on (non-finite loss, ...); the last good state is kept."""


@dataclass
class PruneResult:
    """What a run produced: the dense model, its config and the headline numbers."""

    model: nn.Module
    config: ViTConfig
    metrics: dict[str, Any] = field(default_factory=dict)
    steps: int = 0


class _Skip(Sampler[list[int]]):
    """The batches of a :class:`GlobalBatchSampler` epoch after the first ``skip`` (a resumed epoch)."""

    def __init__(self, inner: GlobalBatchSampler, skip: int) -> None:
        self.inner, self.skip = inner, skip

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)

    def __iter__(self) -> Iterator[list[int]]:
        for j, b in enumerate(self.inner):
            if j >= self.skip:
                yield b


class PruneRun:
    """One pruning run of a revit model into ``out_dir``; build it, then call :meth:`run`.

    ``teacher`` (:func:`revit.distill.load_teacher`: a CNN, as DeiT's) adds its term, weight
    ``cfg.teacher_weight``, to the KL to the unpruned model; the trace header names both teachers.
    """

    def __init__(self, model: nn.Module, train_ds: Dataset[Any], val_ds: Dataset[Any] | None, cfg: PruneConfig,
                 out_dir: str | os.PathLike[str], *, table: LatencyTableLike | None = None, resume: bool = False,
                 progress: bool = True, test_ds: Dataset[Any] | None = None, overwrite: bool = False,
                 teacher: Teacher | None = None, claim: Claim | None = None) -> None:
        from revit.run_folders import claim_run

        self._t0, self.prior_seconds = time.perf_counter(), 0.0
        # the folder's claim (reads only): the caller's when it claimed already (revit.workflows.prune)
        self.claim = claim or claim_run(out_dir, "prune", resume=resume, overwrite=overwrite)
        self.device = resolve_device(cfg.device)
        self.rank, self.world = init_distributed(self.device)
        self.cfg, self.progress, self.cnn, self.loss = cfg, progress, teacher, cfg.loss()
        self.train_ds, self.val_ds, self.test_ds = train_ds, val_ds, test_ds
        self.out = Path(out_dir)
        self.trace_path, self.state_path = self.out / "trace.jsonl", self.out / "state.pt"
        self.teacher_path = self.out / "teacher.safetensors"
        self.per_epoch = len(GlobalBatchSampler(size(train_ds), cfg.batch_size, cfg.seed, 0, self.world))
        if self.per_epoch == 0:
            raise ConfigError(f"training set of {size(train_ds)} images is smaller than one batch of {cfg.batch_size}")
        model = model.to(self.device)
        if teacher is not None:
            teacher.module.to(self.device).eval().requires_grad_(False)
        self.pruner = GlobalPruner(model, target=cfg.target, schedule=cfg.schedule(self.per_epoch), table=table,
                                   criterion=cfg.criterion, eta=cfg.eta, ema=cfg.ema, granularity=cfg.granularity,
                                   seed=cfg.seed, evaluator=self._evaluate, criterion_options=cfg.criterion_options,
                                   keep_depth=cfg.keep_depth, ranking=cfg.ranking)
        self.model = self.pruner.model
        self.base = self.pruner.base
        from revit.train_loop import TrainConfig, make_optimizer

        self.opt = make_optimizer(self.model, TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay))
        self.scaler = grad_scaler(self.device, cfg.amp)
        self.finished = False
        self._barrier()  # every rank checked the folder before rank 0 writes
        try:
            if self.claim.resuming and self.state_path.is_file():
                self._load_state()
            else:  # new, overwrite, or a run killed before its first state save: (re)start from step 0
                self._start()
            self.teacher = self._teacher()
        except BaseException:
            if self.rank == 0:
                self.claim.abandon()  # a new folder holding only its marker (a full disk) is removed again
            raise

    # --- setup and persistence -----------------------------------------------------------------
    def _start(self) -> None:
        """Write the teacher, the trace header with step 0 and a first state (resumable from here on)."""
        if self.rank == 0:
            self.claim.begin()
            save_weights(self.model, self.teacher_path, hint=RESUME_HINT)
            self._write_trace()
        self._save_state()
        self._barrier()

    def _write_trace(self) -> None:
        tr = self.pruner.trace
        header = {**self.pruner.header(settings=self._settings()), "teachers": self.teachers()}
        lines = [dumps_json(header, "the trace header")] + [dumps_json(s.to_dict(), "a trace step", nonfinite="null")
                                                             for s in tr.steps]
        atomic_write_text(self.trace_path, "\n".join(lines) + "\n")

    def _settings(self) -> dict[str, Any]:
        """The recipe and the CNN teacher's identity (name, hash of its weights): what a resume must match."""
        t = self.cnn
        return {**self.cfg.settings(), "teacher": t.name if t else None, "teacher_sha256": t.sha256 if t else None}

    def teachers(self) -> list[dict[str, Any]]:
        """The run's teachers and their weights, as the trace header and metrics.json name them."""
        out = [{"role": "unpruned model", "name": self.base.name or "base config", "kind": "unpruned",
                "weights": self.teacher_path.name, "weight": self.cfg.kl_weight}]
        if self.cnn is not None:
            out.append(self.cnn.describe("teacher", self.cfg.teacher_weight))
        return out

    def _teacher(self) -> nn.Module:
        """The frozen unpruned model, read back from the run folder (so a resumed run has the same one)."""
        from revit.models import build_model
        from revit.safe_load import load_safetensors

        self._barrier()
        teacher = build_model(self.base).to(self.device)
        try:
            teacher.load_state_dict(load_safetensors(self.teacher_path, "teacher weights"))
        except RuntimeError as e:
            raise CheckpointError(f"{self.teacher_path}: holds weights of another model "
                                  f"({str(e).splitlines()[0][:160]})", hint="use a new --out") from None
        return teacher.eval().requires_grad_(False)

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _state(self) -> dict[str, Any]:
        return {"model": to_cpu(self.model.state_dict()), "optimizer": to_cpu(self.opt.state_dict()),
                "pruner": self.pruner.state_dict(), "rng": torch.get_rng_state(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "settings": self._settings(), "base_config": self.base.to_dict(), "finished": self.finished,
                "seconds": self.elapsed()}

    def elapsed(self) -> float:
        """Wall seconds of the whole run: every earlier segment (to its last state save) and this one."""
        return self.prior_seconds + time.perf_counter() - self._t0

    def _save_state(self) -> None:
        if self.rank != 0:
            return
        state = self._state()
        save_torch(state, self.state_path, hint=RESUME_HINT)

    def _load_state(self) -> None:
        from revit.safe_load import torch_load

        st = torch_load(self.state_path, "pruning state")  # weights_only: a crafted pickle is refused, never run
        want = {"model": dict, "optimizer": dict, "pruner": dict, "rng": torch.Tensor, "settings": dict,
                "base_config": dict}
        if not isinstance(st, dict) or any(not isinstance(st.get(k), t) for k, t in want.items()):
            raise CheckpointError(f"{self.state_path}: not a revit pruning state (needs {', '.join(want)})")
        try:
            self._restore(st)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{self.state_path}: damaged pruning state ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:160] if str(e) else ''})", hint="use a new --out") \
                from None
        if self.rank == 0:  # the trace as of the saved state (drops lines written after it)
            self.claim.begin()
            self._write_trace()
        self._barrier()

    def _restore(self, st: dict[str, Any]) -> None:
        """Model, optimizer, pruner, scaler and RNG from a checked state (another recipe or model is refused)."""
        same = {**WHEN_SET, **{k: v for k, v in self._settings().items() if k not in ("device", "workers")}}
        old = {**PruneConfig().settings(), "teacher": None, "teacher_sha256": None, **WHEN_SET,
               **st["settings"]}  # older runs; settings at their defaults are left out (WHEN_SET)
        if {k: old.get(k) for k in same} != same:
            diff = [k for k, v in same.items() if old.get(k) != v]
            raise CheckpointError(f"{self.state_path}: written with other settings ({', '.join(diff)}); "
                                  "resume with the same options or use a new --out")
        if st["base_config"] != self.base.to_dict():
            raise CheckpointError(f"{self.state_path}: written for another model; use a new --out")
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])  # moves the moments to the parameters' device
        self.pruner.load_state_dict(st["pruner"])
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.finished = bool(st.get("finished", False))
        self.prior_seconds = float(st.get("seconds", 0.0))
        torch.set_rng_state(st["rng"])

    # --- training --------------------------------------------------------------------------------
    def _evaluate(self, model: nn.Module) -> float | None:
        from revit.train_loop import evaluate

        ds, limit = self.val_ds, self.cfg.eval_size
        if ds is None or limit == 0 or size(ds) == 0:
            return None
        return evaluate(model, Subset(ds, list(range(min(limit, size(ds))))))

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, skip = divmod(self.pruner.calls, self.per_epoch)
        while True:
            sampler = GlobalBatchSampler(size(self.train_ds), self.cfg.batch_size, self.cfg.seed, self.rank,
                                         self.world)
            sampler.set_epoch(epoch)
            dl = DataLoader(self.train_ds, batch_sampler=_Skip(sampler, skip), num_workers=self.cfg.workers,
                            pin_memory=self.device.type == "cuda")
            yield from dl
            epoch, skip = epoch + 1, 0

    def _train_batch(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = to_device((x, y), self.device)
        with autocast(self.device, self.cfg.amp):
            logits = net(x)
            with torch.no_grad():
                t_logits = self.teacher(x)
                c_logits = self.cnn.module(x).float() if self.cnn is not None and self.cfg.teacher_weight else None
        logits = tuple(v.float() for v in logits) if isinstance(logits, tuple) else logits.float()
        loss = self.loss(logits, y, base_logits=t_logits.float(), teacher_logits=c_logits)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        self.pruner.accumulate(loss.detach())  # after unscale_: true gradients, all-reduced under DDP
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        return loss.detach()

    def _check_loss(self, loss: torch.Tensor, batch: int) -> float:
        """The loss as a float (a device sync), or a :class:`PruneError` if it is not finite.

        Checked every few batches and before every pruning step, not per batch, so the GPU is not
        synchronised on every step; the state saved at the last pruning step stays the last good one."""
        value = float(loss)
        if not math.isfinite(value):
            raise PruneError(f"the loss became {value} by batch {batch} (after step "
                             f"{self.pruner.steps}); the last good state (step {self.pruner.steps}) is kept in "
                             f"{self.state_path}: lower the learning rate and rerun with --resume")
        return value

    def run(self) -> PruneResult:
        """Prune until the target is met, then rebuild, export and return the dense model."""
        from tqdm import tqdm

        from revit.train_loop import set_distilled_training

        self.model.train()
        set_distilled_training(self.model, self.cnn is not None)  # the teacher trains a DeiT distillation token
        net: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        sched = self.pruner.schedule
        bar = tqdm(desc="prune", disable=not self.progress or self.rank != 0, dynamic_ncols=True, unit="batch",
                   total=sched.budget, initial=self.pruner.calls, mininterval=1.0)
        batches = self._batches()
        while not self.finished:
            x, y = next(batches)
            loss = self._train_batch(net, x, y)
            calls = self.pruner.calls + 1
            checked = calls % 5 == 0 or sched.due(calls)
            value = self._check_loss(loss, calls) if checked else None
            pruned = self.pruner.step()
            bar.update()
            if pruned:
                self._after_prune_step()
            if value is not None or self.finished:
                bar.set_postfix_str(self._status(self._check_loss(loss, calls) if value is None else value))
            if self.pruner.steps >= self.cfg.max_steps and not self.finished:
                from revit.errors import BudgetError

                raise BudgetError(f"stopped after max_steps={self.cfg.max_steps} steps before reaching the target")
        bar.close()
        return self.finish(self.elapsed())

    def _status(self, loss: float) -> str:
        p = self.pruner
        cfg = p.current_config()
        left = f"/{p.schedule.prune_steps}" if p.schedule.prune_steps else ""
        parts = [f"step {p.steps}{left}: {p.cost.format(p.cost.cost(cfg))}, target {p.cost.format(p.target_cost)}"]
        if p.cost.name != MACS:
            parts.append(f"{counting.format_count(counting.macs(cfg))} MACs")
        if p.latency is not None and p.latency is not p.cost:
            parts.append(f"latency {p.latency.format(p.latency.cost(cfg))}")
        return ", ".join([*parts, f"loss {loss:.3f}"])

    def _after_prune_step(self) -> None:
        self.finished = self.pruner.done
        if self.rank == 0:
            TraceWriter(self.trace_path).append(self.pruner.steps_log[-1])
        self._save_state()
        self._barrier()

    # --- the end -------------------------------------------------------------------------------
    def finish(self, seconds: float = 0.0) -> PruneResult:
        """Rebuild the dense model, check it against the masked one, export files and plots."""
        from revit.train_loop import evaluate, set_distilled_training

        set_distilled_training(self.model, False)
        self.model.eval()
        dense, _ = self.pruner.export()
        dense.eval()
        gap = self._dense_gap(dense)
        p, cfg = self.pruner, self.pruner.current_config()
        metrics: dict[str, Any] = {
            "schema": "revit/prune-metrics/v1", "steps": p.steps, "batches": p.calls,
            "criterion": self.cfg.criterion, "target": p.target_record(),
            "schedule": p.schedule.describe(), "eta": self.cfg.eta, "eta_abs": p.eta_abs, "cost_unit": p.cost.unit,
            "penalty": p.penalty.name,
            "base": {MACS: counting.macs(self.base), "params": counting.params(self.base), "cost": p.base_cost},
            "pruned": {MACS: counting.macs(cfg), "params": counting.params(cfg), "cost": p.cost.cost(cfg)},
            "macs_ratio": counting.macs(cfg) / counting.macs(self.base), "cost_ratio": p.cost.cost(cfg) / p.base_cost,
            "dense_vs_masked_max_abs_diff": gap, "seconds": seconds, "world_size": self.world,
            "device": str(self.device), "amp": self.cfg.amp, "teachers": self.teachers(),
            "ce_weight": self.cfg.ce_weight,
        }
        gone = p.steps_log[-1].removed_parts(self.base)
        if any(gone.values()):  # the base's block indices (a width-only run's metrics are as before)
            metrics["removed"] = gone
        if self.val_ds is not None and size(self.val_ds):
            metrics["val_accuracy"] = evaluate(dense, self.val_ds)
        if self.test_ds is not None and size(self.test_ds):
            metrics["test_accuracy"] = evaluate(dense, self.test_ds)
        if self.rank == 0:
            from revit.prune.plots import plot_trace

            cfg.save(self.out / "pruned.yaml", derived=counting.derived(cfg))
            save_weights(dense, self.out / "pruned.safetensors", hint=RESUME_HINT)
            plot_trace(self.trace_path, self.out / "plots")
            atomic_write_text(self.out / "metrics.json",
                              dumps_json(metrics, "metrics.json", nonfinite="null", indent=1))
            from revit.models.hub import HUB_DIR, save_pretrained
            from revit.prune.card import prune_card

            save_pretrained(dense, self.out / HUB_DIR, card=prune_card(self.out, metrics, self.base),
                            table=getattr(p.latency, "table", None), overwrite=True)  # timm's hub format + card
            self.claim.finish()
        return PruneResult(model=dense, config=cfg, metrics=metrics, steps=p.steps)

    @torch.no_grad()
    def _dense_gap(self, dense: nn.Module) -> float | None:
        ds = self.val_ds if self.val_ds is not None and size(self.val_ds) else self.train_ds
        x = torch.stack([ds[i][0] for i in range(min(64, size(ds)))]).to(self.device)
        return float((self.model(x) - dense(x)).abs().max())

    @property
    def trace(self) -> Trace:
        return Trace.load(self.trace_path)


def prune(model: nn.Module, train_ds: Dataset[Any], val_ds: Dataset[Any] | None, cfg: PruneConfig,
          out_dir: str | os.PathLike[str], *, table: LatencyTableLike | None = None, resume: bool = False,
          progress: bool = True, test_ds: Dataset[Any] | None = None, overwrite: bool = False) -> PruneResult:
    """Prune ``model`` to ``cfg.target`` (of its MACs, or its latency with ``table``) into ``out_dir``."""
    return PruneRun(model, train_ds, val_ds, cfg, out_dir, table=table, resume=resume, progress=progress,
                    test_ds=test_ds, overwrite=overwrite).run()
