"""``revit latency room``: at equal MACs, how far apart attention- and MLP-heavy configs are on a table.

A synthetic table whose blocks cost ``CA`` per attention MAC and ``CM`` per MLP MAC has a room computed here
from those costs; one whose blocks cost the same per MAC has (almost) none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_latency_build import SETTING, FakeBackend

from revit import counting
from revit.config import BlockDims, Setting
from revit.errors import ConfigError
from revit.latency.grid import WidthGrid
from revit.latency.profiler import BuildSettings, build_table
from revit.latency.room import Group, equal_macs_pairs, room
from revit.latency.table import LatencyTable

T = 17  # tokens of the tiny setting (28 px, patch 7, class token)
CA, CM = 3e-9, 1e-9  # seconds per attention MAC and per MLP MAC (per batch)


def attn_macs(e: int, d: BlockDims) -> int:
    """Attention MACs of one block, written out here (qkv, proj, Q K^T and A V)."""
    h, q, v = d.heads, d.qk_dim, d.v_dim
    return T * e * h * (2 * q + v) + T * h * v * e + T * T * h * (q + v)


def mlp_macs(e: int, d: BlockDims) -> int:
    return 2 * T * e * d.mlp_dim


def costs(ca: float, cm: float) -> Any:
    def fn(e: int, d: BlockDims) -> float:
        return ca * attn_macs(e, d) + cm * mlp_macs(e, d)
    return fn


def _table(tmp: Path, ca: float, cm: float) -> LatencyTable:
    axes = {"embed_dim": (16, 32), "heads": (1, 2, 3, 4), "qk_dim": (4, 8), "v_dim": (4, 8),
            "mlp_dim": tuple(range(8, 136, 8))}
    grid = WidthGrid("tiny", axes, Setting(**SETTING, depth=2))  # type: ignore[arg-type]
    return build_table(grid, FakeBackend(costs(ca, cm)), tmp / f"t{ca}.json",
                       BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, design="full"), progress=False)


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> LatencyTable:
    return _table(tmp_path_factory.mktemp("room"), CA, CM)


def _analytic(cfg: Any) -> float:
    """The synthetic model's seconds: every block's MACs at their costs, plus the fake fixed parts."""
    return sum(CA * attn_macs(cfg.embed_dim, b) + CM * mlp_macs(cfg.embed_dim, b) for b in cfg.blocks) \
        + 1e-5 * cfg.embed_dim


def test_pairs_are_at_equal_macs_and_lean_each_way(skewed: LatencyTable) -> None:
    pairs = equal_macs_pairs(skewed, 12, seed=3)
    assert len(pairs) == 12
    for a, b in pairs:
        assert abs(counting.macs(a) / counting.macs(b) - 1) <= 0.01 and a.embed_dim == b.embed_dim
        ea, eb = a.embed_dim, b.embed_dim
        assert attn_macs(ea, a.blocks[0]) > attn_macs(eb, b.blocks[0])
        assert mlp_macs(ea, a.blocks[0]) < mlp_macs(eb, b.blocks[0])


def test_the_predicted_room_equals_the_analytic_one(skewed: LatencyTable, tmp_path: Path) -> None:
    r = room(skewed, 12, seed=3)
    want = [max(x, y) / min(x, y) - 1 for x, y in ((_analytic(g.attention), _analytic(g.mlp)) for g in r.groups)]
    s = r.summary()
    assert s is not None and s["median"] == pytest.approx(sorted(want)[5] / 2 + sorted(want)[6] / 2, rel=1e-9)
    assert s["max"] == pytest.approx(max(want), rel=1e-9) and s["max"] > 0.1  # attention 3x the MLP per MAC
    assert s["attention_heavy_slower"] == 12 and r.summary("measured") is None
    # measured on whole models of the same synthetic device: the same room
    m = room(skewed, 12, seed=3, backend=FakeBackend(costs(CA, CM)), passes=1).summary("measured")
    assert m is not None and m["median"] == pytest.approx(s["median"], rel=1e-6)
    flat = room(_table(tmp_path, 2e-9, 2e-9), 12, seed=3).summary()
    assert flat is not None and flat["max"] < 0.011  # cost proportional to MACs: no room beyond the 1% MACs match
    assert Group.spread((1.0, 1.25)) == Group.spread((1.25, 1.0)) == pytest.approx(0.25)


def test_the_cli_reports_the_room_and_refuses_too_narrow_a_table(cli: Any, skewed: LatencyTable,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = cli("latency", "room", skewed.source, "--groups", "5", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["predicted"]["groups"] == 5 and d["measured"] is None and len(d["groups"]) == 5
    code, out, err = cli("latency", "room", skewed.source, "--groups", "5")
    assert code == 0 and "median" in out and "max" in out
    monkeypatch.setattr("revit.latency.room.TRIES", 1)  # one draw per group: some draws miss
    with pytest.raises(ConfigError, match="use fewer --groups"):
        equal_macs_pairs(skewed, 50, seed=0)


def test_the_predicted_room_does_not_import_torch() -> None:
    """Like ``latency query``, the predicted room reads a table only (``--measure`` exports models)."""
    import subprocess
    import sys

    code = ("import sys; from revit.cli.main import main; "
            "main(['latency', 'room', 'cpu_onnxruntime_fp32_bs64_t17', '--groups', '3', '--json']); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=Path(__file__).parents[1])
