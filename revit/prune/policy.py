"""The pruning policy as pure functions: candidates, eta calibration, global choice, the schedule.

Nothing here touches a model.  Given per-index scores, which indices are alive, the granularity
and a cost model, :func:`choose` removes the globally cheapest units one at a time, NViT's rule
(NVIT_SPEC.md sections 3-4): every (kind, block) family offers its ``unit`` lowest-scoring alive
indices as one candidate, whose score is ``saliency - eta * saving``; the lowest score goes, the
config shrinks, savings are recomputed, and so on until the step's goal cost is met.
What pruning stops at is a :class:`~revit.cost.CostTarget` (a cost model and a fraction of the base cost);
:class:`revit.recipes.Schedule` says when a pruning step happens and what cost it aims at.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from revit.config import ViTConfig
from revit.errors import BudgetError


class GroupLike(Protocol):
    """What the policy needs to know of a group (``revit.prune.structure.Group`` provides it)."""

    @property
    def gid(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def block(self) -> int | None: ...

    @property
    def size(self) -> int: ...

    @property
    def name(self) -> str: ...


class CostLike(Protocol):
    """A cost model: whole-config cost and the saving of removing units (``revit.cost``)."""

    name: str

    def cost(self, cfg: ViTConfig) -> float: ...

    def saving(self, cfg: ViTConfig, kind: str, block: int | None, units: int) -> float: ...


@dataclass(frozen=True)
class Candidate:
    """The ``unit`` lowest-scoring alive indices of one group, offered for removal together."""

    gid: int
    indices: tuple[int, ...]
    saliency: float
    saving: float

    def score(self, eta_abs: float) -> float:
        return self.saliency - eta_abs * self.saving


@dataclass(frozen=True)
class Choice:
    """What one pruning step removed, the new alive masks and the (possibly just calibrated) eta."""

    removed: tuple[dict[str, Any], ...]
    alive: dict[int, torch.Tensor] = field(repr=False)
    eta_abs: float


def candidates(groups: Sequence[GroupLike], scores: Mapping[int, torch.Tensor], alive: Mapping[int, torch.Tensor],
               unit: Mapping[str, int], minimum: Mapping[str, int], cfg: ViTConfig,
               penalty: CostLike, lowest: dict[int, tuple[int, tuple[int, ...], float]] | None = None
               ) -> list[Candidate]:
    """One candidate per group that can still lose ``unit[kind]`` indices without going below its minimum.

    ``lowest`` caches each group's (alive count, lowest indices, their saliency) between calls; the
    caller drops a group's entry when its alive mask changes (savings are always recomputed).
    """
    out = []
    lowest = {} if lowest is None else lowest
    for g in groups:
        a = alive[g.gid]
        u = unit[g.kind]
        if g.gid not in lowest:
            s = scores[g.gid].detach().double().cpu().clone()
            s[~a.cpu()] = math.inf
            order = torch.argsort(s, stable=True)[:u]
            lowest[g.gid] = (int(a.sum()), tuple(int(i) for i in order), float(s[order].sum()))
        n_alive, indices, saliency = lowest[g.gid]
        if n_alive - u < min(minimum[g.kind], g.size):
            continue  # at its minimum: no candidate, no penalty
        out.append(Candidate(g.gid, indices, saliency, float(penalty.saving(cfg, g.kind, g.block, u))))
    return out


def calibrate_eta(eta: float, cands: Sequence[Candidate]) -> float:
    """Scale-free eta -> absolute: a median saving weighs ``eta`` median saliencies (0 when undefined)."""
    if eta == 0 or not cands:
        return 0.0
    sal = torch.tensor([c.saliency for c in cands], dtype=torch.float64)
    sav = torch.tensor([c.saving for c in cands if c.saving > 0], dtype=torch.float64)
    if sav.numel() == 0 or float(sal.median()) <= 0:
        return 0.0
    return eta * float(sal.median()) / float(sav.median())


def choose(groups: Sequence[GroupLike], scores: Mapping[int, torch.Tensor], alive: Mapping[int, torch.Tensor], *,
           unit: Mapping[str, int], minimum: Mapping[str, int], config_of: Callable[[Mapping[int, torch.Tensor]],
                                                                                    ViTConfig],
           cost: CostLike, penalty: CostLike, goal: float, eta: float, eta_abs: float | None = None,
           max_units: int | None = None) -> Choice:
    """Remove the lowest-scoring candidates one at a time until ``cost <= goal`` (or ``max_units`` removals).

    ``eta_abs`` None calibrates it from the first candidate list (:func:`calibrate_eta`).  Ties go
    to the lower group id.  Raises :class:`BudgetError` when every group is at its minimum first.
    """
    by_gid = {g.gid: g for g in groups}
    # one copy to the host for the whole step: scores may live on a GPU, and candidates() reads them per removal
    scores = {gid: v.detach().double().cpu() for gid, v in scores.items()}
    now = {gid: a.clone() for gid, a in alive.items()}
    removed: list[dict[str, Any]] = []
    lowest: dict[int, tuple[int, tuple[int, ...], float]] = {}
    while True:
        cfg = config_of(now)
        if cost.cost(cfg) <= goal or (max_units is not None and len(removed) >= max_units):
            break
        cands = candidates(groups, scores, now, unit, minimum, cfg, penalty, lowest)
        if not cands:
            raise BudgetError("every width is at its minimum before the target was reached")
        if eta_abs is None:
            eta_abs = calibrate_eta(eta, cands)
        e = eta_abs
        need = cost.cost(cfg) - goal  # in the target's cost (the penalty may be another: latency for a MACs target)
        best = _best_within(cands, e, lambda c, cfg=cfg: cost.saving(  # type: ignore[misc]
            cfg, by_gid[c.gid].kind, by_gid[c.gid].block, len(c.indices)), need)
        now[best.gid][list(best.indices)] = False
        del lowest[best.gid]  # only this group's alive mask changed
        removed.append({"group": by_gid[best.gid].name, "units": len(best.indices), "indices": list(best.indices),
                        "saliency": best.saliency, "saving": best.saving, "score": best.score(eta_abs)})
    return Choice(tuple(removed), now, 0.0 if eta_abs is None else eta_abs)


def _best_within(cands: Sequence[Candidate], eta_abs: float, saving: Callable[[Candidate], float],
                 need: float) -> Candidate:
    """The lowest-scoring candidate whose removal does not overshoot the step's goal (``saving`` in the target's
    cost at most ``need``); when every one would, the one that overshoots least.  One removal never takes the model
    far below its target when a smaller one gets there (an 8-wide embedding slice is 8% of every block's MACs)."""
    ranked = sorted(cands, key=lambda c: (c.score(eta_abs), c.gid))
    saved: dict[int, float] = {}
    for c in ranked:  # lazily: while the goal is far, the first one fits and is the only one priced
        saved[c.gid] = saving(c)
        if saved[c.gid] <= need:
            return c
    return min(ranked, key=lambda c: saved[c.gid])
