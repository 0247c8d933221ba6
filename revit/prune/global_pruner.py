"""``GlobalPruner``: NViT's global, Hessian-aware, latency-aware pruning inside the user's own loop.

In the style of Torch-Pruning's pruners::

    pruner = GlobalPruner(model, example_inputs=x, target=CostTarget.macs(0.5), schedule=Schedule.by_budget(N))
    net = pruner.model                  # a revit model (converted from a timm ViT if needed)
    for ...:                            # the user's loop, loss and optimizer
        loss.backward(); pruner.accumulate(); opt.step(); pruner.step()
    dense, trace = pruner.export()

``accumulate()`` reads the gradients now in ``pruner.model`` (after ``scaler.unscale_(opt)`` with a
GradScaler, once per optimizer step with gradient accumulation, the all-reduced ones under DDP).
``step()`` re-applies the masks and, when the schedule says so, removes the globally cheapest
units (:mod:`revit.prune.policy`).  Masks keep parameter shapes until :meth:`export`, so the
user's optimizer stays valid; under DDP rank 0 decides and broadcasts.
"""

from __future__ import annotations

import logging
import math
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from revit import counting
from revit.config import Granularity, ViTConfig
from revit.cost import CostModel, CostTarget, LatencyTableLike, min_config, table_cost
from revit.devices import dist_info, to_cpu, to_device
from revit.errors import BudgetError, ConfigError, TableRangeError
from revit.prune.criteria import CRITERIA, Criterion, ScoreAccumulator, build_criterion
from revit.prune.masking import Masks, rebuild_dense
from revit.prune.policy import choose
from revit.prune.structure import Structure, derive_structure
from revit.recipes import RANKINGS, Schedule
from revit.trace import SCHEMA, Trace, TraceStep

log = logging.getLogger(__name__)


def as_revit(model: nn.Module) -> nn.Module:
    """``model`` itself when it is a revit model, else the equivalent revit model of a timm ViT/DeiT."""
    if isinstance(getattr(model, "config", None), ViTConfig):
        return model
    from revit.models import from_timm

    p0 = next(model.parameters())
    return from_timm(model).to(device=p0.device, dtype=p0.dtype).train(model.training)


