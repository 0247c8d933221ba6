"""A revit study as Optuna studies: one per searched family and one for the baselines, in one storage.

Optuna's pattern for separate searches is separate studies, so each searched family of a spec named
``NAME`` is the Optuna study ``NAME/FAMILY`` (its own sampler, seed and Optuna pruner, its trials only), and
the baselines are ``NAME/baselines``.  Optuna's own tools read them as they are: ``load_study(...)``
of a family study gives that family's ``best_trial``, and optuna-dashboard lists every part.
:class:`StudySet` is the group as revit's commands see it: one study with parts.

A family study holds one trial per candidate config, with all its seeds (the trial's value is the mean
over them), so its ``best_trial`` (``best_trials`` for two objectives) is the family's best config, as
the report ranks them.  The objectives are named (``set_metric_names``) for optuna-dashboard.

Every part stores the spec's *fingerprint* (what decides the trials: budget, spaces, data, recipe,
seeds, baselines, objectives, sampler); a process whose spec has another one is refused, so a worker
with an edited spec cannot join silently.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from revit._io import dumps_json
from revit.errors import StorageError
from revit.search.objective import metric_names
from revit.search.samplers import build_optuna_pruner
from revit.search.spec import StudySpec
from revit.search.storage import open_storage

if TYPE_CHECKING:
    from optuna import Study
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

BASELINES = "baselines"  # the part holding the baselines (no family may take this name)
SPEC_ATTR = "spec"  # study user attribute: what the spec was, with its fingerprint
LAYOUT = 2  # 2: a candidate trial trains all its seeds; 1 (absent): seed repeats were trials of their own


def part_name(study_name: str, part: str) -> str:
    """The Optuna study name of one part of revit study ``study_name``: ``NAME/FAMILY`` or ``NAME/baselines``."""
    return f"{study_name}/{part}"


def fingerprint(spec: StudySpec) -> str:
    """A short hash of everything that decides what the trials are (not how or where they run)."""
    from revit.recipes import RUNTIME_FIELDS

    train = {f.name: getattr(spec.train, f.name) for f in fields(spec.train) if f.name not in RUNTIME_FIELDS}
    doc = {"objectives": list(spec.objectives), "budget": spec.budget.fingerprint(),
           "spaces": [_space_doc(s) for s in spec.spaces], "setting": asdict(spec.setting), "data": asdict(spec.data),
           "train": train, "seeds": list(spec.seeds), "repeat_top_k": spec.repeat_top_k,
           "baselines": [asdict(b) for b in spec.baselines],
           "sampler": [spec.sampler.name, dict(spec.sampler.kwargs)],
           "pruner": [spec.optuna_pruner.name, dict(spec.optuna_pruner.kwargs)]}  # key kept: stored fingerprints
    if spec.measure_latency is not None:  # it decides the configs; absent when off, so older studies still match
        doc["measure_latency"] = spec.measure_latency.to_dict()
    text = dumps_json(doc, "the study spec", sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _space_doc(space: Any) -> dict[str, Any]:
    """A searched family as the fingerprint reads it; a depth it does not search is left out (studies begun
    before depth could be searched keep their fingerprint)."""
    doc = {**asdict(space), "params": sorted(map(asdict, space.params), key=lambda r: r["name"])}
    for key in ("depth", "depth_from"):
        if doc[key] is None:
            del doc[key]
    return doc


@dataclass
class StudySet:
    """The Optuna studies of one revit study: ``families`` (tag -> study, spec order) and ``baselines``."""

    spec: StudySpec
    url: str
    families: dict[str, Study]
    baselines: Study

    @property
    def name(self) -> str:
        return self.spec.name

    def parts(self) -> Iterator[tuple[str, Study]]:
        """(part, study): the baselines first, then the families in spec order."""
        yield BASELINES, self.baselines
        yield from self.families.items()

    def trials(self, deepcopy: bool = False, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        """Every trial of every part (baselines first), as frozen trials (``Study.get_trials``'s arguments)."""
        return [t for _, s in self.parts() for t in s.get_trials(deepcopy=deepcopy, states=states)]

    def states(self) -> dict[str, int]:
        """Trial counts by state name over all parts."""
        out: dict[str, int] = {}
        for t in self.trials():
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out

    @property
    def user_attrs(self) -> dict[str, Any]:
        """The baselines part's study attributes (the study-wide notes, such as skipped baselines)."""
        return dict(self.baselines.user_attrs)


def _names(storage: BaseStorage, url: str) -> list[str]:
    import optuna

    try:
        return list(optuna.study.get_all_study_names(storage))
    except Exception as e:  # noqa: BLE001 - any storage failure is one line
        raise StorageError(f"cannot read the studies in {url}: {type(e).__name__}: {str(e)[:200]}") from None


def _refuse_legacy(spec: StudySpec, storage: BaseStorage, url: str, names: list[str]) -> None:
    """A study written by revit before one-study-per-family is refused, never misreported."""
    import optuna

    if spec.name not in names:
        return
    try:
        old = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        return
    if SPEC_ATTR in old.user_attrs:
        raise StorageError(f"{url} holds study {spec.name!r} in revit's old single-study layout, which this "
                           f"version does not read; re-run it into a new storage: revit search run {spec.source} "
                           f"--storage NEW_URL (optuna.load_study still reads the old one)")


def open_studies(spec: StudySpec, storage: str | None = None, *, create: bool = True, seed_offset: int = 0,
                 read_only: bool = False) -> StudySet:
    """See :func:`_open`; a storage that cannot be written (a full or read-only disk) is one line."""
    try:
        return _open(spec, storage, create=create, seed_offset=seed_offset, read_only=read_only)
    except OSError as e:
        raise StorageError(f"cannot write the study storage {spec.storage_url(storage)}: "
                           f"{e.strerror or type(e).__name__}") from None


def _name_metrics(study: Study, names: list[str]) -> None:
    """Name the objectives once (``Study.set_metric_names``, experimental in Optuna: its warning is silenced)."""
    import warnings

    import optuna

    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)


