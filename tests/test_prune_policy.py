"""The pure pruning policy, without a model: NViT's rule on hand-made scores, costs and alive masks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from revit.errors import BudgetError, ConfigError
from revit.prune.policy import calibrate_eta, candidates, choose
from revit.recipes import Schedule


@dataclass(frozen=True)
class G:
    gid: int
    kind: str
    block: int | None
    size: int

    @property
    def name(self) -> str:
        return f"{self.kind}{self.block}"


class Units:
    """Cost = weighted alive units (``config_of`` returns the alive counts); saving = weight x units."""

    name = "units"

    def __init__(self, groups: list[G], weight: dict[str, float]) -> None:
        self.groups, self.weight = groups, weight

    def cost(self, counts: Any) -> float:
        return sum(self.weight[g.kind] * counts[g.gid] for g in self.groups)

    def saving(self, counts: Any, kind: str, block: int | None, units: int) -> float:
        return self.weight[kind] * units


GROUPS = [G(0, "mlp_dim", 0, 4), G(1, "heads", 0, 3)]
SCORES = {0: torch.tensor([5.0, 1.0, 7.0, 3.0], dtype=torch.float64), 1: torch.tensor([2.0, 9.0, 4.0],
                                                                                      dtype=torch.float64)}


def _alive() -> dict[int, torch.Tensor]:
    return {g.gid: torch.ones(g.size, dtype=torch.bool) for g in GROUPS}


def _choose(weight: dict[str, float], goal: float = -1.0, **kw: Any) -> Any:
    cost = Units(GROUPS, weight)
    args: dict[str, Any] = dict(unit={"mlp_dim": 1, "heads": 1}, minimum={"mlp_dim": 1, "heads": 1}, eta=1.0)
    args.update(kw)
    return choose(GROUPS, SCORES, _alive(), config_of=lambda a: {gid: int(m.sum()) for gid, m in a.items()},
                  cost=cost, penalty=cost, goal=goal, **args)


def _picked(ch: Any) -> list[tuple[str, list[int]]]:
    return [(r["group"], r["indices"]) for r in ch.removed]


def test_without_penalty_the_globally_least_salient_units_go_first() -> None:
    ch = _choose({"mlp_dim": 1.0, "heads": 1.0}, eta_abs=0.0, max_units=4)
    # scores in order: mlp 1 (1.0), heads 0 (2.0), mlp 3 (3.0), heads 2 (4.0)
    assert _picked(ch) == [("mlp_dim0", [1]), ("heads0", [0]), ("mlp_dim0", [3]), ("heads0", [2])]
    assert ch.alive[0].tolist() == [True, False, True, False] and ch.alive[1].tolist() == [False, True, False]


def test_penalty_ranks_by_saliency_minus_eta_times_saving() -> None:
    # heads save 10 per unit, MLP neurons 1; eta_abs 0.5: heads score s - 5, MLP s - 0.5
    ch = _choose({"mlp_dim": 1.0, "heads": 10.0}, eta_abs=0.5, max_units=3)
    # candidates: heads 0: 2-5=-3, mlp 1: 1-0.5=0.5 -> heads 0; then heads 2: 4-5=-1 -> heads 2;
    # then heads 1 is the last head (minimum 1): only MLP -> mlp 1
    assert _picked(ch) == [("heads0", [0]), ("heads0", [2]), ("mlp_dim0", [1])]
    assert [r["score"] for r in ch.removed] == [-3.0, -1.0, 0.5]


def test_minimum_widths_are_kept() -> None:
    with pytest.raises(BudgetError, match="minimum"):
        _choose({"mlp_dim": 1.0, "heads": 1.0}, eta_abs=0.0, minimum={"mlp_dim": 3, "heads": 2}, goal=0.0)
    ch = _choose({"mlp_dim": 1.0, "heads": 1.0}, eta_abs=0.0, minimum={"mlp_dim": 3, "heads": 2}, goal=5.0)
    assert int(ch.alive[0].sum()) == 3 and int(ch.alive[1].sum()) == 2
    assert _picked(ch) == [("mlp_dim0", [1]), ("heads0", [0])]


def test_units_of_two_are_offered_together() -> None:
    ch = _choose({"mlp_dim": 1.0, "heads": 1.0}, eta_abs=0.0, unit={"mlp_dim": 2, "heads": 1}, max_units=1)
    # MLP pair {1, 3}: 1 + 3 = 4 vs head 0: 2 -> the head; then pair 4 vs head 2: 4 -> tie goes to the lower gid (MLP)
    assert _picked(ch) == [("heads0", [0])]
    ch = _choose({"mlp_dim": 1.0, "heads": 1.0}, eta_abs=0.0, unit={"mlp_dim": 2, "heads": 1}, max_units=2)
    assert _picked(ch) == [("heads0", [0]), ("mlp_dim0", [1, 3])]


def test_the_goal_cost_stops_the_step() -> None:
    ch = _choose({"mlp_dim": 1.0, "heads": 2.0}, eta_abs=0.0, goal=8.0)  # cost 4 + 6 = 10 at the start
    # 10 -> 9, then the head (next by score) would overshoot to 7: the next MLP unit lands on 8 exactly
    assert _picked(ch) == [("mlp_dim0", [1]), ("mlp_dim0", [3])]


def test_when_every_removal_overshoots_the_smallest_overshoot_is_taken() -> None:
    ch = _choose({"mlp_dim": 3.0, "heads": 2.0}, eta_abs=0.0, goal=17.5)  # cost 12 + 6: need 0.5, both overshoot
    assert _picked(ch) == [("heads0", [0])]  # the cheaper one (18 -> 16), not the MLP unit first by score (-> 15)


def test_knapsack_ranks_by_score_per_unit_of_the_targets_cost() -> None:
    """A head saves 5 of the target's cost, an MLP unit 1: by score the cheap MLP unit goes first, by score per
    unit saved the head (2 / 5 < 1 / 1)."""
    weight = {"mlp_dim": 1.0, "heads": 5.0}
    ch = _choose(weight, eta_abs=0.0, max_units=4, ranking="knapsack")
    # keys: heads 0: 2/5, heads 2: 4/5, MLP 1: 1, MLP 3: 3; heads 1 is the last head (minimum 1)
    assert _picked(ch) == [("heads0", [0]), ("heads0", [2]), ("mlp_dim0", [1]), ("mlp_dim0", [3])]
    assert _picked(_choose(weight, eta_abs=0.0, max_units=4)) == [
        ("mlp_dim0", [1]), ("heads0", [0]), ("mlp_dim0", [3]), ("heads0", [2])]
    with pytest.raises(ValueError, match="ranking"):
        _choose(weight, eta_abs=0.0, max_units=1, ranking="ratio")


def test_knapsack_trades_units_dear_in_the_penalty_for_cheap_ones_at_equal_target_cost() -> None:
    """MACs target (a head 1.6, an MLP unit 1), latency penalty where a head is dear per MAC (8, against 1): by
    saliency per MAC the MLP unit goes first, with the penalty the heads; a penalty of the target's own cost
    changes nothing under the knapsack (every key shifts by eta_abs), where by score it does."""
    macs, lat = Units(GROUPS, {"mlp_dim": 1.0, "heads": 1.6}), Units(GROUPS, {"mlp_dim": 1.0, "heads": 8.0})

    def run(penalty: Units, eta_abs: float, ranking: str) -> Any:
        return choose(GROUPS, SCORES, _alive(), config_of=lambda a: {gid: int(m.sum()) for gid, m in a.items()},
                      cost=macs, penalty=penalty, goal=-1.0, unit={"mlp_dim": 1, "heads": 1},
                      minimum={"mlp_dim": 1, "heads": 1}, eta=1.0, eta_abs=eta_abs, max_units=2, ranking=ranking)

    # eta 0: MLP 1 (1 / 1) before heads 0 (2 / 1.6), then heads 0 before MLP 3 (3 / 1)
    assert _picked(run(lat, 0.0, "knapsack")) == [("mlp_dim0", [1]), ("heads0", [0])]
    # eta_abs 1: heads 0 (2 - 8) / 1.6 = -3.75 and heads 2 (4 - 8) / 1.6 = -2.5 before MLP 1 (1 - 1) / 1 = 0
    assert _picked(run(lat, 1.0, "knapsack")) == [("heads0", [0]), ("heads0", [2])]
    for eta_abs in (0.5, 3.0, 100.0):
        assert _picked(run(macs, eta_abs, "knapsack")) == _picked(run(macs, 0.0, "knapsack"))
    # by score: eta 3 makes heads 0 (2 - 4.8) go before MLP 1 (1 - 3)
    assert _picked(run(macs, 3.0, "nvit"))[0] == ("heads0", [0]) != _picked(run(macs, 0.0, "nvit"))[0]


class Squares(Units):
    """A cost that is not linear in the heads: removing k heads saves k^2 (one head little, two much more)."""

    def saving(self, counts: Any, kind: str, block: int | None, units: int) -> float:
        return float(units ** 2) if kind == "heads" else self.weight[kind] * units


def test_knapsack_offers_several_units_of_a_group_at_once() -> None:
    """Under the knapsack a group also offers its 2, 3, ... lowest units together: two heads save 4 where one
    saves 1, and go together; NViT's ranking offers single units only.  eta is calibrated on single units."""
    macs, lat = Units(GROUPS, {"mlp_dim": 1.0, "heads": 1.0}), Squares(GROUPS, {"mlp_dim": 1.0, "heads": 1.0})

    def run(ranking: str, eta_abs: float | None = 3.0) -> Any:
        return choose(GROUPS, SCORES, _alive(), config_of=lambda a: {gid: int(m.sum()) for gid, m in a.items()},
                      cost=macs, penalty=lat, goal=-1.0, unit={"mlp_dim": 1, "heads": 1},
                      minimum={"mlp_dim": 1, "heads": 1}, eta=2.0, eta_abs=eta_abs, max_units=1, ranking=ranking)

    # keys (score - 3 x saving) / MACs: MLP 1 -2, heads 0 -1, heads {0, 2} (6 - 12) / 2 = -3, MLP {1, 3} -1,
    # MLP {1, 3, 0} 0; the last head is kept (minimum 1), so no chunk of three heads
    ch = run("knapsack")
    assert [(r["group"], sorted(r["indices"]), r["units"]) for r in ch.removed] == [("heads0", [0, 2], 2)]
    assert ch.alive[1].tolist() == [False, True, False]
    assert _picked(run("nvit")) == [("mlp_dim0", [1])]  # scores: MLP 1 -2, heads 0 -1
    # single units: saliency 1, 2 and savings 1, 1 -> eta_abs = 2 x 1 / 1 (with the chunks' it would be 4)
    assert run("knapsack", eta_abs=None).eta_abs == 2.0


