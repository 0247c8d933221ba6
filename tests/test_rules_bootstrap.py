"""Bootstrap intervals of `revit rules fit` and its non-monotone (less-more-less) test, on synthetic traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from revit.cli.main import main
from revit.config import BLOCK_KINDS
from revit.rules import load_rule
from revit.rules.fit import (
    Verdict,
    bootstrap_fit,
    fit_family,
    profile_contrasts,
    regions,
    samples_from_traces,
    select_step,
)
from revit.rules.synthetic import linear_profile, write_profile_trace, write_synthetic_trace
from revit.trace import Trace

TRUE = dict(center=0.55, plateau=0.45, softness=0.06, heads_per_emb=0.025, heads_end=0.45, qk_per_emb=0.07,
            qk_end=0.6, v_per_emb=0.1, v_end=0.8, mlp_per_emb=5.0, mlp_end=0.4)
RATIOS = {"heads": 0.025, "qk_dim": 0.07, "v_dim": 0.1, "mlp_dim": 5.0}


def _lml_traces(d: Path, rep: int, n: int = 3, noise: float = 0.05) -> list[Path]:
    """``n`` noisy traces of the known member TRUE (EMB 768, 12 blocks), seeds offset by ``rep``."""
    out = []
    for k in range(n):
        p = d / f"lml{rep}_{k}.jsonl"
        write_synthetic_trace(p, TRUE, embed_dim=768, depth=12, noise=noise, seed=100 * rep + k)
        out.append(p)
    return out


def _monotone_traces(d: Path, n: int = 3, noise: float = 0.05) -> list[Path]:
    """``n`` noisy traces of a profile that falls linearly over depth (wide first, narrow later)."""
    out = []
    for k in range(n):
        p = d / f"mono{k}.jsonl"
        member = write_profile_trace(p, linear_profile(768, 12, RATIOS, end=0.4), embed_dim=768, noise=noise,
                                     seed=k)
        assert select_step(Trace.load(p), at_ratio=0.5).blocks == member  # the 0.5 read is the profile
        out.append(p)
    return out


def test_regions_split_quarters():
    assert [list(r) for r in regions(8)] == [[0, 1], [2, 3, 4, 5], [6, 7]]
    assert [len(r) for r in regions(12)] == [3, 6, 3]
    assert [len(r) for r in regions(3)] == [1, 1, 1]


def test_intervals_cover_the_true_parameters(tmp_path):
    """Over 3 independent synthetic data sets, the 95% intervals cover the true value in >= 85% of cases."""
    covered, total, widths = 0, 0, []
    for rep in range(3):
        res = fit_family("less-more-less", samples_from_traces(_lml_traces(tmp_path, rep), at_ratio=0.5))
        boot = bootstrap_fit(res, n=60, seed=rep)
        assert boot.unit == "traces+blocks" and set(boot.intervals) == set(TRUE)
        for k, true in TRUE.items():
            lo, hi = boot.intervals[k]
            assert lo <= res.rule.params[k] * (1 + 1e-6) + 1e-9 and hi >= res.rule.params[k] * (1 - 1e-6) - 1e-9
            covered += lo <= true <= hi
            total += 1
            widths.append((hi - lo) / true)
    assert covered / total >= 0.85, (covered, total)
    # informative, not trivially wide: median relative width under 25% of the value
    assert sorted(widths)[len(widths) // 2] < 0.25


def test_non_monotone_verdict_positive_for_less_more_less(tmp_path):
    res = fit_family("less-more-less", samples_from_traces(_lml_traces(tmp_path, 0), at_ratio=0.5))
    boot = bootstrap_fit(res, n=60, seed=0)
    assert boot.non_monotone()
    # every kind has narrow ends in TRUE (end ratios < 1), so every kind is significant
    assert all(boot.verdict(k) is Verdict.WIDER_MIDDLE for k in BLOCK_KINDS)


def test_non_monotone_verdict_negative_for_monotone_profile(tmp_path):
    samples = samples_from_traces(_monotone_traces(tmp_path), at_ratio=0.5)
    res = fit_family("less-more-less", samples)
    boot = bootstrap_fit(res, n=60, seed=0)
    assert not boot.non_monotone()
    for k in BLOCK_KINDS:
        assert boot.verdict(k) is not Verdict.WIDER_MIDDLE
        c = boot.contrast[k]
        assert c.first > c.middle > c.last  # falling profile
        # the contrast, computed independently from the observed widths
        rel = [[w / (sum(s.widths(k)) / 12) for w in s.widths(k)] for s in samples]
        first = sum(sum(r[:3]) for r in rel) / 9
        middle = sum(sum(r[3:9]) for r in rel) / 18
        last = sum(sum(r[9:]) for r in rel) / 9
        assert c.diff == pytest.approx(middle - max(first, last), abs=1e-9)
        assert boot.contrast_interval[k][1] < 0  # significantly narrower in the middle than at the first end
        assert boot.first_last_interval[k][0] > 0  # and significantly falling over depth
    assert profile_contrasts(samples) == boot.contrast


def test_intervals_are_deterministic_for_a_seed(tmp_path):
    res = fit_family("less-more-less", samples_from_traces(_lml_traces(tmp_path, 1, n=2), at_ratio=0.5))
    a = bootstrap_fit(res, n=20, seed=7)
    b = bootstrap_fit(res, n=20, seed=7)
    c = bootstrap_fit(res, n=20, seed=8)
    assert a.intervals == b.intervals and a.contrast_interval == b.contrast_interval
    assert a.intervals != c.intervals
    one = fit_family("less-more-less", samples_from_traces(_lml_traces(tmp_path / "one", 1, n=1), at_ratio=0.5))
    assert bootstrap_fit(one, n=20, seed=0).unit == "blocks"


def test_cli_stores_intervals_and_verdict(tmp_path, capsys):
    traces = _lml_traces(tmp_path, 2, n=2)
    out = tmp_path / "fit.yaml"
    rc = main(["rules", "fit", *map(str, traces), "--at-ratio", "0.5", "--bootstrap", "30", "--seed", "3",
               "--out", str(out), "--no-plot", "--json"])
    assert rc == 0
    cap = capsys.readouterr()
    assert "significantly non-monotone" in cap.err and "less-more-less" in cap.err
    rep = json.loads(cap.out)
    prov = load_rule(str(out)).provenance["bootstrap"]
    assert prov == rep["bootstrap"]
    assert prov["n"] == 30 and prov["seed"] == 3 and prov["unit"] == "traces+blocks"
    assert set(prov["intervals"]) == set(TRUE) and prov["non_monotone"]["significant"] is True
    assert set(prov["non_monotone"]["kinds"]) == set(BLOCK_KINDS)
    # the same seed gives the same stored intervals
    assert main(["rules", "fit", *map(str, traces), "--at-ratio", "0.5", "--bootstrap", "30", "--seed", "3",
                 "--out", str(tmp_path / "again.yaml"), "--no-plot"]) == 0
    assert load_rule(str(tmp_path / "again.yaml")).provenance["bootstrap"]["intervals"] == prov["intervals"]


@pytest.mark.parametrize("argv, match", [
    (["--bootstrap", "5"], "at least 10 resamples"),
    (["--bootstrap-unit", "traces"], "at least 2 traces"),
])
def test_cli_bootstrap_errors(tmp_path, capsys, argv, match):
    traces = _lml_traces(tmp_path, 0, n=1)
    assert main(["rules", "fit", *map(str, traces), "--at-ratio", "0.5", "--no-plot", *argv]) == 2
    assert match in capsys.readouterr().err
