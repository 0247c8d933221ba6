"""The per-block model against timm: registry, conversion both ways, checkpoints, ONNX export."""

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import revit.models as rm
from revit.errors import CheckpointError
from revit.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_registered_in_timm(name):
    assert name in timm.list_models("revit_*")
    cfg = get_preset(name)
    model = timm.create_model(name, drop_path_rate=0.1)
    assert isinstance(model, rm.ReViT) and model.config == cfg
    if cfg.img_size <= 32 or name == "revit_small":
        out = model.eval()(torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size))
        assert out.shape == (2, cfg.num_classes)


def test_pretrained_without_file_is_refused():
    with pytest.raises(CheckpointError, match="local file"):
        timm.create_model("revit_micro", pretrained=True)


def _same_outputs(a, b, cfg, atol=1e-5):
    torch.manual_seed(1)
    x = torch.randn(3, cfg.in_chans, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    torch.testing.assert_close(ya, yb, atol=atol, rtol=0)
    return ya


def _custom_timm():
    return VisionTransformer(img_size=32, patch_size=8, in_chans=2, num_classes=7, embed_dim=48, depth=3,
                             num_heads=3, mlp_ratio=2.5, class_token=False, global_pool="avg")


@pytest.mark.parametrize("make", [
    lambda: timm.create_model("deit_tiny_patch16_224"),
    lambda: timm.create_model("deit_tiny_distilled_patch16_224"),
    _custom_timm,
], ids=["deit_tiny", "deit_tiny_distilled", "custom_avgpool"])
def test_timm_conversion_both_directions(make):
    torch.manual_seed(0)
    t = make()
    r = rm.from_timm(t)
    y = _same_outputs(t, r, r.config)
    back = rm.to_timm(r)
    assert type(back) is type(t)
    torch.testing.assert_close(_same_outputs(back, t, r.config), y, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in r.parameters()) == sum(p.numel() for p in t.parameters())


def test_distilled_conversion_keeps_both_heads():
    t = timm.create_model("deit_tiny_distilled_patch16_224")
    r = rm.from_timm(t)
    assert r.config.distilled and r.config.tokens == 198
    torch.testing.assert_close(r.head_dist.weight, t.head_dist.weight)
    r.distilled_training = t.distilled_training = True
    r.train(), t.train()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = r(x), t(x)
    assert isinstance(a, tuple) and len(a) == 2
    torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs, part", [
    (dict(scale_mlp_norm=True), "MLP norm"),
    (dict(reg_tokens=4), "register tokens"),
    (dict(qk_norm=True), "QK normalisation"),
    (dict(pre_norm=True), "pre-norm"),
])
def test_unsupported_parts_are_named(kwargs, part):
    t = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, **kwargs)
    with pytest.raises(CheckpointError, match=part):
        rm.from_timm(t)
    with pytest.raises(CheckpointError, match=part.split()[0]):
        rm.config_from_state_dict(t.state_dict())


def test_per_block_model_with_qk_ne_v_refuses_timm(tiny_cfg):
    with pytest.raises(CheckpointError, match="identical blocks"):
        rm.to_timm(rm.build_model(tiny_cfg))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_checkpoint_files(tmp_path, tiny_cfg, suffix):
    from safetensors.torch import save_file

    src = rm.build_model(tiny_cfg)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save({"model": src.state_dict()}, path)  # wrapped, as DeiT's own checkpoints are
    else:
        save_file(src.state_dict(), str(path))
    dst = rm.build_model(tiny_cfg, checkpoint=path)
    _same_outputs(src, dst, tiny_cfg, atol=0)


def test_checkpoint_from_timm_file_infers_config(tmp_path):
    t = timm.create_model("deit_tiny_distilled_patch16_224")
    torch.save(t.state_dict(), tmp_path / "deit.pth")
    sd = rm.load_state_dict(tmp_path / "deit.pth")
    cfg = rm.config_from_state_dict(sd, heads=3)
    assert cfg == get_preset("revit_deit_tiny_distilled_patch16_224")
    r = rm.build_model(cfg, checkpoint=tmp_path / "deit.pth")
    _same_outputs(t, r, cfg)


