"""The width grid a latency table covers: candidate values per axis (the pruning granularity) and the
model setting (image size, patch, classes) that fixes the token count and the fixed parts.

On disk and on the command line it is a *latency space* (``revit latency build --space FILE``, the table's
``metadata.space``); in the code it is a :class:`WidthGrid`, so that "space" names one thing: the space a
search study searches (:mod:`revit.search.space`).

YAML form (``schema: revit/latency-space/v1``)::

    name: micro
    depth: 8                      # depth of the models validation draws
    setting: {img_size: 28, patch_size: 7, in_chans: 1, num_classes: 10, distilled: false, class_token: true}
    axes:
      embed_dim: {min: 32, max: 96, step: 8}
      heads: [1, 2, 3, 4]         # or an explicit list
      ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from revit._io import check_schema, load_yaml
from revit.config import WIDTH_KINDS, Setting
from revit.errors import ConfigError, check_keys
from revit.input_checks import short


@dataclass(frozen=True)
class WidthGrid:
    """Candidate widths per axis and the setting (with the depth validation draws) of the models a table serves."""

    name: str
    axes: dict[str, tuple[int, ...]]
    setting: Setting

    def __post_init__(self) -> None:
        if set(self.axes) != set(WIDTH_KINDS):
            raise ConfigError(f"space {self.name}: axes must be exactly {', '.join(WIDTH_KINDS)}")
        for a, vals in self.axes.items():
            if not vals or any(v < 1 for v in vals) or list(vals) != sorted(set(vals)):
                raise ConfigError(f"space {self.name}: axis {a} needs increasing positive integers")
        check_grid_memory(self)

    @property
    def depth(self) -> int:
        return self.setting.depth

    @property
    def tokens(self) -> int:
        return self.setting.tokens

    @property
    def full_grid_cells(self) -> int:
        n = 1
        for v in self.axes.values():
            n *= len(v)
        return n

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "revit/latency-space/v1", "name": self.name, "depth": self.depth,
                "setting": self.setting.to_dict(depth=False), "axes": {a: list(self.axes[a]) for a in WIDTH_KINDS}}

    @classmethod
    def from_dict(cls, d: Any, source: str = "space") -> WidthGrid:
        d = check_schema(d, "latency-space", source, keys=("schema", "name", "depth", "setting", "axes"))
        axes: dict[str, tuple[int, ...]] = {}
        raw = d.get("axes")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: 'axes' must map {', '.join(WIDTH_KINDS)} to {{min, max, step}} or a list")
        for a in WIDTH_KINDS:
            spec = raw.get(a)
            if isinstance(spec, Mapping):
                axes[a] = _axis_range(spec, f"{source}: axis {a}")
            elif isinstance(spec, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
                if len(spec) > MAX_AXIS_VALUES:
                    raise ConfigError(f"{source}: axis {a} has {len(spec)} values; at most {MAX_AXIS_VALUES}")
                axes[a] = tuple(spec)
            else:
                raise ConfigError(f"{source}: axis {a} missing or malformed")
        raw_setting = d.get("setting") or {}
        if not isinstance(raw_setting, Mapping):
            raise ConfigError(f"{source}: 'setting' must be a mapping of setting fields, got {short(raw_setting)}")
        setting = Setting.from_dict({**raw_setting, "depth": d.get("depth", 12)}, f"{source}: setting")
        return cls(name=str(d.get("name", source)), axes=axes, setting=setting)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WidthGrid:
        return cls.from_dict(load_yaml(path), str(path))


MAX_AXIS_VALUES = 4096  # far beyond any measurable table; refuses a 1e9-wide axis before building it


def _axis_range(spec: Mapping[str, Any], where: str) -> tuple[int, ...]:
    """An axis ``{min, max, step}``: integers, min <= max, step >= 1, at most MAX_AXIS_VALUES values."""
    from revit.input_checks import check_int

    if "min" not in spec or "max" not in spec:
        raise ConfigError(f"{where} needs integer min, max (and step)")
    check_keys(spec, ("min", "max", "step"), where)
    lo = check_int(spec["min"], f"{where} min", 1)
    hi = check_int(spec["max"], f"{where} max", lo)
    step = check_int(spec.get("step", 1), f"{where} step", 1)
    n = (hi - lo) // step + 1
    if n > MAX_AXIS_VALUES:
        raise ConfigError(f"{where} has {n} values ({lo}..{hi} step {step}); at most {MAX_AXIS_VALUES}")
    return tuple(range(lo, hi + 1, step))


def _median3(y: np.ndarray) -> np.ndarray:
    """Running median of 3: drops isolated outliers (a burst of load) but keeps steps wider than one point."""
    if y.size < 3:
        return y
    z = y.copy()
    z[1:-1] = np.median(np.stack([y[:-2], y[1:-1], y[2:]]), axis=0)
    return z


def greedy_knots(xs: list[int], curves: list[np.ndarray], tol: float) -> list[int]:
    """Fewest knots (end points first) so that linear interpolation of every curve errs <= tol (relative)."""
    curves = [_median3(np.asarray(y, dtype=np.float64)) for y in curves]
    knots = {0, len(xs) - 1}
    x = np.asarray(xs, dtype=np.float64)
    while True:
        worst, where = 0.0, -1
        k = sorted(knots)
        for y in curves:
            err = np.abs(np.interp(x, x[k], y[k]) - y) / np.maximum(y, 1e-12)
            i = int(np.argmax(err))
            if err[i] > worst:
                worst, where = float(err[i]), i
        if worst <= tol or where < 0 or where in knots:
            return [xs[i] for i in sorted(knots)]
        knots.add(where)


def block_bytes(grid: WidthGrid, batch: int = 1) -> int:
    """Bytes of the widest block of ``space`` in fp32: its weights, plus its activations at ``batch``.

    Activations count the widest per-token tensor (QKV, MLP hidden) and the attention matrix.
    """
    ax = {a: max(v) for a, v in grid.axes.items()}
    e, h, q, v, m = ax["embed_dim"], ax["heads"], ax["qk_dim"], ax["v_dim"], ax["mlp_dim"]
    weights = e * h * (2 * q + v) + h * v * e + 2 * e * m + 8 * e
    t = grid.tokens
    acts = batch * t * max(h * (2 * q + v), m, e) + batch * h * t * t
    return 4 * (weights + 3 * acts)


def check_grid_memory(grid: WidthGrid, batch: int = 1) -> None:
    """Refuse a space whose widest block (at ``batch``) cannot be allocated here, before any allocation."""
    from revit.input_checks import check_fits_memory

    check_fits_memory(block_bytes(grid, batch), f"space {grid.name}: the widest block at batch {batch}")


def _rng(lo: int, hi: int, step: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, step))


def micro() -> WidthGrid:
    """DESIGN.md's micro family: 28x28x1, patch 7 (17 tokens), 8 blocks, granularity EMB 8/QK 4/V 4/MLP 8."""
    return WidthGrid("micro", {"embed_dim": _rng(32, 96, 8), "heads": _rng(1, 4, 1), "qk_dim": _rng(4, 24, 4),
                               "v_dim": _rng(4, 24, 4), "mlp_dim": _rng(8, 384, 8)}, Setting.PRESETS["micro"])


def deit() -> WidthGrid:
    """DeiT-B-sized space at 224/16 distilled (198 tokens), NViT's granularity (EMB 16... coarser here)."""
    return WidthGrid("deit", {"embed_dim": _rng(192, 768, 64), "heads": _rng(1, 12, 1), "qk_dim": _rng(8, 64, 8),
                              "v_dim": _rng(8, 64, 8), "mlp_dim": _rng(128, 3072, 128)}, Setting(distilled=True))


PRESETS = {"micro": micro, "deit": deit}


def get_grid(name_or_path: str) -> WidthGrid:
    """A preset grid name (micro, deit) or a latency-space YAML file."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]()
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        return WidthGrid.load(name_or_path)
    raise ConfigError(f"unknown space {name_or_path!r}; presets: {', '.join(PRESETS)} (or a SPACE.yaml)")
