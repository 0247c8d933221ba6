"""The one module that reads files which may hold pickles: no file revit reads can run code.

Every ``torch.load`` of revit is here, always with ``weights_only=True``: PyTorch's restricted
unpickler then builds only tensors, plain containers and numbers, plus the classes of
:data:`SAFE_GLOBALS` (an allow-list).  A file that names anything else (a crafted pickle whose
``__reduce__`` would call ``os.system``) is refused in one line before any of it runs.  This holds
for files passed in (``--checkpoint``, ``--init``, ``--teacher-weights``) and for the state files
of run folders (``checkpoint.pt``, ``state.pt``), which are as untrusted as any other file: a
folder may come from a colleague or a shared disk.  Weights themselves are safetensors (no code by
design) and JSON/YAML go through :mod:`revit._io`'s limited readers.

``tests/test_payloads.py`` plants a payload in every state file revit reads and checks that its
marker file is never created.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from revit.errors import CheckpointError

# classes a state file may name besides tensors and plain data: timm's train.py saves its argparse args
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)


def _first_line(e: BaseException, limit: int = 160) -> str:
    """The cause of a refused load in a few words: the first line of the error, cut to ``limit`` characters."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:limit] + ("..." if len(text) > limit else "")


def _unpickler_cause(e: BaseException) -> str:
    """The restricted unpickler's reason, without PyTorch's boilerplate: ``unsupported GLOBAL posix.mkdir``."""
    for line in str(e).splitlines():
        low = line.lower()
        if "global" in low or "unsupported" in low or "unpickler error:" in low and low.split("error:")[1].strip():
            text = line.strip().removeprefix("Trying to load ").removeprefix("WeightsUnpickler error: ")
            return text[:120] + ("..." if len(text) > 120 else "")
    return "not a plain torch.save file of tensors"


def _refusal(path: str | os.PathLike[str], e: BaseException, what: str) -> CheckpointError:
    import pickle

    if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e).lower():
        cause = _unpickler_cause(e)
        if "global" not in cause.lower():  # damaged bytes or a foreign format, not an object reference
            return CheckpointError(f"{path}: cannot read {what} ({cause}): not a torch.save file of tensors")
        return CheckpointError(f"{path}: refused to load {what} ({cause}): revit loads only tensors and plain "
                               "data and never runs code from a file")
    return CheckpointError(f"{path}: unreadable {what} ({type(e).__name__}: {_first_line(e)})")


def torch_load(path: str | os.PathLike[str], what: str = "state file", *, map_location: str = "cpu",
               mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with :data:`SAFE_GLOBALS` allowed; a refused or unreadable
    file is one :class:`~revit.errors.CheckpointError` line naming ``path`` and ``what`` it should be."""
    import warnings

    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{path}: no such {what}")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except RecursionError:
        raise CheckpointError(f"{path}: unreadable {what} (nested too deeply)") from None
    except Exception as e:  # noqa: BLE001 - any reader failure of a user's file is one line
        if mmap and isinstance(e, RuntimeError) and "mmap" in str(e):
            return torch_load(path, what, map_location=map_location, mmap=False)  # legacy (non-zip) format
        raise _refusal(path, e, what) from None


def checkpoint_top_keys(path: str | os.PathLike[str]) -> list[str]:
    """The top-level keys of a ``torch.save``-d dict whose values are mappings (tensors land on ``meta``)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return []
    obj = torch_load(p, "checkpoint", map_location="meta", mmap=True)
    return [str(k) for k, v in obj.items() if isinstance(v, Mapping)] if isinstance(obj, Mapping) else []


def timm_state_dict(path: str | os.PathLike[str], use_ema: bool = False) -> Any:
    """timm's ``load_state_dict`` (wrappers, EMA, DDP prefixes), after the file passed :func:`torch_load`.

    timm reads with ``weights_only=True`` itself; the check first makes that a property of revit, not
    of the installed timm version."""
    import warnings

    from timm.models import load_state_dict as timm_load_state_dict

    checkpoint_top_keys(path)  # refuses a payload before timm opens the file
    with warnings.catch_warnings():  # torch's pickle-protocol notes: the answer stays one line
        warnings.simplefilter("ignore")
        return timm_load_state_dict(str(path), use_ema=use_ema)


def load_safetensors(path: str | os.PathLike[str], what: str = "weights file") -> dict[str, Any]:
    """A safetensors file's tensors (no code by design); a damaged or foreign file is one line."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{path}: no such {what}")
    try:
        return load_file(str(p))
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file is the user's, one line
        raise CheckpointError(f"{path}: unreadable {what} ({type(e).__name__}: {_first_line(e)})") from None


__all__ = ["SAFE_GLOBALS", "checkpoint_top_keys", "load_safetensors", "timm_state_dict", "torch_load"]
