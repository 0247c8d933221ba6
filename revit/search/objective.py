"""The study objective: sampled rule parameters -> config for the budget -> scratch training -> top-1.

:class:`StudyObjective` is an ordinary Optuna objective (``objective(trial) -> value``), so it runs
under any study or alone with :class:`optuna.trial.FixedTrial`.  What a trial is comes from its
user attributes, which enqueued trials carry from the start:

- ``role=candidate`` (the default) with ``family``: that searched family's parameters are *suggested*
  (``suggest_float``; ``suggest_int`` for a uniform ``head_dim``) and the config is generated for the
  budget (also suggested when the spec searches it): the embedding width (and the global MLP factor)
  are solved as ``revit generate`` does, for a uniform family exactly as ``revit generate --uniform``;
  a trial without ``family`` belongs to the first searched family;
- ``role=baseline`` with ``arm`` and ``budget``: the arm's rule (uniform DeiT-style, ``paper``, a file)
  scaled to the same budget with the same MLP-factor knob, so comparisons are at equal MACs (1%);
- ``seed``: the training seed (default: the spec's first seed).

It returns the held-out (validation) top-1 and, for a two-objective study, MACs or predicted
latency; test top-1, MACs, params, latency, per-block widths and the per-epoch curve are stored as
user attributes.  Single-objective candidate trials report per-epoch accuracy to the pruner.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from revit import counting
from revit.cost import COSTS
from revit.errors import BudgetError, ConfigError
from revit.search import signals
from revit.search.arms import Arm, describe, trial_arm
from revit.search.attrs import (
    ARM,
    CANDIDATE,
    EMBED_DIM,
    FAMILY,
    INFEASIBLE,
    MACS,
    MLP_FACTOR,
    REPEAT_OF,
    ROLE,
    SEED,
    TEST_ACC,
    TRAIN_SECONDS,
    VAL_ACC,
    VAL_CURVE,
    trial_ref,
)
from revit.search.samplers import stops_nothing
from revit.search.spec import StudySpec

_log = logging.getLogger(__name__)


class StudyObjective:
    """``objective(trial)``: build the trial's config, train it from scratch, return held-out top-1.

    Data and the latency table are loaded once per process (first call) and reused.
    """

    def __init__(self, spec: StudySpec, *, progress: bool = False, log: Any = None) -> None:
        self.spec = spec
        self.progress = progress
        self.log = log or _log.info
        self._splits: Any = None
        self._table: Any = None
        self._table_loaded = False

    # cheap parts (no torch) -------------------------------------------------------------------
    def table(self) -> Any:
        """The spec's latency table, or None."""
        if not self._table_loaded:
            if self.spec.latency_table:
                from revit.latency.table import LatencyTable

                self._table = LatencyTable.load(self.spec.latency_table)
            self._table_loaded = True
        return self._table

    def arm(self, trial: Any) -> Arm:
        """The config a trial trains (:func:`revit.search.arms.trial_arm`)."""
        return trial_arm(self.spec, trial, self.table())

    def describe(self, trial: Any, arm: Arm) -> dict[str, Any]:
        """The user attributes that say what a trial trains (:func:`revit.search.arms.describe`)."""
        return describe(self.spec, trial, arm, self.table())

    # the objective ------------------------------------------------------------------------------
    def __call__(self, trial: Any) -> float | tuple[float, float]:
        import optuna

        try:
            arm = self.arm(trial)
        except BudgetError as e:
            # an infeasible point of the space: pruned (not failed), with the reason kept
            trial.set_user_attr(INFEASIBLE, str(e))
            trial.set_user_attr(ROLE, trial.user_attrs.get(ROLE, CANDIDATE))
            if trial.user_attrs[ROLE] == CANDIDATE:
                trial.set_user_attr(FAMILY, self.spec.space(trial.user_attrs.get(FAMILY)).name)
            raise optuna.TrialPruned(str(e)) from None
        attrs = self.describe(trial, arm)
        for k, v in attrs.items():
            if trial.user_attrs.get(k) != v:
                trial.set_user_attr(k, v)
        second = self.spec.objectives[1] if self.spec.multi_objective else None
        key = COSTS.get(second).spec_key if second is not None else None  # its value in the user's unit
        if key is not None and attrs.get(key) is None:
            why = f"the latency table {self.spec.latency_table} cannot predict this config (outside its axes)"
            trial.set_user_attr(INFEASIBLE, why)
            raise optuna.TrialPruned(why)
        self.log(f"trial {trial_ref(trial)} ({attrs[ROLE]} {attrs[ARM]}, seed {attrs[SEED]}): "
                 f"EMB {attrs[EMBED_DIM]}, MACs {counting.format_count(attrs[MACS])}, "
                 f"MLP factor {attrs[MLP_FACTOR]:g}")
        prunable = (not self.spec.multi_objective and attrs[ROLE] == CANDIDATE
                    and REPEAT_OF not in trial.user_attrs and not stops_nothing(self.spec.pruner.name))
        val, test, history, seconds = self.train(arm.config, attrs[SEED], trial if prunable else None)
        with signals.closed():  # trained: a signal now waits until the results are stored and the trial ends
            trial.set_user_attr(VAL_ACC, val)
            trial.set_user_attr(TEST_ACC, test)
            trial.set_user_attr(VAL_CURVE, history)
            trial.set_user_attr(TRAIN_SECONDS, round(seconds, 2))
            self.log(f"trial {trial_ref(trial)}: val top-1 {val:.4f}, test top-1 {test:.4f} ({seconds:.0f} s)")
            if key is not None:
                return val, float(attrs[key])
            return val

    def splits(self) -> Any:
        if self._splits is None:
            from revit.data import load_splits

            # the recipe chooses the training augmentation (timm transforms; deit: RandAugment, erasing)
            self._splits = load_splits(self.spec.data, self.spec.train_config(self.spec.seeds[0]))
        return self._splits

    def train(self, cfg: Any, seed: int, trial: Any = None) -> tuple[float, float, list[float], float]:
        """Scratch-train ``cfg`` with the spec's recipe; (val top-1, test top-1, val curve, seconds)."""
        import optuna
        import torch

        from revit.models import build_model
        from revit.train_loop import evaluate, train

        if torch.get_num_threads() != self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        splits = self.splits()
        check_splits(splits, cfg, self.spec.data.source)
        tc = self.spec.train_config(seed)
        torch.manual_seed(seed)
        model = build_model(cfg, drop_path_rate=tc.drop_path_rate)
        curve: list[float] = []

        def on_epoch(record: dict[str, Any]) -> None:
            curve.append(float(record["val_acc"]))
            if trial is not None:
                trial.report(float(record["val_acc"]), int(record["epoch"]))
                if trial.should_prune():
                    trial.set_user_attr(VAL_CURVE, curve)
                    raise optuna.TrialPruned(f"pruned at epoch {record['epoch']} (val top-1 {record['val_acc']:.4f})")

        t0 = time.perf_counter()
        train(model, splits.train, splits.val, tc, on_epoch=on_epoch, progress=self.progress)
        test = evaluate(model, splits.test, tc.eval_batch_size, amp=tc.amp, workers=tc.loader_workers)
        return curve[-1], test, curve, time.perf_counter() - t0


__all__ = ["StudyObjective", "check_splits"]


def check_splits(splits: Any, setting: Any, source: str) -> None:
    """The data fits the study's setting (image size, channels, classes) and has held-out images."""
    from revit.train_loop import size

    splits.check_fits(setting, f"data.source {source!r}")
    if size(splits.val) == 0:
        raise ConfigError("the study needs held-out images: data.val_size must be > 0")
