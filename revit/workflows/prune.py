"""Prune a model into a run folder: the library side of ``revit prune`` (as :mod:`revit.workflows.train` is of
``revit train``).

One pass, in the order that refuses bad input before anything heavy: the folder is claimed once (reads
only until the run begins), the target's cost model is built once (a latency target without a table is
refused here), the teacher is loaded, then the data, checked once against the model
(:meth:`revit.data.Splits.check_fits`), and :class:`revit.prune.PruneRun` runs with that claim.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

from revit.config import ViTConfig
from revit.cost import LatencyTableLike
from revit.data import DataSpec
from revit.recipes import PruneConfig

log = logging.getLogger(__name__)


def load_table(table: str | os.PathLike[str] | LatencyTableLike | None) -> LatencyTableLike | None:
    """A latency table from a path or a shipped table's name (one passed as an object is used as is)."""
    if table is None or not isinstance(table, (str, os.PathLike)):
        return table
    from revit.latency.table import LatencyTable

    return LatencyTable.load(table)


def run_prune(cfg: ViTConfig, data: DataSpec, pc: PruneConfig, out: str | os.PathLike[str], *,
              checkpoint: str | None = None, table: str | os.PathLike[str] | LatencyTableLike | None = None,
              teacher: str | None = None, teacher_weights: str | None = None, resume: bool = False,
              overwrite: bool = False, threads: int | None = None, progress: bool = True, score_test: bool = True,
              on_start: Any = None) -> Any:
    """Prune ``cfg`` (with ``checkpoint``'s weights) on ``data`` to ``pc.target`` into run folder ``out``.

    ``table`` (a latency table, its path or a shipped name) prices a latency target and sets the penalty;
    ``teacher`` adds a CNN teacher's term (:func:`revit.distill.load_teacher`).  ``on_start(run)`` is called
    with the built :class:`~revit.prune.PruneRun` before it trains (the CLI prints its schedule).  Returns
    the :class:`~revit.prune.PruneResult`; ``score_test=False`` scores no test set.
    """
    import torch

    from revit.input_checks import check_output_dir
    from revit.run_folders import claim_run

    claim = claim_run(out, "prune", resume=resume, overwrite=overwrite)  # the one claim, before any data loads
    check_output_dir(out)
    if threads:
        torch.set_num_threads(threads)
    lat = load_table(table)
    pc = pc.bound(lat)  # the one cost-model build: a missing table is refused here
    from revit.prune.criteria import CRITERIA

    CRITERIA.get(pc.criterion)  # an unknown or broken criterion, before any data loads
    if lat is not None and not pc.target.needs_table:
        log.info("note: the latency table sets the penalty; the run stops on the %s target", pc.target.kind)
    cnn = None
    if teacher:  # refused (one line) before any data loads or any training starts
        from revit.distill import load_teacher

        cnn = load_teacher(teacher, teacher_weights, num_classes=cfg.num_classes, in_chans=cfg.in_chans,
                           img_size=cfg.img_size)
    from revit.data import load_splits
    from revit.models import build_model
    from revit.prune import PruneRun

    torch.manual_seed(pc.seed)
    splits = load_splits(replace(data, img_size=data.img_size or cfg.img_size))
    splits.check_fits(cfg, data.source)
    model = build_model(cfg, checkpoint=checkpoint)
    run = PruneRun(model, splits.train, splits.val, pc, out, table=lat, resume=resume, progress=progress,
                   test_ds=splits.test if score_test else None, overwrite=overwrite, teacher=cnn,
                   claim=claim)
    if on_start is not None:
        on_start(run)
    return run.run()


__all__ = ["load_table", "run_prune"]
