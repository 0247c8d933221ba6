"""Checks a study must pass before its storage is created: the rules exist, the budget is reachable by some
searched family or baseline, and the data loads and fits the setting (``revit search run`` calls
:func:`check_study` first, so a study that cannot succeed leaves no database behind)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from revit.errors import ConfigError
from revit.search.spec import ParamRange, StudySpec


def _searched_families(spec: StudySpec) -> list[tuple[Any, tuple[ParamRange, ...]]]:
    """(space, searched ranges) of every searched family; the space is None for a one-family spec.

    Written for both spec shapes: one ``space:`` mapping, and the list of families (``spec.spaces``).
    """
    spaces = getattr(spec, "spaces", None)
    return [(fs, tuple(fs.params)) for fs in spaces] if spaces else [(None, spec.search_params)]


def _middle(r: ParamRange) -> float:
    """The middle of a searched range (geometric when log-scaled; on the step of an integer parameter)."""
    v = math.sqrt(r.low * r.high) if r.log else (r.low + r.high) / 2
    step = getattr(r, "step", None)
    return float(min(max(round(v / step) * step, r.low), r.high)) if step else v


def check_budget(spec: StudySpec) -> None:
    """Refuse a budget no config of the study can meet (``macs: 900T`` or ``1K``), before a study exists.

    Each budget the study uses (the fixed one; low and high when searched) must be reachable by at
    least one of its arms: a searched family at the middle of its ranges, or a baseline.
    """
    from revit.errors import BudgetError, OutsideDomainError
    from revit.search.objective import _generate, baseline_arm, candidate_rule

    table = None
    if spec.budget.kind == "latency" and spec.budget.table:
        from revit.latency.table import LatencyTable

        table = LatencyTable.load(spec.budget.table)
    b = spec.budget
    for value in ([b.value] if b.value is not None else [b.low, b.high]):
        assert value is not None
        errors: list[str] = []
        for fs, ranges in _searched_families(spec):
            kw = {} if fs is None else {"space": fs}
            try:
                _generate(spec, candidate_rule(spec, {r.name: _middle(r) for r in ranges}, **kw), value, table,
                          name="check", **kw)
                break
            except (BudgetError, OutsideDomainError) as e:
                errors.append(str(e))
        else:
            for arm in spec.baselines:
                try:
                    baseline_arm(spec, arm, value, table)
                    break
                except (BudgetError, OutsideDomainError) as e:
                    errors.append(str(e))
            else:
                raise ConfigError(f"budget {spec.budget.fmt(value)} cannot be met by any config of this study "
                                  f"(setting {spec.setting.img_size}px/{spec.setting.patch_size}, depth "
                                  f"{spec.setting.depth}): {errors[0]}")


def check_data(spec: StudySpec) -> None:
    """Refuse data that cannot load or does not fit the setting (classes, channels), before a study exists."""
    from revit.data import DATASETS, load_splits

    src = spec.data.source
    if DATASETS.get(src) is None and not Path(src).is_dir():
        raise ConfigError(f"data.source {src!r}: no such dataset or folder (known: {', '.join(DATASETS)}, "
                          "or an ImageFolder path)")
    from revit.search.objective import check_splits

    check_splits(load_splits(spec.data, spec.train_config(spec.seeds[0])), spec.setting, src)


def check_rules(spec: StudySpec) -> None:
    """Every rule the study names (baselines, space.base) exists: an unknown one is refused before the study."""
    from revit.rules import load_rule

    bases = [fs.base_rule if fs is not None else spec.base_rule for fs, _ in _searched_families(spec)]
    for name in [b.rule for b in spec.baselines] + [r for r in bases if r]:
        load_rule(name)


def check_study(spec: StudySpec, *, data: bool = True) -> None:
    """Everything that would make every trial fail (budget, data, setting), checked before the study is created."""
    check_rules(spec)
    check_budget(spec)
    if data:
        check_data(spec)
