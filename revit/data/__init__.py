"""Datasets: Fashion-MNIST (Debian package files), scikit-learn digits, ImageFolder trees.

Everything is chosen by a :class:`DataSpec` (torch-free, ``revit.data.spec``); splits are
deterministic from its seed.  The readers (numpy, torch) load on first use of their names.
"""

from __future__ import annotations

from typing import Any

from revit.data.spec import DataSpec

__all__ = ["DATASETS", "DataSpec", "Splits", "fashion_mnist_dir", "load_splits"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from revit.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module 'revit.data' has no attribute {name!r}")
