"""The one timing protocol of latency measurement: warm-up, samples bracketed by a reference block, passes.

A table build (:mod:`revit.latency.profiler`), a validation (:mod:`revit.latency.accuracy`) and a new
measurement of a table's fixed parts (:mod:`revit.latency.remeasure`) time a workload the same way:
``warmup`` untimed runs, then ``repeats`` timed ones, with the reference block (when there is one) timed
just before and just after them.  Dividing the samples by that reference level removes common-mode load
changes on a shared machine.  Validation and re-measurement visit their work in ``passes`` passes, each in
a fresh random order (:func:`shuffled_passes`); a build orders its passes itself, as it resumes from a
journal.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import TypeVar

import numpy as np

from revit.config import BlockDims
from revit.latency.backends.base import Backend, Workload
from revit.latency.table import LatencyTable

T = TypeVar("T")


class Reference:
    """The reference block timed around every measurement: ``time()`` is the median of ``runs`` runs."""

    def __init__(self, workload: Workload, runs: int, warmup: int) -> None:
        self.workload, self.runs = workload, runs
        workload.time(max(warmup, 1))

    @classmethod
    def of_table(cls, table: LatencyTable, backend: Backend, warmup: int) -> Reference | None:
        """The reference block ``table`` was built with (``measurement.reference``), on ``backend``, warmed up;
        None for a table built without one."""
        ref = (table.metadata.get("measurement") or {}).get("reference")
        if not ref:
            return None
        c = ref["cell"]
        dims = BlockDims(int(c["heads"]), int(c["qk_dim"]), int(c["v_dim"]), int(c["mlp_dim"]))
        return cls(backend.block(int(c["embed_dim"]), dims, table.tokens, table.batch_size), int(ref.get("runs", 3)),
                   warmup)

    def time(self) -> float:
        return float(np.median(self.workload.time(self.runs)))

    def close(self) -> None:
        self.workload.close()


def time_bracketed(w: Workload, warmup: int, repeats: int, ref: Reference | None) -> tuple[list[float], list[float]]:
    """``repeats`` samples of ``w`` after ``warmup`` untimed runs, and the reference times just before and after
    them (empty without a reference)."""
    w.time(warmup)
    refs = [ref.time()] if ref is not None else []
    samples = w.time(repeats)
    if ref is not None:
        refs.append(ref.time())
    return samples, refs


def ref_level(refs: Sequence[float]) -> float:
    """The reference level of one measurement: the mean of the times around it (1 without a reference)."""
    return (refs[0] + refs[1]) / 2 if refs else 1.0


def shuffled_passes(items: Sequence[T], passes: int, seed: int) -> Iterator[T]:
    """Every item once per pass, each pass in a fresh random order (one generator seeded with ``seed``), so
    load changes spread over all items instead of biasing some."""
    rng = random.Random(seed)
    for _ in range(passes):
        order = list(items)
        rng.shuffle(order)
        yield from order
