"""The pruning policy as pure functions: candidates, eta calibration, global choice, the schedule.

Nothing here touches a model.  Given per-index scores, which indices are alive, the granularity
and a cost model, :func:`choose` removes the globally cheapest units one at a time, NViT's rule
(NVIT_SPEC.md sections 3-4): every (kind, block) family offers its ``unit`` lowest-scoring alive
indices as one candidate, whose score is ``saliency - eta * saving``; the lowest score goes, the
config shrinks, savings are recomputed, and so on until the step's goal cost is met.
With removals allowed, a branch whose width is at its minimum (one step) also offers itself whole: its
saliency is the sum of its remaining units' scores (the attention's heads, the MLP's units), its saving the
branch's cost with the fixed costs that go with it; removing a block's last branch removes the block.
What pruning stops at is a :class:`~revit.cost.CostTarget` (a cost model and a fraction of the base cost);
:class:`revit.recipes.Schedule` says when a pruning step happens and what cost it aims at.

Two rankings (:data:`RANKINGS`): ``nvit`` ranks candidates by their score, as the paper does; ``knapsack`` ranks
them by their score per unit of the target's cost they save (the greedy of a covering knapsack: the least
saliency lost per MAC or ms removed).  Candidates of a step save very different amounts (a head, 8 MLP
neurons), and only the second makes a latency penalty trade units whose latency per MAC is high (on a CPU
where heads are dear, heads) for ones whose is low at equal MACs (docs/evidence/latency.md, the room).
Under ``knapsack`` a penalty of the target's own cost shifts every key by ``eta_abs`` and changes nothing, and
each group also offers its 2, 3, ... lowest units at once (a cost need not be linear in a width: on a CPU table
one head of four saves little latency per MAC, three save much more).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from revit.config import ATTENTION_KINDS, ViTConfig
from revit.errors import BudgetError
from revit.recipes import RANKINGS

BRANCH_KINDS = {"attention": ATTENTION_KINDS, "mlp": ("mlp_dim",)}  # a block's branches and the widths of each
SCORED_BY = {"attention": "heads", "mlp": "mlp_dim"}  # the group whose units' scores cover the whole branch


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
    """The ``unit`` lowest-scoring alive indices of one group, offered for removal together; or, with
    ``branch`` set (``attention`` or ``mlp``), a block's whole branch: ``gids`` are the groups it empties and
    ``indices`` the alive ones of its scoring group ``gid``.  ``price`` is what a cost model is asked the saving
    of: (kind, the block's position in the config, units)."""

    gid: int
    indices: tuple[int, ...]
    saliency: float
    saving: float
    branch: str | None = None
    gids: tuple[int, ...] = ()
    price: tuple[str, int | None, int] = ("", None, 0)
    chunk: int = 1  # how many of the group's units (``unit`` indices each) it removes at once

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
               penalty: CostLike, lowest: dict[int, tuple[int, tuple[int, ...], float]] | None = None,
               removals: bool = False, chunks: bool = False,
               orders: dict[int, tuple[tuple[int, ...], list[float]]] | None = None) -> list[Candidate]:
    """One candidate per group that can still lose ``unit[kind]`` indices without going below its minimum;
    with ``removals``, one more per branch that has a width at its minimum (:func:`branch_candidates`); with
    ``chunks``, more per group: its lowest 2, 3, ... units at once (:func:`chunk_sizes`, as far as its minimum
    allows), so that a cost that is not linear in a width (three heads dearer than three times one) is seen.

    ``lowest`` caches each group's (alive count, lowest indices, their saliency) between calls, ``orders`` its
    removable indices by score with their running sums (for chunks); the caller drops a group's entries when its
    alive mask changes (savings are always recomputed).
    """
    out = []
    lowest = {} if lowest is None else lowest
    orders = {} if orders is None else orders
    # blocks keep their index in the config unless some went (only with removals)
    pos = block_positions(groups, alive) if removals else {g.block: g.block for g in groups if g.block is not None}
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
        where = None if g.block is None else pos[g.block]
        out.append(Candidate(g.gid, indices, saliency, float(penalty.saving(cfg, g.kind, where, u)),
                             price=(g.kind, where, u)))
        floor = min(minimum[g.kind], g.size)
        if chunks and n_alive - 2 * u >= floor:
            if g.gid not in orders:
                orders[g.gid] = _removable_order(scores[g.gid], a, n_alive - floor)
            out += _chunks(g, *orders[g.gid], u, where, cfg, penalty)
    if removals:
        out += branch_candidates(groups, scores, alive, unit, minimum, cfg, penalty, pos)
    return out


