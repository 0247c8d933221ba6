"""Denoise a built table: a penalised smoother on each of its grids, its strength chosen by cross-validation.

A CPU build times each cell 15 times, but the median of a cell still moves by 2-3% from one build to the next, and a
whole model of identical blocks (a uniform config) carries one cell's error eight or twelve times.  Latency is a
smooth function of the widths almost everywhere, so neighbouring cells estimate each other.  On every grid (the
full block's and each half's) :func:`smooth_values` fits, in log space, values that stay close to the measured ones
while their second differences along every axis stay small (a discrete thin-plate penalty on the knots' own
spacing), weighted by ``lam``.  ``lam`` 0 gives the measurements back.

``lam`` is chosen per grid by k-fold cross-validation on the build's own cells (each fold's cells hidden and
predicted by the smoother of the rest), with the one-standard-error rule (the largest ``lam`` whose error is within
one standard error of the best): the held-out configs a user validates with play no part in the choice.  Real
steps that neighbours agree on survive a smoother of that strength; a lone cell that disagrees with all of them
does not.  Only axes of evenly spaced knots are smoothed along (:func:`smoothable`): the knots of a sparse design
sit where the cost bends, each one needed as measured.  Torch-free.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from revit import __version__
from revit.errors import ConfigError

CANDIDATES = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
FOLDS = 5
TINY = 1e-12
MAX_GAP_RATIO = 4.0  # the widest knot gap of a smoothed axis over its narrowest (DeiT's EMB 192..768: 3)
MAX_CV_ERROR = 0.25  # a grid whose hidden cells its neighbours miss by more (at every strength) is left alone


def smoothable(pts: Sequence[float]) -> bool:
    """Whether neighbours along an axis estimate each other: at least 3 knots, spaced evenly within a factor of
    ``MAX_GAP_RATIO``.  An auto design puts a close pair of knots around a step it found (MLP 128 and 136 in a
    range of 376); smoothing across that pair would erase the step each knot is there for."""
    gaps = np.diff(np.asarray(pts, dtype=np.float64))
    return len(pts) >= 3 and float(gaps.max() / gaps.min()) <= MAX_GAP_RATIO


def _second_differences(axes: Sequence[Sequence[float]], shape: tuple[int, ...]) -> list[Any]:
    """One sparse operator per :func:`smoothable` axis: the second derivative along it, in units of the axis's
    mean knot spacing (so one ``lam`` means the same on every axis)."""
    import scipy.sparse as sp

    ops = []
    for k, pts in enumerate(axes):
        x = np.asarray(pts, dtype=np.float64)
        m = len(x)
        if not smoothable(pts):
            continue
        d = np.zeros((m - 2, m))
        for i in range(1, m - 1):
            h0, h1 = x[i] - x[i - 1], x[i + 1] - x[i]
            d[i - 1, i - 1: i + 2] = 2 / (h0 * (h0 + h1)), -2 / (h0 * h1), 2 / (h1 * (h0 + h1))
        d *= ((x[-1] - x[0]) / (m - 1)) ** 2
        mats = [sp.identity(n, format="csr") for n in shape]
        mats[k] = sp.csr_matrix(d)
        op = mats[0]
        for mat in mats[1:]:
            op = sp.kron(op, mat, format="csr")
        ops.append(op)
    return ops


def smooth_values(values: np.ndarray, axes: Sequence[Sequence[float]], lam: float,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """The penalised fit of ``values`` (seconds, > 0) on ``axes``: ``argmin sum w (log v - log y)^2 + lam sum
    (second differences of log v)^2``.  Cells of weight 0 (or value <= 0) are filled in by their neighbours."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spl

    v = np.asarray(values, dtype=np.float64)
    y = np.log(np.maximum(v.ravel(), TINY))
    w = (v.ravel() > 0).astype(np.float64) if weights is None else np.asarray(weights, np.float64) * (v.ravel() > 0)
    if lam <= 0:
        return v.copy()
    a = sp.diags(w)
    for op in _second_differences(axes, v.shape):
        a = a + lam * (op.T @ op)
    a = a.tocsr()
    # conjugate gradients (the system is symmetric positive definite): on a 5-axis grid of thousands of cells a
    # direct factorisation fills in and is ~100x slower; it stays the fallback
    start = np.where(w > 0, y, float(np.average(y, weights=w)) if w.any() else 0.0)
    sol, info = spl.cg(a, w * y, x0=start, rtol=1e-10, maxiter=20_000, M=sp.diags(1 / a.diagonal()))
    if info != 0:
        sol = spl.spsolve(a.tocsc(), w * y)
    return np.asarray(np.exp(sol), dtype=np.float64).reshape(v.shape)


@dataclass(frozen=True)
class GridSmoothing:
    """What smoothing did to one grid: the strength chosen, the cross-validation behind it, the change."""

    lam: float
    cv: tuple[tuple[float, float, float], ...]  # (lam, mean |relative error| of hidden cells, its standard error)
    median_change: float
    max_change: float

    def to_dict(self) -> dict[str, Any]:
        return {"lambda": self.lam, "cv": [list(r) for r in self.cv], "median_change": round(self.median_change, 5),
                "max_change": round(self.max_change, 5)}


