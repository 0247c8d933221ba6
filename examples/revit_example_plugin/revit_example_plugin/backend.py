"""Latency backend ``macs-clock``: a made-up device that takes a fixed time per MAC (flag ``--ns-per-mac``).

A backend declares its options in ``option_specs``: ``revit latency build`` gets one flag per option
(``ns_per_mac`` -> ``--ns-per-mac``), refused for other backends; the value reaches the constructor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from revit import counting
from revit.config import BlockDims, ViTConfig
from revit.errors import ConfigError
from revit.latency.backends.base import Backend, Workload
from revit.options import Option


class _Constant(Workload):
    """A workload that always takes ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def time(self, n: int) -> list[float]:
        return [self.seconds] * n


class MacsClock(Backend):
    """ns_per_mac nanoseconds per MAC of the batch: deterministic, so a table builds in a moment."""

    description = "made-up device: a fixed time per MAC (--ns-per-mac), for trying revit's latency tools"
    option_specs = (Option("ns_per_mac", 0.001, "nanoseconds per multiply-accumulate"),)

    def __init__(self, *, ns_per_mac: float = 0.001, **kw: Any) -> None:
        super().__init__(**kw)
        if not ns_per_mac > 0:
            raise ConfigError(f"ns_per_mac must be > 0, got {ns_per_mac}")
        self.ns_per_mac = float(ns_per_mac)

    def info(self) -> dict[str, Any]:
        # what goes into a table's backend_settings: the declared options, so `latency validate` rebuilds it alike
        return {"backend": self.name, "backend_version": "0.1.0", "device": "macs clock", "dtype": self.dtype,
                "ns_per_mac": self.ns_per_mac}

    def _macs(self, macs: float) -> Workload:
        return _Constant(macs * self.ns_per_mac * 1e-9)

    def block(self, embed_dim: int, dims: BlockDims, tokens: int, batch: int) -> Workload:
        return self._macs(batch * counting.block_macs(embed_dim, dims, tokens))

    def fixed(self, setting: Mapping[str, Any], embed_dim: int, batch: int) -> Workload:
        patch = int(setting["patch_size"])
        tokens = (int(setting["img_size"]) // patch) ** 2
        return self._macs(batch * tokens * embed_dim * int(setting["in_chans"]) * patch * patch)

    def model(self, cfg: ViTConfig, batch: int) -> Workload:
        return self._macs(batch * counting.macs(cfg))
