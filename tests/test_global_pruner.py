"""GlobalPruner as a library: the README loop on a plain timm ViT, objects for criterion and cost, AMP, resume."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

README = Path(__file__).resolve().parents[1] / "README.md"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def flop_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """MACs of one forward pass counted by torch's FlopCounterMode (math attention), independently of revit."""
    model.eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops() // 2)


def readme_example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- example: global-pruner -->\n```python\n(.*?)```", text, re.S)
    assert m, "the README lost its GlobalPruner example"
    return m.group(1)


def test_readme_loop_on_a_timm_vit() -> None:
    """The README's snippet, verbatim: <= 50% MACs by FlopCounterMode, dense == masked within 1e-4."""
    from timm.models.vision_transformer import VisionTransformer

    ns: dict[str, Any] = {}
    torch.manual_seed(0)
    exec(compile(readme_example(), str(README), "exec"), ns)
    model, pruner, dense, trace = ns["model"], ns["pruner"], ns["dense"], ns["trace"]
    assert isinstance(model, VisionTransformer) and not hasattr(model, "config")
    x = torch.randn(4, 1, 28, 28)
    base, pruned = flop_macs(model, x[:1]), flop_macs(dense, x[:1])
    assert pruned <= 0.5 * base, (pruned, base)
    assert trace.steps[-1].macs == pruned and trace.steps[0].macs == base  # revit's counting == torch's
    net = pruner.model.eval()
    with torch.no_grad():
        diff = float((net(x) - dense.eval()(x)).abs().max())
    assert diff <= 1e-4, diff
    assert pruner.steps == len(trace.steps) - 1 <= pruner.schedule.prune_steps  # reached within the budget
    assert pruner.done
    assert type(dense) is type(net) and dense.config == trace.steps[-1].config(trace.base_config)


def _tiny() -> Any:
    from revit.config import BlockDims, ViTConfig
    from revit.models import build_model

    torch.manual_seed(0)
    cfg = ViTConfig(embed_dim=16, blocks=(BlockDims(2, 4, 4, 32),) * 2, img_size=8, patch_size=2, in_chans=1,
                    num_classes=10)
    return build_model(cfg)


def _batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def _run(pruner: Any, batches: list[tuple[torch.Tensor, torch.Tensor]], scaler: Any = None,
         opt: Any = None) -> None:
    net = pruner.model
    opt = opt if opt is not None else torch.optim.AdamW(net.parameters(), lr=1e-3)
    for xb, yb in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=scaler is not None):
            loss = F.cross_entropy(net(xb).float(), yb)
        opt.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        pruner.accumulate(loss)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        pruner.step()


def test_objects_in_place_of_names_give_the_same_run() -> None:
    from revit.cost import MacsCost
    from revit.prune import GlobalPruner
    from revit.prune.criteria import Hessian

    batches = _batches(12)
    a = GlobalPruner(_tiny(), target_macs=0.6, criterion="hessian", total_steps=12, granularity="one")
    _run(a, batches)
    b = GlobalPruner(_tiny(), target_macs=0.6, criterion=Hessian(), penalty=MacsCost(), total_steps=12,
                     granularity="one")
    _run(b, batches)
    assert [s.to_dict() for s in a.trace.steps] == [s.to_dict() for s in b.trace.steps]
    assert a.done and a.trace.header["criterion"] == "hessian"


def test_target_and_schedule_objects_are_the_shorthands() -> None:
    """``target=CostTarget.macs(r), schedule=Schedule.by_budget(N)`` is the run of ``target_macs=r, total_steps=N``;
    NViT's ``Schedule.fixed(interval, per_step)`` removes ``per_step`` units every ``interval`` calls."""
    from revit.prune import CostTarget, GlobalPruner, Schedule

    batches = _batches(12)
    a = GlobalPruner(_tiny(), target_macs=0.6, total_steps=12, granularity="one")
    _run(a, batches)
    b = GlobalPruner(_tiny(), target=CostTarget.macs(0.6), schedule=Schedule.by_budget(12), granularity="one")
    _run(b, batches)
    assert [s.to_dict() for s in a.trace.steps] == [s.to_dict() for s in b.trace.steps]
    assert a.header() == b.header() and b.target == CostTarget("macs", 0.6)

    c = GlobalPruner(_tiny(), target=CostTarget.macs(0.6), schedule=Schedule.fixed(interval=3, per_step=2),
                     granularity="one")
    _run(c, batches)
    steps = c.trace.steps
    assert len(steps) > 1 and [s.extra["batches"] for s in steps[1:]] == [3 * k for k in range(1, len(steps))]
    assert all(sum(r["units"] for r in s.extra["removed"]) <= 2 for s in steps[1:])
    assert "removing 2 units" in c.schedule.describe() and Schedule.fixed() == Schedule(interval=100, per_step=2)


