"""Issue 30 item 2: the global pruner removes structures.  A branch whose widths are at their minimum competes as a
whole (its saliency the sum of its units' scores, its saving the branch's cost), the block goes with its last
branch; the dense export, the hub format and FlopCounterMode agree with the masked model; ``keep_depth`` never
removes anything; the trace names the removals at the base's block indices; a resumed prune continues identically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from revit import counting
from revit.config import REMOVED, BlockDims, ViTConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 3 blocks of (2 heads of 4, MLP 16) at 8x8: with the micro granularity (E8 H1 QK4 V4 MLP8) the widths alone
# stop at 0.306 of the MACs, so a 0.2 target is met only by removing branches (and, here, a whole block)
CFG = ViTConfig(embed_dim=16, blocks=(BlockDims(2, 4, 4, 16),) * 3, img_size=8, patch_size=2, in_chans=1,
                num_classes=10)
STEPS = 8


def flop_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """MACs of one image counted by torch's FlopCounterMode (math attention), independently of revit."""
    model.eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(x[:1])
    return int(fc.get_total_flops() // 2)


def digit_batches(digits: Any, n: int = STEPS, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ds = digits.train
    xs = torch.stack([ds[i][0] for i in range(n * size)])
    ys = torch.tensor([int(ds[i][1]) for i in range(n * size)])
    return [(xs[i * size:(i + 1) * size], ys[i * size:(i + 1) * size]) for i in range(n)]


def pruner(ratio: float = 0.2, **kw: Any) -> Any:
    from revit.models import build_model
    from revit.prune import GlobalPruner

    torch.manual_seed(0)
    return GlobalPruner(build_model(CFG), target_macs=ratio, total_steps=STEPS, granularity="micro", **kw)


def train(p: Any, batches: list[tuple[torch.Tensor, torch.Tensor]], opt: Any = None) -> Any:
    opt = opt if opt is not None else torch.optim.AdamW(p.model.parameters(), lr=1e-3)
    for xb, yb in batches:
        loss = F.cross_entropy(p.model(xb), yb)
        opt.zero_grad()
        loss.backward()
        p.accumulate(loss)
        opt.step()
        p.step()
    return opt


def test_a_pruned_branch_and_block_export_dense_and_reload_through_timm(digits: Any, tmp_path: Path) -> None:
    """MUST SHOW: prune until a branch and a whole block go; the dense export, and its hub folder reloaded by
    ``timm.create_model('local-dir:...', pretrained=True)``, give the masked model's outputs within 1e-5, with
    the MACs FlopCounterMode counts."""
    import timm

    from revit.models import ModelCard, save_pretrained

    p = pruner()
    batches = digit_batches(digits)
    train(p, batches)
    assert p.done
    last = p.trace.steps[-1]
    assert len(last.blocks) == CFG.depth  # the base's indices: a removed block stays at its place
    assert REMOVED in last.blocks, last.blocks  # a whole block went
    assert any(not b.is_removed and not (b.has_attention and b.has_mlp) for b in last.blocks)  # and a branch
    dense, trace = p.export()
    dense.eval()
    assert dense.config == last.config(CFG) and dense.config.depth < CFG.depth
    assert counting.macs(dense.config) <= 0.2 * counting.macs(CFG) < counting.macs(min_widths())
    x = torch.cat([xb for xb, _ in batches[:2]])
    p.model.eval()
    with torch.no_grad():
        masked = p.model(x)
        assert (dense(x) - masked).abs().max().item() < 1e-5
    assert flop_macs(dense, x) == counting.macs(dense.config) == last.macs

    out = save_pretrained(dense, tmp_path / "hub", card=ModelCard(base="micro (test)", base_config=CFG))
    again = timm.create_model(f"local-dir:{out.resolve()}", pretrained=True).eval()
    with torch.no_grad():
        assert (again(x) - masked).abs().max().item() < 1e-5
    assert flop_macs(again, x) == last.macs


def min_widths() -> ViTConfig:
    from revit.cost import min_config

    return min_config(CFG, {"embed_dim": 8, "heads": 1, "qk_dim": 4, "v_dim": 4, "mlp_dim": 8})


def test_the_trace_names_the_removals_at_the_base_indices(digits: Any, tmp_path: Path) -> None:
    """Each removing step says which block lost its attention or MLP or was removed; the blocks written and read
    back keep the base's length with zero widths where parts went; the plots are drawn."""
    from revit.prune.plots import plot_trace
    from revit.trace import Trace, TraceWriter

    p = pruner()
    train(p, digit_batches(digits))
    trace = p.trace
    seen: dict[int, set[str]] = {}
    for prev, st in zip(trace.steps, trace.steps[1:], strict=False):
        named = st.extra.get("removals", [])
        assert named == [{"block": r["block"], "removes": r["removes"]} for r in st.extra["removed"] if "block" in r]
        for r in named:
            seen.setdefault(r["block"], set()).add(r["removes"])
        # what the step names is exactly what changed in its blocks (recomputed from the widths)
        lost = {(i, "attention") for i, (a, b) in enumerate(zip(prev.blocks, st.blocks, strict=True))
                if a.has_attention and not b.has_attention}
        lost |= {(i, "mlp") for i, (a, b) in enumerate(zip(prev.blocks, st.blocks, strict=True))
                 if a.has_mlp and not b.has_mlp}
        named_lost = {(r["block"], r["branch"]) for r in st.extra["removed"] if "branch" in r}
        assert named_lost == lost
        for r in st.extra["removed"]:
            if "branch" in r:
                assert (r["removes"] == "block") == st.blocks[r["block"]].is_removed
    final = trace.steps[-1].blocks
    assert {i for i, kinds in seen.items() if "block" in kinds} == {i for i, b in enumerate(final) if b.is_removed}
    path = tmp_path / "trace.jsonl"
    w = TraceWriter(path, header={k: v for k, v in trace.header.items() if k != "schema"})
    for st in trace.steps:
        w.append(st)
    back = Trace.load(path)
    assert [s.blocks for s in back.steps] == [s.blocks for s in trace.steps]
    assert json.loads(path.read_text().splitlines()[-1])["blocks"][[i for i, b in enumerate(final)
                                                                     if b.is_removed][0]] == REMOVED.to_dict()
    assert back.steps[-1].config(back.base_config) == p.current_config()
    assert [f.name for f in plot_trace(path, tmp_path / "plots")] == ["widths_vs_step.png", "final_profile.png"]


def test_keep_depth_never_removes_a_branch(digits: Any) -> None:
    """At a target the widths can reach, the default run removes branches here and ``keep_depth`` none; below the
    widths' floor ``keep_depth`` is refused in one line that says removals would reach it."""
    from revit.errors import BudgetError

    batches = digit_batches(digits)
    free, kept = pruner(0.32), pruner(0.32, keep_depth=True)
    train(free, batches)
    train(kept, batches)
    assert free.done and kept.done
    assert any(s.extra.get("removals") for s in free.trace.steps)
    for st in kept.trace.steps:
        assert all(b.has_attention and b.has_mlp for b in st.blocks) and "removals" not in st.extra
        assert all("branch" not in r for r in st.extra["removed"])
    assert kept.trace.header["keep_depth"] is True and "keep_depth" not in free.trace.header
    with pytest.raises(BudgetError, match=r"cannot be reached without removing a branch or a block \(keep_depth\)"
                                          r".*allow removals") as e:
        pruner(0.2, keep_depth=True)
    assert "\n" not in str(e.value)


def test_branch_saliency_and_saving_are_the_branch_s(digits: Any) -> None:
    """The branch candidate's saliency is the sum of its remaining units' scores and its saving the MACs
    of the branch (the attention matmuls included), as counted from the model by FlopCounterMode."""
    from revit.cost import MacsCost
    from revit.models import build_model
    from revit.prune.policy import block_positions, branch_candidates

    p = pruner()
    train(p, digit_batches(digits, n=3))  # some widths at their minimum, every branch still there
    s = p.structure
    scores = {gid: torch.rand(g.size, generator=torch.Generator().manual_seed(gid)) for gid, g in
              enumerate(s.groups)}
    cfg = p.current_config()
    cands = branch_candidates(s.groups, scores, p.masks.alive, p.unit, p.minimum, cfg, MacsCost(),
                              block_positions(s.groups, p.masks.alive))
    assert cands, "no branch reached its minimum width"
    x = torch.zeros(1, 1, 8, 8)
    for c in cands:
        g = s.groups[c.gid]
        alive = p.masks.alive[c.gid]
        assert c.saliency == pytest.approx(float(scores[c.gid][alive].double().sum()), rel=1e-12)
        b = cfg.blocks[g.block]
        without = (BlockDims(0, 0, 0, b.mlp_dim) if c.branch == "attention"
                   else BlockDims(b.heads, b.qk_dim, b.v_dim, 0))
        blocks = list(cfg.blocks)
        blocks[g.block] = without
        assert c.saving == flop_macs(build_model(cfg), x) - flop_macs(build_model(cfg.with_blocks(blocks)), x)
    assert {c.branch for c in cands} <= {"attention", "mlp"}


def test_a_resumed_prune_with_removals_continues_identically(digits: Any, tmp_path: Path) -> None:
    """Killed after a branch went (its state saved to a file, the process gone): a new model, optimizer and pruner
    loaded from it end with the uninterrupted run's trace and weights."""
    batches = digit_batches(digits)
    ref = pruner()
    train(ref, batches)
    cut = next(i for i, s in enumerate(ref.trace.steps) if s.extra.get("removals"))  # the first removing step
    first = pruner()
    calls = next(s.extra["batches"] for s in ref.trace.steps if s.step == cut)
    opt = train(first, batches[:calls])
    assert first.trace.steps[-1].extra.get("removals") and not first.done
    torch.save({"model": first.model.state_dict(), "opt": opt.state_dict(), "pruner": first.state_dict()},
               tmp_path / "state.pt")
    del first, opt
    torch.manual_seed(123)  # another process: other RNG state, a freshly built model
    st = torch.load(tmp_path / "state.pt", weights_only=True)
    second = pruner()
    second.model.load_state_dict(st["model"])
    opt2 = torch.optim.AdamW(second.model.parameters(), lr=1e-3)
    opt2.load_state_dict(st["opt"])
    second.load_state_dict(st["pruner"])
    train(second, batches[calls:], opt2)
    assert [s.to_dict() for s in second.trace.steps] == [s.to_dict() for s in ref.trace.steps]
    for (k, a), (_, b) in zip(second.model.state_dict().items(), ref.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_revit_prune_removes_and_records_and_keep_depth_resumes_only_as_begun(cli: Any, tmp_path: Path) -> None:
    """``revit prune`` removes a branch and a block (pruned.yaml is shallower, the trace names them, metrics agree);
    ``--keep-depth`` is recorded and a resume that changes it is refused in one line."""
    import yaml

    cfg = tmp_path / "tiny.yaml"
    CFG.save(cfg)
    run = ["prune", "--model", cfg, "--data", "digits", "--train-limit", "256", "--val-size", "64", "--test-limit",
           "0", "--batch-size", "32", "--epochs", "1", "--eval-size", "0", "--threads", "1", "--granularity",
           "micro", "--no-progress", "--seed", "0"]
    code, _, err = cli(*run, "--target-macs", "0.2", "--out", tmp_path / "free")
    assert code == 0, err
    lines = [json.loads(x) for x in (tmp_path / "free" / "trace.jsonl").read_text().splitlines()]
    named = [r for st in lines[1:] for r in st.get("removals", [])]
    assert any(r["removes"] == "block" for r in named) and any(r["removes"] != "block" for r in named)
    pruned = ViTConfig.from_dict(yaml.safe_load((tmp_path / "free" / "pruned.yaml").read_text()))
    assert pruned.depth == CFG.depth - sum(r["removes"] == "block" for r in named)
    assert all(len(st["blocks"]) == CFG.depth for st in lines[1:])
    assert "keep_depth" not in lines[0]["settings"] and "ranking" not in lines[0]["settings"]  # defaults unwritten
    # metrics, the closing line and the model card say what went, by the base's block indices
    gone = sorted(r["block"] for r in named if r["removes"] == "block")
    metrics = json.loads((tmp_path / "free" / "metrics.json").read_text())
    assert metrics["removed"]["blocks"] == gone
    last = [BlockDims.from_dict(b) for b in lines[-1]["blocks"]]
    assert metrics["removed"]["attention"] == [i for i, b in enumerate(last) if b.has_mlp and not b.has_attention]
    assert metrics["removed"]["mlp"] == [i for i, b in enumerate(last) if b.has_attention and not b.has_mlp]
    said = f"block{'s' if len(gone) > 1 else ''} {', '.join(map(str, gone))}"
    assert f"removed: {said}" in err
    assert f"removed {said}" in (tmp_path / "free" / "hf" / "README.md").read_text()

    code, _, err = cli(*run, "--target-macs", "0.4", "--keep-depth", "--out", tmp_path / "kept")
    assert code == 0, err
    lines = [json.loads(x) for x in (tmp_path / "kept" / "trace.jsonl").read_text().splitlines()]
    assert lines[0]["settings"]["keep_depth"] is True and lines[0]["keep_depth"] is True
    assert not any(st.get("removals") for st in lines[1:])
    marker = json.loads((tmp_path / "kept" / ".revit-run.json").read_text())
    marker["finished"] = False  # as if killed before its end
    (tmp_path / "kept" / ".revit-run.json").write_text(json.dumps(marker))
    before = {p: p.read_bytes() for p in (tmp_path / "kept").rglob("*") if p.is_file()}
    code, _, err = cli(*run, "--target-macs", "0.4", "--out", tmp_path / "kept", "--resume")
    assert code == 2 and "keep_depth" in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in (tmp_path / "kept").rglob("*") if p.is_file()} == before


def test_keep_depth_steps_are_the_width_only_ones_written_before_depth(cli: Any, tmp_path: Path) -> None:
    """``--keep-depth`` reproduces the steps of the trace committed before depth was prunable byte for byte
    (elsewhere than the fixtures' CPU, within float rounding: ``assert_same_trace``; its
    header differs only by saying keep_depth)."""
    from test_cost_target import FIXTURES, RUN, TARGETS, assert_same_trace

    code, _, err = cli(*RUN, *TARGETS["macs"], "--keep-depth", "--out", tmp_path / "run")
    assert code == 0, err
    fresh = (tmp_path / "run" / "trace.jsonl").read_bytes().splitlines()
    old = (FIXTURES / "prune_macs_trace.jsonl").read_bytes().splitlines()
    assert_same_trace(fresh[1:], old[1:])
    head, before = json.loads(fresh[0]), json.loads(old[0])
    assert head.pop("keep_depth") is True and head["settings"].pop("keep_depth") is True
    assert head == before


def test_a_latency_table_prices_a_branch_with_its_fixed_costs(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    """Under a v2 table (each half block with a fixed cost) a branch candidate saves what the table predicts for
    the model without it, and a latency target removes branches; a v1 table cannot price them: widths only, said."""
    from test_latency_branches import _grid, _v1, synthetic
    from test_latency_build import FakeBackend

    from revit.cost import LatencyCost
    from revit.latency.profiler import BuildSettings, build_table
    from revit.latency.table import LatencyTable
    from revit.models import build_model
    from revit.prune import GlobalPruner
    from revit.prune.policy import block_positions, branch_candidates

    build_table(_grid(), FakeBackend(synthetic), tmp_path / "t.json",
                BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, design="full"), progress=False)
    table = LatencyTable.load(tmp_path / "t.json")
    cfg = ViTConfig(embed_dim=32, blocks=(BlockDims(2, 8, 4, 32),) * 3, img_size=28, patch_size=7, in_chans=1,
                    num_classes=10)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(8)]

    torch.manual_seed(0)
    p = GlobalPruner(build_model(cfg), target_latency=0.35, table=table, total_steps=8, granularity="micro")
    train(p, batches[:5])
    s, now = p.structure, p.current_config()
    cands = branch_candidates(s.groups, {g.gid: torch.rand(g.size) for g in s.groups}, p.masks.alive, p.unit,
                              p.minimum, now, LatencyCost(table), block_positions(s.groups, p.masks.alive))
    assert cands
    for c in cands:
        i = c.price[1]
        b = now.blocks[i]
        blocks = list(now.blocks)
        blocks[i] = BlockDims(0, 0, 0, b.mlp_dim) if c.branch == "attention" else BlockDims(b.heads, b.qk_dim,
                                                                                             b.v_dim, 0)
        want = table.predict(now).total_s - table.predict(now.with_blocks(blocks)).total_s
        assert c.saving == pytest.approx(max(want, 0.0), rel=1e-9, abs=1e-15)
    train(p, batches[5:])
    assert p.done and any(st.extra.get("removals") for st in p.trace.steps)
    assert p.trace.steps[-1].latency <= 0.35 * table.predict(cfg).total_s

    with caplog.at_level("INFO", logger="revit.prune.global_pruner"):
        old = GlobalPruner(build_model(cfg), target_latency=0.75, table=_v1(table), total_steps=8, granularity="micro")
    assert not old.removals and "cannot price a block without its attention or MLP" in caplog.text
    train(old, batches)
    assert old.done and not any(st.extra.get("removals") for st in old.trace.steps)


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing catches it on its way out (tests/test_kill_resume.py kills for real)."""


def test_revit_prune_killed_after_a_removal_resumes_byte_identical(cli: Any, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``revit prune`` stopped right after saving the state of the first step that removed a branch (a block goes
    later), then resumed: the trace, pruned config and weights are those of the uninterrupted run."""
    from revit.prune.loop import PruneRun

    cfg = tmp_path / "tiny.yaml"
    CFG.save(cfg)
    run = ["prune", "--model", cfg, "--data", "digits", "--train-limit", "256", "--val-size", "64", "--test-limit",
           "0", "--batch-size", "32", "--epochs", "1", "--eval-size", "64", "--threads", "1", "--granularity",
           "micro", "--no-progress", "--seed", "0", "--target-macs", "0.2"]
    code, _, err = cli(*run, "--out", tmp_path / "ref")
    assert code == 0, err
    steps = [json.loads(x) for x in (tmp_path / "ref" / "trace.jsonl").read_text().splitlines()[1:]]
    cut = next(s["step"] for s in steps if s.get("removals"))  # the first step that removed a branch
    assert cut < steps[-1]["step"] and any(r["removes"] == "block" for s in steps[cut:] for r in s.get("removals", []))
    real, saves = PruneRun._save_state, [0]

    def save_then_die(self: Any) -> None:
        real(self)
        saves[0] += 1
        if saves[0] == cut + 1:  # the first save is the start's, then one per pruning step
            raise Killed

    monkeypatch.setattr(PruneRun, "_save_state", save_then_die)
    with pytest.raises(Killed):
        cli(*run, "--out", tmp_path / "cut")
    monkeypatch.setattr(PruneRun, "_save_state", real)
    lines = (tmp_path / "cut" / "trace.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == cut
    code, _, err = cli(*run, "--out", tmp_path / "cut", "--resume")
    assert code == 0, err
    for f in ("trace.jsonl", "pruned.yaml", "pruned.safetensors"):
        assert (tmp_path / "cut" / f).read_bytes() == (tmp_path / "ref" / f).read_bytes(), f


def test_the_last_units_of_a_width_price_the_whole_branch() -> None:
    """``MacsCost.saving`` (priced on the block) and the generic saving (``shrink`` on the whole config) of the last
    units of any attention width are the whole attention's MACs, its matmuls included; of the MLP's, the MLP's;
    of a block's last branch, the block's."""
    from revit.cost import CostModel, MacsCost, shrink

    class Generic(MacsCost):  # the base class's saving: the whole config's cost before and after shrink()
        saving = CostModel.saving

    cfg = ViTConfig(embed_dim=16, blocks=(BlockDims(2, 4, 8, 16), BlockDims(0, 0, 0, 24), BlockDims(3, 4, 4, 0)),
                    img_size=8, patch_size=2, in_chans=1, num_classes=10)
    n, e = cfg.tokens, cfg.embed_dim
    attention = n * e * 2 * (2 * 4 + 8) + n * 2 * 8 * e + n * n * 2 * (4 + 8)  # qkv, proj, QK^T and AV
    for model in (MacsCost(), Generic()):
        for kind in ("heads", "qk_dim", "v_dim"):
            assert model.saving(cfg, kind, 0, getattr(cfg.blocks[0], kind)) == attention
        assert model.saving(cfg, "mlp_dim", 0, 16) == 2 * n * e * 16
        assert model.saving(cfg, "mlp_dim", 1, 24) == counting.block_macs(e, cfg.blocks[1], n)  # the block goes
        assert model.saving(cfg, "heads", 2, 3) == counting.block_macs(e, cfg.blocks[2], n)
    assert shrink(cfg, "qk_dim", 0, 4).blocks[0] == BlockDims(0, 0, 0, 16)
    assert shrink(cfg, "heads", 2, 3).depth == 2
