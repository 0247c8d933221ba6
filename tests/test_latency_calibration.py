"""Calibration: a table built under load predicts today's exported models after ``revit latency calibrate``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from revit.cli.main import main
from revit.errors import FileFormatError
from revit.latency.accuracy import backend_for_table, validate
from revit.latency.calibration import Calibration, calibration_configs
from revit.latency.table import LatencyTable

SHIPPED = "cpu_onnxruntime_fp32_bs64_t17"


def as_built() -> LatencyTable:
    """The shipped table as its build wrote it (the calibrations made of it since left out)."""
    doc = LatencyTable.load(SHIPPED).to_dict()
    doc["metadata"] = {k: v for k, v in doc["metadata"].items() if k != "calibrations"}
    return LatencyTable.from_dict(doc, SHIPPED)


def loaded_copy(path: Path, factor: float) -> Path:
    """The shipped table as if built on a machine ``factor`` times slower (every cell, fixed part and the
    reference block's median scaled alike: what a build under that load records)."""
    t = as_built()
    doc: dict[str, Any] = t.to_dict()
    doc["values"] = (np.asarray(t.values) * factor).tolist()
    doc["fixed"]["values"] = [v * factor for v in doc["fixed"]["values"]]
    doc["metadata"]["measurement"]["reference"]["median_s"] *= factor
    path.write_text(json.dumps(doc))
    return path


def held_out_errors(cal_table: LatencyTable, cfgs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Errors of the calibrated predictions and of the build's own on exported models timed now.

    The measurements are divided by the reference block timed around each and put at the reference's level of
    the calibration (what ``validate`` does for a calibrated table), so the other work of a busy CI machine
    during the test cancels as it does between a calibration and a later measurement on an idle one.
    """
    r = validate(cal_table, backend_for_table(cal_table), len(cfgs), noise_k=0, passes=2,
                 model_source="exported", progress=False, configs=cfgs)
    pred = np.asarray(r.predicted)
    return pred / np.asarray(r.measured) - 1, pred / cal_table.scale / np.asarray(r.raw_measured) - 1


def test_a_table_built_under_load_is_brought_back_within_5_percent(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # 1.6x, not the 1.3x (asserted exactly on the deterministic machine below): this machine's own speed
    # moves by 15-25% within hours (2026-12-07: whole models x1.139 of the build at 13:06, x0.995 at 16:05), and a
    # fresh-clone CI run found a 1.3x copy only 4.6% off one model, too close to tell from the calibration's noise
    loaded = loaded_copy(tmp_path / "loaded.json", 1.6)
    before = os.stat(loaded).st_mtime_ns
    assert main(["latency", "calibrate", str(loaded), "--models", "3", "--passes", "2", "--json",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "exported" and len(out["models"]) == 3 and os.stat(loaded).st_mtime_ns != before
    cal_table = LatencyTable.load(loaded)
    assert cal_table.calibration is not None and cal_table.scale == pytest.approx(out["scale"])
    raw = LatencyTable.load(loaded, calibrated=False)
    # measured again, apart from the calibration: the widest and the middle uniform models (two of the
    # calibration's first three; how well a table generalises to other configs is the held-out speedup
    # validation's question)
    widest, _narrowest, middle = calibration_configs(raw, 3)  # the narrowest (~2 ms) is the noisiest ratio
    held_out = [widest, middle]
    after, without = held_out_errors(cal_table, held_out)
    # the loaded build's own predictions are off by the 1.6x of its build day and more (this machine is not the
    # one that built the shipped table); calibrated, they are closer.  On an idle machine they are
    # within 5% (docs/evidence/latency.md); on a busy CI machine the measurement itself moves by 10-20%, so the
    # exact 5% is asserted on a deterministic machine below.
    # (the shipped table's own build ran at 0.93-0.97 of today's idle speed, so the 1.3x copy is some 30% off idle,
    # less on a busy machine or one slower than on build day)
    # (2026-12-07 afternoon: this machine ran 15-20% slower than on the table's build that morning, the 1.3x copy
    # was only 9-20% off and one calibrated model 8.8% off on two passes, so the margins are relative)
    assert np.min(np.abs(without)) > 0.05 and np.max(np.abs(after)) < np.min(np.abs(without)), (without, after)
    # predictions name the calibration they use
    p = cal_table.predict(held_out[0])
    assert cal_table.calibration is not None and "calibrated" in p.calibration
    assert p.total_s == pytest.approx(cal_table.calibration.apply(raw.predict(held_out[0]).total_s))


@pytest.mark.parametrize("name", ["cpu_onnxruntime_fp32_bs1_t198", "epyc_onnxruntime_fp32_bs1_t198", SHIPPED])
def test_the_widest_calibration_model_is_the_widest_uniform_one_under_the_time_cap(name: str) -> None:
    """On the 198-token tables the table's widest model (DeiT-B-sized) is predicted over MAX_MODEL_S: the calibration
    takes, every axis one knot down at a time, the first uniform model under it; the micro table's widest is under it
    and taken as it is."""
    from revit.config import BLOCK_KINDS, BlockDims, ViTConfig
    from revit.latency.calibration import MAX_MODEL_S

    t = LatencyTable.load(name).uncalibrated()
    got = calibration_configs(t, 5)[0]
    b = got.blocks[0]
    assert got.blocks == (b,) * len(got.blocks) and t.predict(got).total_s <= MAX_MODEL_S
    # its index from the top, the same on every axis that has that many knots
    down = {k: len(t.axes[k]) - 1 - list(t.axes[k]).index(v)
            for k, v in zip(("embed_dim", *BLOCK_KINDS), (got.embed_dim, b.heads, b.qk_dim, b.v_dim, b.mlp_dim),
                            strict=True)}
    step = max(down.values())
    assert all(d == min(step, len(t.axes[k]) - 1) for k, d in down.items()), down
    if step == 0:
        assert name == SHIPPED
        return
    up = {k: int(t.axes[k][max(len(t.axes[k]) - step, 0)]) for k in down}  # one knot up on every axis
    wider = ViTConfig(embed_dim=up["embed_dim"], blocks=(BlockDims(*(up[k] for k in BLOCK_KINDS)),) * got.depth,
                      setting=got.setting)
    assert t.predict(wider).total_s > MAX_MODEL_S


def test_calibrations_are_kept_newest_last_and_validated(tmp_path: Path) -> None:
    t = as_built()
    cfg = calibration_configs(t, 2)[0]
    assert cfg.embed_dim == int(t.axes["embed_dim"][-1])
    a = Calibration(created="2026-12-01T00:00:00+00:00", load_average=0.5, scale=0.8, models=(), source="exported",
                    seconds=1.0)
    b = Calibration(created="2026-12-02T00:00:00+00:00", load_average=0.4, scale=0.9, models=(), source="graph",
                    seconds=1.0)
    two = t.with_calibration(a).with_calibration(b)
    path = tmp_path / "t.json"
    two.save(path)
    back = LatencyTable.load(path)
    assert [c.scale for c in back.calibrations] == [0.8, 0.9] and back.scale == 0.9
    assert back.predict(cfg).total_s == pytest.approx(0.9 * t.predict(cfg).total_s)
    assert back.uncalibrated().predict(cfg).total_s == pytest.approx(t.predict(cfg).total_s)
    doc = json.loads(path.read_text())
    doc["metadata"]["calibrations"][-1]["scale"] = 1e308
    path.write_text(json.dumps(doc))
    with pytest.raises(FileFormatError, match="scale"):
        LatencyTable.load(path)


def test_calibrate_refuses_what_it_must_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["latency", "calibrate", SHIPPED]) == 2  # a shipped table by name: needs --out
    assert "--out" in capsys.readouterr().err
    mine = tmp_path / "notes.json"
    mine.write_text("{}")
    assert main(["latency", "calibrate", SHIPPED, "--out", str(mine)]) == 2
    assert main(["latency", "calibrate", SHIPPED, "--out", str(mine), "--overwrite"]) == 2
    assert mine.read_text() == "{}"
    real = loaded_copy(tmp_path / "real.json", 1.0)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    text = real.read_text()
    assert main(["latency", "calibrate", str(link)]) == 2
    assert real.read_text() == text
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("revit: error:") for line in err)


class Machine:
    """A deterministic stand-in machine: blocks cost ``stepped``, a whole model 7% more than its parts (the graph's
    excess), everything times ``load``."""

    def __init__(self, once_s: float = 0.0) -> None:
        self.load, self.once_s = 1.0, once_s

    def backend(self) -> Any:
        from test_latency_build import FakeBackend, _Const, stepped

        machine = self

        class Loaded(FakeBackend):
            def block(self, embed_dim: int, dims: Any, tokens: int, batch: int) -> Any:
                return _Const(machine.load * stepped(embed_dim, dims))

            def fixed(self, setting: Any, embed_dim: int, batch: int) -> Any:
                return _Const(machine.load * 1e-5 * embed_dim)

            def model(self, cfg: Any, batch: int) -> Any:
                parts = sum(stepped(cfg.embed_dim, b) for b in cfg.blocks) + 1e-5 * cfg.embed_dim
                return _Const(machine.load * (1.07 * parts + machine.once_s))

        return Loaded(stepped)


def test_a_build_at_load_1_3_predicts_an_idle_machine_within_5_percent_once_calibrated(tmp_path: Path) -> None:
    """The must-show on a deterministic machine: built at 1.3x load, the table predicts the idle machine 1.3x (and
    the graph's 7%) high; one calibration at idle brings random held-out models within 5% (here: within the
    table's interpolation error, under 1%)."""
    from test_latency_build import micro_grid

    from revit.latency.accuracy import random_configs
    from revit.latency.calibration import calibrate
    from revit.latency.profiler import BuildSettings, build_table

    m = Machine()
    m.load = 1.3
    built = build_table(micro_grid(), m.backend(), tmp_path / "t.json",
        BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0),
                        progress=False)
    m.load = 1.0
    idle = m.backend()
    held_out = random_configs(built, 8, seed=5)
    truth = np.array([idle.model(c, 1).time(1)[0] for c in held_out])
    before = np.array([built.predict(c).total_s for c in held_out]) / truth - 1
    cal = calibrate(built, idle, models=4, passes=1, source="graph")
    after = np.array([built.with_calibration(cal).predict(c).total_s for c in held_out]) / truth - 1
    assert np.allclose(before, 1.3 / 1.07 - 1, atol=0.01)
    assert np.max(np.abs(after)) <= 0.05 and cal.scale == pytest.approx(1.07 / 1.3, rel=0.02)
    assert cal.reference_ratio == pytest.approx(1 / 1.3)  # the reference block saw the build day's load too


def test_a_cost_paid_once_per_model_is_found_and_speedups_follow(tmp_path: Path) -> None:
    """A whole model that pays 2 ms once (a session call the blocks never showed): a scale alone would promise
    small models too much speedup; the calibration finds the offset, and predicted speedups match the machine's."""
    from test_latency_build import micro_grid

    from revit.latency.accuracy import random_configs
    from revit.latency.calibration import calibrate
    from revit.latency.profiler import BuildSettings, build_table

    m = Machine(once_s=2e-3)
    built = build_table(micro_grid(), m.backend(), tmp_path / "t.json",
        BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0),
                        progress=False)
    backend = m.backend()
    cal = calibrate(built, backend, models=6, passes=1, source="graph")
    assert cal.offset_s == pytest.approx(2e-3, rel=0.05) and cal.scale == pytest.approx(1.07, rel=0.02)
    table = built.with_calibration(cal)
    cfgs = random_configs(built, 9, seed=8)
    base, others = cfgs[0], cfgs[1:]
    truth = {c: backend.model(c, 1).time(1)[0] for c in cfgs}
    for c in others:
        predicted = table.predict(base).total_s / table.predict(c).total_s
        assert predicted == pytest.approx(truth[base] / truth[c], rel=0.01)
    assert "+ 2.0" in cal.label and table.predict(base).fixed_s == pytest.approx(
        cal.scale * built.predict(base).fixed_s + cal.offset_s)


def test_parts_that_overprice_every_model_by_a_constant_give_a_negative_offset(tmp_path: Path) -> None:
    """Parts timed one by one each pay their own session (0.3 ms here) that a whole graph pays once: whole models
    cost less than their parts by a constant. The calibration finds a negative offset (with the narrowest model in
    its set, the constant is measured, not extrapolated), speedups follow, and no prediction falls below half its
    scaled value however small the model."""
    from test_latency_build import micro_grid

    from revit.config import BlockDims, ViTConfig
    from revit.latency.accuracy import random_configs
    from revit.latency.calibration import MIN_SHARE, calibrate, fit_scale_offset
    from revit.latency.profiler import BuildSettings, build_table

    m = Machine(once_s=-3e-4)
    built = build_table(micro_grid(), m.backend(), tmp_path / "t.json",
        BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0),
                        progress=False)
    backend = m.backend()
    cfgs = calibration_configs(built, 6)
    narrowest = ViTConfig(embed_dim=32, blocks=(BlockDims(1, 4, 4, 8),) * 8, img_size=28, patch_size=7, in_chans=1,
                          num_classes=10)
    assert narrowest in cfgs  # the smallest model the table prices is timed
    cal = calibrate(built, backend, models=6, passes=1, source="graph")
    assert cal.offset_s == pytest.approx(-3e-4, rel=0.05) and cal.scale == pytest.approx(1.07, rel=0.02)
    assert "- 0.300 ms per model" in cal.label
    table = built.with_calibration(cal)
    cfgs = random_configs(built, 9, seed=8)
    truth = {c: backend.model(c, 1).time(1)[0] for c in cfgs}
    for c in cfgs[1:]:
        assert table.predict(cfgs[0]).total_s / table.predict(c).total_s == pytest.approx(
            truth[cfgs[0]] / truth[c], rel=0.01)
    back = Calibration.from_dict(cal.to_dict(), "t")
    assert back.offset_s == cal.offset_s
    # the floor: a one-block model far smaller than any timed keeps half its scaled prediction at least
    tiny = ViTConfig(embed_dim=32, blocks=(BlockDims(1, 4, 4, 8),), img_size=28, patch_size=7, in_chans=1,
                     num_classes=10)
    raw = built.predict(tiny).total_s
    assert table.predict(tiny).total_s >= MIN_SHARE * cal.scale * raw - 1e-12
    assert cal.apply(raw) >= MIN_SHARE * cal.scale * raw
    # an offset beyond the bound is not fitted: the median ratio instead
    from revit.latency.calibration import TimedModel

    timed = [TimedModel(32, 8, p, 0.1 * p - 1e-4 if p > 2e-3 else 1e-6) for p in (1e-3, 3e-3, 5e-3)]
    assert fit_scale_offset(timed)[1] == 0.0


