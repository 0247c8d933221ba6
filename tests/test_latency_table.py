"""Latency tables: lookup, prediction, savings, file format, NViT import, the torch-free CLI query."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.interpolate import RegularGridInterpolator

from revit.cli.main import main
from revit.config import WIDTH_KINDS, BlockDims, ViTConfig, uniform
from revit.errors import ConfigError, FileFormatError, TableRangeError
from revit.latency.table import FixedParts, LatencyTable

_DEFAULT_NVIT = Path(__file__).resolve().parents[2] / "shared" / "nvit" / "latency_head.json"
NVIT_JSON = Path(os.environ.get("REVIT_NVIT_TABLE", _DEFAULT_NVIT))
if not NVIT_JSON.exists():
    NVIT_JSON = Path("/work/shared/nvit/latency_head.json")
needs_nvit = pytest.mark.skipif(not NVIT_JSON.exists(), reason="NViT's latency_head.json (shared/nvit/) is not "
                                "present; set REVIT_NVIT_TABLE to its path")
SHIPPED = Path(__file__).resolve().parents[1] / "latency_tables" / "cpu_onnxruntime_fp32_bs64_t17.json"
SETTING = {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "distilled": False, "class_token": True}
MICRO_AXES = {"embed_dim": [32, 64, 96], "heads": [1, 2, 4], "qk_dim": [4, 12, 24], "v_dim": [4, 24],
              "mlp_dim": [8, 128, 384]}


def _meta(**kw: object) -> dict[str, object]:
    m: dict[str, object] = {"device": "test", "backend": "synthetic", "backend_version": "0", "dtype": "fp32",
                            "batch_size": 8, "tokens": 17, "created": "2026-01-01T00:00:00+00:00",
                            "revit_version": "0.1.0", "measurement": {"statistic": "median"}}
    m.update(kw)
    return m


@pytest.fixture
def table() -> LatencyTable:
    rng = np.random.default_rng(0)
    shape = tuple(len(MICRO_AXES[a]) for a in WIDTH_KINDS)
    values = rng.uniform(1e-4, 1e-3, shape)
    fixed = FixedParts(setting=SETTING, embed_dim=(32.0, 64.0, 96.0), values=(1e-4, 2e-4, 4e-4))
    return LatencyTable(MICRO_AXES, values, metadata=_meta(), spread=values * 0.01, fixed=fixed)


def _cfg(e: int, blocks: list[BlockDims]) -> ViTConfig:
    return ViTConfig(embed_dim=e, blocks=tuple(blocks), **SETTING)  # type: ignore[arg-type]


def _multilinear(axes: dict[str, list[int]], values: np.ndarray, p: tuple[float, ...]) -> float:
    """Independent multilinear interpolation: weighted sum over the 32 corners of p's cell."""
    lo_idx, weights = [], []
    for a, x in zip(WIDTH_KINDS, p, strict=True):
        pts = np.asarray(axes[a], float)
        i = min(max(int(np.searchsorted(pts, x, side="right")) - 1, 0), len(pts) - 2)
        lo_idx.append(i)
        weights.append((x - pts[i]) / (pts[i + 1] - pts[i]))
    total = 0.0
    for corner in itertools.product((0, 1), repeat=5):
        w = np.prod([t if c else 1 - t for c, t in zip(corner, weights, strict=True)])
        total += w * values[tuple(i + c for i, c in zip(lo_idx, corner, strict=True))]
    return float(total)


def test_exact_on_grid_points(table: LatencyTable) -> None:
    for idx in itertools.product(*(range(len(MICRO_AXES[a])) for a in WIDTH_KINDS)):
        e, h, q, v, m = (MICRO_AXES[a][i] for a, i in zip(WIDTH_KINDS, idx, strict=True))
        assert table.block_latency(e, BlockDims(h, q, v, m)) == pytest.approx(table.values[idx], rel=1e-12)


def test_off_grid_is_multilinear(table: LatencyTable) -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = tuple(rng.uniform(MICRO_AXES[a][0], MICRO_AXES[a][-1]) for a in WIDTH_KINDS)
        assert table.lookup([p])[0] == pytest.approx(_multilinear(MICRO_AXES, table.values, p), rel=1e-10)


