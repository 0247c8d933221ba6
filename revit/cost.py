"""One cost model, used by pruning (penalty and target) and by rule generation (budgets).

A :class:`CostModel` maps a config to a number (MACs per image, or seconds per batch predicted by a
latency table), says what removing some units of one width saves, and names the smallest widths it
can evaluate.  A config outside its domain (a latency table's measured range) raises
:class:`~revit.errors.OutsideDomainError` (a :class:`~revit.errors.TableRangeError` for tables).
Pure Python: no torch; a latency table brings numpy/scipy with it.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

from revit import counting
from revit.config import ATTENTION_KINDS, BLOCK_KINDS, WIDTH_KINDS, BlockDims, ViTConfig
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
    """A monotone cost of a config (non-decreasing in every width; an aligned latency table's remainders aside,
    where a width off its kernels' step may cost more than the next multiple and its saving is clipped at 0).

    Contract: :meth:`cost` raises :class:`~revit.errors.OutsideDomainError` for a config the model
    cannot evaluate; :meth:`saving` is the cost removed by taking ``units`` of ``kind`` (one of
    embed_dim, heads, qk_dim, v_dim, mlp_dim) out of ``block`` (None for embed_dim, which every
    block shares); :meth:`minimum_widths` names, per kind, the smallest width inside the domain.
    """

    name: str
    unit: str
    description: str = ""  # one line for ``revit plugins`` and --help
    needs_table: ClassVar[bool] = False  # built from a latency table (``build_cost(name, table)``)
    # how a user writes a value of this cost: the key in a study spec's ``budget`` (and a trial's user
    # attribute of that value), and how many of :attr:`unit` one written unit is (1e-3: milliseconds)
    spec_key: ClassVar[str]
    spec_scale: ClassVar[float] = 1.0
    per_unit: ClassVar[str] = "unit of cost"  # "saliency per MAC saved": one unit, in words

    @classmethod
    def parse_value(cls, raw: Any, what: str = "budget") -> float:
        """A value the user wrote (in :attr:`spec_key`'s unit) as a positive number in :attr:`unit`."""
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or not raw > 0:
            raise ConfigError(f"{what} must be a positive number, got {raw!r}")
        return float(raw) * cls.spec_scale

    @classmethod
    def format_value(cls, value: float) -> str:
        """A value for humans when no model is built (a study spec's budget): in the unit users write."""
        return f"{value / cls.spec_scale:.4g} {cls.spec_key}"

    @abstractmethod
    def cost(self, cfg: ViTConfig) -> float:
        """The cost of ``cfg`` in :attr:`unit`."""

    def saving(self, cfg: ViTConfig, kind: str, block: int | None, units: int) -> float:
        """Cost removed by taking ``units`` of ``kind`` out of ``block`` (the embedding for embed_dim)."""
        return self.cost(cfg) - self.cost(shrink(cfg, kind, block, units))

    _CACHE_SIZE: ClassVar[int] = 10000

    def _memo(self, key: tuple[Any, ...], compute: Callable[[], float]) -> float:
        """``compute()`` once per ``key`` (the cache emptied when full): the pruner asks the saving of every
        candidate at every removal, and only the block a removal touched has new ones."""
        cache: dict[tuple[Any, ...], float] = self.__dict__.setdefault("_savings", {})
        if key not in cache:
            if len(cache) > self._CACHE_SIZE:
                cache.clear()
            cache[key] = float(compute())
        return cache[key]

    @abstractmethod
    def format(self, value: float) -> str:
        """A value of this cost for humans, with its unit."""

    def minimum_widths(self) -> dict[str, int]:
        """The smallest width per kind this model can evaluate (kinds without a limit are left out)."""
        return {}

    def prices_removals(self) -> bool:
        """Whether this model can price a config without a block's attention, MLP or the block (True here;
        a latency table of schema v1 cannot): the pruner removes structures only when it can."""
        return True


def shrunk_block(b: BlockDims, kind: str, units: int) -> BlockDims:
    """``b`` with ``units`` fewer of ``kind``; an attention width taken to 0 takes the attention with it
    (heads, QK and V all 0: no head width without heads)."""
    left = getattr(b, kind) - units
    if left == 0 and kind in ATTENTION_KINDS:
        return replace(b, heads=0, qk_dim=0, v_dim=0)
    return replace(b, **{kind: left})


def shrink(cfg: ViTConfig, kind: str, block: int | None, units: int) -> ViTConfig:
    """``cfg`` with ``units`` fewer of ``kind`` (in ``block``; the embedding for ``embed_dim``); the last units
    of a block's width remove its branch (:func:`shrunk_block`), and a block with neither branch goes."""
    if kind == "embed_dim":
        return cfg.with_blocks(cfg.blocks, embed_dim=cfg.embed_dim - units)
    if kind not in BLOCK_KINDS or block is None:
        raise ConfigError(f"shrink: kind {kind!r} needs a block index (kinds: {', '.join(WIDTH_KINDS)})")
    blocks = list(cfg.blocks)
    blocks[block] = shrunk_block(blocks[block], kind, units)
    return cfg.with_blocks(blocks)


def min_config(cfg: ViTConfig, minimum: Mapping[str, int]) -> ViTConfig:
    """Every width at its minimum (or its current value when that is already lower)."""
    blocks = [BlockDims(**{k: min(getattr(b, k), minimum[k]) for k in BLOCK_KINDS}) for b in cfg.blocks]
    return cfg.with_blocks(blocks, embed_dim=min(cfg.embed_dim, minimum["embed_dim"]))


COSTS: Registry[type[CostModel]] = Registry("cost model")
MACS, LATENCY = "macs", "latency"  # the built-in cost models' names (and the metric keys of MACs)


class MacsCost(CostModel):
    """MACs per image in a counting convention (``nvit``: with the attention matmuls; ``timm``: linear only)."""

    name, spec_key, per_unit = MACS, "macs", "MAC"
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
        # the last units: the whole branch, its attention matmuls included
        return self._memo((cfg.embed_dim, cfg.tokens, b, kind, units), lambda: (
            counting.block_macs(cfg.embed_dim, b, cfg.tokens, self.convention)
            - counting.block_macs(cfg.embed_dim, shrunk_block(b, kind, units), cfg.tokens, self.convention)))

    def format(self, value: float) -> str:
        return f"{counting.format_count(value)} {self.unit}"

    @classmethod
    def parse_value(cls, raw: Any, what: str = "budget") -> float:
        """``4.6G``, ``150M`` or a number."""
        if isinstance(raw, str):
            return float(counting.parse_count(raw))
        return super().parse_value(raw, what)

    @classmethod
    def format_value(cls, value: float) -> str:
        return f"{counting.format_count(value)} MACs"


class LatencyCost(CostModel):
    """Whole-model latency predicted by a table, in seconds per batch of the table's batch size.

    Savings come from the table's marginal savings (negative ones clipped at zero by the table) and
    are cached per (embedding, the block's widths, kind, units).
    """

    name, unit, spec_key, spec_scale, per_unit = LATENCY, "s", "latency_ms", 1e-3, "second"
    description = "whole-model latency predicted by a latency table (--table)"
    needs_table = True

    def __init__(self, table: LatencyTableLike) -> None:
        self.table = table

    @property
    def batch_size(self) -> int:
        return int(self.table.batch_size)

    def cost(self, cfg: ViTConfig) -> float:
        return float(self.table.predict(cfg).total_s)

    def saving(self, cfg: ViTConfig, kind: str, block: int | None, units: int) -> float:
        # a block width's saving depends on that block's widths and the embedding only (the table is per
        # block): keyed so, it is reused across removals elsewhere; the embedding's depends on every block
        where = cfg.blocks if kind == "embed_dim" or block is None else cfg.blocks[block]
        return self._memo((cfg.embed_dim, where, kind, units), lambda: self.table.marginal_savings(
            cfg, block or 0, units={kind: units}, only=[kind])[kind])

    def format(self, value: float) -> str:
        return f"{value * 1e3:.4g} ms/batch, {value * 1e3 / self.batch_size:.4g} ms/image"

    @classmethod
    def parse_value(cls, raw: Any, what: str = "budget") -> float:
        """A number of milliseconds (per batch of the table's batch size) -> seconds."""
        if isinstance(raw, str):
            raise ConfigError(f"{what} must be a number of milliseconds, got {raw!r}")
        return super().parse_value(raw, what)

    @classmethod
    def format_value(cls, value: float) -> str:
        return f"{value * 1e3:.4g} ms"

    def minimum_widths(self) -> dict[str, int]:
        """The table's smallest measured value per axis: below it a prediction would be extrapolated."""
        return {k: int(math.ceil(lo)) for k, (lo, _) in self.table.ranges().items() if k in WIDTH_KINDS}

    def prices_removals(self) -> bool:
        """Whether the table has the half blocks that price an absent branch (schema v2; a v1 table has not)."""
        return bool(getattr(self.table, "prices_absent_branches", False))


COSTS.register(MacsCost)
COSTS.register(LatencyCost)


def build_cost(spec: str | CostModel, table: LatencyTableLike | None = None, **kwargs: Any) -> CostModel:
    """A cost model from a registered name (``macs``, ``latency`` with ``table``) or one passed as is."""
    if isinstance(spec, CostModel):
        return spec
    factory = COSTS.get(spec)
    if factory.needs_table:
        if table is None:
            raise ConfigError(f"a {spec} cost needs a latency table (--table TABLE.json)")
        return factory(table, **kwargs)  # type: ignore[call-arg]  # a table-built model takes it first
    return factory(**kwargs)


def table_cost(table: LatencyTableLike) -> CostModel:
    """The cost a latency table prices (whole-model latency): a pruning penalty when a table is given."""
    return LatencyCost(table)


def _positive(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0:
        raise ConfigError(f"{what} must be a finite positive number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class CostTarget:
    """What a cost should come to, under the registered cost model ``kind``: the one target type.

    Exactly one form: ``ratio`` of a base model's cost (pruning: ``CostTarget.relative("macs", 0.5)``),
    an absolute ``value`` in the model's unit (generation: MACs per image, seconds per batch), or an
    interval ``low``..``high`` searched by a study (``log``: on a log scale).  ``table`` names the latency
    table a spec gives; ``model`` is the cost model once built (:meth:`bind`; not part of equality).
    Its JSON shape (:meth:`to_dict`) is ``{"kind", then ratio | value | low, high, log, [table]}``;
    :meth:`from_dict` also reads the shapes earlier versions wrote.
    """

    kind: str
    ratio: float | None = None
    value: float | None = None
    low: float | None = None
    high: float | None = None
    log: bool = True
    table: str | None = None
    model: CostModel | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        COSTS.get(self.kind)  # raises with the known names
        forms = (self.ratio is not None) + (self.value is not None) + (self.low is not None or self.high is not None)
        if forms != 1:
            raise ConfigError(f"a {self.kind} target is one of a ratio, a value or a low..high interval")
        r = self.ratio
        if r is not None:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
                raise ConfigError(f"target_{self.kind} must be a finite number, got {r!r}")
            if not 0 < r < 1:
                raise ConfigError(f"target_{self.kind} must be a fraction in (0, 1) of the base cost, got {r}")
        if self.value is not None:
            _positive(self.value, f"a {self.kind} budget")
        if self.ratio is None and self.value is None:
            lo, hi = _positive(self.low, "budget low"), _positive(self.high, "budget high")
            if not lo < hi:
                raise ConfigError(f"budget: low must be below high (got {lo:g}, {hi:g})")
        if not isinstance(self.log, bool):
            raise ConfigError(f"budget.log must be true or false, got {self.log!r}")

    # --- the three forms -------------------------------------------------------------------------
    @classmethod
    def relative(cls, kind: str, ratio: float) -> CostTarget:
        """``ratio`` of a base model's cost under ``kind`` (what pruning stops at)."""
        return cls(kind, ratio=ratio)

    @classmethod
    def macs(cls, ratio: float) -> CostTarget:
        """Stop at ``ratio`` of the base model's MACs."""
        return cls.relative(MACS, ratio)

    @classmethod
    def latency(cls, ratio: float) -> CostTarget:
        """Stop at ``ratio`` of the base model's latency predicted by a table."""
        return cls.relative(LATENCY, ratio)

    @classmethod
    def of(cls, **ratios: float | None) -> CostTarget:
        """The one relative target among exclusive options by cost name (``of(macs=None, latency=0.6)``)."""
        given = [(k, r) for k, r in ratios.items() if r is not None]
        if len(given) != 1:
            names = " and ".join(f"target_{k}" for k in ratios) or "the target options"
            raise ConfigError(f"give exactly one of {names} (fractions of the base cost)")
        return cls.relative(*given[0])

    @classmethod
    def absolute(cls, kind: str, value: float, model: CostModel | None = None) -> CostTarget:
        """``value`` in ``kind``'s unit (what generation meets), with its built ``model`` if there is one."""
        return cls(kind, value=value, model=model)

    @classmethod
    def from_spec(cls, raw: Any, table: str | None = None) -> CostTarget:
        """A study spec's ``budget``: ``{KEY: VALUE}`` or ``{KEY: {low, high}}`` (``KEY``: a cost model's
        :attr:`~CostModel.spec_key`, ``macs`` or ``latency_ms``), with ``table`` and ``log``."""
        keys = {c.spec_key: n for n, c in COSTS.loaded().items()}
        given = [k for k in keys if isinstance(raw, Mapping) and k in raw]
        if not isinstance(raw, Mapping) or len(given) != 1:
            raise ConfigError(f"budget: give exactly one of {', '.join(keys)} (a value or {{low, high}}; "
                              "a latency budget with table: FILE)")
        key = given[0]
        unknown = set(raw) - {*keys, "table", "log"}
        if unknown:
            raise ConfigError(f"budget: unknown key(s) {', '.join(sorted(map(str, unknown)))} (known: "
                              f"{', '.join([*keys, 'table', 'log'])})")
        kind, v, tbl = keys[key], raw[key], raw.get("table") or table
        cost = COSTS.get(kind)
        if cost.needs_table and not tbl:
            raise ConfigError(f"a {kind} budget needs budget.table (a latency table JSON)")
        if not isinstance(raw.get("log", True), bool):
            raise ConfigError(f"budget.log must be true or false, got {raw['log']!r}")
        if isinstance(v, Mapping):
            return cls(kind, low=cost.parse_value(v.get("low"), "budget low"),
                       high=cost.parse_value(v.get("high"), "budget high"), log=raw.get("log", True), table=tbl)
        return cls(kind, value=cost.parse_value(v, "budget"), table=tbl)

    # --- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The one JSON shape: ``kind`` and the form's fields (``table`` when one is named)."""
        d: dict[str, Any] = {"kind": self.kind}
        if self.ratio is not None:
            d["ratio"] = self.ratio
        elif self.value is not None:
            d["value"] = self.value
        else:
            d.update(low=self.low, high=self.high, log=self.log)
        return {**d, "table": self.table} if self.table else d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CostTarget:
        """A target from :meth:`to_dict`, or from what earlier versions wrote: a prune trace header's or
        metrics.json's ``{kind, ratio[, value, base]}``, a generated config's budget ``{kind, value, unit,
        batch_size}``, a study budget's ``{kind, value, low, high, log, table}`` and a prune run's settings
        (``target``: the ratio, ``target_kind``)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a cost target is a mapping with a kind, got {d!r}")
        if "target_kind" in d:
            return cls.relative(d["target_kind"], d["target"])
        if not isinstance(d.get("kind"), str):
            raise ConfigError(f"a cost target needs a kind (one of {', '.join(COSTS.names())}), got {d!r}")
        if d.get("ratio") is not None:
            return cls.relative(d["kind"], d["ratio"])
        if d.get("value") is not None:
            return cls(d["kind"], value=d["value"], table=d.get("table"))
        return cls(d["kind"], low=d.get("low"), high=d.get("high"), log=d.get("log", True), table=d.get("table"))

    def fingerprint(self) -> dict[str, Any]:
        """The fields that decide a study's trials, as a study's fingerprint has always hashed them."""
        return {"kind": self.kind, "value": self.value, "low": self.low, "high": self.high, "log": self.log,
                "table": self.table}

    # --- the cost model ----------------------------------------------------------------------------
    @property
    def cost_class(self) -> type[CostModel]:
        return COSTS.get(self.kind)

    @property
    def needs_table(self) -> bool:
        return self.cost_class.needs_table

    def cost_model(self, table: LatencyTableLike | None = None, **kwargs: Any) -> CostModel:
        """The cost this target is measured in: the bound one, else built (raises when it needs a table and
        none is given: the one check of that)."""
        return self.model if self.model is not None else build_cost(self.kind, table, **kwargs)

    def bind(self, table: LatencyTableLike | None = None, **kwargs: Any) -> CostTarget:
        """This target with its cost model built once (``table`` for a latency one); the value, validated
        when the target was made, is not checked again."""
        bound = copy.copy(self)
        object.__setattr__(bound, "model", self.cost_model(table, **kwargs))
        return bound

    @property
    def unit(self) -> str:
        return self.model.unit if self.model is not None else str(getattr(self.cost_class, "unit", self.kind))

    @property
    def searched(self) -> bool:
        return self.low is not None

    def fmt(self, x: float) -> str:
        """A value of this target's cost for humans (the built model's format, with its context)."""
        return self.model.format(x) if self.model is not None else self.cost_class.format_value(x)

    def describe(self) -> str:
        if self.ratio is not None:
            return f"{self.ratio:g} x the base {self.kind}"
        if self.value is not None:
            return self.fmt(self.value)
        return f"{self.fmt(float(self.low or 0))} .. {self.fmt(float(self.high or 0))} (searched)"

    def baseline_values(self) -> list[float]:
        """Values at which a study's baselines run: the fixed one, or low, geometric middle and high."""
        if self.value is not None:
            return [self.value]
        lo, hi = float(self.low or 0), float(self.high or 0)
        return [lo, math.sqrt(lo * hi), hi]

    def at(self, value: float, table: LatencyTableLike | None = None) -> CostTarget:
        """The absolute target ``value`` of this kind, its model built (a point of a searched interval)."""
        return CostTarget.absolute(self.kind, value, self.cost_model(table))


__all__ = ["COSTS", "LATENCY", "MACS", "CostModel", "CostTarget", "LatencyCost", "LatencyTableLike", "MacsCost",
           "build_cost", "min_config", "shrink", "shrunk_block", "table_cost"]
