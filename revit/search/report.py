"""Study report: a markdown table, a JSON summary and PNG plots from any storage.

Trials are grouped by their ``group`` tag (a candidate and its repeats with other seeds; a baseline
arm at one budget), and each group gets mean and standard deviation over its seeds of the held-out
(validation, used for selection) and test top-1.  Each searched family's best config is chosen on
held-out top-1 (:func:`family_bests`); every family's best and every baseline is compared with the
reference - the best *searched* uniform config, or the uniform baseline when no uniform family is
searched - by Welch's t-test over seeds on test top-1 (never used for selection): difference of the
means, its 95% interval and the two-sided p-value (:func:`welch`, scipy.stats).  Plots: accuracy
against MACs (each family in its colour, its best with error bars, the baselines marked), the
comparison with intervals, per-block widths of the best configs, and the optimisation history.
The same study opens in optuna-dashboard (see :func:`dashboard_hint`).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from revit import counting
from revit._io import atomic_write_text
from revit.search.spec import StudySpec


@dataclass
class Group:
    """Complete trials sharing one config (up to the seed)."""

    name: str
    role: str
    arm: str
    family: str = ""
    trials: list[Any] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        """The metric ``key`` of every complete trial of the group (one per seed)."""
        return self._vals(key)

    def _vals(self, key: str) -> list[float]:
        return [float(t.user_attrs[key]) for t in self.trials if t.user_attrs.get(key) is not None]

    def mean_std(self, key: str) -> tuple[float, float]:
        v = self._vals(key)
        if not v:
            return math.nan, math.nan
        return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

    @property
    def n(self) -> int:
        return len(self.trials)

    @property
    def macs(self) -> float:
        return statistics.fmean(self._vals("macs"))

    @property
    def latency_ms(self) -> float | None:
        v = self._vals("latency_ms")
        return statistics.fmean(v) if v else None

    @property
    def first(self) -> Any:
        return min(self.trials, key=lambda t: t.number)


def groups_of(trials: Sequence[Any], default_family: str = "candidate") -> list[Group]:
    """Complete trials grouped by their ``group`` tag, best mean held-out top-1 first.

    A group's family is its trials' ``family`` tag (untagged candidates: ``default_family``).
    """
    from optuna.trial import TrialState

    from revit.search.perfamily import trial_family

    out: dict[str, Group] = {}
    for t in trials:
        if t.state != TrialState.COMPLETE or t.user_attrs.get("val_acc") is None:
            continue
        u = t.user_attrs
        name = str(u.get("group", f"trial-{t.number}"))
        g = out.setdefault(name, Group(name, str(u.get("role", "candidate")), str(u.get("arm", "?")),
                                       trial_family(t, default_family)))
        g.trials.append(t)
    return sorted(out.values(), key=lambda g: -g.mean_std("val_acc")[0])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (lower cost, higher accuracy), by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def best_candidate(groups: Sequence[Group]) -> Group | None:
    """The candidate group to compare: the best mean held-out top-1 among those with the most seeds."""
    cands = [g for g in groups if g.role == "candidate"]
    if not cands:
        return None
    most = max(g.n for g in cands)
    return max((g for g in cands if g.n == most), key=lambda g: g.mean_std("val_acc")[0])


def family_bests(groups: Sequence[Group]) -> dict[str, Group]:
    """Each searched family's best config (:func:`best_candidate` within the family), in first-seen order."""
    out: dict[str, Group] = {}
    for fam in dict.fromkeys(g.family for g in groups if g.role == "candidate"):
        best = best_candidate([g for g in groups if g.family == fam])
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


def compare(a: Group, b: Group, metric: str = "test_acc") -> Welch:
    """Welch's comparison of groups ``a`` and ``b`` on ``metric`` over their seeds."""
    va, vb = a.values(metric), b.values(metric)
    diff, low, high, df, p = welch(va, vb)
    return Welch(a.name, b.name, metric, len(va), len(vb), diff, low, high, df, p)