class GlobalPruner:
    """Prune every width of every block of a ViT jointly to a MACs or latency target.

    ``target`` is a :class:`~revit.cost.CostTarget` (``CostTarget.macs(0.5)``; ``CostTarget.latency(0.6)``
    with ``table``), or give the shorthand ``target_macs=``/``target_latency=`` (fractions of the base
    cost).  ``schedule`` is a :class:`~revit.prune.policy.Schedule`: ``Schedule.by_budget(N)`` spreads
    the removals so the target is reached after N steps (the shorthand ``total_steps=N``), NViT's
    ``Schedule.fixed(interval, per_step or step_fraction)`` prunes at a fixed pace until the target.
    ``criterion`` is a registered name (``hessian``, ``nvit-code``, ``taylor``, ``magnitude``,
    ``random``) or a :class:`~revit.prune.criteria.Criterion` object (``criterion_options``: the named
    criterion's declared options, e.g. ``{"norm_mlp_dim": 2.0}``); ``penalty`` a cost model object
    or None (the table's latency when ``table`` is given, else the target's cost).
    ``evaluator(model) -> accuracy`` is called after every pruning step.  A branch whose widths are at their
    minimum competes as a whole (its attention or MLP, the block with its last branch) unless ``keep_depth``
    (or a latency table that cannot price an absent branch: schema v1); the trace keeps the base's block
    indices, a removed part at its index with zero widths.
    ``ranking`` ``"nvit"`` (the paper) ranks candidates by ``saliency - eta * saving``; ``"knapsack"`` by that
    score per unit of the target's cost saved, which is what lets a latency penalty trade dear units for cheap
    ones at equal MACs (:mod:`revit.prune.policy`).

    A revit model is pruned in place (``pruner.model is model``).  A timm ViT/DeiT is converted into an
    equivalent revit model first (logged as a warning): train ``pruner.model``, not the object passed.
    ``granularity="auto"`` follows the model's widths (:meth:`Granularity.for_widths`).
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor | None = None, *,
                 target: CostTarget | None = None, schedule: Schedule | None = None,
                 target_macs: float | None = None, target_latency: float | None = None, total_steps: int | None = None,
                 table: LatencyTableLike | None = None, criterion: str | Criterion = "hessian",
                 penalty: CostModel | None = None, eta: float = 1.0, ema: float = 0.9,
                 granularity: str | Mapping[str, int] | Granularity = "auto", seed: int = 0,
                 evaluator: Callable[[nn.Module], float | None] | None = None, cuda_graphs: bool | None = None,
                 criterion_options: Mapping[str, Any] | None = None, keep_depth: bool = False,
                 ranking: str = "nvit") -> None:
        self.model = as_revit(model)
        self.base: ViTConfig = self.model.config  # type: ignore[assignment]
        # the timm model the user passed, when it was converted: accumulate() names the mistake of training it
        self._passed: weakref.ReferenceType[nn.Module] | None = None
        if self.model is not model:
            self._passed = weakref.ref(model)
            log.warning("GlobalPruner converted the %s into a revit model (same outputs): train pruner.model, "
                        "not the model you passed, which is left unpruned", type(model).__name__)
        self.rank, self.world = dist_info()
        self._check_numbers(eta=eta, ema=ema)
        self.target = self._target(target, target_macs, target_latency)
        self.schedule = self._schedule(schedule, total_steps)
        self.cost: CostModel = self.target.cost_model(table)
        # the penalty: the table's latency when there is a table, else the target's cost
        self.penalty: CostModel = penalty or (
            table_cost(table) if table is not None and not self.cost.needs_table else self.cost)
        # the latency recorded in the trace: the table's (through whichever cost model holds it)
        self.latency: CostModel | None = next((m for m in (self.cost, self.penalty) if m.needs_table), None)
        self.ratio = float(self.target.ratio or 0.0)  # relative: checked by _target
        self.eta, self.seed = eta, seed
        if ranking not in RANKINGS:
            raise ConfigError(f"ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")
        self.ranking = ranking
        if ranking == "knapsack" and eta > 0 and self.penalty.name == self.cost.name:
            log.info("ranked by the knapsack, a %s penalty on a %s target changes nothing (eta %g is moot): "
                     "candidates go by saliency per %s saved; for latency-awareness at equal MACs, target MACs "
                     "with a latency table", self.penalty.name, self.cost.name, eta, self.cost.per_unit)
        gran = Granularity.for_widths(self.base.embed_dim, self.base.blocks) if granularity in (None, "auto") \
            else Granularity.parse(granularity, self.base.img_size)
        self.unit = gran.to_dict()
        self.minimum = self._minimum()
        for m in (self.cost, self.penalty):
            try:
                m.cost(self.base)
            except TableRangeError as e:
                raise TableRangeError(f"the latency table does not cover the model: {e.message}") from None
        self.keep_depth = keep_depth
        self.removals = self._removals(keep_depth)  # after the domain check: a refused model gets one line
        self.base_cost = self.cost.cost(self.base)
        self.target_cost = self.ratio * self.base_cost
        self._check_reachable()
        self.structure: Structure = derive_structure(self.model, example_inputs)
        self.masks = Masks(self.structure)
        self.masks.install(self.model)
        self.criterion = build_criterion(criterion, self.structure, self.seed, criterion_options)
        self.acc = ScoreAccumulator(ema)
        self.cuda_graphs = cuda_graphs
        self._graph: _GraphedScores | None = None
        self._done: bool | None = None  # cached by ``done``; reset whenever the masks change
        self.evaluator = evaluator
        self.calls, self.steps = 0, 0
        self.eta_abs: float | None = None
        self._loss: list[Any] = [0.0, 0]  # (sum: a float or a 0-d float64 tensor on the loss's device, count)
        self._warned = False
        self.steps_log: list[TraceStep] = []
        self._record(loss=None, extra={"batches": 0, "removed": []})

    # --- construction helpers --------------------------------------------------------------------
    @staticmethod
    def _check_numbers(eta: float, ema: float) -> None:
        for name, v in (("eta", eta), ("ema", ema)):
            if not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v}")
        if eta < 0:
            raise ConfigError(f"eta must be >= 0, got {eta}")
        if not 0 <= ema < 1:
            raise ConfigError(f"ema must be in [0, 1), got {ema}")

    @staticmethod
    def _target(target: CostTarget | None, macs: float | None, latency: float | None) -> CostTarget:
        """``target``, or the one built from the shorthands ``target_macs``/``target_latency``."""
        if target is None:
            return CostTarget.of(macs=macs, latency=latency)
        if not isinstance(target, CostTarget) or target.ratio is None:
            raise ConfigError("target must be a relative CostTarget (CostTarget.macs(0.5), CostTarget.latency(0.6)), "
                              f"got {target!r}")
        if macs is not None or latency is not None:
            raise ConfigError("give target or target_macs/target_latency, not both")
        return target

    @staticmethod
    def _schedule(schedule: Schedule | None, total_steps: int | None) -> Schedule:
        """``schedule``, or by budget over ``total_steps`` (the shorthand)."""
        if schedule is not None:
            if not isinstance(schedule, Schedule):
                raise ConfigError(f"schedule must be a Schedule (Schedule.by_budget(N), Schedule.fixed()), "
                                  f"got {schedule!r}")
            if total_steps is not None:
                raise ConfigError("give schedule or total_steps, not both")
            return schedule
        if total_steps is None:
            raise ConfigError("give total_steps (the schedule spreads the removals over it) or a schedule "
                              "(Schedule.by_budget(total_steps, prune_steps) or NViT's Schedule.fixed(interval, "
                              "per_step or step_fraction))")
        return Schedule.by_budget(total_steps)

    def _minimum(self) -> dict[str, int]:
        """The granularity, raised to a latency table's measured range (never extrapolate a prediction)."""
        minimum = dict(self.unit)
        for m in (self.cost, self.penalty):
            for kind, lo in m.minimum_widths().items():
                step = self.unit[kind]
                minimum[kind] = max(minimum[kind], int(math.ceil(lo / step)) * step)
        return minimum

    def _removals(self, keep_depth: bool) -> bool:
        """Whether branches and blocks may go: not with ``keep_depth``, nor when a cost model cannot price them."""
        if not isinstance(keep_depth, bool):
            raise ConfigError(f"keep_depth must be True or False, got {keep_depth!r}")
        if not keep_depth and not self.prices_depth:
            unpriced = next(m.name for m in (self.cost, self.penalty) if not m.prices_removals())
            # not a warning: an older table is still a good table for widths (the demo's shipped one is v1)
            log.info("the %s cost cannot price a block without its attention or MLP (a latency table of schema "
                        "v1): pruning widths only; rebuild the table to prune depth", unpriced)
        return not keep_depth and self.prices_depth

    def _floor(self, removals: bool) -> float:
        """The least cost pruning can reach: every width at its minimum, and with ``removals`` one block left
        with one branch (the cheapest such)."""
        low = min_config(self.base, self.minimum)
        if not removals:
            return self.cost.cost(low)
        ones = [one for b in low.blocks for one in (replace(b, mlp_dim=0), replace(b, heads=0, qk_dim=0, v_dim=0))
                if not one.is_removed]
        return min(self.cost.cost(low.with_blocks([one])) for one in ones)

    def _check_reachable(self) -> None:
        floor = self._floor(self.removals)
        if floor > self.target_cost:
            mins = ", ".join(f"{k} {v}" for k, v in self.minimum.items())
            what = f"the minimum widths ({mins})" + (" with one branch of one block left" if self.removals else "")
            how, fix = "", "raise the target or lower the granularity"
            if self.keep_depth and self.prices_depth and self._floor(True) <= self.target_cost:
                how, fix = " without removing a branch or a block (keep_depth)", "allow removals or raise the target"
            raise BudgetError(f"target {self.ratio:g} x base {self.cost.name} = {self.cost.format(self.target_cost)} "
                              f"cannot be reached{how}: {what} still cost {self.cost.format(floor)} "
                              f"({floor / self.base_cost:.3f} of the base); {fix}")

    @property
    def prices_depth(self) -> bool:
        """Whether the cost models can price removals (so that they would be allowed without ``keep_depth``)."""
        return all(m.prices_removals() for m in (self.cost, self.penalty))

    # --- the loop --------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """Whether the target is met (costed once per mask change, not on every batch)."""
        if self._done is None:
            self._done = self.cost.cost(self.current_config()) <= self.target_cost
        return self._done

    def current_config(self) -> ViTConfig:
        return self.masks.config(self.base)

    @torch.no_grad()
    def accumulate(self, loss: float | torch.Tensor | None = None) -> None:
        """Score every index from the gradients now in ``self.model`` (call after backward, before the
        optimizer step); also zeroes the gradients of removed entries.  ``loss`` is averaged into the trace."""
        self.masks.zero_grads(self.model)
        if not self.done:
            params = dict(self.model.named_parameters())
            grads = {k: p.grad for k, p in params.items() if p.grad is not None}
            if self.criterion.needs_grad and not grads:
                raise ConfigError(self._no_grads_message())
            self._score(params, grads)
        if loss is not None:  # a tensor loss is summed on its device: no sync per call
            self._loss[0] = self._loss[0] + (loss.detach().double() if isinstance(loss, torch.Tensor) else float(loss))
            self._loss[1] += 1

    def _no_grads_message(self) -> str:
        passed = self._passed() if self._passed is not None else None
        if passed is not None and any(p.grad is not None for p in passed.parameters()):
            return (f"accumulate() found no gradients in pruner.model, but the {type(passed).__name__} passed to "
                    "GlobalPruner has some: it was converted into a new revit model, so train pruner.model "
                    "(net = pruner.model; forward, loss and optimizer on net)")
        return "accumulate() found no gradients: call it after loss.backward()"

    def step(self) -> bool:
        """Re-apply the masks; prune when the schedule says so.  Returns whether units were removed."""
        self.masks.apply(self.model)
        self.calls += 1
        if self.done or not self.schedule.due(self.calls):
            return False
        budget = self.schedule.budget
        if budget is not None and self.calls > budget and not self._warned and self.rank == 0:
            self._warned = True
            warnings.warn(f"the budget of {budget} steps ended before the target was met; pruning continues "
                          f"every {self.schedule.interval} steps until it is", stacklevel=2)
        self.prune_now()
        return True

    def _score(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> None:
        """Add this batch's scores: through the CUDA graph when there is a valid one, else eagerly."""
        if self._graph is not None and self._graph.names == sorted(grads):
            self._graph.add(grads)
            return
        device = next(iter(params.values())).device
        if self.cuda_graphs is False or device.type != "cuda" or not self.criterion.capturable:
            self.acc.add(self.criterion(params, grads))
            return
        self._flush_graph()
        self._graph = self._capture(params, grads)
        if self._graph is None:
            self.acc.add(self.criterion(params, grads))

    def _capture(self, params: Mapping[str, torch.Tensor],
                 grads: Mapping[str, torch.Tensor]) -> _GraphedScores | None:
        """A graph of the criterion, checked once against the eager scores (it adds this batch's scores);
        None, with a warning and eager scoring from then on, if capture fails or the scores differ."""
        try:
            g = _GraphedScores(self.criterion, params, grads)
            g.add(grads)
            eager = self.criterion(params, grads)
            ok = all(torch.allclose(v, eager[gid], rtol=1e-6, atol=1e-30) for gid, v in zip(g.gids, g.sums,
                                                                                           strict=True))
            why = "its scores differ from the eager criterion's"
        except RuntimeError as e:
            ok, why = False, f"capture failed ({type(e).__name__}: {str(e)[:120]})"
        if ok:
            return g
        warnings.warn(f"scoring through a CUDA graph is off: {why}; scoring eagerly", stacklevel=3)
        self.cuda_graphs = False
        return None

    def _flush_graph(self) -> None:
        """Move the graph's summed scores into the accumulator (before a step or a state save)."""
        if self._graph is not None and self._graph.count:
            self._graph.flush_into(self.acc)

    def prune_now(self) -> None:
        """One pruning step at once, whatever the schedule says (what :meth:`step` does when one is due):
        rank the accumulated scores, remove units toward the target, record the step in the trace."""
        if self.done:
            raise BudgetError("the target is already met: nothing left to prune")
        self._flush_graph()
        scores = self.acc.end_interval()
        if not scores:
            raise ConfigError("step() is due but no scores were accumulated: call accumulate() after backward")
        for gid, s in scores.items():
            if not bool(torch.isfinite(s).all()):
                raise BudgetError(f"non-finite saliency in {self.structure.groups[gid].name} at pruning step "
                                  f"{self.steps + 1}; lower the learning rate (or the loss scale)")
        start = self.cost.cost(self.current_config())
        goal, max_units = self.schedule.goal(self.steps + 1, start, self.base_cost, self.target_cost)
        removed: list[dict[str, Any]] = []
        if self.rank == 0:
            ch = choose(self.structure.groups, scores, self.masks.alive, unit=self.unit, minimum=self.minimum,
                        config_of=lambda a: self.structure.config(self.base, a), cost=self.cost,
                        penalty=self.penalty, goal=goal, eta=self.eta, eta_abs=self.eta_abs, max_units=max_units,
                        removals=self.removals, ranking=self.ranking)
            self.masks.alive = {gid: a.clone() for gid, a in ch.alive.items()}
            removed, self.eta_abs = list(ch.removed), ch.eta_abs
        loss_sum = torch.tensor([float(self._loss[0]), self._loss[1]], dtype=torch.float64)
        if self.world > 1:
            removed = self._broadcast(removed, loss_sum)
        self.masks.refresh()
        self._done = None
        self.masks.apply(self.model)
        self.steps += 1
        loss = float(loss_sum[0] / loss_sum[1]) if loss_sum[1] > 0 else None
        self._loss = [0.0, 0]
        extra = {"batches": self.calls, "eta_abs": self.eta_abs, "removed": removed,
                 self.cost.name: self.cost.cost(self.current_config())}
        gone = [{"block": r["block"], "removes": r["removes"]} for r in removed if "removes" in r]
        self._record(loss=loss, extra={**extra, "removals": gone} if gone else extra)

    def _broadcast(self, removed: list[dict[str, Any]], loss_sum: torch.Tensor) -> list[dict[str, Any]]:
        """Rank 0's choice to every process; the loss summed over processes (in place)."""
        box: list[Any] = [removed, self.eta_abs]
        dist.broadcast_object_list(box, 0)
        removed, self.eta_abs = box
        device = next(self.model.parameters()).device if dist.get_backend() == "nccl" else torch.device("cpu")
        for gid in sorted(self.masks.alive):
            t = self.masks.alive[gid].to(device=device, dtype=torch.uint8)
            dist.broadcast(t, 0)
            self.masks.alive[gid] = t.cpu().bool()
        t = loss_sum.to(device)
        dist.all_reduce(t)
        loss_sum.copy_(t.cpu())
        return removed

    def _record(self, loss: float | None, extra: dict[str, Any]) -> None:
        cfg = self.current_config()
        acc = self.evaluator(self.model) if self.evaluator is not None else None
        lat = self.latency.cost(cfg) if self.latency is not None else None
        # the blocks at the base's indices: a removed branch or block is recorded there with zero widths
        blocks = tuple(self.structure.block_dims(self.masks.alive))
        self.steps_log.append(TraceStep(step=self.steps, embed_dim=cfg.embed_dim, blocks=blocks,
                                        macs=counting.macs(cfg), params=counting.params(cfg), latency=lat,
                                        loss=loss, accuracy=acc, extra=extra))

    # --- results ---------------------------------------------------------------------------------
    def header(self, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The trace header: base config, target, criterion, penalty, schedule and granularity."""
        return {"schema": SCHEMA, "base_config": self.base.to_dict(),
                "target": self.target_record(),
                "criterion": self.criterion_name, "penalty": self.penalty.name,
                "schedule": self.schedule.describe(), "settings": dict(settings or {}), "granularity": self.unit,
                "world_size": self.world, "macs_convention": counting.CONVENTIONS["nvit"],
                **({"keep_depth": True} if self.keep_depth else {}),
                **({"ranking": self.ranking} if self.ranking != "nvit" else {})}

    def target_record(self) -> dict[str, Any]:
        """The target in its one JSON shape with what it came to: ``value`` (the cost to reach) and ``base``."""
        return {**self.target.to_dict(), "value": self.target_cost, "base": self.base_cost}

    @property
    def criterion_name(self) -> str:
        return CRITERIA.name_of(type(self.criterion)) or type(self.criterion).__name__

    @property
    def trace(self) -> Trace:
        return Trace(header=self.header(), steps=tuple(self.steps_log))

    def export(self) -> tuple[nn.Module, Trace]:
        """The dense pruned model (a timm-registered revit model, same outputs) and the dimension trace."""
        dense = rebuild_dense(self.model, self.structure, self.masks.alive)
        return dense.train(self.model.training), self.trace

    # --- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the policy needs to continue (device-agnostic: tensors on the CPU)."""
        cpu = to_cpu
        self._flush_graph()
        return {"alive": cpu(self.masks.alive), "acc": cpu(self.acc.state_dict()),
                "criterion": cpu(self.criterion.state_dict()), "calls": self.calls, "steps": self.steps,
                "eta_abs": self.eta_abs, "loss": [float(self._loss[0]), self._loss[1]],
                "trace": [s.to_dict() for s in self.steps_log]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        device = next(self.model.parameters()).device
        self.masks.alive = {int(k): v.clone().cpu().bool() for k, v in state["alive"].items()}
        self.masks.refresh()
        self._done = None
        self.acc.load_state_dict(to_device(state["acc"], device))
        self.criterion.load_state_dict(state["criterion"])
        self.calls, self.steps, self.eta_abs = int(state["calls"]), int(state["steps"]), state["eta_abs"]
        self._loss = list(state["loss"])
        self.steps_log = [TraceStep.from_dict(d) for d in state["trace"]]
        self.masks.apply(self.model)


class _GraphedScores:
    """``criterion(params, grads)`` summed into static buffers by one CUDA-graph replay per call.

    Scoring is hundreds of small kernels (a product, axis sums and a scatter per tensor slice);
    on a GPU their launches cost more than the arithmetic, so they are captured once and replayed.
    The gradients are copied into static buffers first (one multi-tensor copy), since a training
    loop that zeroes with ``set_to_none`` gets new gradient tensors every step.
    """

    def __init__(self, criterion: Criterion, params: Mapping[str, torch.Tensor],
                 grads: Mapping[str, torch.Tensor]) -> None:
        self.names = sorted(grads)
        self.static = {k: grads[k].detach().clone() for k in self.names}
        p = {k: v.detach() for k, v in params.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up (index tensors move to the device) on a side stream
                out = criterion(p, self.static)
        torch.cuda.current_stream().wait_stream(side)
        self.gids = sorted(out)
        self.sums = [torch.zeros_like(out[g]) for g in self.gids]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            out = criterion(p, self.static)
            torch._foreach_add_(self.sums, [out[g] for g in self.gids])
        self.count = 0

    def add(self, grads: Mapping[str, torch.Tensor]) -> None:
        torch._foreach_copy_([self.static[k] for k in self.names], [grads[k].detach() for k in self.names])
        self.graph.replay()
        self.count += 1

    def flush_into(self, acc: ScoreAccumulator) -> None:
        for g, v in zip(self.gids, self.sums, strict=True):
            acc.sum[g] = acc.sum[g] + v if g in acc.sum else v.clone()
        acc.count += self.count
        torch._foreach_zero_(self.sums)
        self.count = 0


