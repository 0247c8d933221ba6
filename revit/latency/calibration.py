"""Calibration of a latency table to this machine now: a scale and a per-model offset from whole models timed today.

A table's cells are what a block cost while the table was built, on whatever load the builder's machine had
then (the reference block only removes load changes *during* the build).  A calibration times the reference
block and a few whole models - exported with ``torch.onnx`` as a user deploys them, where the backend runs
ONNX files - and fits ``measured = scale * predicted + offset`` over them: the scale holds the load of the
build day and the whole graph's excess over its parts, the offset what a whole model pays once whatever its
widths (a session call, the input and output copies), which a sum of blocks cannot see - or, negative, what the
parts timed one by one pay that a whole graph does not (each part's own session and copies).  Without that offset
the table's speedups of small models over large ones are off by it.  The models span the table's sizes: its
widest, its narrowest and a middle uniform model, then random per-block ones.  With fewer than three models, or
models too alike in size to separate the two, the offset is 0 and the scale is the median ratio.  The table keeps
every calibration made of it (``metadata.calibrations``, newest last); predictions use the newest and name it (the
offset is counted with the fixed parts).

This module is torch-free except :func:`calibrate`, which times models (and imports torch to export them).
"""

from __future__ import annotations

import functools
import math
import os
import platform
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from revit.errors import ConfigError, FileFormatError

if TYPE_CHECKING:
    from revit.config import ViTConfig
    from revit.latency.backends.base import Backend
    from revit.latency.table import LatencyTable

# the most calibrations a table keeps (the oldest go first); a scale outside this range is not a calibration
MAX_KEPT = 20
SCALE_RANGE = (0.02, 50.0)
MAX_OFFSET_S = 3600.0  # as a table cell
MIN_SHARE = 0.5  # a negative offset takes at most half of a model's scaled prediction (the fit's bound, and a floor)
# the widest a calibration's models may sit from its line before revit says the table's shape does not hold here:
# a table built on another CPU (other caches, other kernels) prices widths in other proportions, which no scale
# corrects (the Intel Xeon micro table on an AMD EPYC: models within 10.2%, held-out speedups 71% within 5%)
SHAPE_TOLERANCE = 0.05


@dataclass(frozen=True)
class TimedModel:
    """One whole model of a calibration: its shape, the table's uncalibrated prediction and today's time (s)."""

    embed_dim: int
    depth: int
    predicted_s: float
    measured_s: float

    @property
    def ratio(self) -> float:
        return self.measured_s / self.predicted_s


