"""The additive design of a latency build: a whole block as its attention half + its MLP half + a join.

On one stream (a CPU thread, a GPU queue) a block runs its two halves one after the other, so its cost is their sum
and a per-width join (the second LayerNorm's input, the cache hand-over), which a few whole blocks measure:
``JOIN_CELLS`` per ``embed_dim`` knot, the narrowest, middle and widest.  Cells then grow as
``|E|(|H||QK||V| + |MLP|)`` instead of their product, so knots can be dense where widths bend (every head count,
every MLP width of a small space).  The table's full-block grid is derived on knots compressed to the design's
tolerance; the halves keep every knot measured.  The whole blocks measured on the knots that did not fit the join
(the pilot's) give the additive model's own error (``design.additive_check``).  Torch-free; the build that measures
the cells is :mod:`revit.latency.profiler`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from revit.config import WIDTH_KINDS
from revit.latency.branches import BRANCH_AXES, Grid
from revit.latency.grid import greedy_knots

JOIN_CELLS = 3  # whole blocks per embed_dim knot that measure the join of the halves


def additive_cells(knots: Mapping[str, Sequence[int]]) -> int:
    """Cells the additive design measures on ``knots``: the two halves' sub-grids and the join cells."""
    return int(sum(np.prod([len(knots[a]) for a in names]) for names in BRANCH_AXES.values())
               + JOIN_CELLS * len(knots[WIDTH_KINDS[0]]))


def join_keys(knots: Mapping[str, Sequence[int]]) -> list[tuple[Any, ...]]:
    """The whole blocks of the additive design: at every embed_dim knot, the narrowest, middle and widest block."""
    out = []
    for e in knots[WIDTH_KINDS[0]]:
        for pick in (0, None, -1):
            c = [knots[a][len(knots[a]) // 2 if pick is None else pick] for a in WIDTH_KINDS[1:]]
            out.append(("block", e, *c))
    return list(dict.fromkeys(out))


def additive_grid(whole: Mapping[tuple[int, ...], float], knots: Mapping[str, Sequence[int]],
                  halves: Mapping[str, Grid], tol: float
                  ) -> tuple[dict[str, tuple[int, ...]], np.ndarray, np.ndarray, dict[str, Any]]:
    """The additive design's full-block grid: attention half + MLP half + join(embed_dim), on knots compressed to
    ``tol`` (every measured knot of an axis along which the halves bend stays), its spreads, and the model's
    error on the whole blocks measured on the knots (the join cells fit it; the pilot's cells check it).  ``whole``:
    every whole block measured, by its widths, in seconds less the call overhead (as the halves are)."""
    attn, mlp = halves["attention"].values, halves["mlp"].values  # [E, H, QK, V] and [E, MLP]
    emb = list(knots["embed_dim"])
    joins = {k[1:] for k in join_keys(knots)}
    on_knots = {c: w for c, w in whole.items() if all(x in knots[a] for a, x in zip(WIDTH_KINDS, c, strict=True))}

    def parts(c: tuple[int, ...]) -> float:
        i = [list(knots[a]).index(x) for a, x in zip(WIDTH_KINDS, c, strict=True)]
        return float(attn[i[0], i[1], i[2], i[3]] + mlp[i[0], i[4]])

    join = np.array([float(np.median([on_knots[c] - parts(c) for c in joins if c[0] == e])) for e in emb])
    # compress: per axis, the fewest measured knots that interpolate the halves' curves within tol
    attn_axes, mlp_axes = BRANCH_AXES["attention"], BRANCH_AXES["mlp"]  # (embed, heads, qk, v), (embed, mlp)
    curves: dict[str, list[np.ndarray]] = {attn_axes[0]: [], mlp_axes[1]: list(mlp)}  # embed: every knot (the join)
    for j, a in enumerate(attn_axes[1:], start=1):
        moved = np.moveaxis(attn, j, -1)
        curves[a] = list(moved.reshape(-1, moved.shape[-1]))
    grid_knots = {a: tuple(knots[a]) if not curves[a] else tuple(greedy_knots(list(knots[a]), curves[a], tol))
                  for a in WIDTH_KINDS}
    idx = {a: [list(knots[a]).index(x) for x in grid_knots[a]] for a in WIDTH_KINDS}
    a_ix, m_ix = np.ix_(*(idx[a] for a in attn_axes)), np.ix_(*(idx[a] for a in mlp_axes))
    a_sub, m_sub, j_sub = attn[a_ix], mlp[m_ix], join[idx[attn_axes[0]]]
    values = np.maximum(a_sub[..., None] + m_sub[:, None, None, None, :] + j_sub[:, None, None, None, None], 0.0)
    sa, sm = halves["attention"].spread, halves["mlp"].spread
    assert sa is not None and sm is not None  # a build measures both
    spread = np.sqrt(sa[a_ix][..., None] ** 2 + sm[m_ix][:, None, None, None, :] ** 2)
    ei = {e: i for i, e in enumerate(emb)}
    err = {c: (parts(c) + join[ei[c[0]]]) / w - 1 for c, w in on_knots.items() if w > 0}
    held = [abs(v) for k, v in err.items() if k not in joins]
    check = {"cells": len(err), "held_out_cells": len(held),
             "median_abs": round(float(np.median(np.abs(list(err.values())))), 5) if err else None,
             "max_abs": round(float(np.max(np.abs(list(err.values())))), 5) if err else None,
             "held_out_max_abs": round(float(max(held)), 5) if held else None,
             "join_s": [float(x) for x in join]}
    return grid_knots, values, spread, check
