"""Datasets: Fashion-MNIST (Debian package files), scikit-learn digits, ImageFolder trees.

Everything is chosen by a :class:`DataSpec`; splits are deterministic from its seed.
"""

from revit.data.datasets import DATASETS, DataSpec, Splits, fashion_mnist_dir, load_splits

__all__ = ["DATASETS", "DataSpec", "Splits", "fashion_mnist_dir", "load_splits"]
