"""Generate a config from a rule: at a given width, or for a MACs or latency budget.

Generation is generic over a :class:`~revit.cost.CostModel` (monotone in the widths): MACs
(:func:`macs_budget`) and predicted latency (:func:`latency_budget`) are two such models.
For a budget it searches the embedding width on its granularity and one global MLP factor (every
block's MLP scaled, then rounded to its granularity) for a rounded config within the tolerance
(1%), preferring the factor nearest 1 (the rule as written).  A depth range (``depth=(low, high)``) is searched
too: the depths are tried in the family's order of preference (:func:`depth_order`) and the first that meets the
budget is taken.  Pure Python: no torch, no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from revit import counting
from revit.config import Granularity, Setting, ViTConfig
from revit.cost import LATENCY, MACS, CostTarget, LatencyTableLike, MacsCost
from revit.errors import BudgetError, ConfigError, OutsideDomainError, TableRangeError
from revit.rules.base import DomainNote
from revit.rules.rule import Rule

FACTOR_STEP = 1000  # MLP factors are searched in steps of 1/1000
# a depth: None (the setting's, as the rule's family builds it), a number of blocks, or (low, high) to search
Depth = int | tuple[int, int] | None


def macs_budget(value: float | str, convention: counting.Convention = "nvit") -> CostTarget:
    """A MACs budget (``4.6G``, ``150M`` or a number) in the given counting convention."""
    v = counting.parse_count(value) if isinstance(value, str) else value
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ConfigError(f"a MACs budget must be positive, got {value!r}")
    return CostTarget.absolute(MACS, float(v), MacsCost(convention))


def latency_budget(seconds: float, table: LatencyTableLike) -> CostTarget:
    """A latency budget in seconds per batch of the table's batch size, on the table's predictions.

    A config the table cannot predict (outside its measured range) counts as not a candidate.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ConfigError(f"a latency budget must be positive, got {seconds!r} s")
    return CostTarget(LATENCY, value=float(seconds)).bind(table)


def budget_json(budget: CostTarget) -> dict[str, Any]:
    """A generation budget as ``revit generate --json`` writes it: the one target shape, with its unit and
    (for a table's cost) the batch size its values are per."""
    return {**budget.to_dict(), "unit": budget.unit, "batch_size": getattr(budget.model, "batch_size", None)}


@dataclass(frozen=True)
class GenerationBounds:
    """The bounds of generation for a budget: the embedding widths and the MLP factor interval it may use, and
    the largest gap to the budget it accepts (the tolerance)."""

    min_embed: int | None = None  # default: the embed granularity
    max_embed: int = 2048
    min_mlp_factor: float = 0.5
    max_mlp_factor: float = 2.0
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        if not 0 < self.min_mlp_factor <= 1 <= self.max_mlp_factor:
            raise ConfigError("the MLP factor interval must contain 1 "
                              f"(got {self.min_mlp_factor}..{self.max_mlp_factor})")
        if not 0 < self.tolerance < 0.5:
            raise ConfigError(f"tolerance must be in (0, 0.5), got {self.tolerance}")


@dataclass(frozen=True)
class Generated:
    """A generated config and how it was found."""

    config: ViTConfig
    rule: Rule
    granularity: Granularity
    mlp_factor: float
    budget: CostTarget | None = None
    cost: float | None = None
    notes: tuple[DomainNote, ...] = field(default_factory=tuple)
    depth_range: tuple[int, int] | None = None  # the depths searched for the budget (None: one depth)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def outside_domain(self) -> tuple[DomainNote, ...]:
        """The notes saying the rule was applied outside the domain it was written for."""
        return tuple(n for n in self.notes if n.outside)

    @property
    def gap(self) -> float | None:
        """(cost - budget) / budget, or None without a budget."""
        if self.budget is None or self.cost is None:
            return None
        return self.cost / float(self.budget.value or 0.0) - 1

    def summary(self) -> str:
        """One human line: rule, widths, MACs, params, factor and the gap to the budget."""
        cfg = self.config
        span = f" (searched {self.depth_range[0]}..{self.depth_range[1]})" if self.depth_range else ""
        parts = [f"rule {self.rule.name} ({self.rule.family})", f"EMB {cfg.embed_dim}", f"depth {cfg.depth}{span}",
                 f"MACs {counting.format_count(counting.macs(cfg))}",
                 f"params {counting.format_count(counting.params(cfg))}",
                 f"MLP factor {self.mlp_factor:g}"]
        if self.budget is not None and self.cost is not None:
            parts.append(f"budget {self.budget.describe()}, got {self.budget.fmt(self.cost)} "
                         f"({100 * (self.gap or 0.0):+.2f}%)")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        d: dict[str, Any] = {
            "config": cfg.to_dict(), "rule": self.rule.name, "family": self.rule.family,
            "embed_dim": cfg.embed_dim, "depth": cfg.depth, "mlp_factor": self.mlp_factor,
            "macs": counting.macs(cfg), "macs_convention": "nvit", "macs_linear_only": counting.macs(cfg, "timm"),
            "params": counting.params(cfg), "granularity": self.granularity.to_dict(),
            "notes": [n.text for n in self.notes],
            "depth_range": list(self.depth_range) if self.depth_range else None,
        }
        if self.budget is not None:
            d["budget"] = budget_json(self.budget)
            d["cost"] = self.cost
            d["gap"] = self.gap
        return d


