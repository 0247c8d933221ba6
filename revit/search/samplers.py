"""Samplers and pruners chosen by name in a study spec, each behind one small factory.

A factory takes the spec's keyword arguments (everything but ``name``) and returns an Optuna
object; unknown names list the known ones, unknown keyword arguments name the accepted ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from revit.errors import ConfigError, check_keys
from revit.registry import Registry

SamplerFactory = Callable[..., Any]
SAMPLERS: Registry[tuple[str, bool]] = Registry("sampler")  # name -> (optuna class name, multi-objective ok)
PRUNERS: Registry[str] = Registry("pruner")  # name -> optuna class name

for _name, _cls, _multi in (("tpe", "TPESampler", True), ("random", "RandomSampler", True),
                            ("nsga2", "NSGAIISampler", True), ("nsgaii", "NSGAIISampler", True),
                            ("gp", "GPSampler", True), ("qmc", "QMCSampler", True),
                            ("cmaes", "CmaEsSampler", False)):
    SAMPLERS.register(_name)((_cls, _multi))
for _name, _cls in (("median", "MedianPruner"), ("hyperband", "HyperbandPruner"),
                    ("percentile", "PercentilePruner"), ("successive-halving", "SuccessiveHalvingPruner"),
                    ("none", "NopPruner"), ("nop", "NopPruner")):
    PRUNERS.register(_name)(_cls)


def _kwargs(cls: Any, given: Mapping[str, Any], what: str) -> dict[str, Any]:
    kw = {k: v for k, v in given.items() if k != "name"}
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    check_keys(kw, accepted, f"{what} {given['name']!r}", what="argument")
    return kw


def check_sampler(spec: Mapping[str, Any], n_objectives: int = 1) -> None:
    """Validate a sampler spec without building it (raises with the known names / arguments)."""
    import optuna

    cls_name, multi = SAMPLERS.get(str(spec["name"]))
    if n_objectives > 1 and not multi:
        raise ConfigError(f"sampler {spec['name']!r} handles one objective only; use tpe, nsga2 or random")
    _kwargs(getattr(optuna.samplers, cls_name), spec, "sampler")


def check_pruner(spec: Mapping[str, Any]) -> None:
    import optuna

    _kwargs(getattr(optuna.pruners, PRUNERS.get(str(spec["name"]))), spec, "pruner")


def build_sampler(spec: Mapping[str, Any]) -> Any:
    """An Optuna sampler from ``{name, **kwargs}``."""
    import optuna

    cls_name, _ = SAMPLERS.get(str(spec["name"]))
    cls = getattr(optuna.samplers, cls_name)
    try:
        return cls(**_kwargs(cls, spec, "sampler"))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"sampler {spec['name']!r}: {e}") from None


def build_pruner(spec: Mapping[str, Any]) -> Any:
    """An Optuna pruner from ``{name, **kwargs}``."""
    import optuna

    cls = getattr(optuna.pruners, PRUNERS.get(str(spec["name"])))
    try:
        return cls(**_kwargs(cls, spec, "pruner"))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"pruner {spec['name']!r}: {e}") from None


def build_family_sampler(spec: Mapping[str, Any], families: Sequence[str]) -> Any:
    """A :class:`~revit.search.perfamily.FamilySampler`: one sampler of ``spec`` per family.

    Family ``i`` gets the spec's seed + ``i`` (its own stream); trials of other families
    (baselines) go to a random sampler, which they never ask for a value.
    """
    import optuna

    from revit.search.perfamily import FamilySampler

    seed = spec.get("seed")
    samplers = {}
    for i, fam in enumerate(families):
        one = dict(spec)
        if seed is not None:
            one["seed"] = int(seed) + i
        samplers[fam] = build_sampler(one)
    return FamilySampler(samplers, families[0], optuna.samplers.RandomSampler(seed))


def build_family_pruner(spec: Mapping[str, Any], default_family: str) -> Any:
    """A :class:`~revit.search.perfamily.FamilyPruner`: one pruner of ``spec`` per family."""
    from revit.search.perfamily import FamilyPruner

    build_pruner(spec)  # refuse a bad spec now, not at the first report
    return FamilyPruner(lambda: build_pruner(spec), default_family)


__all__ = ["PRUNERS", "SAMPLERS", "build_family_pruner", "build_family_sampler", "build_pruner", "build_sampler",
           "check_pruner", "check_sampler"]
