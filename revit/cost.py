"""One cost model, used by pruning (penalty and target) and by rule generation (budgets).

A :class:`CostModel` maps a config to a number (MACs per image, or seconds per batch predicted by a
latency table), says what removing some units of one width saves, and names the smallest widths it
can evaluate.  A config outside its domain (a latency table's measured range) raises
:class:`~revit.errors.OutsideDomainError` (a :class:`~revit.errors.TableRangeError` for tables).
Pure Python: no torch; a latency table brings numpy/scipy with it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from revit import counting
from revit.config import BLOCK_KINDS, WIDTH_KINDS, BlockDims, ViTConfig
from revit.errors import ConfigError
from revit.registry import Registry


class LatencyTableLike(Protocol):
    """What a latency cost needs from a table (:class:`revit.latency.table.LatencyTable` provides it)."""

    @property
    def batch_size(self) -> int: ...

    def predict(self, cfg: ViTConfig) -> Any: ...  # an object with ``total_s``; TableRangeError outside

    def marginal_savings(self, cfg: ViTConfig, block_index: int, units: dict[str, int] | None = None,
                         *, only: Sequence[str] | None = None) -> dict[str, float]: ...

    def ranges(self) -> Mapping[str, tuple[float, float]]: ...


class CostModel(ABC):
    """A monotone cost of a config (non-decreasing in every width).

    Contract: :meth:`cost` raises :class:`~revit.errors.OutsideDomainError` for a config the model
    cannot evaluate; :meth:`saving` is the cost removed by taking ``units`` of ``kind`` (one of
    embed_dim, heads, qk_dim, v_dim, mlp_dim) out of ``block`` (None for embed_dim, which every
    block shares); :meth:`minimum_widths` names, per kind, the smallest width inside the domain.
    """

    name: str
    unit: str
    description: str = ""  # one line for ``revit plugins`` and --help
    needs_table: bool = False  # built from a latency table (``build_cost(name, table)``)

    @abstractmethod
    def cost(self, cfg: ViTConfig) -> float:
        """The cost of ``cfg`` in :attr:`unit`."""

    def saving(self, cfg: ViTConfig, kind: str, block: int | None, units: int) -> float:
        """Cost removed by taking ``units`` of ``kind`` out of ``block`` (the embedding for embed_dim)."""
        return self.cost(cfg) - self.cost(shrink(cfg, kind, block, units))

    @abstractmethod
    def format(self, value: float) -> str:
        """A value of this cost for humans, with its unit."""

    def minimum_widths(self) -> dict[str, int]:
        """The smallest width per kind this model can evaluate (kinds without a limit are left out)."""
        return {}


def shrink(cfg: ViTConfig, kind: str, block: int | None, units: int) -> ViTConfig:
    """``cfg`` with ``units`` fewer of ``kind`` (in ``block``; the embedding for ``embed_dim``)."""
    if kind == "embed_dim":
        return cfg.with_blocks(cfg.blocks, embed_dim=cfg.embed_dim - units)
    if kind not in BLOCK_KINDS or block is None:
        raise ConfigError(f"shrink: kind {kind!r} needs a block index (kinds: {', '.join(WIDTH_KINDS)})")
    blocks = list(cfg.blocks)
    blocks[block] = replace(blocks[block], **{kind: getattr(blocks[block], kind) - units})
    return cfg.with_blocks(blocks)


def min_config(cfg: ViTConfig, minimum: Mapping[str, int]) -> ViTConfig:
    """Every width at its minimum (or its current value when that is already lower)."""
    blocks = [BlockDims(**{k: min(getattr(b, k), minimum[k]) for k in BLOCK_KINDS}) for b in cfg.blocks]
    return cfg.with_blocks(blocks, embed_dim=min(cfg.embed_dim, minimum["embed_dim"]))


COSTS: Registry[Callable[..., CostModel]] = Registry("cost model")


class MacsCost(CostModel):
    """MACs per image in a counting convention (``nvit``: with the attention matmuls; ``timm``: linear only)."""

    name = "macs"
    description = "MACs per image, counted from the config (no table needed)"

    def __init__(self, convention: counting.Convention = "nvit") -> None:
        counting._check(convention)
        self.convention: counting.Convention = convention
        self.unit = "MACs" if convention == "nvit" else "MACs (linear only)"

    def cost(self, cfg: ViTConfig) -> float:
        return float(counting.macs(cfg, self.convention))

    def saving(self, cfg: ViTConfig, kind: str, block: int | None, units: int) -> float:
        """A block width changes that block's MACs only: priced on the block (the pruner asks this for
        every group at every removal); the embedding changes everything and is priced on the model."""
        if kind == "embed_dim" or block is None:
            return super().saving(cfg, kind, block, units)
        b = cfg.blocks[block]
        new = replace(b, **{kind: getattr(b, kind) - units})
        return float(counting.block_macs(cfg.embed_dim, b, cfg.tokens, self.convention)
                     - counting.block_macs(cfg.embed_dim, new, cfg.tokens, self.convention))

    def format(self, value: float) -> str:
        return f"{counting.format_count(value)} {self.unit}"


class LatencyCost(CostModel):
    """Whole-model latency predicted by a table, in seconds per batch of the table's batch size.

    Savings come from the table's marginal savings (negative ones clipped at zero by the table) and
    are cached per (embedding, the block's widths, kind, units).
    """

    name, unit = "latency", "s"
    description = "whole-model latency predicted by a latency table (--table)"
    needs_table = True
    _CACHE_SIZE = 10000

    def __init__(self, table: LatencyTableLike) -> None:
        self.table = table
        self._cache: dict[tuple[Any, ...], float] = {}

    @property
    def batch_size(self) -> int:
        return int(self.table.batch_size)

    def cost(self, cfg: ViTConfig) -> float:
        return float(self.table.predict(cfg).total_s)

    def saving(self, cfg: ViTConfig, kind: str, block: int | None, units: int) -> float:
        # a block width's saving depends on that block's widths and the embedding only (the table is per
        # block): keyed so, it is reused across removals elsewhere; the embedding's depends on every block
        where = cfg.blocks if kind == "embed_dim" or block is None else cfg.blocks[block]
        key = (cfg.embed_dim, where, kind, units)
        if key not in self._cache:
            if len(self._cache) > self._CACHE_SIZE:
                self._cache.clear()
            saved = self.table.marginal_savings(cfg, block or 0, units={kind: units}, only=[kind])
            self._cache[key] = float(saved[kind])
        return self._cache[key]

    def format(self, value: float) -> str:
        return f"{value * 1e3:.4g} ms/batch, {value * 1e3 / self.batch_size:.4g} ms/image"

    def minimum_widths(self) -> dict[str, int]:
        """The table's smallest measured value per axis: below it a prediction would be extrapolated."""
        return {k: int(math.ceil(lo)) for k, (lo, _) in self.table.ranges().items() if k in WIDTH_KINDS}


COSTS.register(MacsCost)
COSTS.register(LatencyCost)


def build_cost(spec: str | CostModel, table: LatencyTableLike | None = None, **kwargs: Any) -> CostModel:
    """A cost model from a registered name (``macs``, ``latency`` with ``table``) or one passed as is."""
    if isinstance(spec, CostModel):
        return spec
    factory = COSTS.get(spec)
    if getattr(factory, "needs_table", False):
        if table is None:
            raise ConfigError("a latency cost needs a latency table (--table TABLE.json)")
        return factory(table, **kwargs)
    return factory(**kwargs)


__all__ = ["COSTS", "CostModel", "LatencyCost", "LatencyTableLike", "MacsCost", "build_cost", "min_config",
           "shrink"]