def _name(rule: Rule, embed_dim: int, name: str | None) -> str:
    return name or f"{rule.name}_e{embed_dim}"


def apply_rule(rule: Rule | str, embed_dim: int, setting: Setting | str = Setting(), *, granularity: Any = None,
               mlp_factor: float = 1.0, name: str | None = None, depth: int | None = None) -> Generated:
    """The rule evaluated exactly at ``embed_dim`` (and ``mlp_factor``) in ``setting`` (names as :func:`generate`),
    at ``depth`` blocks (None: the setting's, as the rule's family builds it)."""
    rule, setting = as_rule(rule), as_setting(setting)
    if depth is not None and not isinstance(depth, int):
        raise ConfigError(f"apply_rule takes one depth (a range needs a budget: generate), got {depth!r}")
    setting = at_depth(rule, setting, depth)
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
        raise ConfigError(f"embed_dim must be a positive integer, got {embed_dim!r}")
    if not mlp_factor > 0:
        raise ConfigError(f"the MLP factor must be positive, got {mlp_factor}")
    gran = rule.resolve_granularity(setting.img_size, granularity)
    blocks = rule.blocks(embed_dim, setting.depth, gran, mlp_factor)
    cfg = setting.config(embed_dim, blocks, _name(rule, embed_dim, name))
    return Generated(cfg, rule, gran, mlp_factor, notes=tuple(rule.domain_notes(embed_dim, setting.depth)))