@dataclass(frozen=True)
class Calibration:
    """A table's scale on one machine at one time, with what it was measured on."""

    created: str  # ISO 8601, UTC
    load_average: float  # the 1-minute load average when the timing started
    scale: float  # slope of measured against predicted over the models (their median ratio without an offset)
    models: tuple[TimedModel, ...]
    source: str  # "exported" (torch.onnx files) or "graph" (the backend's own model graph)
    seconds: float  # how long the calibration took
    host: str = ""
    reference_ratio: float | None = None  # the reference block now / its median over the build
    offset_s: float = 0.0  # seconds per batch a whole model pays once, beyond ``scale`` x its prediction
    device: str = ""  # the device the models ran on, as the backend names it (a CPU's model name)

    def __post_init__(self) -> None:
        lo, hi = SCALE_RANGE
        if not (math.isfinite(self.scale) and lo <= self.scale <= hi):
            raise FileFormatError(f"calibration scale {self.scale!r} is outside [{lo:g}, {hi:g}]")
        if not (math.isfinite(self.load_average) and self.load_average >= 0):
            raise FileFormatError(f"calibration load average {self.load_average!r} must be a finite number >= 0")
        if self.source not in ("exported", "graph"):
            raise FileFormatError(f"calibration source must be 'exported' or 'graph', got {self.source!r}")
        if not (math.isfinite(self.offset_s) and -MAX_OFFSET_S <= self.offset_s <= MAX_OFFSET_S):
            raise FileFormatError(f"calibration offset {self.offset_s!r} s is outside [-{MAX_OFFSET_S:g}, "
                                  f"{MAX_OFFSET_S:g}]")

    def apply(self, predicted_s: float) -> float:
        """A whole model's seconds per batch on this machine from the table's prediction as built (a negative
        offset never takes it below half the scaled prediction: :data:`MIN_SHARE`)."""
        return max(self.scale * predicted_s + self.offset_s, MIN_SHARE * self.scale * predicted_s)

    @functools.cached_property
    def label(self) -> str:
        """One line naming this calibration (what a prediction that uses it says; built once: the pruner predicts
        on every removal)."""
        return (f"calibrated {self.created[:16].replace('T', ' ')} UTC on {self.device or self.host or 'this machine'} "
                f"(load {self.load_average:.2f}, x{self.scale:.3f} {'-' if self.offset_s < 0 else '+'} "
                f"{1e3 * abs(self.offset_s):.3f} ms per model, from "
                f"{len(self.models)} {self.source} models)")

    @property
    def spread(self) -> float:
        """Largest relative deviation of a timed model from the calibrated prediction: how well the fit holds."""
        return max((abs(m.measured_s / self.apply(m.predicted_s) - 1) for m in self.models), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"created": self.created, "load_average": self.load_average, "scale": self.scale,
                "source": self.source, "seconds": round(self.seconds, 1), "host": self.host,
                "reference_ratio": self.reference_ratio, "offset_s": self.offset_s, "device": self.device,
                "models": [{"embed_dim": m.embed_dim, "depth": m.depth, "predicted_s": m.predicted_s,
                            "measured_s": m.measured_s} for m in self.models]}

    @classmethod
    def from_dict(cls, d: Any, source: str) -> Calibration:
        """Validated: a malformed record is one FileFormatError naming the table."""
        from revit.input_checks import check_int, check_number

        def num(v: Any, name: str) -> float:
            return float(check_number(v, name, 0, 1e6, lo_open=True, error=FileFormatError))

        if not isinstance(d, Mapping):
            raise FileFormatError(f"{source}: a calibration must be a mapping")
        try:
            models = d.get("models") or []
            if not isinstance(models, list) or len(models) > 1000:
                raise ValueError("'models' must be a list of at most 1000 records")
            timed = tuple(TimedModel(check_int(m["embed_dim"], "embed_dim", 1, 1 << 20, error=FileFormatError),
                                     check_int(m["depth"], "depth", 0, 10_000, error=FileFormatError),
                                     num(m["predicted_s"], "predicted_s"), num(m["measured_s"], "measured_s"))
                          for m in models)
            ref = d.get("reference_ratio")
            return cls(created=str(d["created"])[:64],
                       load_average=float(check_number(d["load_average"], "load_average", 0, 1e6,
                                                       error=FileFormatError)),
                       scale=float(check_number(d["scale"], "scale", *SCALE_RANGE, error=FileFormatError)),
                       models=timed, source=str(d.get("source", "exported")),
                       seconds=float(check_number(d.get("seconds", 0.0), "seconds", 0, 1e9, error=FileFormatError)),
                       host=str(d.get("host", ""))[:256], device=str(d.get("device", ""))[:256],
                       reference_ratio=None if ref is None else num(ref, "reference_ratio"),
                       offset_s=float(check_number(d.get("offset_s", 0.0), "offset_s", -MAX_OFFSET_S, MAX_OFFSET_S,
                                                   error=FileFormatError)))
        except (KeyError, TypeError, ValueError) as e:
            raise FileFormatError(f"{source}: malformed calibration ({e})") from None
        except FileFormatError as e:
            raise FileFormatError(f"{source}: {e}") from None


def calibrations_of(metadata: Mapping[str, Any], source: str) -> tuple[Calibration, ...]:
    """The calibrations a table's metadata records, oldest first (none for tables written before them)."""
    raw = metadata.get("calibrations")
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_KEPT:
        raise FileFormatError(f"{source}: metadata 'calibrations' must be a list of at most {MAX_KEPT} records")
    return tuple(Calibration.from_dict(c, source) for c in raw)


MAX_MODEL_S = 0.25  # the widest calibration model's predicted seconds per batch at most (see calibration_configs)


