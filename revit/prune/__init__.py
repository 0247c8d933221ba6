"""Global Hessian-aware, latency-aware structural pruning (NViT): structure, criteria, policy, pruner, loop.

Imports flow one way: ``graph`` (dimension analysis of the fx graph) <- ``structure`` (groups) <- ``criteria``
(scores) and ``masking`` (masks, dense rebuild), each on the structure alone; ``policy`` is pure (rank and
choose, no model); ``global_pruner`` (the library object for the user's own loop) uses all four; ``loop``
(revit's fine-tuning loop: DDP, state, teachers, export) uses ``global_pruner``.
"""

from revit.cost import CostTarget
from revit.distill import DistillLoss, distill_loss
from revit.prune.criteria import CRITERIA, Criterion, ScoreAccumulator, build_criterion
from revit.prune.global_pruner import GlobalPruner, as_revit
from revit.prune.loop import PruneError, PruneResult, PruneRun, prune
from revit.prune.masking import Masks, rebuild_dense
from revit.prune.policy import Candidate, Choice, calibrate_eta, candidates, choose
from revit.prune.structure import Group, Structure, StructureError, derive_structure
from revit.recipes import PruneConfig, Schedule

__all__ = [
    "CRITERIA", "Candidate", "Choice", "CostTarget", "Criterion", "DistillLoss", "GlobalPruner", "Group", "Masks",
    "PruneConfig", "PruneError", "PruneResult", "PruneRun", "Schedule", "ScoreAccumulator", "Structure",
    "StructureError", "as_revit", "build_criterion", "calibrate_eta", "candidates", "choose", "derive_structure",
    "distill_loss", "prune", "rebuild_dense",
]
