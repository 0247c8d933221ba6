"""Study results per config (its complete trials over the seeds) and Welch comparisons between them.

Used by the report (tables, JSON) and its plots; no plotting and no file I/O here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from revit.search import attrs as A
from revit.search.spec import StudySpec

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


def seed_runs(trial: FrozenTrial) -> list[dict[str, Any]]:
    """A complete trial's seeds, each ``{seed, val_acc, test_acc}``: a candidate's ``runs``, else (a baseline, or a
    candidate of a study of revit <= 0.1.0) the trial's own seed."""
    u = trial.user_attrs
    runs = u.get(A.RUNS)
    if isinstance(runs, list) and runs and all(isinstance(r, dict) for r in runs):
        return [{k: r.get(k) for k in (A.SEED, A.VAL_ACC, A.TEST_ACC)} for r in runs]
    return [{A.SEED: u.get(A.SEED), A.VAL_ACC: u.get(A.VAL_ACC), A.TEST_ACC: u.get(A.TEST_ACC)}]


@dataclass
class ConfigResult:
    """One config's complete trial(s) and its seeds: a candidate is one trial with all its seeds; a baseline (and
    a candidate of a study of revit <= 0.1.0) one trial per seed, sharing one ``group`` tag (a trial attribute).

    Not :class:`revit.prune.structure.Group`, the prunable channel group: "group" in the code is that one."""

    name: str
    role: str
    arm: str
    family: str = ""
    trials: list[FrozenTrial] = field(default_factory=list)

    @property
    def runs(self) -> list[dict[str, Any]]:
        """The config's seeds, each ``{seed, val_acc, test_acc}``, in trial order."""
        return [r for t in sorted(self.trials, key=lambda t: t.number) for r in seed_runs(t)]

    def values(self, key: str) -> list[float]:
        """The metric ``key`` of every seed of the config (held-out or test top-1), else of every trial."""
        return self._vals(key)

    def _vals(self, key: str) -> list[float]:
        if key in (A.VAL_ACC, A.TEST_ACC):
            return [float(r[key]) for r in self.runs if r.get(key) is not None]
        return [float(t.user_attrs[key]) for t in self.trials if t.user_attrs.get(key) is not None]

    def mean_std(self, key: str) -> tuple[float, float]:
        v = self._vals(key)
        if not v:
            return math.nan, math.nan
        return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else math.nan)  # no spread from one seed

    @property
    def n(self) -> int:
        """The number of seeds."""
        return len(self.runs)

    @property
    def macs(self) -> float:
        return statistics.fmean(self._vals(A.MACS))

    @property
    def latency_ms(self) -> float | None:
        v = self._vals(A.LATENCY_MS)
        return statistics.fmean(v) if v else None

    @property
    def measured_latency_ms(self) -> float | None:
        """The measured ms/batch (``measure_latency``), mean over the config's trials; None when predicted."""
        v = self._vals(A.MEASURED_LATENCY_MS)
        return statistics.fmean(v) if v else None

    @property
    def first(self) -> FrozenTrial:
        return min(self.trials, key=lambda t: t.number)


def config_results(trials: Sequence[FrozenTrial]) -> list[ConfigResult]:
    """One :class:`ConfigResult` per ``group`` tag of the complete trials, best mean held-out top-1 first (ties:
    the earlier trial first, as Optuna's ``best_trial``).

    A config's family is its trials' ``family`` tag (``baseline:ARM`` for baselines).
    """
    from optuna.trial import TrialState


    out: dict[str, ConfigResult] = {}
    for t in trials:
        if t.state != TrialState.COMPLETE or t.user_attrs.get(A.VAL_ACC) is None:
            continue
        u = t.user_attrs
        name = str(u.get(A.GROUP, A.trial_ref(t)))
        g = out.setdefault(name, ConfigResult(name, str(u.get(A.ROLE, A.CANDIDATE)), str(u.get(A.ARM, "?")),
                                       A.trial_family(t)))
        g.trials.append(t)
    return sorted(out.values(), key=lambda g: (-g.mean_std(A.VAL_ACC)[0], g.first.number))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (lower cost, higher accuracy), by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def best_candidate(results: Sequence[ConfigResult]) -> ConfigResult | None:
    """The candidate config to compare: the best mean held-out top-1 among those with the most seeds."""
    cands = [g for g in results if g.role == A.CANDIDATE]
    if not cands:
        return None
    most = max(g.n for g in cands)
    return min((g for g in cands if g.n == most), key=lambda g: (-g.mean_std(A.VAL_ACC)[0], g.first.number))


