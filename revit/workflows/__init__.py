"""Whole-pipeline runs that chain the stages: train or prune a model into a run folder, the end-to-end demo.

The CLI's ``train``, ``prune`` and ``demo`` commands are thin users of these; importing the package is light
(torch, data and models load inside the functions).
"""

from revit.workflows.demo import DemoPlan, run_demo
from revit.workflows.prune import run_prune
from revit.workflows.train import run_training

__all__ = ["DemoPlan", "run_demo", "run_prune", "run_training"]