def test_the_fit_is_on_raw_seconds_where_the_reference_is_biased_by_the_model_before_it(tmp_path: Path) -> None:
    """The reference block timed around each model cancels load changes, but it runs slower after a large model than
    after a small one (caches, clocks: on the micro table the narrowest model came out 7% dearer, relative to the
    widest, than raw seconds say). Fitted on reference-normalised times the offset comes out too large; the
    calibration fits raw seconds, what a deployed model and a held-out speedup see, and finds the true ones."""
    from test_latency_build import _Const, micro_grid

    from revit.latency.calibration import TimedModel, calibrate, fit_scale_offset
    from revit.latency.profiler import BuildSettings, build_table

    m = Machine(once_s=1e-3)
    built = build_table(micro_grid(), m.backend(), tmp_path / "t.json",
                        BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0), progress=False)
    last = [0.0]

    class Remembers(_Const):
        def time(self, n: int) -> list[float]:
            last[0] = self.v
            return [self.v] * n

    class Ref(_Const):  # the reference block: 20% slower per 10 ms of the model timed just before it
        def time(self, n: int) -> list[float]:
            return [self.v * (1 + 20 * last[0])] * n

    class AfterEffect(type(m.backend())):  # type: ignore[misc]
        def block(self, embed_dim: int, dims: Any, tokens: int, batch: int) -> Any:
            return Ref(super().block(embed_dim, dims, tokens, batch).time(1)[0])

        def model(self, cfg: Any, batch: int) -> Any:
            return Remembers(super().model(cfg, batch).time(1)[0])

    backend = AfterEffect(None)
    cal = calibrate(built, backend, models=6, passes=1, source="graph")
    assert cal.offset_s == pytest.approx(1e-3, rel=0.05) and cal.scale == pytest.approx(1.07, rel=0.02)
    # what a fit on the normalised times would have given (the bias it avoids)
    cfgs = calibration_configs(built.uncalibrated(), 6)
    r = validate(built, backend, 6, noise_k=0, passes=1, warmup=0, repeats=1, model_source="graph", progress=False,
                 configs=cfgs)
    norm = fit_scale_offset([TimedModel(c.embed_dim, c.depth, p, x) for c, p, x in
                             zip(cfgs, r.predicted, r.measured, strict=True)])
    assert abs(norm[1] / norm[0] - 1e-3 / 1.07) > 3e-4