def test_target_and_schedule_refuse_bad_values() -> None:
    from revit.errors import ConfigError, UnknownNameError
    from revit.prune import CostTarget, GlobalPruner, Schedule

    with pytest.raises(UnknownNameError, match="flops"):
        CostTarget("flops", 0.5)
    for make, msg in ((lambda: CostTarget.macs(1.0), "fraction"),
                      (lambda: CostTarget.macs(float("inf")), "finite"), (lambda: CostTarget.macs(True), "finite"),
                      (lambda: CostTarget.of(), "exactly one"),
                      (lambda: CostTarget.of(macs=0.5, latency=0.5), "exactly one"),
                      (lambda: CostTarget.latency(0.5).cost_model(None), "latency table"),
                      (lambda: Schedule.fixed(per_step=2, step_fraction=0.1), "at most one"),
                      (lambda: Schedule.fixed(interval=0), "interval"),
                      (lambda: Schedule.by_budget(0), "total_steps")):
        with pytest.raises(ConfigError, match=msg):
            make()
    for kw, msg in ((dict(target=CostTarget.macs(0.5), target_macs=0.5, total_steps=4), "not both"),
                    (dict(target=0.5, total_steps=4), "must be a relative CostTarget"),
                    (dict(target=CostTarget.macs(0.5), schedule=Schedule.by_budget(4), total_steps=4), "not both"),
                    (dict(target=CostTarget.macs(0.5), schedule=4), "must be a Schedule")):
        with pytest.raises(ConfigError, match=msg):
            GlobalPruner(_tiny(), **kw)  # type: ignore[arg-type]
    assert CostTarget.of(latency=0.6) == CostTarget.latency(0.6) and CostTarget.macs(0.5).cost_model().name == "macs"


def test_budget_is_met_and_masks_keep_shapes() -> None:
    from revit.prune import GlobalPruner

    p = GlobalPruner(_tiny(), target_macs=0.5, total_steps=20, granularity="one")
    shapes = {k: v.shape for k, v in p.model.state_dict().items()}
    _run(p, _batches(20))
    assert p.done and p.calls == 20
    assert {k: v.shape for k, v in p.model.state_dict().items()} == shapes
    macs = [s.macs for s in p.trace.steps]
    assert macs[-1] <= 0.5 * macs[0] < macs[-2]
    # the k-th step aims at base - k/K (base - target): never far below its goal
    k_total = p.schedule.prune_steps
    for k, m in enumerate(macs[1:], start=1):
        goal = macs[0] - min(1.0, k / k_total) * 0.5 * macs[0]
        assert m <= goal


def test_gradscaler_path_and_state_round_trip() -> None:
    """A GradScaler loop (accumulate after unscale_) prunes; state_dict resumes the policy exactly."""
    from revit.prune import GlobalPruner

    batches = _batches(16, seed=1)
    full = GlobalPruner(_tiny(), target_macs=0.6, total_steps=16, granularity="one")
    _run(full, batches, scaler=torch.amp.GradScaler("cpu"))
    assert full.done

    model = _tiny()
    first = GlobalPruner(model, target_macs=0.6, total_steps=16, granularity="one")
    _run(first, batches[:8], scaler=torch.amp.GradScaler("cpu"))
    state = first.state_dict()
    assert all(t.device.type == "cpu" for t in state["alive"].values())
    second = GlobalPruner(model, target_macs=0.6, total_steps=16, granularity="one")
    second.load_state_dict(state)
    assert second.current_config() == first.current_config() and second.calls == 8


def test_bad_arguments_are_one_clear_error() -> None:
    from revit.errors import ConfigError
    from revit.prune import GlobalPruner

    for kw, msg in ((dict(target_macs=0.5), "total_steps"), (dict(target_macs=float("nan"), total_steps=4), "finite"),
                    (dict(target_macs=1.5, total_steps=4), "fraction"), (dict(total_steps=4), "exactly one"),
                    (dict(target_latency=0.5, total_steps=4), "latency table"),
                    (dict(target_macs=0.5, total_steps=4, eta=-1.0), "eta")):
        with pytest.raises(ConfigError, match=msg):
            GlobalPruner(_tiny(), **kw)  # type: ignore[arg-type]
    p = GlobalPruner(_tiny(), target_macs=0.5, total_steps=2, granularity="one")
    p.step()
    with pytest.raises(ConfigError, match="accumulate"):
        p.step()


