"""revit.cost: the one cost model of prune/ and rules/, checked against independent recounts."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from revit import counting
from revit.config import BlockDims, ViTConfig
from revit.cost import CostModel, LatencyCost, MacsCost, build_cost, min_config, shrink
from revit.errors import ConfigError, OutsideDomainError, TableRangeError, UnknownNameError

CFG = ViTConfig(embed_dim=32, blocks=(BlockDims(2, 8, 8, 64), BlockDims(3, 4, 8, 40)), img_size=28, patch_size=7,
                in_chans=1, num_classes=10)


def test_macs_cost_and_savings_match_recounts():
    for conv in ("nvit", "timm"):
        m = MacsCost(conv)
        assert m.cost(CFG) == counting.macs(CFG, conv) and m.minimum_widths() == {}
        smaller = ViTConfig(32, (BlockDims(2, 8, 8, 48), CFG.blocks[1]), CFG.setting)
        assert m.saving(CFG, "mlp_dim", 0, 16) == counting.macs(CFG, conv) - counting.macs(smaller, conv)
        narrower = ViTConfig(24, CFG.blocks, CFG.setting)
        assert m.saving(CFG, "embed_dim", None, 8) == counting.macs(CFG, conv) - counting.macs(narrower, conv)
    assert MacsCost().format(4.71e9) == "4.71G MACs" and MacsCost("timm").unit == "MACs (linear only)"
    with pytest.raises(ConfigError, match="unknown MACs convention"):
        MacsCost("flops")  # type: ignore[arg-type]


def test_shrink_and_min_config():
    fewer = shrink(CFG, "heads", 1, 1)
    assert fewer.blocks == (CFG.blocks[0], BlockDims(2, 4, 8, 40))
    assert shrink(CFG, "embed_dim", None, 8).embed_dim == 24
    with pytest.raises(ConfigError, match="needs a block index"):
        shrink(CFG, "heads", None, 1)
    low = min_config(CFG, {"embed_dim": 16, "heads": 1, "qk_dim": 4, "v_dim": 16, "mlp_dim": 8})
    assert low.embed_dim == 16 and low.blocks == (BlockDims(1, 4, 8, 8), BlockDims(1, 4, 8, 8))


class Table:
    """A torch-free table: latency linear in MACs, measured for embed_dim 16..64 and heads from 2."""

    batch_size = 8

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, cfg: ViTConfig) -> Any:
        if not 16 <= cfg.embed_dim <= 64:
            raise TableRangeError(f"embed_dim={cfg.embed_dim} is outside", hint="pass extrapolate=True")
        return SimpleNamespace(total_s=counting.macs(cfg) * 1e-9)

    def marginal_savings(self, cfg: ViTConfig, block_index: int, units: dict[str, int] | None = None, *,
                         only: Any = None) -> dict[str, float]:
        self.calls += 1
        (kind, n), = (units or {}).items()
        return {kind: self.predict(cfg).total_s - self.predict(shrink(cfg, kind, block_index, n)).total_s}

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {"embed_dim": (16.0, 64.0), "heads": (1.5, 4.0), "qk_dim": (4.0, 8.0), "v_dim": (4.0, 8.0),
                "mlp_dim": (8.0, 64.0)}


def test_latency_cost_uses_the_table_and_caches():
    t = Table()
    c = build_cost("latency", t)
    assert isinstance(c, LatencyCost) and c.cost(CFG) == pytest.approx(counting.macs(CFG) * 1e-9)
    want = (counting.macs(CFG) - counting.macs(shrink(CFG, "qk_dim", 0, 4))) * 1e-9
    assert c.saving(CFG, "qk_dim", 0, 4) == pytest.approx(want) == c.saving(CFG, "qk_dim", 0, 4)
    assert t.calls == 1  # the second query came from the cache
    assert c.minimum_widths() == {"embed_dim": 16, "heads": 2, "qk_dim": 4, "v_dim": 4, "mlp_dim": 8}
    assert c.format(0.004) == "4 ms/batch, 0.5 ms/image"
    with pytest.raises(OutsideDomainError, match="outside; pass extrapolate"):
        c.cost(ViTConfig(8, CFG.blocks, CFG.setting))


def test_block_savings_equal_whole_model_recounts_for_every_kind_and_block():
    """MacsCost prices a block width on its block alone: equal to recounting the whole model."""
    for conv in ("nvit", "timm"):
        m = MacsCost(conv)
        for block in range(CFG.depth):
            for kind in ("heads", "qk_dim", "v_dim", "mlp_dim"):
                want = counting.macs(CFG, conv) - counting.macs(shrink(CFG, kind, block, 1), conv)
                assert m.saving(CFG, kind, block, 1) == want > 0


def test_latency_savings_are_reused_across_changes_elsewhere_only():
    """A block width's cached saving survives a change in another block, not one in its own block or EMB."""
    t = Table()
    c = LatencyCost(t)
    c.saving(CFG, "mlp_dim", 0, 8)
    other = shrink(CFG, "heads", 1, 1)  # block 1 changed: block 0's saving is the same number
    assert c.saving(other, "mlp_dim", 0, 8) == pytest.approx(
        (counting.macs(other) - counting.macs(shrink(other, "mlp_dim", 0, 8))) * 1e-9)
    assert t.calls == 1
    for changed in (shrink(CFG, "mlp_dim", 0, 8), shrink(CFG, "embed_dim", None, 8)):
        got = c.saving(changed, "mlp_dim", 0, 8)
        assert got == pytest.approx((counting.macs(changed) - counting.macs(shrink(changed, "mlp_dim", 0, 8))) * 1e-9)
    assert t.calls == 3
    c.saving(CFG, "embed_dim", None, 8)
    c.saving(other, "embed_dim", None, 8)  # the embedding's saving depends on every block: not reused
    assert t.calls == 5


def test_build_cost():
    m = MacsCost()
    assert build_cost(m) is m and isinstance(build_cost("macs"), MacsCost)
    assert build_cost("macs", convention="timm").unit == "MACs (linear only)"
    with pytest.raises(ConfigError, match="needs a latency table"):
        build_cost("latency")
    with pytest.raises(UnknownNameError, match="known: latency, macs"):
        build_cost("flops")
    assert isinstance(m, CostModel)