def calibration_configs(table: LatencyTable, n: int, seed: int = 0) -> list[ViTConfig]:
    """The whole models a calibration times: the table's widest uniform model, its narrowest, a uniform one on the
    middle knots, and random per-block ones inside the table (``n`` in all), at the table's setting and depth: the
    sizes the table prices, so the offset is measured, not extrapolated, for small models.

    The widest is the widest uniform model predicted at most :data:`MAX_MODEL_S` per batch (every axis one knot
    down until it is): on the 198-token table the widest, DeiT-B-sized (0.36 s at batch 1), cost a third of a
    calibration (an export of 10 s and 13 s of timing) for a point that moved its own prediction by 1% when left
    out (docs/evidence/latency.md)."""
    from revit.config import BLOCK_KINDS, BlockDims, ViTConfig
    from revit.latency.accuracy import random_configs, setting_of

    setting, depth = setting_of(table)

    def uniform(pick: Any) -> ViTConfig:
        emb = int(pick(table.axes["embed_dim"]))
        return ViTConfig(embed_dim=emb, blocks=(BlockDims(*(int(pick(table.axes[k])) for k in BLOCK_KINDS)),) * depth,
                         **setting)

    longest = max(len(table.axes[k]) for k in ("embed_dim", *BLOCK_KINDS))
    down = [uniform(lambda pts, k=k: pts[max(len(pts) - 1 - k, 0)]) for k in range(longest)]  # widest first
    out = [next((c for c in down if table.predict(c).total_s <= MAX_MODEL_S), down[-1])]
    out += [uniform(lambda pts: pts[0]), uniform(lambda pts: pts[len(pts) // 2])]
    out += random_configs(table, max(0, n - 3), seed=random.Random(seed).randrange(1 << 30))
    return out[:n]


def fit_scale_offset(timed: Sequence[TimedModel]) -> tuple[float, float]:
    """``measured = scale * predicted + offset`` by least squares on *relative* residuals, when three or more models
    differ enough in size (largest prediction at least 1.3x the smallest) and the fit is physical (the scale in range;
    the offset below the fastest model's own time, and a negative one at most half the smallest model's scaled
    prediction); else the median ratio and no offset.

    Relative, because what a user reads is relative (a MAPE, a speedup, a budget met within a percentage): fitted on
    seconds, the widest model (100x the narrowest on a DeiT table) alone decides the line, and the offset, which only
    small models show, came out of its noise (on the 198-token table: -0.2 ms where the narrowest model says +0.7 ms,
    and pruned DeiT-T speedups 7-8% off; docs/evidence/latency.md)."""
    import numpy as np

    p = np.array([t.predicted_s for t in timed])
    m = np.array([t.measured_s for t in timed])
    if len(timed) >= 3 and p.max() >= 1.3 * p.min():
        a, b = (float(x) for x in np.polyfit(p, m, 1, w=1.0 / m))  # residuals / measured: relative
        lo, hi = SCALE_RANGE
        if lo <= a <= hi and -MIN_SHARE * a * float(p.min()) <= b <= min(MAX_OFFSET_S, 0.9 * float(m.min())):
            return a, b
    return float(np.median(m / p)), 0.0


def load_average() -> float:
    """The machine's one-minute load average (0 where the platform has none): recorded beside every timing."""
    try:
        return float(os.getloadavg()[0])
    except OSError:  # not on every platform
        return 0.0


def calibrate(table: LatencyTable, backend: Backend, *, models: int = 4, passes: int = 5, seed: int = 0,
              source: str | None = None, configs: Sequence[ViTConfig] | None = None,
              progress: bool = False) -> Calibration:
    """Time ``models`` whole models and the reference block on ``backend`` now; the calibration they give.

    ``source``: ``"exported"`` (``torch.onnx`` files, what a user deploys; the default where the backend runs ONNX
    files) or ``"graph"`` (the backend's own whole-model graph).  Predictions are the table's uncalibrated ones.
    """
    import numpy as np

    from revit.latency.accuracy import model_source_for, validate

    source = model_source_for(backend, source)
    if models < 1 or passes < 1:
        raise ConfigError("a calibration times at least one model in at least one pass")
    raw_table = table.uncalibrated()
    cfgs = list(configs) if configs is not None else calibration_configs(raw_table, models, seed)
    t0 = time.perf_counter()
    load = load_average()
    created = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    r = validate(raw_table, backend, len(cfgs), seed=seed, noise_k=0, passes=passes,
                 model_source=source, progress=progress, configs=cfgs)
    ref_ratio = None
    if r.normalised:
        # the reference block during this calibration against its build median (the build day's load in one
        # number), from the same timings that bracketed the models: raw seconds over reference-normalised ones
        ref_ratio = float(np.median(np.asarray(r.raw_measured) / np.asarray(r.measured)))
    # the fit is on raw seconds, as a deployed model (and a held-out speedup) sees them: the models interleave in
    # passes, so load changes spread over all of them. Dividing by the reference timed around each model would
    # cancel those changes, but it is biased by the model's size: the reference runs faster after a small model
    # than after a large one (on the micro table the narrowest model came out 7% dearer relative to the widest
    # than raw seconds say, and the fitted per-model offset 0.4 ms too large; docs/evidence/latency.md)
    now = r.raw_measured
    timed = tuple(TimedModel(c.embed_dim, c.depth, p, m) for c, p, m in zip(r.configs, r.predicted, now, strict=True))
    scale, offset = fit_scale_offset(timed)
    return Calibration(created=created, load_average=load, scale=scale, offset_s=offset, models=timed, source=source,
                       seconds=time.perf_counter() - t0, host=platform.node(), reference_ratio=ref_ratio,
                       device=str(backend.info().get("device") or ""))


def _setting(metadata: Mapping[str, Any]) -> tuple[Any, ...]:
    """What two tables must share to price the same models: backend, dtype, batch, tokens, threads, space."""
    threads = (metadata.get("backend_settings") or {}).get("intra_op_threads")
    return (metadata.get("backend"), metadata.get("dtype"), metadata.get("batch_size"), metadata.get("tokens"),
            threads, (metadata.get("space") or {}).get("name"))


@functools.lru_cache(maxsize=4)
def shipped_tables(folder: Path) -> dict[str, Mapping[str, Any]]:
    """Each table's metadata by name in ``folder`` (the shipped ``latency_tables``), read once per process and not to
    be changed by callers: the demo asks for its default table several times, and a table file holds up to a
    megabyte of cells.  Files that are not tables are left out."""
    import json

    out: dict[str, Mapping[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text()).get("metadata") or {}
        except (OSError, ValueError, AttributeError):
            continue  # not a table: nothing to suggest
    return out


def shipped_built_on(metadata: Mapping[str, Any], device: str) -> list[str]:
    """The shipped tables of ``metadata``'s setting that were built on ``device``'s model (by name, sorted)."""
    from revit.latency.backends.base import device_model
    from revit.paths import shipped_dir

    return [name for name, meta in shipped_tables(shipped_dir("latency_tables")).items()
            if _setting(meta) == _setting(metadata)
            and device_model(str(meta.get("device") or "")) == device_model(device)]


def shape_warning(metadata: Mapping[str, Any], cal: Calibration) -> str | None:
    """What to tell a user whose calibration's models sit further than :data:`SHAPE_TOLERANCE` from its line (None
    when they do not): the table's proportions do not hold on this machine, and a scale cannot fix that.  Where the
    table (``metadata``) was built on another device than ``cal`` ran on, the cause is named, and the cure: a shipped
    table of the same setting built on this device where there is one, else a table built here."""
    from revit.latency.backends.base import device_model

    if cal.spread <= SHAPE_TOLERANCE:
        return None
    head = (f"one scale fits this table's {len(cal.models)} models only within {cal.spread:.1%} here, so its "
            f"predictions between them can be off by as much")
    built_on = str(metadata.get("device") or "")
    if built_on and cal.device and device_model(built_on) != device_model(cal.device):
        ours = shipped_built_on(metadata, cal.device)
        cure = (f"use the shipped table built on this CPU ({', '.join(ours)})" if ours else
                "build a table on this machine (`revit latency build`)")
        return (f"{head}: the table was built on {built_on} and this is {cal.device}, whose caches and kernels "
                f"price widths in other proportions; {cure}")
    return f"{head}: calibrate again on an idle machine, or build a table on this one (`revit latency build`)"
