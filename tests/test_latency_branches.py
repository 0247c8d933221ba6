"""Latency tables price a block without attention, without MLP, or removed (schema v2), and v1 tables refuse.

The exact checks use a synthetic backend whose half blocks are known functions; the measured ones build a
small onnxruntime table and time the half-block graphs and whole models against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.interpolate import RegularGridInterpolator
from test_latency_build import FakeBackend

from revit.config import REMOVED, WIDTH_KINDS, BlockDims, Setting, ViTConfig
from revit.errors import AbsentBranchError, FileFormatError
from revit.latency.accuracy import random_configs, validate
from revit.latency.calibration import calibrate
from revit.latency.grid import WidthGrid
from revit.latency.profiler import BuildSettings, build_table
from revit.latency.table import LatencyTable
from revit.presets import revit_micro

SETTING = {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "distilled": False, "class_token": True}
# a v1 table: the micro table shipped before the v2 rebuild (as the cost-target fixtures keep it)
V1 = Path(__file__).resolve().parent / "fixtures" / "cost_target" / "cpu_onnxruntime_fp32_bs64_t17_v1_amd.json"
FUSED = 2e-5  # what a full block saves over its two halves timed apart (a fusion): it is not their sum


def attn_half(e: float, h: float, q: float, v: float) -> float:
    return 1e-4 + 1e-8 * e * h * (2 * q + 2 * v)


def mlp_half(e: float, m: float) -> float:
    return 5e-5 + 2e-8 * e * m


def synthetic(e: int, d: BlockDims) -> float:
    """A block's seconds: each half multilinear in its widths, a full block a little less than their sum."""
    a = attn_half(e, d.heads, d.qk_dim, d.v_dim) if d.has_attention else 0.0
    m = mlp_half(e, d.mlp_dim) if d.has_mlp else 0.0
    return a + m - (FUSED if a and m else 0.0)


def _grid(depth: int = 4) -> WidthGrid:
    axes = {"embed_dim": (16, 32), "heads": (1, 2), "qk_dim": (4, 8), "v_dim": (4,), "mlp_dim": (8, 32)}
    return WidthGrid("tiny", axes, Setting(**SETTING, depth=depth))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> LatencyTable:
    out = tmp_path_factory.mktemp("v2") / "t.json"
    build_table(_grid(), FakeBackend(synthetic), out,
        BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, design="full"),
                progress=False)
    return LatencyTable.load(out)


def _v1(table: LatencyTable) -> LatencyTable:
    """The same table as revit wrote it before the half blocks (schema v1, no branches)."""
    doc = table.to_dict()
    del doc["branches"]
    return LatencyTable.from_dict({**doc, "schema": "revit/latency-table/v1"}, "old.json")


def _cfg(e: int, blocks: list[BlockDims]) -> ViTConfig:
    return ViTConfig(embed_dim=e, blocks=tuple(blocks), **SETTING)  # type: ignore[arg-type]


def test_a_v2_table_prices_blocks_without_attention_without_mlp_and_removed(v2: LatencyTable, tmp_path: Path) -> None:
    assert v2.prices_absent_branches and v2.half_cells == 2 * 2 * 2 * 1 + 2 * 2
    assert json.loads(Path(v2.source).read_text())["schema"] == "revit/latency-table/v2"
    no_attn, no_mlp = BlockDims(0, 0, 0, 20), BlockDims(2, 6, 4, 0)
    full = BlockDims(1, 8, 4, 32)
    for e in (16, 24, 32):  # on and between the knots: each half is multilinear, so interpolation is exact
        assert v2.block_latency(e, no_attn) == pytest.approx(mlp_half(e, 20), rel=1e-9)
        assert v2.block_latency(e, no_mlp) == pytest.approx(attn_half(e, 2, 6, 4), rel=1e-9)
    cfg = _cfg(24, [full, no_attn, REMOVED, no_mlp])
    assert cfg.depth == 3  # the removed block is no block
    pred = v2.predict(cfg)
    want = [synthetic(24, full), mlp_half(24, 20), attn_half(24, 2, 6, 4)]
    assert pred.per_block_s == pytest.approx(want, rel=1e-9)
    assert pred.total_s == pytest.approx(sum(want) + 1e-5 * 24, rel=1e-9)  # + the fixed parts, whatever the depth
    v2.save(tmp_path / "again.json")  # a round trip keeps the half blocks
    back = LatencyTable.load(tmp_path / "again.json")
    assert back.predict(cfg) == pred and back.branches is not None
    np.testing.assert_array_equal(back.branches["mlp"].values, v2.branches["mlp"].values)  # type: ignore[index]