def test_chunk_sizes_cover_small_counts_and_grow_geometrically() -> None:
    from revit.prune.policy import chunk_sizes

    assert chunk_sizes(1) == [] and chunk_sizes(2) == [2] and chunk_sizes(8) == list(range(2, 9))
    for n in (9, 24, 47, 190, 383):
        got = chunk_sizes(n)
        assert got[:7] == list(range(2, 9)) and got[-1] == n and got == sorted(set(got))
        assert all(b <= max(a + 1, round(a * 1.25)) for a, b in zip(got, got[1:], strict=False)), got
        assert len(got) <= 8 + 2 * math.ceil(math.log(n / 8, 1.25)), got  # geometric, not one per count


def test_eta_is_calibrated_from_medians_once() -> None:
    cost = Units(GROUPS, {"mlp_dim": 1.0, "heads": 4.0})
    cands = candidates(GROUPS, SCORES, _alive(), {"mlp_dim": 1, "heads": 1}, {"mlp_dim": 1, "heads": 1},
                       {0: 4, 1: 3}, cost)  # type: ignore[arg-type]
    assert [(c.saliency, c.saving) for c in cands] == [(1.0, 1.0), (2.0, 4.0)]
    # torch's median of two values is the lower one: saliency 1, saving 1 -> eta_abs = 2 * 1 / 1
    assert calibrate_eta(2.0, cands) == 2.0
    assert calibrate_eta(0.0, cands) == 0.0
    ch = _choose({"mlp_dim": 1.0, "heads": 4.0}, max_units=1, eta=2.0)
    assert ch.eta_abs == 2.0