class _Search:
    """Cached cost evaluations over (embed width, MLP factor step) for one rule and setting."""

    def __init__(self, rule: Rule, setting: Setting, gran: Granularity, budget: CostTarget,
                 bounds: GenerationBounds) -> None:
        self.rule, self.setting, self.gran, self.budget, self.bounds = rule, setting, gran, budget, bounds
        self.value, self.model = float(budget.value or 0.0), budget.cost_model()  # as_budget: absolute, bound
        lo = bounds.min_embed or gran.embed_dim
        lo = -(-lo // gran.embed_dim) * gran.embed_dim
        if bounds.max_embed < lo:
            raise ConfigError(f"max embed width {bounds.max_embed} is below the smallest one {lo}")
        self.grid = list(range(lo, bounds.max_embed + 1, gran.embed_dim))
        self.k_min = math.ceil(bounds.min_mlp_factor * FACTOR_STEP - 1e-9)
        self.k_max = math.floor(bounds.max_mlp_factor * FACTOR_STEP + 1e-9)
        self._cache: dict[tuple[int, int], float] = {}
        # why the first uncostable config was refused, keyed by "a width other than EMB was out of range"
        self._refusals: dict[bool, str] = {}

    def config(self, e: int, k: int) -> ViTConfig:
        blocks = self.rule.blocks(e, self.setting.depth, self.gran, k / FACTOR_STEP)
        return self.setting.config(e, blocks)

    def cost(self, e: int, k: int) -> float:
        key = (e, k)
        if key not in self._cache:
            try:
                self._cache[key] = self.model.cost(self.config(e, k))
            except OutsideDomainError as err:  # e.g. outside the latency table's measured range: not a candidate
                self._cache[key] = math.nan
                other = not (isinstance(err, TableRangeError) and err.axis == "embed_dim")
                self._refusals.setdefault(other, f"at EMB {e}: {err.message}")
        return self._cache[key]

    @property
    def outside(self) -> str | None:
        """The refusal to show: one naming a width other than EMB when there is one (the EMB grid runs past
        the table's range on purpose, so another width out of range is the news), else the first."""
        return self._refusals.get(True) or self._refusals.get(False)

    def within(self, c: float) -> bool:
        """Whether cost ``c`` is within the tolerance of the budget."""
        return abs(c / self.value - 1) <= self.bounds.tolerance

    def ok(self, e: int, k: int) -> bool:
        return not math.isnan(self.cost(e, k))

    def k_range(self, e: int) -> tuple[int, int] | None:
        """The factor steps at which ``e`` can be costed (an interval), or None.

        Costable configs form an interval in the factor (a table's MLP axis is an interval);
        it is searched from factor 1 when that is costable, else from the smallest factor.
        """
        if self.ok(e, FACTOR_STEP):
            return self._edge(e, self.k_min, FACTOR_STEP), self._edge(e, self.k_max, FACTOR_STEP)
        if self.ok(e, self.k_min):
            return self.k_min, self._edge(e, FACTOR_STEP, self.k_min)
        return None

    def _edge(self, e: int, far: int, near: int) -> int:
        """The valid step nearest ``far`` between ``near`` (valid) and ``far`` (validity is an interval)."""
        if self.ok(e, far):
            return far
        while abs(far - near) > 1:
            mid = (far + near) // 2
            if self.ok(e, mid):
                near = mid
            else:
                far = mid
        return near

    def solve(self, e: int, kr: tuple[int, int]) -> tuple[int, float]:
        """The factor step at ``e`` whose cost is nearest the budget (cost is monotone in it)."""
        b = self.value
        lo, hi = kr
        if self.cost(e, lo) >= b:
            return lo, self.cost(e, lo)
        if self.cost(e, hi) <= b:
            return hi, self.cost(e, hi)
        while hi - lo > 1:  # invariant: cost(lo) < b < cost(hi)
            mid = (lo + hi) // 2
            if self.cost(e, mid) < b:
                lo = mid
            else:
                hi = mid
        best = min((lo, hi), key=lambda k: (abs(self.cost(e, k) - b), abs(k - FACTOR_STEP)))
        return best, self.cost(e, best)


def as_rule(rule: Rule | str) -> Rule:
    """A :class:`Rule`, or one by name as the CLI's ``--rule`` takes it (``paper``, ``uniform``, a YAML path)."""
    from revit.rules.rule import load_rule

    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str):
        return load_rule(rule)
    raise ConfigError(f"rule must be a Rule or a rule name/path such as 'paper', got {type(rule).__name__}")


def as_budget(budget: CostTarget | str | float) -> CostTarget:
    """An absolute :class:`~revit.cost.CostTarget`, or a MACs budget as the CLI's ``--macs`` takes it (``1.3G``,
    ``150M``, a number)."""
    if isinstance(budget, CostTarget):
        if budget.value is None:
            raise ConfigError(f"a generation budget is an absolute value (CostTarget.absolute), got {budget!r}")
        return budget
    if isinstance(budget, str) or (isinstance(budget, int | float) and not isinstance(budget, bool)):
        return macs_budget(budget)
    raise ConfigError(f"budget must be a CostTarget or a MACs count such as '1.3G', got {type(budget).__name__} (for a "
                      "latency budget use latency_budget(seconds, table))")


def as_setting(setting: Setting | str) -> Setting:
    """A :class:`Setting`, or a named one as the CLI's ``--setting`` takes it (``imagenet``, ``micro``)."""
    if isinstance(setting, Setting):
        return setting
    if isinstance(setting, str) and setting in Setting.PRESETS:
        return Setting.PRESETS[setting]
    raise ConfigError(f"setting must be a Setting or one of {', '.join(sorted(Setting.PRESETS))}, got {setting!r}")


def generate(rule: Rule | str, budget: CostTarget | str | float, setting: Setting | str = Setting(), *,
             granularity: Any = None, bounds: GenerationBounds = GenerationBounds(),
             name: str | None = None, depth: Depth = None) -> Generated:
    """The rule's config whose cost is within ``bounds.tolerance`` of ``budget``.

    ``rule``, ``budget`` and ``setting`` may be given as the CLI takes them: ``generate('paper', '1.3G')``,
    ``generate('paper', '150M', 'micro')``; anything else is a :class:`ConfigError`.  ``depth``: None (the
    setting's, as the rule's family builds it), a number of blocks, or ``(low, high)``: the first depth of
    :func:`depth_order` that meets the budget.  Raises :class:`BudgetError` naming the limit when the budget is
    below the smallest or above the largest legal config within ``bounds`` (or, rarely, falls in a gap of the
    rounding), at every depth searched.
    """
    rule, budget, setting = as_rule(rule), as_budget(budget), as_setting(setting)
    if isinstance(depth, Sequence):
        return _over_depths(rule, budget, setting, check_depth_range(rule, depth), granularity, bounds, name)
    return _generate_at(rule, budget, at_depth(rule, setting, depth), granularity, bounds, name)


