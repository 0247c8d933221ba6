"""Transfer a latency table to a setting it was not built for, from at most ten whole models timed there.

HELP and LitePred adapt a predictor to a new device from about ten measurements; revit does the same with a
table.  Another intra-op thread count or batch size stands in for another device.  The table's *shape* is kept
and only a few scales are fitted, so that ten points determine them:

- a v2 table splits each full-block cell into an attention part and an MLP part in proportion to its two halves
  (``F * A / (A + M)`` and ``F * M / (A + M)`` at every knot, the halves priced on their own grids), and fits one
  scale for each: threads and batch speed up the MLP's GEMMs and the attention's small matmuls and softmax
  differently.  A v1 table (no halves) gets one scale for the whole block;
- the fixed parts (patch embedding, norm, head) get a scale and an offset, the offset being what a whole model
  pays once in the new setting whatever its widths (a session call, the input copy).

The fit is non-negative least squares of ``measured = sum(scale_p * part_p) + fixed_scale * fixed + offset`` over
the timed models.  What is timed is the whole model exported with ``torch.onnx`` (where the backend runs ONNX
files): it is what a user deploys, and a whole model carries what block graphs miss (the graph's excess over its
parts, the once-per-model cost), which the offset and the fitted scales absorb.  The new table's predictions are
exactly the fitted sum (each part is a grid of the table's own knots), so the fit's residuals are the new table's
errors on the timed models.  Its metadata records the source, the new setting, the models timed, the fit and the
residuals.  Torch-free except the timing (:func:`transfer` exports the models).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from revit.config import WIDTH_KINDS, ViTConfig
from revit.errors import ConfigError
from revit.latency.branches import BRANCH_AXES
from revit.latency.table import LatencyTable

if TYPE_CHECKING:
    from revit.latency.backends.base import Backend

MAX_CONFIGS = 10  # the budget of measurements in the new setting
FIXED_PARAMS = ("fixed", "offset_s")


def setting_of_table(table: LatencyTable) -> dict[str, int]:
    """The measurement setting a transfer changes: batch size and intra-op threads (1 when not recorded)."""
    threads = (table.metadata.get("backend_settings") or {}).get("intra_op_threads") or 1
    return {"batch_size": table.batch_size, "threads": int(threads)}


def params_of(table: LatencyTable) -> tuple[str, ...]:
    """The names of the fitted parameters: one scale per block part, the fixed parts' scale and an offset."""
    parts = tuple(BRANCH_AXES) if table.prices_absent_branches else ("block",)
    return (*parts, *FIXED_PARAMS)


def check_transfer(table: LatencyTable, new: Mapping[str, int], configs: int, device: str | None = None) -> None:
    """Refuse, before any timing, a transfer that cannot work: too many or too few models, no fixed parts
    (:func:`check_models`), or a new setting equal to the table's own on the table's own device
    (:func:`check_new_setting`)."""
    check_models(table, configs)
    check_new_setting(table, new, device)


def check_models(table: LatencyTable, configs: int) -> None:
    """Refuse too many or too few models for the fit, or a table without fixed parts (whose scale it fits)."""
    if configs > MAX_CONFIGS:
        raise ConfigError(f"--configs {configs}: a transfer times at most {MAX_CONFIGS} models (for a full "
                          "measurement of the new setting, build a table: `revit latency build`)")
    n = len(params_of(table))
    if configs < n:
        raise ConfigError(f"--configs {configs}: the fit has {n} parameters ({', '.join(params_of(table))}); "
                          f"time at least {n} models")
    if table.fixed is None:
        raise ConfigError(f"{table.source}: the table has no measurement of the fixed parts; a transfer fits their "
                          "scale (rebuild it with `revit latency build`)")


def check_new_setting(table: LatencyTable, new: Mapping[str, int], device: str | None = None) -> None:
    """Refuse the table's own batch and threads on its own device (``device``: this machine's, None when not known
    yet); another device at the same batch and threads is a transfer too."""
    from revit.latency.backends.base import device_model

    old = setting_of_table(table)
    own = device is None or device_model(device) == device_model(str(table.metadata.get("device") or ""))
    if all(new[k] == old[k] for k in old) and own:
        raise ConfigError(f"the new setting (batch {new['batch_size']}, {new['threads']} threads) is the table's "
                          "own on its own device; give another --batch or --threads (or `revit latency calibrate` "
                          "for this setting)")


