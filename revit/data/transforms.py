"""Training and evaluation transforms of each recipe, from timm.data (nothing hand-written).

- ImageFolder (PIL images): ``timm.data.create_transform`` - training: RandomResizedCrop, flip, and
  for ``deit`` RandAugment ``rand-m9-mstd0.5-inc1`` and random erasing 0.25; evaluation: resize,
  centre crop; mean/std/interpolation/crop from the model's data config
  (``timm.data.resolve_data_config``).
- Built-in tensor datasets (Fashion-MNIST, digits; already normalised tensors): only what works on
  tensors - ``deit`` applies torchvision's v2 RandomResizedCrop (scale 0.08-1) and timm's
  RandomErasing per image; flips and RandAugment (PIL colour operations) are left out.
  ``basic`` leaves tensor images as they are.
- Mixup/CutMix act on whole batches in the training loop (``timm.data.Mixup``), for every source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from revit.recipes import TrainConfig


class Transformed(Dataset[tuple[Any, Any]]):
    """``base`` with ``transform`` applied to each image (the label passes through)."""

    def __init__(self, base: Dataset[Any], transform: Callable[[Any], Any]) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        x, y = self.base[i]
        return self.transform(x), y


def data_config(in_chans: int, img_size: int, model: Any = None) -> dict[str, Any]:
    """timm's data config (input size, mean, std, interpolation, crop) for ``model`` at this input size.

    A timm model brings its pretrained config (mean/std); a revit model without one gets timm's
    ImageNet defaults.
    """
    from timm.data import resolve_data_config

    return dict(resolve_data_config({"input_size": (in_chans, img_size, img_size)}, model=model))


def image_transforms(tc: TrainConfig, cfg: dict[str, Any]) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """(training, evaluation) transforms of PIL images for recipe ``tc`` and data config ``cfg``."""
    from timm.data import create_transform

    r = tc.resolved()
    aa = None if r.auto_augment in (None, "none") else r.auto_augment
    common = {"input_size": cfg["input_size"], "interpolation": cfg.get("interpolation", "bicubic"),
              "mean": cfg["mean"], "std": cfg["std"]}
    train = create_transform(**common, is_training=True, auto_augment=aa, color_jitter=0.0 if aa is None else 0.4,
                             re_prob=float(r.random_erase or 0.0), re_mode="pixel", re_count=1)
    evalt = create_transform(**common, is_training=False, crop_pct=cfg.get("crop_pct"),
                             crop_mode=cfg.get("crop_mode"))
    return train, evalt


class TensorAugment:
    """Per-image augmentation of a normalised CHW tensor: RandomResizedCrop, then random erasing."""

    def __init__(self, img_size: int, random_erase: float, scale: tuple[float, float] | None = (0.08, 1.0)) -> None:
        from timm.data.random_erasing import RandomErasing
        from torchvision.transforms import v2

        self.crop = v2.RandomResizedCrop(img_size, scale=scale, antialias=True) if scale is not None else None
        self.erase = RandomErasing(random_erase, mode="pixel", device="cpu") if random_erase > 0 else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop is not None:
            x = self.crop(x)
        return self.erase(x) if self.erase is not None else x


def tensor_train_transform(tc: TrainConfig, img_size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-image training augmentation of a tensor dataset under ``tc``'s recipe (None: none)."""
    r = tc.resolved()
    crop = r.recipe == "deit"
    if not crop and not r.random_erase:
        return None
    return TensorAugment(img_size, float(r.random_erase or 0.0), (0.08, 1.0) if crop else None)


__all__ = ["TensorAugment", "Transformed", "data_config", "image_transforms", "tensor_train_transform"]
