"""Cost models for the penalty and the stopping target: analytic MACs, or a latency table.

The penalised score of a candidate unit is ``I - eta * saving`` (NVIT_SPEC.md section 3).  eta is
given *scale-free*: ``eta_abs = eta * median(candidate saliency) / median(candidate saving)`` fixed
at the first pruning step, so eta = 1 makes a unit of median saving cost as much as a median
saliency; the absolute value (saliency units per second, or per MAC) is printed and recorded.
NViT's eta = 5e-4 per second belongs to its loss scale (KL weight 1e5) and V100 seconds at batch
256; its equivalent here is eta_abs of a run, which the trace header and metrics record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from revit import counting
from revit.config import BlockDims, ViTConfig

_TABLE_KIND = {"embed_dim": "embed_dim", "heads": "heads", "qk_dim": "qk_dim", "v_dim": "v_dim", "mlp_dim": "mlp_dim"}


class LatencyTableLike(Protocol):
    """What the pruner needs from a latency table (``revit.latency.table.LatencyTable`` provides it)."""

    def predict(self, cfg: ViTConfig) -> Any: ...  # .total_s

    def marginal_savings(self, cfg: ViTConfig, block_index: int, units: dict[str, int] | None = None,
                         *, only: Sequence[str] | None = None) -> dict[str, float]: ...


class CostModel(Protocol):
    name: str
    unit: str

    def cost(self, cfg: ViTConfig) -> float: ...

    def saving(self, cfg: ViTConfig, kind: str, block: int | None, units: int) -> float: ...

    def format(self, value: float) -> str: ...

    def minimum_widths(self) -> dict[str, int]: ...


def shrink(cfg: ViTConfig, kind: str, block: int | None, units: int) -> ViTConfig:
    """``cfg`` with ``units`` fewer of ``kind`` (in ``block``; the embedding for ``embed_dim``)."""
    if kind == "embed_dim":
        return cfg.with_blocks(cfg.blocks, embed_dim=cfg.embed_dim - units)
    assert block is not None
    b = cfg.blocks[block]
    blocks = list(cfg.blocks)
    blocks[block] = replace(b, **{kind: getattr(b, kind) - units})
    return cfg.with_blocks(blocks)


class MacsCost:
    """MACs per image in the default (NViT) convention."""

    name, unit = "macs", "MACs"

    def cost(self, cfg: ViTConfig) -> float:
        return float(counting.macs(cfg))

    def saving(self, cfg: ViTConfig, kind: str, block: int | None, units: int) -> float:
        return self.cost(cfg) - self.cost(shrink(cfg, kind, block, units))

    def format(self, value: float) -> str:
        return counting.format_count(value)

    def minimum_widths(self) -> dict[str, int]:
        return {}


class LatencyCost:
    """Whole-model latency predicted by a table (seconds per batch of the table's batch size).

    Savings come from the table's marginal savings (negative ones clipped at zero by the table).
    """

    name, unit = "latency", "s"

    def __init__(self, table: LatencyTableLike) -> None:
        self.table = table
        self._cache: dict[tuple[Any, ...], dict[str, float]] = {}

    def cost(self, cfg: ViTConfig) -> float:
        return float(self.table.predict(cfg).total_s)

    def saving(self, cfg: ViTConfig, kind: str, block: int | None, units: int) -> float:
        key = (cfg.embed_dim, cfg.blocks, block if block is not None else 0, kind, units)
        if key not in self._cache:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[key] = self.table.marginal_savings(cfg, block if block is not None else 0,
                                                           units={_TABLE_KIND[kind]: units},
                                                           only=[_TABLE_KIND[kind]])
        return float(self._cache[key][_TABLE_KIND[kind]])

    def format(self, value: float) -> str:
        return f"{value * 1e3:.3f}ms"

    def minimum_widths(self) -> dict[str, int]:
        """The table's measured lower bounds: a smaller width would be an extrapolated prediction."""
        ranges = getattr(self.table, "ranges", None)
        if ranges is None:
            return {}
        return {k: int(math.ceil(lo)) for k, (lo, _) in ranges().items() if k in _TABLE_KIND}


def min_config(cfg: ViTConfig, minimum: dict[str, int]) -> ViTConfig:
    """Every width at its minimum (or its current value when that is already lower)."""
    blocks = [BlockDims(**{k: min(getattr(b, k), minimum[k]) for k in ("heads", "qk_dim", "v_dim", "mlp_dim")})
              for b in cfg.blocks]
    return cfg.with_blocks(blocks, embed_dim=min(cfg.embed_dim, minimum["embed_dim"]))