def test_predict_sums_blocks_and_fixed(table: LatencyTable) -> None:
    blocks = [BlockDims(2, 8, 12, 100), BlockDims(4, 24, 24, 384), BlockDims(1, 4, 4, 8)]
    cfg = _cfg(80, blocks)
    pred = table.predict(cfg)
    want_blocks = [table.block_latency(80, b) for b in blocks]
    assert pred.per_block_s == pytest.approx(want_blocks)
    assert pred.fixed_s == pytest.approx(2e-4 + (4e-4 - 2e-4) * 16 / 32)
    assert pred.total_s == pytest.approx(sum(want_blocks) + pred.fixed_s)
    assert pred.per_image_s == pytest.approx(pred.total_s / 8)
    assert pred.fixed_known
    other = ViTConfig(embed_dim=80, blocks=tuple(blocks), img_size=28, patch_size=7, in_chans=3, num_classes=10)
    p2 = table.predict(other)
    assert p2.fixed_s is None and not p2.fixed_known and "in_chans" in p2.note
    assert p2.total_s == pytest.approx(sum(want_blocks))


def test_out_of_range_names_axis_and_range(table: LatencyTable) -> None:
    cfg = _cfg(64, [BlockDims(2, 8, 8, 500)])
    with pytest.raises(TableRangeError, match=r"mlp_dim=500 .*\[8, 384\]"):
        table.predict(cfg)
    # linear extrapolation along mlp from the last segment
    b_hi, b_lo = BlockDims(2, 8, 8, 384), BlockDims(2, 8, 8, 128)
    slope = (table.block_latency(64, b_hi) - table.block_latency(64, b_lo)) / 256
    got = table.block_latency(64, BlockDims(2, 8, 8, 500), extrapolate=True)
    assert got == pytest.approx(table.block_latency(64, b_hi) + slope * 116)
    with pytest.raises(ConfigError, match="tokens"):
        table.predict(uniform(64, 2, 2, head_dim=8, mlp_dim=64))


def test_marginal_savings_match_differences(table: LatencyTable) -> None:
    blocks = [BlockDims(3, 16, 20, 200), BlockDims(2, 8, 8, 64)]
    cfg = _cfg(72, blocks)
    units = {"heads": 1, "qk_dim": 4, "v_dim": 4, "mlp_dim": 8, "embed_dim": 8}
    s = table.marginal_savings(cfg, 0, units, clip=False)
    L = table.block_latency
    b = blocks[0]
    assert s["heads"] == pytest.approx(L(72, b) - L(72, BlockDims(2, 16, 20, 200)))
    assert s["qk_dim"] == pytest.approx(L(72, b) - L(72, BlockDims(3, 12, 20, 200)))
    assert s["v_dim"] == pytest.approx(L(72, b) - L(72, BlockDims(3, 16, 16, 200)))
    assert s["mlp_dim"] == pytest.approx(L(72, b) - L(72, BlockDims(3, 16, 20, 192)))
    assert s["embed_dim"] == pytest.approx(sum(L(72, d) - L(64, d) for d in blocks))
    clipped = table.marginal_savings(cfg, 0, units)
    assert all(v >= 0 for v in clipped.values())
    assert clipped == {k: max(v, 0.0) for k, v in s.items()}
    # a block at its minimum cannot lose a unit: saving 0
    at_min = table.marginal_savings(_cfg(72, [BlockDims(1, 4, 4, 8)]), 0, units)
    assert at_min["heads"] == at_min["qk_dim"] == at_min["v_dim"] == at_min["mlp_dim"] == 0.0


