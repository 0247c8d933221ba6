"""Shared fixtures: tiny configs and models built in the tests (no downloads)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture
def tiny_cfg():
    from revit.config import BlockDims, ViTConfig

    return ViTConfig(embed_dim=32, blocks=(BlockDims(2, 8, 16, 64), BlockDims(3, 4, 8, 40), BlockDims(1, 16, 4, 24)),
                     img_size=16, patch_size=4, in_chans=1, num_classes=5)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits at 8x8 with 300 images held out: the small real dataset of the training tests."""
    from revit.data import DataSpec, load_splits

    return load_splits(DataSpec("digits", img_size=8, val_size=300))


@pytest.fixture
def train_resumed():
    """``run(make_model, tc, train_ds, val_ds, out, stop_after=None) -> model``: ``train()`` into ``out``;
    with ``stop_after``, interrupted after that epoch and resumed in ``out`` from a freshly built model
    under another RNG state, as a killed run restarts."""

    def run(make_model, tc, train_ds, val_ds, out, stop_after=None):
        import torch

        from revit.train_loop import train

        torch.manual_seed(0)
        model = make_model()

        def stop(rec):
            if stop_after and rec["epoch"] == stop_after:
                raise KeyboardInterrupt

        try:
            train(model, train_ds, val_ds, tc, out, on_epoch=stop, progress=False)
        except KeyboardInterrupt:
            torch.manual_seed(123)
            model = make_model()
            train(model, train_ds, val_ds, tc, out, resume=True, progress=False)
        return model

    return run


@pytest.fixture(scope="module")
def pg_url():
    """A throw-away PostgreSQL server's URL, one per test module so that study names never meet across modules
    (skips without Debian's postgresql)."""
    from revit.search.testing import PostgresUnavailable, postgres_server

    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as e:
        pytest.skip(str(e))


def run_cli(args, capsys=None):
    """Run ``revit ARGS`` in-process; returns (code, stdout, stderr) when capsys is given."""
    from revit.cli.main import main

    code = main([str(a) for a in args])
    if capsys is None:
        return code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli(capsys):
    return lambda *args: run_cli(args, capsys)


def python() -> str:
    return sys.executable


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on tiny models extra threads only add contention on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs mounted at a fresh folder, unmounted afterwards (skipped, with the reason, when this is not
    root or mounting is not allowed; CI runs as root)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; read-only and full-disk outputs are not tested here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_disk(mnt: Path) -> None:
    """Fill the file system of ``mnt`` to the last byte (ENOSPC on the next write)."""
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    for chunk in (b"\0" * 4096, b"\0"):
        try:
            while True:
                os.write(fd, chunk)
        except OSError:
            pass
    os.close(fd)