def family_bests(results: Sequence[ConfigResult]) -> dict[str, ConfigResult]:
    """Each searched family's best config (:func:`best_candidate` within the family), in first-seen order."""
    out: dict[str, ConfigResult] = {}
    for fam in dict.fromkeys(g.family for g in results if g.role == A.CANDIDATE):
        best = best_candidate([g for g in results if g.family == fam])
        if best is not None:
            out[fam] = best
    return out


@dataclass(frozen=True)
class Welch:
    """Welch's comparison of arm ``a`` against arm ``b`` on one metric over seeds (a - b)."""

    a: str
    b: str
    metric: str
    n_a: int
    n_b: int
    diff: float
    low: float  # 95% interval of the difference of the means (Welch-Satterthwaite degrees of freedom)
    high: float
    df: float
    p: float  # two-sided p-value of Welch's t-test (no difference)

    def __post_init__(self) -> None:
        for f in ("diff", "low", "high", "df", "p"):  # null in a summary read back from JSON: no value, NaN here
            if getattr(self, f) is None:
                object.__setattr__(self, f, math.nan)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def describe(self) -> str:
        """``+1.23 points, 95% interval [+0.4, +2.1] (Welch, df 3.1), p = 0.012, n = 3 vs 3``."""
        head = f"{100 * self.diff:+.2f} points"
        if math.isnan(self.low):
            why = "fewer than 2 seeds on a side" if min(self.n_a, self.n_b) < 2 else "no spread over seeds"
            return f"{head} (no interval: {why}; n = {self.n_a} vs {self.n_b})"
        return (f"{head}, 95% interval [{100 * self.low:+.2f}, {100 * self.high:+.2f}] (Welch, df {self.df:.1f}), "
                f"p = {self.p:.3g}, n = {self.n_a} vs {self.n_b} seeds")


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float, float]:
    """(mean(a) - mean(b), interval low, high, degrees of freedom, two-sided p) by Welch's t-test.

    NaN interval and p with fewer than 2 values on a side or no spread on either (scipy.stats).
    """
    import warnings

    from scipy import stats

    diff = statistics.fmean(a) - statistics.fmean(b) if a and b else math.nan
    if len(a) < 2 or len(b) < 2 or (statistics.stdev(a) == 0 and statistics.stdev(b) == 0):
        return diff, math.nan, math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = stats.ttest_ind(list(a), list(b), equal_var=False)
        ci = r.confidence_interval(level)
    return diff, float(ci.low), float(ci.high), float(r.df), float(r.pvalue)


def compare(a: ConfigResult, b: ConfigResult, metric: str = "test_acc") -> Welch:
    """Welch's comparison of configs ``a`` and ``b`` on ``metric`` over their seeds."""
    va, vb = a.values(metric), b.values(metric)
    diff, low, high, df, p = welch(va, vb)
    return Welch(a.name, b.name, metric, len(va), len(vb), diff, low, high, df, p)


def _uniform_family(family: str) -> bool:
    from revit.rules import get_family

    return bool(get_family(family).uniform)


def _uniform_arms(spec: StudySpec) -> list[str]:
    """The baseline arms whose rule is of a uniform family, in spec order."""
    from revit.rules import load_rule

    return [b.arm for b in spec.baselines if _uniform_family(load_rule(b.rule).family)]


def reference_result(spec: StudySpec, bests: dict[str, ConfigResult],
                     baselines: Sequence[ConfigResult]) -> ConfigResult | None:
    """The uniform side of a comparison: the best searched config of a uniform family (on held-out), else the
    first baseline of a uniform rule."""
    uni = [bests[s.name] for s in spec.spaces if _uniform_family(s.family) and s.name in bests]
    if uni:
        return max(uni, key=lambda g: g.mean_std(A.VAL_ACC)[0])
    arms = _uniform_arms(spec)
    return min((g for g in baselines if g.arm in arms), key=lambda g: arms.index(g.arm), default=None)


def best_rule_result(spec: StudySpec, bests: dict[str, ConfigResult]) -> ConfigResult | None:
    """The rule side: the best (on held-out) of the searched families that are not uniform."""
    rules = [bests[s.name] for s in spec.spaces if not _uniform_family(s.family) and s.name in bests]
    return max(rules, key=lambda g: g.mean_std(A.VAL_ACC)[0]) if rules else None


def pm(ms: Sequence[float | None], pct: bool = True, unit: str = "") -> str:
    """``81.09 ± 0.44%`` (mean ± std over seeds), ``80.10% (n = 1)`` for one seed, ``-`` for none (NaN or
    null: a summary read back from JSON)."""
    m, s = ms
    if m is None or math.isnan(m):
        return "-"
    from revit.counting import format_spread

    k = 100 if pct else 1
    if s is None or math.isnan(s):
        return format_spread(k * m, None, 1, unit=unit)
    return f"{k * m:.2f} ± {k * s:.2f}{unit}"