def test_mismatched_checkpoint_is_refused(tmp_path, tiny_cfg):
    other = tiny_cfg.with_blocks(tiny_cfg.blocks[:2] + (tiny_cfg.blocks[1],))
    torch.save(rm.build_model(other).state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="shape mismatch.*blocks.2") as e:
        rm.build_model(tiny_cfg, checkpoint=tmp_path / "w.pth")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        rm.load_state_dict(tmp_path / "junk.pth")


def test_onnx_export_matches_torch(tmp_path, tiny_cfg):
    import onnxruntime as ort

    from revit.models.export import export_onnx

    cfg = tiny_cfg.with_blocks(tiny_cfg.blocks)
    cfg = type(cfg)(**{**cfg.__dict__, "distilled": True})
    model = rm.build_model(cfg).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size)
        (y,) = sess.run(None, {"images": x.numpy()})
        np.testing.assert_allclose(y, model(x).detach().numpy(), atol=1e-5, rtol=1e-4)


def _without_parts(tiny_cfg):
    """tiny_cfg with block 0 attention-less, a removed block, block 1 MLP-less: depth 3 from 4 given blocks."""
    from revit.config import REMOVED, BlockDims

    return tiny_cfg.with_blocks([BlockDims(0, 0, 0, 64), REMOVED, BlockDims(3, 4, 8, 0), tiny_cfg.blocks[2]])


def test_blocks_without_a_branch_forward_export_info_and_convert(cli, tiny_cfg, tmp_path):
    """Build, forward, forward_intermediates, `revit model export-onnx` (onnxruntime equals torch), `model info`,
    and to_timm refused in one line: timm's own VisionTransformer has no block without a branch."""
    import json

    import onnxruntime as ort

    from revit import counting
    from revit.models.checkpoint import save_weights

    cfg = _without_parts(tiny_cfg)
    assert cfg.depth == 3
    torch.manual_seed(0)
    model = rm.build_model(cfg).eval()
    assert [n for n, _ in model.blocks[0].named_children()] == ["norm2", "mlp", "ls2", "drop_path2"]
    assert [n for n, _ in model.blocks[1].named_children()] == ["norm1", "attn", "ls1", "drop_path1"]
    x = torch.randn(4, cfg.in_chans, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        y = model(x)
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
    assert len(inter) == 3 and inter[0].shape == (4, cfg.embed_dim, 4, 4)
    assert y.shape == (4, cfg.num_classes)

    cfg.save(tmp_path / "c.yaml")
    save_weights(model, tmp_path / "w.safetensors")
    code, _, err = cli("model", "export-onnx", tmp_path / "c.yaml", "--checkpoint", tmp_path / "w.safetensors",
                       "--out", tmp_path / "m.onnx")
    assert code == 0, err
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(got, y.numpy(), atol=1e-5, rtol=1e-4)

    code, out, _ = cli("model", "info", tmp_path / "c.yaml", "--json")
    d = json.loads(out)
    assert code == 0 and d["depth"] == 3 and [b["heads"] for b in d["blocks"]] == [0, 3, 1]
    assert [b["mlp_dim"] for b in d["blocks"]] == [64, 0, 24] and d["params"] == rm.count_params(model)
    assert [b["params"] for b in d["blocks"]] == [sum(p.numel() for p in b.parameters()) for b in model.blocks]
    assert d["params"] == counting.params(cfg)
    code, out, _ = cli("model", "info", tmp_path / "c.yaml")
    assert code == 0 and "heads 0: the block has no attention branch" in out

    with pytest.raises(CheckpointError, match="no block without attention") as e:
        rm.to_timm(model)
    assert "\n" not in str(e.value)
    assert rm.from_timm(model).config == cfg  # a revit model converts to itself
    from revit.models.checkpoint import config_from_state_dict

    # the widths read back from the weights alone (head counts are not in the tensors: given, as for timm)
    assert config_from_state_dict(model.state_dict(), heads=[0, 3, 1], qk_dim=[0, 4, 16]) == cfg
