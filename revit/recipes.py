"""Training recipes as typed, torch-free values (read by the CLI, study specs and the training loop)."""

from __future__ import annotations

from dataclasses import dataclass

from revit.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe; ``batch_size`` is the global batch (split across processes)."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    distill_weight: float = 0.0  # weight of the KL term (0: no teacher)
    distill_temperature: float = 1.0
    drop_path_rate: float = 0.0
    grad_clip: float | None = 1.0
    seed: int = 0
    eval_batch_size: int = 512
    max_steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"epochs, batch_size and lr must be positive (got {self.epochs}, {self.batch_size}, "
                              f"{self.lr})")
