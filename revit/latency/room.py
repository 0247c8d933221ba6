"""The room for latency-awareness on one device: at equal MACs, how far apart attention- and MLP-heavy models are.

A pruner that knows latency can only beat one that counts MACs where two configs of the same MACs differ in
latency.  The largest such difference inside a table's range is the *room*: if attention-heavy and MLP-heavy
configs of equal MACs cost the same, no pruner can be faster than MACs-only at equal MACs, however good its
table.  revit draws groups of two uniform configs of one embed width at the same MACs (within 1%,
:func:`revit.counting.macs`): one leaning to attention (heads, QK and V from the upper half of the table's
widths, MLP from the lower half) and one to the MLP (attention from the lower half, the MLP width that matches
the MACs).  The room is the spread ``(slow - fast) / fast`` over the groups - median and maximum - predicted by
the table and, when asked, measured on whole models.  Latency-aware pruning is judged against it: at equal MACs,
its measured gain over MACs-only pruning should be at least half the room (docs/evidence/latency.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from revit import counting
from revit.config import BLOCK_KINDS, BlockDims, ViTConfig
from revit.errors import ConfigError
from revit.latency.table import LatencyTable

if TYPE_CHECKING:
    from revit.latency.backends.base import Backend

MACS_TOL = 0.01  # two configs of a group are at equal MACs within this
TRIES = 200  # draws per group before the table's range is judged too narrow for equal-MACs pairs


@dataclass(frozen=True)
class Group:
    """Two configs at equal MACs: ``attention`` leans to attention, ``mlp`` to the MLP; their latencies (s)."""

    attention: ViTConfig
    mlp: ViTConfig
    predicted: tuple[float, float]
    measured: tuple[float, float] | None = None

    @staticmethod
    def spread(pair: tuple[float, float]) -> float:
        """``(slow - fast) / fast``."""
        return max(pair) / min(pair) - 1

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"macs": [counting.macs(self.attention), counting.macs(self.mlp)],
                             "attention_heavy": self.attention.to_dict(), "mlp_heavy": self.mlp.to_dict(),
                             "predicted_s": list(self.predicted), "predicted_spread": self.spread(self.predicted)}
        if self.measured is not None:
            d.update(measured_s=list(self.measured), measured_spread=self.spread(self.measured))
        return d


def _summary(spreads: list[float], attention_slower: int) -> dict[str, Any]:
    return {"median": float(np.median(spreads)), "max": float(np.max(spreads)),
            "attention_heavy_slower": attention_slower, "groups": len(spreads)}


@dataclass(frozen=True)
class Room:
    """The room of one table: its groups and the spread's median and maximum, predicted (and measured)."""

    table: str
    groups: tuple[Group, ...]

    def summary(self, which: str = "predicted") -> dict[str, Any] | None:
        pairs = [getattr(g, which) for g in self.groups]
        if any(p is None for p in pairs):
            return None
        return _summary([Group.spread(p) for p in pairs], sum(p[0] > p[1] for p in pairs))

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "macs_tolerance": MACS_TOL, "predicted": self.summary("predicted"),
                "measured": self.summary("measured"), "groups": [g.to_dict() for g in self.groups]}


def _halves(values: list[int]) -> tuple[list[int], list[int]]:
    """The lower and upper halves of a sorted list of widths (the middle one in both when odd)."""
    k = (len(values) + 1) // 2
    return values[:k], values[len(values) - k:]


def equal_macs_pairs(table: LatencyTable, groups: int, seed: int = 0) -> list[tuple[ViTConfig, ViTConfig]]:
    """``groups`` pairs (attention-heavy, MLP-heavy) of uniform configs at equal MACs within 1%, inside the
    table's range on its space's granularity; refused when the range holds no such pair."""
    from revit.latency.accuracy import candidates, setting_of

    cand = candidates(table)
    setting, depth = setting_of(table)
    lo, hi = {}, {}
    for k in BLOCK_KINDS:
        lo[k], hi[k] = _halves(sorted(cand[k]))
    rng = random.Random(seed)
    out: list[tuple[ViTConfig, ViTConfig]] = []
    for _ in range(groups * TRIES):
        if len(out) == groups:
            break
        e = rng.choice(cand["embed_dim"])

        def cfg(h: int, q: int, v: int, m: int, e: int = e) -> ViTConfig:
            return ViTConfig(embed_dim=e, blocks=(BlockDims(h, q, v, m),) * depth, **setting)

        a = cfg(rng.choice(hi["heads"]), rng.choice(hi["qk_dim"]), rng.choice(hi["v_dim"]), rng.choice(lo["mlp_dim"]))
        target = counting.macs(a)
        attn = (rng.choice(lo["heads"]), rng.choice(lo["qk_dim"]), rng.choice(lo["v_dim"]))
        ms = [cfg(*attn, m) for m in cand["mlp_dim"] if m > a.blocks[0].mlp_dim]
        if (attn[0] * (2 * attn[1] + attn[2]) >= a.blocks[0].heads * (2 * a.blocks[0].qk_dim + a.blocks[0].v_dim)
                or not ms):
            continue  # not leaning to attention, or no wider MLP
        b = min(ms, key=lambda c: abs(counting.macs(c) - target))
        if abs(counting.macs(b) / target - 1) <= MACS_TOL:
            out.append((a, b))
    if len(out) < groups:
        raise ConfigError(f"{table.source}: its range holds {len(out)} attention-/MLP-heavy pairs at equal MACs "
                          f"within {MACS_TOL:.0%} in {groups * TRIES} draws, {groups} asked; use fewer --groups")
    return out


def room(table: LatencyTable, groups: int = 20, *, seed: int = 0, backend: Backend | None = None,
         passes: int = 3, source: str | None = None, progress: bool = False) -> Room:
    """The room of ``table``: ``groups`` equal-MACs pairs, predicted, and measured on ``backend`` when given (whole
    models: exported with ``torch.onnx`` where the backend runs ONNX files, see :func:`accuracy.validate`)."""
    pairs = equal_macs_pairs(table, groups, seed)
    pred = [(table.predict(a).total_s, table.predict(b).total_s) for a, b in pairs]
    meas: list[tuple[float, float] | None] = [None] * len(pairs)
    if backend is not None:
        from revit.latency.accuracy import validate

        cfgs = [c for p in pairs for c in p]
        r = validate(table, backend, len(cfgs), seed=seed, noise_k=0, passes=passes, model_source=source,
                     progress=progress, configs=cfgs)
        meas = [(r.measured[2 * i], r.measured[2 * i + 1]) for i in range(len(pairs))]
    return Room(table.source, tuple(Group(a, b, p, m) for (a, b), p, m in zip(pairs, pred, meas, strict=True)))
