"""Latency backend ``toy``: an analytic "device" whose latency is a fixed time per MAC plus a call overhead.

Deterministic and instant, so a whole table builds in a moment; the numbers are a model, not a measurement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from revit import counting
from revit.config import BlockDims, ViTConfig
from revit.errors import ConfigError
from revit.latency.backends.base import Backend, Workload
from revit.options import Option

SECONDS_PER_MAC = 1e-12
CALL_OVERHEAD_S = 1e-6


class _Fixed(Workload):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def time(self, n: int) -> list[float]:
        return [self.seconds] * n


def _block_macs(embed_dim: int, d: BlockDims, tokens: int) -> int:
    """One block's MACs per image: QKV and output projections, attention, MLP."""
    attn = d.heads * (2 * d.qk_dim + d.v_dim)
    return tokens * (embed_dim * attn + d.heads * d.v_dim * embed_dim + tokens * d.heads * (d.qk_dim + d.v_dim)
                     + 2 * embed_dim * d.mlp_dim)


class ToyBackend(Backend):
    """1 ps per MAC plus 1 us per call, on a made-up device."""

    description = "analytic toy device: 1 ps per MAC + 1 us per call (a plugin's example)"
    option_specs = (Option("speed", 1.0, "how many times faster than 1 ps per MAC the toy device runs"),)

    def __init__(self, *, speed: float = 1.0, **kw: Any) -> None:
        super().__init__(**kw)
        if self.device != "cpu":
            raise ConfigError(f"the toy backend runs on cpu only, got {self.device!r}")
        if not speed > 0:
            raise ConfigError(f"speed must be > 0, got {speed}")
        self.speed = float(speed)

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "backend_version": "0.1.0", "device": "toy device", "dtype": self.dtype,
                "speed": self.speed}

    def _work(self, macs: float) -> Workload:
        return _Fixed((CALL_OVERHEAD_S + macs * SECONDS_PER_MAC) / self.speed)

    def block(self, embed_dim: int, dims: BlockDims, tokens: int, batch: int) -> Workload:
        return self._work(batch * _block_macs(embed_dim, dims, tokens))

    def fixed(self, setting: Mapping[str, Any], embed_dim: int, batch: int) -> Workload:
        patch = int(setting["patch_size"])
        tokens = (int(setting["img_size"]) // patch) ** 2
        return self._work(batch * tokens * embed_dim * int(setting["in_chans"]) * patch * patch)

    def model(self, cfg: ViTConfig, batch: int) -> Workload:
        return self._work(batch * counting.macs(cfg))
