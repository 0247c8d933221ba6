"""Where and how tensors run: device choice, process groups, mixed precision, data loaders.

The training loop, the pruner and the study objective all take their device, autocast context,
grad scaler and DataLoader from here, so they behave the same on a CPU, one GPU or ``torchrun``:

- :func:`resolve_device` turns ``auto|cpu|cuda|cuda:N`` into a ``torch.device`` (under torchrun a
  plain ``cuda`` binds ``cuda:$LOCAL_RANK``);
- :func:`init_distributed` starts the process group (NCCL for CUDA devices, gloo for CPUs) and
  :func:`shutdown_distributed` ends it before the process exits;
- :func:`autocast` / :func:`grad_scaler` implement ``--amp off|bf16|fp16``;
- :func:`make_loader` yields this rank's slice of the same *global* batches for any process count
  and any number of loader workers (:class:`GlobalBatchSampler`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from revit.errors import ConfigError, DeviceError
from revit.input_checks import short
from revit.recipes import AMP_MODES

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

T = TypeVar("T")


# --- devices ---------------------------------------------------------------------------------------
def _under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _no_cuda(spec: object) -> DeviceError:
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return DeviceError(f"device {str(spec)!r} asked for, but no CUDA GPU is available here (torch "
                       f"{torch.__version__}, {build}); use --device cpu or --device auto")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``.

    A CUDA device becomes the current one (``torch.cuda.set_device``); under torchrun a plain
    ``cuda``/``auto`` binds ``cuda:$LOCAL_RANK``.  Raises :class:`DeviceError` (one line) when CUDA is
    asked for on a machine without it or the index does not exist.
    """
    raw = spec
    index: int | None
    if isinstance(spec, torch.device):
        kind, index = spec.type, spec.index
    else:
        s = str(spec).strip().lower()
        if s == "auto":
            s = "cuda" if torch.cuda.is_available() else "cpu"
        kind, _, idx = s.partition(":")
        if kind not in ("cpu", "cuda") or (idx and not idx.isdigit()) or (kind == "cpu" and idx not in ("", "0")):
            raise DeviceError(f"unknown device {str(raw)!r}; use auto, cpu, cuda or cuda:N")
        index = int(idx) if idx else None
    if kind == "cpu":
        return torch.device("cpu")
    if kind != "cuda":
        raise DeviceError(f"unsupported device {str(raw)!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise _no_cuda(raw)
    if index is None:
        index = int(os.environ["LOCAL_RANK"]) if _under_torchrun() else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device cuda:{index} asked for, but this machine has {count} CUDA device(s) "
                          f"(cuda:0..cuda:{count - 1}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    """A readable name of ``device`` (the GPU model for CUDA) for logs and metadata."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


# --- processes -------------------------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device | None = None) -> tuple[int, int]:
    """Start the process group when launched by torchrun; returns (rank, world).

    NCCL for a CUDA ``device``, gloo for a CPU one; with no device, both (``cpu:gloo,cuda:nccl``)
    when CUDA is available, so CPU and GPU tensors can each be all-reduced.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device is None:
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        else:
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    return dist_info()


def shutdown_distributed(clean: bool = True) -> None:
    """End the process group this process started, if any, before the interpreter exits.

    A gloo/NCCL group left alive at exit can abort the process ("terminate called without an active
    exception") while its peer still talks to it. On a ``clean`` exit every rank meets at a barrier
    first, so no rank closes its connections while another still uses them; after an error the group
    is destroyed at once (a peer waiting on it then fails instead of hanging).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if clean:
            dist.barrier()
    finally:
        dist.destroy_process_group()


# --- mixed precision ---------------------------------------------------------------------------------
def check_amp(amp: str) -> str:
    """``amp`` if it is one of :data:`AMP_MODES`, else a :class:`ConfigError`."""
    if amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {short(amp)}")
    return amp


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """The forward-pass context of ``--amp``: ``torch.autocast`` in bf16/fp16, nothing for ``off``."""
    if check_amp(amp) == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` for fp16 (whose gradients underflow without one); None for off and bf16."""
    if check_amp(amp) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


# --- data ---------------------------------------------------------------------------------------------
def size(ds: Dataset[Any]) -> int:
    """Number of items of a map-style dataset (torch's Dataset type does not declare ``__len__``)."""
    return len(ds)  # type: ignore[arg-type]


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's slice of each global batch of a seeded permutation.

    With W processes, rank r gets items [r*B/W, (r+1)*B/W) of every global batch of size B, so
    the union over ranks equals the single-process batch; the order depends only on the seed and
    the epoch (never on the process or loader-worker count).
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        if global_batch % world:
            raise ConfigError(f"batch size {global_batch} is not divisible by {world} processes")
        self.n, self.batch, self.seed, self.rank, self.world = n, global_batch, seed, rank, world
        self.shuffle, self.drop_last, self.epoch = shuffle, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch if self.drop_last else math.ceil(self.n / self.batch)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per = self.batch // self.world
        for i in range(len(self)):
            b = order[i * self.batch:(i + 1) * self.batch]
            if self.world > 1:
                per = math.ceil(len(b) / self.world)
            yield b[self.rank * per:(self.rank + 1) * per]


def make_loader(ds: Dataset[Any], global_batch: int, seed: int = 0, *, rank: int = 0, world: int = 1,
                shuffle: bool = True, drop_last: bool = True, workers: int = 0,
                device: torch.device | None = None) -> DataLoader[Any]:
    """A DataLoader over this rank's slices of the seeded global batches.

    ``workers`` loader processes (persistent across epochs), pinned memory when ``device`` is CUDA.
    The loader's own generator is seeded from ``seed``, so creating it draws nothing from the
    global RNG (a resumed run and an uninterrupted one see the same random numbers).
    """
    if workers < 0:
        raise ConfigError(f"loader workers must be >= 0, got {workers}")
    sampler = GlobalBatchSampler(size(ds), global_batch, seed, rank, world, shuffle, drop_last)
    return DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                      pin_memory=device is not None and device.type == "cuda",
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed * 7 + rank))


def to_cpu(obj: Any) -> Any:
    """``obj`` (nested dicts/lists of tensors) with every tensor copied to the CPU, for device-agnostic files
    (a synchronous copy: a non-blocking device-to-host copy could be read before it lands)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def to_device(batch: T, device: torch.device, channels_last: bool = False) -> T:
    """``batch`` (a tensor or a tuple/list/dict of them) on ``device``, copied asynchronously.

    With ``channels_last``, 4-D floating-point tensors (images) get the NHWC memory format.
    """
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.ndim == 4 and batch.is_floating_point():
            return batch.to(device, non_blocking=True, memory_format=torch.channels_last)  # type: ignore[return-value]
        return batch.to(device, non_blocking=True)  # type: ignore[return-value]
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}  # type: ignore[return-value]
    return batch


__all__ = ["AMP_MODES", "GlobalBatchSampler", "autocast", "check_amp", "device_name", "dist_info",
           "grad_scaler", "init_distributed", "make_loader", "resolve_device", "shutdown_distributed", "size",
           "to_cpu", "to_device"]