def at_depth(rule: Rule, setting: Setting, depth: int | None) -> Setting:
    """``setting`` at the depth ``rule`` builds: its family's choice for the setting's depth (``depth`` None), or
    ``depth`` itself (checked against the rule's limit; refused when the family sets another)."""
    if depth is None:
        built = rule.depth_for(setting.depth, "the setting's depth")
    else:
        built = rule.depth_for(rule.check_depth(depth))
        if built != depth:
            raise ConfigError(f"rule {rule.name!r} sets its own depth ({built} blocks); depth {depth} was asked")
    return setting if built == setting.depth else replace(setting, depth=built)


def check_depth_range(rule: Rule, span: Sequence[int]) -> tuple[int, int]:
    """``(low, high)`` when both ends are depths ``rule`` can make and low <= high; else one-line ConfigError."""
    if isinstance(span, str) or len(span) != 2:
        raise ConfigError(f"a depth range is (low, high), got {span!r}")
    low, high = (rule.check_depth(d, "the depth range's end") for d in span)
    if low > high:
        raise ConfigError(f"a depth range needs low <= high, got {low}..{high}")
    return low, high


def depth_order(rule: Rule, low: int, high: int) -> list[int]:
    """The depths of ``low..high`` in the order a search for a budget tries them: nearest the family's
    :attr:`~revit.rules.base.RuleFamily.reference_depth` first when it has one (the deeper on a tie), else the
    deepest first.  The first that meets the budget is taken."""
    deepest_first = list(range(high, low - 1, -1))
    ref = rule.family_obj.reference_depth
    return sorted(deepest_first, key=lambda d: abs(d - ref)) if ref else deepest_first


def _over_depths(rule: Rule, budget: CostTarget, setting: Setting, span: tuple[int, int], granularity: Any,
                 bounds: GenerationBounds, name: str | None) -> Generated:
    """The config of the first depth of :func:`depth_order` (as the rule builds it) that meets the budget."""
    low, high = span
    ref = rule.family_obj.reference_depth
    why = f"the depth nearest its reference depth {ref}" if ref else "the deepest"
    refusals: dict[int, str] = {}
    for asked in depth_order(rule, low, high):
        d = rule.depth_for(asked)
        if d in refusals or not low <= d <= high:
            continue
        try:
            g = _generate_at(rule, budget, replace(setting, depth=d), granularity, bounds, name)
        except BudgetError as e:
            refusals[d] = e.message
            continue
        note = DomainNote(f"depth {d}: {why} of {low}..{high} at which rule {rule.name!r} meets the budget")
        return replace(g, notes=(note, *g.notes), depth_range=span)
    tried = list(refusals)
    ends = "; ".join(f"at depth {d}: {refusals[d]}" for d in dict.fromkeys((tried[0], tried[-1]))) if tried \
        else f"rule {rule.name!r} builds no depth in that range"
    raise BudgetError(f"no depth in {low}..{high} meets {budget.describe()} ({ends})")


def _generate_at(rule: Rule, budget: CostTarget, setting: Setting, granularity: Any, bounds: GenerationBounds,
                 name: str | None) -> Generated:
    """:func:`generate` at the setting's depth."""
    gran = rule.resolve_granularity(setting.img_size, granularity)
    s = _Search(rule, setting, gran, budget, bounds)
    i_lo, i_hi = _reachable(s)
    pivot = _pivot(s, i_lo, i_hi)
    # the rule as written (factor 1) when it already meets the budget
    exact = [(abs(s.cost(s.grid[i], FACTOR_STEP) / s.value - 1), i) for i in (pivot, pivot + 1)
             if i_lo <= i <= i_hi and s.ok(s.grid[i], FACTOR_STEP) and s.within(s.cost(s.grid[i], FACTOR_STEP))]
    if exact:
        return _result(s, s.grid[min(exact)[1]], FACTOR_STEP, name)
    # otherwise walk outward on both sides; the first hit on a side has that side's factor nearest 1
    hits = [hit for direction in (+1, -1) if (hit := _walk(s, pivot, direction, i_lo, i_hi)) is not None]
    if not hits:
        raise BudgetError(f"no config of rule {rule.name!r} is within {100 * bounds.tolerance:g}% of "
                          f"{budget.describe()} (a gap of the rounding); try another budget, granularity "
                          "or MLP factor range")
    _, _, e, k = min(hits)
    return _result(s, e, k, name)


