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
- ``seed``: a baseline's training seed.  A candidate trains every seed of the spec in turn (the others
  only when its first seed ranks among its family's best ``repeats.top_k`` so far, else it ends PRUNED),
  each seed's results in ``runs``, so one trial is one config and its family study's ``best_trial`` is
  the best config.

It returns the held-out (validation) top-1 - a candidate's mean over its seeds - and, for a
two-objective study, MACs or predicted latency; test top-1, MACs, params, latency, per-block widths and
the per-epoch curve are stored as user attributes.  Single-objective candidate trials report per-epoch
accuracy to the Optuna pruner (seed ``i``'s epoch ``e`` as step ``i * epochs + e``).
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import TYPE_CHECKING, Any

from revit import counting
from revit.cost import COSTS
from revit.errors import BudgetError, ConfigError
from revit.input_checks import MAX_SEED, check_int, check_number
from revit.search import signals
from revit.search.arms import Arm, describe, trial_arm
from revit.search.attrs import (
    ARM,
    CANDIDATE,
    EMBED_DIM,
    FAMILY,
    GROUP,
    INFEASIBLE,
    MACS,
    MLP_FACTOR,
    REPEAT_OF,
    ROLE,
    RUNS,
    SEED,
    TEST_ACC,
    TRAIN_SECONDS,
    VAL_ACC,
    VAL_CURVE,
    trial_ref,
)
from revit.search.samplers import stops_nothing
from revit.search.spec import StudySpec

if TYPE_CHECKING:
    from optuna.trial import BaseTrial

_log = logging.getLogger(__name__)


class StudyObjective:
    """``objective(trial)``: build the trial's config, train it from scratch, return held-out top-1.

    Data and the latency table are loaded once per process (first call) and reused.
    """

    def __init__(self, spec: StudySpec, *, progress: bool = False, log: Any = None, repeats: bool = True) -> None:
        self.spec = spec
        self.repeats = repeats  # False (--no-repeats): candidates train the first seed only
        self.progress = progress
        self.log = log or _log.info
        self._splits: Any = None
        self._table: Any = None
        self._table_loaded = False
        self._timer: Any = None

    # cheap parts (no torch) -------------------------------------------------------------------
    def table(self) -> Any:
        """The spec's latency table, or None."""
        if not self._table_loaded:
            if self.spec.latency_table:
                from revit.latency.table import LatencyTable

                self._table = LatencyTable.load(self.spec.latency_table)
            self._table_loaded = True
        return self._table

    def timer(self) -> Any:
        """With ``measure_latency``: the timer of exported configs on the table's backend (built once), else None."""
        if self.spec.measure_latency is None or self.table() is None:
            return None
        if self._timer is None:
            from revit.latency.measured import ExportedTimer

            self._timer = ExportedTimer(self.table(), passes=self.spec.measure_latency.passes)
        return self._timer

    def arm(self, trial: BaseTrial) -> Arm:
        """The config a trial trains (:func:`revit.search.arms.trial_arm`; met as measured with
        ``measure_latency``)."""
        return trial_arm(self.spec, trial, self.table(), self.timer())

    def describe(self, trial: BaseTrial, arm: Arm) -> dict[str, Any]:
        """The user attributes that say what a trial trains (:func:`revit.search.arms.describe`)."""
        return describe(self.spec, trial, arm, self.table())

    # the objective ------------------------------------------------------------------------------
    def __call__(self, trial: BaseTrial) -> float | tuple[float, float]:
        import optuna

        with signals.closed():  # storage writes are whole: a signal meanwhile is raised just after
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
        signals.poll()
        candidate = attrs[ROLE] == CANDIDATE
        seeds = self.seeds(trial) if candidate else (int(attrs[SEED]),)
        self.log(f"trial {trial_ref(trial)} ({attrs[ROLE]} {attrs[ARM]}, seed(s) {list(seeds)}): "
                 f"EMB {attrs[EMBED_DIM]}, MACs {counting.format_count(attrs[MACS])}, "
                 f"MLP factor {attrs[MLP_FACTOR]:g}")
        prunable = (not self.spec.multi_objective and candidate and REPEAT_OF not in trial.user_attrs
                    and not stops_nothing(self.spec.optuna_pruner.name))
        runs = self._run_seeds(trial, arm.config, seeds, prunable, candidate)
        with signals.closed():  # trained: a signal now waits until the results are stored and the trial ends
            _store_means(trial, runs)
            val = float(trial.user_attrs[VAL_ACC])
            if key is not None:
                return val, float(attrs[key])
            return val

    def seeds(self, trial: BaseTrial) -> tuple[int, ...]:
        """The seeds a candidate trains, in order: the spec's (its first alone with ``repeats.top_k: 0`` or
        ``--no-repeats``); a candidate of a study of revit <= 0.1.0 trains the one seed it was given."""
        if SEED in trial.user_attrs and REPEAT_OF in trial.user_attrs:
            return (int(trial.user_attrs[SEED]),)
        if not self.repeats or self.spec.repeat_top_k == 0:
            return self.spec.seeds[:1]
        return self.spec.seeds

    def _run_seeds(self, trial: BaseTrial, cfg: Any, seeds: tuple[int, ...], prunable: bool,
                   candidate: bool) -> list[dict[str, Any]]:
        """Train ``cfg`` with each seed in turn (a seed the retried trial finished is not trained again); each
        seed's epochs are the next steps of the Optuna pruner.  After the first seed, a candidate whose held-out top-1
        is not among its family's best ``repeats.top_k`` first seeds so far stops (PRUNED)."""
        import optuna

        done = _finished(trial, seeds) if candidate else {}
        runs: list[dict[str, Any]] = []
        epochs = self.spec.train.epochs
        for i, seed in enumerate(seeds):
            with signals.closed():  # a storage read: a signal meanwhile is raised after it (poll)
                among = i != 1 or _among_best(trial, runs[0][VAL_ACC], self.spec.repeat_top_k)
            signals.poll()
            if not among:
                with signals.closed():
                    _store_means(trial, runs)
                    raise optuna.TrialPruned(f"first seed's held-out top-1 {runs[0][VAL_ACC]:.4f} is not among the "
                                             f"family's best {self.spec.repeat_top_k}: no other seeds")
            run = done.get(seed)
            if run is not None:  # trained by the trial this one retries: its epochs go to the Optuna pruner again
                for j, v in enumerate(run[VAL_CURVE]):
                    if prunable:
                        with signals.closed():
                            trial.report(float(v), i * epochs + j + 1)
                        signals.poll()
            else:
                val, test, curve, sec = self.train(cfg, seed, trial if prunable else None, step0=i * epochs)
                run = {SEED: seed, VAL_ACC: val, TEST_ACC: test, VAL_CURVE: curve, TRAIN_SECONDS: round(sec, 2)}
            runs.append(run)
            if candidate:
                with signals.closed():
                    trial.set_user_attr(RUNS, runs)
                    self.log(f"trial {trial_ref(trial)} seed {seed}: val top-1 {run[VAL_ACC]:.4f}, "
                             f"test top-1 {run[TEST_ACC]:.4f} ({run[TRAIN_SECONDS]:.0f} s)")
        return runs

    def splits(self) -> Any:
        if self._splits is None:
            from revit.data import load_splits

            # the recipe chooses the training augmentation (timm transforms; deit: RandAugment, erasing)
            self._splits = load_splits(self.spec.data, self.spec.train_config(self.spec.seeds[0]))
        return self._splits

    def train(self, cfg: Any, seed: int, trial: BaseTrial | None = None,
              step0: int = 0) -> tuple[float, float, list[float], float]:
        """Scratch-train ``cfg`` with the spec's recipe; (val top-1, test top-1, val curve, seconds).  With
        ``trial``, epoch ``e``'s held-out top-1 is reported to its Optuna pruner as step ``step0 + e``."""
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
            if trial is not None and report_epoch(trial, float(record["val_acc"]), step0 + len(curve), curve):
                raise optuna.TrialPruned(f"pruned at epoch {record['epoch']} (val top-1 {record['val_acc']:.4f})")

        t0 = time.perf_counter()
        train(model, splits.train, splits.val, tc, on_epoch=on_epoch, progress=self.progress)
        test = evaluate(model, splits.test, tc.eval_batch_size, amp=tc.amp, workers=tc.loader_workers)
        return curve[-1], test, curve, time.perf_counter() - t0


def metric_names(spec: StudySpec) -> list[str]:
    """The objectives' names, as optuna-dashboard labels them: the user attributes their values come from
    (held-out top-1, mean over seeds; then a cost in the unit users write it: ``macs``, ``latency_ms``)."""
    return [VAL_ACC, *(COSTS.get(o).spec_key for o in spec.objectives[1:])]


__all__ = ["StudyObjective", "check_splits", "metric_names", "report_epoch"]


def check_splits(splits: Any, setting: Any, source: str) -> None:
    """The data fits the study's setting (image size, channels, classes) and has held-out images."""
    from revit.train_loop import size

    splits.check_fits(setting, f"data.source {source!r}")
    if size(splits.val) == 0:
        raise ConfigError("the study needs held-out images: data.val_size must be > 0")


def report_epoch(trial: BaseTrial, value: float, step: int, curve: list[float] | None = None) -> bool:
    """Report one epoch's held-out top-1 to the Optuna pruner; whether the trial is to stop (its curve is then
    stored).  The storage writes are whole: a signal during them is raised right after (:func:`signals.poll`),
    never inside a commit, which would leave the trial neither finished nor failed."""
    with signals.closed():
        trial.report(value, step)
        stop = trial.should_prune()
        if stop and curve is not None:
            trial.set_user_attr(VAL_CURVE, curve)
    signals.poll()
    return stop


def _store_means(trial: BaseTrial, runs: list[dict[str, Any]]) -> None:
    """A trial's results: held-out and test top-1 as the means over its seeds (the trial's value), the first
    seed's curve, the seconds of all."""
    trial.set_user_attr(VAL_ACC, statistics.fmean(float(r[VAL_ACC]) for r in runs))
    trial.set_user_attr(TEST_ACC, statistics.fmean(float(r[TEST_ACC]) for r in runs))
    trial.set_user_attr(VAL_CURVE, runs[0][VAL_CURVE])
    trial.set_user_attr(TRAIN_SECONDS, round(sum(float(r[TRAIN_SECONDS]) for r in runs), 2))


def _finished(trial: BaseTrial, seeds: tuple[int, ...]) -> dict[int, dict[str, Any]]:
    """The seeds the retried trial finished (its ``runs``, copied by the retry), by seed.  They come from the
    storage: a record that is not a finished seed of this spec (a foreign or corrupt value) is trained again."""
    out: dict[int, dict[str, Any]] = {}
    raw = trial.user_attrs.get(RUNS)
    for r in raw if isinstance(raw, list) else []:
        try:
            seed = check_int(r[SEED], "seed", 0, MAX_SEED)
            val, test = (float(check_number(r[k], k, 0, 1)) for k in (VAL_ACC, TEST_ACC))
            curve = [float(check_number(v, VAL_CURVE, 0, 1)) for v in r[VAL_CURVE]]
            sec = float(check_number(r[TRAIN_SECONDS], TRAIN_SECONDS, 0))
        except (ConfigError, KeyError, TypeError, ValueError):
            continue
        if seed in seeds and curve:
            out[seed] = {SEED: seed, VAL_ACC: val, TEST_ACC: test, VAL_CURVE: curve, TRAIN_SECONDS: sec}
    return out


def _among_best(trial: BaseTrial, first: float, top_k: int) -> bool:
    """Whether a first seed's held-out top-1 ranks among the best ``top_k`` first seeds of the other configs of
    the trial's study so far (running ones of other workers too; a FAIL trial counts through its retry, which
    carries its seeds).  True off a study."""
    from optuna.trial import TrialState

    study = getattr(trial, "study", None)
    if study is None:
        return True
    me = trial.user_attrs.get(GROUP)
    best: dict[Any, float] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
                                                      TrialState.WAITING)):
        runs = t.user_attrs.get(RUNS)
        group = t.user_attrs.get(GROUP)
        if t.number == trial.number or group == me or not isinstance(runs, list) or not runs:
            continue
        try:
            v = float(check_number(runs[0][VAL_ACC], VAL_ACC, 0, 1))
        except (ConfigError, KeyError, TypeError, ValueError):
            continue
        best[group] = max(v, best.get(group, v))
    return sum(v > first for v in best.values()) < top_k
