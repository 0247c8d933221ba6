"""revit models as timm models: factory arguments, pretrained cfgs and the model API behave as timm's DeiT.

Most checks build a revit model and timm's own DeiT with the same arguments, copy the weights
across, and compare what timm's API returns on both: the reference is timm's code, not revit's.
"""

from __future__ import annotations

import argparse
import ast
import copy
from pathlib import Path

import pytest
import timm
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import revit.models as rm
from revit import counting
from revit.config import ViTConfig
from revit.presets import PRESETS, get_preset

ROOT = Path(__file__).resolve().parents[1]


def _pair(name="deit_tiny_patch16_224", distilled=False, **kw):
    """timm's DeiT and the revit per-block model of the same size, built with ``kw``, with equal weights."""
    if distilled:
        name = name.replace("_patch", "_distilled_patch")
    torch.manual_seed(0)
    t = timm.create_model(name, **kw).eval()
    r = timm.create_model(f"revit_{name}", **kw).eval()
    r.load_state_dict(t.state_dict(), strict=True)
    return t, r


def _close(a, b, atol=1e-6):
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y, atol)
        return
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


def test_factory_kwargs_change_the_model_and_its_config():
    m = timm.create_model("revit_micro", num_classes=5, in_chans=3, img_size=56).eval()
    assert m.patch_embed.grid_size == (8, 8) and m.patch_embed.patch_size == (7, 7)
    cfg = m.config
    base = get_preset("revit_micro")
    assert (cfg.img_size, cfg.in_chans, cfg.num_classes, cfg.tokens) == (56, 3, 5, 65)
    assert cfg.blocks == base.blocks and cfg.embed_dim == base.embed_dim
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        assert m(x).shape == (1, 5)
    assert counting.macs(cfg) == fc.get_total_flops() // 2
    assert counting.params(cfg) == sum(p.numel() for p in m.parameters())
    assert timm.create_model("revit_micro", num_classes=0)(torch.randn(2, 1, 28, 28)).shape == (2, 96)


@pytest.mark.parametrize("kw", [
    dict(img_size=32, num_classes=7, in_chans=2),
    dict(img_size=48, num_classes=0),
    dict(img_size=32, global_pool="avg"),
    dict(img_size=32, global_pool=""),
    dict(img_size=32, init_values=0.1),
], ids=["setting", "features", "avgpool", "nopool", "layerscale"])
def test_same_outputs_as_timm_deit(kw):
    t, r = _pair(**kw)
    x = torch.randn(2, t.in_chans, kw["img_size"], kw["img_size"])
    with torch.no_grad():
        _close(r(x), t(x))
        f = r.forward_features(x)
        _close(f, t.forward_features(x))
        _close(r.forward_head(f, pre_logits=True), t.forward_head(f, pre_logits=True))
    assert (r.num_features, r.head_hidden_size) == (t.num_features, t.head_hidden_size)


def test_drop_rates_device_and_dtype_as_timm():
    t, r = _pair(img_size=32, drop_rate=0.3, drop_path_rate=0.2, proj_drop_rate=0.1)
    def rates(m):
        return [getattr(b.drop_path1, "drop_prob", 0.0) for b in m.blocks]

    assert rates(r) == rates(t) and rates(r)[-1] == pytest.approx(0.2)
    assert r.head_drop.p == t.head_drop.p == 0.3 and r.blocks[3].mlp.drop1.p == 0.1
    m = timm.create_model("revit_small", device="meta", dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in m.parameters()} == {("meta", torch.bfloat16)}
    with torch.device("meta"):
        m = timm.create_model("revit_tiny", drop_path_rate=0.1)
    assert next(m.parameters()).is_meta and m.config == get_preset("revit_tiny")


