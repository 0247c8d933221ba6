"""The global pruning loop (NVIT_SPEC.md section 4): train, score, remove the globally cheapest units.

Every ``interval`` batches the accumulated scores are smoothed (EMA), each (kind, block) family
offers its ``unit`` lowest-scoring alive indices as one candidate, the candidates are ranked
globally by ``saliency - eta * saving`` and the lowest are removed (``per_step`` of them, or until
the cost fell by ``step_fraction`` of the base cost), until the MACs or latency target is met.
Between steps the weights train with KL distillation from the frozen unpruned model plus
cross-entropy.  After each step the trace gets a line and the whole state is saved atomically,
so ``resume`` continues a killed run and reproduces the uninterrupted trace.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from revit import counting
from revit._io import atomic_write_text
from revit.config import ViTConfig
from revit.errors import BudgetError, CheckpointError, ConfigError, RevitError
from revit.prune.cost import CostModel, LatencyCost, LatencyTableLike, MacsCost, min_config
from revit.prune.criteria import CRITERIA, ScoreAccumulator, Scores, build_criterion
from revit.prune.masking import Masks, rebuild_dense
from revit.prune.structure import KINDS, Structure, derive_structure
from revit.trace import Trace, TraceStep, TraceWriter

GRANULARITY: dict[str, dict[str, int]] = {
    "standard": {"embed_dim": 16, "heads": 2, "qk_dim": 8, "v_dim": 8, "mlp_dim": 16},
    "micro": {"embed_dim": 8, "heads": 1, "qk_dim": 4, "v_dim": 4, "mlp_dim": 8},
    "one": {k: 1 for k in KINDS},
}


class PruneError(RevitError):
    """The pruning run cannot go on (non-finite loss, ...); the last good state is kept."""


def resolve_granularity(spec: str | dict[str, int], img_size: int) -> dict[str, int]:
    """``auto`` (micro for images <= 64 px, else standard), a preset name, ``E,H,Q,V,M`` or a mapping."""
    if isinstance(spec, dict):
        unknown = set(spec) - set(KINDS)
        if unknown:
            raise ConfigError(f"granularity: unknown kind(s) {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}")
        return {**GRANULARITY["one"], **{k: int(v) for k, v in spec.items()}}
    if spec == "auto":
        return dict(GRANULARITY["micro" if img_size <= 64 else "standard"])
    if spec in GRANULARITY:
        return dict(GRANULARITY[spec])
    parts = spec.split(",")
    if len(parts) == 5 and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return dict(zip(KINDS, (int(p) for p in parts), strict=False))
    raise ConfigError(f"granularity {spec!r}: use auto, {', '.join(GRANULARITY)} or five steps E,H,QK,V,MLP "
                      "such as 16,2,8,8,16")


@dataclass(frozen=True)
class PruneConfig:
    """A pruning recipe; ``target`` is a fraction of the base MACs (or latency, with a table)."""

    target: float = 0.5
    target_kind: str = "macs"  # "macs" or "latency" (needs a table)
    criterion: str = "hessian"
    interval: int = 100  # batches between pruning steps
    per_step: int | None = 2  # units removed per step (or None with step_fraction)
    step_fraction: float | None = None  # remove units until the cost fell by this fraction of the base
    eta: float = 1.0  # scale-free penalty weight (0: no penalty)
    ema: float = 0.9
    batch_size: int = 128  # global batch
    lr: float = 1e-4
    weight_decay: float = 0.05
    kl_weight: float = 1.0
    ce_weight: float = 1.0
    temperature: float = 3.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    granularity: str | dict[str, int] = "auto"
    eval_size: int = 1000  # held-out images scored after every step (0: never)
    max_steps: int = 10000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.target < 1:
            raise ConfigError(f"target must be a fraction in (0, 1) of the base cost, got {self.target}")
        if (self.per_step is None) == (self.step_fraction is None):
            raise ConfigError("give exactly one of per_step (units per step) and step_fraction")
        if self.per_step is not None and self.per_step < 1:
            raise ConfigError(f"per_step must be >= 1, got {self.per_step}")
        if self.step_fraction is not None and not 0 < self.step_fraction < 1:
            raise ConfigError(f"step_fraction must be in (0, 1), got {self.step_fraction}")
        if self.interval < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("interval, batch_size and lr must be positive")
        if self.eta < 0 or not 0 <= self.ema < 1:
            raise ConfigError(f"eta must be >= 0 and ema in [0, 1) (got {self.eta}, {self.ema})")
        if self.target_kind not in ("macs", "latency"):
            raise ConfigError(f"target_kind must be macs or latency, got {self.target_kind!r}")
        if self.criterion not in CRITERIA:
            CRITERIA.get(self.criterion)  # raises with the known names


@dataclass
class PruneResult:
    """What a run produced: the dense model, its config and the headline numbers."""

    model: nn.Module
    config: ViTConfig
    metrics: dict[str, Any] = field(default_factory=dict)
    steps: int = 0


@dataclass
class _Candidate:
    score: float
    saliency: float
    saving: float
    gid: int
    idx: torch.Tensor


def _fetch(ds: Dataset[Any], idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch; fast path for a Subset of a TensorDataset."""
    from torch.utils.data import Subset, TensorDataset, default_collate

    if isinstance(ds, Subset) and isinstance(ds.dataset, TensorDataset):
        rows = torch.as_tensor([ds.indices[i] for i in idx])
        x, y = ds.dataset.tensors[0][rows], ds.dataset.tensors[1][rows]
        return x, y
    if isinstance(ds, TensorDataset):
        rows = torch.as_tensor(idx)
        return ds.tensors[0][rows], ds.tensors[1][rows]
    x, y = default_collate([ds[i] for i in idx])
    return x, y