def _removable_order(scores: torch.Tensor, alive: torch.Tensor, most: int) -> tuple[tuple[int, ...], list[float]]:
    """The ``most`` lowest-scoring alive indices of a group, in order, and the running sums of their scores."""
    s = scores.detach().double().cpu().clone()
    s[~alive.cpu()] = math.inf
    order = torch.argsort(s, stable=True)[:most]
    return tuple(order.tolist()), torch.cumsum(s[order], 0).tolist()


def _chunks(g: GroupLike, idx: tuple[int, ...], total: list[float], u: int, where: int | None, cfg: ViTConfig,
            penalty: CostLike) -> list[Candidate]:
    """Group ``g``'s lowest-scoring units (``idx``, running sums ``total``), :func:`chunk_sizes` of them at once
    (``u`` indices each), as candidates."""
    return [Candidate(g.gid, idx[:k * u], total[k * u - 1], float(penalty.saving(cfg, g.kind, where, k * u)),
                      price=(g.kind, where, k * u), chunk=k) for k in chunk_sizes(len(idx) // u)]


def chunk_sizes(n: int) -> list[int]:
    """The numbers of units offered at once, up to ``n``: every one to 8, then 25% more each time, and ``n`` (a
    DeiT MLP at the micro granularity: 22 sizes, not 189; a cost's bend shows at any of them)."""
    sizes = list(range(2, min(n, 8) + 1))
    while sizes and sizes[-1] < n:
        sizes.append(min(n, max(sizes[-1] + 1, round(sizes[-1] * 1.25))))
    return sizes


def block_positions(groups: Sequence[GroupLike], alive: Mapping[int, torch.Tensor]) -> dict[int, int]:
    """Each present block's index in the config (which drops removed blocks) by its index in the base."""
    present = sorted(block for block, branches in _branch_map(groups).items()
                     if any(_alive(gs, alive) for gs in branches.values()))
    return {b: i for i, b in enumerate(present)}


def _branch_map(groups: Sequence[GroupLike]) -> dict[int, dict[str, list[GroupLike]]]:
    """Each block's branches and the groups of each (a branch the block lacks has none)."""
    out: dict[int, dict[str, list[GroupLike]]] = {}
    for g in groups:
        for branch, kinds in BRANCH_KINDS.items():
            if g.block is not None and g.kind in kinds:
                out.setdefault(g.block, {}).setdefault(branch, []).append(g)
    return out


def _alive(gs: Sequence[GroupLike], alive: Mapping[int, torch.Tensor]) -> bool:
    """Whether a branch is there: none of its groups is empty (no head, QK, V or MLP unit left)."""
    return all(bool(alive[g.gid].any()) for g in gs)


def branch_candidates(groups: Sequence[GroupLike], scores: Mapping[int, torch.Tensor],
                      alive: Mapping[int, torch.Tensor], unit: Mapping[str, int], minimum: Mapping[str, int],
                      cfg: ViTConfig, penalty: CostLike, pos: Mapping[int, int]) -> list[Candidate]:
    """A whole branch per block whose width cannot shrink further (a group of it at its minimum): saliency
    the sum of its scoring group's alive scores, saving its cost with its fixed costs (the last unit of a
    width priced by the cost model: the branch).  The last present block's last branch is never offered."""
    out = []
    bmap = _branch_map(groups)
    for block in sorted(pos):
        present = {b: gs for b, gs in bmap[block].items() if _alive(gs, alive)}
        if len(pos) == 1 and len(present) == 1:
            continue  # a ViT keeps one block
        for branch, gs in present.items():
            if all(int(alive[g.gid].sum()) - unit[g.kind] >= min(minimum[g.kind], g.size) for g in gs):
                continue  # every width can still shrink: not the branch's last unit yet
            head = next(g for g in gs if g.kind == SCORED_BY[branch])
            a = alive[head.gid].cpu()
            idx = tuple(int(i) for i in torch.nonzero(a).flatten())
            sal = float(scores[head.gid].detach().double().cpu()[a].sum())
            width = getattr(cfg.blocks[pos[block]], head.kind)
            saving = float(penalty.saving(cfg, head.kind, pos[block], width))
            out.append(Candidate(head.gid, idx, sal, saving, branch=branch, gids=tuple(g.gid for g in gs),
                                 price=(head.kind, pos[block], width)))
    return out


def calibrate_eta(eta: float, cands: Sequence[Candidate]) -> float:
    """Scale-free eta -> absolute: a median saving weighs ``eta`` median saliencies (0 when undefined)."""
    cands = [c for c in cands if c.branch is None and c.chunk == 1] or list(cands)  # a unit's, not a branch's
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
           max_units: int | None = None, removals: bool = False, ranking: str = "nvit") -> Choice:
    """Remove the lowest-scoring candidates one at a time until ``cost <= goal`` (or ``max_units`` removals).

    ``eta_abs`` None calibrates it from the first candidate list (:func:`calibrate_eta`); ``ranking`` is one of
    :data:`RANKINGS` (the score, or the score per unit of ``cost`` saved).  Ties go
    to the lower group id (a width before a branch).  ``removals`` lets whole branches compete
    (:func:`branch_candidates`); a branch's removed entry then says its ``block`` (the base model's index), the
    ``branch`` and what it ``removes``: the branch, or the block when it was its last.  Raises
    :class:`BudgetError` when every group is at its minimum first.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    by_gid = {g.gid: g for g in groups}
    # one copy to the host for the whole step: scores may live on a GPU, and candidates() reads them per removal
    scores = {gid: v.detach().double().cpu() for gid, v in scores.items()}
    now = {gid: a.clone() for gid, a in alive.items()}
    removed: list[dict[str, Any]] = []
    lowest: dict[int, tuple[int, tuple[int, ...], float]] = {}
    orders: dict[int, tuple[tuple[int, ...], list[float]]] = {}
    while True:
        cfg = config_of(now)
        if cost.cost(cfg) <= goal or (max_units is not None and len(removed) >= max_units):
            break
        cands = candidates(groups, scores, now, unit, minimum, cfg, penalty, lowest, removals,
                           chunks=ranking == "knapsack", orders=orders)
        if not cands:
            raise BudgetError("every width is at its minimum before the target was reached")
        if eta_abs is None:
            eta_abs = calibrate_eta(eta, cands)
        e = eta_abs
        need = cost.cost(cfg) - goal  # in the target's cost (the penalty may be another: latency for a MACs target)
        best = _best_within(cands, e, lambda c, cfg=cfg: cost.saving(cfg, *c.price), need,  # type: ignore[misc]
                            per_cost=ranking == "knapsack")
        entry = {"group": by_gid[best.gid].name, "units": len(best.indices), "indices": list(best.indices),
                 "saliency": best.saliency, "saving": best.saving, "score": best.score(eta_abs)}
        if best.branch is None:
            now[best.gid][list(best.indices)] = False
            for cache in (lowest, orders):  # only this group's alive mask changed
                cache.pop(best.gid, None)
        else:
            block = by_gid[best.gid].block
            for gid in best.gids:
                now[gid][:] = False
                for cache in (lowest, orders):
                    cache.pop(gid, None)
            gone = block not in block_positions(groups, now)
            entry.update(group=f"blocks.{block}.{best.branch}", block=block, branch=best.branch,
                         removes="block" if gone else best.branch)
        removed.append(entry)
    return Choice(tuple(removed), now, 0.0 if eta_abs is None else eta_abs)


def _best_within(cands: Sequence[Candidate], eta_abs: float, saving: Callable[[Candidate], float],
                 need: float, per_cost: bool = False) -> Candidate:
    """The lowest-scoring candidate whose removal does not overshoot the step's goal (``saving`` in the target's
    cost at most ``need``); when every one would, the one that overshoots least.  One removal never takes the model
    far below its target when a smaller one gets there (an 8-wide embedding slice is 8% of every block's MACs).
    ``per_cost`` ranks by score per unit of that saving (a candidate that saves nothing last)."""
    if per_cost:
        price = {id(c): saving(c) for c in cands}
        ranked = sorted(cands, key=lambda c: (price[id(c)] <= 0, c.score(eta_abs) / price[id(c)]
                                              if price[id(c)] > 0 else 0.0, c.gid, c.branch is not None))
    else:
        price = {}
        ranked = sorted(cands, key=lambda c: (c.score(eta_abs), c.gid, c.branch is not None))
    saved: list[float] = []
    for c in ranked:  # lazily: while the goal is far, the first one fits and is the only one priced
        saved.append(price[id(c)] if per_cost else saving(c))
        if saved[-1] <= need:
            return c
    return ranked[min(range(len(ranked)), key=lambda i: saved[i])]
