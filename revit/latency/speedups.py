"""Held-out speedup validation: the table's predicted speedup of each config over a base against the measured one.

What a user deploys is a whole model exported with ``torch.onnx``, and what they ask of a table is mostly a
ratio: "how much faster is this pruned (or generated) model than the one I have?".  This module exports the base
and every config, times them all with the table's protocol (warm-up, repeats, median; passes over all models in
a fresh random order each, so load changes spread over all of them), and compares
``predicted = table(base) / table(config)`` with ``measured = median(base) / median(config)``.
Configs come in named groups (random, pruned, generated, ...) and the summary gives each group's distribution
of errors: median, 95th percentile and worst.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from revit.config import ViTConfig
from revit.latency.backends.base import Backend
from revit.latency.table import LatencyTable
from revit.latency.timing import shuffled_passes

BASE_VISITS = 5  # visits of the base per pass (every other config: one)
MAX_BASE_DRIFT = 0.05  # the base measured this far from its calibrated price: the machine moved (base_drift)


@dataclass(frozen=True)
class HeldOut:
    """One config to validate: its group (where it comes from) and a name."""

    group: str
    name: str
    config: ViTConfig


@dataclass(frozen=True)
class SpeedupRow:
    """Predicted and measured speedup of one config over the base (seconds per batch of the table's size)."""

    group: str
    name: str
    config: ViTConfig
    predicted_s: float
    measured_s: float
    base_predicted_s: float
    base_measured_s: float

    @property
    def predicted(self) -> float:
        return self.base_predicted_s / self.predicted_s

    @property
    def measured(self) -> float:
        return self.base_measured_s / self.measured_s

    @property
    def error(self) -> float:
        """Relative error of the predicted speedup (positive: the table promises more than the model gives)."""
        return self.predicted / self.measured - 1

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "name": self.name, "predicted_speedup": self.predicted,
                "measured_speedup": self.measured, "error": self.error, "predicted_s": self.predicted_s,
                "measured_s": self.measured_s, "config": self.config.to_dict()}


def base_drift(rows: Sequence[SpeedupRow]) -> float:
    """The base as measured over the (calibrated) table's price of it, less 1: how far this machine's speed has
    moved since the table's calibration.  Beyond :data:`MAX_BASE_DRIFT` the machine is not the one calibrated
    (on the EPYC of docs/evidence/latency.md it ran 10% slower for a while, and unevenly: configs moved 2-16%), and
    the speedups' errors say more about that than about the table: calibrate again on an idle machine."""
    if not rows:
        raise ValueError("no rows")
    return rows[0].base_measured_s / rows[0].base_predicted_s - 1


def report(rows: Sequence[SpeedupRow], worst: int = 8) -> str:
    """What a held-out run prints after its own first line: the base's drift (a warning beyond
    :data:`MAX_BASE_DRIFT`), the per-group table of :func:`summary` in Markdown, and the ``worst`` rows."""
    drift = base_drift(rows)
    lines = [f"the base measured {drift:+.1%} from its calibrated price"]
    if abs(drift) > MAX_BASE_DRIFT:
        lines.append(f"WARNING: the machine's speed moved {drift:+.1%} since the table's calibration: calibrate again "
                     "on an idle machine and rerun (these errors measure the machine more than the table)")
    lines += ["| group | n | median | p95 | worst | within 5% |", "|---|---|---|---|---|---|"]
    lines += [f"| {g} | {s['n']} | {s['median']:.1%} | {s['p95']:.1%} | {s['max']:.1%} | {s['within_5pct']:.0%} |"
              for g, s in summary(rows).items()]
    lines += [f"  worst: {r.group:15s} {r.name:28s} predicted {r.predicted:.3f} measured {r.measured:.3f} "
              f"error {r.error:+.1%}" for r in sorted(rows, key=lambda r: -abs(r.error))[:worst]]
    return "\n".join(lines)


def summary(rows: Sequence[SpeedupRow]) -> dict[str, dict[str, float]]:
    """Per group (and ``all``): count, median, 95th percentile and worst of the absolute errors, and the share
    within 5%."""
    return error_summary([(r.group, r.error) for r in rows])


def error_summary(errors: Sequence[tuple[str, float]]) -> dict[str, dict[str, float]]:
    """:func:`summary` of ``(group, relative error)`` pairs (errors priced again without timing, say)."""
    groups: dict[str, list[float]] = {}
    for group, err in errors:
        groups.setdefault(group, []).append(abs(err))
        groups.setdefault("all", []).append(abs(err))
    return {g: {"n": len(e), "median": float(np.median(e)), "p95": float(np.percentile(e, 95)),
                "max": float(np.max(e)), "within_5pct": float(np.mean(np.asarray(e) <= 0.05))}
            for g, e in groups.items()}


def time_speedups(table: LatencyTable, backend: Backend, base: ViTConfig, configs: Sequence[HeldOut], *,
                  passes: int = 10, warmup: int | None = None, repeats: int | None = None, seed: int = 0,
                  model_source: str | None = None, progress: bool = True,
                  base_visits: int = BASE_VISITS) -> tuple[list[SpeedupRow], float]:
    """Export and time ``base`` and every config, interleaved; the rows and the seconds the timing took.

    The base is the denominator of every speedup, so its noise moves every row alike (on the EPYC of
    docs/evidence/latency.md it ran 3% faster in one run than in the run five minutes before, its configs not):
    it is visited ``base_visits`` times a pass, each visit a fresh session where the backend opens one, and its
    median is taken over all of them."""
    from tqdm import tqdm

    from revit.latency.accuracy import WholeModel, model_source_for, whole_models

    meas = table.metadata.get("measurement") or {}
    warmup = int(meas.get("warmup") or 2) if warmup is None else warmup
    repeats = int(meas.get("repeats") or 5) if repeats is None else repeats
    source = model_source_for(backend, model_source)
    cfgs = [base] + [h.config for h in configs]
    samples: dict[int, list[float]] = {i: [] for i in range(len(cfgs))}
    loads: dict[int, WholeModel] = {}
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            loads = dict(enumerate(whole_models(backend, cfgs, table.batch_size, source, tmp, progress)))
            t0 = time.perf_counter()
            visits = [0] * base_visits + list(range(1, len(cfgs)))
            with tqdm(total=len(visits) * passes, desc="time", unit="model", disable=not progress,
                      leave=False) as bar:
                for i in shuffled_passes(visits, passes, seed):
                    with loads[i].visit() as w:
                        w.time(warmup)
                        samples[i] += w.time(repeats)
                    bar.update(1)
    finally:
        for m in loads.values():
            m.close()
    seconds = time.perf_counter() - t0
    med = [float(np.median(samples[i])) for i in range(len(cfgs))]
    base_pred = table.predict(base).total_s
    rows = [SpeedupRow(h.group, h.name, h.config, table.predict(h.config).total_s, med[i + 1], base_pred, med[0])
            for i, h in enumerate(configs)]
    return rows, seconds
