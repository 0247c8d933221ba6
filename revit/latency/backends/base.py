"""The backend contract: prepare a workload (a block, the fixed parts, a whole model), then time it.

A :class:`Backend` turns a description into a :class:`Workload`; ``Workload.time(n)`` runs it ``n``
times and returns the seconds of each run (after the caller's warm-up).  Backends report their
version and the device name that go into a table's metadata (:meth:`Backend.info`).  Constructing a
backend whose package or device is missing raises :class:`~revit.errors.BackendUnavailableError`
with one line saying what to install.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from revit.config import BlockDims, ViTConfig
from revit.errors import ConfigError
from revit.options import Option
from revit.registry import BACKENDS_GROUP, Registry

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}


class Workload(ABC):
    """One prepared computation; ``time(n)`` returns ``n`` per-run durations in seconds."""

    @abstractmethod
    def time(self, n: int) -> list[float]:
        """Run ``n`` times back to back; seconds of each run."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the workload holds (sessions, device buffers)."""


class Backend(ABC):
    """A way of running ViT parts on a device; one instance serves a whole table build.

    Besides timing, a backend declares what the command line and validation need to know about it:
    its :attr:`name` and :attr:`description` (``revit latency backends``, ``--help``),
    :attr:`default_device`, the keyword options of its constructor in :attr:`option_specs` (each an
    :class:`~revit.options.Option` with its default and help: ``revit latency build`` gets a flag for each,
    ``--graph``, ``--compile``..., refused for a backend that does not declare it), :meth:`default_clock`
    and :meth:`reopen_kwargs` (how the backend of a table is built again from the table's metadata, on
    the device, dtype, threads, clock and options recorded there).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    default_device: ClassVar[str] = "cpu"
    # keyword options of the constructor beyond device/dtype/threads/clock, recorded in backend_settings
    option_specs: ClassVar[tuple[Option, ...]] = ()
    option_names: ClassVar[tuple[str, ...]] = ()  # the names of option_specs (set for each subclass)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "option_specs" in vars(cls):
            cls.option_names = tuple(o.name for o in cls.option_specs)

    def __init__(self, *, device: str = "cpu", dtype: str = "fp32", threads: int | None = 1,
                 clock: str = "wall", **options: Any) -> None:
        if clock not in CLOCKS:
            raise ConfigError(f"unknown clock {clock!r}; known: {', '.join(CLOCKS)}")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.device = device
        self.dtype = dtype
        self.threads = threads
        self.clock_name = clock
        self.clock = CLOCKS[clock]
        self.options = dict(options)

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """``backend``, ``backend_version``, ``device`` (a readable name), ``dtype`` and settings."""

    @abstractmethod
    def block(self, embed_dim: int, dims: BlockDims, tokens: int, batch: int) -> Workload:
        """One transformer block on input [batch, tokens, embed_dim]."""

    @abstractmethod
    def fixed(self, setting: Mapping[str, Any], embed_dim: int, batch: int) -> Workload:
        """Patch embedding + prefix tokens + positions, final norm and head(s), no blocks."""

    @abstractmethod
    def model(self, cfg: ViTConfig, batch: int) -> Workload:
        """A whole model of ``cfg`` (used by validation)."""

    def overhead(self, tokens: int, embed_dim: int, batch: int) -> Workload | None:
        """An empty call of the same kind as :meth:`block`; its time is subtracted from each block's.

        Whole-model latency pays the per-call overhead once while a table sums one block call per
        block; None means the backend has no measurable per-call overhead to remove.
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release shared resources."""

    @property
    def reopen_models(self) -> bool:
        """Whether whole models are opened afresh for every timing pass, so that a median over passes is also one
        over sessions: True where opening is cheap and each session's own memory layout moves its speed; False
        (the default) where opening costs seconds, as a TensorRT engine build does."""
        return False

    @classmethod
    def default_clock(cls, device: str, threads: int | None) -> str:
        """The clock ``--clock auto`` picks for this backend on ``device`` with ``threads``."""
        return "wall"

    @classmethod
    def table_device(cls, metadata: Mapping[str, Any]) -> str:
        """The device a table of this backend was measured on, from its metadata."""
        return cls.default_device

    @classmethod
    def reopen_kwargs(cls, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor arguments that measure again the way the table with ``metadata`` was measured."""
        bs = metadata.get("backend_settings") or {}
        meas = metadata.get("measurement") or {}
        return {"device": cls.table_device(metadata), "dtype": str(metadata["dtype"]),
                "threads": bs.get("intra_op_threads", 1), "clock": str(meas.get("clock", "wall")),
                **{k: bs[k] for k in cls.option_names if k in bs}}


BACKENDS: Registry[type[Backend]] = Registry("latency backend", group=BACKENDS_GROUP, base=Backend)


_CPU_SUFFIX = " logical CPUs)"  # how cpu_name() ends: is_cpu_name() reads it back


def is_cpu_name(device: str) -> bool:
    """Whether ``device`` is a name :func:`cpu_name` wrote (tables that recorded no device kind)."""
    return device.endswith(_CPU_SUFFIX)


def device_model(device: str) -> str:
    """A device's name without the count of logical CPUs the process had (:func:`cpu_name` appends it): two tables
    or timings on one CPU model are on the same device whatever that count, since a table fixes its threads."""
    return device.rsplit(" (", 1)[0] if is_cpu_name(device) else device


def cpu_name() -> str:
    """A readable CPU name, with the number of logical CPUs this process may use."""
    import os
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return f"{name} ({n}{_CPU_SUFFIX}"
