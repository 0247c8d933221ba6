"""Pruning structure, criteria and masks checked against hand-written spec lists (NVIT_SPEC.md 1-2)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from revit.config import BlockDims, ViTConfig

KIND_ORDER = ("embed_dim", "heads", "qk_dim", "v_dim", "mlp_dim")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spec_owned(cfg: ViTConfig, params: dict[str, torch.Tensor], kind: str, block: int | None,
               i: int) -> dict[str, torch.Tensor]:
    """Entries owned by index ``i`` of a group, written from NVIT_SPEC.md section 1/2 (not derived)."""
    out: dict[str, torch.Tensor] = {}

    def mark(name: str, index: tuple) -> None:
        m = out.setdefault(name, torch.zeros_like(params[name], dtype=torch.bool))
        m[index] = True

    if kind == "embed_dim":
        c = i
        mark("patch_embed.proj.weight", (c,))
        mark("patch_embed.proj.bias", (c,))
        for tok in ("cls_token", "dist_token"):
            if tok in params:
                mark(tok, (..., c))
        mark("pos_embed", (..., c))
        for b in range(cfg.depth):
            p = f"blocks.{b}."
            for n in ("norm1", "norm2"):
                mark(p + n + ".weight", (c,))
                mark(p + n + ".bias", (c,))
            mark(p + "attn.qkv.weight", (slice(None), c))
            mark(p + "attn.proj.weight", (c,))
            mark(p + "attn.proj.bias", (c,))
            mark(p + "mlp.fc1.weight", (slice(None), c))
            mark(p + "mlp.fc2.weight", (c,))
            mark(p + "mlp.fc2.bias", (c,))
        norm = "norm" if "norm.weight" in params else "fc_norm"
        mark(f"{norm}.weight", (c,))
        mark(f"{norm}.bias", (c,))
        mark("head.weight", (slice(None), c))
        if "head_dist.weight" in params:
            mark("head_dist.weight", (slice(None), c))
        return out
    assert block is not None
    d = cfg.blocks[block]
    h, dq, dv = d.heads, d.qk_dim, d.v_dim
    p = f"blocks.{block}."
    qkv_rows: list[int] = []
    proj_cols: list[int] = []
    if kind == "mlp_dim":
        mark(p + "mlp.fc1.weight", (i,))
        mark(p + "mlp.fc1.bias", (i,))
        mark(p + "mlp.fc2.weight", (slice(None), i))
        return out
    if kind == "qk_dim":
        qkv_rows = [hh * dq + i for hh in range(h)] + [h * dq + hh * dq + i for hh in range(h)]
    elif kind == "v_dim":
        qkv_rows = [2 * h * dq + hh * dv + i for hh in range(h)]
        proj_cols = [hh * dv + i for hh in range(h)]
    elif kind == "heads":
        qkv_rows = ([i * dq + j for j in range(dq)] + [h * dq + i * dq + j for j in range(dq)]
                    + [2 * h * dq + i * dv + j for j in range(dv)])
        proj_cols = [i * dv + j for j in range(dv)]
    for r in qkv_rows:
        mark(p + "attn.qkv.weight", (r,))
        mark(p + "attn.qkv.bias", (r,))
    for col in proj_cols:
        mark(p + "attn.proj.weight", (slice(None), col))
    return out


def tiny_cfg_distilled() -> ViTConfig:
    return ViTConfig(embed_dim=16, blocks=(BlockDims(2, 4, 6, 24), BlockDims(3, 2, 4, 16)), img_size=8,
                     patch_size=2, in_chans=1, num_classes=10, distilled=True)


def _check_groups(model: torch.nn.Module, indices_per_group: int | None = None) -> None:
    from revit.prune import derive_structure

    cfg = model.config
    s = derive_structure(model)
    params = dict(model.named_parameters())
    expected = [("embed_dim", None)] + [(k, b) for b in range(cfg.depth) for k in KIND_ORDER[1:]]
    assert [(g.kind, g.block) for g in s.groups] == expected
    for g in s.groups:
        size = cfg.embed_dim if g.block is None else getattr(cfg.blocks[g.block], g.kind)
        assert g.size == size, g.name
        idx = range(g.size) if indices_per_group is None else sorted({0, g.size // 2, g.size - 1})
        for i in idx:
            got = g.owned(params, i)
            want = spec_owned(cfg, params, g.kind, g.block, i)
            assert sorted(got) == sorted(want), (g.name, i)
            for k in want:
                assert torch.equal(got[k], want[k]), (g.name, i, k)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_groups_of_timm_deit_equal_spec(name: str) -> None:
    import timm

    from revit.models import from_timm

    torch.manual_seed(0)
    model = from_timm(timm.create_model(name, pretrained=False))
    _check_groups(model, indices_per_group=3)


@pytest.mark.parametrize("cfg", [
    tiny_cfg_distilled(),
    ViTConfig(embed_dim=12, blocks=(BlockDims(1, 3, 5, 8), BlockDims(2, 4, 2, 12), BlockDims(3, 2, 3, 6)),
              img_size=8, patch_size=4, in_chans=2, num_classes=3, class_token=False),
], ids=["distilled-qk!=v", "avgpool-3-blocks"])
def test_groups_of_per_block_configs_equal_spec(cfg: ViTConfig) -> None:
    from revit.models import build_model

    _check_groups(build_model(cfg))


def _gated_loss(model: torch.nn.Module, gates: dict, owned: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from torch.func import functional_call

    params = dict(model.named_parameters())
    eff = {}
    for name, w in params.items():
        mult = torch.ones_like(w)
        for key, g in gates.items():
            m = owned[key].get(name)
            if m is not None:
                mult = torch.where(m, mult * g, mult)
        eff[name] = w * mult
    out = functional_call(model, eff, (x,))
    return torch.nn.functional.cross_entropy(out, y)


def test_hessian_equals_squared_gate_gradient() -> None:
    """Independent check: a gate on every group (hand spec lists), dL/dgate by autograd, score == square."""
    from revit.models import build_model
    from revit.prune import build_criterion, derive_structure

    torch.manual_seed(0)
    cfg = tiny_cfg_distilled()
    model = build_model(cfg).double()
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (6,))
    params = dict(model.named_parameters())
    keys = [("embed_dim", None, i) for i in range(cfg.embed_dim)]
    for b, d in enumerate(cfg.blocks):
        keys += [(k, b, i) for k in KIND_ORDER[1:] for i in range(getattr(d, k))]
    owned = {k: spec_owned(cfg, params, *k) for k in keys}
    gates = {k: torch.ones((), dtype=torch.float64, requires_grad=True) for k in keys}
    loss = _gated_loss(model, gates, owned, x, y)
    dgate = dict(zip(keys, torch.autograd.grad(loss, [gates[k] for k in keys]), strict=False))

    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    s = derive_structure(model)
    scores = build_criterion("hessian", s)(params, {k: p.grad for k, p in params.items()})
    got = torch.stack([scores[s.group(k, b).gid][i] for k, b, i in keys])
    want = torch.stack([dgate[k] ** 2 for k in keys])
    assert want.max() > 0
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-15)
    taylor = build_criterion("taylor", s)(params, {k: p.grad for k, p in params.items()})
    torch.testing.assert_close(torch.stack([taylor[s.group(k, b).gid][i] for k, b, i in keys]),
                               torch.stack([dgate[k].abs() for k in keys]), rtol=1e-9, atol=1e-15)


def test_nvit_code_matches_hand_computation() -> None:
    from revit.models import build_model
    from revit.prune import build_criterion, derive_structure

    torch.manual_seed(1)
    cfg = tiny_cfg_distilled()
    model = build_model(cfg).double()
    params = {k: p.detach() for k, p in model.named_parameters()}
    grads = {k: torch.randn_like(p) for k, p in params.items()}
    wg = {k: params[k] * grads[k] for k in params}
    s = derive_structure(model)
    sc = build_criterion("nvit-code", s)(params, grads)
    b = 1
    d = cfg.blocks[b]
    h, dq, dv = d.heads, d.qk_dim, d.v_dim
    q = f"blocks.{b}.attn.qkv"
    W, B = wg[q + ".weight"], wg[q + ".bias"]

    def row(r: int) -> torch.Tensor:
        return W[r].sum() + B[r]

    j = 1
    want = {
        ("qk_dim", j): sum((row(hh * dq + j) / 2) ** 2 for hh in range(h)),
        ("v_dim", j): sum((row(2 * h * dq + hh * dv + j) / 2) ** 2 for hh in range(h)),
        ("mlp_dim", j): (wg[f"blocks.{b}.mlp.fc1.weight"][j].sum() + wg[f"blocks.{b}.mlp.fc1.bias"][j]) ** 2,
        ("heads", j): (sum(row(r) for r in list(range(j * dq, (j + 1) * dq))
                           + list(range(h * dq + j * dq, h * dq + (j + 1) * dq))
                           + list(range(2 * h * dq + j * dv, 2 * h * dq + (j + 1) * dv))) / 12) ** 2,
    }
    for (kind, i), v in want.items():
        torch.testing.assert_close(sc[s.group(kind, b).gid][i], v, rtol=1e-10, atol=0)
    c = 3
    units = [wg["patch_embed.proj.weight"][c].sum() + wg["patch_embed.proj.bias"][c],
             wg["head.weight"][:, c].sum(), wg["head_dist.weight"][:, c].sum()]
    for bb in range(cfg.depth):
        p = f"blocks.{bb}."
        units += [wg[p + "attn.qkv.weight"][:, c].sum(),
                  wg[p + "attn.proj.weight"][c].sum() + wg[p + "attn.proj.bias"][c],
                  wg[p + "mlp.fc1.weight"][:, c].sum(),
                  wg[p + "mlp.fc2.weight"][c].sum() + wg[p + "mlp.fc2.bias"][c]]
    torch.testing.assert_close(sc[s.embed.gid][c], sum((u / 12) ** 2 for u in units), rtol=1e-10, atol=0)


def test_magnitude_and_random() -> None:
    from revit.models import build_model
    from revit.prune import build_criterion, derive_structure

    cfg = tiny_cfg_distilled()
    model = build_model(cfg)
    params = {k: p.detach() for k, p in model.named_parameters()}
    s = derive_structure(model)
    mag = build_criterion("magnitude", s)(params, {})
    g = s.group("mlp_dim", 0)
    w = params["blocks.0.mlp.fc1.weight"][5].double()
    want = (w.pow(2).sum() + params["blocks.0.mlp.fc1.bias"][5].double() ** 2
            + params["blocks.0.mlp.fc2.weight"][:, 5].double().pow(2).sum()).sqrt()
    torch.testing.assert_close(mag[g.gid][5], want)
    r1 = build_criterion("random", s, seed=3)(params, {})
    r2 = build_criterion("random", s, seed=3)(params, {})
    assert all(torch.equal(r1[k], r2[k]) for k in r1)


def test_accumulator_interval_mean_and_ema() -> None:
    from revit.prune import ScoreAccumulator

    acc = ScoreAccumulator(0.9)
    for v in (1.0, 3.0):
        acc.add({0: torch.tensor([v])})
    assert acc.end_interval()[0].item() == pytest.approx(2.0)  # first interval initialises the EMA
    for v in (10.0, 20.0, 30.0):
        acc.add({0: torch.tensor([v])})
    assert acc.end_interval()[0].item() == pytest.approx(0.9 * 2.0 + 0.1 * 20.0)


def test_accumulator_state_is_a_copy_of_sums_added_in_place() -> None:
    """Sums are added to in place (one multi-tensor add): a state taken, or loaded, must not follow them."""
    from revit.prune import ScoreAccumulator

    acc = ScoreAccumulator(0.9)
    acc.add({0: torch.tensor([1.0, 2.0]), 1: torch.tensor([5.0])})
    state = acc.state_dict()
    acc.add({0: torch.tensor([1.0, 1.0]), 1: torch.tensor([1.0])})
    assert state["sum"][0].tolist() == [1.0, 2.0] and state["count"] == 1
    other = ScoreAccumulator()
    other.load_state_dict(state)
    other.add({0: torch.tensor([3.0, 3.0]), 1: torch.tensor([0.0])})
    assert state["sum"][0].tolist() == [1.0, 2.0]
    assert other.end_interval()[0].tolist() == [2.0, 2.5] and acc.end_interval()[1].tolist() == [3.0]


def test_masked_model_equals_dense_rebuild() -> None:
    from revit import counting
    from revit.models import build_model, count_params
    from revit.prune import Masks, derive_structure, rebuild_dense

    torch.manual_seed(0)
    cfg = tiny_cfg_distilled()
    model = build_model(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    s = derive_structure(model)
    masks = Masks(s)
    masks.install(model)
    gen = torch.Generator().manual_seed(1)
    for g in s.groups:
        drop = torch.randperm(g.size, generator=gen)[: max(1, g.size // 3)]
        masks.alive[g.gid][drop] = False
    masks.refresh()
    masks.apply(model)
    dense = rebuild_dense(model, s, masks.alive).eval()
    new = dense.config
    assert new.embed_dim == cfg.embed_dim - cfg.embed_dim // 3
    assert [b.heads for b in new.blocks] == [b.heads - max(1, b.heads // 3) for b in cfg.blocks]
    assert count_params(dense) == counting.params(new)
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        gap = (model(x) - dense(x)).abs().max().item()
        assert gap < 1e-5
        masks.remove()  # without the masked LayerNorm the zeroed EMB channels change the statistics
        assert (model(x) - dense(x)).abs().max().item() > 1e-3


def test_fused_scoring_launches_fewer_kernels_for_the_same_scores() -> None:
    """benchmarks/saliency_kernels.py on revit_micro: the fused plan's scores equal the per-group path's, with
    several times fewer kernels per call and one accumulator add."""
    import sys
    from pathlib import Path

    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, bench)
    try:
        import saliency_kernels
    finally:
        sys.path.remove(bench)
    for row in saliency_kernels.measure("revit_micro", ["hessian", "nvit-code"]):
        assert row["max_rel_diff"] < 1e-12
        assert row["kernels_fused"] * 4 < row["kernels_per_group_path"]
        assert row["kernels_add"] == 1 < row["kernels_per_group_add"] == row["groups"]


def _depth_models() -> list[tuple[str, Any]]:
    from timm.models.vision_transformer import VisionTransformer

    from revit.models import build_model, from_timm

    cfg = ViTConfig(embed_dim=16, blocks=(BlockDims(2, 4, 6, 24), BlockDims(3, 2, 4, 16), BlockDims(2, 4, 4, 16),
                                          BlockDims(2, 4, 4, 32)), img_size=8, patch_size=2, in_chans=1,
                    num_classes=10, distilled=True)
    timm_kw = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=16, depth=4, num_heads=2,
                   mlp_ratio=2.0, init_values=0.5)
    return [("revit distilled", lambda: build_model(cfg)),
            ("timm with layer scale", lambda: from_timm(VisionTransformer(**timm_kw)))]


@pytest.mark.parametrize("make", [m for _, m in _depth_models()], ids=[n for n, _ in _depth_models()])
def test_fully_masked_branches_export_as_removed(make: Any) -> None:
    """All heads of block 0, all MLP units of block 1 and both of block 2 masked: the dense export has block 0
    without attention, block 1 without MLP and block 2 gone (depth 3), with the masked model's outputs, the
    counts of FlopCounterMode and numel, and a structure of its own for further pruning."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from revit import counting
    from revit.models import count_params
    from revit.prune import Masks, derive_structure, rebuild_dense

    torch.manual_seed(0)
    model = make().eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    s = derive_structure(model)
    masks = Masks(s)
    masks.install(model)
    masks.alive[s.group("heads", 0).gid][:] = False
    masks.alive[s.group("mlp_dim", 1).gid][:] = False
    masks.alive[s.group("v_dim", 2).gid][:] = False  # no V left: the attention goes (its heads and QK with it)
    masks.alive[s.group("mlp_dim", 2).gid][:] = False
    masks.alive[s.group("mlp_dim", 3).gid][::3] = False
    masks.alive[s.embed.gid][::5] = False
    masks.refresh()
    masks.apply(model)
    params = dict(model.named_parameters())
    assert not params["blocks.0.attn.proj.bias"].any() and not params["blocks.1.mlp.fc2.bias"].any()
    dense = rebuild_dense(model, s, masks.alive).eval()
    new = dense.config
    b3 = model.config.blocks[3]
    assert new.depth == 3 and new.embed_dim == 12
    assert new.blocks[0] == BlockDims(0, 0, 0, model.blocks[0].mlp.fc1.out_features)
    assert not new.blocks[1].has_mlp and new.blocks[1].heads == model.blocks[1].attn.num_heads
    assert new.blocks[2] == BlockDims(b3.heads, b3.qk_dim, b3.v_dim, b3.mlp_dim - (b3.mlp_dim + 2) // 3)
    assert dense.blocks[0].attn is None and dense.blocks[0].norm1 is None and dense.blocks[1].norm2 is None
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert (model(x) - dense(x)).abs().max().item() < 1e-5
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        dense(x[:1])
    assert counting.macs(new) == fc.get_total_flops() // 2
    assert count_params(dense) == counting.params(new)
    again = derive_structure(dense)  # a model without a branch is pruned further
    assert [(g.kind, g.block) for g in again.groups if g.block is not None] == [
        ("mlp_dim", 0), ("heads", 1), ("qk_dim", 1), ("v_dim", 1), *((k, 2) for k in KIND_ORDER[1:])]
