"""The searched space of a study: the families (``space:`` one mapping or a list) and their parameter ranges.

A family may search depth too (``depth: [low, high]``, integers): each trial then suggests ``depth`` (Optuna's
``suggest_int``) and its config is generated at that depth.  When a rule family searches depth, every uniform
family that gives no ``depth`` of its own searches the same range (the hull of the rule families' ranges), so
the rule-vs-uniform comparison stays fair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from revit.config import Setting
from revit.errors import ConfigError, check_keys
from revit.input_checks import check_int, check_number


@dataclass(frozen=True)
class ParamRange:
    """One searched parameter: a float interval, optionally log-scaled."""

    name: str
    low: float
    high: float
    log: bool = False
    step: int | None = None  # an integer parameter (Optuna's suggest_int) on this step

    @property
    def integer(self) -> bool:
        return self.step is not None


@dataclass(frozen=True)
class FamilySpace:
    """One searched family: a rule family, its searched ranges, and the rule the other parameters keep.

    ``name`` tags its trials (user attribute ``family``); ``base_rule`` None means the family's defaults.
    """

    name: str
    family: str
    params: tuple[ParamRange, ...]
    base_rule: str | None = None
    granularity: Any = None
    mlp_factor: tuple[float, float] = (0.5, 2.0)
    depth: tuple[int, int] | None = None  # searched depth (inclusive); None: the setting's depth
    depth_from: str | None = None  # the rule family whose depth range a uniform family took (fairness)


_SPACE_KEYS = ("family", "name", "base", "params", "granularity", "mlp_factor", "depth")


def parse_spaces(raw: Any, setting: Setting) -> tuple[FamilySpace, ...]:
    """``space:``: one family (a mapping) or a list of them, each tagged by a unique ``name``."""
    if isinstance(raw, Mapping):
        return (_space(raw, "space", setting),)
    if isinstance(raw, Sequence) and not isinstance(raw, str) and raw:
        out = tuple(_space(x, f"space[{i}]", setting) for i, x in enumerate(raw))
        names = [s.name for s in out]
        if len(set(names)) != len(names):
            raise ConfigError(f"space: two families have the same name ({', '.join(names)}); give each a 'name'")
        return fair_depths(out)
    raise ConfigError("space: a mapping with 'family' (a rule family) and 'params' (searched ranges), "
                      "or a list of such mappings (one per searched family)")


def _space(raw: Any, where: str, setting: Setting) -> FamilySpace:
    from revit.config import Granularity
    from revit.rules import get_family

    if not isinstance(raw, Mapping) or "family" not in raw:
        raise ConfigError(f"{where}: a mapping with 'family' (a rule family) and 'params' (searched ranges)")
    check_keys(raw, _SPACE_KEYS, where)
    family = str(raw["family"])
    fam = get_family(family)
    name = str(raw.get("name") or family)
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"{where}.name must be letters, digits, '-', '_' or '.', got {name!r}")
    ranges = []
    params = raw.get("params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}.params must be a mapping of parameter names to [low, high], got {params!r}")
    for pname, r in params.items():
        if pname not in fam.params:
            raise ConfigError(f"{where}.params: {pname!r} is not a parameter of family {family!r}; "
                              f"known: {', '.join(fam.params) or 'none'}")
        step = None
        kind = fam.params[pname].integer_step  # the family says which parameters are integers, on which step
        if kind is not None:
            gran = Granularity.parse(raw.get("granularity"), setting.img_size)
            step = int(getattr(gran, kind))
        ranges.append(_range(pname, r, fam.params[pname].low, fam.params[pname].high, f"{where}.params", step))
    if not ranges:
        raise ConfigError(f"{where}.params: give at least one parameter of {family!r} to search: "
                          f"{', '.join(fam.params)}")
    if raw.get("depth") is not None and "depth" in fam.params:
        raise ConfigError(f"{where}.depth: family {family!r} has a parameter named depth; search it in params")
    mf = raw.get("mlp_factor", [0.5, 2.0])
    if not (isinstance(mf, Sequence) and not isinstance(mf, str) and len(mf) == 2):
        raise ConfigError(f"{where}.mlp_factor must be [low, high], got {mf!r}")
    for x in mf:
        check_number(x, f"{where}.mlp_factor", 0, lo_open=True)
    if not mf[0] <= mf[1]:
        raise ConfigError(f"{where}.mlp_factor must be [low, high] with low <= high, got {list(mf)}")
    return FamilySpace(name, family, tuple(ranges), raw.get("base"), raw.get("granularity"),
                       (float(mf[0]), float(mf[1])), _depth(raw.get("depth"), f"{where}.depth"))


def _depth(raw: Any, at: str) -> tuple[int, int] | None:
    """``depth``: ``[low, high]`` or ``{low, high}``, integers with 1 <= low <= high (None: not searched)."""
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        check_keys(raw, ("low", "high"), at)
        raw = [raw.get("low"), raw.get("high")]
    if not (isinstance(raw, Sequence) and not isinstance(raw, str) and len(raw) == 2):
        raise ConfigError(f"{at} must be [low, high] or {{low, high}} (numbers of blocks), got {str(raw)[:60]}")
    low, high = (check_int(x, f"{at} {end}", 1) for x, end in zip(raw, ("low", "high"), strict=True))
    if low > high:
        raise ConfigError(f"{at} must have low <= high, got [{low}, {high}]")
    return low, high


def fair_depths(spaces: tuple[FamilySpace, ...]) -> tuple[FamilySpace, ...]:
    """The spaces with every uniform family that gives no ``depth`` searching the rule families' depths too (the
    hull of their ranges), so a rule family that may change depth is compared with a uniform one that may too."""
    from revit.rules import get_family

    rules = [s for s in spaces if s.depth is not None and not get_family(s.family).uniform]
    if not rules:
        return spaces
    hull = (min(s.depth[0] for s in rules if s.depth), max(s.depth[1] for s in rules if s.depth))
    return tuple(replace(s, depth=hull, depth_from=", ".join(r.name for r in rules))
                 if s.depth is None and get_family(s.family).uniform else s for s in spaces)


def _range(name: str, r: Any, lo: float, hi: float, where: str = "space.params",
           step: int | None = None) -> ParamRange:
    """A searched interval inside the family's bounds; ``step``: an integer parameter (default step)."""
    at = f"{where}.{name}"
    if isinstance(r, Sequence) and not isinstance(r, str) and len(r) == 2:
        out = ParamRange(name, float(check_number(r[0], f"{at} low")), float(check_number(r[1], f"{at} high")),
                         step=step)
    elif isinstance(r, Mapping) and {"low", "high"} <= set(r):
        check_keys(r, ("low", "high", "log") + (("step",) if step is not None else ()), at)
        log = r.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{at}.log must be true or false, got {log!r}")
        out = ParamRange(name, float(check_number(r["low"], f"{at} low")),
                         float(check_number(r["high"], f"{at} high")), log,
                         int(check_number(r.get("step", step), f"{at}.step", 1)) if step is not None else None)
    else:
        raise ConfigError(f"{where}.{name}: give [low, high] or {{low, high, log}}, got {r!r}")
    if not lo <= out.low < out.high <= hi:
        raise ConfigError(f"{where}.{name}: [{out.low}, {out.high}] must be an interval inside the "
                          f"family's bounds [{lo}, {hi}]")
    if out.log and out.low <= 0:
        raise ConfigError(f"{where}.{name}: a log range needs low > 0")
    if out.step is not None:
        if out.log and out.step != 1:
            raise ConfigError(f"{where}.{name}: a log range of an integer parameter needs step 1")
        if out.step < 1 or out.low < 1 or not (out.low.is_integer() and out.high.is_integer()) \
                or (out.high - out.low) % out.step:
            raise ConfigError(f"{where}.{name}: an integer parameter needs integer low >= 1 and high with "
                              f"high - low a multiple of the step {out.step}, got [{out.low:g}, {out.high:g}]")
    return out
