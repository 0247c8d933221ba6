"""Samplers and Optuna pruners chosen by name in a study spec: plug-ins, each a small class with a factory.

Optuna's own are registered here (one class each); a package adds its own through the entry-point groups
``revit.samplers`` and ``revit.optuna_pruners`` (a :class:`Sampler` or :class:`OptunaPruner` subclass).

A spec names an Optuna sampler and an Optuna pruner (its ``pruner:`` key, Optuna's word) with their keyword
arguments.  They are checked when the spec loads, before any storage exists: unknown names list the known
ones, unknown keyword arguments name the accepted ones, and a value of the wrong type
(``n_startup_trials: "x"``, ``seed: .nan``) is one line.  Every searched family gets its own sampler instance
(its own seed) on its own Optuna study.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from revit.errors import ConfigError, check_keys
from revit.registry import OPTUNA_PRUNERS_GROUP, SAMPLERS_GROUP, Registry

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler

SEED_MAX = 2**32 - 1  # numpy's RandomState, which Optuna's samplers seed, takes seeds below 2**32
_INT_MAX = 2**31 - 1


class Sampler(ABC):
    """A sampler a study spec names (``sampler: {name: tpe, seed: 0}``): a plug-in of :data:`SAMPLERS`.

    Contract: :meth:`factory` returns the callable the spec's keyword arguments go to, which returns an Optuna
    sampler (an ``optuna.samplers.BaseSampler``); its signature is what a spec may set (each argument of the
    type of its default).  The class says which studies it can serve: :attr:`multi_objective`,
    :attr:`finite_only` (every searched parameter an integer, a fixed budget), :attr:`requires` (a package it
    needs besides optuna) and :attr:`one_sequence` (one sequence for the whole study: never rebuilt per
    trial).  A package adds one through the ``revit.samplers`` entry-point group.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    multi_objective: ClassVar[bool] = True
    finite_only: ClassVar[bool] = False
    requires: ClassVar[str | None] = None
    one_sequence: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def factory(cls) -> Callable[..., Any]:
        """What builds the Optuna sampler from the spec's keyword arguments (imported when called)."""


class OptunaPruner(ABC):
    """An Optuna pruner a study spec names (``pruner: {name: median}``, Optuna's own word for it): a plug-in of
    :data:`OPTUNA_PRUNERS`, called "Optuna pruner" in revit's code to tell it from revit's ``GlobalPruner``.
    :meth:`factory` is the callable the spec's keyword arguments go to; it returns an
    ``optuna.pruners.BasePruner``.  :attr:`stops_nothing` marks the one that never prunes (the only one a
    multi-objective study may use).  Entry-point group: ``revit.optuna_pruners``."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    stops_nothing: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def factory(cls) -> Callable[..., Any]:
        """What builds the Optuna pruner from the spec's keyword arguments."""


class _OptunaSampler(Sampler):
    """One of Optuna's own samplers, by its class name in ``optuna.samplers``."""

    optuna_class: ClassVar[str]

    @classmethod
    def factory(cls) -> Callable[..., Any]:
        import optuna

        return getattr(optuna.samplers, cls.optuna_class)


class _BuiltinPruner(OptunaPruner):
    """One of Optuna's own pruners, by its class name in ``optuna.pruners``."""

    optuna_class: ClassVar[str]

    @classmethod
    def factory(cls) -> Callable[..., Any]:
        import optuna

        return getattr(optuna.pruners, cls.optuna_class)


SAMPLERS: Registry[type[Sampler]] = Registry("sampler", group=SAMPLERS_GROUP, base=Sampler)
OPTUNA_PRUNERS: Registry[type[OptunaPruner]] = Registry("Optuna pruner", group=OPTUNA_PRUNERS_GROUP,
                                                        base=OptunaPruner)


def _builtin(base: type, what: tuple[str, str, str], attrs: Mapping[str, Any]) -> None:
    """Register Optuna's class ``what[1]`` under the name ``what[0]``, described by ``what[2]`` (one small class
    each, as a plug-in would write it)."""
    name, optuna_class, description = what
    registry: Registry[Any] = SAMPLERS if base is _OptunaSampler else OPTUNA_PRUNERS
    registry.register(type(optuna_class, (base,), {"name": name, "optuna_class": optuna_class,
                                                   "description": description, "__module__": __name__, **attrs}))


for _args, _attrs in (
        (("tpe", "TPESampler", "Tree-structured Parzen Estimator (Optuna's default)"), {}),
        (("random", "RandomSampler", "independent uniform draws"), {}),
        (("nsga2", "NSGAIISampler", "NSGA-II genetic algorithm (several objectives)"), {"aliases": ("nsgaii",)}),
        (("nsga3", "NSGAIIISampler", "NSGA-III genetic algorithm (many objectives)"), {"aliases": ("nsgaiii",)}),
        (("gp", "GPSampler", "Gaussian-process Bayesian optimisation (needs scipy)"), {"requires": "scipy"}),
        (("qmc", "QMCSampler", "quasi-Monte Carlo (Sobol/Halton) sequence (needs scipy)"),
         {"requires": "scipy", "one_sequence": True}),
        (("cmaes", "CmaEsSampler", "CMA evolution strategy (one objective; needs cmaes)"),
         {"requires": "cmaes", "multi_objective": False}),
        (("bruteforce", "BruteForceSampler", "every point of a finite space once"),
         {"aliases": ("brute-force",), "finite_only": True})):
    _builtin(_OptunaSampler, _args, _attrs)