def _open(spec: StudySpec, storage: str | None, *, create: bool, seed_offset: int, read_only: bool) -> StudySet:
    """The Optuna studies of ``spec`` in ``storage`` (default: the spec's); ``create`` makes missing parts.

    Each family study gets its own sampler: the spec's seed plus the family's index, plus ``seed_offset``,
    moved per trial number (:class:`~revit.search.seeding.PerTrialSeed`), so neither a resumed run nor a
    second process on the storage draws the configs drawn before.  Every stored part is checked before
    any missing one is created.  Raises :class:`StorageError` when the storage cannot be read, when joining
    a study that does not exist, when a stored part has other directions or another spec fingerprint or
    is not revit's (trials without revit's stamp), and for a study in the old single-study layout.
    """
    import optuna

    from revit.search.seeding import PerTrialSeed

    url = spec.storage_url(storage)
    st = open_storage(url, read_only=read_only)
    names = _names(st, url)
    _refuse_legacy(spec, st, url, names)
    wanted = [BASELINES, *spec.family_names]
    fp = fingerprint(spec)
    directions = [optuna.study.StudyDirection[d.upper()] for d in spec.directions]
    existing: dict[str, Study] = {}
    for part in wanted:  # every stored part is checked before any missing one is created: a refusal writes nothing
        name = part_name(spec.name, part)
        if name in names:
            existing[part] = optuna.load_study(study_name=name, storage=st)
            _check_part(spec, existing[part], name, url, fp)
            if not read_only:
                _refuse_repeats_layout(spec, existing[part], name, url)
    missing = [p for p in wanted if part_name(spec.name, p) not in names]
    if missing and not create:
        if len(missing) == len(wanted):
            raise StorageError(f"no study {spec.name!r} in {url}; start it with 'revit search run {spec.source} "
                               f"--storage {url}'")
        raise StorageError(f"study {spec.name!r} in {url} has no part {', '.join(missing)}: its spec had other "
                           "families; use the spec it was started with")
    parts: dict[str, Study] = {}
    for i, part in enumerate(wanted):
        name = part_name(spec.name, part)
        study = existing.get(part)
        if study is None:
            study = optuna.create_study(storage=st, study_name=name, directions=directions, load_if_exists=True)
            _check_part(spec, study, name, url, fp)
        if SPEC_ATTR not in study.user_attrs and not read_only:  # new, or created by a run stopped right then
            study.set_user_attr(SPEC_ATTR, _spec_attr(spec, part, fp))
        if not read_only:
            _name_metrics(study, metric_names(spec))
        if part == BASELINES:
            study.sampler = optuna.samplers.RandomSampler()  # baselines have no parameters to sample
            study.pruner = optuna.pruners.NopPruner()
        elif not read_only:
            study.sampler = PerTrialSeed(spec.sampler, i - 1 + seed_offset)
            study.pruner = build_optuna_pruner(spec.optuna_pruner)
        parts[part] = study
    baselines = parts.pop(BASELINES)
    return StudySet(spec, url, parts, baselines)


def _spec_attr(spec: StudySpec, part: str, fp: str) -> dict[str, Any]:
    return {"source": spec.source, "fingerprint": fp, "part": part, "objectives": list(spec.objectives),
            "budget": spec.budget.describe(), "families": spec.family_names, "n_trials": spec.n_trials,
            "seeds": list(spec.seeds), "layout": LAYOUT}


def _refuse_repeats_layout(spec: StudySpec, study: Study, name: str, url: str) -> None:
    """A study of revit <= 0.1.0 (seed repeats as trials of their own) is read by the report, never resumed: its
    new candidates would train all their seeds beside old single-seed ones, and ``best_trial`` would mix them."""
    stored = study.user_attrs.get(SPEC_ATTR)
    if isinstance(stored, dict) and stored.get("layout") != LAYOUT and study.get_trials(deepcopy=False):
        raise StorageError(f"study {name!r} in {url} was written by an earlier revit, where seed repeats were trials "
                           f"of their own; 'revit search report' still reads it, but to search on, run it into a new "
                           f"storage: revit search run {spec.source} --storage NEW_URL")


def _check_part(spec: StudySpec, study: Study, name: str, url: str, fp: str) -> None:
    want = [d.upper() for d in spec.directions]
    have = [d.name for d in study.directions]
    if have != want:
        raise StorageError(f"study {name!r} in {url} has directions {have}, the spec {want}; "
                           "use another name or storage")
    stored = study.user_attrs.get(SPEC_ATTR)
    theirs = stored.get("fingerprint") if isinstance(stored, dict) else None
    if theirs is None and (stored is not None or study.get_trials(deepcopy=False)):
        # revit stamps a part before its first trial: trials without the stamp are another program's
        raise StorageError(f"study {name!r} in {url} was not created by revit (it has trials but no revit spec); "
                           "refusing to adopt it: use another study name or storage")
    if theirs is not None and theirs != fp:
        raise StorageError(f"study {name!r} in {url} was started from another spec (fingerprint {theirs}, this "
                           f"spec {fp}: budget, families, data, recipe, seeds, baselines or sampler differ); "
                           "use the spec it was started with, or another name or storage")


__all__ = ["BASELINES", "LAYOUT", "SPEC_ATTR", "StudySet", "fingerprint", "open_studies", "part_name"]