def test_the_fit_is_on_relative_residuals_so_the_widest_model_does_not_decide_the_offset() -> None:
    """Sizes over a 60x range, as on a DeiT table: a 1.5% low reading of the widest model alone moves a fit on
    seconds to twice the true per-model cost (the narrowest model then 13% off); on relative residuals every model
    stays within its noise and the offset is the true one."""
    import numpy as np

    from revit.latency.calibration import TimedModel, fit_scale_offset

    p = np.array([0.0044, 0.034, 0.045, 0.065, 0.105, 0.267])
    m = 1.06 * p + 0.0007
    m[-1] *= 0.985
    scale, offset = fit_scale_offset([TimedModel(192, 12, float(a), float(b)) for a, b in zip(p, m, strict=True)])
    a_abs, b_abs = np.polyfit(p, m, 1)  # the unweighted fit, computed independently
    assert abs((a_abs * p[0] + b_abs) / m[0] - 1) > 0.1
    assert offset == pytest.approx(0.0007, rel=0.05) and scale == pytest.approx(1.06, rel=0.01)
    assert np.abs((scale * p + offset) / m - 1).max() < 0.015


def test_a_table_from_another_cpu_whose_shape_does_not_hold_is_named_as_such(tmp_path: Path) -> None:
    """A table built on one CPU, calibrated on another whose smaller cache makes the MLPs of wide blocks (EMB x
    MLP above 16K, their activations spilling) half as dear again: no scale fits wide and narrow models alike, and
    the calibration says the table's shape does not hold there and names both devices; on another CPU whose costs
    are in the same proportions it says nothing, and on the same CPU model a poor fit is put down to load."""
    from test_latency_build import _Const, micro_grid

    from revit.latency.calibration import SHAPE_TOLERANCE, calibrate, shape_warning
    from revit.latency.profiler import BuildSettings, build_table

    m = Machine()
    built = build_table(micro_grid(), m.backend(), tmp_path / "t.json",
                        BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0), progress=False)
    home = str(built.metadata["device"])

    def on(device: str, wide_mlp: float) -> Any:
        class Other(type(m.backend())):  # type: ignore[misc]
            def info(self) -> dict[str, Any]:
                return {**super().info(), "device": device}

            def model(self, cfg: Any, batch: int) -> Any:
                dear = sum((wide_mlp - 1) * 2e-8 * cfg.embed_dim * b.mlp_dim for b in cfg.blocks
                           if cfg.embed_dim * b.mlp_dim > 16384)
                return _Const(super().model(cfg, batch).time(1)[0] + 1.07 * dear)

        return Other(None)

    other = "Other CPU (2 logical CPUs)"
    cal = calibrate(built, on(other, 1.5), models=6, passes=1, source="graph")
    assert cal.device == other and other in cal.label
    assert cal.spread > SHAPE_TOLERANCE
    said = shape_warning(built.metadata, cal)
    assert said is not None and home in said and other in said and "revit latency build" in said
    assert Calibration.from_dict(cal.to_dict(), "t").device == other  # recorded in the table
    same_shape = calibrate(built, on(other, 1.0), models=6, passes=1, source="graph")
    assert same_shape.spread < 0.01 and shape_warning(built.metadata, same_shape) is None
    # the same CPU model with another count of logical CPUs is the same device; a poor fit there is load or noise
    noisy = calibrate(built, on(f"{home} (8 logical CPUs)", 1.5), models=6, passes=1, source="graph")
    said = shape_warning({**built.metadata, "device": f"{home} (2 logical CPUs)"}, noisy)
    assert said is not None and "idle machine" in said and "was built on" not in said


