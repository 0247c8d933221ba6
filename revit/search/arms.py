"""Which config a trial trains: the pure half of a study (no torch, no training).

A candidate trial of a searched family suggests that family's parameters and gets the family rule's
config for the budget; a baseline trial gets its arm's rule at its budget; both are generated as
``revit generate`` does (EMB, then the global MLP factor, met within 1%).  The runner, the pre-study
checks, the report and the torch objective (:mod:`revit.search.objective`) all use these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from revit import counting
from revit.cost import COSTS, build_cost
from revit.errors import ConfigError, OutsideDomainError, RuleDomainError
from revit.search.attrs import (
    ARM,
    BASELINE,
    BLOCKS,
    BUDGET,
    CANDIDATE,
    DEPTH,
    EMBED_DIM,
    FAMILY,
    GROUP,
    LATENCY_ESTABLISHED,
    LATENCY_MS,
    MACS,
    MEASURED_LATENCY_MS,
    MLP_FACTOR,
    PARAMS,
    REPEAT_OF,
    RETRY_OF,
    ROLE,
    SEED,
)
from revit.search.spec import BaselineSpec, FamilySpace, StudySpec

if TYPE_CHECKING:
    from optuna.trial import BaseTrial


@dataclass(frozen=True)
class Arm:
    """A generated config and how it was made (what the trial trains)."""

    generated: Any  # revit.rules.Generated
    role: str
    arm: str
    budget: float
    rule_params: dict[str, float]
    family: str = ""  # the trial's family tag: a searched family's name, or baseline:ARM
    measured: Any = None  # revit.latency.measured.MeasuredFit: how the config met the budget as timed (if it was)

    @property
    def config(self) -> Any:
        return self.generated.config


def generate_arm(spec: StudySpec, rule: Any, budget_value: float, table: Any, name: str,
                 space: FamilySpace | None = None, depth: Any = None) -> Any:
    """``rule``'s config for the budget, with the generation knobs of ``space`` (default: the first family):
    what a trial of that family (or a baseline) trains; ``depth`` as :func:`revit.rules.generate` takes it (None:
    the setting's)."""
    return _solver(spec, rule, table, name, space, depth)(budget_value)


def _solver(spec: StudySpec, rule: Any, table: Any, name: str, space: FamilySpace | None,
            depth: Any) -> Callable[[float], Any]:
    from revit.rules import GenerationBounds, generate

    fs = space or spec.spaces[0]
    bounds = GenerationBounds(min_mlp_factor=fs.mlp_factor[0], max_mlp_factor=fs.mlp_factor[1])
    return lambda value: generate(rule, spec.budget.at(value, table), spec.setting, granularity=fs.granularity,
                                  bounds=bounds, name=name, depth=depth)


def placed_arm(spec: StudySpec, rule: Any, budget_value: float, table: Any, name: str, timer: Any = None,
               space: FamilySpace | None = None, depth: Any = None) -> tuple[Any, Any]:
    """``(generated, fit)``: the config for the budget as :func:`generate_arm` gives it, or, with
    ``spec.measure_latency`` and a ``timer`` (:class:`revit.latency.measured.ExportedTimer`), re-solved until it
    meets the budget as measured (``fit``: the :class:`~revit.latency.measured.MeasuredFit`; None when predicted)."""
    solve = _solver(spec, rule, table, name, space, depth)
    m = spec.measure_latency
    if timer is None or m is None:
        return solve(budget_value), None
    from revit.latency.measured import fit_measured

    fit = fit_measured(solve, budget_value, lambda c: float(table.predict(c).total_s), timer,
                       tolerance=m.tolerance, max_rounds=m.rounds)
    return fit.generated, fit


def candidate_rule(spec: StudySpec, values: dict[str, float], space: FamilySpace | None = None) -> Any:
    """The rule of a candidate of ``space`` (default: the first family): the base rule's parameters
    (or the family's defaults) with the sampled ``values`` on top."""
    from revit.rules import Rule, load_rule

    fs = space or spec.spaces[0]
    params: dict[str, float] = {}
    granularity, max_depth = None, None
    if fs.base_rule:
        base = load_rule(fs.base_rule)
        if base.family != fs.family:
            raise ConfigError(f"space.base rule {fs.base_rule!r} is of family {base.family!r}, not {fs.family!r}")
        params, granularity, max_depth = dict(base.params), base.granularity, base.max_depth
    params.update(values)
    return Rule(name=f"{fs.name}-candidate", family=fs.family, params=params, granularity=granularity,
                max_depth=max_depth)


def baseline_arm(spec: StudySpec, b: BaselineSpec, budget_value: float, table: Any = None, timer: Any = None) -> Arm:
    """The config of baseline ``b`` at ``budget_value`` (met as measured with ``timer``: :func:`placed_arm`);
    raises :class:`BudgetError`/:class:`ConfigError` when it cannot be built, and
    :class:`~revit.errors.RuleDomainError` (an ``OutsideDomainError``) when the rule leaves its own domain (the
    baseline is then left out)."""
    from revit.rules import load_rule

    rule = load_rule(b.rule)
    if b.params:
        rule = replace(rule, params={**rule.params, **b.params})
    gen, fit = placed_arm(spec, rule, budget_value, table, f"baseline_{b.arm}", timer)
    if gen.outside_domain:
        raise RuleDomainError(f"baseline {b.arm!r} at {spec.budget.fmt(budget_value)}: {gen.outside_domain[0]}")
    return Arm(gen, BASELINE, b.arm, budget_value, dict(rule.params), family=f"baseline:{b.arm}", measured=fit)


def trial_arm(spec: StudySpec, trial: BaseTrial, table: Any = None, timer: Any = None) -> Arm:
    """The config ``trial`` trains (met as measured with ``timer``: :func:`placed_arm`); suggests the search
    parameters for a candidate trial."""
    role = trial.user_attrs.get(ROLE, CANDIDATE)
    if role == BASELINE:
        name = trial.user_attrs[ARM]
        b = next((b for b in spec.baselines if b.arm == name), None)
        if b is None:
            raise ConfigError(f"trial {trial.number}: baseline arm {name!r} is not in the spec; "
                              f"known: {', '.join(x.arm for x in spec.baselines)}")
        return baseline_arm(spec, b, float(trial.user_attrs[BUDGET]), table, timer)
    if role != CANDIDATE:
        raise ConfigError(f"trial {trial.number}: unknown role {role!r} (candidate or baseline)")
    fs = spec.space(trial.user_attrs.get(FAMILY))
    values: dict[str, float] = {}
    for p in fs.params:
        name = p.name  # each family is its own Optuna study, so its parameters keep their names
        if p.step is not None:
            values[p.name] = float(trial.suggest_int(name, int(p.low), int(p.high), step=p.step, log=p.log))
        else:
            values[p.name] = trial.suggest_float(name, p.low, p.high, log=p.log)
    depth = trial.suggest_int(DEPTH, *fs.depth) if fs.depth is not None else None
    bs = spec.budget
    if bs.value is not None:
        budget = bs.value
    else:
        assert bs.low is not None and bs.high is not None
        budget = trial.suggest_float("budget", bs.low, bs.high, log=bs.log)
    rule = candidate_rule(spec, values, fs)
    gen, fit = placed_arm(spec, rule, budget, table, f"trial_{trial.number}", timer, space=fs, depth=depth)
    return Arm(gen, CANDIDATE, f"{fs.name}-search", budget, dict(rule.params), family=fs.name, measured=fit)


def describe(spec: StudySpec, trial: BaseTrial, arm: Arm, table: Any = None) -> dict[str, Any]:
    """The user attributes that say what a trial trains (set before training)."""
    cfg = arm.config
    seed = int(trial.user_attrs.get(SEED, spec.seeds[0]))
    attrs: dict[str, Any] = {
        ROLE: arm.role, FAMILY: arm.family, ARM: arm.arm, SEED: seed, BUDGET: arm.budget,
        MACS: counting.macs(cfg), PARAMS: counting.params(cfg), EMBED_DIM: cfg.embed_dim,
        MLP_FACTOR: arm.generated.mlp_factor, DEPTH: cfg.depth,
        BLOCKS: [[b.heads, b.qk_dim, b.v_dim, b.mlp_dim] for b in cfg.blocks],
    }
    if arm.role == BASELINE:
        attrs[GROUP] = f"{arm.arm}@{spec.budget.fmt(arm.budget)}"
    else:
        first = trial.user_attrs.get(REPEAT_OF, trial.user_attrs.get(RETRY_OF, trial.number))
        attrs[GROUP] = f"{arm.family}#{first}"
    if table is not None:
        try:
            attrs[LATENCY_MS] = 1e3 * float(table.predict(cfg).total_s)
        except OutsideDomainError:
            attrs[LATENCY_MS] = None
        attrs[LATENCY_ESTABLISHED] = "predicted"
    if arm.measured is not None:  # the budget met as timed: what it measured, in how many solves, and whether met
        attrs[LATENCY_ESTABLISHED] = "measured" if arm.measured.met else "measured, not met"
        attrs[MEASURED_LATENCY_MS] = 1e3 * arm.measured.measured_s
    for name in spec.objectives[1:]:  # a cost objective: its value in the unit users write, by its spec key
        cost = COSTS.get(name)
        if cost.spec_key not in attrs:
            try:
                attrs[cost.spec_key] = build_cost(name, table).cost(cfg) / cost.spec_scale
            except OutsideDomainError:
                attrs[cost.spec_key] = None
    return attrs


__all__ = ["Arm", "baseline_arm", "candidate_rule", "describe", "generate_arm", "placed_arm", "trial_arm"]
