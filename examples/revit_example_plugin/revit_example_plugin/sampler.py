"""Sampler ``tpe-warm``: Optuna's TPE with a longer random start, named in a study spec as
``sampler: {name: tpe-warm, seed: 0, warmup: 4}``.

A sampler plug-in says which studies it can serve (``multi_objective``, ``finite_only``) and returns, from
:meth:`factory`, the callable that the spec's keyword arguments go to: its signature is what a spec may set,
each argument of its default's type (revit checks them when the spec loads, before any study exists).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from revit.search.samplers import Sampler


def warm_tpe(seed: int | None = None, warmup: int = 10) -> Any:
    """A TPE sampler whose first ``warmup`` trials are random draws."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=warmup)


class WarmTPE(Sampler):
    """TPE after ``warmup`` random trials."""

    description = "TPE after a random start of `warmup` trials (an example plug-in)"
    multi_objective = True

    @classmethod
    def factory(cls) -> Callable[..., Any]:
        return warm_tpe