def test_schedule_by_budget_reaches_the_target_at_the_end() -> None:
    s = Schedule.by_budget(100)
    assert s.prune_steps == 32 and s.interval == 3 and s.budget == 96
    assert [c for c in range(1, 101) if s.due(c)][31] == 96  # the K-th (last planned) step
    goals = [s.goal(k, 0, 100.0, 40.0)[0] for k in range(1, 33)]
    assert goals[0] == pytest.approx(100 - 60 / 32) and goals[-1] == 40.0
    assert all(a > b for a, b in zip(goals, goals[1:], strict=False))
    assert s.goal(40, 0, 100.0, 40.0) == (40.0, None)  # past the budget: the target itself
    short = Schedule.by_budget(5)
    assert short.prune_steps == 2 and short.interval == 2


def test_fixed_schedules_and_bad_ones() -> None:
    assert Schedule(interval=100, per_step=2).goal(1, 90.0, 100.0, 50.0) == (50.0, 2)
    assert Schedule(interval=10, step_fraction=0.1).goal(3, 90.0, 100.0, 50.0) == (80.0, None)
    for bad in (dict(interval=0, per_step=1), dict(interval=1), dict(interval=1, per_step=1, prune_steps=2),
                dict(interval=1, step_fraction=1.5)):
        with pytest.raises(ConfigError):
            Schedule(**bad)  # type: ignore[arg-type]
