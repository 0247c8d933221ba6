"""Global Hessian-aware, latency-aware structural pruning (NViT): structure, criteria, loop, export.

Imports flow one way: ``structure`` (groups from the model) <- ``criteria`` (scores) <-
``masking`` (masks, dense rebuild) <- ``pruner`` (policy: ranking, schedule, state, trace).
"""

from revit.prune.criteria import CRITERIA, Criterion, ScoreAccumulator, build_criterion
from revit.prune.masking import Masks, rebuild_dense
from revit.prune.pruner import PruneConfig, PruneError, Pruner, PruneResult, prune
from revit.prune.structure import KINDS, Group, Structure, StructureError, derive_structure

__all__ = [
    "CRITERIA", "KINDS", "Criterion", "Group", "Masks", "PruneConfig", "PruneError", "PruneResult", "Pruner",
    "ScoreAccumulator", "Structure", "StructureError", "build_criterion", "derive_structure", "prune",
    "rebuild_dense",
]