for _args, _attrs in (
        (("median", "MedianPruner", "stop a trial below the median of earlier trials at the same step"), {}),
        (("hyperband", "HyperbandPruner", "Hyperband: successive halving over several brackets"), {}),
        (("percentile", "PercentilePruner", "stop a trial below a percentile of earlier trials"), {}),
        (("successive-halving", "SuccessiveHalvingPruner", "asynchronous successive halving"), {}),
        (("none", "NopPruner", "never stop a trial early"), {"aliases": ("nop",), "stops_nothing": True})):
    _builtin(_BuiltinPruner, _args, _attrs)



def _check_value(v: Any, default: Any, at: str) -> None:
    """A keyword argument of the type of its default (bool, int, float); seeds in numpy's range."""
    if at.endswith(".seed") and v is not None:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= SEED_MAX:
            raise ConfigError(f"{at} must be an integer in [0, {SEED_MAX}], got {str(v)[:40]!r}")
        return
    if isinstance(default, bool):
        if not isinstance(v, bool):
            raise ConfigError(f"{at} must be true or false, got {str(v)[:40]!r}")
    elif isinstance(default, int):
        if isinstance(v, bool) or not isinstance(v, int) or abs(v) > _INT_MAX:
            raise ConfigError(f"{at} must be an integer of at most {_INT_MAX}, got {str(v)[:40]!r}")
    elif isinstance(default, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{at} must be a finite number, got {str(v)[:40]!r}")


def _kwargs(cls: Any, given: Mapping[str, Any], what: str) -> dict[str, Any]:
    kw = {k: v for k, v in given.items() if k != "name"}
    params = {n: p for n, p in inspect.signature(cls).parameters.items()  # a class's or a function's arguments
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    check_keys(kw, list(params), f"{what} {given['name']!r}", what="argument")
    for k, v in kw.items():
        _check_value(v, params[k].default, f"{what}.{k}")
    return kw


def _import(kind: type[Sampler]) -> None:
    if kind.requires is not None:
        import importlib.util

        if importlib.util.find_spec(kind.requires) is None:
            raise ConfigError(f"sampler {kind.name!r} needs the package {kind.requires!r}: pip install {kind.requires}")


def check_sampler(spec: Mapping[str, Any], n_objectives: int = 1, *, finite: bool = True) -> None:
    """Validate a sampler spec without a study: name, arguments and their types, and whether it can
    serve the study (``n_objectives``; ``finite``: every searched parameter an integer, a fixed budget)."""
    name = str(spec["name"])
    kind = SAMPLERS.get(name)
    if n_objectives > 1 and not kind.multi_objective:
        multi = sorted({n for n in SAMPLERS.names() if SAMPLERS.get(n).multi_objective})
        raise ConfigError(f"sampler {name!r} handles one objective only; for several use one of {', '.join(multi)}")
    if kind.finite_only and not finite:
        raise ConfigError(f"sampler {name!r} needs a finite space: search only integer parameters (head_dim) "
                          "with a fixed budget, or choose another sampler")
    _import(kind)
    build_sampler(spec)  # argument types, and the constructor's own checks (ranges), as one line


def check_optuna_pruner(spec: Mapping[str, Any], n_objectives: int = 1) -> None:
    """Validate an Optuna pruner spec (a study spec's ``pruner:``: name, arguments and their types) by building
    it once; several objectives take only the one that stops nothing (Optuna cannot prune multi-objective trials)."""
    build_optuna_pruner(spec)
    if n_objectives > 1 and not stops_nothing(str(spec["name"])):
        none = OPTUNA_PRUNERS.name_of(next(c for c in OPTUNA_PRUNERS.loaded().values() if c.stops_nothing))
        raise ConfigError("Optuna pruners need a single objective (Optuna cannot prune multi-objective trials); "
                          f"set pruner: {{name: {none}}}")


def stops_nothing(name: str) -> bool:
    """Whether the Optuna pruner ``name`` never stops a trial (``none``, ``nop``; False for an unknown name):
    the one home of that test."""
    return name in OPTUNA_PRUNERS and bool(OPTUNA_PRUNERS.get(name).stops_nothing)


def build_sampler(spec: Mapping[str, Any], seed_offset: int = 0) -> BaseSampler:
    """An Optuna sampler from ``{name, **kwargs}``; ``seed_offset`` is added to its seed (mod 2**32)."""
    import optuna

    kind = SAMPLERS.get(str(spec["name"]))
    _import(kind)
    cls = kind.factory()
    kw = _kwargs(cls, spec, "sampler")
    if kw.get("seed") is not None and seed_offset:
        kw["seed"] = (int(kw["seed"]) + seed_offset) % (SEED_MAX + 1)
    import warnings

    try:
        with warnings.catch_warnings():  # "experimental" in Optuna's terms; chosen in the spec on purpose
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler: BaseSampler = cls(**kw)
            return sampler
    except (TypeError, ValueError) as e:
        raise ConfigError(f"sampler {spec['name']!r}: {str(e)[:200]}") from None


def build_optuna_pruner(spec: Mapping[str, Any]) -> BasePruner:
    """An Optuna pruner from ``{name, **kwargs}`` (a study spec's ``pruner:``)."""
    cls = OPTUNA_PRUNERS.get(str(spec["name"])).factory()
    try:
        pruner: BasePruner = cls(**_kwargs(cls, spec, "pruner"))
        return pruner
    except (TypeError, ValueError) as e:
        raise ConfigError(f"Optuna pruner {spec['name']!r}: {str(e)[:200]}") from None


__all__ = ["OPTUNA_PRUNERS", "SAMPLERS", "SEED_MAX", "OptunaPruner", "Sampler", "build_optuna_pruner",
           "build_sampler", "check_optuna_pruner", "check_sampler", "stops_nothing"]
