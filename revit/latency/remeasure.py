"""Measure a finished table's fixed parts again (patch embedding, norm, head), its cells untouched."""

from __future__ import annotations

import datetime as _dt

import numpy as np

from revit import __version__
from revit.errors import ConfigError
from revit.latency.backends.base import Backend
from revit.latency.table import FixedParts, LatencyTable
from revit.latency.timing import Reference, ref_level, shuffled_passes, time_bracketed


def remeasure_fixed(table: LatencyTable, backend: Backend, *, passes: int = 5, repeats: int | None = None,
                    warmup: int | None = None, seed: int = 0, note: str = "") -> LatencyTable:
    """``table`` with its fixed parts measured again on ``backend``, its cells untouched.

    For a table built before the fixed-part graph changed (see :func:`revit.latency.graphs.fixed_graph`).
    With a reference block in the metadata, every sample is divided by the reference timed just before
    and after it and multiplied by the table's reference median, as the build did: the new fixed parts
    are in the units of the old cells however busy the machine is now.  Without a reference they are
    seconds now.  ``measurement.fixed_remeasured`` in the metadata records when, how and why.
    """
    if table.fixed is None:
        raise ConfigError(f"{table.source}: the table has no fixed parts to measure again")
    if passes < 1 or (repeats is not None and repeats < 1):
        raise ConfigError("passes and repeats must be >= 1")
    meas = dict(table.metadata.get("measurement") or {})
    warmup = int(meas.get("warmup", 2)) if warmup is None else warmup
    repeats = int(meas.get("repeats", 5)) if repeats is None else repeats
    ref_info = meas.get("reference")
    batch, setting = table.batch_size, dict(table.fixed.setting)
    ref = Reference.of_table(table, backend, warmup)
    knots = [int(e) for e in table.fixed.embed_dim]
    ratios: dict[int, list[float]] = {e: [] for e in knots}
    try:
        for e in shuffled_passes(knots, passes, seed):
            w = backend.fixed(setting, e, batch)
            try:
                t, refs = time_bracketed(w, warmup, repeats, ref)
            finally:
                w.close()
            r = ref_level(refs)
            ratios[e] += [x / r for x in t]
    finally:
        if ref is not None:
            ref.close()
    scale = float(ref_info["median_s"]) if ref_info else 1.0
    fixed = FixedParts(setting=setting, embed_dim=table.fixed.embed_dim,
                       values=tuple(float(np.median(ratios[e])) * scale for e in knots),
                       spread=tuple(float(np.subtract(*np.percentile(ratios[e], [75, 25]))) * scale for e in knots))
    info = backend.info()
    meas["fixed_remeasured"] = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                "revit_version": __version__, "passes": passes, "repeats": repeats, "warmup": warmup,
                                "device": info["device"], "backend_version": info["backend_version"],
                                "normalised": bool(ref_info), "note": note}
    return LatencyTable(table.axes, table.values, metadata={**table.metadata, "measurement": meas},
                        spread=table.spread, fixed=fixed, fixed_note=table.fixed_note, source=table.source,
                        branches=table.branches)
