"""Which data and how much, as a typed, torch-free value (read by the CLI, study specs and the loaders)."""

from __future__ import annotations

from dataclasses import dataclass

from revit.errors import ConfigError


@dataclass(frozen=True)
class DataSpec:
    """Which data and how much: ``source`` is ``fashion-mnist``, ``digits`` or an ImageFolder path."""

    source: str = "fashion-mnist"
    train_limit: int | None = None  # keep this many training images (after holding out val)
    val_size: int = 5000  # images held out of the training set for selection
    test_limit: int | None = None
    img_size: int | None = None  # resize to this (None: the source's own size)
    seed: int = 0

    def __post_init__(self) -> None:
        for k in ("train_limit", "test_limit"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise ConfigError(f"{k} must be positive, got {v}")
        if self.val_size < 0:
            raise ConfigError(f"val_size must be >= 0, got {self.val_size}")