def test_graphed_scoring_bookkeeping_equals_eager() -> None:
    """The CUDA-graph path's sums, flushes and state saves give the eager run's trace (graph replaced by an
    eager stand-in with the same bookkeeping, since this machine has no GPU)."""
    from revit.prune import GlobalPruner
    from revit.prune.global_pruner import _GraphedScores

    class EagerGraph(_GraphedScores):
        def __init__(self, criterion: Any, params: Any, grads: Any) -> None:  # no capture: same sums, eagerly
            self.criterion, self.params, self.names, self.count = criterion, params, sorted(grads), 0
            out = criterion(params, grads)
            self.gids = sorted(out)
            self.sums = [torch.zeros_like(out[g]) for g in self.gids]

        def add(self, grads: Any) -> None:
            out = self.criterion(self.params, grads)
            torch._foreach_add_(self.sums, [out[g] for g in self.gids])
            self.count += 1

    batches = _batches(12, seed=2)
    eager = GlobalPruner(_tiny(), target_macs=0.6, total_steps=12, granularity="one")
    _run(eager, batches)
    graphed = GlobalPruner(_tiny(), target_macs=0.6, total_steps=12, granularity="one")
    params = dict(graphed.model.named_parameters())
    graphed._graph = EagerGraph(graphed.criterion, params, {k: torch.zeros_like(p) for k, p in params.items()})
    opt = torch.optim.AdamW(graphed.model.parameters(), lr=1e-3)
    _run(graphed, batches[:5], opt=opt)
    assert graphed._graph.count == 1  # call 5 is pending in the graph's sums (steps at calls 2 and 4)
    state = graphed.state_dict()  # flushes the pending sums into the accumulator
    assert graphed._graph.count == 0 and graphed.acc.count == 1
    _run(graphed, batches[5:], opt=opt)
    for a, b in zip(graphed.trace.steps, eager.trace.steps, strict=True):
        da, db = a.to_dict(), b.to_dict()
        assert da == db, {k: (da[k], db[k]) for k in da if da[k] != db[k]}
    assert state["calls"] == 5


def test_prune_now_steps_off_schedule_like_a_due_step() -> None:
    """prune_now() removes exactly what a due step() would, from the same scores; after the target it refuses."""
    import copy

    from revit.errors import BudgetError
    from revit.prune import GlobalPruner

    net = _tiny()
    a = GlobalPruner(copy.deepcopy(net), target_macs=0.5, total_steps=4, granularity="one")
    b = GlobalPruner(copy.deepcopy(net), target_macs=0.5, total_steps=4, granularity="one")
    b.schedule = dataclasses.replace(b.schedule, interval=10**6)  # its schedule never falls due
    first = _batches(a.schedule.interval)
    _run(a, first)
    _run(b, first)
    assert b.steps == 0 and a.steps == 1
    b.prune_now()
    assert [s.to_dict() for s in b.trace.steps] == [s.to_dict() for s in a.trace.steps]
    while not b.done:
        _run(b, _batches(1, seed=b.steps))
        b.prune_now()
    with pytest.raises(BudgetError, match="already met"):
        b.prune_now()


@pytest.mark.parametrize("criterion", ["hessian", "magnitude", "nvit-code", "taylor", "random"])
def test_every_criterion_ends_within_one_unit_of_the_target(criterion: str) -> None:
    """A 0.5 MACs target ends at most one unit's saving below 0.5, whatever the criterion ranks lowest (magnitude
    ranks an 8-wide embedding slice first: 8% of the MACs in one removal, which used to end it at 0.43)."""
    from revit import counting
    from revit.config import BlockDims, ViTConfig
    from revit.cost import MacsCost, shrink
    from revit.models import build_model
    from revit.prune import GlobalPruner

    torch.manual_seed(0)
    cfg = ViTConfig(embed_dim=48, blocks=(BlockDims(4, 8, 8, 96),) * 3, img_size=8, patch_size=2, in_chans=1,
                    num_classes=10)
    pruner = GlobalPruner(build_model(cfg), target_macs=0.5, criterion=criterion, total_steps=12, granularity="micro")
    _run(pruner, _batches(12))
    assert pruner.done
    end = pruner.current_config()
    base = counting.macs(cfg)
    ratio = counting.macs(end) / base
    # the smallest saving one more removal of any block width could make at the end (granularity "micro")
    unit = {"heads": 1, "qk_dim": 4, "v_dim": 4, "mlp_dim": 8}
    smallest = min(MacsCost().cost(end) - MacsCost().cost(shrink(end, k, i, u)) for k, u in unit.items()
                   for i, b in enumerate(end.blocks) if getattr(b, k) > u)
    assert 0.5 - smallest / base <= ratio <= 0.5, (ratio, smallest / base)