def reference_group(spec: StudySpec, bests: dict[str, Group], baselines: Sequence[Group]) -> Group | None:
    """The uniform side of a comparison: the best searched uniform config (on held-out), else the
    uniform baseline."""
    uni = [bests[s.name] for s in spec.spaces if s.family == "uniform" and s.name in bests]
    if uni:
        return max(uni, key=lambda g: g.mean_std("val_acc")[0])
    return next((g for g in baselines if g.arm.startswith("uniform")), None)


def best_rule_group(spec: StudySpec, bests: dict[str, Group]) -> Group | None:
    """The rule side: the best (on held-out) of the searched families that are not uniform."""
    rules = [bests[s.name] for s in spec.spaces if s.family != "uniform" and s.name in bests]
    return max(rules, key=lambda g: g.mean_std("val_acc")[0]) if rules else None


def _pm(ms: tuple[float, float], pct: bool = True) -> str:
    m, s = ms
    if math.isnan(m):
        return "-"
    k = 100 if pct else 1
    return f"{k * m:.2f} ± {k * s:.2f}"


def dashboard_hint(url: str) -> str:
    """How to open the study in optuna-dashboard."""
    if url.startswith("journal:"):
        path = url.split(":", 1)[1].removeprefix("//")
        return (f"pip install optuna-dashboard && optuna-dashboard {path}   "
                "(a journal file is opened by its path; recent optuna-dashboard versions read it directly)")
    return f"pip install optuna-dashboard && optuna-dashboard '{url}'"


def _colors(groups: Sequence[Group], order: Sequence[str] = ()) -> dict[str, str]:
    """One matplotlib colour per family: the searched families in spec ``order``, then the baselines."""
    fams = list(dict.fromkeys([*order, *[g.family for g in groups if g.role == "candidate"],
                               *[g.family for g in groups if g.role != "candidate"]]))
    return {f: f"C{i % 10}" for i, f in enumerate(fams)}