def test_round_trip(table: LatencyTable, tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    table.save(p)
    back = LatencyTable.load(p)
    assert back.axes == table.axes and back.metadata == table.metadata
    np.testing.assert_array_equal(back.values, table.values)
    np.testing.assert_array_equal(back.spread, table.spread)
    assert back.fixed == table.fixed
    cfg = _cfg(56, [BlockDims(2, 8, 8, 64)] * 3)
    assert back.predict(cfg) == table.predict(cfg)
    assert json.loads(p.read_text())["schema"] == "revit/latency-table/v1"


@pytest.mark.parametrize("damage", ["truncate", "schema", "shape", "nan", "axis", "metadata"])
def test_corrupted_file_is_a_clear_error(table: LatencyTable, tmp_path: Path, damage: str) -> None:
    p = tmp_path / "t.json"
    table.save(p)
    text = p.read_text()
    doc = json.loads(text)
    if damage == "truncate":
        p.write_text(text[: len(text) // 2])
    else:
        if damage == "schema":
            doc["schema"] = "revit/latency-table/v9"
        elif damage == "shape":
            doc["values"] = doc["values"][:-1]
        elif damage == "nan":
            doc["values"] = (np.asarray(doc["values"]) * np.nan).tolist()
        elif damage == "axis":
            doc["axes"]["heads"] = [4, 2, 1]
        else:
            del doc["metadata"]["batch_size"]
        p.write_text(json.dumps(doc).replace("NaN", "NaN"))
    with pytest.raises(FileFormatError) as e:
        LatencyTable.load(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


# NViT -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nvit() -> LatencyTable:
    from revit.latency.nvit import import_nvit

    return import_nvit(NVIT_JSON)


def _deit_b() -> ViTConfig:
    return uniform(768, 12, 12, distilled=True)


@needs_nvit
def test_nvit_deit_b_total_and_savings(nvit: LatencyTable) -> None:
    pred = nvit.predict(_deit_b())
    assert pred.per_block_s[0] == pytest.approx(0.0808, abs=1e-4)
    assert pred.total_s == pytest.approx(0.970, abs=1e-3)
    assert pred.fixed_s is None and "unknown" in pred.note
    s = nvit.marginal_savings(_deit_b(), 5)
    expected = {"heads": 2.5e-3, "embed_dim": 6.1e-4, "qk_dim": 1.5e-4, "v_dim": 1.1e-4, "mlp_dim": 4.9e-6}
    for k, v in expected.items():
        assert s[k] == pytest.approx(v, rel=0.04), k


def _raw_interpolator() -> RegularGridInterpolator:
    """Independent reading of the raw JSON with the official rules (EMB=0 zeros, MLP=0 <- MLP=1)."""
    raw = json.loads(NVIT_JSON.read_text())
    E, H, Q, V = [256, 512, 768], [1, 3, 6, 9, 12], [1, 16, 32, 48, 64], [1, 16, 32, 48, 64]
    M = [1] + list(range(128, 3073, 128))
    grid = np.zeros((4, 5, 5, 5, len(M)))
    for (i, e), (j, h), (k, q), (l_, v), (m, mm) in itertools.product(*(list(enumerate(x)) for x in (E, H, Q, V, M))):
        grid[i + 1, j, k, l_, m] = raw[f"EMB_{e}"][f"QK_{h}_{q}"][f"V_{v}"][f"MLP_{mm}"]
    return RegularGridInterpolator(([0] + E, H, Q, V, [0] + M[1:]), grid)


@needs_nvit
def test_nvit_off_grid_equals_scipy_on_raw_json(nvit: LatencyTable) -> None:
    ref = _raw_interpolator()
    rng = np.random.default_rng(3)
    pts = np.column_stack([rng.uniform(0, 768, 40), rng.uniform(1, 12, 40), rng.uniform(1, 64, 40),
                           rng.uniform(1, 64, 40), rng.uniform(0, 3072, 40)])
    pts[0] = (600, 10, 40, 56, 1000)
    pts[1] = (100, 2, 8, 8, 50)  # between the EMB=0 plane and 256, and MLP between 0 and 128
    np.testing.assert_allclose(nvit.lookup(pts), ref(pts), rtol=1e-12)


@needs_nvit
def test_nvit_table_is_not_monotone(nvit: LatencyTable) -> None:
    """NViT's table has noise: negative steps along QK, V or MLP (section 3 counts 679)."""
    v = nvit.values[1:]
    neg = sum(int(np.sum(np.diff(v, axis=ax) < 0)) for ax in (2, 3, 4))
    assert neg == 679


def _monotone_violations(t: LatencyTable) -> list[str]:
    bad = []
    assert t.spread is not None
    for ax, a in enumerate(WIDTH_KINDS):
        d = np.diff(t.values, axis=ax)
        sl_lo = [slice(None)] * 5
        sl_hi = [slice(None)] * 5
        sl_lo[ax], sl_hi[ax] = slice(0, -1), slice(1, None)
        allow = t.spread[tuple(sl_lo)] + t.spread[tuple(sl_hi)]
        n = int(np.sum(d < -allow))
        if n:
            bad.append(f"{a}: {n} steps down by more than the spread")
    return bad


@pytest.mark.parametrize("shipped", [SHIPPED, SHIPPED.with_name("epyc_onnxruntime_fp32_bs64_t17.json")],
                         ids=["xeon", "epyc"])
def test_shipped_table_monotone_within_spread(shipped: Path) -> None:
    """A wider block never costs less than its neighbour beyond their spreads, but for a rare glitch: at most one
    step in a thousand, by at most 10% (the shipped micro tables have 16,407 steps; one of the Xeon's, a V step at
    EMB 56, goes down 5.6%)."""
    t = LatencyTable.load(shipped)
    d = t.metadata["design"]
    assert d["cells_measured"] <= d["max_cells"]
    assert t.spread is not None
    steps = down = 0
    for ax in range(len(WIDTH_KINDS)):
        lo, hi = [slice(None)] * 5, [slice(None)] * 5
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        diff = t.values[tuple(hi)] - t.values[tuple(lo)]
        beyond = diff < -(t.spread[tuple(lo)] + t.spread[tuple(hi)])
        steps, down = steps + diff.size, down + int(beyond.sum())
        assert not (beyond & (diff < -0.1 * t.values[tuple(lo)])).any(), WIDTH_KINDS[ax]
    assert down <= steps / 1000, (down, steps)
    from revit.presets import revit_micro

    pred = t.predict(revit_micro())
    assert pred.fixed_known and pred.total_s > 0


# CLI --------------------------------------------------------------------------------------------
def test_query_cli_is_torch_free(table: LatencyTable, tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    table.save(p)
    cfg = _cfg(64, [BlockDims(2, 8, 8, 64)] * 4)
    cfg.save(tmp_path / "c.yaml")
    code = ("import sys, json; from revit.cli.main import main; rc = main(['latency', 'query', sys.argv[1], "
            "sys.argv[2], '--json', '--savings']); assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code, str(p), str(tmp_path / "c.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["total_s"] == pytest.approx(table.predict(cfg).total_s)
    assert len(out["marginal_savings_s"]) == 4


def test_query_cli_out_of_range_is_one_line(table: LatencyTable, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "t.json"
    table.save(p)
    _cfg(128, [BlockDims(2, 8, 8, 64)]).save(tmp_path / "c.yaml")
    assert main(["latency", "query", str(p), str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "embed_dim=128" in err and "[32, 96]" in err
    assert main(["latency", "query", str(p), str(tmp_path / "c.yaml"), "--extrapolate"]) == 0


@needs_nvit
def test_import_nvit_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nvit.json"
    assert main(["latency", "import-nvit", str(NVIT_JSON), "--out", str(out)]) == 0
    assert main(["latency", "query", str(out), "revit_deit_base_distilled_patch16_224", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["total_s"] == pytest.approx(0.9698, abs=1e-3) and res["fixed_known"] is False


def test_marginal_savings_only_some_kinds(table: LatencyTable) -> None:
    """``only`` computes just the kinds asked for, so a kind at the range's edge does not raise."""
    cfg = _cfg(72, [BlockDims(2, 4, 8, 64)])  # qk_dim at the table's lower bound
    full = table.marginal_savings(cfg, 0, {"heads": 1, "v_dim": 4, "mlp_dim": 8, "qk_dim": 4, "embed_dim": 8})
    part = table.marginal_savings(cfg, 0, {"mlp_dim": 8}, only=["mlp_dim"])
    assert list(part) == ["mlp_dim"] and part["mlp_dim"] == pytest.approx(full["mlp_dim"])


def test_widths_off_the_tables_grid_are_named_and_the_query_says_so(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    """Torch-Pruning leaves widths such as EMB 71 or QK 13; the shipped table's space steps EMB by 8 and QK by 4."""
    t = LatencyTable.load(SHIPPED)
    on = ViTConfig(72, [BlockDims(4, 12, 12, 200), BlockDims(0, 0, 0, 96)], img_size=28, patch_size=7, in_chans=1,
                   num_classes=10)
    off = ViTConfig(71, [BlockDims(4, 13, 12, 201), BlockDims(0, 0, 0, 96)], img_size=28, patch_size=7, in_chans=1,
                    num_classes=10)
    assert t.off_grid(on) == [] and t.off_grid(off) == ["embed_dim 71", "qk_dim 13", "mlp_dim 201"]
    assert LatencyTable.from_dict({**json.loads(SHIPPED.read_text()), "metadata": {
        k: v for k, v in json.loads(SHIPPED.read_text())["metadata"].items() if k != "space"}}).off_grid(off) == []
    path = tmp_path / "off.yaml"
    off.save(path)
    assert main(["latency", "query", str(SHIPPED), str(path)]) == 0
    out = capsys.readouterr().out
    assert "off the table's grid (embed_dim 71; qk_dim 13; mlp_dim 201)" in out
    assert "alignment found (embed_dim, qk_dim)" in out  # the shipped table is aligned on those axes
    on.save(path)
    assert main(["latency", "query", str(SHIPPED), str(path)]) == 0
    assert "off the table's grid" not in capsys.readouterr().out
