import pytest
import yaml

from revit.config import BlockDims, ViTConfig, uniform
from revit.errors import ConfigError, FileFormatError
from revit.presets import PRESETS, get_preset, resolve_config


def test_yaml_round_trip_every_preset(tmp_path):
    for name in PRESETS:
        cfg = get_preset(name)
        path = tmp_path / f"{name}.yaml"
        cfg.save(path)
        assert ViTConfig.load(path) == cfg
        assert yaml.safe_load(path.read_text())["schema"] == "revit/vit-config/v1"


def test_round_trip_keeps_per_block_dims(tiny_cfg, tmp_path):
    tiny_cfg.save(tmp_path / "c.yaml")
    back = ViTConfig.load(tmp_path / "c.yaml")
    assert back.blocks == tiny_cfg.blocks and back.blocks[1] == BlockDims(3, 4, 8, 40)


def test_derived_numbers_in_file_are_ignored(tiny_cfg, tmp_path):
    from revit import counting

    d = tiny_cfg.to_dict(derived=counting.derived(tiny_cfg))
    d["derived"]["macs"] = 1  # a lie in the file must not matter
    assert ViTConfig.from_dict(d) == tiny_cfg


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["blocks"][0].update(heads=0), "heads 0 (no attention) needs qk_dim 0 and v_dim 0"),
        (lambda d: d["blocks"][0].update(heads=-1), "heads must be >= 0"),
        (lambda d: d["blocks"][0].update(qk_dim=0), "qk_dim (with"),
        (lambda d: d["blocks"][1].update(mlp_dim=-16), "mlp_dim must be >= 0"),
        (lambda d: d.update(blocks=[dict(heads=0, qk_dim=0, v_dim=0, mlp_dim=0)] * 2), "every block is removed"),
        (lambda d: d["blocks"][0].update(qk_dim="8"), "qk_dim must be an integer"),
        (lambda d: d["blocks"][0].update(qk_dim=8.5), "qk_dim must be an integer"),
        (lambda d: d["blocks"][0].update(colour=3), "unknown key(s) colour"),
        (lambda d: d.update(blocks=[]), "at least one block"),
        (lambda d: d.update(embed_dim=-1), "embed_dim must be >= 1"),
        (lambda d: d.update(depth=12), "unknown key(s) depth"),
        (lambda d: d.update(distilled="yes"), "distilled must be true or false"),
        (lambda d: d.update(img_size=30), "not a multiple of patch_size"),
        (lambda d: d.update(schema="revit/vit-config/v9"), "unsupported schema version"),
        (lambda d: d.pop("schema"), "expected 'revit/vit-config/v1'"),
        (lambda d: d["blocks"][0].pop("v_dim"), "missing key(s) v_dim"),
    ],
)
def test_validation_errors(tiny_cfg, mutate, message):
    d = tiny_cfg.to_dict()
    mutate(d)
    with pytest.raises((ConfigError, FileFormatError)) as e:
        ViTConfig.from_dict(d, "c.yaml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_malformed_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("schema: revit/vit-config/v1\nblocks: [\n  - {heads: 2\n")
    with pytest.raises(FileFormatError, match="malformed YAML"):
        ViTConfig.load(p)


def test_uniform_and_resolve():
    cfg = uniform(192, 12, 3)
    assert cfg.blocks[0] == BlockDims(3, 64, 64, 768) and cfg.tokens == 197
    assert resolve_config("revit_deit_tiny_patch16_224") == cfg
    with pytest.raises(Exception, match="known: revit_deit_base"):
        resolve_config("revit_huge")


def test_official_rule_presets_match_spec():
    s = get_preset("revit_small")
    assert [b.heads for b in s.blocks] == [10, 4, 4, 8, 8, 8, 8, 8, 8, 4, 4, 10]
    assert [b.qk_dim for b in s.blocks] == [32, 16, 16, 32, 32, 32, 32, 32, 32, 16, 16, 32]
    assert {b.v_dim for b in s.blocks} == {64}
    assert [b.mlp_dim for b in s.blocks] == [1152] * 3 + [2304] * 6 + [1152] * 3
    t = get_preset("revit_tiny")  # EMB 176: y = round(0.88) = 1, x = round(1.1) = 1
    assert [b.heads for b in t.blocks] == [10, 2, 2, 4, 4, 4, 4, 4, 4, 2, 2, 10]
    assert [b.qk_dim for b in t.blocks] == [16, 8, 8, 16, 16, 16, 16, 16, 16, 8, 8, 16]


def test_setting_is_composed_and_flat_in_yaml():
    from dataclasses import replace

    from revit.config import Setting

    s = Setting.PRESETS["micro"]
    cfg = uniform(96, 8, 4, img_size=28, patch_size=7, in_chans=1, num_classes=10)
    assert cfg.setting == s and cfg.tokens == s.tokens == 17 and cfg.img_size == 28 and cfg.depth == s.depth
    assert ViTConfig(96, cfg.blocks, s) == cfg == s.config(96, cfg.blocks)
    assert replace(cfg, num_classes=5).setting == replace(s, num_classes=5)  # flat keywords still work
    d = cfg.to_dict()
    assert "setting" not in d and "depth" not in d and d["img_size"] == 28 and d["qkv_bias"] is True
    assert ViTConfig(96, cfg.blocks[:3], s).setting.depth == 3  # a config's setting has its blocks' depth
    with pytest.raises(ConfigError, match="unknown argument.*colour"):
        ViTConfig(96, cfg.blocks, colour=1)
    with pytest.raises(ConfigError, match="setting has depth 8, got 2 blocks"):
        s.config(96, cfg.blocks[:2])


def test_setting_parse():
    from revit.config import Setting

    assert Setting.parse("imagenet") == Setting()
    assert Setting.parse({"preset": "micro", "num_classes": 5}).num_classes == 5
    assert Setting.parse({"depth": 4, "img_size": 32, "patch_size": 4}).tokens == 65
    assert Setting(distilled=True).fixed_parts() == {"img_size": 224, "patch_size": 16, "in_chans": 3,
                                                     "num_classes": 1000, "distilled": True, "class_token": True}
    with pytest.raises(ConfigError, match="unknown setting 'cifar'; known: imagenet, micro"):
        Setting.parse("cifar")
    with pytest.raises(ConfigError, match=r"spec: unknown key\(s\) colour; allowed: preset, img_size"):
        Setting.parse({"colour": 1}, "spec")
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        Setting.parse({"img_size": 30})


def test_errors_keep_the_fix_apart():
    from revit.errors import OutsideDomainError, RevitError, TableRangeError, UnknownNameError, check_keys

    e = TableRangeError("embed_dim=8 is outside", hint="pass extrapolate=True")
    assert isinstance(e, OutsideDomainError) and str(e) == "embed_dim=8 is outside; pass extrapolate=True"
    assert e.message == "embed_dim=8 is outside" and e.hint == "pass extrapolate=True"
    assert str(UnknownNameError("unknown x")) == "unknown x" and RevitError("a").hint is None
    with pytest.raises(ConfigError, match=r"^train: unknown key\(s\) a, b; allowed: lr, epochs$"):
        check_keys({"lr": 1, "b": 2, "a": 3}, ["lr", "epochs"], "train")


def test_a_key_given_twice_is_refused(tmp_path):
    """YAML would keep the last value silently; revit names the key and its line instead."""
    import pytest

    from revit.config import ViTConfig
    from revit.errors import FileFormatError

    p = tmp_path / "dup.yaml"
    p.write_text("schema: revit/vit-config/v1\nembed_dim: 64\nimg_size: 28\nembed_dim: 96\npatch_size: 7\n"
                 "in_chans: 1\nnum_classes: 10\nblocks: [{heads: 2, qk_dim: 8, v_dim: 8, mlp_dim: 32}]\n")
    with pytest.raises(FileFormatError, match="line 4: key 'embed_dim' is given twice"):
        ViTConfig.load(p)
    ok = p.read_text().replace("embed_dim: 96\n", "")
    assert ViTConfig.from_yaml_text(ok).embed_dim == 64


def test_absent_branches_and_removed_blocks(tiny_cfg, tmp_path):
    """heads 0 / mlp_dim 0 keep the block without that branch; a removed block (both 0) shrinks the depth."""
    from revit.config import REMOVED

    no_attn, no_mlp = BlockDims(0, 0, 0, 40), BlockDims(2, 8, 8, 0)
    cfg = tiny_cfg.with_blocks([no_attn, REMOVED, no_mlp])
    assert cfg.blocks == (no_attn, no_mlp) and cfg.depth == cfg.setting.depth == 2
    assert not no_attn.has_attention and no_attn.has_mlp and not no_mlp.has_mlp and REMOVED.is_removed
    cfg.save(tmp_path / "c.yaml")
    assert ViTConfig.load(tmp_path / "c.yaml") == cfg
    assert [b["mlp_dim"] for b in yaml.safe_load((tmp_path / "c.yaml").read_text())["blocks"]] == [40, 0]
    # with heads 0 the per-head widths may be left out of the file (they are 0)
    d = cfg.to_dict()
    d["blocks"][0] = {"heads": 0, "mlp_dim": 40}
    assert ViTConfig.from_dict(d) == cfg
    with pytest.raises(ConfigError, match="no head width"):  # refused, not normalised
        BlockDims(0, 64, 0, 40)
    with pytest.raises(ConfigError, match="depth 0"):
        tiny_cfg.with_blocks([])
