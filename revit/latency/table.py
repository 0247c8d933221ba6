"""Latency tables: one block's latency on a 5-D grid, multilinear lookup, whole-model prediction.

A table stores, for one device/backend/dtype/batch size/token count, the median latency in seconds
of *one transformer block* for one batch at every grid point of the axes ``embed_dim, heads,
qk_dim, v_dim, mlp_dim`` (``qk_dim``/``v_dim`` per head), the spread of each cell, and the latency
of the fixed parts (patch embedding, final norm, classifier heads) per ``embed_dim``.  Lookups use
scipy's ``RegularGridInterpolator`` (multilinear), as NViT's official code does.  Schema v2 adds the
two half blocks measured on their own sub-grids, which price a block without attention or without MLP
(:mod:`revit.latency.branches`); v1 tables still load and price every block that has both.

This module is torch-free on purpose: ``revit latency query`` and ``revit generate --latency-ms``
read tables without importing torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from revit._io import atomic_write_text, check_schema, dumps_json, load_json
from revit.config import BLOCK_KINDS, WIDTH_KINDS, BlockDims, Setting, ViTConfig
from revit.errors import (
    AbsentBranchError,
    ConfigError,
    FileFormatError,
    OutsideDomainError,
    TableRangeError,
    check_keys,
)
from revit.input_checks import MAX_BATCH, MAX_COUNT, MAX_LATENCY_S, check_int, check_number, short
from revit.latency.branches import (
    BRANCH_OF,
    EXTRAPOLATE_HINT,
    Grid,
    absent_branch_error,
    halves_from_dict,
    price_rows,
    without_branch,
)
from revit.paths import shipped_dir

SCHEMA_V1 = "revit/latency-table/v1"  # full blocks only
SCHEMA = "revit/latency-table/v2"  # with the half blocks (``branches``) that price an absent attention or MLP
KIND = "latency-table"
SAVING_KINDS: tuple[str, ...] = (*BLOCK_KINDS, "embed_dim")
REQUIRED_METADATA = ("device", "backend", "backend_version", "dtype", "batch_size", "tokens", "created",
                     "revit_version", "measurement")


def config_setting(cfg: ViTConfig) -> dict[str, Any]:
    """The part of a config that the fixed parts' latency depends on, besides ``embed_dim``."""
    return cfg.setting.fixed_parts()