def test_pretrained_cfgs_per_preset():
    from timm.data import resolve_data_config

    micro = timm.create_model("revit_micro")
    d = resolve_data_config(model=micro)
    assert d["input_size"] == (1, 28, 28) and d["mean"] == (0.2860,) and d["std"] == (0.3530,)
    for name in PRESETS:
        cfg, pc = get_preset(name), timm.models.get_pretrained_cfg(name).to_dict()
        assert pc["input_size"] == (cfg.in_chans, cfg.img_size, cfg.img_size) and pc["num_classes"] == cfg.num_classes
        assert pc["classifier"] == (("head", "head_dist") if cfg.distilled else "head")
        assert pc["first_conv"] == "patch_embed.proj"
    assert timm.create_model("revit_tiny").default_cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN


def test_config_kwarg_as_config_dict_or_yaml(tmp_path, tiny_cfg):
    tiny_cfg.save(tmp_path / "c.yaml")
    for c in (tiny_cfg, tiny_cfg.to_dict(), str(tmp_path / "c.yaml")):
        m = timm.create_model("revit_micro", config=c)
        assert m.config == tiny_cfg
        assert m.default_cfg["input_size"] == (1, 16, 16) and m.num_classes == 5
    assert timm.create_model("revit_micro", config=tiny_cfg, num_classes=3).config.num_classes == 3
    with pytest.raises(TypeError):
        timm.create_model("revit_micro", not_a_model_arg=1)


@pytest.mark.parametrize("distilled", [False, True])
def test_model_api_as_timm(distilled):
    t, r = _pair(distilled=distilled, img_size=32)
    x = torch.randn(2, 3, 32, 32)
    assert r.group_matcher() == t.group_matcher() and r.no_weight_decay() == t.no_weight_decay()
    with torch.no_grad():
        _close(r.forward_intermediates(x, indices=[1, 5], norm=True), t.forward_intermediates(x, indices=[1, 5],
                                                                                             norm=True))
        _close(r.forward_intermediates(x, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True),
               t.forward_intermediates(x, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True))
        r.set_grad_checkpointing()
        _close(r(x), t(x))
        for m in (t, r):
            m.set_input_size(img_size=(48, 48))
        _close(r.pos_embed, t.pos_embed)
        assert r.config.img_size == 48 and r.config.tokens == r.pos_embed.shape[1]
        x48 = torch.randn(1, 3, 48, 48)
        _close(r(x48), t(x48))
        for m in (t, r):
            m.reset_classifier(4)
        r.load_state_dict(t.state_dict())
        _close(r(x48), t(x48))
        assert r.config.num_classes == 4
        heads = r.get_classifier()
        assert [type(h) for h in (heads if distilled else (heads,))] == [torch.nn.Linear] * (1 + distilled)
        pr, pt = copy.deepcopy(r), copy.deepcopy(t)
        assert pr.prune_intermediate_layers([2]) == pt.prune_intermediate_layers([2])
        assert pr.config.depth == 3 and len(pr.blocks) == len(pt.blocks)
        _close(pr.forward_intermediates(x48, indices=[2], intermediates_only=True),
               pt.forward_intermediates(x48, indices=[2], intermediates_only=True))


