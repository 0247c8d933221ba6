"""Table smoothing (revit.latency.smoothing): noise removed against a known truth, real structure kept, the
strength chosen by cross-validation on the cells, the record in the table, and the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from revit.errors import ConfigError, FileFormatError
from revit.latency.smoothing import choose_lam, cross_validate, smooth_grid, smooth_table, smooth_values
from revit.latency.table import LatencyTable

AXES = [[32, 48, 64, 80, 96], [1, 2, 3, 4], [8, 16, 24], [8, 16, 24], [64, 128, 192, 256, 320, 384]]


def truth(axes: list[list[int]], step: float = 0.0) -> np.ndarray:
    """A smooth cost surface in the shape of a block's (MAC-like terms, a per-head overhead), in ms; ``step``
    multiplies every cell of mlp_dim > 200 by ``1 + step`` (a cache step every line agrees on)."""
    e, h, q, v, m = np.meshgrid(*[np.asarray(a, float) for a in axes], indexing="ij")
    t = 0.05 + 0.002 * e + 0.02 * h + 1e-4 * e * h * (2 * q + v) + 5e-5 * e * m + 1e-4 * h * q
    return t * np.where(m > 200, 1 + step, 1.0)


def noisy(t: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    return t * np.exp(np.random.default_rng(seed).normal(0, sigma, t.shape))


def test_noise_is_removed_against_the_truth() -> None:
    t = truth(AXES)
    raw = noisy(t, 0.03)
    out, rec = smooth_grid(raw, AXES)
    err_raw, err_out = np.abs(raw / t - 1), np.abs(out / t - 1)
    assert rec.lam > 0
    assert err_out.mean() < 0.8 * err_raw.mean(), (err_raw.mean(), err_out.mean())  # 0.023 -> 0.017
    assert np.percentile(err_out, 95) < np.percentile(err_raw, 95)


def test_a_step_every_line_agrees_on_survives() -> None:
    t = truth(AXES, step=0.25)
    raw = noisy(t, 0.02, seed=1)
    out, _ = smooth_grid(raw, AXES)
    m = np.asarray(AXES[4])
    # the step between mlp 192 and 256: measured on every line, it is kept (within a few %)
    ratio_truth = t[..., m.tolist().index(256)] / t[..., m.tolist().index(192)]
    ratio_out = out[..., m.tolist().index(256)] / out[..., m.tolist().index(192)]
    assert np.median(np.abs(ratio_out / ratio_truth - 1)) < 0.04
    assert np.abs(out / t - 1).mean() < np.abs(raw / t - 1).mean()


def test_a_lone_outlier_is_pulled_to_its_neighbours() -> None:
    t = truth(AXES)
    raw = noisy(t, 0.01, seed=2)
    raw[2, 1, 1, 1, 3] *= 1.3  # one cell measured during a burst of load
    out = smooth_values(raw, AXES, 1.0)  # a least-squares smoother: it halves a lone outlier at this strength
    assert abs(out[2, 1, 1, 1, 3] / t[2, 1, 1, 1, 3] - 1) < 0.15
    # the price of a strength above the cross-validation's choice: the curved surface bends by ~2.4% (median)
    assert np.median(np.abs(out / t - 1)) < 0.04


def test_a_sparse_design_is_left_alone() -> None:
    """The auto design brackets a step with a close pair of knots (MLP 128 and 136 of 8..384) and keeps 2 knots
    on linear axes: no axis has neighbours that estimate each other, so nothing moves, whatever the noise."""
    axes = [[32, 96], [1, 4], [4, 24], [4, 24], [8, 128, 136, 384]]
    t = truth(axes, step=0.5)
    out, rec = smooth_grid(noisy(t, 0.02, seed=3), axes)
    assert rec.lam == 0.0 and rec.cv == () and np.array_equal(out, noisy(t, 0.02, seed=3))


def test_zero_strength_gives_the_measurements_back_and_hidden_cells_are_filled() -> None:
    t = truth(AXES)
    assert np.array_equal(smooth_values(t, AXES, 0.0), t)
    # log-linear along every axis: second differences vanish, so a hidden cell is recovered exactly
    e, h, q, v, m = np.meshgrid(*[np.asarray(a, float) for a in AXES], indexing="ij")
    loglin = np.exp(-7 + 0.01 * e + 0.1 * h + 0.02 * q + 0.01 * v + 0.002 * m)
    w = np.ones(loglin.size)
    w[137] = 0
    out = smooth_values(loglin, AXES, 1.0, w)
    assert out.ravel()[137] == pytest.approx(loglin.ravel()[137], rel=1e-5)


def test_the_one_standard_error_rule() -> None:
    cv = ((0.0, 0.030, 0.001), (0.1, 0.0295, 0.001), (1.0, 0.0304, 0.001), (10.0, 0.040, 0.001))
    assert choose_lam(cv) == 1.0  # the largest within one SE of the best (0.0295 + 0.001)
    noiseless = cross_validate(truth(AXES), AXES)
    assert [r[0] for r in noiseless][0] == 0.0 and all(r[1] >= 0 for r in noiseless)


def shipped_like(tmp_path: Path) -> Path:
    """The shipped micro table as its build wrote it before smoothing (its record removed), on disk."""
    from revit.latency.table import resolve_table

    doc = json.loads(resolve_table("cpu_onnxruntime_fp32_bs64_t17").read_text())
    doc["metadata"].pop("smoothing", None)
    (tmp_path / "built.json").write_text(json.dumps(doc))
    return tmp_path / "built.json"


def test_smooth_table_records_itself_drops_calibrations_and_refuses_twice(tmp_path: Path) -> None:
    t = LatencyTable.load(shipped_like(tmp_path))
    assert t.calibrations  # the shipped table is calibrated
    s = smooth_table(t)
    rec = s.metadata["smoothing"]
    assert set(rec["grids"]) == {"block", "attention", "mlp"} and "calibrations" not in s.metadata
    assert s.branches is not None and s.values.shape == t.values.shape
    assert 0 < rec["grids"]["block"]["median_change"] < 0.05
    s.save(tmp_path / "s.json")
    back = LatencyTable.load(tmp_path / "s.json")
    assert np.allclose(back.values, s.values) and back.calibration is None
    with pytest.raises(ConfigError, match="smoothed already"):
        smooth_table(back)
    doc = json.loads((tmp_path / "s.json").read_text())
    doc["metadata"]["smoothing"]["grids"]["block"]["lambda"] = -1
    with pytest.raises(FileFormatError, match="lambda"):
        LatencyTable.from_dict(doc)


def test_the_command_writes_a_smoothed_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from revit.cli.main import main

    out = tmp_path / "s.json"
    built = str(shipped_like(tmp_path))
    assert main(["latency", "smooth", built, "--out", str(out), "--lambda", "0.1", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["table"] == str(out) and all(g["lambda"] == 0.1 for g in rec["grids"].values())
    assert LatencyTable.load(out).metadata["smoothing"]["chosen"] == "given"
    assert main(["latency", "smooth", built, "--out", str(out)]) == 2  # exists
    assert main(["latency", "smooth", "cpu_onnxruntime_fp32_bs64_t17", "--out", str(tmp_path / "again.json")]) == 2