def cross_validate(values: np.ndarray, axes: Sequence[Sequence[float]], candidates: Sequence[float] = CANDIDATES,
                   folds: int = FOLDS, seed: int = 0) -> tuple[tuple[float, float, float], ...]:
    """Per candidate ``lam``: the mean relative error of each fold's hidden cells predicted from the others, and
    its standard error.  ``lam`` 0 predicts a hidden cell by the smallest smoother (it cannot interpolate)."""
    v = np.asarray(values, dtype=np.float64)
    flat = v.ravel()
    fold = np.random.default_rng(seed).integers(0, folds, flat.size)
    fold[flat <= 0] = -1  # never scored
    out = []
    for lam in candidates:
        eff = max(lam, CANDIDATES[1] / 10)  # a hidden cell needs some smoothing to be predicted at all
        errs = []
        for f in range(folds):
            hide = fold == f
            if not hide.any():
                continue
            fit = smooth_values(v, axes, eff, (~hide).astype(np.float64)).ravel()
            errs.append(np.abs(fit[hide] / flat[hide] - 1))
        e = np.concatenate(errs) if errs else np.zeros(1)
        out.append((float(lam), float(e.mean()), float(e.std(ddof=1) / np.sqrt(e.size)) if e.size > 1 else 0.0))
    return tuple(out)


def choose_lam(cv: Sequence[tuple[float, float, float]]) -> float:
    """The one-standard-error rule: the largest ``lam`` whose cross-validated error is within one standard error of
    the smallest."""
    best = min(cv, key=lambda r: r[1])
    return max(lam for lam, err, _ in cv if err <= best[1] + best[2])


def smooth_grid(values: np.ndarray, axes: Sequence[Sequence[float]], lam: float | None = None,
                seed: int = 0) -> tuple[np.ndarray, GridSmoothing]:
    """``values`` smoothed with ``lam`` (None: chosen by :func:`cross_validate`), and the record of it."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 3 or not any(smoothable(a) for a in axes):  # nothing to estimate a cell from
        return v.copy(), GridSmoothing(0.0, (), 0.0, 0.0)
    cv = cross_validate(v, axes, seed=seed) if lam is None else ()
    chosen = choose_lam(cv) if lam is None else float(lam)
    if lam is None and min(err for _, err, _ in cv) > MAX_CV_ERROR:
        chosen = 0.0
    out = smooth_values(v, axes, chosen)
    ok = v > 0
    change = np.abs(out[ok] / v[ok] - 1) if ok.any() else np.zeros(1)
    return out, GridSmoothing(chosen, cv, float(np.median(change)), float(np.max(change)))


def smooth_table(table: Any, lam: float | None = None, seed: int = 0) -> Any:
    """``table`` with every grid smoothed (the full block's and the halves'), ``metadata.smoothing`` recording how.

    Its calibrations are dropped: they were fitted to the values before (``revit latency calibrate`` again).  A
    table smoothed already is refused: smoothing twice would smooth harder than the cross-validation chose."""
    from revit.latency.branches import Grid
    from revit.latency.table import LatencyTable

    if table.metadata.get("smoothing"):
        raise ConfigError(f"{table.source}: the table is smoothed already ({describe(table.metadata)}); smooth the "
                          "build's own table, or rebuild it")
    if lam is not None and not (np.isfinite(lam) and lam >= 0):
        raise ConfigError(f"smoothing strength {lam}: give a number >= 0, or auto")
    full_axes = [table.axes[a] for a in table.axes]
    values, rec = smooth_grid(table.values, full_axes, lam, seed)
    grids = {"block": rec.to_dict()}
    branches = None
    if table.branches is not None:
        branches = {}
        for name, g in table.branches.items():
            hv, hrec = smooth_grid(g.values, [g.axes[a] for a in g.names], lam, seed)
            branches[name] = Grid(g.names, g.axes, hv, g.spread, g.source)
            grids[name] = hrec.to_dict()
    meta = {k: v for k, v in table.metadata.items() if k != "calibrations"}
    meta["smoothing"] = {"method": "penalised second differences in log space", "chosen": "given" if lam is not None
                         else f"{FOLDS}-fold cross-validation on the cells, one-standard-error rule",
                         "grids": grids, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         "revit_version": __version__}
    return LatencyTable(table.axes, values, metadata=meta, spread=table.spread, fixed=table.fixed,
                        fixed_note=table.fixed_note, source=table.source, branches=branches)


def describe(metadata: Mapping[str, Any]) -> str:
    """One line on a table's smoothing: each grid's strength and median change, or 'not smoothed'."""
    sm = metadata.get("smoothing")
    if not isinstance(sm, Mapping) or not isinstance(sm.get("grids"), Mapping):
        return "not smoothed"
    parts = [f"{name} lambda {g.get('lambda')} (cells moved {100 * float(g.get('median_change', 0)):.1f}% median)"
             for name, g in sm["grids"].items() if isinstance(g, Mapping)]
    return "smoothed: " + ", ".join(parts)


def check_record(metadata: Mapping[str, Any], source: str) -> None:
    """Refuse (one :class:`FileFormatError`) a ``smoothing`` record that is not one this module writes."""
    from revit.errors import FileFormatError

    sm = metadata.get("smoothing")
    if sm is None:
        return
    grids = sm.get("grids") if isinstance(sm, Mapping) else None
    if not isinstance(grids, Mapping) or not grids:
        raise FileFormatError(f"{source}: metadata.smoothing must be a mapping with 'grids'")
    for name, g in grids.items():
        lam = g.get("lambda") if isinstance(g, Mapping) else None
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (np.isfinite(lam) and lam >= 0):
            raise FileFormatError(f"{source}: metadata.smoothing.grids.{name}.lambda must be a number >= 0")
