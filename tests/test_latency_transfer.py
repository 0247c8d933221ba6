"""``revit latency transfer``: a table for a setting it was not built for, from at most ten timed models.

A synthetic backend plays the new setting: its attention costs 1.7x, its MLP 0.6x, its fixed parts 1.3x plus a
once-per-model offset.  A full build in that setting is the truth the transferred table must reproduce.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_latency_branches import _grid, _v1, attn_half, mlp_half
from test_latency_build import FakeBackend, _Const

from revit.config import BlockDims, ViTConfig
from revit.errors import ConfigError
from revit.latency.accuracy import random_configs
from revit.latency.backends.base import Workload
from revit.latency.profiler import BuildSettings, build_table
from revit.latency.table import LatencyTable
from revit.latency.transfer import MAX_CONFIGS, check_transfer, evaluate, transfer

ATTN, MLP, FIXED, OFFSET = 1.7, 0.6, 1.3, 3e-5  # the new setting's shape change


def old_block(e: int, d: BlockDims) -> float:
    """The source setting: each half multilinear, a full block their sum."""
    return (attn_half(e, d.heads, d.qk_dim, d.v_dim) if d.has_attention else 0.0) + \
        (mlp_half(e, d.mlp_dim) if d.has_mlp else 0.0)


def new_block(e: int, d: BlockDims) -> float:
    return (ATTN * attn_half(e, d.heads, d.qk_dim, d.v_dim) if d.has_attention else 0.0) + \
        (MLP * mlp_half(e, d.mlp_dim) if d.has_mlp else 0.0)


class NewSetting(FakeBackend):
    """The new setting: scaled halves, fixed parts scaled and offset (a whole model pays the offset once)."""

    def fixed(self, setting: Mapping[str, Any], embed_dim: int, batch: int) -> Workload:
        return _Const(FIXED * 1e-5 * embed_dim + OFFSET)

    def model(self, cfg: ViTConfig, batch: int) -> Workload:
        return _Const(sum(self.fn(cfg.embed_dim, b) for b in cfg.blocks) + FIXED * 1e-5 * cfg.embed_dim + OFFSET)


SETTINGS = BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, design="full")


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[LatencyTable, LatencyTable]:
    """The source table (batch 64) and a full build of the new setting (batch 8) on the same grid."""
    d = tmp_path_factory.mktemp("transfer")
    src = build_table(_grid(), FakeBackend(old_block), d / "src.json", SETTINGS, progress=False)
    full = build_table(_grid(), NewSetting(new_block), d / "full.json",
                       BuildSettings(smooth=0.0, batch=8, passes=1, repeats=1, warmup=0, design="full"), progress=False)
    return LatencyTable.load(src.source), LatencyTable.load(full.source)


def test_transfer_recovers_the_new_settings_table_from_six_models(tables: Any, tmp_path: Path) -> None:
    src, full = tables
    backend = NewSetting(new_block)
    new = transfer(src, backend, {"batch_size": 8, "threads": 1}, configs=6, passes=1)
    t = new.metadata["transfer"]
    assert t["fit"] == pytest.approx({"attention": ATTN, "mlp": MLP, "fixed": FIXED, "offset_s": OFFSET}, rel=1e-6)
    assert len(t["configs"]) == 6 and t["residuals"]["worst"] < 1e-9
    assert t["setting"] == {"batch_size": 8, "threads": 1} and t["source_setting"]["batch_size"] == 64
    assert new.batch_size == 8 and "calibrations" not in new.metadata
    assert "reference" not in new.metadata["measurement"]
    # held-out configs (absent branches included): the transferred table predicts what the full build does, and
    # what the new setting's whole models take
    cfgs = random_configs(full, 40, seed=11, absent=0.2)
    assert any(not b.has_attention for c in cfgs for b in c.blocks)
    for c in cfgs:
        truth = backend.model(c, 8).time(1)[0]
        assert new.predict(c).total_s == pytest.approx(full.predict(c).total_s, rel=1e-9)
        assert new.predict(c).total_s == pytest.approx(truth, rel=1e-9)
    ev = evaluate(new, full, samples=50)
    assert ev["mape"] < 1e-9 and ev["shape_mape"] < 1e-9
    new.save(tmp_path / "new.json")  # the record survives the round trip
    back = LatencyTable.load(tmp_path / "new.json")
    assert json.loads((tmp_path / "new.json").read_text())["metadata"]["transfer"]["fit"] == t["fit"]
    assert back.predict(cfgs[0]).total_s == pytest.approx(new.predict(cfgs[0]).total_s, rel=1e-12)


def test_a_v1_table_fits_one_block_scale(tables: Any) -> None:
    src, _ = tables
    old = _v1(src)

    def uniform(e: int, d: BlockDims) -> float:
        return 1.45 * old_block(e, d)

    new = transfer(old, NewSetting(uniform), {"batch_size": 64, "threads": 2}, configs=3, passes=1)
    assert new.metadata["transfer"]["fit"] == pytest.approx({"block": 1.45, "fixed": FIXED, "offset_s": OFFSET},
                                                            rel=1e-6)
    assert new.metadata["backend_settings"]["intra_op_threads"] == 2
    cfg = random_configs(old, 1, seed=5)[0]
    want = sum(uniform(cfg.embed_dim, b) for b in cfg.blocks) + FIXED * 1e-5 * cfg.embed_dim + OFFSET
    assert new.predict(cfg).total_s == pytest.approx(want, rel=1e-9)


def test_the_fit_is_no_better_than_its_shape_when_the_change_is_not_of_that_shape(tables: Any) -> None:
    """A change the parts cannot express (the attention's cost growing with embed_dim squared) leaves residuals:
    the record tells the truth rather than a perfect fit."""
    src, _ = tables

    def bent(e: int, d: BlockDims) -> float:
        return new_block(e, d) * (e / 16) ** 2

    new = transfer(src, NewSetting(bent), {"batch_size": 8, "threads": 1}, configs=8, passes=1)
    assert new.metadata["transfer"]["residuals"]["worst"] > 0.01


@pytest.mark.parametrize(("configs", "new", "match"), [
    (MAX_CONFIGS + 1, {"batch_size": 8, "threads": 1}, "at most 10"),
    (3, {"batch_size": 8, "threads": 1}, "4 parameters"),
    (6, {"batch_size": 64, "threads": 1}, "is the table's own"),
])
def test_transfer_refuses_bad_input_in_one_line(tables: Any, configs: int, new: dict[str, int], match: str) -> None:
    src, _ = tables
    with pytest.raises(ConfigError, match=match) as e:
        check_transfer(src, new, configs)
    assert "\n" not in str(e.value)
    backend = NewSetting(new_block)
    with pytest.raises(ConfigError, match=match):
        transfer(src, backend, new, configs=configs)
    assert backend.calls == 0  # refused before anything was timed


def test_evaluate_refuses_a_full_table_of_another_setting(tables: Any) -> None:
    src, full = tables
    with pytest.raises(ConfigError, match="batch 8"):
        evaluate(src, full)


def test_the_cli_writes_the_transferred_table_and_refuses_in_one_line(cli: Any, tables: Any, tmp_path: Path) -> None:
    src, _ = tables
    out = tmp_path / "new.json"
    # the synthetic backend is not registered: past the count checks, the CLI needs it (for the device it runs on,
    # which decides whether the table's own setting is a transfer: check_new_setting, tested above)
    for args, what in ((["--configs", "11"], "--configs"), (["--configs", "6"], "fake"),
                       (["--configs", "6", "--batch", "8"], "fake")):
        code, _, err = cli("latency", "transfer", src.source, "--out", out, *args)
        assert code == 2 and err.count("\n") == 1 and what in err and "Traceback" not in err
        assert not out.exists()
    assert np.isfinite(src.values).all()


def test_the_backend_of_a_new_thread_count_uses_its_own_clock() -> None:
    """One onnxruntime thread on the CPU is timed by the thread clock; two threads need the wall clock."""
    from revit.latency.accuracy import backend_for_table

    t = LatencyTable.load("cpu_onnxruntime_fp32_bs64_t17")
    same, two = backend_for_table(t), backend_for_table(t, threads=2)
    assert (same.threads, same.clock_name) == (1, "thread")
    assert (two.threads, two.clock_name) == (2, "wall")


class AnotherDevice(NewSetting):
    """Another machine at the table's own batch and threads: a transfer too (the device is the change)."""

    def info(self) -> dict[str, Any]:
        return {**super().info(), "device": "another CPU"}


def test_another_device_at_the_tables_own_setting_is_a_transfer(tables: Any) -> None:
    src, _ = tables
    same = {"batch_size": 64, "threads": 1}
    check_transfer(src, same, 6, device="another CPU")  # allowed: the device differs
    with pytest.raises(ConfigError, match="its own device"):
        check_transfer(src, same, 6, device=src.metadata["device"])
    new = transfer(src, AnotherDevice(new_block), same, configs=6, passes=1)
    assert new.metadata["device"] == "another CPU" and new.batch_size == 64
    assert new.metadata["transfer"]["fit"] == pytest.approx(
        {"attention": ATTN, "mlp": MLP, "fixed": FIXED, "offset_s": OFFSET}, rel=1e-6)


def test_one_cpu_model_with_another_count_of_logical_cpus_is_the_tables_own_device(tables: Any) -> None:
    """A table fixes its threads, so the CPU count a process had is not the device: the table's own setting on its
    CPU model with more logical CPUs is refused as a transfer, as on the same count; another model is allowed."""
    src, _ = tables
    doc = src.to_dict()
    doc["metadata"] = {**doc["metadata"], "device": "Some CPU 9000 (2 logical CPUs)"}
    own = LatencyTable.from_dict(doc, "own")
    same = {"batch_size": own.batch_size, "threads": 1}
    for device in ("Some CPU 9000 (2 logical CPUs)", "Some CPU 9000 (16 logical CPUs)"):
        with pytest.raises(ConfigError, match="its own device"):
            check_transfer(own, same, 6, device=device)
    check_transfer(own, same, 6, device="Other CPU 7000 (2 logical CPUs)")
