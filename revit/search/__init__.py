"""Search studies: rule-generated configs against scratch-trained baselines, in any Optuna storage.

Light to import (no torch, no optuna): the pieces import what they need when called.

- :mod:`revit.search.spec` - the study spec (``schema: revit/study/v1``),
- :mod:`revit.search.storage` - storages by URL (SQLite default, PostgreSQL, journal file, ...),
- :mod:`revit.search.samplers` - samplers and pruners by name,
- :mod:`revit.search.perfamily` - one sampler stream and one pruner per searched family,
- :mod:`revit.search.objective` - the objective (testable with ``optuna.trial.FixedTrial``),
- :mod:`revit.search.runner` - run / join a study, baselines and repeats, stale-trial recovery,
- :mod:`revit.search.report` - markdown + PNG report.
"""

from revit.search.spec import BaselineSpec, BudgetSpec, FamilySpace, ParamRange, StudySpec, load_spec, resolve_spec
from revit.search.storage import STORAGES, StorageBackend, default_storage, open_storage

__all__ = ["STORAGES", "BaselineSpec", "BudgetSpec", "FamilySpace", "ParamRange", "StorageBackend", "StudySpec",
           "default_storage", "load_spec", "open_storage", "resolve_spec"]
