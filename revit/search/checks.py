"""Checks a study must pass before its storage is created: the rules exist, the budget is reachable by some
searched family or baseline, and the data loads and fits the setting (``revit search run`` calls
:func:`check_study` first, so a study that cannot succeed leaves no database behind)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from revit.cost import COSTS
from revit.errors import ConfigError
from revit.search.spec import ParamRange, StudySpec

log = logging.getLogger(__name__)


def _searched_families(spec: StudySpec) -> list[tuple[Any, tuple[ParamRange, ...]]]:
    """(space, searched ranges) of every searched family."""
    return [(fs, tuple(fs.params)) for fs in spec.spaces]


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
    from revit.search.arms import baseline_arm, candidate_rule, generate_arm

    table = _budget_table(spec)
    for value in _budgets(spec):
        errors: list[str] = []
        for fs, ranges in _searched_families(spec):
            try:
                generate_arm(spec, candidate_rule(spec, {r.name: _middle(r) for r in ranges}, fs), value, table,
                             name="check", space=fs, depth=fs.depth)
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


def _budget_table(spec: StudySpec) -> Any:
    """The latency table a latency budget is priced on (None for a MACs budget)."""
    if spec.budget.needs_table and spec.budget.table:
        from revit.latency.table import LatencyTable

        return LatencyTable.load(spec.budget.table)
    return None


def _budgets(spec: StudySpec) -> list[float]:
    """The budgets a study uses: the fixed one, or the low and high ends of a searched one."""
    b = spec.budget
    values = [b.value] if b.value is not None else [b.low, b.high]
    return [float(v) for v in values if v is not None]


def check_depths(spec: StudySpec) -> None:
    """Refuse a searched depth range that a family's rule cannot make (above its limit), or at which no config of
    the family (at the middle of its ranges) meets a budget of the study: every such trial would be infeasible."""
    from revit.errors import BudgetError
    from revit.rules.generate import check_depth_range
    from revit.search.arms import candidate_rule, generate_arm

    searched = [(fs, ranges) for fs, ranges in _searched_families(spec) if fs.depth is not None]
    table = _budget_table(spec) if searched else None
    for fs, ranges in searched:
        assert fs.depth is not None
        rule = candidate_rule(spec, {r.name: _middle(r) for r in ranges}, fs)
        where = f"space {fs.name!r} depth {fs.depth[0]}..{fs.depth[1]}"
        where += f" (the range of {fs.depth_from}, for a fair comparison)" if fs.depth_from else ""
        try:
            check_depth_range(rule, fs.depth)
            for value in _budgets(spec):
                generate_arm(spec, rule, value, table, name="check", space=fs, depth=fs.depth)
        except (BudgetError, ConfigError) as e:
            raise ConfigError(f"{where}: {e}") from None


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

    bases = [fs.base_rule for fs in spec.spaces]
    for name in [b.rule for b in spec.baselines] + [r for r in bases if r]:
        load_rule(name)


def table_coverage(spec: StudySpec, samples: int = 64) -> dict[str, float]:
    """The share of each searched family's space whose configs the latency table can predict.

    ``samples`` points per family (a scrambled Sobol sequence over its ranges; the budget at its middle
    when searched) are generated as trials would be; a point the budget cannot reach does not count.
    """
    from scipy.stats import qmc

    from revit.errors import BudgetError, OutsideDomainError
    from revit.latency.table import LatencyTable
    from revit.search.arms import candidate_rule, generate_arm

    assert spec.latency_table is not None
    table = LatencyTable.load(spec.latency_table)
    b = spec.budget
    budget = b.value if b.value is not None else math.sqrt(float(b.low) * float(b.high))  # type: ignore[arg-type]
    out: dict[str, float] = {}
    for fs in spec.spaces:
        pts = qmc.Sobol(len(fs.params), seed=0).random(samples)
        inside = feasible = 0
        for u in pts:
            values = {}
            for r, x in zip(fs.params, u, strict=True):
                v = math.exp(math.log(r.low) + x * (math.log(r.high) - math.log(r.low))) if r.log else \
                    r.low + x * (r.high - r.low)
                values[r.name] = float(min(max(round(v / r.step) * r.step, r.low), r.high)) if r.step else v
            try:
                gen = generate_arm(spec, candidate_rule(spec, values, fs), budget, table, name="check", space=fs,
                                   depth=fs.depth)
            except (BudgetError, OutsideDomainError):
                continue
            feasible += 1
            try:
                table.predict(gen.config)
                inside += 1
            except OutsideDomainError:
                pass
        out[fs.name] = inside / feasible if feasible else 0.0
    return out


def check_table_coverage(spec: StudySpec) -> dict[str, float]:
    """With a latency objective: log how much of each family's space the table covers; refuse a family
    the table cannot price at all (every trial would be pruned)."""
    if not any(COSTS.get(o).needs_table for o in spec.objectives[1:]):
        return {}
    cov = table_coverage(spec)
    for fam, share in cov.items():
        log.info("latency table covers %.0f%% of family %s's space (the rest is pruned as infeasible)",
                 100 * share, fam)
    empty = [f for f, share in cov.items() if share == 0]
    if empty:
        raise ConfigError(f"the latency table {spec.latency_table} predicts no config of famil"
                          f"{'ies' if len(empty) > 1 else 'y'} {', '.join(empty)}: narrow the ranges or use a "
                          "table with wider axes")
    return cov


def check_study(spec: StudySpec, *, data: bool = True) -> None:
    """Everything that would make every trial fail (budget, data, setting, a table that prices no config),
    checked before the study is created."""
    check_rules(spec)
    check_depths(spec)
    check_budget(spec)
    check_table_coverage(spec)
    if data:
        check_data(spec)