def test_layer_decay_gets_a_group_per_block():
    from timm.optim import create_optimizer_v2

    m = timm.create_model("revit_micro")
    opt = create_optimizer_v2(m, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scales = {round(g["lr_scale"], 6) for g in opt.param_groups}
    assert len(scales) == m.config.depth + 2  # stem, every block, head
    no_wd = {n for g in opt.param_groups if g["weight_decay"] == 0 for n in g.get("param_names", [])}
    assert not no_wd or "pos_embed" in no_wd


def test_features_only_through_timm_wrapper():
    from timm.models._features import FeatureGetterNet

    m = timm.create_model("revit_micro", features_only=True, out_indices=(1, 3, 7)).eval()
    assert isinstance(m, FeatureGetterNet)
    assert m.feature_info.channels() == [96] * 3 and m.feature_info.reduction() == [7] * 3
    full = timm.create_model("revit_micro").eval()
    full.load_state_dict(m.model.state_dict(), strict=False)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        _close(m(x), full.forward_intermediates(x, indices=[1, 3, 7], intermediates_only=True))
    assert [o.shape for o in m(x)] == [(2, 96, 4, 4)] * 3


def test_compile_export_and_fx():
    m = timm.create_model("revit_micro", config=get_preset("revit_micro").with_blocks(
        get_preset("revit_micro").blocks[:2])).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        y = m(x)
        _close(torch.compile(m, backend="aot_eager", fullgraph=True)(x), y, atol=1e-5)
        ep = torch.export.export(m, (x,))
        _close(ep.module()(x), y, atol=1e-5)
        gm = torch.fx.symbolic_trace(m)
        _close(gm(x), y, atol=1e-5)


@pytest.mark.slow
def test_compile_inductor():
    m = timm.create_model("revit_micro").eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        _close(torch.compile(m, fullgraph=True)(x), m(x), atol=1e-4)


# --- checkpoints -----------------------------------------------------------------------------
def test_deit3_converts_exactly_both_ways(tmp_path, cli):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    t = timm.create_model("deit3_small_patch16_224").eval()
    for p in t.parameters():  # gammas away from their init, so a dropped layer scale would show
        p.data.add_(torch.randn_like(p) * 0.02)
    torch.save(t.state_dict(), tmp_path / "deit3.pth")
    code, _, err = cli("model", "convert", "deit3_small_patch16_224", "--checkpoint", tmp_path / "deit3.pth",
                       "--out", tmp_path / "out")
    assert code == 0, err
    cfg = ViTConfig.load(tmp_path / "out" / "config.yaml")
    assert cfg.init_values == 1e-6 and cfg.no_embed_class and cfg.tokens == 197
    assert counting.params(cfg) == sum(p.numel() for p in t.parameters())
    sd = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sd.keys() == t.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in t.state_dict().items())
    r = rm.build_model(cfg, checkpoint=tmp_path / "out" / "model.safetensors").eval()
    back = rm.to_timm(r).eval()
    assert type(back) is type(t) and all(torch.equal(back.state_dict()[k], v) for k, v in t.state_dict().items())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        y = t(x)
        assert (r(x) - y).abs().max().item() <= 1e-6
        assert (back(x) - y).abs().max().item() <= 1e-6


def _train_checkpoint(tmp_path):
    """A timm train.py-style checkpoint of deit_tiny written by timm's CheckpointSaver (plain + EMA)."""
    from timm.utils import CheckpointSaver, ModelEmaV3

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224")
    ema = ModelEmaV3(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # the plain weights move on, the EMA stays behind
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = CheckpointSaver(model, opt, args=argparse.Namespace(model="deit_tiny_patch16_224"), model_ema=ema,
                            checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path))
    saver.save_checkpoint(epoch=0, metric=0.5)
    return model, ema.module


@pytest.mark.parametrize("fname", ["last.pth.tar", "model_best.pth.tar"])
def test_timm_train_checkpoint_converts_plain_or_ema(tmp_path, cli, fname):
    from safetensors.torch import load_file

    model, ema = _train_checkpoint(tmp_path)
    for flag, src in (([], model), (["--use-ema"], ema)):
        out = tmp_path / f"out{len(flag)}"
        code, _, err = cli("model", "convert", "deit_tiny_patch16_224", "--checkpoint", tmp_path / fname,
                           "--out", out, *flag)
        assert code == 0, err
        assert ("EMA weights (state_dict_ema)" if flag else "plain weights (state_dict)") in err
        sd = load_file(str(out / "model.safetensors"))
        assert all(torch.equal(sd[k], v) for k, v in src.state_dict().items())
    r = rm.build_model(get_preset("revit_deit_tiny_patch16_224"), checkpoint=tmp_path / fname, use_ema=True)
    assert torch.equal(r.pos_embed, ema.pos_embed) and not torch.equal(r.pos_embed, model.pos_embed)


