"""A family's sampler seeded per trial: two processes on one storage never draw the same parameters.

A sampler seeded once per process drew the same parameters in two ``search run`` (or workers) started
on one storage at the same time: both saw the same trials and used the same seed.  Optuna numbers the
trials of a study uniquely whichever process creates them, so :class:`PerTrialSeed` builds the spec's
sampler afresh for each trial with the seed moved by the trial's number (Optuna's public sampler hooks
only, as ``PartialFixedSampler`` composes).  A study stays reproducible from its seed, and a resumed
study never draws again with a seed it used.  QMC walks one sequence (its position is kept in the
storage), so it keeps one seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler

from revit.search.samplers import SAMPLERS, build_sampler

STRIDE = 7919  # the seed moves by this per trial number (a prime: families' seeds never meet)


class PerTrialSeed(BaseSampler):
    """The spec's sampler (``{name, **kwargs}``), its seed plus ``offset`` plus ``STRIDE`` x the trial number."""

    def __init__(self, spec: Mapping[str, Any], offset: int = 0) -> None:
        self._spec, self._offset = dict(spec), offset
        self._one_sequence = SAMPLERS.get(str(spec["name"])).one_sequence
        self._inner = build_sampler(self._spec, offset)

    @property
    def sampler(self) -> BaseSampler:
        """The sampler drawing the current trial (the spec's class: ``TPESampler``, ``GPSampler``...)."""
        return self._inner

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not self._one_sequence:
            self._inner = build_sampler(self._spec, self._offset + STRIDE * trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: optuna.trial.TrialState,
                    values: Sequence[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


__all__ = ["STRIDE", "PerTrialSeed"]
