"""Global Hessian-aware, latency-aware structural pruning (NViT): structure, criteria, policy, pruner, run.

Imports flow one way: ``structure`` (groups from the model) <- ``criteria`` (scores) <-
``masking`` (masks, dense rebuild) <- ``policy`` (pure: rank and choose) <- ``global_pruner``
(the library object for the user's own loop) <- ``run`` (revit's loop: DDP, state, teacher, export).
"""

from revit.cost import CostTarget
from revit.distill import DistillLoss, distill_loss
from revit.prune.criteria import CRITERIA, Criterion, ScoreAccumulator, build_criterion
from revit.prune.global_pruner import GlobalPruner, as_revit
from revit.prune.masking import Masks, rebuild_dense
from revit.prune.policy import Candidate, Choice, calibrate_eta, candidates, choose
from revit.prune.run import PruneError, PruneResult, PruneRun, prune
from revit.prune.structure import Group, Structure, StructureError, derive_structure
from revit.recipes import PruneConfig, Schedule

__all__ = [
    "CRITERIA", "Candidate", "Choice", "CostTarget", "Criterion", "DistillLoss", "GlobalPruner", "Group", "Masks",
    "PruneConfig", "PruneError", "PruneResult", "PruneRun", "Schedule", "ScoreAccumulator", "Structure",
    "StructureError", "as_revit", "build_criterion", "calibrate_eta", "candidates", "choose", "derive_structure",
    "distill_loss", "prune", "rebuild_dense",
]
