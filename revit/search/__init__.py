"""Search studies: rule-generated configs against scratch-trained baselines, in any Optuna storage.

Light to import (no torch, no optuna): the pieces import what they need when called.

- :mod:`revit.search.spec` - the study spec (``schema: revit/study/v1``),
- :mod:`revit.search.storage` - storages by URL (SQLite default, PostgreSQL, journal file, ...),
- :mod:`revit.search.journal` - journal files: refuse what is not one, recover a torn tail,
- :mod:`revit.search.samplers` - samplers and Optuna pruners by name,
- :mod:`revit.search.studies` - one Optuna study per searched family plus one for the baselines,
- :mod:`revit.search.attrs` - the trials' user attributes, one named key each,
- :mod:`revit.search.arms` - which config a trial trains (pure: no torch),
- :mod:`revit.search.objective` - the objective that trains it (testable with ``optuna.trial.FixedTrial``),
- :mod:`revit.search.runner` - run / join a study, baselines and candidates, stale-trial recovery,
- :mod:`revit.search.report` - markdown + PNG report.
"""

from revit.search.spec import BaselineSpec, CostTarget, FamilySpace, ParamRange, StudySpec, load_spec, resolve_spec
from revit.search.storage import STORAGES, StorageBackend, default_storage, open_storage

__all__ = ["STORAGES", "BaselineSpec", "CostTarget", "FamilySpace", "ParamRange", "StorageBackend", "StudySpec",
           "default_storage", "load_spec", "open_storage", "resolve_spec"]
