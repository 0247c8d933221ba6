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
    d = tiny_cfg.to_dict(derived=True)
    d["derived"]["macs"] = 1  # a lie in the file must not matter
    assert ViTConfig.from_dict(d) == tiny_cfg


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["blocks"][0].update(heads=0), "heads must be >= 1"),
        (lambda d: d["blocks"][1].update(mlp_dim=-16), "mlp_dim must be >= 1"),
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