def _blocks_plot(groups: Sequence[Group], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("heads", "qk_dim", "v_dim", "mlp_dim")
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for gi, g in enumerate(groups):
        blocks = g.first.user_attrs.get("blocks") or []
        style = "--" if g.role == "baseline" else "-"
        label = (f"{g.name} ({g.family}, EMB {g.first.user_attrs.get('embed_dim')}, "
                 f"{_pm(g.mean_std('val_acc'))}%)")
        for i, ax in enumerate(axes):
            ax.plot(range(1, len(blocks) + 1), [b[i] for b in blocks], style, marker="o", ms=3,
                    label=label if i == 0 else None, color=f"C{gi % 10}")
    for kind, ax in zip(kinds, axes, strict=True):
        ax.set_title(kind + (" (per head)" if kind in ("qk_dim", "v_dim") else ""))
        ax.set_xlabel("block")
        ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=2, fontsize=7, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.12 + 0.03 * max(0, len(groups) - 4), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _accuracy_plot(trials: Sequence[Any], groups: Sequence[Group], path: Path, title: str,
                   colors: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    cg = [g for g in groups if g.role == "candidate"]
    for fam in dict.fromkeys(g.family for g in cg):
        ts = [t for g in cg if g.family == fam for t in g.trials]
        ax.scatter([t.user_attrs["macs"] / 1e6 for t in ts], [100 * t.user_attrs["val_acc"] for t in ts],
                   s=16, color=colors[fam], alpha=0.5, label=f"{fam} candidates (each seed)")
    pts = [(g.macs, g.mean_std("val_acc")[0]) for g in cg]
    front = pareto_front(pts)
    if len(front) > 1:
        ax.plot([pts[i][0] / 1e6 for i in front], [100 * pts[i][1] for i in front], "-", color="0.5", lw=1,
                label="Pareto front (candidate means)")
    for fam, best in family_bests(groups).items():
        m, sd = best.mean_std("val_acc")
        ax.errorbar([best.macs / 1e6], [100 * m], yerr=[100 * sd], fmt="*", ms=14, color=colors[fam], capsize=4,
                    zorder=4, mec="k", label=f"best {fam}: {best.name} (n={best.n})")
    markers = "sD^vP"
    for i, g in enumerate([g for g in groups if g.role == "baseline"]):
        m, sd = g.mean_std("val_acc")
        ax.errorbar([g.macs / 1e6], [100 * m], yerr=[100 * sd], fmt=markers[i % len(markers)], ms=9, capsize=4,
                    color=colors[g.family], mfc="none", mew=2, label=f"baseline {g.arm} (n={g.n})", zorder=4)
    ax.set_xlabel("MACs (M, attention matmuls included)")
    ax.set_ylabel("held-out top-1 (%)")
    _finish(fig, ax, title, path)


def _comparison_plot(arms: Sequence[Group], ref: Group, head: Welch | None, colors: dict[str, str], path: Path,
                     title: str) -> None:
    """Test top-1 of each compared arm: every seed, the mean and its 95% t-interval; the reference dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.55 * len(arms)))
    for y, g in enumerate(arms):
        v = [100 * x for x in g.values("test_acc")]
        if not v:
            continue
        ax.scatter(v, [y] * len(v), color=colors.get(g.family, "0.3"), s=18, alpha=0.6)
        m = statistics.fmean(v)
        half = float(stats.t.ppf(0.975, len(v) - 1)) * statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else 0
        ax.errorbar([m], [y], xerr=[half], fmt="o" if g.role == "candidate" else "s", ms=8, capsize=5,
                    color=colors.get(g.family, "0.3"), mec="k", zorder=3)
    ax.axvline(statistics.fmean([100 * x for x in ref.values("test_acc")]), ls="--", color="0.4", lw=1)
    ax.set_yticks(range(len(arms)))
    ax.set_yticklabels([f"{g.family}: {g.name} (n={g.n})" if g.role == "candidate" else f"{g.family} (n={g.n})"
                        for g in arms], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test top-1 (%): each seed, mean and its 95% t-interval; dashed: reference mean")
    sub = ""
    if head is not None:
        text = head.describe()
        cut = text.find(", p = ")
        sub = f"\nbest rule - best uniform: {text[:cut]}\n{text[cut + 2:]}" if cut > 0 else f"\n{text}"
    ax.set_title(title + sub, fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finish(fig: Any, ax: Any, title: str, path: Path) -> None:
    """Title, grid and legend on ``ax``; save ``fig`` to ``path`` and close it."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _history_plot(trials: Sequence[Any], path: Path, title: str, default_family: str,
                  colors: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from revit.search.perfamily import trial_family

    fig, ax = plt.subplots(figsize=(7, 4))
    done = [t for t in sorted(trials, key=lambda t: t.number)
            if t.user_attrs.get("val_acc") is not None and t.state.name == "COMPLETE"]
    fams = list(dict.fromkeys(trial_family(t, default_family) for t in done
                              if t.user_attrs.get("role", "candidate") == "candidate"))
    for i, fam in enumerate(fams):
        ts = [t for t in done if t.user_attrs.get("role", "candidate") == "candidate"
              and trial_family(t, default_family) == fam]
        color = colors.get(fam, f"C{i % 10}")
        ax.scatter([t.number for t in ts], [100 * t.user_attrs["val_acc"] for t in ts], color=color, s=18,
                   label=f"{fam} candidate")
        best, xs, ys = -math.inf, [], []
        for t in ts:
            best = max(best, t.user_attrs["val_acc"])
            xs.append(t.number)
            ys.append(100 * best)
        ax.step(xs, ys, where="post", color=color, label=f"best {fam} so far")
    base = [t for t in done if t.user_attrs.get("role") == "baseline"]
    ax.scatter([t.number for t in base], [100 * t.user_attrs["val_acc"] for t in base], color="0.4", marker="s",
               s=18, label="baseline")
    ax.set_xlabel("trial")
    ax.set_ylabel("held-out top-1 (%)")
    _finish(fig, ax, title, path)


def write_report(spec: StudySpec, study: Any, out: str | os.PathLike[str], *, storage_url: str | None = None,
                 top: int = 3) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and the PNG plots into ``out``; return the summary.

    The summary has ``families`` (each searched family's best), ``comparisons`` (every family's best
    and every baseline minus the reference, Welch on test top-1), ``headline`` (best rule minus best
    uniform) and ``comparison`` (the headline pair's means, as before families).
    """
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    first = spec.family_names[0]
    groups = groups_of(trials, first)
    url = storage_url or spec.storage_url()
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    bests = family_bests(groups)
    baselines = [g for g in groups if g.role == "baseline"]
    ref = reference_group(spec, bests, baselines)
    best = best_rule_group(spec, bests) or best_candidate(groups)
    head = compare(best, ref) if best is not None and ref is not None and best is not ref else None
    arms = [*bests.values(), *[g for g in baselines if g not in bests.values()]]
    rivals = [g for g in arms if g is not ref]

    plots = {"accuracy_vs_macs": out_dir / "accuracy_vs_macs.png", "comparison": out_dir / "comparison.png",
             "best_blocks": out_dir / "best_blocks.png", "history": out_dir / "history.png"}
    title = f"study {spec.name}: budget {spec.budget.describe()}"
    colors = _colors(groups, spec.family_names)
    _accuracy_plot(trials, groups, plots["accuracy_vs_macs"], title, colors)
    if ref is not None and arms:
        _comparison_plot(arms, ref, head, colors, plots["comparison"], title)
    else:
        del plots["comparison"]
    shown = [g for g in groups if g.role == "candidate"][:top]
    shown += [g for g in bests.values() if g not in shown]
    _blocks_plot(shown + baselines, plots["best_blocks"],
                 f"per-block widths: best candidates and baselines ({spec.name})")
    _history_plot(trials, plots["history"], f"optimisation history ({spec.name})", first, colors)

    summary: dict[str, Any] = {"study": spec.name, "storage": url, "states": states, "groups": [],
                               "families": {f: {"best": g.name, "n": g.n, "val": g.mean_std("val_acc"),
                                                "test": g.mean_std("test_acc"), "macs": g.macs,
                                                "trials": [t.number for t in g.trials]} for f, g in bests.items()}}
    lines = _header(spec, url, len(trials), states)
    lines += [f"- baseline left out: {s}" for s in study.user_attrs.get("skipped_baselines", [])]
    if best is not None and ref is not None and best is not ref:
        lines += _comparison(best, ref, head, summary)
    if ref is not None:
        lines += _versus_reference(rivals, ref, summary)
    lines += _configs_table(groups, summary)
    lines += _blocks_table(shown + baselines)
    for fam, g in bests.items():
        if g.first.params:
            lines += ["", f"Parameters of `{g.name}` (best {fam}): "
                      + ", ".join(f"{k}={v:.4g}" for k, v in g.first.params.items())]
    lines += _trials_table(trials)
    lines += ["", "## Plots", ""] + [f"![{k}]({p.name})" for k, p in plots.items()]
    lines += ["", "## Open in optuna-dashboard", "", "```", dashboard_hint(url), "```",
              "Trials carry the user attributes role, family, arm, seed, group, macs, params, latency_ms, "
              "blocks, val_acc and test_acc (filter on role=baseline to see the baselines, on family to see "
              "one searched family).", ""]
    atomic_write_text(out_dir / "report.md", "\n".join(lines))
    summary["plots"] = {k: str(p) for k, p in plots.items()}
    atomic_write_text(out_dir / "report.json", json.dumps(summary, indent=1, default=str))
    return summary


def _given(obj: Any) -> dict[str, Any]:
    """The fields of a dataclass value that differ from their defaults (what a spec set)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) != f.default}


def _header(spec: StudySpec, url: str, n_trials: int, states: dict[str, int]) -> list[str]:
    return [f"# Study `{spec.name}`", "",
            f"- spec: `{spec.source}`; storage: `{url}`",
            f"- objective(s): {', '.join(spec.objectives)}; sampler {spec.sampler.name}, "
            f"pruner {spec.pruner.name}; budget {spec.budget.describe()}",
            f"- data: {json.dumps(_given(spec.data))}; training: {json.dumps(_given(spec.train))} "
            f"(other fields at their defaults); seeds {list(spec.seeds)}",
            f"- trials: {n_trials} ({', '.join(f'{k} {v}' for k, v in sorted(states.items()))})",
            "- accuracy: *held-out* = validation split carved from the training set (the value optimised); "
            "*test* = the dataset's own test set (never used for selection); mean ± std over seeds", ""]


def _comparison(best: Group, ref: Group, head: Welch | None, summary: dict[str, Any]) -> list[str]:
    """The headline: the best rule-generated config against the best uniform one (or the uniform baseline)."""
    bv, uv = best.mean_std("test_acc"), ref.mean_std("test_acc")
    bh, uh = best.mean_std("val_acc"), ref.mean_std("val_acc")
    summary["comparison"] = {"best": best.name, "best_family": best.family, "best_test": bv, "best_val": bh,
                             "best_n": best.n, "best_macs": best.macs, "uniform": ref.name,
                             "uniform_family": ref.family, "uniform_test": uv, "uniform_val": uh, "uniform_n": ref.n,
                             "uniform_macs": ref.macs}
    lines = ["", "## Best rule-generated config vs best uniform config", "",
             f"- best `{best.family}` config `{best.name}` ({best.n} seed(s)): test top-1 **{_pm(bv)}%**, "
             f"held-out {_pm(bh)}%, MACs {counting.format_count(best.macs)}, "
             f"EMB {best.first.user_attrs.get('embed_dim')}",
             f"- {'best searched uniform config' if ref.role == 'candidate' else 'uniform baseline'} `{ref.name}` "
             f"({ref.family}, {ref.n} seed(s)): test top-1 **{_pm(uv)}%**, held-out {_pm(uh)}%, "
             f"MACs {counting.format_count(ref.macs)}, EMB {ref.first.user_attrs.get('embed_dim')}"]
    if head is not None:
        summary["headline"] = head.to_json()
        lines.append(f"- difference (rule - uniform), test top-1: **{head.describe()}**; "
                     f"MACs {100 * (best.macs / ref.macs - 1):+.2f}%")
        if min(head.n_a, head.n_b) < 3:
            lines.append("- fewer than 3 seeds on a side: the interval is wide and the p-value rough; "
                         "give the spec 3 or more seeds")
    lines.append("- each family's best: its repeated config with the best mean held-out top-1 (the repeats were "
                 "chosen on the first seed's held-out top-1); the interval is on test top-1, which no choice used")
    return lines


def _versus_reference(rivals: list[Group], ref: Group, summary: dict[str, Any]) -> list[str]:
    """Every family's best and every baseline minus the reference, with Welch intervals (test top-1)."""
    lines = ["", f"## Every family's best and every baseline vs `{ref.name}` ({ref.family})", "",
             "Test top-1, mean ± std over seeds; difference to the reference with its 95% interval "
             "(Welch's t, unequal variances) and two-sided p-value.", "",
             "| family | group | seeds | test top-1 % | held-out % | MACs | minus reference (points) "
             "| 95% interval | p |",
             "|---|---|---|---|---|---|---|---|---|"]
    summary["comparisons"] = []
    for g in [*rivals, ref]:
        m = g.mean_std("test_acc")
        cells = ["", "", ""]
        if g is not ref:
            w = compare(g, ref)
            summary["comparisons"].append(w.to_json() | {"family": g.family, "reference_family": ref.family})
            cells = [f"{100 * w.diff:+.2f}",
                     "-" if math.isnan(w.low) else f"[{100 * w.low:+.2f}, {100 * w.high:+.2f}]",
                     "-" if math.isnan(w.p) else f"{w.p:.3g}"]
        lines.append(f"| {g.family} | {g.name} | {g.n} | {_pm(m)} | {_pm(g.mean_std('val_acc'))} | "
                     f"{counting.format_count(g.macs)} | {' | '.join(cells)} |")
    return lines


def _configs_table(groups: list[Group], summary: dict[str, Any]) -> list[str]:
    """One row per config (complete trials grouped), also appended to ``summary['groups']``."""
    lat = any(g.latency_ms is not None for g in groups)
    lines = ["", "## Configs (complete trials grouped by config; best held-out first)", "",
             "| group | role | family | arm | seeds | held-out top-1 % | test top-1 % | MACs | params | EMB "
             "| MLP factor |" + (" latency ms/batch |" if lat else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if lat else "")]
    for g in groups:
        u = g.first.user_attrs
        row = (f"| {g.name} | {g.role} | {g.family} | {g.arm} | {g.n} | {_pm(g.mean_std('val_acc'))} "
               f"| {_pm(g.mean_std('test_acc'))} | {counting.format_count(g.macs)} "
               f"| {counting.format_count(u.get('params', 0))} | {u.get('embed_dim')} | {u.get('mlp_factor', 1):g} |")
        if lat:
            row += f" {g.latency_ms:.3f} |" if g.latency_ms is not None else " - |"
        lines.append(row)
        summary["groups"].append({"group": g.name, "role": g.role, "family": g.family, "arm": g.arm, "n": g.n,
                                  "val": g.mean_std("val_acc"), "test": g.mean_std("test_acc"), "macs": g.macs,
                                  "latency_ms": g.latency_ms, "embed_dim": u.get("embed_dim"),
                                  "blocks": u.get("blocks"), "params": dict(g.first.params),
                                  "trials": [t.number for t in g.trials]})
    return lines


def _blocks_table(groups: list[Group]) -> list[str]:
    lines = ["", "## Per-block widths of the best configs", "", "| group | EMB | blocks (heads/qk/v/mlp) |",
             "|---|---|---|"]
    for g in groups:
        u = g.first.user_attrs
        blocks = " ".join("/".join(str(x) for x in b) for b in u.get("blocks") or [])
        lines.append(f"| {g.name} | {u.get('embed_dim')} | {blocks} |")
    return lines


def _trials_table(trials: list[Any]) -> list[str]:
    lines = ["", "## All trials", "",
             "| # | state | role | family | arm | seed | held-out | test | MACs | worker | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in sorted(trials, key=lambda t: t.number):
        u = t.user_attrs
        note = u.get("infeasible") or (f"retry of {u['retry_of']}" if "retry_of" in u else "") or (
            f"repeat of {u['repeat_of']}" if "repeat_of" in u else "") or u.get("error", "")
        note = str(note).splitlines()[0][:80] if note else ""
        va, te = u.get("val_acc"), u.get("test_acc")
        lines.append(f"| {t.number} | {t.state.name} | {u.get('role', '')} | {u.get('family', '')} "
                     f"| {u.get('arm', '')} "
                     f"| {u.get('seed', '')} | "
                     f"{'' if va is None else f'{100 * va:.2f}'} | {'' if te is None else f'{100 * te:.2f}'} | "
                     f"{counting.format_count(u['macs']) if 'macs' in u else ''} | {u.get('worker', '')} | {note} |")
    return lines


__all__ = ["Group", "Welch", "best_candidate", "best_rule_group", "compare", "dashboard_hint", "family_bests",
           "groups_of", "pareto_front", "reference_group", "welch", "write_report"]
