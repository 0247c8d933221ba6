"""The study spec (``schema: revit/study/v1``): a typed, validated description of one study.

On disk (YAML in ``search/``)::

    schema: revit/study/v1
    kind: study
    name: fashion-mnist
    storage: null                 # any storage URL (revit.search.storage); null: sqlite:///runs/studies/NAME.db
    objectives: [accuracy]        # accuracy, then optionally a registered cost model's name: macs, latency
    sampler: {name: tpe, seed: 0} # any registered sampler (+ its keyword arguments): `revit plugins samplers`
    pruner: {name: median}        # an Optuna pruner: `revit plugins optuna-pruners` (single objective only);
                                  # the key is Optuna's word (StudySpec.optuna_pruner, not revit's GlobalPruner)
    n_trials: 12                  # candidate (sampled) trials, each a config with its seeds; baselines on top
    setting: micro                # a Setting preset (micro, imagenet) or its fields, optionally on a preset:
                                  # {preset: micro, num_classes: 5} or {depth, img_size, patch_size, in_chans, ...}
    budget: {macs: 8M}            # or {latency_ms: 2.5, table: FILE} or {macs: {low: 5M, high: 12M}} (searched)
    latency_table: FILE           # optional: predicted latency as a user attribute of every trial
    measure_latency: true         # with a latency budget: each config is exported, timed and re-solved until it
                                  # meets the budget as measured ({tolerance: 0.02, rounds: 4, passes: 5})
    space:                        # one searched family, or a list of them (n_trials candidates each)
      - family: less-more-less    # a rule family with parameters
        base: less-more-less      # rule whose values the unsearched parameters take (name or YAML path)
        params: {plateau: [0.2, 1.0], mlp_end: [0.25, 1.0]}   # searched: [low, high] or {low, high, log}
        granularity: auto
        mlp_factor: [0.5, 2.0]    # interval of the global MLP factor that generation may use
        depth: [6, 10]            # optional: depth searched too (suggest_int); uniform families then search it
      - family: uniform           # every block equal; EMB solved for the budget (revit generate --uniform)
        name: uniform             # the trials' ``family`` tag (default: the family); unique
        params: {head_dim: [8, 32], mlp_ratio: [1.0, 6.0]}   # head_dim: integers on the QK step
    data: {source: fashion-mnist, train_limit: 20000, val_size: 5000}   # revit.data.DataSpec fields
    train: {epochs: 4, batch_size: 128, lr: 0.001}          # revit.recipes.TrainConfig fields (not seed)
    threads: 1                    # torch threads per worker
    seeds: [0, 1, 2]              # each baseline and each candidate trial trains with every seed
    repeats: {top_k: 2}           # a candidate trains its other seeds when its first is among the best 2 so far
    baselines: [{rule: uniform}, {rule: paper}]   # rule name/path (+ params), scaled to the same budget

Each searched family is its own Optuna study (``NAME/FAMILY``: its own sampler, seed and Optuna pruner) and the
baselines are ``NAME/baselines``, all in one storage (:mod:`revit.search.studies`); trials carry user
attributes (``role``, ``family``, ``arm``, ``seed``, ``group``: :mod:`revit.search.attrs`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from revit import counting
from revit._io import check_schema, load_yaml
from revit.config import Setting
from revit.cost import COSTS, CostTarget
from revit.data.spec import DataSpec
from revit.errors import ConfigError, FileFormatError, UnknownNameError, check_keys
from revit.input_checks import MAX_SEED, MAX_WAIT_S, MIN_HEARTBEAT_S, check_fields, check_int, check_number
from revit.paths import shipped_dir
from revit.recipes import TrainConfig
from revit.search.space import FamilySpace, ParamRange, parse_spaces

SCHEMA = "revit/study/v1"
MAX_TRIALS = 100_000  # candidates per family: far beyond any study, short of filling a disk
MAX_THREADS = 1024  # a spec may be written for a bigger machine than this one: no local cap here
ACCURACY = "accuracy"


def objective_directions() -> dict[str, str]:
    """Each objective a spec may name and its direction: accuracy, then any registered cost model's."""
    return {ACCURACY: "maximize", **{name: "minimize" for name in COSTS.names()}}


_KEYS = ("schema", "kind", "name", "description", "storage", "objectives", "sampler", "pruner", "n_trials",
         "setting", "budget", "latency_table", "space", "data", "train", "threads", "seeds", "repeats",
         "baselines", "heartbeat_s", "grace_s", "measure_latency")
# TrainConfig fields a study sets itself: the seed comes from ``seeds``; trials train from scratch, no teacher
_TRAIN_SET_BY_STUDY = ("seed", "distill_weight", "distill_temperature")


