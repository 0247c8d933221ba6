"""Training recipes as typed, torch-free values (read by the CLI, study specs and the training loop).

Two recipes: ``basic`` (AdamW, short warm-up, label smoothing, no augmentation on tensor datasets)
and ``deit`` (DeiT's published recipe: AdamW with lr 5e-4 x batch/512, wd 0.05, 5 warm-up epochs,
drop path 0.1, RandAugment, random erasing 0.25, Mixup 0.8 / CutMix 1.0, label smoothing 0.1,
hard-label distillation).  The augmentation fields default to ``None``, meaning "the recipe's
value" (:meth:`TrainConfig.resolved`); :meth:`TrainConfig.for_recipe` also fills the optimizer
and schedule values of a recipe that the caller did not give.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from revit.errors import ConfigError
from revit.validation import short

RECIPES = ("basic", "deit")
AMP_MODES = ("off", "bf16", "fp16")  # as revit.runtime.AMP_MODES (this module stays torch-free)
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
        from revit.validation import MAX_LR, check_count, check_loader_workers, check_number

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


__all__ = ["AMP_MODES", "DEIT_AUTO_AUGMENT", "RECIPES", "RUNTIME_FIELDS", "TrainConfig", "same_recipe"]
