"""Half-block grids of a latency table (schema v2): what a block costs without its attention or without its MLP.

A block without attention (``heads: 0``) is its MLP half, ``x + fc2(GELU(fc1(LN2(x))))``; one without MLP
(``mlp_dim: 0``) is its attention half, ``x + proj(attention(LN1(x)))``; each keeps its LayerNorm and residual
add.  Neither is priced as the full block less a guess: a build times both halves as graphs of their own
(:func:`revit.latency.graphs.shared_block_graph`) on the full grid's knots of their axes - the attention half over
embed_dim x heads x qk_dim x v_dim, the MLP half over embed_dim x mlp_dim - in the same randomised passes as the
full blocks, against the same reference block and less the same per-call overhead.  A block with an absent branch
costs that half's interpolated value; a removed block costs nothing (the config drops it), and the fixed parts are
the model's whatever its depth.

A table of schema v1, or an NViT import, has no half grids: asked to price an absent branch it raises one
:class:`~revit.errors.AbsentBranchError` naming the command that rebuilds it.  Torch-free, like the table.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from revit.config import ATTENTION_KINDS, BLOCK_KINDS, WIDTH_KINDS
from revit.errors import AbsentBranchError, FileFormatError, TableRangeError, check_keys

_EMBED, *_ = WIDTH_KINDS
_MLP_KINDS = tuple(k for k in BLOCK_KINDS if k not in ATTENTION_KINDS)
BRANCH_AXES: dict[str, tuple[str, ...]] = {"attention": (_EMBED, *ATTENTION_KINDS), "mlp": (_EMBED, *_MLP_KINDS)}
# the branch a block width belongs to: removing the last unit of any of them removes that branch
BRANCH_OF: dict[str, str] = {k: branch for branch, axes in BRANCH_AXES.items() for k in axes[1:]}
ABSENT = {"attention": "heads 0 (no attention)", "mlp": "mlp_dim 0 (no MLP)"}
EXTRAPOLATE_HINT = "pass extrapolate=True (--extrapolate) to extrapolate linearly"


class WidthWarp(Protocol):
    """How a width is priced off its kernels' steps (:class:`revit.latency.alignment.AxisWarp`): the width it is
    interpolated at, and the factor on its price."""

    def __call__(self, x: Any) -> np.ndarray: ...

    def factor(self, x: Any) -> np.ndarray: ...


class Grid:
    """Values on named axes with multilinear lookup, validated whole on construction (:mod:`.table_checks`)."""

    def __init__(self, names: Sequence[str], axes: Mapping[str, Any], values: Any, spread: Any, source: str,
                 what: str = "", warps: Mapping[str, WidthWarp] | None = None) -> None:
        from revit.latency.table_checks import check_axis, check_grid

        self.names, self.source = tuple(names), source
        self.axes: dict[str, tuple[float, ...]] = {a: check_axis(a, axes[a], source) for a in self.names}
        shape = tuple(len(self.axes[a]) for a in self.names)
        self.values = check_grid(values, shape, f"{source}: {what}values")
        self.spread = None if spread is None else check_grid(spread, shape, f"{source}: {what}spread")
        # per-axis width warps (:mod:`revit.latency.alignment`): knots and queries priced in warped widths
        self.warps = {a: w for a, w in (warps or {}).items() if a in self.names}
        self._interp: Any = None

    def warped(self, warps: Mapping[str, WidthWarp]) -> Grid:
        """This grid (same values, validated once already) interpolating in the widths ``warps`` maps to (replacing
        any warps it had)."""
        out = copy.copy(self)
        out.warps = {a: w for a, w in warps.items() if a in self.names}
        out._interp = None  # built on the new warped knots at the first lookup
        return out

    def check_range(self, points: np.ndarray) -> None:
        """Refuse (one :class:`TableRangeError` naming the axis) a point outside the measured range."""
        for j, a in enumerate(self.names):
            lo, hi = self.axes[a][0], self.axes[a][-1]
            col = points[:, j]
            bad = col[(col < lo) | (col > hi)]
            if bad.size:
                raise TableRangeError(f"{a}={bad[0]:g} is outside the table's measured range [{lo:g}, {hi:g}] "
                                      f"({self.source})", hint=EXTRAPOLATE_HINT, axis=a)

    def __call__(self, points: np.ndarray, extrapolate: bool = False) -> np.ndarray:
        """Values at ``points`` (one row per point, one column per axis); linear extrapolation only when asked."""
        if not extrapolate:
            self.check_range(points)
        if self._interp is None:
            from scipy.interpolate import RegularGridInterpolator

            # a knot off a step carries its remainder: interpolated without it, put back on queries off a step
            self._interp = RegularGridInterpolator(
                tuple(self._warp(a, np.asarray(self.axes[a])) for a in self.names),
                self.values / self._factor([np.asarray(self.axes[a]) for a in self.names], grid=True),
                method="linear", bounds_error=False, fill_value=None)
        if not self.warps:
            return np.asarray(self._interp(points), dtype=np.float64)
        factor = self._factor([points[:, j] for j in range(len(self.names))])
        points = np.column_stack([self._warp(a, points[:, j]) for j, a in enumerate(self.names)])
        return np.asarray(self._interp(points), dtype=np.float64) * factor

    def _factor(self, cols: Sequence[np.ndarray], grid: bool = False) -> Any:
        """The warps' price factors of widths ``cols`` (one per axis): per row, or (``grid``) over the outer grid."""
        out: Any = 1.0
        for j, a in enumerate(self.names):
            w = self.warps.get(a)
            if w is not None:
                f = w.factor(cols[j])
                out = out * (f.reshape([-1 if k == j else 1 for k in range(len(self.names))]) if grid else f)
        return out

    def _warp(self, axis: str, x: np.ndarray) -> np.ndarray:
        w = self.warps.get(axis)
        return np.asarray(x, dtype=np.float64) if w is None else w(x)

    @property
    def size(self) -> int:
        return int(self.values.size)

    def to_dict(self) -> dict[str, Any]:
        return {"axes": {a: [int(x) if float(x).is_integer() else x for x in self.axes[a]] for a in self.names},
                "values": self.values.tolist(), "spread": None if self.spread is None else self.spread.tolist()}


