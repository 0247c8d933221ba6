"""Budgets met as measured: time what the optimiser chose and re-solve with the measured correction.

A table prices every config, and an optimiser (``revit generate --latency-ms``) picks the one whose *predicted*
latency meets the budget - which is where the table's errors meet the optimiser's curse: the config it picks is,
more often than not, one the table underprices.  Here the chosen config is exported and timed whole; when it
misses the budget as measured, the budget asked of the table is corrected by the measured / asked ratio and the
config is solved again, until the measured latency is within the tolerance (or the rounds are spent, and the
closest config is returned and said to miss).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from revit.config import ViTConfig
from revit.errors import ConfigError

if TYPE_CHECKING:
    from revit.latency.backends.base import Backend
    from revit.latency.table import LatencyTable
    from revit.rules.generate import Generated


@dataclass(frozen=True)
class Round:
    """One solve: the budget asked of the table, what it predicted for the config it chose, what that measured."""

    asked_s: float
    predicted_s: float
    measured_s: float


@dataclass(frozen=True)
class MeasuredFit:
    """The config chosen for a budget as measured, with every round that led to it."""

    generated: Generated
    budget_s: float
    tolerance: float
    rounds: tuple[Round, ...]
    chosen: int  # index of the round whose config is ``generated``
    stopped: str = ""  # why the rounds ended early without meeting the budget (the table's reach), if they did

    @property
    def measured_s(self) -> float:
        return self.rounds[self.chosen].measured_s

    @property
    def predicted_s(self) -> float:
        return self.rounds[self.chosen].predicted_s

    @property
    def gap(self) -> float:
        """(measured - budget) / budget of the chosen config."""
        return self.measured_s / self.budget_s - 1

    @property
    def met(self) -> bool:
        return abs(self.gap) <= self.tolerance

    def summary(self) -> str:
        verdict = "met as measured" if self.met else f"NOT met within {self.tolerance:.1%} (the closest config)"
        if self.stopped and not self.met:
            verdict += f"; stopped: {self.stopped}"
        return (f"measured {1e3 * self.measured_s:.3f} ms/batch (predicted {1e3 * self.predicted_s:.3f}), "
                f"{100 * self.gap:+.2f}% of the budget after {len(self.rounds)} round(s): {verdict}")

    def to_json(self) -> dict[str, Any]:
        return {"budget_s": self.budget_s, "measured_s": self.measured_s, "predicted_s": self.predicted_s,
                "gap": self.gap, "met": self.met, "tolerance": self.tolerance, "established": "measured",
                "stopped": self.stopped or None,
                "rounds": [{"asked_s": r.asked_s, "predicted_s": r.predicted_s, "measured_s": r.measured_s}
                           for r in self.rounds]}


def fit_measured(solve: Callable[[float], Generated], budget_s: float, predict: Callable[[ViTConfig], float],
                 timer: Callable[[ViTConfig], float], *, tolerance: float = 0.02, max_rounds: int = 4) -> MeasuredFit:
    """Solve for ``budget_s`` until ``timer`` (seconds per batch, measured) meets it within ``tolerance``.

    ``solve(asked_s)`` returns the config for a budget on the table's predictions; ``predict`` prices a config;
    each round asks for ``asked * budget / measured`` (the table's error on the config it chose, corrected).
    """
    if not 0 < tolerance < 0.5 or max_rounds < 1:
        raise ConfigError(f"measured fit: tolerance must be in (0, 0.5) and rounds >= 1, got {tolerance}, "
                          f"{max_rounds}")
    from revit.errors import BudgetError

    asked, stopped = budget_s, ""
    rounds: list[Round] = []
    gens: list[Generated] = []
    seen: dict[ViTConfig, float] = {}
    for _ in range(max_rounds):
        try:
            g = solve(asked)
        except BudgetError as e:  # the corrected budget is beyond what the table can price: keep the closest
            if not rounds:
                raise
            stopped = str(e)
            break
        m = seen.get(g.config) or timer(g.config)
        seen[g.config] = m
        rounds.append(Round(asked, predict(g.config), m))
        gens.append(g)
        if abs(m / budget_s - 1) <= tolerance:
            break
        asked *= budget_s / m
    best = min(range(len(rounds)), key=lambda i: abs(rounds[i].measured_s / budget_s - 1))
    return MeasuredFit(gens[best], budget_s, tolerance, tuple(rounds), best, stopped)


class ExportedTimer:
    """Seconds per batch of a config as a user deploys it: exported with ``torch.onnx``, timed whole on the table's
    backend with its protocol (``passes`` x (warm-up + repeats), median)."""

    def __init__(self, table: LatencyTable, backend: Backend | None = None, passes: int = 5) -> None:
        from revit.latency.accuracy import backend_for_table, model_source_for

        self.table, self.passes = table, passes
        self.backend = backend or backend_for_table(table)
        self.source = model_source_for(self.backend, None)
        meas = table.metadata.get("measurement") or {}
        self.warmup, self.repeats = int(meas.get("warmup") or 2), int(meas.get("repeats") or 5)

    def __call__(self, cfg: ViTConfig) -> float:
        from revit.latency.accuracy import WholeModel

        with tempfile.TemporaryDirectory() as tmp:
            model = WholeModel(self.backend, cfg, self.table.batch_size, self.source, tmp)
            try:
                samples: list[float] = []
                for _ in range(self.passes):
                    with model.visit() as w:
                        w.time(self.warmup)
                        samples += w.time(self.repeats)
            finally:
                model.close()
        return float(np.median(samples))
