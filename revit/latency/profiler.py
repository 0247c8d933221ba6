"""Build a latency table by measurement: a sparse grid chosen from pilot sweeps, resumable.

Procedure (``design="auto"``):
1. *Pilot*: along every axis, sweep all candidate values with the other axes held at an anchor
   (the space's maximum and its middle).  These are measured cells like any other.
2. *Knots*: per axis, start from the end points and greedily add the candidate where piecewise
   linear interpolation of the sweeps errs most, until the worst error is below ``tol`` (never
   below twice the pilot's own relative noise) and the grid fits in ``max_cells``.  Multilinear
   interpolation is exact for products of linear terms (MACs are such products), so knots are
   only needed where the device steps or bends.  ``knots`` (``--knots AXIS=V,V``) forces knots where a
   device is known to bend between sweeps the pilot cannot see (e.g. every ``embed_dim`` of a small space).
3. *Grid*: measure every knot combination, plus the fixed parts at each ``embed_dim`` knot and an
   empty call (its per-call overhead is subtracted from each block: a whole model pays it once).
4. *Half blocks*: on the same knots, the attention half (a block without MLP) over embed_dim x heads x
   qk_dim x v_dim and the MLP half (a block without attention) over embed_dim x mlp_dim, in the same
   passes as the grid: they price a block with an absent branch (:mod:`revit.latency.branches`).  They
   add ``1/|mlp_dim knots| + 1/(|heads| |qk_dim| |v_dim| knots)`` of the grid's cells, each cheaper.

``design="additive"`` measures the halves only, plus ``JOIN_CELLS`` whole blocks per ``embed_dim`` knot, and
derives every full block from them (:mod:`revit.latency.additive`).

Every cell is measured in ``passes`` passes; each pass visits the pending work in a fresh random
order, so load changes on a shared machine spread over all cells instead of biasing some.  A cell's
value is the median of its ``passes x repeats`` samples (after ``warmup`` runs per pass); its
spread is their interquartile range (the timing protocol: :mod:`revit.latency.timing`).  Each
measurement is appended to ``OUT.journal.jsonl`` as one line (written, flushed and fsynced in one
call), so a killed build resumes with nothing measured lost.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from revit import __version__
from revit.config import WIDTH_KINDS, BlockDims
from revit.errors import ConfigError, RunExistsError
from revit.input_checks import short
from revit.latency.additive import additive_cells, additive_grid, join_keys
from revit.latency.backends.base import Backend
from revit.latency.branches import BRANCH_AXES, Grid
from revit.latency.grid import WidthGrid, greedy_knots
from revit.latency.journal import Journal
from revit.latency.table import FixedParts, LatencyTable
from revit.latency.timing import Reference, time_bracketed
from revit.run_folders import FileClaim, claim_output_file, file_kind

NVIT_CELLS = 9375
DESIGNS = ("auto", "full", "additive")
Cell = tuple[int, int, int, int, int]


def design_cells(knots: Mapping[str, Sequence[int]], design: str) -> int:
    """Cells a design measures on ``knots`` (besides the pilot's): the product of the axes, or (additive) the two
    halves' sub-grids and the join cells."""
    if design == "additive":
        return additive_cells(knots)
    return int(np.prod([len(knots[a]) for a in WIDTH_KINDS]))


@dataclass
class BuildSettings:
    """How to measure: batch size, warm-up, repeats and passes, design and its cell budget."""

    batch: int = 64
    warmup: int = 2
    repeats: int = 5
    passes: int = 3
    design: str = "auto"  # auto | full | additive
    max_cells: int = NVIT_CELLS // 10
    tol: float = 0.01
    seed: int = 0
    reference: bool = True  # normalise by a reference block timed around each measurement
    reference_runs: int = 3
    knots: dict[str, tuple[int, ...]] = field(default_factory=dict)  # forced knots per axis (added to the auto ones)
    # knots of the half blocks only (added to the grid's): a half is cheap, so its axes can be dense where a full
    # block's product grid cannot (auto/full designs; the additive design measures its halves on ``knots``)
    half_knots: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # smoothing of the finished grids (:mod:`revit.latency.smoothing`): 0 off, a strength, or "auto" (chosen by
    # cross-validation on the build's own cells)
    smooth: float | str = "auto"

    def check(self) -> None:
        """Every count within the bounds a table's metadata is read back with (``MEASUREMENT_COUNTS``)."""
        from revit.input_checks import MAX_BATCH, MAX_COUNT, check_int
        from revit.latency.table import MEASUREMENT_COUNTS

        for k, (lo, hi) in {"batch": (1, MAX_BATCH), "max_cells": (1, MAX_COUNT), **MEASUREMENT_COUNTS}.items():
            check_int(getattr(self, k), k, lo, hi)
        if self.design not in DESIGNS:
            raise ConfigError(f"design must be one of {', '.join(DESIGNS)}, got {short(self.design)}")
        for flag, forced in (("knots", self.knots), ("half-knots", self.half_knots)):
            for axis in forced:
                if axis not in WIDTH_KINDS:
                    raise ConfigError(f"{flag}: {short(axis)} is not an axis ({', '.join(WIDTH_KINDS)})")
        if self.half_knots and self.design == "additive":
            raise ConfigError("half-knots: the additive design measures its halves on --knots; pass them there")
        if self.smooth != "auto" and not (isinstance(self.smooth, (int, float)) and 0 <= self.smooth < float("inf")):
            raise ConfigError(f"smooth must be auto, off or a number >= 0, got {short(str(self.smooth))}")

    def check_knots(self, grid: WidthGrid) -> None:
        """Every forced knot is a value of its axis in ``grid`` (refused before any journal exists)."""
        for flag, forced in (("knots", self.knots), ("half-knots", self.half_knots)):
            for axis, vs in forced.items():
                bad = [v for v in vs if v not in grid.axes[axis]]
                if bad:
                    raise ConfigError(f"{flag}: {axis} {bad} not in space {grid.name}'s {axis} axis "
                                      f"{list(grid.axes[axis])}")

    def half_axes(self, knots: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        """The knots the half blocks are measured on: the grid's, plus ``half_knots``."""
        return {a: tuple(sorted({*knots[a], *self.half_knots.get(a, ())})) for a in WIDTH_KINDS}

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("knots", "half_knots", "smooth")}
        for k in ("knots", "half_knots"):  # absent when none: journals of earlier versions resume
            if getattr(self, k):
                d[k] = {a: sorted(v) for a, v in getattr(self, k).items()}
        return d


def pilot_cells(grid: WidthGrid) -> list[Cell]:
    """1-D sweeps of every axis through two anchors: the space's maximum and its middle."""
    top = tuple(grid.axes[a][-1] for a in WIDTH_KINDS)
    mid = tuple(grid.axes[a][len(grid.axes[a]) // 2] for a in WIDTH_KINDS)
    cells: list[Cell] = []
    for anchor in (top, mid):
        for j, a in enumerate(WIDTH_KINDS):
            for v in grid.axes[a]:
                c = list(anchor)
                c[j] = v
                t = (c[0], c[1], c[2], c[3], c[4])
                if t not in cells:
                    cells.append(t)
    return cells


def check_cell_budget(grid: WidthGrid, s: BuildSettings) -> None:
    """Refuse (before any journal exists) a cell budget that no design can meet."""
    if s.design == "full":
        if grid.full_grid_cells > s.max_cells:
            raise ConfigError(f"the full grid of space {grid.name} has {grid.full_grid_cells} cells > --max-cells "
                              f"{s.max_cells}; use --design auto or raise --max-cells")
        return
    s.check_knots(grid)
    least = design_cells({a: sorted({v[0], v[-1], *s.knots.get(a, ())}) for a, v in grid.axes.items()},
                         s.design)  # ends + forced
    pilot = len(pilot_cells(grid))
    if least + pilot > s.max_cells:
        raise ConfigError(f"space {grid.name} needs at least {least + pilot} cells ({pilot} pilot cells, the two "
                          f"ends of every axis and the forced knots) > --max-cells {s.max_cells}; raise --max-cells")


def choose_knots(grid: WidthGrid, values: dict[Cell, float], noise: float, tol: float, budget: int,
                 forced: dict[str, tuple[int, ...]] | None = None,
                 design: str = "auto") -> tuple[dict[str, tuple[int, ...]], float]:
    """Knots per axis from the pilot sweeps (plus ``forced`` ones); raises the tolerance until the ``design``
    measures at most ``budget`` cells on them."""
    forced = forced or {}
    top = tuple(grid.axes[a][-1] for a in WIDTH_KINDS)
    mid = tuple(grid.axes[a][len(grid.axes[a]) // 2] for a in WIDTH_KINDS)
    tol = max(tol, 2 * noise)
    while True:
        knots: dict[str, tuple[int, ...]] = {}
        for j, a in enumerate(WIDTH_KINDS):
            xs = list(grid.axes[a])
            curves = []
            for anchor in (top, mid):
                ys = []
                for v in xs:
                    c = list(anchor)
                    c[j] = v
                    ys.append(values[(c[0], c[1], c[2], c[3], c[4])])
                curves.append(np.asarray(ys))
            knots[a] = tuple(sorted(set(greedy_knots(xs, curves, tol)) | set(forced.get(a, ()))))
        n = design_cells(knots, design)
        if n <= budget:
            return knots, tol
        if all(len(v) <= max(2, len(set(forced.get(a, ())) | {xs[0], xs[-1]}))
               for a, v in knots.items() for xs in [list(grid.axes[a])]):
            raise ConfigError(f"no design of space {grid.name} fits {budget} cells (the axis ends and forced knots "
                              f"alone need {n})")
        tol *= 1.25


@dataclass
class _State:
    """Everything measured so far; with a reference, samples are kept as ratios to the reference."""

    samples: dict[tuple[Any, ...], list[list[float]]] = field(default_factory=dict)
    done: set[tuple[Any, ...]] = field(default_factory=set)
    refs: list[float] = field(default_factory=list)
    design: dict[str, Any] | None = None
    seconds: float = 0.0

    def add(self, rec: dict[str, Any]) -> None:
        key = _key(rec["what"], rec.get("cell"))
        samples = rec["samples"]
        ref = rec.get("ref")
        if ref:
            r = float(np.mean(ref))
            self.refs.extend(ref)
            samples = [x / r for x in samples]
        self.samples.setdefault(key, []).append(samples)
        self.done.add((*key, rec["pass"]))
        self.seconds += float(rec.get("dt", 0.0))

    @property
    def scale(self) -> float:
        """Seconds per unit of ratio: the reference's median over the whole build (1 without reference)."""
        return float(np.median(self.refs)) if self.refs else 1.0

    def median(self, key: tuple[Any, ...]) -> float:
        return float(np.median(np.concatenate(self.samples[key]))) * self.scale

    def value_noise(self, key: tuple[Any, ...]) -> float:
        """Standard error of a cell's value, from the scatter of its per-pass medians (0 with one pass)."""
        meds = [float(np.median(x)) for x in self.samples[key]]
        return float(np.std(meds, ddof=1) / np.sqrt(len(meds))) * self.scale if len(meds) > 1 else 0.0

    def iqr(self, key: tuple[Any, ...]) -> float:
        q1, q3 = np.percentile(np.concatenate(self.samples[key]), [25, 75])
        return float(q3 - q1) * self.scale


def _key(what: str, cell: Any) -> tuple[Any, ...]:
    if what in ("block", *BRANCH_AXES):
        return (what, *cell)
    if what == "fixed":
        return ("fixed", int(cell))
    return (what,)


def _workload(backend: Backend, key: tuple[Any, ...], grid: WidthGrid, batch: int) -> Any:
    if key[0] == "block":
        e, h, q, v, m = key[1:]
        return backend.block(e, BlockDims(h, q, v, m), grid.tokens, batch)
    if key[0] == "attention":  # the block without its MLP
        e, h, q, v = key[1:]
        return backend.block(e, BlockDims(h, q, v, 0), grid.tokens, batch)
    if key[0] == "mlp":  # the block without its attention
        e, m = key[1:]
        return backend.block(e, BlockDims(0, 0, 0, m), grid.tokens, batch)
    if key[0] == "fixed":
        return backend.fixed(grid.setting.fixed_parts(), key[1], batch)
    top_e = grid.axes["embed_dim"][-1]
    return backend.overhead(grid.tokens, top_e, batch)


def reference_cell(grid: WidthGrid) -> Cell:
    """The block timed around every measurement to remove common-mode load: the space's middle."""
    c = tuple(grid.axes[a][len(grid.axes[a]) // 2] for a in WIDTH_KINDS)
    return (c[0], c[1], c[2], c[3], c[4])


def _header(grid: WidthGrid, backend: Backend, s: BuildSettings) -> dict[str, Any]:
    info = backend.info()
    return {"type": "header", "schema": "revit/latency-build-journal/v1", "space": grid.to_dict(),
            "backend": info, "clock": backend.clock_name, "settings": s.to_dict(), "revit_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _check_resume(old: dict[str, Any], new: dict[str, Any], journal: Journal) -> None:
    for k in ("space", "clock", "settings"):
        if old.get(k) != new.get(k):
            raise ConfigError(f"{journal.path}: the journal was started with different {k}; "
                              f"rerun with the same options or delete it to start over")
    ob, nb = old.get("backend", {}), new.get("backend", {})
    for k in ("backend", "backend_version", "device", "dtype", "intra_op_threads", "graph"):
        if ob.get(k) != nb.get(k):
            raise ConfigError(f"{journal.path}: the journal was measured with {k}={ob.get(k)!r}, "
                              f"now {nb.get(k)!r}; a table must come from one setup")


def journal_path(out: str | os.PathLike[str]) -> Path:
    return Path(str(out) + ".journal.jsonl")


def claim_build(out: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False) -> FileClaim:
    """Check (reading only) that a build may write table ``out`` and its journal: the rules of run folders
    (:func:`revit.run_folders.claim_output_file`): a finished table needs ``overwrite``, a journal ``resume``."""
    return claim_output_file(out, journal_path(out), "latency-build", lambda p: file_kind(p) == "latency-build",
                             resume=resume, overwrite=overwrite)


def build_table(grid: WidthGrid, backend: Backend, out: str | os.PathLike[str], settings: BuildSettings | None = None,
                *, resume: bool = False, overwrite: bool = False, progress: bool = True,
                on_measure: Callable[[int], None] | None = None) -> LatencyTable:
    """Measure ``space`` on ``backend`` and write the table to ``out`` (see the module docstring).

    Every check (settings, cell budget, the output and its journal) passes before the journal is created.
    """
    s = settings or BuildSettings()
    s.check()
    check_cell_budget(grid, s)
    claim = claim_build(out, resume=resume, overwrite=overwrite)
    claim.begin()  # creates and locks the journal (never through a symlink)
    try:
        header, state = _open_journal(claim.journal, _header(grid, backend, s), resume)
        m = _Measurer(grid, backend, s, state, Journal(claim.journal), progress, on_measure)
        try:
            knots, design_info = _design(grid, s, state, m)
            if s.design == "additive":
                blocks = join_keys(knots)
            else:
                blocks = [("block", *c) for c in itertools.product(*(knots[a] for a in WIDTH_KINDS))]
            fixed_keys = [("fixed", e) for e in knots["embed_dim"]]
            m.run([("overhead",)] + blocks + fixed_keys + half_keys(s.half_axes(knots)), "grid")
        finally:
            m.close()
        table = _assemble(grid, s, state, header, knots, design_info, m.ref_cell, str(out))
        if s.smooth != 0:  # after the measurements: a resumed build may smooth differently, nothing is re-timed
            from revit.latency.smoothing import smooth_table

            table = smooth_table(table, None if s.smooth == "auto" else float(s.smooth), seed=s.seed)
        table.save(out)
    except BaseException:
        claim.abandon()  # a journal without a measurement is removed; one with measurements stays to resume
        raise
    claim.journal.unlink()
    claim.done()
    return table


def half_keys(knots: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The half blocks a build measures: each branch on every combination of its axes' knots."""
    return [(name, *c) for name, names in BRANCH_AXES.items()
            for c in itertools.product(*(knots[a] for a in names))]


def _open_journal(journal: Path, header: dict[str, Any], resume: bool) -> tuple[dict[str, Any], _State]:
    """Start a journal, or continue one (``resume``) from its records; the header in force and the state."""
    state = _State()
    if not journal.exists() or journal.stat().st_size == 0:  # begin() created it empty
        Journal(journal).append(header)
        return header, state
    if not resume:
        raise RunExistsError(f"{journal} exists (an unfinished build)",
                             hint="pass --resume to continue it or delete it")
    old, recs = Journal(journal).read()
    _check_resume(old, header, Journal(journal))
    Journal(journal).repair()
    for r in recs:
        if r.get("type") == "measure":
            state.add(r)
        elif r.get("type") == "design":
            state.design = r
    return old, state


class _Measurer:
    """Times workloads pass by pass in random order, journals every sample, brackets each by the reference."""

    def __init__(self, grid: WidthGrid, backend: Backend, s: BuildSettings, state: _State, journal: Journal,
                 progress: bool, on_measure: Callable[[int], None] | None) -> None:
        self.grid, self.backend, self.s, self.state, self.journal = grid, backend, s, state, journal
        self.progress, self.on_measure, self.count = progress, on_measure, 0
        self.ref_cell = reference_cell(grid)
        self.ref = (Reference(_workload(backend, ("block", *self.ref_cell), grid, s.batch), s.reference_runs, s.warmup)
                    if s.reference else None)

    def close(self) -> None:
        """Release the reference workload (a backend session or a CUDA graph's memory)."""
        if self.ref is not None:
            self.ref.close()

    def run(self, keys: Iterable[tuple[Any, ...]], label: str) -> None:
        """Measure every key not yet measured in every pass (what the journal holds is skipped)."""
        s, state = self.s, self.state
        keys = list(dict.fromkeys(keys))
        todo = [(k, p) for p in range(s.passes) for k in keys if (*k, p) not in state.done]
        if not todo:
            return
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=label, unit="meas", disable=not self.progress, leave=False)
        try:
            for p in range(s.passes):
                batch_todo = [k for k, pp in todo if pp == p]
                random.Random(s.seed * 1000 + p + len(state.done)).shuffle(batch_todo)
                for k in batch_todo:
                    self.measure(k, p)
                    bar.update(1)
        finally:
            bar.close()

    def measure(self, k: tuple[Any, ...], p: int) -> None:
        t0 = time.perf_counter()
        w = _workload(self.backend, k, self.grid, self.s.batch)
        ref: list[float] = []
        if w is None:
            samples = [0.0]
        else:
            samples, ref = time_bracketed(w, self.s.warmup, self.s.repeats, self.ref)
            w.close()
        rec = {"type": "measure", "what": k[0], "cell": list(k[1:]) if k[0] in ("block", *BRANCH_AXES) else
               (k[1] if k[0] == "fixed" else None), "pass": p, "samples": samples,
               "dt": round(time.perf_counter() - t0, 6)}
        if ref:
            rec["ref"] = ref
        self.journal.append(rec)
        self.state.add(rec)
        self.count += 1
        if self.on_measure is not None:
            self.on_measure(self.count)


def _design(grid: WidthGrid, s: BuildSettings, state: _State, m: _Measurer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The knots per axis: the full grid, the journal's design, or an auto design from pilot sweeps."""
    if s.design == "full":  # its size was checked by check_cell_budget
        return dict(grid.axes), {"design": "full"}
    if state.design is not None:
        return ({a: tuple(v) for a, v in state.design["knots"].items()},
                {k: v for k, v in state.design.items() if k != "type"})
    pilot = pilot_cells(grid)
    m.run([("overhead",)] + [("block", *c) for c in pilot], "pilot sweeps")
    pv = {c: state.median(("block", *c)) for c in pilot}
    noise = float(np.median([state.value_noise(("block", *c)) / max(pv[c], 1e-12) for c in pilot]))
    knots, tol = choose_knots(grid, pv, noise, s.tol, s.max_cells - len(pilot), s.knots, s.design)
    design_info = {"design": s.design, "knots": {a: list(v) for a, v in knots.items()}, "pilot_cells": len(pilot),
                   "pilot_noise": round(noise, 5), "tol_used": round(tol, 5)}
    m.journal.append({"type": "design", **design_info})
    return knots, design_info


def _assemble(grid: WidthGrid, s: BuildSettings, state: _State, header: dict[str, Any], knots: dict[str, Any],
              design_info: dict[str, Any], ref_cell: Cell, source: str) -> LatencyTable:
    """The table from the measurements: block values less the call overhead, spreads, fixed parts, metadata."""
    overhead = state.median(("overhead",)) if ("overhead",) in state.samples else 0.0
    hk = s.half_axes(knots)
    halves = {name: Grid(names, {a: hk[a] for a in names}, *_measured_grid(state, name, names, hk, overhead),
                         f"{source}: branches.{name}") for name, names in BRANCH_AXES.items()}
    grid_knots = knots
    if s.design == "additive":
        whole = {k[1:]: state.median(k) - overhead for k in state.samples if k[0] == "block"}
        grid_knots, values, spread, check = additive_grid(whole, knots, halves, float(design_info.get("tol_used",
                                                                                                     s.tol)))
        design_info = {**design_info, "grid_knots": {a: list(v) for a, v in grid_knots.items()},
                       "join_cells": len(join_keys(knots)), "additive_check": check}
    else:
        values, spread = _measured_grid(state, "block", WIDTH_KINDS, knots, overhead)
        if s.half_knots:
            design_info = {**design_info, "half_knots": {a: list(hk[a]) for a in WIDTH_KINDS}}
    fixed_keys = [("fixed", e) for e in knots["embed_dim"]]
    fixed = FixedParts(setting=grid.setting.fixed_parts(), embed_dim=tuple(float(e) for e in knots["embed_dim"]),
                       values=tuple(state.median(k) for k in fixed_keys),
                       spread=tuple(state.iqr(k) for k in fixed_keys))
    measured = len({k for k in state.samples if k[0] == "block"})
    info = header["backend"]
    metadata = {
        "device": info["device"], "backend": info["backend"], "backend_version": info["backend_version"],
        "dtype": info["dtype"], "batch_size": s.batch, "tokens": grid.tokens,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "revit_version": __version__,
        "measurement": {"warmup": s.warmup, "repeats": s.repeats, "passes": s.passes,
                        "statistic": "median of passes x repeats samples", "spread": "interquartile range (s)",
                        "clock": header["clock"], "order": "random per pass, passes interleaved in time",
                        "overhead_subtracted_s": overhead,
                        "reference": None if not s.reference else {
                            "cell": dict(zip(WIDTH_KINDS, ref_cell, strict=True)), "median_s": state.scale,
                            "runs": s.reference_runs,
                            "note": "every sample is divided by the reference block timed just before and after "
                                    "it and multiplied by the reference's median over the build (removes "
                                    "common-mode load changes on a shared machine)"}},
        "backend_settings": {k: v for k, v in info.items()
                             if k not in ("backend", "backend_version", "device", "dtype")},
        "space": grid.to_dict(),
        "design": {**design_info, "cells_measured": measured, "full_grid_cells": grid.full_grid_cells,
                   "nvit_cells": NVIT_CELLS, "ratio_to_nvit": round(measured / NVIT_CELLS, 4),
                   "ratio_to_full_grid": round(measured / grid.full_grid_cells, 5),
                   "build_time_s": round(state.seconds, 1), "max_cells": s.max_cells,
                   "half_cells_measured": sum(g.size for g in halves.values())},
    }
    return LatencyTable({a: grid_knots[a] for a in WIDTH_KINDS}, values, metadata=metadata, spread=spread, fixed=fixed,
                        source=source, branches=halves)


def _measured_grid(state: _State, what: str, names: tuple[str, ...], knots: dict[str, Any],
                   overhead: float) -> tuple[np.ndarray, np.ndarray]:
    """Values (medians less the call overhead, at least 0) and spreads of ``what`` on the knots of axes ``names``."""
    shape = tuple(len(knots[a]) for a in names)
    values, spread = np.zeros(shape), np.zeros(shape)
    for idx in itertools.product(*(range(n) for n in shape)):
        key = (what, *(knots[a][i] for a, i in zip(names, idx, strict=True)))
        values[idx] = max(state.median(key) - overhead, 0.0)
        spread[idx] = state.iqr(key)
    return values, spread

