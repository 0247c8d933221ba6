"""The knapsack ranking on a real model: candidates ranked by score per unit of the target's cost saved, several
units of a group at once.  A penalty of the target's own cost changes nothing under it; a penalty in which heads
are dear per MAC makes it remove heads where NViT's ranking, at the same eta, keeps them; ``revit prune
--ranking`` records the choice and a resume that changes it is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from revit import counting
from revit.config import BlockDims, ViTConfig
from revit.cost import CostModel, MacsCost
from tests.test_depth_prune import CFG, STEPS, digit_batches, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# two blocks of 4 heads, so that heads have room to go (the micro granularity's head unit is one head)
WIDE = ViTConfig(embed_dim=16, blocks=(BlockDims(4, 4, 4, 64),) * 2, img_size=8, patch_size=2, in_chans=1,
                 num_classes=10)

NARROW = ViTConfig(embed_dim=16, blocks=(BlockDims(4, 4, 4, 32),) * 2, img_size=8, patch_size=2, in_chans=1,
                   num_classes=10)


class DearHeads(MacsCost):
    """MACs, plus 2% of the base MACs for every head whatever its width: a device where a head's fixed work (a
    softmax, a small matmul per head) costs more than its MACs say."""

    name = "dear-heads"

    def cost(self, cfg: ViTConfig) -> float:
        return super().cost(cfg) + 0.02 * counting.macs(WIDE) * sum(b.heads for b in cfg.blocks)

    def saving(self, cfg: ViTConfig, kind: str, block: int | None, units: int) -> float:
        return CostModel.saving(self, cfg, kind, block, units)  # of this cost, not MacsCost's per-block MACs


def prune(ranking: str, eta: float, penalty: Any = None, cfg: ViTConfig = WIDE, ratio: float = 0.5) -> Any:
    from revit.models import build_model
    from revit.prune import GlobalPruner

    torch.manual_seed(0)
    return GlobalPruner(build_model(cfg), target_macs=ratio, total_steps=STEPS, granularity="micro",
                        keep_depth=True, ranking=ranking, eta=eta, penalty=penalty)


def decisions(p: Any) -> list[list[tuple[str, list[int]]]]:
    return [[(r["group"], r["indices"]) for r in st.extra["removed"]] for st in p.trace.steps]


def test_under_the_knapsack_a_penalty_of_the_targets_cost_changes_nothing(digits: Any) -> None:
    """Every key shifts by eta_abs: eta 0 and eta 5 remove the same units in the same order (by score, they do
    not), and the run reaches its target."""
    batches = digit_batches(digits)
    runs = {}
    for ranking in ("knapsack", "nvit"):
        for eta in (0.0, 5.0):
            p = prune(ranking, eta, cfg=NARROW)
            train(p, batches)
            assert p.done and counting.macs(p.current_config()) <= 0.5 * counting.macs(NARROW)
            runs[ranking, eta] = decisions(p)
    assert runs["knapsack", 0.0] == runs["knapsack", 5.0]
    assert runs["nvit", 0.0] != runs["nvit", 5.0]


def test_a_penalty_dear_in_heads_trades_heads_for_mlp_at_equal_macs(digits: Any) -> None:
    """Latency-aware against MACs-only, both ranked by the knapsack to the same MACs target in two steps: with a
    penalty where a head costs twice its MACs, the run keeps fewer heads and more MLP neurons, and its config is
    cheaper by that penalty's measure (what the benchmark `prune_latency.py` asks of a latency table)."""
    from revit.models import build_model
    from revit.prune import GlobalPruner
    from revit.recipes import Schedule

    batches = digit_batches(digits)
    got = {}
    for name, eta, penalty in (("latency-aware", 50.0, DearHeads()), ("macs-only", 0.0, None)):
        torch.manual_seed(0)
        p = GlobalPruner(build_model(WIDE), target_macs=0.6, schedule=Schedule.by_budget(STEPS, 2),
                         granularity="micro", keep_depth=True, ranking="knapsack", eta=eta, penalty=penalty)
        train(p, batches)
        assert p.done and counting.macs(p.current_config()) <= 0.6 * counting.macs(WIDE)
        got[name] = p.current_config()
    aware, plain = got["latency-aware"], got["macs-only"]
    assert sum(b.heads for b in aware.blocks) < sum(b.heads for b in plain.blocks), (aware, plain)
    assert sum(b.mlp_dim for b in aware.blocks) > sum(b.mlp_dim for b in plain.blocks)
    assert DearHeads().cost(aware) < DearHeads().cost(plain)


def test_revit_prune_ranking_is_recorded_and_a_resume_that_changes_it_is_refused(cli: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    CFG.save(cfg)
    run = ["prune", "--model", cfg, "--data", "digits", "--train-limit", "256", "--val-size", "64", "--test-limit",
           "0", "--batch-size", "32", "--epochs", "1", "--eval-size", "0", "--threads", "1", "--granularity",
           "micro", "--no-progress", "--seed", "0", "--target-macs", "0.5", "--out", tmp_path / "run"]
    code, _, err = cli(*run, "--ranking", "knapsack")
    assert code == 0, err
    assert "eta 1 is moot" in err  # no table: the penalty is the target's MACs, which the knapsack ranks by
    lines = [json.loads(x) for x in (tmp_path / "run" / "trace.jsonl").read_text().splitlines()]
    assert lines[0]["settings"]["ranking"] == "knapsack" and lines[0]["ranking"] == "knapsack"
    marker = json.loads((tmp_path / "run" / ".revit-run.json").read_text())
    marker["finished"] = False  # as if killed before its end
    (tmp_path / "run" / ".revit-run.json").write_text(json.dumps(marker))
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    code, _, err = cli(*run, "--resume")
    assert code == 2 and "ranking" in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before
    code, _, err = cli(*run[:-2], "--ranking", "ratio", "--out", tmp_path / "bad")
    assert code == 2 and "ratio" in err and not (tmp_path / "bad").exists()