def _reachable(s: _Search) -> tuple[int, int]:
    """Grid indices of the narrowest and widest costable widths; BudgetError when the budget is out of reach."""
    valid = _valid_ends(s)
    b, tol, rule = s.value, s.bounds.tolerance, s.rule.name
    if not valid:
        raise BudgetError(f"no config of rule {rule!r} with EMB {s.grid[0]}..{s.grid[-1]} can be costed "
                          f"(outside the latency table's measured range; {s.outside})")
    i_lo, i_hi = valid
    kr_lo, kr_hi = s.k_range(s.grid[i_lo]), s.k_range(s.grid[i_hi])
    assert kr_lo is not None and kr_hi is not None
    c_min, c_max = s.cost(s.grid[i_lo], kr_lo[0]), s.cost(s.grid[i_hi], kr_hi[1])
    fmt = s.budget.fmt
    if c_min > b * (1 + tol):
        raise BudgetError(f"budget {fmt(b)} is below the smallest legal config of rule {rule!r} "
                          f"here: {fmt(c_min)} (EMB {s.grid[i_lo]}, MLP factor {kr_lo[0] / FACTOR_STEP:g}, "
                          f"depth {s.setting.depth})")
    if c_max < b * (1 - tol):
        hint = ("the latency table's measured range ends there" if i_hi < len(s.grid) - 1 or kr_hi[1] < s.k_max
                else "raise the maximum embed width")
        raise BudgetError(f"budget {fmt(b)} is above the largest legal config of rule {rule!r} "
                          f"here: {fmt(c_max)} (EMB {s.grid[i_hi]}, MLP factor {kr_hi[1] / FACTOR_STEP:g}, "
                          f"depth {s.setting.depth}; {hint})")
    return i_lo, i_hi


def _pivot(s: _Search, lo: int, hi: int) -> int:
    """Index of the widest embed whose cost at factor 1 is within budget (cost is monotone in the width)."""
    b = s.value
    if s.cost(s.grid[lo], FACTOR_STEP) > b:
        return lo - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if s.ok(s.grid[mid], FACTOR_STEP) and s.cost(s.grid[mid], FACTOR_STEP) <= b:
            lo = mid
        else:
            hi = mid
    return hi if s.cost(s.grid[hi], FACTOR_STEP) <= b else lo


def _walk(s: _Search, pivot: int, direction: int, i_lo: int, i_hi: int) -> tuple[float, float, int, int] | None:
    """The first width from ``pivot`` in ``direction`` with a factor that meets the budget, as a sort key."""
    b, tol = s.value, s.bounds.tolerance
    i = pivot + 1 if direction > 0 else pivot
    while i_lo <= i <= i_hi:
        e = s.grid[i]
        kr = s.k_range(e)
        if kr is not None:
            k, c = s.solve(e, kr)
            if s.within(c):
                return abs(math.log(k / FACTOR_STEP)), abs(c / b - 1), e, k
            if direction > 0 and c > b * (1 + tol) and k == kr[0]:
                return None  # wider embeds only cost more
            if direction < 0 and c < b * (1 - tol) and k == kr[1]:
                return None  # narrower embeds only cost less
        i += direction
    return None


def _valid_ends(s: _Search) -> list[int]:
    """Indices of the narrowest and widest grid widths that can be costed at some factor (or [])."""
    first = next((i for i in range(len(s.grid)) if s.k_range(s.grid[i]) is not None), None)
    if first is None:
        return []
    last = next(i for i in range(len(s.grid) - 1, first - 1, -1) if s.k_range(s.grid[i]) is not None)
    return [first, last]


def _result(s: _Search, e: int, k: int, name: str | None) -> Generated:
    cfg = replace(s.config(e, k), name=_name(s.rule, e, name))
    return Generated(cfg, s.rule, s.gran, k / FACTOR_STEP, s.budget, s.cost(e, k),
                     tuple(s.rule.domain_notes(e, s.setting.depth)))
