"""Dataset readers and the deterministic train/val/test split.

``train`` and ``val`` come from the source's training set (``val`` is held out by the seed, so
pruning and studies never select on the test set); ``test`` is the source's own test set.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from revit.data.spec import DataSpec
from revit.errors import ConfigError, DatasetError
from revit.presets import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from revit.recipes import TrainConfig

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
INSTALL_HINT = "apt-get install dataset-fashion-mnist"


@dataclass(frozen=True)
class Splits:
    train: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any]
    num_classes: int
    in_chans: int
    img_size: int

    def check_fits(self, cfg: Any, source: str) -> None:
        """The one "data fits the model" check (train, prune, a study's trials): the data's image size, channels
        and classes are those of ``cfg`` (a ViT config or a study's Setting), refused in one line before training."""
        have, want = (self.img_size, self.in_chans, self.num_classes), (cfg.img_size, cfg.in_chans, cfg.num_classes)
        if have != want:
            raise ConfigError(f"{source} has {self.img_size}px, {self.in_chans} channel(s) and {self.num_classes} "
                              f"classes; the model expects {cfg.img_size}px, {cfg.in_chans} channel(s) and "
                              f"{cfg.num_classes} classes (the data's img_size resizes)")


def fashion_mnist_dir() -> Path:
    """The folder of the Debian package's IDX files (override with ``REVIT_FASHION_MNIST``)."""
    env = os.environ.get("REVIT_FASHION_MNIST")
    for d in ([env] if env else []) + list(FASHION_MNIST_DIRS):
        if d and (Path(d) / "train-images-idx3-ubyte.gz").is_file():
            return Path(d)
    raise DatasetError(f"Fashion-MNIST not found in {', '.join(FASHION_MNIST_DIRS)}: run '{INSTALL_HINT}' "
                       "(or set REVIT_FASHION_MNIST to a folder of the IDX .gz files)")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise DatasetError(f"{path}: unreadable IDX file ({e})") from None


def _to_tensor(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return (x - mean) / std


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-1] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _fashion_mnist(spec: DataSpec) -> tuple[TensorDataset, TensorDataset, int, int]:
    d = fashion_mnist_dir()
    parts = []
    for prefix in ("train", "t10k"):
        x = _to_tensor(read_idx(d / f"{prefix}-images-idx3-ubyte.gz"), FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        y = torch.from_numpy(read_idx(d / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
        parts.append(TensorDataset(_resize(x, spec.img_size), y))
    return parts[0], parts[1], 10, 1


def _digits(spec: DataSpec) -> tuple[TensorDataset, TensorDataset, int, int]:
    """scikit-learn's 1,797 8x8 digits; the last 20% (fixed) is the test set."""
    from sklearn.datasets import load_digits

    ds = load_digits()
    x = torch.from_numpy(ds.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = _resize((x - 0.3) / 0.4, spec.img_size)
    y = torch.from_numpy(ds.target.astype(np.int64))
    cut = int(len(y) * 0.8)
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:]), 10, 1


class _Folder:
    """An ImageFolder source read twice: with the training and with the evaluation transform."""

    def __init__(self, train: Dataset[Any], evaluation: Dataset[Any], test: Dataset[Any]) -> None:
        self.train, self.eval, self.test = train, evaluation, test


def _image_folder(spec: DataSpec, tc: TrainConfig, model: Any) -> tuple[_Folder, int, int]:
    """ImageNet-style tree: ``root/train/<class>/*`` and ``root/val/<class>/*`` (or one class tree).

    Training images go through the recipe's timm training transform; held-out and test images
    through timm's evaluation transform (mean/std from the model's data config).
    """
    from torchvision import datasets

    from revit.data.transforms import data_config, image_transforms

    root = Path(spec.source)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder (expected fashion-mnist, digits or an ImageFolder path)")
    train_tf, eval_tf = image_transforms(tc, data_config(3, spec.img_size or 224, model))
    try:
        if (root / "train").is_dir():
            test_dir = root / "val" if (root / "val").is_dir() else root / "test"
            train = datasets.ImageFolder(str(root / "train"), transform=train_tf)
            folder = _Folder(train, datasets.ImageFolder(str(root / "train"), transform=eval_tf),
                             datasets.ImageFolder(str(test_dir), transform=eval_tf))
        else:
            train = datasets.ImageFolder(str(root), transform=train_tf)
            full_eval = datasets.ImageFolder(str(root), transform=eval_tf)
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(spec.seed + 7919)).tolist()
            cut = int(0.9 * len(train))
            folder = _Folder(Subset(train, perm[:cut]), Subset(full_eval, perm[:cut]), Subset(full_eval, perm[cut:]))
    except (FileNotFoundError, RuntimeError) as e:
        raise DatasetError(f"{root}: not an ImageFolder tree ({e})") from None
    return folder, len(train.classes), 3


DATASETS: dict[str, Callable[[DataSpec], tuple[Any, Any, int, int]]] = {
    "fashion-mnist": _fashion_mnist,
    "digits": _digits,
}


def load_splits(spec: DataSpec, train_config: TrainConfig | None = None, *, model: Any = None) -> Splits:
    """Build the deterministic train/val/test splits of ``spec``.

    ``train_config`` chooses the training augmentation (its recipe; default ``basic``), ``model``
    the evaluation mean/std of an ImageFolder (timm's data config; revit models: ImageNet's).
    Only ``train`` is augmented; ``val`` and ``test`` use the evaluation transform.
    """
    from revit.data.transforms import Transformed, tensor_train_transform

    tc = train_config or TrainConfig()
    reader = DATASETS.get(spec.source)
    val_full: Dataset[Any]
    if reader is None:
        folder, num_classes, in_chans = _image_folder(spec, tc, model)
        train_full, val_full, test = folder.train, folder.eval, folder.test
        img_size = int(val_full[0][0].shape[-1])
    else:
        train_full, test, num_classes, in_chans = reader(spec)
        val_full = train_full
        img_size = int(train_full[0][0].shape[-1])
        tf = tensor_train_transform(tc, img_size)
        if tf is not None:
            train_full = Transformed(train_full, tf)
    n = len(train_full)  # type: ignore[arg-type]
    val_size = min(spec.val_size, n // 5)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(spec.seed)).tolist()
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if spec.train_limit is not None:
        train_idx = train_idx[: spec.train_limit]
    test_idx = list(range(len(test)))  # type: ignore[arg-type]
    if spec.test_limit is not None:
        test_idx = test_idx[: spec.test_limit]
    return Splits(train=Subset(train_full, train_idx), val=Subset(val_full, val_idx),
                  test=Subset(test, test_idx), num_classes=num_classes, in_chans=in_chans, img_size=img_size)
