"""Every searched parameter counts: moving one parameter of a shipped family, the others fixed, changes the
config it generates at the shipped specs' budgets (the budget solve must not undo it), and every baseline a
shipped spec lists can be built there."""

from __future__ import annotations

import math
from typing import Any

import pytest
from optuna.trial import FixedTrial

from revit.paths import shipped_dir
from revit.search.arms import baseline_arm
from revit.search.objective import StudyObjective
from revit.search.spec import load_spec

SPECS = sorted(p.stem for p in shipped_dir("search").glob("*.yaml"))
CASES = [(name, fs.name, p.name) for name in SPECS for fs in load_spec(name).spaces for p in fs.params]


def _at(p: Any, x: float) -> float:
    """The point ``x`` of the way through the range of ``p`` (on its scale and step)."""
    v = math.exp(math.log(p.low) + x * (math.log(p.high) - math.log(p.low))) if p.log else p.low + x * (p.high - p.low)
    return float(min(max(round(v / p.step) * p.step, p.low), p.high)) if p.step else v


def _config(obj: StudyObjective, family: str, values: dict[str, float]) -> Any:
    t = FixedTrial(values)
    t.set_user_attr("family", family)
    cfg = obj.arm(t).config
    return cfg.embed_dim, cfg.blocks


@pytest.mark.parametrize("spec_name, family, param", CASES, ids=["/".join(c) for c in CASES])
def test_each_searched_parameter_changes_the_config(spec_name, family, param):
    spec = load_spec(spec_name)
    fs = spec.space(family)
    obj = StudyObjective(spec)
    mid = {p.name: _at(p, 0.5) for p in fs.params}
    if spec.budget.value is None:
        mid["budget"] = math.sqrt(float(spec.budget.low) * float(spec.budget.high))  # type: ignore[arg-type]
    p = next(p for p in fs.params if p.name == param)
    quarter, three_quarters = (_config(obj, family, {**mid, param: _at(p, x)}) for x in (0.25, 0.75))
    assert quarter != three_quarters, f"{param} from {_at(p, 0.25):.3g} to {_at(p, 0.75):.3g} changes nothing"


def test_the_mlp_ratio_of_uniform_survives_the_budget_solve():
    """The case that was overridden: MLP ratios 4.60 and 2.51 ended at the same MLP 192 at smoke's 4M MACs."""
    spec = load_spec("smoke")
    obj = StudyObjective(spec)
    a, b = (_config(obj, "uniform", {"head_dim": 16, "mlp_ratio": r}) for r in (4.60, 2.51))
    assert a != b
    (ea, ba), (eb, bb) = a, b
    assert ba[0].mlp_dim / ea > bb[0].mlp_dim / eb  # the wider ratio keeps the wider MLP per EMB channel


@pytest.mark.parametrize("spec_name", SPECS)
def test_every_listed_baseline_runs(spec_name):
    spec = load_spec(spec_name)
    table = StudyObjective(spec).table()
    for b in spec.baselines:
        for budget in spec.budget.baseline_values():
            baseline_arm(spec, b, budget, table)  # raises when left out (outside its domain, budget unreachable)