def test_the_last_unit_of_a_branch_saves_the_whole_branch(v2: LatencyTable) -> None:
    blocks = [BlockDims(1, 8, 4, 32), BlockDims(2, 4, 4, 8), BlockDims(0, 0, 0, 16)]
    cfg = _cfg(32, blocks)
    units = {"heads": 1, "qk_dim": 8, "v_dim": 4, "mlp_dim": 8}

    def without(i: int, d: BlockDims) -> float:  # what the whole model saves when block i becomes d
        return v2.predict(cfg).total_s - v2.predict(cfg.with_blocks([*blocks[:i], d, *blocks[i + 1:]])).total_s

    s0 = v2.marginal_savings(cfg, 0, units)
    branch = synthetic(32, blocks[0]) - mlp_half(32, 32)  # the attention with its LayerNorm, softmax, residual add
    assert s0["heads"] == s0["qk_dim"] == s0["v_dim"] == pytest.approx(branch, rel=1e-9)
    assert s0["heads"] == pytest.approx(without(0, BlockDims(0, 0, 0, 32)), rel=1e-9)
    assert s0["mlp_dim"] == pytest.approx(synthetic(32, blocks[0]) - synthetic(32, BlockDims(1, 8, 4, 24)))
    s1 = v2.marginal_savings(cfg, 1, units)
    assert s1["mlp_dim"] == pytest.approx(synthetic(32, blocks[1]) - attn_half(32, 2, 4, 4), rel=1e-9)
    assert s1["mlp_dim"] == pytest.approx(without(1, BlockDims(2, 4, 4, 0)), rel=1e-9)
    s2 = v2.marginal_savings(cfg, 2, {"mlp_dim": 16})  # the last branch of a block: the whole block goes
    assert s2["mlp_dim"] == pytest.approx(mlp_half(32, 16), rel=1e-9) == pytest.approx(without(2, REMOVED))
    assert s2["heads"] == s2["qk_dim"] == s2["v_dim"] == 0.0  # no attention left to remove
    assert v2.marginal_savings(cfg, 0, units, branches=False)["heads"] == 0.0
    old = _v1(v2)  # a v1 table: as before, the last unit cannot go (0), unless asked to price it
    kinds = ["heads", "mlp_dim"]  # (not embed_dim: it prices every block, and block 2 has no attention)
    assert old.marginal_savings(cfg, 0, units, only=kinds) == {"heads": 0.0, "mlp_dim": pytest.approx(s0["mlp_dim"])}
    with pytest.raises(AbsentBranchError, match="schema v1"):
        old.marginal_savings(cfg, 0, units, branches=True, only=["heads"])