Halves = Mapping[str, Grid]


def halves_from_dict(d: Any, source: str) -> dict[str, Grid]:
    """The ``branches`` section of a v2 table: ``{attention: {axes, values, spread}, mlp: {...}}``, validated."""
    if not isinstance(d, Mapping) or set(d) != set(BRANCH_AXES):
        raise FileFormatError(f"{source}: 'branches' must map {' and '.join(BRANCH_AXES)} to half-block grids")
    out: dict[str, Grid] = {}
    for name, names in BRANCH_AXES.items():
        part = d[name]
        where = f"{source}: branches.{name}"
        if not isinstance(part, Mapping) or not {"axes", "values"} <= set(part):
            raise FileFormatError(f"{where} must be a mapping with axes, values (and spread)")
        check_keys(part, ("axes", "values", "spread"), where, error=FileFormatError)
        if not isinstance(part["axes"], Mapping) or set(part["axes"]) != set(names):
            raise FileFormatError(f"{where}: axes must be exactly {', '.join(names)}")
        out[name] = Grid(names, part["axes"], part["values"], part.get("spread"), where)
    return out


def rebuild_command(metadata: Mapping[str, Any]) -> str:
    """The ``revit latency build`` command that measures a v2 table like the one with ``metadata``."""
    from revit.latency.grid import PRESETS

    space = metadata.get("space")
    name = space.get("name") if isinstance(space, Mapping) else None
    src = f"--preset {name}" if name in PRESETS else "--space SPACE.yaml"
    backend = metadata.get("backend")
    backend = backend if isinstance(backend, str) and backend != "nvit-official" else "onnxruntime"
    return f"revit latency build --backend {backend} {src} --batch {metadata.get('batch_size')} --out NEW.json"


def absent_branch_error(branch: str, metadata: Mapping[str, Any], source: str) -> AbsentBranchError:
    """The one-line refusal of a table without half grids asked to price a block with ``branch`` absent."""
    axis = "heads" if branch == "attention" else "mlp_dim"
    if metadata.get("backend") == "nvit-official":
        why = "an imported NViT table has no measurement of a block without attention or MLP"
    else:
        why = "this table was built before revit priced blocks without attention or MLP (schema v1)"
    return AbsentBranchError(f"{source}: {why}; it cannot price a block with {ABSENT[branch]}",
                             hint=f"rebuild it with `{rebuild_command(metadata)}`", axis=axis, branch=branch)


def price_rows(full: Grid, halves: Halves | None, pts: np.ndarray, extrapolate: bool,
               refuse: Callable[[str], AbsentBranchError]) -> np.ndarray:
    """Block latencies at rows ``(embed_dim, heads, qk_dim, v_dim, mlp_dim)``: a row with both branches from the
    full grid, with ``heads`` 0 from the MLP half, with ``mlp_dim`` 0 from the attention half, with neither 0.
    ``refuse(absent branch)`` is raised when a half is needed and the table has none."""
    attn, mlp = pts[:, 1] > 0, pts[:, 4] > 0
    both = attn & mlp
    if both.all():  # the common case (every width prune, every v1 query): one lookup
        return full(pts, extrapolate)
    out = np.zeros(len(pts))
    if both.any():
        out[both] = full(pts[both], extrapolate)
    for half, absent, mask in (("attention", "mlp", attn & ~mlp), ("mlp", "attention", mlp & ~attn)):
        if mask.any():
            if halves is None:
                raise refuse(absent)
            cols = [WIDTH_KINDS.index(a) for a in BRANCH_AXES[half]]
            out[mask] = halves[half](pts[mask][:, cols], extrapolate)
    return out


def without_branch(row: np.ndarray, branch: str) -> np.ndarray:
    """A row of widths with ``branch`` removed (its widths 0)."""
    r = row.copy()
    cols = [WIDTH_KINDS.index(k) for k, b in BRANCH_OF.items() if b == branch]
    r[cols] = 0
    return r
