"""Samplers and pruners chosen by name in a study spec, each behind one small factory.

A spec names an Optuna sampler or pruner and its keyword arguments.  They are checked when the spec
loads, before any storage exists: unknown names list the known ones, unknown keyword arguments name
the accepted ones, and a value of the wrong type (``n_startup_trials: "x"``, ``seed: .nan``) is one
line.  Every searched family gets its own sampler instance (its own seed) on its own Optuna study.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from revit.errors import ConfigError, check_keys
from revit.registry import Registry

SEED_MAX = 2**32 - 1  # numpy's RandomState, which Optuna's samplers seed, takes seeds below 2**32
_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class SamplerKind:
    """What revit needs to know of an Optuna sampler: its class, and which studies it can serve."""

    cls: str  # the class name in optuna.samplers
    multi_objective: bool  # handles two objectives
    finite_only: bool = False  # needs a finite space (every searched parameter an integer, a fixed budget)
    module: str | None = None  # a package it needs besides optuna (named in the refusal)


SAMPLERS: Registry[SamplerKind] = Registry("sampler")
PRUNERS: Registry[str] = Registry("pruner")  # name -> optuna class name
NOP_PRUNER = "NopPruner"  # the pruner that never prunes

for _names, _kind in ((("tpe",), SamplerKind("TPESampler", True)),
                      (("random",), SamplerKind("RandomSampler", True)),
                      (("nsga2", "nsgaii"), SamplerKind("NSGAIISampler", True)),
                      (("nsga3", "nsgaiii"), SamplerKind("NSGAIIISampler", True)),
                      (("gp",), SamplerKind("GPSampler", True, module="scipy")),
                      (("qmc",), SamplerKind("QMCSampler", True, module="scipy")),
                      (("cmaes",), SamplerKind("CmaEsSampler", False, module="cmaes")),
                      (("bruteforce", "brute-force"), SamplerKind("BruteForceSampler", True, finite_only=True))):
    for _name in _names:
        SAMPLERS.register(_name)(_kind)
for _name, _cls in (("median", "MedianPruner"), ("hyperband", "HyperbandPruner"),
                    ("percentile", "PercentilePruner"), ("successive-halving", "SuccessiveHalvingPruner"),
                    ("none", NOP_PRUNER), ("nop", NOP_PRUNER)):
    PRUNERS.register(_name)(_cls)


def never_prunes(name: str) -> bool:
    """Whether the Optuna pruner ``name`` is Optuna's NopPruner (``none``, ``nop``): the one home of that test."""
    return name in PRUNERS and PRUNERS.get(name) == NOP_PRUNER


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
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
              if n not in ("self", "args", "kwargs")}
    check_keys(kw, list(params), f"{what} {given['name']!r}", what="argument")
    for k, v in kw.items():
        _check_value(v, params[k].default, f"{what}.{k}")
    return kw


def _import(kind: SamplerKind) -> None:
    if kind.module is not None:
        import importlib.util

        if importlib.util.find_spec(kind.module) is None:
            raise ConfigError(f"sampler {kind.cls} needs the package {kind.module!r}: pip install {kind.module}")


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


def check_pruner(spec: Mapping[str, Any]) -> None:
    """Validate a pruner spec (name, arguments and their types) by building it once."""
    build_pruner(spec)


def build_sampler(spec: Mapping[str, Any], seed_offset: int = 0) -> Any:
    """An Optuna sampler from ``{name, **kwargs}``; ``seed_offset`` is added to its seed (mod 2**32)."""
    import optuna

    kind = SAMPLERS.get(str(spec["name"]))
    _import(kind)
    cls = getattr(optuna.samplers, kind.cls)
    kw = _kwargs(cls, spec, "sampler")
    if kw.get("seed") is not None and seed_offset:
        kw["seed"] = (int(kw["seed"]) + seed_offset) % (SEED_MAX + 1)
    import warnings

    try:
        with warnings.catch_warnings():  # "experimental" in Optuna's terms; chosen in the spec on purpose
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(**kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"sampler {spec['name']!r}: {str(e)[:200]}") from None


def build_pruner(spec: Mapping[str, Any]) -> Any:
    """An Optuna pruner from ``{name, **kwargs}``."""
    import optuna

    cls = getattr(optuna.pruners, PRUNERS.get(str(spec["name"])))
    try:
        return cls(**_kwargs(cls, spec, "pruner"))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"pruner {spec['name']!r}: {str(e)[:200]}") from None


__all__ = ["PRUNERS", "SAMPLERS", "SEED_MAX", "SamplerKind", "build_pruner", "build_sampler", "check_pruner",
           "check_sampler"]