@dataclass(frozen=True)
class BaselineSpec:
    """A baseline arm: a rule (``uniform``, ``paper``, a path) with optional parameter overrides."""

    rule: str
    params: Mapping[str, float] = field(default_factory=dict)
    name: str | None = None

    @property
    def arm(self) -> str:
        if self.name:
            return self.name
        return f"{self.rule}({_short(self.params)})" if self.params else self.rule


def _short(params: Mapping[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in params.items())


@dataclass(frozen=True)
class MeasureSpec:
    """``measure_latency``: each trial's config is exported, timed on the table's backend and re-solved with the
    measured correction until it meets the latency budget within ``tolerance`` (at most ``rounds`` solves), so
    that families and baselines are compared at equal *measured* latency (:mod:`revit.latency.measured`)."""

    tolerance: float = 0.02
    rounds: int = 4
    passes: int = 5  # timing passes per config (x the table's warm-up + repeats)

    @classmethod
    def parse(cls, raw: Any) -> MeasureSpec | None:
        """``true`` (the defaults), ``false``/absent (None) or ``{tolerance, rounds, passes}``."""
        if raw is None or raw is False:
            return None
        if raw is True:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigError(f"measure_latency must be true, false or {{tolerance, rounds, passes}}, got "
                              f"{str(raw)[:60]}")
        check_keys(raw, ("tolerance", "rounds", "passes"), "measure_latency")
        tol = check_number(raw.get("tolerance", 0.02), "measure_latency.tolerance", 0, 0.5, lo_open=True,
                           hi_open=True)
        return cls(tol, check_int(raw.get("rounds", 4), "measure_latency.rounds", 1, 20),
                   check_int(raw.get("passes", 5), "measure_latency.passes", 1, 1000))

    def to_dict(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "rounds": self.rounds, "passes": self.passes}


@dataclass(frozen=True)
class PluginSpec(Mapping[str, Any]):
    """An Optuna sampler or Optuna pruner by name with its keyword arguments; reads as ``{name, **kwargs}``."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.name if key == "name" else self.kwargs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(("name", *self.kwargs))

    def __len__(self) -> int:
        return 1 + len(self.kwargs)

    @classmethod
    def parse(cls, v: Any, what: str, default: str) -> PluginSpec:
        """``None`` (the default), a name, or a mapping with ``name`` and keyword arguments."""
        if v is None:
            return cls(default)
        if isinstance(v, str):
            return cls(v)
        if isinstance(v, Mapping) and isinstance(v.get("name"), str):
            return cls(v["name"], {str(k): x for k, x in v.items() if k != "name"})
        raise ConfigError(f"{what} must be a name or a mapping with 'name' (and keyword arguments), got {v!r}")


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec (see the module docstring for the YAML).

    ``optuna_pruner`` is the YAML key ``pruner:`` (Optuna's own word, kept so existing specs load); revit's code
    calls it the Optuna pruner to tell it from :class:`~revit.prune.global_pruner.GlobalPruner`.
    """

    name: str
    budget: CostTarget
    spaces: tuple[FamilySpace, ...]
    storage: str | None = None
    objectives: tuple[str, ...] = ("accuracy",)
    sampler: PluginSpec = PluginSpec("tpe")
    optuna_pruner: PluginSpec = PluginSpec("median")
    n_trials: int = 10
    setting: Setting = Setting.PRESETS["micro"]
    latency_table: str | None = None
    data: DataSpec = DataSpec()
    train: TrainConfig = TrainConfig()
    threads: int = 1
    seeds: tuple[int, ...] = (0,)
    repeat_top_k: int = 2
    baselines: tuple[BaselineSpec, ...] = ()
    heartbeat_s: float = 20.0
    grace_s: float = 120.0
    measure_latency: MeasureSpec | None = None
    description: str = ""
    source: str = "spec"

    @property
    def base_rule(self) -> str | None:
        """The first searched family's base rule (the baselines' generation knobs)."""
        return self.spaces[0].base_rule

    @property
    def family_names(self) -> list[str]:
        """The ``family`` tags of the searched families, in spec order."""
        return [s.name for s in self.spaces]

    def space(self, name: str | None) -> FamilySpace:
        """The searched family tagged ``name`` (None: the first, for trials without a tag)."""
        if name is None:
            return self.spaces[0]
        for s in self.spaces:
            if s.name == name:
                return s
        raise ConfigError(f"family {name!r} is not searched by this study; known: {', '.join(self.family_names)}")

    @property
    def directions(self) -> list[str]:
        return [objective_directions()[o] for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def storage_url(self, override: str | None = None) -> str:
        from revit.search.storage import default_storage, normalize_url

        return normalize_url(override or self.storage or default_storage(self.name))

    def train_config(self, seed: int) -> TrainConfig:
        """The training recipe of one run: the spec's, with this run's seed."""
        return replace(self.train, seed=seed)

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: Any, source: str = "spec") -> StudySpec:
        """Validate a parsed spec; every problem is one line naming the key and the fix."""
        d = check_schema(doc, "study", source, keys=_KEYS)
        try:
            return cls._build(d, source)
        except (ConfigError, UnknownNameError) as e:
            msg = str(e)
            raise FileFormatError(msg if msg.startswith(source) else f"{source}: {msg}") from None

    @classmethod
    def _build(cls, d: Mapping[str, Any], source: str) -> StudySpec:
        from revit.search.samplers import check_optuna_pruner, check_sampler

        name = d.get("name") or Path(source).stem
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"name must be letters, digits, '-', '_' or '.', got {name!r}")
        raw_obj = d.get("objectives") or ["accuracy"]
        if not isinstance(raw_obj, list) or not all(isinstance(o, str) for o in raw_obj):
            raise ConfigError(f"objectives must be [accuracy] or [accuracy, {'|'.join(COSTS.names())}], "
                              f"got {str(raw_obj)[:60]}")
        objectives = tuple(raw_obj)
        bad = [o for o in objectives if o not in objective_directions()]
        if bad or objectives[0] != "accuracy" or len(objectives) > 2 or len(set(objectives)) != len(objectives):
            raise ConfigError(f"objectives must be [accuracy] or [accuracy, {'|'.join(COSTS.names())}], "
                              f"got {list(objectives)}")
        sampler = PluginSpec.parse(d.get("sampler"), "sampler", "tpe")
        optuna_pruner = PluginSpec.parse(d.get("pruner"), "pruner", "median")
        check_optuna_pruner(optuna_pruner, len(objectives))

        setting = Setting.parse(d.get("setting", "micro"), "setting")

        budget = _budget(d.get("budget"), d.get("latency_table"))
        spaces = parse_spaces(d.get("space"), setting)
        if any(s.name == "baselines" for s in spaces):
            raise ConfigError("space: 'baselines' names the baselines' study; give the family another 'name'")
        finite = budget.value is not None and all(p.integer for s in spaces for p in s.params)
        check_sampler(sampler, len(objectives), finite=finite)

        data = _typed(DataSpec, d.get("data"), "data")
        train = _typed(TrainConfig, d.get("train"), "train", exclude=_TRAIN_SET_BY_STUDY)
        seeds = _seeds(d.get("seeds"))
        repeats = d.get("repeats") or {}
        if isinstance(repeats, Mapping):
            check_keys(repeats, ("top_k",), "repeats")
        top_k = check_int(repeats.get("top_k", 2) if isinstance(repeats, Mapping) else repeats, "repeats.top_k", 0)
        raw_base = d.get("baselines") or []
        if not isinstance(raw_base, list):
            raise ConfigError("baselines must be a list of rule names or {rule, params, name}, "
                              f"got {str(raw_base)[:60]}")
        baselines = tuple(_baseline(b) for b in raw_base)
        arms = [b.arm for b in baselines]
        if len(set(arms)) != len(arms):
            raise ConfigError(f"baselines: two arms have the same name ({arms}); give each a 'name'")
        n_trials = d.get("n_trials", 10)
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or not 0 <= n_trials <= MAX_TRIALS:
            raise ConfigError(f"n_trials must be an integer in [0, {MAX_TRIALS}] (per family), "
                              f"got {str(n_trials)[:40]}")
        threads = check_int(d.get("threads", 1), "threads", 1, MAX_THREADS)
        tabled = [o for o in objectives[1:] if COSTS.get(o).needs_table]
        if tabled and not (budget.table or d.get("latency_table")):
            raise ConfigError(f"objective {tabled[0]!r} needs latency_table: FILE (or a latency budget with a table)")
        storage = d.get("storage")
        if storage is not None and not isinstance(storage, str):
            raise ConfigError(f"storage must be a storage URL or path, got {storage!r}")
        heartbeat_s, grace_s = _liveness(d)
        measure = MeasureSpec.parse(d.get("measure_latency"))
        if measure is not None and not COSTS.get(budget.kind).needs_table:
            raise ConfigError(f"measure_latency times configs against a latency budget; this budget is "
                              f"{budget.kind} (give budget: {{latency_ms: MS, table: FILE}})")
        description = d.get("description") or ""
        if not isinstance(description, str):
            raise ConfigError(f"description must be a string, got {description!r}")
        return cls(
            name=name, budget=budget, spaces=spaces, storage=storage, objectives=objectives,
            sampler=sampler, optuna_pruner=optuna_pruner, n_trials=n_trials, setting=setting,
            latency_table=_table_path(d.get("latency_table") or budget.table), data=data, train=train, threads=threads,
            seeds=seeds, repeat_top_k=top_k, baselines=baselines,
            heartbeat_s=heartbeat_s, grace_s=grace_s, measure_latency=measure,
            description=description, source=source,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StudySpec:
        return cls.from_dict(load_yaml(path), str(path))


def _liveness(d: Mapping[str, Any]) -> tuple[float, float]:
    """``heartbeat_s`` and ``grace_s``: a beat at most every second (each is a storage write), and a grace of at
    least two beats (a shorter one declares live trials on other hosts dead)."""
    beat = float(check_number(d.get("heartbeat_s", 20.0), "heartbeat_s", MIN_HEARTBEAT_S, MAX_WAIT_S))
    grace = float(check_number(d.get("grace_s", 120.0), "grace_s", 2 * beat, MAX_WAIT_S))
    return beat, grace


def _table_path(p: Any) -> str | None:
    """A latency table path as given, or the shipped table of that name when the path does not exist."""
    if not p:
        return None
    if not isinstance(p, str):
        raise ConfigError(f"latency_table must be a path, got {p!r}")
    from revit.latency.table import resolve_table

    found = resolve_table(p)
    return p if found == Path(p) else str(found)


T = TypeVar("T")


def _typed(cls: type[T], raw: Any, where: str, exclude: Sequence[str] = ()) -> T:
    """A typed section (``cls``'s dataclass fields, less ``exclude``) from a mapping; validated by ``cls``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping of {cls.__name__} fields, got {raw!r}")
    check_keys(raw, [f.name for f in fields(cls) if f.name not in exclude], where)  # type: ignore[arg-type]
    check_fields(cls, raw, where)
    try:
        return cls(**raw)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _num(v: Any, what: str) -> float:
    if isinstance(v, str):
        return float(counting.parse_count(v))
    return float(check_number(v, what))


def _budget(raw: Any, table: Any) -> CostTarget:
    """The spec's ``budget`` (:meth:`CostTarget.from_spec`), its table as a path."""
    target = CostTarget.from_spec(raw, table)
    return replace(target, table=_table_path(target.table)) if target.table else target


def _baseline(b: Any) -> BaselineSpec:
    if isinstance(b, str):
        return BaselineSpec(b)
    if isinstance(b, Mapping) and isinstance(b.get("rule"), str):
        check_keys(b, ("rule", "params", "name"), "baselines[]")
        params = b.get("params") or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"baselines[].params must be a mapping of rule parameters, got {params!r}")
        for k, v in params.items():
            check_number(v, f"baselines[].params.{k}")
        name = b.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"baselines[].name must be a string, got {name!r}")
        return BaselineSpec(b["rule"], dict(params), name)
    raise ConfigError(f"baselines: each is a rule name or {{rule, params, name}}, got {b!r}")