def test_no_import_cycles_in_models():
    """No module of revit.models imports, even lazily, a module that imports it back."""
    graph: dict[str, set[str]] = {}
    for f in (ROOT / "revit" / "models").glob("*.py"):
        mod = f"revit.models.{f.stem}" if f.stem != "__init__" else "revit.models"
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("revit.models"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("revit.models")}
        graph[mod] = deps - {mod}

    def reach(a: str, seen: set[str]) -> set[str]:
        for b in graph.get(a, set()) - seen:
            seen.add(b)
            reach(b, seen)
        return seen

    cycles = [m for m in graph if m != "revit.models" and m in reach(m, set()) - {"revit.models"}]
    assert not cycles, cycles


def test_prune_with_layer_scale_dense_equals_masked():
    """DeiT-III-style blocks: the structure puts every gamma in the EMB family; the dense export slices them."""
    from timm.models.vision_transformer import VisionTransformer

    from revit.prune import Masks, derive_structure, rebuild_dense

    torch.manual_seed(0)
    t = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=5, embed_dim=32, depth=2, num_heads=2,
                          init_values=0.5, no_embed_class=True)
    model = rm.from_timm(t).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    s = derive_structure(model)
    emb = {sl.param for sl in s.embed.slices}
    assert {f"blocks.{i}.ls{j}.gamma" for i in range(2) for j in (1, 2)} <= emb
    masks = Masks(s)
    masks.install(model)
    gen = torch.Generator().manual_seed(1)
    for g in s.groups:
        masks.alive[g.gid][torch.randperm(g.size, generator=gen)[: max(1, g.size // 3)]] = False
    masks.refresh()
    masks.apply(model)
    dense = rebuild_dense(model, s, masks.alive).eval()
    keep = masks.alive[s.embed.gid]
    assert dense.config.init_values == 0.5 and dense.config.embed_dim == int(keep.sum())
    assert rm.count_params(dense) == counting.params(dense.config)
    torch.testing.assert_close(dense.blocks[1].ls2.gamma, model.blocks[1].ls2.gamma[keep], atol=0, rtol=0)
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        assert (model(x) - dense(x)).abs().max().item() < 1e-5
        model.blocks[0].ls1.gamma.mul_(2)  # the gammas matter: scaling one changes the masked output
        assert (model(x) - dense(x)).abs().max().item() > 1e-3


def test_local_weights_through_timm_factory(tmp_path):
    """timm's own ways to load local weights: pretrained_cfg_overlay=dict(file=...) and checkpoint_path=."""
    torch.manual_seed(0)
    src = timm.create_model("revit_micro")
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pth.tar")
    a = timm.create_model("revit_micro", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "w.pth.tar")))
    b = timm.create_model("revit_micro", checkpoint_path=str(tmp_path / "w.pth.tar"))
    for m in (a, b):
        assert all(torch.equal(m.state_dict()[k], v) for k, v in src.state_dict().items())
    c = timm.create_model("revit_micro", pretrained=True, num_classes=3, in_chans=3,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "w.pth.tar")))
    assert c.head.out_features == 3 and torch.equal(c.blocks[0].mlp.fc1.weight, src.blocks[0].mlp.fc1.weight)
    torch.testing.assert_close(c.patch_embed.proj.weight.sum(1), src.patch_embed.proj.weight.sum(1))


def test_config_name_only_while_the_preset_is_unchanged():
    assert timm.create_model("revit_micro", drop_path_rate=0.1).config.name == "revit_micro"
    assert timm.create_model("revit_micro", num_classes=3).config.name is None
    m = timm.create_model("revit_micro", init_values=1e-4)
    assert m.config.init_values == 1e-4 and m.blocks[0].ls2.gamma.shape == (96,)
    assert timm.create_model("revit_micro", init_values=0).config.init_values is None