def resolve_table(name_or_path: str | os.PathLike[str]) -> Path:
    """A table file: the path as given when it exists, else the shipped table of that name (``.json`` optional)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_dir("latency_tables")
    for cand in (shipped / path.name, shipped / f"{path.name}.json"):
        if cand.is_file():
            return cand
    known = ", ".join(sorted(q.name for q in shipped.glob("*.json"))) or "none"
    raise FileFormatError(f"{name_or_path}: no such file, and no shipped latency table of that name (shipped: "
                          f"{known})")


@dataclass(frozen=True)
class FixedParts:
    """Latency of everything outside the blocks (patch embedding + tokens, final norm, heads) per embed_dim."""

    setting: dict[str, Any]
    embed_dim: tuple[float, ...]
    values: tuple[float, ...]
    spread: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        from revit.latency.table_checks import check_axis, check_grid

        if len(self.embed_dim) != len(self.values) or not self.embed_dim:
            raise FileFormatError("fixed parts: 'embed_dim' and 'values' must be non-empty and of equal length")
        check_axis("embed_dim", self.embed_dim, "fixed parts")
        check_grid(list(self.values), (len(self.embed_dim),), "fixed parts: values")
        if self.spread is not None:
            check_grid(list(self.spread), (len(self.embed_dim),), "fixed parts: spread")

    def latency(self, embed_dim: float, extrapolate: bool = False) -> float:
        """Piecewise-linear lookup in embed_dim (linear extrapolation only when asked)."""
        xs, ys = self.embed_dim, self.values
        if not xs[0] <= embed_dim <= xs[-1]:
            if not extrapolate:
                raise TableRangeError(f"embed_dim={embed_dim:g} is outside the fixed parts' measured range "
                                      f"[{xs[0]:g}, {xs[-1]:g}]", hint=EXTRAPOLATE_HINT, axis="embed_dim")
            if len(xs) == 1:
                return float(ys[0])
            i = 0 if embed_dim < xs[0] else len(xs) - 2
            return float(ys[i] + (ys[i + 1] - ys[i]) * (embed_dim - xs[i]) / (xs[i + 1] - xs[i]))
        return float(np.interp(embed_dim, xs, ys))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"setting": dict(self.setting), "embed_dim": list(self.embed_dim),
                             "values": list(self.values)}
        if self.spread is not None:
            d["spread"] = list(self.spread)
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str) -> FixedParts:
        if not isinstance(d, Mapping) or not {"setting", "embed_dim", "values"} <= set(d):
            raise FileFormatError(f"{source}: 'fixed' must be null or a mapping with setting, embed_dim, values")
        from revit.latency.table_checks import check_axis, check_grid

        try:
            spread = d.get("spread")
            emb = check_axis("embed_dim", d["embed_dim"], f"{source}: fixed parts")
            values = check_grid(d["values"], (len(emb),), f"{source}: fixed parts: values")
            spr = None if spread is None else check_grid(spread, (len(emb),), f"{source}: fixed parts: spread")
            return cls(setting=dict(d["setting"]), embed_dim=emb, values=tuple(float(x) for x in values),
                       spread=None if spr is None else tuple(float(x) for x in spr))
        except (TypeError, ValueError) as e:
            raise FileFormatError(f"{source}: malformed 'fixed' section ({e})") from None
        except FileFormatError as e:
            raise FileFormatError(f"{source}: {e}") from None


@dataclass(frozen=True)
class Prediction:
    """Predicted whole-model latency for one batch of the table's batch size (seconds)."""

    per_block_s: tuple[float, ...]
    fixed_s: float | None
    batch_size: int
    note: str = ""
    calibration: str = ""  # the calibration the seconds are scaled by ("" for an uncalibrated table)
    blocks_s: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks_s", float(sum(self.per_block_s)))

    @property
    def fixed_known(self) -> bool:
        """False when the table has no measurement of the parts outside the blocks (NViT's has none)."""
        return self.fixed_s is not None

    @property
    def total_s(self) -> float:
        """Blocks plus fixed parts (blocks only when the fixed parts are unknown; see ``fixed_known``)."""
        return self.blocks_s + (self.fixed_s or 0.0)

    @property
    def per_image_s(self) -> float:
        return self.total_s / self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return {"total_s": self.total_s, "per_image_s": self.per_image_s, "batch_size": self.batch_size,
                "blocks_s": self.blocks_s, "fixed_s": self.fixed_s, "fixed_known": self.fixed_known,
                "per_block_s": list(self.per_block_s), "note": self.note, "calibration": self.calibration or None}


# counts of a table's metadata, bounded like the options that set them (``latency build --batch/--repeats``)
METADATA_COUNTS: dict[str, tuple[int, int]] = {"batch_size": (1, MAX_BATCH), "tokens": (1, MAX_COUNT)}
MEASUREMENT_COUNTS: dict[str, tuple[int, int]] = {"warmup": (0, 10_000), "repeats": (1, 10_000),
                                                  "passes": (1, 1_000)}


def check_metadata_counts(metadata: Mapping[str, Any], axes: Mapping[str, Sequence[float]], source: str) -> None:
    """Every count a table's metadata holds is an integer within its bound (``batch_size: 1e30`` ended in a
    numpy traceback; ``200000`` allocated 3.9 GB before one from onnxruntime); unknown counts may be null."""
    for k, (lo, hi) in METADATA_COUNTS.items():
        check_int(metadata[k], f"{source}: metadata {k}", lo, hi, error=FileFormatError)
    meas = metadata.get("measurement")
    if meas is not None and not isinstance(meas, Mapping):
        raise FileFormatError(f"{source}: metadata measurement must be a mapping, got {short(meas)}")
    for k, (lo, hi) in MEASUREMENT_COUNTS.items():
        if meas and meas.get(k) is not None:
            check_int(meas[k], f"{source}: metadata measurement.{k}", lo, hi, error=FileFormatError)
    if meas and meas.get("reference"):
        _check_reference(meas["reference"], axes, f"{source}: metadata measurement.reference")


