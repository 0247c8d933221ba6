"""The model card of a pruning run: what was pruned, to what target, how, and how accurate it was after."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from revit.config import ViTConfig
from revit.distill import teacher_notes
from revit.models.hub import ModelCard
from revit.trace import describe_removals

TRACE_PLOT = Path("plots") / "widths_vs_step.png"


def prune_card(run_dir: str | os.PathLike[str], metrics: Mapping[str, Any], base: ViTConfig) -> ModelCard:
    """A :class:`ModelCard` from a pruning run's folder and its ``metrics.json`` contents."""
    run = Path(run_dir)
    target = metrics.get("target") or {}
    acc = {f"{k.removesuffix('_accuracy')} top-1 (after pruning, before fine-tuning)": float(metrics[k])
           for k in ("val_accuracy", "test_accuracy") if metrics.get(k) is not None}
    ratio = metrics.get("macs_ratio")
    title = f"{base.name or 'ReViT'} pruned to {ratio:.2f} x its MACs" if ratio is not None else None
    notes = [f"Pruned by `revit prune`: criterion {metrics.get('criterion', '?')}, target {target.get('ratio', '?')} "
             f"x the base {target.get('kind', 'MACs')}, penalty {metrics.get('penalty', '?')}, "
             f"{metrics.get('steps', '?')} pruning steps over {metrics.get('batches', '?')} batches "
             f"({metrics.get('schedule', 'schedule not recorded')}).", *teacher_notes(metrics)]
    if metrics.get("removed"):
        notes.append(f"Depth pruned (block indices of the base): removed {describe_removals(metrics['removed'])}.")
    return ModelCard(title=title, base=base.name or "a custom config (in the run's trace.jsonl header)",
                     base_config=base, pruning_run=run.name or str(run), trace_plot=run / TRACE_PLOT,
                     accuracy=acc, notes=tuple(notes))


__all__ = ["TRACE_PLOT", "prune_card"]
