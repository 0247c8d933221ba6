import gzip
import struct

import numpy as np
import pytest
import torch

from revit.data import DataSpec, load_splits
from revit.data.datasets import fashion_mnist_dir, read_idx
from revit.errors import DatasetError


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_reader_against_handmade_file(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), arr)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(DatasetError, match="unreadable IDX"):
        read_idx(tmp_path / "bad.gz")


def test_missing_fashion_mnist_names_the_package(tmp_path, monkeypatch):
    import revit.data.datasets as d

    monkeypatch.setattr(d, "FASHION_MNIST_DIRS", (str(tmp_path),))
    monkeypatch.delenv("REVIT_FASHION_MNIST", raising=False)
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_splits(DataSpec("fashion-mnist"))


def test_fashion_mnist_from_debian_package():
    fashion_mnist_dir()  # CI installs dataset-fashion-mnist; a missing package fails loudly here
    s = load_splits(DataSpec("fashion-mnist", train_limit=1000, val_size=500, test_limit=200))
    assert (len(s.train), len(s.val), len(s.test)) == (1000, 500, 200)
    x, y = s.train[0]
    assert x.shape == (1, 28, 28) and 0 <= int(y) < 10 and s.num_classes == 10
    full = load_splits(DataSpec("fashion-mnist"))
    assert (len(full.train), len(full.val), len(full.test)) == (55000, 5000, 10000)


def test_splits_are_deterministic_and_disjoint():
    a = load_splits(DataSpec("digits", seed=3))
    b = load_splits(DataSpec("digits", seed=3))
    c = load_splits(DataSpec("digits", seed=4))
    assert a.train.indices == b.train.indices and a.train.indices != c.train.indices
    assert not set(a.train.indices) & set(a.val.indices)
    assert len(a.train) + len(a.val) == 1437


def test_resize_for_the_micro_model():
    s = load_splits(DataSpec("digits", img_size=28))
    assert s.train[0][0].shape == (1, 28, 28) and s.img_size == 28


def test_image_folder_tree(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog", "eel"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png")
    s = load_splits(DataSpec(str(tmp_path), val_size=2, img_size=32))
    assert s.num_classes == 3 and s.in_chans == 3 and len(s.test) == 12
    assert len(s.train) + len(s.val) == 12
    x, _ = s.train[0]
    assert x.shape == (3, 32, 32) and torch.isfinite(x).all()
    with pytest.raises(DatasetError, match="no such dataset folder"):
        load_splits(DataSpec(str(tmp_path / "nope")))