def test_a_shipped_table_built_on_this_cpu_is_named_where_there_is_one(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where revit ships a table of the same setting built on the CPU a calibration ran on, the warning names it
    (another batch, or a file that is not a table, is passed over) instead of sending the user to build one."""
    import revit.paths
    from revit.latency.calibration import TimedModel, shape_warning, shipped_built_on

    meta = as_built().metadata
    here = "Other CPU (4 logical CPUs)"
    for name, changes in (("other_same", {"device": "Other CPU (2 logical CPUs)"}),
                          ("other_bs1", {"device": here, "batch_size": 1}), ("xeon_copy", {})):
        (tmp_path / f"{name}.json").write_text(json.dumps({"metadata": {**meta, **changes}}))
    (tmp_path / "broken.json").write_text("[1, 2")
    monkeypatch.setattr(revit.paths, "shipped_dir", lambda kind: tmp_path)
    assert shipped_built_on(meta, here) == ["other_same"]
    models = tuple(TimedModel(96, 8, p, p * r) for p, r in ((1e-2, 1.1), (2e-3, 0.92), (5e-3, 1.0)))
    cal = Calibration(created="2026-12-07T21:00:00+00:00", load_average=0.5, scale=1.0, models=models,
                      source="exported", seconds=40.0, device=here)
    said = shape_warning(meta, cal)
    assert said is not None and "use the shipped table built on this CPU (other_same)" in said