def test_v1_tables_load_predict_as_before_and_refuse_an_absent_branch_in_one_line(
        cli: Any, tmp_path: Path) -> None:
    raw = json.loads(V1.read_text())
    assert raw["schema"] == "revit/latency-table/v1" and "branches" not in raw
    t = LatencyTable.load(V1)
    assert not t.prices_absent_branches and t.to_dict()["schema"] == "revit/latency-table/v1"
    cfg = revit_micro()  # what it predicted before: the file's own cells, interpolated independently, + fixed parts
    interp = RegularGridInterpolator(tuple(np.asarray(raw["axes"][a], float) for a in WIDTH_KINDS),
                                     np.asarray(raw["values"], float))
    rows = [(cfg.embed_dim, b.heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in cfg.blocks]
    fixed = float(np.interp(cfg.embed_dim, raw["fixed"]["embed_dim"], raw["fixed"]["values"]))
    cal = raw["metadata"].get("calibrations") or [{"scale": 1.0, "offset_s": 0.0}]
    want = cal[-1]["scale"] * (interp(rows).sum() + fixed) + cal[-1].get("offset_s", 0.0)
    assert t.predict(cfg).total_s == pytest.approx(want, rel=1e-9)
    blocks = list(cfg.blocks)
    for d, branch in ((BlockDims(0, 0, 0, 384), "attention"), (BlockDims(4, 24, 24, 0), "mlp")):
        pruned = cfg.with_blocks([d, *blocks[1:]])
        for extrapolate in (False, True):  # extrapolation cannot make up a measurement that was never made
            with pytest.raises(AbsentBranchError) as e:
                t.predict(pruned, extrapolate=extrapolate)
            assert e.value.branch == branch and "\n" not in str(e.value)
        assert "built before revit priced blocks without attention or MLP (schema v1)" in str(e.value)
        assert ("rebuild it with `revit latency build --backend onnxruntime --preset micro --batch 64 "
                "--out NEW.json`") in str(e.value)
    pruned.save(tmp_path / "c.yaml")
    before = (tmp_path / "c.yaml").read_bytes()
    code, out, err = cli("latency", "query", V1, tmp_path / "c.yaml", "--out", tmp_path / "q.txt")
    assert code == 2 and out == "" and err.count("\n") == 1 and "rebuild it with `revit latency build" in err
    assert "Traceback" not in err and not (tmp_path / "q.txt").exists()
    assert (tmp_path / "c.yaml").read_bytes() == before


def test_the_cli_queries_a_config_without_a_branch(v2: LatencyTable, cli: Any, tmp_path: Path) -> None:
    cfg = _cfg(32, [BlockDims(0, 0, 0, 32), BlockDims(2, 8, 4, 0), BlockDims(1, 4, 4, 8)])
    cfg.save(tmp_path / "c.yaml")
    code, out, err = cli("latency", "query", v2.source, tmp_path / "c.yaml", "--json", "--savings", "--extrapolate")
    assert code == 0, err
    got = json.loads(out)
    assert got["total_s"] == pytest.approx(v2.predict(cfg).total_s)
    assert got["per_block_s"] == pytest.approx([mlp_half(32, 32), attn_half(32, 2, 8, 4),
                                                synthetic(32, BlockDims(1, 4, 4, 8))], rel=1e-9)
    assert got["marginal_savings_s"][0]["mlp_dim"] == pytest.approx(mlp_half(32, 32) - mlp_half(32, 31), rel=1e-6)


@pytest.mark.parametrize("damage", ["v2 without branches", "v1 with branches", "branch axes", "branch values",
                                    "one branch"])
def test_a_damaged_v2_file_is_one_clear_line(v2: LatencyTable, tmp_path: Path, damage: str) -> None:
    doc = v2.to_dict()
    if damage == "v2 without branches":
        del doc["branches"]
    elif damage == "v1 with branches":
        doc["schema"] = "revit/latency-table/v1"
    elif damage == "branch axes":
        doc["branches"]["mlp"]["axes"] = {"embed_dim": [16, 32], "heads": [1, 2]}
    elif damage == "branch values":
        doc["branches"]["attention"]["values"][0][0][0][0] = -1.0
    else:
        del doc["branches"]["attention"]
    p = tmp_path / "t.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(FileFormatError) as e:
        LatencyTable.load(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_validation_draws_absent_branches_from_a_v2_table_and_calibration_keeps_them(v2: LatencyTable) -> None:
    drawn = random_configs(v2, 40, seed=2)
    blocks = [b for c in drawn for b in c.blocks]
    assert any(not b.has_attention for b in blocks) and any(not b.has_mlp for b in blocks)
    assert any(c.depth < 4 for c in drawn) and all(c.depth >= 1 for c in drawn)
    old = random_configs(_v1(v2), 40, seed=2)  # a v1 table draws full blocks only, at full depth
    assert all(b.has_attention and b.has_mlp for c in old for b in c.blocks) and all(c.depth == 4 for c in old)
    r = validate(v2, FakeBackend(synthetic), 0, configs=drawn, noise_k=0, passes=1, model_source="graph",
                 progress=False)
    assert r.mape < 1e-9  # the fake backend's whole model is its blocks + fixed parts: exact

    class Slower(FakeBackend):  # the same machine 1.5x slower today
        def model(self, cfg: ViTConfig, batch: int) -> Any:
            w = super().model(cfg, batch)
            w.v *= 1.5
            return w

    cal = calibrate(v2, Slower(synthetic), models=5, passes=1, source="graph", configs=drawn[:5])
    scaled = v2.with_calibration(cal)
    assert scaled.prices_absent_branches and cal.scale == pytest.approx(1.5, rel=1e-6)
    pruned = _cfg(32, [BlockDims(0, 0, 0, 32), BlockDims(2, 8, 4, 0)])
    assert scaled.predict(pruned).total_s == pytest.approx(cal.apply(v2.predict(pruned).total_s), rel=1e-9)
    assert scaled.uncalibrated().predict(pruned) == v2.predict(pruned)


# measured: a small onnxruntime table -------------------------------------------------------------
@pytest.fixture(scope="module")
def ort_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[LatencyTable, Any]:
    from revit.latency.backends import get_backend

    axes = {"embed_dim": (32, 64), "heads": (1, 4), "qk_dim": (16,), "v_dim": (16,), "mlp_dim": (32, 256)}
    grid = WidthGrid("small", axes, Setting(**SETTING, depth=2))  # type: ignore[arg-type]
    backend = get_backend("onnxruntime", threads=1, clock="thread")
    out = tmp_path_factory.mktemp("ort") / "t.json"
    table = build_table(grid, backend, out,
        BuildSettings(smooth=0.0, batch=16, passes=3, repeats=7, warmup=2, design="full"),
                        progress=False)
    return table, backend


def test_a_half_block_cell_is_the_backends_timing_of_that_half(ort_table: tuple[LatencyTable, Any]) -> None:
    """Each half's cell, timed again directly (less the empty call, in the build's reference units), within the
    table's noise; and the halves are not the full block: their sum is near it, each alone well below it."""
    from revit.latency.timing import Reference, ref_level, time_bracketed

    table, backend = ort_table
    assert table.branches is not None
    ref = Reference.of_table(table, backend, 2)
    assert ref is not None
    level = float(table.metadata["measurement"]["reference"]["median_s"])

    def timed(d: BlockDims | None) -> float:  # seconds in the table's units: the median of reference-normalised runs
        w = backend.block(64, d, table.tokens, table.batch_size) if d else backend.overhead(table.tokens, 64, 16)
        samples: list[float] = []
        for _ in range(3):
            t, refs = time_bracketed(w, 2, 7, ref)
            samples += [x / ref_level(refs) for x in t]
        w.close()
        return float(np.median(samples)) * level

    empty = timed(None)
    mlp = timed(BlockDims(0, 0, 0, 256)) - empty
    attn = timed(BlockDims(4, 16, 16, 0)) - empty
    cell_mlp = float(table.branches["mlp"].values[1, 1])
    cell_attn = float(table.branches["attention"].values[1, 1, 0, 0])
    full = float(table.values[1, 1, 0, 0, 1])
    assert cell_mlp == pytest.approx(mlp, rel=0.25) and cell_attn == pytest.approx(attn, rel=0.25)
    assert cell_mlp + cell_attn == pytest.approx(full, rel=0.3)
    assert max(cell_mlp, cell_attn) < 0.85 * full
    ref.close()


def test_a_config_without_a_branch_is_predicted_as_measured(ort_table: tuple[LatencyTable, Any]) -> None:
    """Whole models of blocks without attention, without MLP, and of fewer blocks: the table's prediction against
    the model graph timed on the same backend (pricing the absent branches as present would be off by 1.5x+)."""
    table, backend = ort_table
    cfgs = [_cfg(64, [BlockDims(0, 0, 0, 256)] * 2), _cfg(64, [BlockDims(4, 16, 16, 0)] * 2),
            _cfg(48, [BlockDims(4, 16, 16, 0), BlockDims(0, 0, 0, 128)]), _cfg(64, [BlockDims(4, 16, 16, 256)])]
    r = validate(table, backend, 0, configs=cfgs, noise_k=0, passes=3, model_source="graph", progress=False)
    assert r.worst < 0.3, r.to_dict()["rows"]
    # the same configs with the absent branches priced as present (at these widths): far off what was measured
    as_present = [table.predict(_cfg(64, [BlockDims(4, 16, 16, 256)] * 2)).total_s] * 2
    assert all(p > 1.5 * m for p, m in zip(as_present, r.measured[:2], strict=True)), (as_present, r.measured)