class Pruner:
    """One pruning run over a model; see the module docstring.  Build it, then call :meth:`run`."""

    def __init__(self, model: nn.Module, train_ds: Dataset[Any], val_ds: Dataset[Any] | None, cfg: PruneConfig,
                 out_dir: str | os.PathLike[str], *, table: LatencyTableLike | None = None, resume: bool = False,
                 progress: bool = True, test_ds: Dataset[Any] | None = None) -> None:
        from revit.train import init_distributed

        self.rank, self.world = init_distributed()
        self.model, self.cfg = model, cfg
        self.train_ds, self.val_ds, self.test_ds = train_ds, val_ds, test_ds
        self.out = Path(out_dir)
        self.progress = progress
        self.base: ViTConfig = model.config  # type: ignore[assignment]
        if cfg.target_kind == "latency" and table is None:
            raise ConfigError("a latency target needs a latency table (--table)")
        # the penalty uses the table when there is one; the target is MACs or latency
        self.penalty: CostModel = LatencyCost(table) if table is not None else MacsCost()
        self.cost: CostModel = self.penalty if cfg.target_kind == "latency" or table is None else MacsCost()
        self.latency: CostModel | None = self.penalty if table is not None else None
        if table is not None:
            from revit.errors import TableRangeError

            try:
                self.penalty.cost(self.base)
            except TableRangeError as e:
                raise TableRangeError(f"the latency table does not cover the model: {e}") from None
        self.unit = resolve_granularity(cfg.granularity, self.base.img_size)
        self.minimum = dict(self.unit)
        if table is not None and hasattr(table, "ranges"):
            # never prune below what the table measured: a prediction there would be extrapolated
            for kind, (lo, _) in table.ranges().items():
                if kind in self.minimum:
                    step = self.unit[kind]
                    self.minimum[kind] = max(self.minimum[kind], int(math.ceil(lo / step)) * step)
        self.base_cost = self.cost.cost(self.base)
        self.target_cost = cfg.target * self.base_cost
        floor = self.cost.cost(min_config(self.base, self.minimum))
        if floor > self.target_cost:
            mins = ", ".join(f"{k} {v}" for k, v in self.minimum.items())
            raise BudgetError(f"target {cfg.target:g} x base {self.cost.name} = {self.cost.format(self.target_cost)} "
                              f"cannot be reached: the minimum widths ({mins}) "
                              f"still cost {self.cost.format(floor)} ({floor / self.base_cost:.3f} of the base); "
                              "raise the target or lower the granularity")
        self.structure: Structure = derive_structure(model)
        self.masks = Masks(self.structure)
        self.masks.install(model)
        self.criterion = build_criterion(cfg.criterion, self.structure, cfg.seed)
        self.acc = ScoreAccumulator(cfg.ema)
        from revit.train import TrainConfig, make_optimizer

        self.opt = make_optimizer(model, TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay))
        self.step, self.batch = 0, 0
        self.eta_abs: float | None = None
        self.loss_sum = torch.zeros(2, dtype=torch.float64)
        self.trace_path, self.state_path = self.out / "trace.jsonl", self.out / "state.pt"
        self.teacher_path = self.out / "teacher.safetensors"
        self.finished = False
        if resume and self.state_path.is_file():
            self._load_state()
        else:
            if self.rank == 0 and self.trace_path.exists() and self.trace_path.stat().st_size > 0:
                raise ConfigError(f"{self.out} already holds a pruning run; pass resume=True (--resume) or a new --out")
            self._start()
        self.teacher = self._teacher()

    # --- setup and persistence -----------------------------------------------------------------
    def _header(self) -> dict[str, Any]:
        return {"base_config": self.base.to_dict(), "target": {"kind": self.cost.name, "ratio": self.cfg.target,
                                                              "value": self.target_cost, "base": self.base_cost},
                "criterion": self.cfg.criterion, "penalty": self.penalty.name, "settings": asdict(self.cfg),
                "granularity": self.unit,
                "world_size": self.world, "macs_convention": counting.CONVENTIONS["nvit"]}

    def _start(self) -> None:
        if self.rank == 0:
            from safetensors.torch import save_file

            self.out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()},
                      str(self.teacher_path))
            TraceWriter(self.trace_path, self._header())
            acc = self._evaluate()
            self._append_trace(loss=None, acc=acc, extra={"batches": 0, "removed": []})
        else:
            self._evaluate()
        self._barrier()

    def _teacher(self) -> nn.Module:
        """The frozen unpruned model, read back from the run folder (so a resumed run has the same one)."""
        from safetensors.torch import load_file

        from revit.models import build_model

        self._barrier()
        teacher = build_model(self.base).to(next(self.model.parameters()).device)
        teacher.load_state_dict(load_file(str(self.teacher_path)))
        return teacher.eval().requires_grad_(False)

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "alive": self.masks.alive,
                "acc": self.acc.state_dict(), "criterion": self.criterion.state_dict(), "step": self.step,
                "batch": self.batch, "eta_abs": self.eta_abs, "rng": torch.get_rng_state(),
                "settings": asdict(self.cfg), "base_config": self.base.to_dict(), "finished": self.finished}

    def _save_state(self) -> None:
        if self.rank != 0:
            return
        tmp = self.state_path.with_name(f".{self.state_path.name}.tmp")
        torch.save(self._state(), tmp)
        os.replace(tmp, self.state_path)

    def _load_state(self) -> None:
        st = torch.load(self.state_path, map_location="cpu", weights_only=False)
        if st["settings"] != asdict(self.cfg):
            diff = [k for k, v in asdict(self.cfg).items() if st["settings"].get(k) != v]
            raise CheckpointError(f"{self.state_path}: written with other settings ({', '.join(diff)}); "
                                  "resume with the same options or use a new --out")
        if st["base_config"] != self.base.to_dict():
            raise CheckpointError(f"{self.state_path}: written for another model; use a new --out")
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.masks.alive = {int(k): v.clone() for k, v in st["alive"].items()}
        self.masks.refresh()
        self.acc.load_state_dict(st["acc"])
        self.criterion.load_state_dict(st["criterion"])
        self.step, self.batch, self.eta_abs = st["step"], st["batch"], st["eta_abs"]
        self.finished = bool(st.get("finished", False))
        torch.set_rng_state(st["rng"])
        if self.rank == 0:  # drop trace lines written after the saved state (killed in between)
            tr = Trace.load(self.trace_path)
            keep = [s for s in tr.steps if s.step <= self.step]
            lines = [json.dumps(tr.header)] + [json.dumps(s.to_dict()) for s in keep]
            atomic_write_text(self.trace_path, "\n".join(lines) + "\n")
        self._barrier()

    # --- one step ------------------------------------------------------------------------------
    def current_config(self) -> ViTConfig:
        return self.masks.config(self.base)

    def _evaluate(self, ds: Dataset[Any] | None = None, limit: int | None = None) -> float | None:
        from torch.utils.data import Subset

        from revit.train import evaluate

        ds = ds if ds is not None else self.val_ds
        limit = self.cfg.eval_size if limit is None else limit
        if ds is None or limit == 0 or len(ds) == 0:  # type: ignore[arg-type]
            return None
        n = min(limit, len(ds))  # type: ignore[arg-type]
        return evaluate(self.model, Subset(ds, list(range(n))))

    def _append_trace(self, loss: float | None, acc: float | None, extra: dict[str, Any]) -> None:
        cfg = self.current_config()
        lat = self.latency.cost(cfg) if self.latency is not None else None
        step = TraceStep(step=self.step, embed_dim=cfg.embed_dim, blocks=cfg.blocks, macs=counting.macs(cfg),
                         params=counting.params(cfg), latency=lat, loss=loss, accuracy=acc, extra=extra)
        TraceWriter(self.trace_path).append(step)

    def _candidates(self, scores: Scores, cfg: ViTConfig) -> list[_Candidate]:
        out = []
        for g in self.structure.groups:
            alive = self.masks.alive[g.gid]
            u = self.unit[g.kind]
            n = int(alive.sum())
            if n - u < min(self.minimum[g.kind], g.size):
                continue  # at its minimum: no candidate, no penalty
            s = scores[g.gid].clone()
            s[~alive] = math.inf
            order = torch.argsort(s, stable=True)[:u]
            sal = float(s[order].sum())
            sav = self.penalty.saving(cfg, g.kind, g.block, u)
            out.append(_Candidate(sal, sal, sav, g.gid, order))
        return out

    def _choose(self, scores: Scores) -> list[dict[str, Any]]:
        """Remove units globally; returns what was removed (decided on rank 0, broadcast)."""
        removed: list[dict[str, Any]] = []
        start_cost = self.cost.cost(self.current_config())
        while True:
            cfg = self.current_config()
            cost = self.cost.cost(cfg)
            if cost <= self.target_cost:
                break
            if self.cfg.per_step is not None and len(removed) >= self.cfg.per_step:
                break
            if self.cfg.step_fraction is not None and removed and \
                    start_cost - cost >= self.cfg.step_fraction * self.base_cost:
                break
            cands = self._candidates(scores, cfg)
            if not cands:
                raise BudgetError("every width is at its minimum before the target was reached")
            if self.eta_abs is None:
                self.eta_abs = self._calibrate_eta(cands)
            eta = self.eta_abs
            for c in cands:
                c.score = c.saliency - eta * c.saving
            best = min(cands, key=lambda c: (c.score, c.gid))
            self.masks.alive[best.gid][best.idx] = False
            g = self.structure.groups[best.gid]
            removed.append({"group": g.name, "units": int(best.idx.numel()), "indices": best.idx.tolist(),
                            "saliency": best.saliency, "saving": best.saving, "score": best.score})
        self.masks.refresh()
        return removed

    def _calibrate_eta(self, cands: list[_Candidate]) -> float:
        if self.cfg.eta == 0:
            return 0.0
        sal = torch.tensor([c.saliency for c in cands], dtype=torch.float64)
        sav = torch.tensor([c.saving for c in cands if c.saving > 0], dtype=torch.float64)
        if sav.numel() == 0 or float(sal.median()) <= 0:
            return 0.0
        eta_abs = self.cfg.eta * float(sal.median()) / float(sav.median())
        if self.rank == 0:
            from revit.cli._common import info

            info(f"eta = {self.cfg.eta:g} (scale-free) -> absolute eta = {eta_abs:.4g} saliency per "
                 f"{self.penalty.unit} saved (median saliency {float(sal.median()):.4g}, median saving "
                 f"{float(sav.median()):.4g} {self.penalty.unit})")
        return eta_abs

    def _broadcast_alive(self) -> None:
        if self.world == 1:
            return
        for gid in sorted(self.masks.alive):
            t = self.masks.alive[gid].to(torch.uint8)
            dist.broadcast(t, 0)
            self.masks.alive[gid] = t.bool()
        self.masks.refresh()

    # --- the loop ------------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from revit.train import GlobalBatchSampler

        sampler = GlobalBatchSampler(len(self.train_ds), self.cfg.batch_size, self.cfg.seed,  # type: ignore[arg-type]
                                     self.rank, self.world)
        per_epoch = len(sampler)
        if per_epoch == 0:
            raise ConfigError(f"training set of {len(self.train_ds)} images is smaller than one batch of "  # type: ignore[arg-type]
                              f"{self.cfg.batch_size}")
        epoch, skip = divmod(self.batch, per_epoch)
        while True:
            sampler.set_epoch(epoch)
            for j, idx in enumerate(sampler):
                if j >= skip:
                    yield _fetch(self.train_ds, idx)
            epoch, skip = epoch + 1, 0

    def _train_batch(self, ddp: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        from revit.train import distillation_loss

        device = next(self.model.parameters()).device
        x, y = x.to(device), y.to(device)
        logits = ddp(x)
        with torch.no_grad():
            t_logits = self.teacher(x)
        loss = self.cfg.ce_weight * F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        loss = loss + self.cfg.kl_weight * distillation_loss(logits, t_logits, self.cfg.temperature)
        if not torch.isfinite(loss):
            raise PruneError(f"the loss became {loss.item()} at batch {self.batch + 1} (after step {self.step}); "
                             f"the last good state (step {self.step}) is kept in {self.state_path}: lower the "
                             "learning rate and rerun with --resume")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.masks.zero_grads(self.model)
        params = dict(self.model.named_parameters())
        grads = {k: p.grad for k, p in params.items() if p.grad is not None}  # all-reduced under DDP
        self.acc.add(self.criterion(params, grads))
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.masks.apply(self.model)
        self.loss_sum += torch.tensor([loss.item() * len(y), len(y)], dtype=torch.float64)
        return float(loss.item())

    def run(self) -> PruneResult:
        """Prune until the target is met, then rebuild, export and return the dense model."""
        from tqdm import tqdm

        self.model.train()
        ddp: nn.Module = self.model
        if self.world > 1:
            ddp = nn.parallel.DistributedDataParallel(self.model)
        self.masks.apply(self.model)
        bar = tqdm(desc="prune", disable=not self.progress or self.rank != 0, dynamic_ncols=True, unit="batch",
                   initial=self.batch, mininterval=1.0)
        t0 = time.perf_counter()
        batches = self._batches()
        last_loss = float("nan")
        while not self.finished:
            x, y = next(batches)
            last_loss = self._train_batch(ddp, x, y)
            self.batch += 1
            bar.update()
            if self.batch % self.cfg.interval == 0:
                self._prune_step()
            cfg = self.current_config()
            if self.batch % 5 == 0 or self.finished:
                lat = f" latency {self.latency.format(self.latency.cost(cfg))}" if self.latency is not None else ""
                bar.set_postfix_str(f"step {self.step} {self.cost.name} {self.cost.format(self.cost.cost(cfg))}"
                                    f" -> target {self.cost.format(self.target_cost)}{lat} MACs "
                                    f"{counting.format_count(counting.macs(cfg))} loss {last_loss:.3f}")
            if self.step >= self.cfg.max_steps and not self.finished:
                raise BudgetError(f"stopped after max_steps={self.cfg.max_steps} steps before reaching the target")
        bar.close()
        return self.finish(time.perf_counter() - t0)

    def _prune_step(self) -> None:
        scores = self.acc.end_interval()
        for gid, s in scores.items():
            if not bool(torch.isfinite(s).all()):
                raise PruneError(f"non-finite saliency in {self.structure.groups[gid].name} at step {self.step + 1}; "
                                 f"the last good state (step {self.step}) is kept in {self.state_path}")
        removed = self._choose(scores) if self.rank == 0 else []
        if self.world > 1:
            box = [removed, self.eta_abs]
            dist.broadcast_object_list(box, 0)
            removed, self.eta_abs = box  # type: ignore[assignment]
        self._broadcast_alive()
        self.masks.apply(self.model)
        self.step += 1
        loss = self.loss_sum.clone()
        if self.world > 1:
            dist.all_reduce(loss)
        self.loss_sum.zero_()
        acc = self._evaluate()
        self.finished = self.cost.cost(self.current_config()) <= self.target_cost
        if self.rank == 0:
            self._append_trace(loss=float(loss[0]) / max(float(loss[1]), 1.0), acc=acc,
                               extra={"batches": self.batch, "eta_abs": self.eta_abs, "removed": removed,
                                      self.cost.name: self.cost.cost(self.current_config())})
        self._save_state()
        self._barrier()

    # --- the end -------------------------------------------------------------------------------
    def finish(self, seconds: float = 0.0) -> PruneResult:
        """Rebuild the dense model, check it against the masked one, export files and plots."""
        self.model.eval()
        dense = rebuild_dense(self.model, self.structure, self.masks.alive).eval()
        gap = self._dense_gap(dense)
        cfg = self.current_config()
        metrics: dict[str, Any] = {
            "schema": "revit/prune-metrics/v1", "steps": self.step, "batches": self.batch,
            "criterion": self.cfg.criterion, "target": {"kind": self.cost.name, "ratio": self.cfg.target},
            "eta": self.cfg.eta, "eta_abs": self.eta_abs, "cost_unit": self.cost.unit, "penalty": self.penalty.name,
            "base": {"macs": counting.macs(self.base), "params": counting.params(self.base), "cost": self.base_cost},
            "pruned": {"macs": counting.macs(cfg), "params": counting.params(cfg), "cost": self.cost.cost(cfg)},
            "macs_ratio": counting.macs(cfg) / counting.macs(self.base),
            "cost_ratio": self.cost.cost(cfg) / self.base_cost,
            "dense_vs_masked_max_abs_diff": gap, "seconds": seconds, "world_size": self.world,
        }
        self.masks.remove()
        from revit.train import evaluate

        val_limit = len(self.val_ds) if self.val_ds is not None else 0  # type: ignore[arg-type]
        if self.val_ds is not None and val_limit:
            metrics["val_accuracy"] = evaluate(dense, self.val_ds)
        if self.test_ds is not None and len(self.test_ds):  # type: ignore[arg-type]
            metrics["test_accuracy"] = evaluate(dense, self.test_ds)
        self.masks.install(self.model)
        if self.rank == 0:
            from safetensors.torch import save_file

            from revit.prune.plots import plot_trace

            cfg.save(self.out / "pruned.yaml")
            sd = {k: v.detach().contiguous().cpu() for k, v in dense.state_dict().items()}
            tmp = self.out / ".pruned.safetensors.tmp"
            save_file(sd, str(tmp))
            os.replace(tmp, self.out / "pruned.safetensors")
            atomic_write_text(self.out / "metrics.json", json.dumps(metrics, indent=1))
            plot_trace(self.trace_path, self.out / "plots")
        return PruneResult(model=dense, config=cfg, metrics=metrics, steps=self.step)

    @torch.no_grad()
    def _dense_gap(self, dense: nn.Module) -> float | None:
        ds = self.val_ds if self.val_ds is not None and len(self.val_ds) else self.train_ds  # type: ignore[arg-type]
        n = min(64, len(ds))  # type: ignore[arg-type]
        x, _ = _fetch(ds, list(range(n)))
        x = x.to(next(self.model.parameters()).device)
        return float((self.model(x) - dense(x)).abs().max())


def prune(model: nn.Module, train_ds: Dataset[Any], val_ds: Dataset[Any] | None, cfg: PruneConfig,
          out_dir: str | os.PathLike[str], *, table: LatencyTableLike | None = None, resume: bool = False,
          progress: bool = True, test_ds: Dataset[Any] | None = None) -> PruneResult:
    """Prune ``model`` (a ReViT) to ``cfg.target`` of its MACs (or latency with ``table``); see :class:`Pruner`."""
    return Pruner(model, train_ds, val_ds, cfg, out_dir, table=table, resume=resume, progress=progress,
                  test_ds=test_ds).run()
