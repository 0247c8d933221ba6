"""One sampler stream and one pruner per searched family, inside one Optuna study.

A study with several searched families (``space:`` a list) keeps them apart in two places:

- :class:`FamilySampler` holds one sampler per family (its own instance and seed) and hands each
  trial to the sampler of its ``family`` user attribute, on a *family view* of the study: the same
  study whose storage lists only that family's trials.  TPE's startup count, its densities, CMA-ES's
  or NSGA-II's populations are therefore each family's own; no family's trials steer another's.
- :class:`FamilyPruner` does the same for pruning: a median or hyperband pruner compares a trial
  only with trials of its own family (one pruner instance per family, on the family view).

The view filters at the storage (``get_all_trials``), so pruners that build their own study on the
given study's storage (Optuna's hyperband makes a study per bracket) see the filtered trials too.
Trials without a ``family`` attribute (studies from before families) count as the first family,
baselines as ``baseline:ARM``.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

FAMILY = "family"


def trial_family(trial: Any, default: str) -> str:
    """The family tag of a trial: its ``family`` attribute, ``baseline:ARM`` for an untagged
    baseline, else ``default`` (the first searched family)."""
    u = trial.user_attrs
    if FAMILY in u:
        return str(u[FAMILY])
    if u.get("role") == "baseline":
        return f"baseline:{u.get('arm')}"
    return default


class _FamilyStorage:
    """A storage proxy listing only one family's trials; every other call goes to the real storage."""

    def __init__(self, storage: Any, family: str, default: str) -> None:
        self._storage, self._family, self._default = storage, family, default

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [t for t in trials if trial_family(t, self._default) == self._family]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


def family_view(study: Study, family: str, default: str, *, sampler: BaseSampler | None = None,
                pruner: BasePruner | None = None) -> Study:
    """``study`` as seen by one family: a Study on a storage that lists only that family's trials."""
    storage: Any = _FamilyStorage(study._storage, family, default)
    return Study(study_name=study.study_name, storage=storage,
                 sampler=sampler or optuna.samplers.RandomSampler(), pruner=pruner or optuna.pruners.NopPruner())


class FamilySampler(BaseSampler):
    """Dispatch each trial to its family's own sampler, on the family's view of the study."""

    def __init__(self, samplers: Mapping[str, BaseSampler], default: str, fallback: BaseSampler | None = None):
        self.samplers = dict(samplers)
        self.default = default
        self.fallback = fallback or optuna.samplers.RandomSampler()
        self._view: tuple[tuple[str, int, int], Study] | None = None

    def _pick(self, study: Study, trial: FrozenTrial) -> tuple[BaseSampler, Study]:
        fam = trial_family(trial, self.default)
        inner = self.samplers.get(fam, self.fallback)
        key = (fam, id(study), trial._trial_id)
        if self._view is None or self._view[0] != key:  # one view (one trial cache) per trial, as Optuna's
            self._view = key, family_view(study, fam, self.default, sampler=inner)
        return inner, self._view[1]

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        inner, view = self._pick(study, trial)
        return inner.infer_relative_search_space(view, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        inner, view = self._pick(study, trial)
        return inner.sample_relative(view, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        inner, view = self._pick(study, trial)
        return inner.sample_independent(view, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._view = None  # a new trial: a fresh view
        inner, view = self._pick(study, trial)
        inner.before_trial(view, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        inner, view = self._pick(study, trial)
        inner.after_trial(view, trial, state, values)
        self._view = None

    def reseed_rng(self) -> None:
        for s in (*self.samplers.values(), self.fallback):
            s.reseed_rng()


class FamilyPruner(BasePruner):
    """One pruner per family (made by ``make``), each judging a trial against its own family only."""

    def __init__(self, make: Callable[[], BasePruner], default: str) -> None:
        self.make, self.default = make, default
        self.pruners: dict[str, BasePruner] = {}

    def pruner(self, family: str) -> BasePruner:
        """The pruner of ``family`` (made on first use)."""
        if family not in self.pruners:
            self.pruners[family] = self.make()
        return self.pruners[family]

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        fam = trial_family(trial, self.default)
        inner = self.pruner(fam)
        return bool(inner.prune(family_view(study, fam, self.default, pruner=inner), trial))


__all__ = ["FAMILY", "FamilyPruner", "FamilySampler", "family_view", "trial_family"]