def _seeds(raw: Any) -> tuple[int, ...]:
    """``seeds``: a list of distinct integers >= 0 (default and empty: ``[0]``)."""
    if raw is None or (isinstance(raw, list) and not raw):
        return (0,)
    if isinstance(raw, (str, Mapping)) or not isinstance(raw, Sequence):
        raise ConfigError(f"seeds must be a list of integers, got {raw!r}")
    seeds = tuple(check_int(s, "seeds[]", 0, MAX_SEED) for s in raw)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {list(seeds)}")
    return seeds


def resolve_spec(name_or_path: str) -> Path:
    """A shipped spec by name (``smoke``) or a path to a spec YAML."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = shipped_dir("search") / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    if name_or_path.endswith((".yaml", ".yml")):
        raise FileFormatError(f"{name_or_path}: no such file")
    known = sorted(q.stem for q in shipped_dir("search").glob("*.yaml"))
    raise UnknownNameError(f"unknown study spec {name_or_path!r}; shipped: {', '.join(known)} (or a YAML path)")


def load_spec(name_or_path: str) -> StudySpec:
    """Load a study spec from a path or a shipped name."""
    return StudySpec.load(resolve_spec(name_or_path))


__all__ = ["BaselineSpec", "CostTarget", "FamilySpace", "ParamRange", "StudySpec", "load_spec", "resolve_spec"]
