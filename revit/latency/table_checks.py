"""Latency tables are validated whole on load: every axis and every cell, before any lookup.

A table (revit's own, a built one, or an NViT import) is refused in one line naming the file and the
first bad entry when:

- an axis is not a non-empty list of real numbers (a string, a bool or ``null`` knot), has a NaN,
  an infinite or a negative knot, or is not strictly increasing (an ``Infinity`` knot silently
  changed a prediction from 45.9 ms to 31.9 ms; a NaN knot passed and then broke scipy);
- a grid (values, spread, fixed parts) is not a regular array of numbers of the axes' shape (a
  string cell, a ragged row), or holds a NaN, an infinite or a negative latency, or one above
  :data:`~revit.input_checks.MAX_LATENCY_S` (``1.7e308`` passed and summed to an infinite prediction).

Zero is a legitimate knot and a legitimate latency: NViT's official grid has an ``EMB=0`` plane of
zeros.  Torch-free and separate from the prediction code on purpose (:mod:`revit.latency.table`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from revit.errors import FileFormatError


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def check_axis(name: str, raw: Any, source: str) -> tuple[float, ...]:
    """The knots of axis ``name``: finite, >= 0, strictly increasing real numbers (else one line)."""
    from revit.input_checks import short

    if isinstance(raw, np.ndarray):
        raw = raw.tolist()
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or len(raw) == 0:
        raise FileFormatError(f"{source}: axis {name} must be a non-empty list of numbers, got {short(raw)}")
    pts: list[float] = []
    for i, x in enumerate(raw):
        if not _is_number(x):
            raise FileFormatError(f"{source}: axis {name} knot {i} must be a number, got {short(x)}")
        try:
            v = float(x)
        except OverflowError:
            v = math.inf
        if not math.isfinite(v) or v < 0:
            raise FileFormatError(f"{source}: axis {name} knot {i} must be a finite number >= 0, got {short(x)}")
        if pts and v <= pts[-1]:
            raise FileFormatError(f"{source}: axis {name} must be strictly increasing (knot {i}: {v:g} after "
                                  f"{pts[-1]:g})")
        pts.append(v)
    return tuple(pts)


def check_grid(data: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``data`` as a float64 array of ``shape`` (a flat list of that size is reshaped) whose every cell is a
    finite latency in ``[0, MAX_LATENCY_S]`` (so any sum of cells is finite); ``what`` names it in the
    one-line refusal (``FILE: values``)."""
    from revit.input_checks import MAX_LATENCY_S

    try:
        a = np.asarray(data)
    except (TypeError, ValueError, OverflowError):
        raise FileFormatError(f"{what} is not a regular numeric array (ragged, truncated or edited?)") from None
    if a.dtype.kind not in "iuf" or a.dtype.kind == "b":
        raise FileFormatError(f"{what} is not a regular array of numbers (a string, null or ragged row; "
                              f"it reads as {a.dtype.kind!r} data)")
    try:
        a = a.astype(np.float64)
    except OverflowError:  # pragma: no cover - integers beyond float64 already read as object dtype
        raise FileFormatError(f"{what} holds a number too large for a latency") from None
    if a.ndim == 1 and a.size == int(np.prod(shape)):
        a = a.reshape(shape)
    if a.shape != shape:
        raise FileFormatError(f"{what} has shape {a.shape}, axes need {shape}")
    bad = ~np.isfinite(a) | (a < 0)
    if np.any(bad):
        idx, where = _first(a, bad)
        raise FileFormatError(f"{what} has a negative or non-finite entry {float(a[idx]):g}{where}; "
                              "latencies are finite and >= 0")
    too_long = a > MAX_LATENCY_S
    if np.any(too_long):
        idx, where = _first(a, too_long)
        raise FileFormatError(f"{what} has an entry of {float(a[idx]):g} s{where}, more than the "
                              f"{MAX_LATENCY_S:g} s a latency may be")
    return a


def _first(a: np.ndarray, mask: np.ndarray) -> tuple[tuple[int, ...], str]:
    """The index of the first cell of ``a`` where ``mask`` holds, and ``" at [i, j]"`` naming it."""
    idx = tuple(int(i) for i in np.argwhere(mask)[0])
    return idx, f" at {list(idx)}" if a.ndim > 1 else (f" at index {idx[0]}" if idx else "")


__all__ = ["check_axis", "check_grid"]
