"""The pruning policy as pure functions: candidates, eta calibration, global choice, the schedule.

Nothing here touches a model.  Given per-index scores, which indices are alive, the granularity
and a cost model, :func:`choose` removes the globally cheapest units one at a time, NViT's rule
(NVIT_SPEC.md sections 3-4): every (kind, block) family offers its ``unit`` lowest-scoring alive
indices as one candidate, whose score is ``saliency - eta * saving``; the lowest score goes, the
config shrinks, savings are recomputed, and so on until the step's goal cost is met.
:class:`Target` says what pruning stops at (a cost model and a fraction of the base cost);
:class:`Schedule` says when a pruning step happens and what cost it aims at.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from revit.config import ViTConfig
from revit.cost import COSTS, CostModel, LatencyTableLike, build_cost
from revit.errors import BudgetError, ConfigError


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


@dataclass(frozen=True)
class Target:
    """What pruning stops at: ``ratio`` of the base model's cost under the cost model ``kind``.

    Built once (:meth:`of` from the two exclusive options ``--target-macs``/``--target-latency``, or
    :meth:`macs`/:meth:`latency`) and validated here; :meth:`cost_model` builds the cost it is measured
    in (a latency target needs a latency table: the one check of that).
    """

    kind: str  # a registered cost model: "macs", or "latency" (needs a table)
    ratio: float

    def __post_init__(self) -> None:
        COSTS.get(self.kind)  # raises with the known names
        r = self.ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
            raise ConfigError(f"target_{self.kind} must be a finite number, got {r!r}")
        if not 0 < r < 1:
            raise ConfigError(f"target_{self.kind} must be a fraction in (0, 1) of the base cost, got {r}")

    @classmethod
    def macs(cls, ratio: float) -> Target:
        """Stop at ``ratio`` of the base model's MACs."""
        return cls("macs", ratio)

    @classmethod
    def latency(cls, ratio: float) -> Target:
        """Stop at ``ratio`` of the base model's latency predicted by a table."""
        return cls("latency", ratio)

    @classmethod
    def of(cls, *, macs: float | None = None, latency: float | None = None) -> Target:
        """The target from its two exclusive options (exactly one given)."""
        if (macs is None) == (latency is None):
            raise ConfigError("give exactly one of target_macs and target_latency (fractions of the base cost)")
        return cls.latency(latency) if latency is not None else cls.macs(macs)  # type: ignore[arg-type]

    def cost_model(self, table: LatencyTableLike | None = None) -> CostModel:
        """The cost this target is measured in (raises when it needs a table and none is given)."""
        return build_cost(self.kind, table)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ratio": self.ratio}


@dataclass(frozen=True)
class Schedule:
    """When pruning steps happen and which cost each aims at.

    - *by budget* (``total_steps`` given): ``prune_steps`` steps, one every ``interval`` calls, the
      k-th aiming at ``base - k/K (base - target)``, so the target is reached by the end of the
      budget; if it is not (minimum widths, rounding), pruning goes on every interval until it is.
    - *fixed* (NViT's): a step every ``interval`` calls that removes ``per_step`` units, or units
      until the cost fell by ``step_fraction`` of the base cost, until the target.
    """

    interval: int
    prune_steps: int | None = None  # K, by budget
    per_step: int | None = None
    step_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ConfigError(f"interval must be >= 1, got {self.interval}")
        modes = sum(x is not None for x in (self.prune_steps, self.per_step, self.step_fraction))
        if modes != 1:
            raise ConfigError("a schedule needs exactly one of prune_steps (by budget), per_step or step_fraction")
        if self.prune_steps is not None and self.prune_steps < 1:
            raise ConfigError(f"prune_steps must be >= 1, got {self.prune_steps}")
        if self.per_step is not None and self.per_step < 1:
            raise ConfigError(f"per_step must be >= 1, got {self.per_step}")
        if self.step_fraction is not None and not 0 < self.step_fraction < 1:
            raise ConfigError(f"step_fraction must be in (0, 1), got {self.step_fraction}")

    @classmethod
    def fixed(cls, interval: int | None = None, per_step: int | None = None,
              step_fraction: float | None = None) -> Schedule:
        """NViT's schedule: a step every ``interval`` (100) calls removing ``per_step`` (2) units, or
        units worth ``step_fraction`` of the base cost, until the target."""
        if per_step is not None and step_fraction is not None:
            raise ConfigError("give at most one of per_step and step_fraction")
        if per_step is None and step_fraction is None:
            per_step = 2
        return cls(interval=100 if interval is None else interval, per_step=per_step, step_fraction=step_fraction)

    @classmethod
    def by_budget(cls, total_steps: int, prune_steps: int | None = None, min_interval: int = 2,
                  max_prune_steps: int = 32) -> Schedule:
        """Spread the removals over ``total_steps`` calls: K steps, at least ``min_interval`` apart."""
        if total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
        k = prune_steps or max(1, min(max_prune_steps, total_steps // min_interval))
        k = min(k, total_steps)
        return cls(interval=max(1, total_steps // k), prune_steps=k)

    @property
    def budget(self) -> int | None:
        """Calls by which the target should be reached (by-budget schedules)."""
        return None if self.prune_steps is None else self.prune_steps * self.interval

    def due(self, calls: int) -> bool:
        """Whether a pruning step happens after the ``calls``-th call."""
        return calls > 0 and calls % self.interval == 0

    def goal(self, k: int, start_cost: float, base_cost: float, target_cost: float) -> tuple[float, int | None]:
        """(goal cost, max units) of the ``k``-th pruning step (1-based), which starts at ``start_cost``."""
        if self.prune_steps is not None:
            frac = min(1.0, k / self.prune_steps)
            return max(target_cost, base_cost - frac * (base_cost - target_cost)), None
        if self.step_fraction is not None:
            return max(target_cost, start_cost - self.step_fraction * base_cost), None
        return target_cost, self.per_step

    def describe(self) -> str:
        if self.prune_steps is not None:
            return f"{self.prune_steps} steps, one every {self.interval} batches (by budget)"
        what = f"{self.per_step} units" if self.per_step is not None else f"{self.step_fraction:g} of the base cost"
        return f"a step every {self.interval} batches removing {what}, until the target"