def _knots(table: LatencyTable) -> np.ndarray:
    """Every knot of the full grid, one row each, in the grid's C order."""
    mesh = np.meshgrid(*(np.asarray(table.axes[a]) for a in WIDTH_KINDS), indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


def _cols(half: str) -> list[int]:
    return [WIDTH_KINDS.index(a) for a in BRANCH_AXES[half]]


def part_tables(table: LatencyTable) -> dict[str, LatencyTable]:
    """The table's block cost as a sum of parts, each a table on the same knots (blocks only, no fixed parts):
    ``block`` for a v1 table; ``attention`` and ``mlp`` for a v2 one (the full cell split by its halves)."""
    doc = table.uncalibrated().to_dict()
    doc["metadata"] = {k: v for k, v in doc["metadata"].items() if k != "calibrations"}
    doc["fixed"], doc["spread"] = None, None
    if table.branches is None:
        return {"block": LatencyTable.from_dict(doc, f"{table.source} (block part)")}
    halves = table.branches
    pts = _knots(table)
    a = halves["attention"](pts[:, _cols("attention")], extrapolate=True)
    m = halves["mlp"](pts[:, _cols("mlp")], extrapolate=True)
    total = a + m
    share = np.divide(a, total, out=np.full_like(a, 0.5), where=total > 0)
    full = table.uncalibrated().values.reshape(-1)
    out = {}
    for name, w in (("attention", share), ("mlp", 1 - share)):
        d = dict(doc, values=(full * w).reshape(table.values.shape).tolist())
        d["branches"] = {h: {**g.to_dict(), "spread": None} if h == name else
                         {**g.to_dict(), "values": np.zeros_like(g.values).tolist(), "spread": None}
                         for h, g in halves.items()}
        out[name] = LatencyTable.from_dict(d, f"{table.source} ({name} part)")
    return out


def transfer_configs(table: LatencyTable, n: int, seed: int = 0) -> list[ViTConfig]:
    """The models a transfer times: the table's widest and narrowest uniform models (the ends of its range set the
    fixed parts' scale apart from the offset), then random per-block ones (absent branches included on a v2 table,
    which set the attention and MLP scales apart)."""
    from revit.config import BLOCK_KINDS, BlockDims
    from revit.latency.accuracy import random_configs, setting_of

    setting, depth = setting_of(table)
    ends = [ViTConfig(embed_dim=int(pick(table.axes["embed_dim"])),
                      blocks=(BlockDims(*(int(pick(table.axes[k])) for k in BLOCK_KINDS)),) * depth, **setting)
            for pick in (max, min)]
    return (ends + random_configs(table, max(0, n - 2), seed=seed))[:n]


def design_matrix(table: LatencyTable, cfgs: Sequence[ViTConfig]) -> np.ndarray:
    """One row per config, one column per parameter of :func:`params_of`: each part's predicted block seconds,
    the fixed parts' seconds (as built) and 1 (the offset)."""
    parts = part_tables(table)
    raw = table.uncalibrated()
    rows = []
    for c in cfgs:
        fixed, note = raw.fixed_latency(c)
        if fixed is None:
            raise ConfigError(f"{table.source}: {note}")
        rows.append([parts[p].predict(c).blocks_s for p in parts] + [fixed, 1.0])
    return np.asarray(rows, dtype=np.float64)


def fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares of ``y ~ x @ p`` on relative errors (each row weighted by 1/y), columns
    normalised so that seconds and the offset's ones are on one footing."""
    from scipy.optimize import nnls

    w = x / y[:, None]
    norm = np.linalg.norm(w, axis=0)
    norm[norm == 0] = 1.0
    p, _ = nnls(w / norm, np.ones_like(y))
    return np.asarray(p / norm, dtype=np.float64)


def transferred_table(table: LatencyTable, params: Mapping[str, float], record: Mapping[str, Any],
                      metadata: Mapping[str, Any]) -> LatencyTable:
    """The table of the new setting: each part's grid times its scale, the fixed parts ``fixed * x + offset``;
    ``metadata`` replaces the source's where given, ``record`` is kept as ``metadata.transfer``."""
    parts = part_tables(table)
    doc = table.uncalibrated().to_dict()
    values = np.zeros_like(table.values)
    for p, t in parts.items():
        values += params[p] * t.values
    doc["values"] = values.tolist()
    doc["spread"] = None
    if table.branches is not None:
        doc["branches"] = {h: {**g.to_dict(), "values": (params[h] * g.values).tolist(), "spread": None}
                           for h, g in table.branches.items()}
    assert table.fixed is not None
    fx = table.fixed.to_dict()
    fx["values"] = [params["fixed"] * v + params["offset_s"] for v in table.fixed.values]
    fx.pop("spread", None)
    doc["fixed"] = fx
    meta = {k: v for k, v in doc["metadata"].items() if k != "calibrations"}
    meta.update(metadata)
    meta["transfer"] = dict(record)
    doc["metadata"] = meta
    return LatencyTable.from_dict(doc, f"{table.source} -> {record['setting']}")


def _new_metadata(table: LatencyTable, backend: Backend, new: Mapping[str, int]) -> dict[str, Any]:
    """The metadata the new setting changes: batch, threads, clock, device, created; no reference block (its
    median is the old setting's)."""
    m = table.metadata
    here = backend.info()
    meas = {k: v for k, v in (m.get("measurement") or {}).items() if k != "reference"}
    meas["clock"] = backend.clock_name
    bs = dict(m.get("backend_settings") or {})
    bs["intra_op_threads"] = new["threads"]
    return {"batch_size": new["batch_size"], "measurement": meas, "backend_settings": bs,
            "device": here.get("device", m["device"]), "backend_version": here.get("backend_version",
                                                                                   m["backend_version"]),
            "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}


def transfer(table: LatencyTable, backend: Backend, new: Mapping[str, int], *, configs: int = MAX_CONFIGS,
             passes: int = 3, seed: int = 0, source: str | None = None, progress: bool = False) -> LatencyTable:
    """Time ``configs`` whole models on ``backend`` (set up for the ``new`` setting: ``batch_size``, ``threads``)
    and return the table transferred to it (see the module docstring)."""
    from revit.latency.accuracy import model_source_for, validate
    from revit.latency.calibration import load_average

    new = {"batch_size": int(new["batch_size"]), "threads": int(new["threads"])}
    check_transfer(table, new, configs, backend.info().get("device"))
    source = model_source_for(backend, source)
    raw = table.uncalibrated()
    cfgs = transfer_configs(raw, configs, seed)
    x = design_matrix(table, cfgs)
    # the models timed at the new batch, raw seconds (the table's reference block belongs to its own setting)
    timing = raw.to_dict()
    timing["metadata"] = {**timing["metadata"], "batch_size": new["batch_size"],
                          "measurement": {k: v for k, v in (raw.metadata.get("measurement") or {}).items()
                                          if k != "reference"}}
    t0, load = time.perf_counter(), load_average()
    r = validate(LatencyTable.from_dict(timing, table.source, calibrated=False), backend, len(cfgs), seed=seed,
                 noise_k=0, passes=passes, model_source=source, progress=progress, configs=cfgs)
    y = np.asarray(r.raw_measured, dtype=np.float64)
    p = fit(x, y)
    names = params_of(table)
    pred = x @ p
    rel = (pred - y) / y
    record = {"source": os.path.basename(table.source), "source_setting": setting_of_table(table),
              "setting": new, "model_source": source, "load_average": load, "host": platform.node(),
              "seconds": round(time.perf_counter() - t0, 1),
              "fit": {n: float(v) for n, v in zip(names, p, strict=True)},
              "residuals": {"mape": float(np.mean(np.abs(rel))), "worst": float(np.max(np.abs(rel)))},
              "configs": [{"config": c.to_dict(), "measured_s": float(m), "predicted_s": float(q)}
                          for c, m, q in zip(cfgs, y, pred, strict=True)]}
    return transferred_table(table, dict(zip(names, (float(v) for v in p), strict=True)), record,
                             _new_metadata(table, backend, new))


def evaluate(transferred: LatencyTable, full: LatencyTable, samples: int = 200, seed: int = 7) -> dict[str, Any]:
    """MAPE of ``transferred`` against ``full`` (a table built in the new setting) on ``samples`` held-out random
    configs; also the shape MAPE, after one common scale (the load of the day the full table was built)."""
    from revit.latency.accuracy import random_configs

    mine, theirs = setting_of_table(transferred), setting_of_table(full)
    if mine != theirs or transferred.tokens != full.tokens:
        raise ConfigError(f"--evaluate {full.source}: built at batch {theirs['batch_size']}, {theirs['threads']} "
                          f"threads, {full.tokens} tokens; the transferred table is at batch {mine['batch_size']}, "
                          f"{mine['threads']} threads, {transferred.tokens} tokens")
    cfgs = random_configs(transferred, samples, seed=seed)
    p = np.array([transferred.predict(c).total_s for c in cfgs])
    f = np.array([full.predict(c).total_s for c in cfgs])
    rel = np.abs(p - f) / f
    k = float(np.median(f / p))
    shape = np.abs(k * p - f) / f
    return {"full": full.source, "samples": samples, "seed": seed, "mape": float(rel.mean()),
            "worst": float(rel.max()), "shape_mape": float(shape.mean()), "common_scale": k,
            "full_calibration": full.calibration_label}
