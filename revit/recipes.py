"""Training and pruning recipes as typed, torch-free values (read by the CLI, study specs and the loops).

:class:`TrainConfig` is a training recipe, :class:`PruneConfig` a pruning run's (with its :class:`Schedule`).
Two training recipes: ``basic`` (AdamW, short warm-up, label smoothing, no augmentation on tensor datasets)
and ``deit`` (DeiT's published recipe: AdamW with lr 5e-4 x batch/512, wd 0.05, 5 warm-up epochs,
drop path 0.1, RandAugment, random erasing 0.25, Mixup 0.8 / CutMix 1.0, label smoothing 0.1,
hard-label distillation).  The augmentation fields default to ``None``, meaning "the recipe's
value" (:meth:`TrainConfig.resolved`); :meth:`TrainConfig.for_recipe` also fills the optimizer
and schedule values of a recipe that the caller did not give.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from revit.cost import CostTarget
from revit.errors import ConfigError
from revit.input_checks import short

RECIPES = ("basic", "deit")
AMP_MODES = ("off", "bf16", "fp16")  # as revit.devices.AMP_MODES (this module stays torch-free)
DISTILL_TYPES = ("kl", "hard")
DEIT_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
# fields that say where and how fast a run goes, not what it learns: a checkpoint resumes under other values
RUNTIME_FIELDS = ("device", "amp", "compile", "channels_last", "loader_workers", "eval_batch_size")

# augmentation values of each recipe (what ``None`` in those fields means)
_AUGMENT: dict[str, dict[str, Any]] = {
    "basic": {"mixup": 0.0, "cutmix": 0.0, "random_erase": 0.0, "auto_augment": "none", "distill_type": "kl"},
    "deit": {"mixup": 0.8, "cutmix": 1.0, "random_erase": 0.25, "auto_augment": DEIT_AUTO_AUGMENT,
             "distill_type": "hard"},
}


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe; ``batch_size`` is the global batch per micro-step (split across processes).

    With ``grad_accum`` N, one optimizer step sees N micro-batches (an effective batch of N x
    ``batch_size``), and ``max_steps_per_epoch`` counts optimizer steps.
    """

    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    distill_weight: float = 0.0  # weight of the teacher's term (0: no teacher)
    self_distill_weight: float = 0.0  # weight of the KL to the unpruned model of --self-teacher (0: none)
    ce_weight: float = 1.0  # weight of the cross-entropy
    distill_temperature: float = 1.0
    drop_path_rate: float = 0.0
    grad_clip: float | None = 1.0
    seed: int = 0
    eval_batch_size: int = 512
    max_steps_per_epoch: int | None = None
    # where and how fast (RUNTIME_FIELDS)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "off"  # off | bf16 | fp16 (autocast; a GradScaler for fp16)
    compile: bool = False  # torch.compile the model for training
    channels_last: bool = False
    grad_accum: int = 1  # micro-batches per optimizer step
    loader_workers: int = 0  # DataLoader worker processes (--workers/-j)
    # recipe
    recipe: str = "basic"  # basic | deit
    model_ema: bool = False  # keep an EMA of the weights (timm ModelEmaV3), evaluated and saved too
    model_ema_decay: float = 0.99996
    mixup: float | None = None  # Mixup alpha (None: the recipe's; basic 0, deit 0.8)
    cutmix: float | None = None  # CutMix alpha (basic 0, deit 1.0)
    random_erase: float | None = None  # random-erasing probability (basic 0, deit 0.25)
    auto_augment: str | None = None  # ImageFolder only: timm policy or "none" (basic none, deit rand-m9-mstd0.5-inc1)
    distill_type: str | None = None  # kl | hard (basic kl, deit hard: CE on the teacher's argmax)

    @property
    def workers(self) -> int:
        """DataLoader worker processes (timm's name for ``loader_workers``)."""
        return self.loader_workers

    def __post_init__(self) -> None:
        from revit.input_checks import MAX_LR, check_count, check_loader_workers, check_number

        if self.epochs < 1 or self.batch_size < 1 or not _finite(self.lr) or self.lr <= 0:
            raise ConfigError(f"epochs, batch_size and lr must be positive (got {str(self.epochs)[:20]}, "
                              f"{str(self.batch_size)[:20]}, {str(self.lr)[:20]})")
        check_number(self.lr, "lr", 0, MAX_LR, lo_open=True)
        for k in ("epochs", "batch_size", "grad_accum", "eval_batch_size"):
            check_count(getattr(self, k), k)
        check_number(self.seed, "seed", 0, 2**32 - 1, integer=True)
        if isinstance(self.loader_workers, int) and self.loader_workers > 0:
            check_loader_workers(self.loader_workers, "loader_workers")
        for k in ("min_lr", "weight_decay", "warmup_epochs", "distill_weight", "self_distill_weight", "ce_weight",
                  "drop_path_rate"):
            _check(k, getattr(self, k), 0.0, None)
        _check("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        _check("drop_path_rate", self.drop_path_rate, 0.0, 1.0, high_open=True)
        if not _finite(self.distill_temperature) or self.distill_temperature <= 0:
            raise ConfigError(f"distill_temperature must be a positive number, got {short(self.distill_temperature)}")
        if self.grad_clip is not None and (not _finite(self.grad_clip) or self.grad_clip <= 0):
            raise ConfigError(f"grad_clip must be positive or null, got {short(self.grad_clip)}")
        for k in ("eval_batch_size", "grad_accum"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{k} must be a positive integer, got {short(v)}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError(f"max_steps_per_epoch must be positive or null, got {short(self.max_steps_per_epoch)}")
        if isinstance(self.loader_workers, bool) or not isinstance(self.loader_workers, int) or self.loader_workers < 0:
            raise ConfigError(f"loader_workers must be an integer >= 0, got {short(self.loader_workers)}")
        dev = str(self.device).lower()
        kind, _, idx = dev.partition(":")
        if dev != "auto" and (kind not in ("cpu", "cuda") or (idx and not idx.isdigit())):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {short(self.device)}")
        _one_of("amp", self.amp, AMP_MODES)
        _one_of("recipe", self.recipe, RECIPES)
        if self.distill_type is not None:
            _one_of("distill_type", self.distill_type, DISTILL_TYPES)
        for k in ("compile", "channels_last", "model_ema"):
            if not isinstance(getattr(self, k), bool):
                raise ConfigError(f"{k} must be true or false, got {getattr(self, k)!r}")
        _check("model_ema_decay", self.model_ema_decay, 0.0, 1.0, high_open=True)
        for k in ("mixup", "cutmix"):
            if getattr(self, k) is not None:
                _check(k, getattr(self, k), 0.0, None)
        if self.random_erase is not None:
            _check("random_erase", self.random_erase, 0.0, 1.0)
        if self.auto_augment is not None and not isinstance(self.auto_augment, str):
            raise ConfigError(f"auto_augment must be a timm policy string (e.g. {DEIT_AUTO_AUGMENT}) or 'none', "
                              f"got {short(self.auto_augment)}")

    # --- recipes -----------------------------------------------------------------------------------
    def resolved(self) -> TrainConfig:
        """This config with every ``None`` augmentation field replaced by its recipe's value."""
        return replace(self, **{k: v for k, v in _AUGMENT[self.recipe].items() if getattr(self, k) is None})

    @classmethod
    def for_recipe(cls, recipe: str = "basic", **given: Any) -> TrainConfig:
        """A config of ``recipe`` with the ``given`` fields on top (``None`` values count as not given).

        ``deit`` fills lr = 5e-4 x batch/512 (the images per optimizer step), weight decay 0.05,
        5 warm-up epochs, min lr 1e-5, drop path 0.1, label smoothing 0.1 and no gradient clipping.
        """
        _one_of("recipe", recipe, RECIPES)
        given = {k: v for k, v in given.items() if v is not None}
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(sorted(unknown))}")
        base: dict[str, Any] = {}
        if recipe == "deit":
            batch = int(given.get("batch_size", cls.batch_size)) * int(given.get("grad_accum", 1))
            base = {"lr": 5e-4 * batch / 512, "weight_decay": 0.05, "warmup_epochs": 5.0, "min_lr": 1e-5,
                    "drop_path_rate": 0.1, "label_smoothing": 0.1, "grad_clip": None}
        return cls(**{**base, **given, "recipe": recipe})

    def recipe_dict(self) -> dict[str, Any]:
        """The fields that change what is learnt (all but :data:`RUNTIME_FIELDS`), resolved."""
        d = asdict(self.resolved())
        return {k: v for k, v in d.items() if k not in RUNTIME_FIELDS}


def same_recipe(saved: dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a checkpoint's stored ``train_config`` dict is ``cfg`` up to runtime fields.

    Fields missing from ``saved`` (written before they existed) take their defaults.
    """
    known = {f.name for f in fields(TrainConfig)}
    try:
        old = TrainConfig(**{**asdict(TrainConfig()), **{k: v for k, v in saved.items() if k in known}})
    except (ConfigError, TypeError):
        return False
    return old.recipe_dict() == cfg.recipe_dict()


def _finite(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _check(name: str, v: Any, low: float, high: float | None, high_open: bool = False) -> None:
    ok = _finite(v) and v >= low and (high is None or (v < high if high_open else v <= high))
    if not ok:
        rng = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be a finite number {rng}, got {short(v)}")


def _one_of(name: str, v: Any, allowed: tuple[str, ...]) -> None:
    if v not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {short(v)}")




def check_loss_weights(*, ce_weight: float, kl_weight: float, teacher_weight: float, temperature: float,
                       teacher_type: str, label_smoothing: float) -> None:
    """The checks of a distillation objective's weights (:class:`revit.distill.DistillLoss`, :class:`PruneConfig`)."""
    given = dict(ce_weight=ce_weight, kl_weight=kl_weight, teacher_weight=teacher_weight, temperature=temperature,
                 label_smoothing=label_smoothing)
    for k, v in given.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
            raise ConfigError(f"{k} must be a finite number >= 0, got {short(v)}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive, got {short(temperature)}")
    if teacher_type not in DISTILL_TYPES:
        raise ConfigError(f"teacher_type must be one of {', '.join(DISTILL_TYPES)}, got {short(teacher_type)}")


@dataclass(frozen=True)
class Schedule:
    """When pruning steps happen and which cost each aims at.

    - *by budget* (``total_steps`` given): ``prune_steps`` steps, one every ``interval`` calls, the
      k-th aiming at ``base - k/K (base - target)``, so the target is reached by the end of the
      budget; if it is not (minimum widths, rounding), pruning goes on every interval until it is.
    - *fixed* (NViT's): a step every ``interval`` calls that removes ``per_step`` units, or units
      until the cost fell by ``step_fraction`` of the base cost, until the target.
    """

    interval: int
    prune_steps: int | None = None  # K, by budget
    per_step: int | None = None
    step_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ConfigError(f"interval must be >= 1, got {self.interval}")
        modes = sum(x is not None for x in (self.prune_steps, self.per_step, self.step_fraction))
        if modes != 1:
            raise ConfigError("a schedule needs exactly one of prune_steps (by budget), per_step or step_fraction")
        if self.prune_steps is not None and self.prune_steps < 1:
            raise ConfigError(f"prune_steps must be >= 1, got {self.prune_steps}")
        if self.per_step is not None and self.per_step < 1:
            raise ConfigError(f"per_step must be >= 1, got {self.per_step}")
        if self.step_fraction is not None and not 0 < self.step_fraction < 1:
            raise ConfigError(f"step_fraction must be in (0, 1), got {self.step_fraction}")

    @classmethod
    def fixed(cls, interval: int | None = None, per_step: int | None = None,
              step_fraction: float | None = None) -> Schedule:
        """NViT's schedule: a step every ``interval`` (100) calls removing ``per_step`` (2) units, or
        units worth ``step_fraction`` of the base cost, until the target."""
        if per_step is not None and step_fraction is not None:
            raise ConfigError("give at most one of per_step and step_fraction")
        if per_step is None and step_fraction is None:
            per_step = 2
        return cls(interval=100 if interval is None else interval, per_step=per_step, step_fraction=step_fraction)

    @classmethod
    def by_budget(cls, total_steps: int, prune_steps: int | None = None, min_interval: int = 2,
                  max_prune_steps: int = 32) -> Schedule:
        """Spread the removals over ``total_steps`` calls: K steps, at least ``min_interval`` apart."""
        if total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
        k = prune_steps or max(1, min(max_prune_steps, total_steps // min_interval))
        k = min(k, total_steps)
        return cls(interval=max(1, total_steps // k), prune_steps=k)

    @property
    def budget(self) -> int | None:
        """Calls by which the target should be reached (by-budget schedules)."""
        return None if self.prune_steps is None else self.prune_steps * self.interval

    def due(self, calls: int) -> bool:
        """Whether a pruning step happens after the ``calls``-th call."""
        return calls > 0 and calls % self.interval == 0

    def goal(self, k: int, start_cost: float, base_cost: float, target_cost: float) -> tuple[float, int | None]:
        """(goal cost, max units) of the ``k``-th pruning step (1-based), which starts at ``start_cost``."""
        if self.prune_steps is not None:
            frac = min(1.0, k / self.prune_steps)
            return max(target_cost, base_cost - frac * (base_cost - target_cost)), None
        if self.step_fraction is not None:
            return max(target_cost, start_cost - self.step_fraction * base_cost), None
        return target_cost, self.per_step

    def describe(self) -> str:
        if self.prune_steps is not None:
            return f"{self.prune_steps} steps, one every {self.interval} batches (by budget)"
        what = f"{self.per_step} units" if self.per_step is not None else f"{self.step_fraction:g} of the base cost"
        return f"a step every {self.interval} batches removing {what}, until the target"


# how a pruning step ranks its candidates (revit.prune.policy): by score (NViT), or by score per unit of the
# target's cost saved (the greedy of a knapsack)
RANKINGS = ("nvit", "knapsack")
# settings written only when they differ from these defaults (earlier runs' settings lack them)
WHEN_SET: Mapping[str, Any] = {"criterion_options": {}, "keep_depth": False, "ranking": "nvit"}


@dataclass(frozen=True)
class PruneConfig:
    """A pruning run's recipe; ``target`` is what it stops at (``CostTarget.macs(0.5)``: half the base MACs).

    The schedule is *by budget* (``epochs``: the removals are spread so the target is reached by
    the end of that many epochs) unless ``interval``/``per_step``/``step_fraction`` give NViT's fixed
    schedule (a step every ``interval`` batches removing ``per_step`` units, until the target):
    :meth:`schedule` builds it.  :meth:`settings` is its flat, JSON form (trace header, state).
    """

    target: CostTarget = CostTarget.macs(0.5)
    criterion: str = "hessian"
    criterion_options: Mapping[str, Any] = field(default_factory=dict)  # the criterion's declared options, by name
    epochs: float = 1.0
    prune_steps: int | None = None  # by budget: number of pruning steps (None: automatic)
    interval: int | None = None
    per_step: int | None = None
    step_fraction: float | None = None
    eta: float = 1.0  # scale-free penalty weight (0: no penalty)
    ema: float = 0.9
    keep_depth: bool = False  # forbid removing a block's attention, its MLP or the block (widths only)
    ranking: str = "nvit"  # nvit: by score; knapsack: by score per unit of the target's cost saved (RANKINGS)
    batch_size: int = 128  # global batch
    lr: float = 1e-4
    weight_decay: float = 0.05
    kl_weight: float = 1.0
    ce_weight: float = 1.0
    teacher_weight: float = 1.0  # weight of the CNN teacher's term (when a teacher is given)
    teacher_type: str = "kl"  # kl | hard (DeiT: CE on the teacher's argmax)
    temperature: float = 3.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    granularity: str = "auto"
    eval_size: int = 1000  # held-out images scored after every step (0: never)
    max_steps: int = 10000
    seed: int = 0
    device: str = "auto"
    amp: str = "off"
    workers: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.target, CostTarget) or self.target.ratio is None:
            raise ConfigError("target must be a relative CostTarget (CostTarget.macs(0.5), CostTarget.latency(0.6)), "
                              f"got {self.target!r}")
        for k, v in self.settings().items():
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{k} must be a finite number, got {v}")
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0 or self.max_steps < 1:
            raise ConfigError("epochs, batch_size, lr and max_steps must be positive")
        if self.fixed_schedule:
            self.schedule(1)  # the fixed schedule's own checks
        if self.eta < 0 or not 0 <= self.ema < 1:
            raise ConfigError(f"eta must be >= 0 and ema in [0, 1) (got {self.eta}, {self.ema})")
        if not isinstance(self.keep_depth, bool):
            raise ConfigError(f"keep_depth must be true or false, got {short(self.keep_depth)}")
        if self.eval_size < 0 or self.workers < 0:
            raise ConfigError("eval_size and workers must be >= 0")
        _one_of("amp", self.amp, AMP_MODES)
        _one_of("ranking", self.ranking, RANKINGS)
        if not isinstance(self.criterion, str) or not self.criterion:
            raise ConfigError(f"criterion must be a registered criterion's name, got {short(self.criterion)}")
        if self.criterion_options:
            # an unknown name, key or value is one line; the options are kept parsed ("0.5" -> 0.5). The
            # criteria live with torch: only a recipe that names options imports them
            from revit.prune.criteria import check_criterion

            parsed = check_criterion(self.criterion, self.criterion_options)
            object.__setattr__(self, "criterion_options", {k: parsed[k] for k in self.criterion_options})
        check_loss_weights(ce_weight=self.ce_weight, kl_weight=self.kl_weight, teacher_weight=self.teacher_weight,
                           temperature=self.temperature, teacher_type=self.teacher_type,
                           label_smoothing=self.label_smoothing)
        from revit.input_checks import MAX_LR, MAX_SEED, check_count, check_loader_workers, check_number

        check_number(self.lr, "lr", 0, MAX_LR, lo_open=True)
        check_number(self.seed, "seed", 0, MAX_SEED, integer=True)
        for k in ("batch_size", "max_steps", "eval_size", "prune_steps", "interval", "per_step"):
            if getattr(self, k):
                check_count(getattr(self, k), k)
        if self.workers:
            check_loader_workers(self.workers, "workers")

    @property
    def fixed_schedule(self) -> bool:
        return self.interval is not None or self.per_step is not None or self.step_fraction is not None

    def schedule(self, batches_per_epoch: int) -> Schedule:
        """NViT's fixed schedule when asked for, else by budget over ``epochs`` of ``batches_per_epoch``."""
        if self.fixed_schedule:
            return Schedule.fixed(self.interval, self.per_step, self.step_fraction)
        return Schedule.by_budget(max(1, round(self.epochs * batches_per_epoch)), self.prune_steps)

    def loss(self) -> Any:
        """The objective of the training between pruning steps (CE, KL to the unpruned model, teacher): a
        :class:`revit.distill.DistillLoss` (imports torch)."""
        from revit.distill import DistillLoss

        return DistillLoss(ce_weight=self.ce_weight, kl_weight=self.kl_weight, teacher_weight=self.teacher_weight,
                           temperature=self.temperature, teacher_type=self.teacher_type,
                           label_smoothing=self.label_smoothing)

    def bound(self, table: Any = None) -> PruneConfig:
        """This recipe with its target's cost model built (:meth:`CostTarget.bind`, ``table`` for a latency
        target); nothing is validated again."""
        out = copy.copy(self)
        object.__setattr__(out, "target", self.target.bind(table))
        return out

    def settings(self) -> dict[str, Any]:
        """The recipe as flat JSON values (trace header, state), the target as ``target`` (its ratio) and
        ``target_kind``: the form every earlier run's settings have, so those runs still resume
        (:meth:`revit.cost.CostTarget.from_dict` reads it back); criterion options, keep_depth and ranking only
        when not their defaults (:data:`WHEN_SET`)."""
        flat = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"target": self.target.ratio, "target_kind": self.target.kind,
                **{k: v for k, v in flat.items() if k != "target" and (k not in WHEN_SET or v != WHEN_SET[k])}}


__all__ = ["AMP_MODES", "DEIT_AUTO_AUGMENT", "DISTILL_TYPES", "RANKINGS", "RECIPES", "RUNTIME_FIELDS", "WHEN_SET",
           "PruneConfig", "Schedule",
           "TrainConfig", "check_loss_weights", "same_recipe"]