def _check_reference(ref: Any, axes: Mapping[str, Sequence[float]], where: str) -> None:
    """The reference block a table was built with: a cell inside the table's axes, a run count, a median."""
    if not isinstance(ref, Mapping) or not isinstance(ref.get("cell"), Mapping):
        raise FileFormatError(f"{where} must be a mapping with a cell of {', '.join(WIDTH_KINDS)}")
    check_keys(ref["cell"], WIDTH_KINDS, f"{where}.cell", error=FileFormatError)
    for a in WIDTH_KINDS:
        check_int(ref["cell"].get(a), f"{where}.cell.{a}", 1, int(axes[a][-1]), error=FileFormatError)
    check_int(ref.get("runs", 3), f"{where}.runs", 1, MEASUREMENT_COUNTS["repeats"][1], error=FileFormatError)
    check_number(ref.get("median_s"), f"{where}.median_s", 0, MAX_LATENCY_S, lo_open=True, error=FileFormatError)


class LatencyTable:
    """One block's latency on a grid over (embed_dim, heads, qk_dim, v_dim, mlp_dim), plus fixed parts, and (v2)
    the attention and MLP halves on their own sub-grids (``branches``: ``{"attention": Grid, "mlp": Grid}``)."""

    def __init__(self, axes: Mapping[str, Sequence[float]], values: Any, *, metadata: Mapping[str, Any],
                 spread: Any = None, fixed: FixedParts | None = None, fixed_note: str = "",
                 source: str = "latency table", calibrated: bool = True,
                 branches: Mapping[str, Grid] | None = None) -> None:
        self.source = source
        if set(axes) != set(WIDTH_KINDS):
            raise FileFormatError(f"{source}: axes must be exactly {', '.join(WIDTH_KINDS)}; got {', '.join(axes)}")
        # finite, >= 0, strictly increasing knots; finite latencies of the axes' shape (validated whole on load)
        missing = [k for k in REQUIRED_METADATA if k not in metadata]
        if missing:
            raise FileFormatError(f"{source}: metadata lacks {', '.join(missing)}")
        from revit.latency.alignment import warps_of

        # widths off a backend's kernel steps cost more than linear between knots (metadata.alignment)
        self.warps = warps_of(metadata, source)
        self._grid = Grid(WIDTH_KINDS, axes, values, spread, source, warps=self.warps)
        self.axes: dict[str, tuple[float, ...]] = self._grid.axes
        self.values = self._grid.values
        self.spread = self._grid.spread
        self.branches: dict[str, Grid] | None = (None if branches is None else
                                                 {k: g.warped(self.warps) for k, g in branches.items()})
        self.metadata: dict[str, Any] = dict(metadata)
        check_metadata_counts(self.metadata, self.axes, source)
        from revit.latency.smoothing import check_record

        check_record(self.metadata, source)
        self.fixed = fixed
        self.fixed_note = fixed_note
        from revit.latency.calibration import calibrations_of

        self.calibrations = calibrations_of(self.metadata, source)
        # the calibration predictions are scaled by: the newest one, unless built ``calibrated=False``
        self.calibration = self.calibrations[-1] if calibrated and self.calibrations else None
        self.scale = self.calibration.scale if self.calibration is not None else 1.0
        self.offset_s = self.calibration.offset_s if self.calibration is not None else 0.0  # once per whole model

    # properties ------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.metadata["batch_size"])

    @property
    def tokens(self) -> int:
        return int(self.metadata["tokens"])

    @property
    def n_cells(self) -> int:
        """Cells of the full-block grid."""
        return int(self.values.size)

    @property
    def prices_absent_branches(self) -> bool:
        """Whether the table has the half blocks that price a block without attention or MLP (schema v2)."""
        return self.branches is not None

    @property
    def half_cells(self) -> int:
        """Cells of the half-block grids (0 for a v1 table)."""
        return sum(g.size for g in (self.branches or {}).values())

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {a: (pts[0], pts[-1]) for a, pts in self.axes.items()}

    # lookups ---------------------------------------------------------------------------------
    def lookup(self, points: Any, extrapolate: bool = False) -> np.ndarray:
        """Block latencies (s) at rows ``(embed_dim, heads, qk_dim, v_dim, mlp_dim)``; vectorised.  A row with
        ``heads`` 0 is priced by the MLP half, one with ``mlp_dim`` 0 by the attention half, one with both 0 (a
        removed block) at 0; a table without halves refuses the first two (:class:`AbsentBranchError`)."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        if pts.shape[1] != len(WIDTH_KINDS):
            raise ConfigError(f"a lookup point has {len(WIDTH_KINDS)} coordinates ({', '.join(WIDTH_KINDS)})")
        return price_rows(self._grid, self.branches, pts, extrapolate, self._refuse) * self.scale

    def _refuse(self, branch: str) -> AbsentBranchError:
        return absent_branch_error(branch, self.metadata, self.source)

    def block_latency(self, embed_dim: float, dims: BlockDims, extrapolate: bool = False) -> float:
        """Seconds for one block of these widths on one batch of ``batch_size`` images."""
        return float(self.lookup([(embed_dim, dims.heads, dims.qk_dim, dims.v_dim, dims.mlp_dim)], extrapolate)[0])

    def _check_config(self, cfg: ViTConfig) -> None:
        if cfg.tokens != self.tokens:
            raise ConfigError(f"the config has {cfg.tokens} tokens but the table was measured at {self.tokens} "
                              f"({self.source}); build a table for this image/patch size")

    def fixed_latency(self, cfg: ViTConfig, extrapolate: bool = False) -> tuple[float | None, str]:
        """Fixed-part seconds for ``cfg`` (None when unknown) and a note saying why when unknown."""
        if self.fixed is None:
            return None, self.fixed_note or "this table has no measurement of the fixed parts (unknown, not zero)"
        want = config_setting(cfg)
        have = {k: self.fixed.setting.get(k) for k in Setting.FIXED_PARTS_KEYS}
        if want != have:
            diff = ", ".join(f"{k} {want[k]} vs {have[k]}" for k in want if want[k] != have[k])
            return None, f"fixed parts unknown for this setting ({diff} measured); blocks only"
        # a negative offset (the parts' own overheads, counted once per model) may exceed the fixed parts alone
        return self.fixed.latency(cfg.embed_dim, extrapolate) * self.scale + self.offset_s, ""

    def off_grid(self, cfg: ViTConfig) -> list[str]:
        """The widths of ``cfg`` between the values of the table's space (``embed_dim 71``, ``qk_dim 13``): priced by
        interpolation, though a backend may run a width off its kernels' steps slower than either neighbour
        (docs/evidence/latency.md); empty for a table that does not record its space."""
        space = (self.metadata.get("space") or {}).get("axes") or {}
        out = []
        for kind in WIDTH_KINDS:
            grid = set(space.get(kind) or ())
            if not grid:
                continue
            widths = [cfg.embed_dim] if kind == "embed_dim" else [getattr(b, kind) for b in cfg.blocks]
            bad = sorted({w for w in widths if w and w not in grid})
            if bad:
                out.append(f"{kind} {', '.join(map(str, bad))}")
        return out

    def predict(self, cfg: ViTConfig, extrapolate: bool = False) -> Prediction:
        """Sum of per-block lookups plus the fixed parts, per batch of the table's batch size."""
        return self.predict_many([cfg], extrapolate)[0]

    def predict_many(self, cfgs: Sequence[ViTConfig], extrapolate: bool = False) -> list[Prediction]:
        """:meth:`predict` of each config, every block of them looked up at once (an alignment fit prices the same
        few dozen models under hundreds of warps)."""
        for cfg in cfgs:
            self._check_config(cfg)
        pts = [(c.embed_dim, b.heads, b.qk_dim, b.v_dim, b.mlp_dim) for c in cfgs for b in c.blocks]
        per = self.lookup(pts, extrapolate) if pts else np.zeros(0)
        out, i = [], 0
        for cfg in cfgs:
            per_block = tuple(float(x) for x in per[i:i + len(cfg.blocks)])
            i += len(cfg.blocks)
            out.append(self._prediction(cfg, per_block, extrapolate))
        return out

    def _prediction(self, cfg: ViTConfig, per_block: tuple[float, ...], extrapolate: bool) -> Prediction:
        fixed, note = self.fixed_latency(cfg, extrapolate)
        if fixed is not None and self.offset_s < 0:  # the calibration's floor (Calibration.apply) on the whole model
            from revit.latency.calibration import MIN_SHARE

            blocks = sum(per_block)
            fixed = max(fixed, MIN_SHARE * (blocks + fixed - self.offset_s) - blocks)
        pred = Prediction(per_block_s=per_block, fixed_s=fixed, batch_size=self.batch_size, note=note,
                          calibration=self.calibration.label if self.calibration is not None else "")
        if not math.isfinite(pred.total_s):  # cells are bounded; a far extrapolation is the one way left
            raise OutsideDomainError(f"the predicted latency of this model is not a finite number ({self.source})")
        return pred

    def marginal_savings(self, cfg: ViTConfig, block_index: int, units: Mapping[str, int] | None = None, *,
                         clip: bool = True, extrapolate: bool = False, only: Sequence[str] | None = None,
                         branches: bool | None = None) -> dict[str, float]:
        """Seconds saved by removing one unit of each kind: in block ``block_index`` for heads, qk_dim,
        v_dim, mlp_dim; summed over all blocks for embed_dim.  ``only`` limits the work (and the
        range checks) to those kinds; the result then holds only them.

        ``units`` gives each kind's unit size (the pruning granularity, default 1).  Removing the last unit of
        a branch's width (``heads``, ``qk_dim`` or ``v_dim`` for the attention, ``mlp_dim`` for the MLP) removes
        the branch: it saves the branch's whole cost with its fixed costs (LayerNorm, residual add, softmax), the
        block's latency less that of the block without it (all of it when the other branch is gone already).
        ``branches``: True prices such removals (a table without half blocks raises :class:`AbsentBranchError`),
        False says they are impossible (0), None (default) prices them when the table can.  Any other removal
        that would leave a width below 1 is impossible and saves 0 (a removal of several units leaving fewer than
        it removed is priced: the knapsack ranking offers such chunks).  Noisy tables can give negative savings;
        they are clipped at 0 unless ``clip=False``.
        """
        if not 0 <= block_index < cfg.depth:
            raise ConfigError(f"block index {block_index} out of range for a {cfg.depth}-block config")
        u = {k: 1 for k in SAVING_KINDS}
        if units:
            check_keys(units, SAVING_KINDS, "marginal_savings units", what="kind")
            u.update({k: int(v) for k, v in units.items()})
        price_branch = self.prices_absent_branches if branches is None else branches
        e = cfg.embed_dim
        b = cfg.blocks[block_index]
        base = np.array([e, b.heads, b.qk_dim, b.v_dim, b.mlp_dim], dtype=np.float64)
        out: dict[str, float] = {}
        rows: list[np.ndarray] = [base]
        kinds: list[str] = []
        want = set(SAVING_KINDS if only is None else only)
        for j, k in enumerate(BLOCK_KINDS, start=1):
            if k not in want:
                continue
            left = base[j] - u[k]
            if left == 0 and price_branch:  # the last unit: the branch goes
                rows.append(without_branch(base, BRANCH_OF[k]))
            elif left >= 1:
                r = base.copy()
                r[j] = left
                rows.append(r)
            else:
                out[k] = 0.0
                continue
            kinds.append(k)
        lat = self.lookup(np.stack(rows), extrapolate)
        for k, v in zip(kinds, lat[1:], strict=True):
            out[k] = float(lat[0] - v)
        if "embed_dim" in want and e - u["embed_dim"] < 1:
            out["embed_dim"] = 0.0
        elif "embed_dim" in want:
            pts = np.array([(e, d.heads, d.qk_dim, d.v_dim, d.mlp_dim) for d in cfg.blocks], dtype=np.float64)
            low = pts.copy()
            low[:, 0] -= u["embed_dim"]
            out["embed_dim"] = float(np.sum(self.lookup(pts, extrapolate) - self.lookup(low, extrapolate)))
        if clip:
            out = {k: max(v, 0.0) for k, v in out.items()}
        return {k: out[k] for k in SAVING_KINDS if k in want}

    # calibration ----------------------------------------------------------------------------
    @property
    def calibration_label(self) -> str:
        """What the predictions are: calibrated (when, where, by how much) or as built."""
        if self.calibration is not None:
            return self.calibration.label
        built = f" {self.metadata['created'][:10]}" if self.metadata.get("created") else ""
        return f"uncalibrated (as built{built}; `revit latency calibrate` scales it to this machine now)"

    def uncalibrated(self) -> LatencyTable:
        """This table with its calibrations kept but not applied: the seconds as measured at build time."""
        return LatencyTable.from_dict(self.to_dict(), self.source, calibrated=False)

    def with_calibration(self, cal: Any) -> LatencyTable:
        """A copy that records ``cal`` as its newest calibration (the oldest dropped beyond the kept number)."""
        from revit.latency.calibration import MAX_KEPT

        doc = self.to_dict()
        doc["metadata"] = dict(doc["metadata"])
        doc["metadata"]["calibrations"] = ([c.to_dict() for c in self.calibrations] + [cal.to_dict()])[-MAX_KEPT:]
        return LatencyTable.from_dict(doc, self.source)

    # I/O -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The file's content: schema v2 with the half blocks, v1 for a table without them (an old one, an import)."""
        grid = self._grid.to_dict()
        doc = {
            "schema": SCHEMA if self.branches is not None else SCHEMA_V1,
            "kind": KIND,
            "metadata": self.metadata,
            "axes": grid["axes"],
            "values": grid["values"],
            "spread": grid["spread"],
            "fixed": None if self.fixed is None else self.fixed.to_dict(),
            "fixed_note": self.fixed_note,
        }
        if self.branches is not None:
            doc["branches"] = {name: g.to_dict() for name, g in self.branches.items()}
        return doc

    @classmethod
    def from_dict(cls, doc: Any, source: str = "latency table", calibrated: bool = True) -> LatencyTable:
        """A table of schema v2 (with ``branches``, the half blocks) or v1 (without), validated whole."""
        d = check_schema(doc, KIND, source, versions=(1, 2))
        for k in ("metadata", "axes", "values"):
            if k not in d:
                raise FileFormatError(f"{source}: missing '{k}'")
        if not isinstance(d["metadata"], Mapping) or not isinstance(d["axes"], Mapping):
            raise FileFormatError(f"{source}: 'metadata' and 'axes' must be mappings")
        v2 = d["schema"] == SCHEMA
        if v2 != ("branches" in d):
            raise FileFormatError(f"{source}: schema {d['schema']} " + ("needs 'branches' (the half blocks)" if v2 else
                                                                       "has no 'branches' (they came with v2)"))
        fixed = d.get("fixed")
        return cls(d["axes"], d["values"], metadata=d["metadata"], spread=d.get("spread"),
                   fixed=None if fixed is None else FixedParts.from_dict(fixed, source),
                   fixed_note=str(d.get("fixed_note") or ""), source=source, calibrated=calibrated,
                   branches=halves_from_dict(d["branches"], source) if v2 else None)

    @classmethod
    def load(cls, path: str | os.PathLike[str], calibrated: bool = True) -> LatencyTable:
        """Read a table (a path, or a shipped table's name such as ``cpu_onnxruntime_fp32_bs64_t17``); a
        missing, truncated, corrupted or foreign file gives a one-line FileFormatError.  Predictions use the
        newest calibration the table records unless ``calibrated=False``."""
        found = resolve_table(path)
        return cls.from_dict(load_json(found), str(found), calibrated=calibrated)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file + rename)."""

        atomic_write_text(path, dumps_json(self.to_dict(), str(path), separators=(",", ":")) + "\n")
        self.source = str(path)

    def summary(self) -> str:
        m = self.metadata
        meas = m.get("measurement") or {}
        halves = f" + {self.half_cells} half-block cells" if self.branches is not None else " (v1, no half blocks)"
        return (f"{m['device']} | {m['backend']} {m['backend_version']} | {m['dtype']} | batch {self.batch_size} | "
                f"{self.tokens} tokens | {self.n_cells} cells{halves} | statistic {meas.get('statistic', '?')}")
