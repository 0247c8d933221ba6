"""Budgets met as measured: ``revit generate --latency-ms --measure`` re-solves until the timed config meets them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from revit.latency.measured import ExportedTimer, fit_measured
from revit.latency.table import LatencyTable
from revit.rules import generate, latency_budget

TABLE = "cpu_onnxruntime_fp32_bs64_t17"


@pytest.fixture(scope="module")
def table() -> LatencyTable:
    return LatencyTable.load(TABLE)


def solver(table: LatencyTable, rule: str = "less-more-less") -> Any:
    return lambda s: generate(rule, latency_budget(s, table), "micro")


def test_a_machine_slower_than_its_table_gets_a_smaller_config_that_meets_the_budget(table: LatencyTable) -> None:
    """A stand-in machine 15% slower than the table, and 4% slower again on wide MLPs (a cost the table misses):
    the first solve misses the budget as measured, the fit meets it."""
    def timer(cfg: Any) -> float:
        wide = sum(b.mlp_dim > 200 for b in cfg.blocks) / cfg.depth
        return table.predict(cfg).total_s * 1.15 * (1 + 0.04 * wide)

    budget = 0.012  # within the rule's reach on the shipped table (up to about 16 ms)
    first = solver(table)(budget)
    assert timer(first.config) / budget - 1 > 0.1  # the table's config misses by the machine's 15%
    fit = fit_measured(solver(table), budget, lambda c: table.predict(c).total_s, timer, tolerance=0.02)
    assert fit.met and abs(timer(fit.generated.config) / budget - 1) <= 0.02
    assert fit.rounds[0].measured_s == pytest.approx(timer(first.config)) and len(fit.rounds) >= 2
    assert fit.measured_s == pytest.approx(timer(fit.generated.config))
    assert fit.to_json()["established"] == "measured"


def test_a_budget_out_of_the_tables_reach_returns_the_closest_and_says_so(table: LatencyTable) -> None:
    # 12 ms/batch is within the rule's reach on the shipped table (up to 18.6 ms), twice that is not
    fit = fit_measured(solver(table), 0.012, lambda c: table.predict(c).total_s,
                       lambda c: table.predict(c).total_s * 0.5, tolerance=0.02, max_rounds=3)
    assert not fit.met and 1 <= len(fit.rounds) <= 3 and "NOT met" in fit.summary()
    assert "above the largest legal config" in fit.stopped  # the corrected budget left the table's range
    assert fit.measured_s == max(r.measured_s for r in fit.rounds)  # the closest to the budget from below


def test_generate_measure_on_the_cli(monkeypatch: pytest.MonkeyPatch, cli: Any, table: LatencyTable) -> None:
    import revit.latency.measured as measured

    class Slower:
        def __init__(self, t: Any, *a: Any, **k: Any) -> None:
            self.t = t

        def __call__(self, cfg: Any) -> float:
            return float(self.t.predict(cfg).total_s * 1.2)

    monkeypatch.setattr(measured, "ExportedTimer", Slower)
    code, out, err = cli("generate", "--rule", "less-more-less", "--setting", "micro", "--latency-ms", "12",
                         "--table", TABLE, "--measure", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["measured"]["met"] and abs(d["measured"]["measured_s"] / 0.012 - 1) <= 0.02
    assert d["measured"]["measured_s"] == pytest.approx(1.2 * table.predict(
        __import__("revit.config", fromlist=["ViTConfig"]).ViTConfig.from_dict(d["config"], "out")).total_s)
    assert "met as measured" in err
    code, out, err = cli("generate", "--uniform", "--setting", "micro", "--macs", "5M", "--measure")
    assert code == 2 and err.count("\n") == 1 and "--latency-ms" in err


def test_the_exported_timer_times_the_model_a_user_deploys(table: LatencyTable) -> None:
    """One real export + onnxruntime timing: positive, and of the table's order (the table is within 2x)."""
    from revit.presets import resolve_config

    cfg = resolve_config("revit_micro")
    t = ExportedTimer(table, passes=1)(cfg)
    assert 0.5 < t / table.predict(cfg).total_s < 2.0
