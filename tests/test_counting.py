"""MACs and params from revit.counting against torch's FlopCounterMode and numel, independently."""

import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from revit import counting
from revit.config import REMOVED, BlockDims, ViTConfig
from revit.presets import PRESETS, get_preset


def measured(model, cfg):
    """(MACs with attention matmuls, MACs of linear layers only, params) measured on the model."""
    x = torch.randn(1, cfg.in_chans, cfg.img_size, cfg.img_size)
    model.eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(x)
    total = fc.get_total_flops() // 2
    counts = fc.get_flop_counts()["Global"]
    attn = sum(v for k, v in counts.items() if "bmm" in str(k)) // 2  # Q K^T and A V in the math path
    return total, total - attn, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_count_exactly(name):
    import timm

    import revit.models  # noqa: F401  (registers the presets in timm)

    cfg = get_preset(name)
    model = timm.create_model(name)
    macs, linear, params = measured(model, cfg)
    assert counting.macs(cfg) == macs
    assert counting.macs(cfg, convention="timm") == linear
    assert counting.params(cfg) == params


def test_deit_b_matches_the_paper():
    cfg = get_preset("revit_deit_base_distilled_patch16_224")
    assert counting.format_count(counting.macs(cfg)) == "17.66G"  # NVIT_SPEC section 5
    assert abs(counting.params(cfg) - 87.3e6) < 0.1e6


full = st.builds(BlockDims, heads=st.integers(1, 6), qk_dim=st.integers(1, 24), v_dim=st.integers(1, 24),
                 mlp_dim=st.integers(1, 96))
# absent branches: no attention (heads 0), no MLP (mlp_dim 0), and removed blocks (the config drops them)
dims = st.one_of(full, full.map(lambda b: BlockDims(0, 0, 0, b.mlp_dim)),
                 full.map(lambda b: BlockDims(b.heads, b.qk_dim, b.v_dim, 0)), st.just(REMOVED))


@st.composite
def configs(draw):
    patch = draw(st.sampled_from([2, 4, 7]))
    distilled = draw(st.booleans())
    return ViTConfig(
        embed_dim=draw(st.integers(4, 64)),
        blocks=tuple(draw(st.lists(dims, min_size=1, max_size=4).filter(lambda bs: any(not b.is_removed for b in bs)))),
        img_size=patch * draw(st.integers(1, 4)), patch_size=patch, in_chans=draw(st.integers(1, 3)),
        num_classes=draw(st.integers(1, 12)), distilled=distilled,
        class_token=distilled or draw(st.booleans()), qkv_bias=draw(st.booleans()),
        init_values=draw(st.sampled_from([None, 0.1])),
    )


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs())
def test_random_configs_count_exactly(cfg):
    from revit.models import build_model

    macs, linear, params = measured(build_model(cfg), cfg)
    assert (counting.macs(cfg), counting.macs(cfg, "timm"), counting.params(cfg)) == (macs, linear, params)


def test_absent_branches_and_blocks_count_exactly(tiny_cfg):
    """heads 0, mlp_dim 0 and a removed block: counts equal FlopCounterMode and numel, and drop by the branch."""
    from revit.models import build_model

    no_attn, no_mlp = BlockDims(0, 0, 0, 64), BlockDims(3, 4, 8, 0)
    cfg = ViTConfig(tiny_cfg.embed_dim, (no_attn, REMOVED, no_mlp, tiny_cfg.blocks[2]), tiny_cfg.setting,
                    init_values=0.1)
    model = build_model(cfg)
    assert len(model.blocks) == 3 and model.blocks[0].attn is None and model.blocks[0].norm1 is None
    assert model.blocks[1].mlp is None and model.blocks[1].norm2 is None
    assert (counting.macs(cfg), counting.macs(cfg, "timm"), counting.params(cfg)) == measured(model, cfg)
    full = ViTConfig(cfg.embed_dim, (BlockDims(3, 4, 8, 64), BlockDims(3, 4, 8, 64), tiny_cfg.blocks[2]),
                     cfg.setting)
    e, n = cfg.embed_dim, cfg.tokens
    attn_params = 2 * e + e * 3 * 16 + 3 * 16 + 3 * 8 * e + e + e  # norm1, qkv, proj, ls1
    mlp_params = 2 * e + e * 64 + 64 + 64 * e + e + e  # norm2, fc1, fc2, ls2
    assert counting.params(full) - counting.params(cfg) == attn_params + mlp_params
    assert counting.macs(full) - counting.macs(cfg) == n * e * 3 * 16 + n * 3 * 8 * e + n * n * 3 * 12 + 2 * n * e * 64


def test_parse_and_format():
    assert counting.parse_count("4.6G") == 4_600_000_000
    assert counting.parse_count("150M") == 150_000_000
    assert counting.parse_count("2e9") == 2_000_000_000
    with pytest.raises(Exception, match="cannot read"):
        counting.parse_count("lots")


def test_light_imports_do_not_load_torch():
    code = ("import sys, revit, revit.config, revit.counting, revit.presets, revit.trace, revit.workflows,"
            " revit.cli.main;"
            "revit.cli.main.build_parser(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    code = ("import sys; from revit.cli.main import main; main(['model', 'info', 'revit_small', '--json']);"
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
