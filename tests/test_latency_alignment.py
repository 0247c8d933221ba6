"""Width alignment (revit.latency.alignment): the warp, lookups through it against a hand-written interpolation,
the probe's widths, a known step recovered end to end from a backend that pads, and the record and command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_latency_build import SETTING, FakeBackend

from revit.config import BlockDims, Setting
from revit.errors import ConfigError, FileFormatError
from revit.latency.alignment import (
    AxisWarp,
    align_table,
    axis_config,
    describe,
    fit_axis,
    fit_error,
    probe,
    probe_widths,
    totals,
    with_warps,
)
from revit.latency.grid import WidthGrid
from revit.latency.profiler import BuildSettings, build_table
from revit.latency.table import LatencyTable

TRUE = AxisWarp(16, 0.5)  # the fake backend's kernels: half of the padding to the next multiple of 16 costs


def padded(e: int, d: BlockDims, v: float | None = None, mlp: float | None = None) -> float:
    """A MACs-like block cost whose embedding width costs as if padded half-way to the next multiple of 16 (``v`` and
    ``mlp``: those widths as another backend runs them)."""
    w = float(TRUE(e))
    v = d.v_dim if v is None else v
    mlp = d.mlp_dim if mlp is None else mlp
    macs = w * d.heads * (2 * d.qk_dim + v) + d.heads * v * w + 2 * w * mlp
    return 1e-4 + 1e-8 * macs


def built(tmp_path: Path, v_dim: tuple[int, ...] = (8, 16)) -> LatencyTable:
    """A full-design table of the padding backend: EMB knots every 8 (half of them off the steps of 16)."""
    axes = {"embed_dim": tuple(range(32, 97, 8)), "heads": (2,), "qk_dim": (8, 16), "v_dim": v_dim,
            "mlp_dim": (64, 128, 192)}
    grid = WidthGrid("pad", axes, Setting(**SETTING, depth=2))
    return build_table(grid, FakeBackend(padded), tmp_path / "t.json",
                       BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, design="full"), progress=False)


def test_the_warp_keeps_multiples_and_is_strictly_increasing() -> None:
    w = AxisWarp(16, 0.3)
    assert w(np.array([32, 48, 64])).tolist() == [32, 48, 64]
    assert float(w(65)) == pytest.approx(65 + 0.3 * 15) and float(w(79)) == pytest.approx(79 + 0.3)
    xs = np.arange(1, 400, dtype=float)
    assert np.all(np.diff(w(xs)) > 0)  # so warped knots stay a valid grid
    for bad in ((16, 1.0), (16, -0.1), (0, 0.5), (True, 0.5), (16, 0.5, -0.01), (16, 0.5, 0.6)):
        with pytest.raises(ValueError):
            AxisWarp(*bad)  # type: ignore[arg-type]
    r = AxisWarp(16, 0.3, 0.05)  # the remainder prices a width off a multiple, and moves no width
    assert r.factor(np.array([32, 47, 48, 49, 64])).tolist() == [1.0, 1.05, 1.0, 1.05, 1.0]
    assert np.array_equal(r(xs), w(xs)) and np.all(AxisWarp(16, 0.3).factor(xs) == 1)


def test_lookups_interpolate_in_warped_width(tmp_path: Path) -> None:
    t = built(tmp_path)
    w = AxisWarp(16, 0.4)
    a = with_warps(t, {"embed_dim": w})
    e_axis = list(t.axes["embed_dim"])
    cell = (2, 16, 8, 128)
    col = t.values[:, 0, 1, 0, 1]  # the cells along EMB at heads 2, QK 16, V 8, MLP 128
    for e in (32, 40, 48, 65, 71, 72, 90):
        # by hand: the two neighbouring knots, the fraction of the way between them in warped width
        i = max(j for j, k in enumerate(e_axis) if k <= e) if e < e_axis[-1] else len(e_axis) - 2
        k0, k1 = e_axis[i], e_axis[i + 1]
        f = (float(w(e)) - float(w(k0))) / (float(w(k1)) - float(w(k0)))
        want = col[i] + f * (col[i + 1] - col[i])
        assert a.lookup([(e, *cell)])[0] == pytest.approx(want, rel=1e-12)
    assert np.allclose(a.lookup([(k, *cell) for k in e_axis]), t.lookup([(k, *cell) for k in e_axis]))
    # EMB 65 is just past a step: the warp prices it above the linear interpolation, EMB 64 and 72 alike
    assert a.lookup([(65, *cell)])[0] > t.lookup([(65, *cell)])[0] * 1.02
    # the half blocks are warped alike (a row without attention is priced by the MLP half)
    assert a.lookup([(65, 0, 0, 0, 128)])[0] > t.lookup([(65, 0, 0, 0, 128)])[0]


def test_a_remainder_keeps_every_knot_and_prices_a_width_off_the_step_above_the_next_multiple(tmp_path: Path) -> None:
    """With a remainder the knots off the step (EMB 40, 56, ...) are interpolated without it and a query off the step
    gets it back: by hand, every knot as measured, EMB 47 above EMB 48 where the remainder exceeds the slope."""
    t = built(tmp_path)
    w = AxisWarp(16, 0.4, 0.08)
    a = with_warps(t, {"embed_dim": w})
    e_axis = list(t.axes["embed_dim"])
    cell = (2, 16, 8, 128)
    col = t.values[:, 0, 1, 0, 1]
    bare = col / np.array([1.08 if k % 16 else 1.0 for k in e_axis])  # the knots without their remainder
    assert np.allclose(a.lookup([(k, *cell) for k in e_axis]), col, rtol=1e-12)
    for e in (41, 47, 49, 63, 65, 90):
        i = max(j for j, k in enumerate(e_axis) if k <= e)
        k0, k1 = e_axis[i], e_axis[i + 1]
        f = (float(w(e)) - float(w(k0))) / (float(w(k1)) - float(w(k0)))
        want = (bare[i] + f * (bare[i + 1] - bare[i])) * (1.08 if e % 16 else 1.0)
        assert a.lookup([(e, *cell)])[0] == pytest.approx(want, rel=1e-12)
    assert a.lookup([(47, *cell)])[0] > a.lookup([(48, *cell)])[0]
    cfgs = [axis_config(t, "embed_dim", e) for e in (33, 47, 48, 90)]  # the fit's batched pricing is predict's
    assert totals(a, cfgs) == pytest.approx([a.predict(c).total_s for c in cfgs], rel=1e-12)
    # the half blocks carry it alike; a record without a remainder (older tables) prices as before
    assert a.lookup([(47, 0, 0, 0, 128)])[0] > a.lookup([(48, 0, 0, 0, 128)])[0]
    old = with_warps(t, {"embed_dim": AxisWarp(16, 0.4)})
    doc = old.to_dict()
    del doc["metadata"]["alignment"]["axes"]["embed_dim"]["remainder"]
    back = LatencyTable.from_dict(doc)
    assert back.warps == {"embed_dim": AxisWarp(16, 0.4)}
    assert back.lookup([(47, *cell)])[0] == pytest.approx(old.lookup([(47, *cell)])[0], rel=1e-12)


def test_probe_widths_straddle_the_steps() -> None:
    ws = probe_widths(32, 96, 24)
    assert len(ws) <= 24 and ws[0] == 32 and ws[-1] == 96
    for k in (48, 64, 80):  # every multiple of 16 with its neighbours: a step there is a jump between them
        assert {k - 1, k, k + 1} <= set(ws)
    assert {40, 41, 56, 57} <= set(ws)  # multiples of 8 and the width past them: a step of 8 shows too
    coarse = probe_widths(8, 384, 24)
    assert len(coarse) <= 24 and {127, 128, 129, 256, 257} <= set(coarse) and all(8 <= w <= 384 for w in coarse)


def test_fit_error_is_blind_to_scale_and_offset_in_log() -> None:
    p = np.array([1.0, 2.0, 3.0, 5.0])
    assert fit_error(p, 3 * p**1.1) == pytest.approx(0, abs=1e-12)
    assert fit_error(p, p * np.array([1, 1.1, 1, 1])) > 0.02


def test_the_probe_recovers_a_known_step_and_leaves_linear_axes_alone(tmp_path: Path) -> None:
    t = built(tmp_path)
    probed = probe(t, FakeBackend(padded), widths=24, passes=1, axes=("embed_dim", "mlp_dim"))
    assert {63, 64, 65} <= {int(x) for x in probed["embed_dim"]["widths"]}
    out = align_table(t, probed, settings={"passes": 1})
    rec = out.metadata["alignment"]["axes"]
    emb = rec["embed_dim"]
    assert emb["kept"] and emb["quantum"] == 16 and emb["alpha"] == pytest.approx(0.5)
    assert emb["error_warped"] < 1e-6 < emb["error_linear"]
    assert not rec["mlp_dim"]["kept"]  # the backend's MLP width is linear: no step is invented
    assert set(out.warps) == {"embed_dim"}
    # the aligned table prices an off-step model as the backend runs it; the plain one underprices it
    cfg = axis_config(t, "embed_dim", 69)
    measured = FakeBackend(padded).model(cfg, t.batch_size).time(1)[0]
    assert out.predict(cfg).total_s == pytest.approx(measured, rel=1e-3)
    assert t.predict(cfg).blocks_s < out.predict(cfg).blocks_s * 0.98


def remaindered(e: int, d: BlockDims) -> float:
    """:func:`padded`, and a block whose EMB is off a multiple of 16 costs 5% more than that (a remainder loop)."""
    return padded(e, d) * (1.05 if e % 16 else 1.0)


def test_the_probe_recovers_a_known_remainder(tmp_path: Path) -> None:
    """Blocks off the step cost 5% more on top of the padding: the probe finds step, share and remainder, and the
    aligned table prices off-step models as run, EMB 47 above EMB 48 (the warp alone cannot)."""
    axes = {"embed_dim": tuple(range(32, 97, 8)), "heads": (2,), "qk_dim": (8, 16), "v_dim": (8, 16),
            "mlp_dim": (64, 128, 192)}
    backend = FakeBackend(remaindered)
    t = build_table(WidthGrid("rem", axes, Setting(**SETTING, depth=2)), backend, tmp_path / "t.json",
                    BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, design="full"), progress=False)
    out = align_table(t, probe(t, backend, widths=24, passes=1, axes=("embed_dim",)))
    assert out.warps == {"embed_dim": AxisWarp(16, 0.5, 0.05)}
    assert out.metadata["alignment"]["axes"]["embed_dim"]["remainder"] == 0.05
    for e in (47, 49, 63, 71, 79):
        cfg = axis_config(t, "embed_dim", e)
        measured = backend.model(cfg, t.batch_size).time(1)[0]
        assert out.predict(cfg).total_s == pytest.approx(measured, rel=2e-3)
        if e % 16 == 15:  # just below a multiple: the warp alone prices it mostly as that multiple, 4% cheap
            alone = with_warps(t, {"embed_dim": AxisWarp(16, 0.5)}).predict(cfg).blocks_s
            assert out.predict(cfg).blocks_s / alone > 1.03
    assert (out.predict(axis_config(t, "embed_dim", 47)).total_s >
            out.predict(axis_config(t, "embed_dim", 48)).total_s)
    assert "+5% off it" in describe(out.metadata)


def padded_v(e: int, d: BlockDims) -> float:
    """:func:`padded`, and the V width padded half-way to the next multiple of 8 as well."""
    return padded(e, d, v=float(AxisWarp(8, 0.5)(d.v_dim)))


def test_random_models_are_fitted_with_every_axis_warped(tmp_path: Path) -> None:
    """Uniform models of random integer widths (:func:`odd_configs`) step on every axis at once: fitted with the axis
    probes, in two sweeps (each axis with the others' warps of the sweep before), both true steps are recovered and
    the random models are priced exactly."""
    from revit.latency.alignment import RANDOM, odd_configs

    t = built(tmp_path, v_dim=(8, 16, 24, 32))
    probed = probe(t, FakeBackend(padded_v), widths=24, passes=1, axes=("embed_dim", "v_dim", "mlp_dim"), random=16)
    cfgs = odd_configs(t, 16)
    assert [c.to_dict() for c in cfgs] == probed[RANDOM]["configs"] and len(probed[RANDOM]["measured"]) == 16
    assert all(len(set(c.blocks)) == 1 for c in cfgs)  # uniform: per-block draws would average the steps away
    assert any(c.embed_dim % 8 and c.blocks[0].v_dim % 4 for c in cfgs)  # off every step at once
    out = align_table(t, probed)
    rec = out.metadata["alignment"]
    assert out.warps == {"embed_dim": TRUE, "v_dim": AxisWarp(8, 0.5)} and "16 models" in rec["method"]
    assert all(rec["axes"][a]["random"] == 16 for a in ("embed_dim", "v_dim", "mlp_dim"))
    assert rec["axes"]["v_dim"]["error_warped"] < 1e-6 and rec["axes"]["embed_dim"]["error_warped"] < 1e-6
    for c, m in zip(cfgs, probed[RANDOM]["measured"], strict=True):
        assert out.predict(c).total_s == pytest.approx(m, rel=1e-3)


def elsewhere_pads_mlp(e: int, d: BlockDims) -> float:
    """:func:`padded`, and at every EMB but the reference cell's 64 (another kernel path) the MLP width padded to the
    next multiple of 16: the worst case for probes along one axis at the reference cell."""
    return padded(e, d, mlp=float(AxisWarp(16, 0.9)(d.mlp_dim)) if e != 64 else None)


def test_random_models_show_a_step_the_reference_cell_hides(tmp_path: Path) -> None:
    """Where the MLP steps everywhere but at the reference cell, the axis probes alone keep it linear; with uniform
    models of random widths the MLP axis is warped, and fresh random models are priced closer."""
    from revit.latency.alignment import odd_configs

    t = built(tmp_path)
    assert t.metadata["measurement"]["reference"]["cell"]["embed_dim"] == 64
    backend = FakeBackend(elsewhere_pads_mlp)
    alone = align_table(t, probe(t, backend, widths=24, passes=1, axes=("embed_dim", "mlp_dim")))
    assert set(alone.warps) == {"embed_dim"}
    both = align_table(t, probe(t, backend, widths=24, passes=1, axes=("embed_dim", "mlp_dim"), random=60))
    assert both.metadata["alignment"]["axes"]["mlp_dim"]["kept"] and both.warps["mlp_dim"].quantum == 16
    fresh = odd_configs(t, 30, seed=99)
    truth = np.array([backend.model(c, t.batch_size).time(1)[0] for c in fresh])

    def mape(table: LatencyTable) -> float:
        pred = np.array([table.predict(c).total_s for c in fresh])
        return float(np.mean(np.abs(pred / truth - 1)))

    assert mape(both) < 0.7 * mape(alone)


def test_fit_axis_keeps_nothing_on_noise(tmp_path: Path) -> None:
    t = built(tmp_path)
    ws = probe_widths(32, 96, 24)
    linear = [t.predict(axis_config(t, "embed_dim", w)).total_s for w in ws]
    rng = np.random.default_rng(0)
    measured = np.asarray(linear) * np.exp(rng.normal(0, 0.003, len(ws)))  # linear truth, 0.3% noise

    cfgs = [axis_config(t, "embed_dim", w) for w in ws]

    def predict(warp: AxisWarp | None) -> list[float]:
        return totals(with_warps(t, {} if warp is None else {"embed_dim": warp}), cfgs)

    assert not fit_axis(ws, measured.tolist(), predict)["kept"]
    with pytest.raises(ConfigError, match=">= 4"):
        fit_axis(ws[:3], measured[:3].tolist(), predict)


def test_the_record_round_trips_is_validated_and_drops_calibrations_when_predictions_move(tmp_path: Path) -> None:
    from revit.latency.table import resolve_table

    doc = json.loads(resolve_table("cpu_onnxruntime_fp32_bs64_t17").read_text())
    doc["metadata"].pop("alignment", None)  # the shipped table as built, smoothed and calibrated
    shipped = LatencyTable.from_dict(doc)
    assert shipped.calibrations and not shipped.warps
    raw = shipped.uncalibrated()
    ws = probe_widths(32, 96, 24)
    cfgs = [axis_config(raw, "embed_dim", w) for w in ws]

    def probed(t: LatencyTable) -> dict[str, dict[str, list[float]]]:
        return {"embed_dim": {"widths": [float(w) for w in ws], "measured": [t.predict(c).total_s for c in cfgs]}}

    still = align_table(shipped, probed(raw))  # measured as the table interpolates: no step, nothing moves
    assert not still.warps and still.calibrations == shipped.calibrations
    out = align_table(shipped, probed(with_warps(raw, {"embed_dim": AxisWarp(16, 0.5)})))
    assert out.warps == {"embed_dim": AxisWarp(16, 0.5)}
    assert "calibrations" not in out.metadata and out.calibration is None
    out.save(tmp_path / "a.json")
    back = LatencyTable.load(tmp_path / "a.json")
    assert back.warps == out.warps and back.metadata["alignment"]["axes"] == out.metadata["alignment"]["axes"]
    doc = json.loads((tmp_path / "a.json").read_text())
    for axes, match in (({"embed_dim": {"quantum": 16, "alpha": 1.5, "kept": True}}, "alpha"),
                        ({"heads": {"quantum": 4, "alpha": 0.5, "kept": True}}, "heads"),
                        ({"embed_dim": {"quantum": 16, "alpha": 0.5, "kept": "yes"}}, "kept")):
        doc["metadata"]["alignment"] = {"axes": axes}
        with pytest.raises(FileFormatError, match=match):
            LatencyTable.from_dict(doc)
    doc["metadata"]["alignment"] = ["no"]
    with pytest.raises(FileFormatError, match="alignment"):
        LatencyTable.from_dict(doc)


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``revit latency align``: the probe and fit on the table's backend (the padding fake stands in for
    onnxruntime, whose probe exports and times whole models for minutes), its record, output and refusals."""
    from revit.cli.main import main

    t = built(tmp_path)
    monkeypatch.setattr("revit.latency.accuracy.backend_for_table", lambda table: FakeBackend(padded))
    out = tmp_path / "a.json"
    assert main(["latency", "align", str(tmp_path / "t.json"), "--out", str(out), "--axes", "embed_dim",
                 "--passes", "1", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["table"] == str(out) and rec["axes"]["embed_dim"]["kept"] and rec["settings"]["axes"] == ["embed_dim"]
    assert math.isclose(LatencyTable.load(out).warps["embed_dim"].alpha, 0.5)
    assert t.metadata.get("alignment") is None  # the source table is untouched
    assert main(["latency", "align", str(tmp_path / "t.json"), "--out", str(tmp_path / "c.json"), "--axes",
                 "embed_dim,mlp_dim", "--passes", "1", "--no-progress"]) == 0
    text = capsys.readouterr().err
    assert "embed_dim: step 16, alpha 0.5" in text and "mlp_dim: linear" in text and "aligned: embed_dim" in text
    assert main(["latency", "align", str(tmp_path / "t.json"), "--out", str(out)]) == 2  # exists
    assert main(["latency", "align", "cpu_onnxruntime_fp32_bs64_t17"]) == 2  # a shipped table needs --out
    assert main(["latency", "align", str(tmp_path / "t.json"), "--out", str(tmp_path / "b.json"),
                 "--axes", "heads"]) == 2
    err = capsys.readouterr().err
    assert "heads" in err and "Traceback" not in err


def test_the_command_refits_a_stored_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``revit latency align --probe``: the probe an earlier ``--json`` printed, fitted again without timing (the
    backend is never asked for a model); the same fit as the timed run, and refusals of a probe taken around
    other widths or not a probe at all."""
    from revit.cli.main import main

    built(tmp_path)
    monkeypatch.setattr("revit.latency.accuracy.backend_for_table", lambda table: FakeBackend(padded))
    assert main(["latency", "align", str(tmp_path / "t.json"), "--out", str(tmp_path / "a.json"), "--axes",
                 "embed_dim,mlp_dim", "--passes", "1", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["settings"]["cell"] == {"embed_dim": 64, "heads": 2, "qk_dim": 16, "v_dim": 16, "mlp_dim": 128}
    (tmp_path / "probe.json").write_text(json.dumps(printed))

    def no_backend(table: LatencyTable) -> FakeBackend:
        raise AssertionError("a stored probe times nothing")

    monkeypatch.setattr("revit.latency.accuracy.backend_for_table", no_backend)
    assert main(["latency", "align", str(tmp_path / "t.json"), "--out", str(tmp_path / "b.json"), "--probe",
                 str(tmp_path / "probe.json")]) == 0
    a, b = LatencyTable.load(tmp_path / "a.json"), LatencyTable.load(tmp_path / "b.json")
    assert a.warps == b.warps == {"embed_dim": TRUE}
    rec = b.metadata["alignment"]["settings"]
    assert rec["probe_file"] == str(tmp_path / "probe.json") and rec["passes"] == 1
    assert main(["latency", "align", str(tmp_path / "t.json"), "--out", str(tmp_path / "c.json"), "--probe",
                 str(tmp_path / "probe.json"), "--axes", "mlp_dim"]) == 0
    assert not LatencyTable.load(tmp_path / "c.json").warps  # only the axes asked for are fitted
    capsys.readouterr()
    printed["settings"]["cell"]["embed_dim"] = 72
    (tmp_path / "other.json").write_text(json.dumps(printed))
    (tmp_path / "bad.json").write_text(json.dumps({"probe": {"embed_dim": {"widths": [32, 40], "measured": [1.0]}}}))
    for bad, match in (("other.json", "reference cell"), ("bad.json", "one length")):
        assert main(["latency", "align", str(tmp_path / "t.json"), "--out", str(tmp_path / "d.json"), "--probe",
                     str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err
    assert not (tmp_path / "d.json").exists()
