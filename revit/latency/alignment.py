"""Widths off a backend's kernel steps: a per-axis alignment warp, fitted from a probe, applied by every lookup.

Vectorised kernels run a width as if padded towards the next multiple of their step (an AVX-512 register holds 16
fp32 values; tensor cores want multiples of 8): on the micro table's CPU, whole models step up by 3-5% from EMB 64
to 65, then rise slowly to 80 (docs/evidence/latency.md, "Widths off the knots").  A table that interpolates
linearly between its knots 64 and 72 prices EMB 65 at 64's cost plus an eighth of the gap, and so underprices what
Torch-Pruning and other pruners leave (EMB 71, QK 21).

:func:`probe` times one block at many widths of each axis (the other widths at the table's reference cell), in
interleaved passes bracketed by the reference block like the build; :func:`fit_axis` then chooses, per axis, a
step ``q`` and the share ``alpha`` of the padding that costs, so that a width ``x`` is priced at the *warped*
width ``x + alpha * (ceil(x / q) * q - x)`` - the knots warped alike, so every cell keeps its measured value and
only widths between knots move - and the share ``remainder`` by which any width off a multiple of ``q`` costs
more than that (a kernel's remainder loop: on the EPYC of docs/evidence/latency.md a block of EMB 47 costs more
than one of EMB 48, which no warp of the width can say).  The remainder is taken out of the knots off the step
before interpolating and put back on the queries off it, so every knot still keeps its measured value.  An axis
is warped only where the warp cuts the probe's interpolation error clearly (:data:`MIN_GAIN`); ``heads`` is never
warped (a count, not a vector width).  The fit is recorded in ``metadata.alignment`` and validated on load;
``revit latency align`` runs it.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from revit import __version__
from revit.config import WIDTH_KINDS, BlockDims
from revit.errors import ConfigError, FileFormatError

ALIGN_AXES = tuple(k for k in WIDTH_KINDS if k != "heads")  # heads is a count, not a vector width
QUANTA = (4, 8, 16, 32, 64)
ALPHAS = tuple(round(0.05 * i, 2) for i in range(20))  # 0 .. 0.95: alpha < 1 keeps the warped knots increasing
REMAINDERS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08)  # the shares of a block's cost a width off the step may add
MAX_REMAINDER = 0.5
MIN_GAIN = 0.1  # the warp must cut the probe's cross-validated error by a tenth ...
MIN_POINTS = 0.001  # ... and its error by 0.1 point of latency, or the axis stays linear


@dataclass(frozen=True)
class AxisWarp:
    """Price width ``x`` at ``x + alpha * (ceil(x / quantum) * quantum - x)``: the share ``alpha`` of the padding
    to the next multiple of ``quantum`` costs like real width (monotone, strictly, as ``alpha < 1``); and a width
    off a multiple at ``1 + remainder`` times that (:meth:`factor`), which may price it above the next multiple."""

    quantum: int
    alpha: float
    remainder: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.quantum, bool) or not isinstance(self.quantum, int) or not 1 <= self.quantum <= 4096:
            raise ValueError(f"quantum must be an integer in [1, 4096], got {self.quantum!r}")
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha < 1):
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha!r}")
        if not (isinstance(self.remainder, (int, float)) and 0 <= self.remainder <= MAX_REMAINDER):
            raise ValueError(f"remainder must be in [0, {MAX_REMAINDER}], got {self.remainder!r}")

    def _pad(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return np.maximum(np.ceil(x / self.quantum - 1e-9) * self.quantum - x, 0.0)  # a multiple pads nothing

    def __call__(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) + self.alpha * self._pad(x)

    def factor(self, x: Any) -> np.ndarray:
        """The price of width ``x`` over its warped interpolation: ``1 + remainder`` off a multiple, 1 on one."""
        return 1.0 + self.remainder * (self._pad(x) > 1e-6)


def residuals(predicted: Any, measured: Any, rows: Any = None) -> np.ndarray:
    """``log(measured)`` less its regression on ``log(predicted)`` (the table's scale and offset, near enough),
    fitted on ``rows`` (all by default) and evaluated on every row."""
    y = np.log(np.asarray(measured, dtype=np.float64))
    rows = np.ones(len(y), dtype=bool) if rows is None else np.asarray(rows)
    return _regressed(np.log(np.asarray(predicted, dtype=np.float64))[None, :], y, rows)[0]


def _regressed(x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``y`` (log measured) less its least-squares line on each row of ``x`` (log predicted, one row per candidate:
    a fit scores hundreds at once), fitted on ``rows``, evaluated everywhere."""
    xr, yr = x[:, rows], y[rows]
    xm, ym = xr.mean(axis=1, keepdims=True), yr.mean()
    sxx = np.sum((xr - xm) ** 2, axis=1, keepdims=True)
    slope = np.divide(np.sum((xr - xm) * (yr - ym), axis=1, keepdims=True), sxx, out=np.zeros_like(sxx),
                      where=sxx > 0)
    return np.asarray(y - (ym + slope * (x - xm)))


def fit_error(predicted: Any, measured: Any) -> float:
    """How far measured latencies are from a table's predictions, up to the table's scale and offset: the
    root-mean-square of :func:`residuals`."""
    return float(np.sqrt(np.mean(residuals(predicted, measured) ** 2)))


def fit_axis(widths: Sequence[float], measured: Sequence[float],
             predict: Callable[[AxisWarp | None], Sequence[float]]) -> dict[str, Any]:
    """The (quantum, alpha, remainder) under which the models probed along one axis (at ``widths``; ``measured``
    may go on with other models whose predictions the warp moves too) are best predicted, and whether it is kept:
    ``{"quantum", "alpha", "remainder", "error_linear", "error_warped", "cv_linear", "cv_warped", "kept"}``.

    ``predict(warp)`` gives the table's predictions of those models with the axis warped (``None``: linear).
    Quanta wider than half the widths' span are not tried (one step is not a period).  A width's own cost varies
    by 1-2% on a CPU, which a free step and share partly fit; so the choice is kept only where leave-one-out
    cross-validation of the whole choice (step and share chosen without the model left out) cuts the error by
    :data:`MIN_GAIN` and by :data:`MIN_POINTS`."""
    if len(widths) < 4:
        raise ConfigError(f"an alignment fit needs >= 4 probed widths, got {len(widths)}")
    span = max(widths) - min(widths)
    cands: list[AxisWarp | None] = [None, *(AxisWarp(q, a, r) for q in QUANTA if 2 * q <= span for a in ALPHAS
                                            for r in REMAINDERS if a or r)]
    preds = np.log(np.array([predict(c) for c in cands], dtype=np.float64))  # one row per candidate
    y = np.log(np.asarray(measured, dtype=np.float64))
    n = len(measured)  # the axis's own models, then any random ones (:func:`odd_configs`)
    errs = [float(np.sqrt(np.mean(r**2))) for r in _regressed(preds, y, np.ones(n, dtype=bool))]
    best = int(np.argmin(errs))
    loo_linear, loo_chosen = [], []
    for i in range(n):
        rows = np.arange(n) != i
        res = _regressed(preds, y, rows)
        pick = int(np.argmin(np.mean(res[:, rows] ** 2, axis=1)))
        loo_linear.append(res[0, i])
        loo_chosen.append(res[pick, i])
    cv_linear, cv_warped = (float(np.sqrt(np.mean(np.square(v)))) for v in (loo_linear, loo_chosen))
    chosen = cands[best]
    kept = (chosen is not None and cv_warped <= (1 - MIN_GAIN) * cv_linear and errs[0] - errs[best] >= MIN_POINTS)
    return {"quantum": chosen.quantum if chosen else 0, "alpha": chosen.alpha if chosen else 0.0,
            "remainder": chosen.remainder if chosen else 0.0,
            "error_linear": round(errs[0], 5), "error_warped": round(errs[best], 5),
            "cv_linear": round(cv_linear, 5), "cv_warped": round(cv_warped, 5), "kept": bool(kept)}


def probe_widths(lo: int, hi: int, cap: int) -> list[int]:
    """Widths that straddle the steps a kernel may take, within ``lo..hi``: for the finest step ``s`` in
    :data:`QUANTA` that fits ``cap``, every multiple ``k`` of ``s`` and ``k + 1``, ``k - 1`` too where ``k`` is a
    multiple of ``2 s``, and both ends - so that a step at ``s`` or ``2 s`` shows as a jump between neighbours.
    Where even the coarsest step has too many multiples, evenly spaced ones of them, each with both neighbours."""

    def around(mults: Sequence[int], below: Sequence[int]) -> list[int]:
        ws = {lo, hi, *mults, *(k + 1 for k in mults if k < hi), *(k - 1 for k in below if k > lo)}
        return sorted(ws)

    for s in QUANTA:
        mults = range(-(-lo // s) * s, hi + 1, s)
        ws = around(mults, [k for k in mults if k % (2 * s) == 0])
        if len(ws) <= cap:
            return ws
    coarse = list(range(-(-lo // QUANTA[-1]) * QUANTA[-1], hi + 1, QUANTA[-1]))
    n = max(1, (cap - 2) // 3)
    picked = sorted({coarse[int(round(i))] for i in np.linspace(0, len(coarse) - 1, n)}) if coarse else []
    return around(picked, picked)


def probe_cell(table: Any) -> dict[str, int]:
    """The widths the axis probes hold while one varies: the table's reference cell (the space's middle without
    one)."""
    meas = table.metadata.get("measurement") or {}
    centre = (meas.get("reference") or {}).get("cell") or {a: table.axes[a][len(table.axes[a]) // 2]
                                                          for a in WIDTH_KINDS}
    return {a: int(centre[a]) for a in WIDTH_KINDS}


def axis_config(table: Any, axis: str, width: int) -> Any:
    """The uniform whole model at the table's setting and depth with every width at the table's reference cell
    (the space's middle without one) but ``axis`` at ``width``."""
    from revit.config import ViTConfig
    from revit.latency.accuracy import setting_of

    cell = probe_cell(table)
    cell[axis] = int(width)
    setting, depth = setting_of(table)
    dims = BlockDims(cell["heads"], cell["qk_dim"], cell["v_dim"], cell["mlp_dim"])
    return ViTConfig(embed_dim=cell["embed_dim"], blocks=(dims,) * depth, **setting)


def probe_configs(table: Any, widths: int, axes: Sequence[str] = ALIGN_AXES) -> list[tuple[str, int, Any]]:
    """``(axis, width, config)``: :func:`axis_config` at the widths :func:`probe_widths` picks on each of ``axes``
    (at most ``widths`` per axis, when the coarsest step allows)."""
    out = []
    for axis in axes:
        lo, hi = int(math.ceil(table.axes[axis][0])), int(math.floor(table.axes[axis][-1]))
        out += [(axis, w, axis_config(table, axis, w)) for w in probe_widths(lo, hi, widths)]
    return out


def odd_configs(table: Any, n: int, seed: int = 0) -> list[Any]:
    """``n`` uniform whole models at the table's setting and depth whose widths are random integers inside the
    table's range (not on the space's granularity): every axis off its kernels' steps at once, in random contexts
    of the other widths, where the axis probes vary one axis at the reference cell.  Uniform, since random widths
    per block would average the steps of the blocks into one constant share that a scale absorbs."""
    import random

    from revit.config import ViTConfig
    from revit.latency.accuracy import setting_of

    rng = random.Random(seed)
    setting, depth = setting_of(table)

    def draw(axis: str) -> int:
        return rng.randint(int(math.ceil(table.axes[axis][0])), int(math.floor(table.axes[axis][-1])))

    out = []
    for _ in range(n):
        e = draw("embed_dim")
        dims = BlockDims(draw("heads"), draw("qk_dim"), draw("v_dim"), draw("mlp_dim"))
        out.append(ViTConfig(embed_dim=e, blocks=(dims,) * depth, **setting))
    return out


RANDOM = "random"  # the key of :func:`probe`'s random models (:func:`odd_configs`), beside the axes'


def probe(table: Any, backend: Any, *, widths: int = 24, passes: int = 10, seed: int = 0,
          axes: Sequence[str] = ALIGN_AXES, random: int = 0, source: str | None = None,
          progress: bool = False) -> dict[str, dict[str, list[Any]]]:
    """Time whole models (exported, as a user deploys them, where the backend runs ONNX files) along each axis of
    :data:`ALIGN_AXES` (:func:`probe_configs`) and ``random`` models of random widths (:func:`odd_configs`),
    interleaved in ``passes`` random passes with the reference block around each: ``{axis: {"widths": [...],
    "measured": [s, ...]}}`` in the units of the table's cells, and ``{"random": {"configs": [config dicts],
    "measured": [...]}}`` where ``random`` > 0."""
    from revit.latency.accuracy import validate

    probes: list[tuple[str, Any, Any]] = list(probe_configs(table, widths, axes))
    probes += [(RANDOM, c.to_dict(), c) for c in odd_configs(table, random, seed)]
    r = validate(table.uncalibrated(), backend, len(probes), seed=seed, noise_k=0, passes=passes,
                 model_source=source, progress=progress, configs=[c for _, _, c in probes])
    out: dict[str, dict[str, list[Any]]] = {a: {"widths": [], "measured": []} for a in axes}
    if random:
        out[RANDOM] = {"configs": [], "measured": []}
    for (key, w, _), m in zip(probes, r.measured, strict=True):
        if key == RANDOM:
            out[key]["configs"].append(w)
        else:
            out[key]["widths"].append(float(w))
        out[key]["measured"].append(float(m))
    return out


def totals(table: Any, cfgs: Sequence[Any]) -> list[float]:
    """Each config's predicted seconds (:meth:`LatencyTable.predict_many`: every block looked up at once)."""
    return [p.total_s for p in table.predict_many(cfgs)]


def probed_from_dict(doc: Any, source: str) -> dict[str, dict[str, list[Any]]]:
    """A probe as :func:`probe` returns it, read back from ``revit latency align --json``'s output (its ``probe``)
    or the probe itself, validated: each axis of :data:`ALIGN_AXES` with as many positive ``widths`` as positive
    finite ``measured`` seconds, and :data:`RANDOM` with ``configs`` (validated as configs) and ``measured``."""
    from revit.config import ViTConfig

    probed = doc.get("probe", doc) if isinstance(doc, Mapping) else None
    if not isinstance(probed, Mapping) or not probed:
        raise FileFormatError(f"{source}: not a probe (an alignment's --json output, or its 'probe')")
    out: dict[str, dict[str, list[Any]]] = {}
    for key, p in probed.items():
        if key not in (*ALIGN_AXES, RANDOM):
            raise FileFormatError(f"{source}: probe key {key!r} is not one of {', '.join((*ALIGN_AXES, RANDOM))}")
        first = "configs" if key == RANDOM else "widths"
        if not (isinstance(p, Mapping) and isinstance(p.get(first), list) and isinstance(p.get("measured"), list)
                and len(p[first]) == len(p["measured"])):
            raise FileFormatError(f"{source}: probe.{key} must hold lists {first} and measured of one length")
        if not all(isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < math.inf
                   for m in p["measured"]):
            raise FileFormatError(f"{source}: probe.{key}.measured must be positive seconds")
        vals: list[Any]
        if key == RANDOM:
            vals = [ViTConfig.from_dict(c, f"{source}: probe.random.configs").to_dict() for c in p[first]]
        elif all(isinstance(w, (int, float)) and not isinstance(w, bool) and 1 <= w <= 65536 for w in p[first]):
            vals = [float(w) for w in p[first]]
        else:
            raise FileFormatError(f"{source}: probe.{key}.widths must be widths from 1 to 65536")
        out[key] = {first: vals, "measured": [float(m) for m in p["measured"]]}
    return out


def with_warps(table: Any, warps: Mapping[str, AxisWarp]) -> Any:
    """``table`` pricing through ``warps`` (a record naming only them; the caller's table untouched)."""
    from revit.latency.table import LatencyTable

    axes = {a: {"quantum": w.quantum, "alpha": w.alpha, "remainder": w.remainder, "kept": True}
            for a, w in warps.items()}
    meta = {**table.metadata, "alignment": {"axes": axes}}
    return LatencyTable(table.axes, table.values, metadata=meta, spread=table.spread, fixed=table.fixed,
                        fixed_note=table.fixed_note, source=table.source, branches=table.branches, calibrated=False)


def align_table(table: Any, probed: Mapping[str, Mapping[str, Sequence[Any]]], *,
                settings: Mapping[str, Any] | None = None) -> Any:
    """``table`` with ``metadata.alignment`` fitted from ``probed`` (:func:`probe`'s result).  Each axis is fitted on
    its own models and the random ones (:data:`RANDOM`), whose predictions move with every axis's warp: then in
    two sweeps over the axes, each fitted with the others' warps of the sweep before (without random models, one
    sweep, each axis on its own with the others linear).  Where the warps kept differ from the table's, its
    calibrations are dropped: predictions off the knots moved (``revit latency calibrate`` again).  A table
    aligned before is aligned afresh: the record describes one probe of one machine."""
    from revit.config import ViTConfig
    from revit.latency.table import LatencyTable

    rand = probed.get(RANDOM) or {"configs": [], "measured": []}
    rcfgs = [ViTConfig.from_dict(d) for d in rand["configs"]]
    rmeas = [float(m) for m in rand["measured"]]
    axis_probes = {a: p for a, p in probed.items() if a != RANDOM}
    kept: dict[str, AxisWarp] = {}
    axes: dict[str, Any] = {}
    for _sweep in range(2 if rcfgs else 1):
        for axis, p in axis_probes.items():
            cfgs = [axis_config(table, axis, int(w)) for w in p["widths"]] + rcfgs
            others = {a: w for a, w in kept.items() if a != axis} if rcfgs else {}  # axis probes alone: each on its own

            def predict(warp: AxisWarp | None, cfgs: list[Any] = cfgs, axis: str = axis,
                        others: dict[str, AxisWarp] = others) -> list[float]:
                return totals(with_warps(table, others if warp is None else {**others, axis: warp}), cfgs)

            fit = fit_axis(p["widths"], [float(m) for m in p["measured"]] + rmeas, predict)
            axes[axis] = {**fit, "widths": len(p["widths"]), "random": len(rcfgs)}
            kept.pop(axis, None)
            if fit["kept"]:
                kept[axis] = AxisWarp(fit["quantum"], fit["alpha"], fit["remainder"])
    moved = kept != table.warps  # the calibrations hold only while the predictions do
    meta = {k: v for k, v in table.metadata.items() if k != "alignment" and not (moved and k == "calibrations")}
    method = "whole uniform models along each axis, the rest at the reference cell"
    if rcfgs:
        method += f", and {len(rcfgs)} models of random integer widths in every block"
    meta["alignment"] = {"method": method + "; per axis the quantum and alpha under which the table predicts them "
                                            "best, kept where leave-one-out cross-validation cuts the error",
                         "axes": axes, "settings": dict(settings or {}),
                         "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         "revit_version": __version__}
    return LatencyTable(table.axes, table.values, metadata=meta, spread=table.spread, fixed=table.fixed,
                        fixed_note=table.fixed_note, source=table.source, branches=table.branches)


def warps_of(metadata: Mapping[str, Any], source: str) -> dict[str, AxisWarp]:
    """The warps a table's ``metadata.alignment`` keeps, per axis (none for a table never aligned); a record that is
    not one :func:`align_table` writes is refused with one :class:`FileFormatError`."""
    rec = metadata.get("alignment")
    if rec is None:
        return {}
    axes = rec.get("axes") if isinstance(rec, Mapping) else None
    if not isinstance(axes, Mapping):
        raise FileFormatError(f"{source}: metadata.alignment must be a mapping with 'axes'")
    out = {}
    for axis, a in axes.items():
        if axis not in ALIGN_AXES or not isinstance(a, Mapping):
            raise FileFormatError(f"{source}: metadata.alignment.axes: {axis!r} is not one of "
                                  f"{', '.join(ALIGN_AXES)} with a mapping")
        if a.get("kept") is True:
            try:
                out[axis] = AxisWarp(a.get("quantum"), a.get("alpha"),  # type: ignore[arg-type]
                                     a.get("remainder", 0.0))  # a record older than the remainder has none
            except ValueError as e:
                raise FileFormatError(f"{source}: metadata.alignment.axes.{axis}: {e}") from None
        elif a.get("kept") is not False:
            raise FileFormatError(f"{source}: metadata.alignment.axes.{axis}.kept must be true or false")
    return out


def describe(metadata: Mapping[str, Any]) -> str:
    """One line on a table's alignment: each warped axis's step and share, or 'not aligned'."""
    rec = metadata.get("alignment")
    if not isinstance(rec, Mapping):
        return "not aligned"
    axes = rec.get("axes") or {}
    kept = [f"{ax} step {a['quantum']} x{a['alpha']:g}" + (f" +{a['remainder']:.0%} off it" if a.get("remainder")
                                                          else "") for ax, a in axes.items() if a.get("kept")]
    return "aligned: " + (", ".join(kept) if kept else "no axis steps (every axis linear between knots)")
