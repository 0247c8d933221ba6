"""Study report: a markdown table, a JSON summary and PNG plots from any storage.

Trials are grouped by their ``group`` tag (a candidate and its repeats with other seeds; a baseline
arm at one budget), and each group gets mean and standard deviation over its seeds of the held-out
(validation, used for selection) and test top-1.  Plots: accuracy against MACs with the Pareto
front of the candidates and the baselines marked, per-block widths of the best configs, and the
optimisation history.  The same study opens in optuna-dashboard (see :func:`dashboard_hint`).
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
    trials: list[Any] = field(default_factory=list)

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


def groups_of(trials: Sequence[Any]) -> list[Group]:
    """Complete trials grouped by their ``group`` tag, best mean held-out top-1 first."""
    from optuna.trial import TrialState

    out: dict[str, Group] = {}
    for t in trials:
        if t.state != TrialState.COMPLETE or t.user_attrs.get("val_acc") is None:
            continue
        u = t.user_attrs
        name = str(u.get("group", f"trial-{t.number}"))
        g = out.setdefault(name, Group(name, str(u.get("role", "candidate")), str(u.get("arm", "?"))))
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


def _blocks_plot(groups: Sequence[Group], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("heads", "qk_dim", "v_dim", "mlp_dim")
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for gi, g in enumerate(groups):
        blocks = g.first.user_attrs.get("blocks") or []
        style = "--" if g.role == "baseline" else "-"
        label = f"{g.name} ({g.arm}, EMB {g.first.user_attrs.get('embed_dim')}, {_pm(g.mean_std('val_acc'))}%)"
        for i, ax in enumerate(axes):
            ax.plot(range(1, len(blocks) + 1), [b[i] for b in blocks], style, marker="o", ms=3,
                    label=label if i == 0 else None, color=f"C{gi}")
    for kind, ax in zip(kinds, axes, strict=True):
        ax.set_title(kind + (" (per head)" if kind in ("qk_dim", "v_dim") else ""))
        ax.set_xlabel("block")
        ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=2, fontsize=7, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.12 + 0.03 * max(0, len(groups) - 4), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _accuracy_plot(trials: Sequence[Any], groups: Sequence[Group], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    cand = [t for g in groups if g.role == "candidate" for t in g.trials]
    if cand:
        ax.scatter([t.user_attrs["macs"] / 1e6 for t in cand], [100 * t.user_attrs["val_acc"] for t in cand],
                   s=16, color="0.6", label="candidate trials (each seed)")
    cg = [g for g in groups if g.role == "candidate"]
    pts = [(g.macs, g.mean_std("val_acc")[0]) for g in cg]
    front = pareto_front(pts)
    if front:
        ax.plot([pts[i][0] / 1e6 for i in front], [100 * pts[i][1] for i in front], "-", color="C0", lw=1.5,
                label="Pareto front (candidate means)")
        ax.scatter([pts[i][0] / 1e6 for i in front], [100 * pts[i][1] for i in front], color="C0", s=30, zorder=3)
    best = best_candidate(groups)
    if best is not None:
        m, s = best.mean_std("val_acc")
        ax.errorbar([best.macs / 1e6], [100 * m], yerr=[100 * s], fmt="*", ms=14, color="C3", capsize=4, zorder=4,
                    label=f"best candidate {best.name} (n={best.n})")
    markers = "sD^vP"
    for i, g in enumerate([g for g in groups if g.role == "baseline"]):
        m, s = g.mean_std("val_acc")
        ax.errorbar([g.macs / 1e6], [100 * m], yerr=[100 * s], fmt=markers[i % len(markers)], ms=9, capsize=4,
                    color=f"C{i + 1}", mfc="none", mew=2, label=f"baseline {g.arm} (n={g.n})", zorder=4)
    ax.set_xlabel("MACs (M, attention matmuls included)")
    ax.set_ylabel("held-out top-1 (%)")
    _finish(fig, ax, title, path)


def _finish(fig: Any, ax: Any, title: str, path: Path) -> None:
    """Title, grid and legend on ``ax``; save ``fig`` to ``path`` and close it."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _history_plot(trials: Sequence[Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    best = -math.inf
    xs: list[int] = []
    ys: list[float] = []
    for t in sorted(trials, key=lambda t: t.number):
        v = t.user_attrs.get("val_acc")
        if v is None or t.state.name != "COMPLETE":
            continue
        role = t.user_attrs.get("role", "candidate")
        ax.scatter([t.number], [100 * v], color="C0" if role == "candidate" else "C1", s=18,
                   marker="o" if role == "candidate" else "s")
        if role == "candidate":
            best = max(best, v)
            xs.append(t.number)
            ys.append(100 * best)
    if xs:
        ax.step(xs, ys, where="post", color="C0", label="best candidate so far")
    ax.scatter([], [], color="C0", label="candidate")
    ax.scatter([], [], color="C1", marker="s", label="baseline")
    ax.set_xlabel("trial")
    ax.set_ylabel("held-out top-1 (%)")
    _finish(fig, ax, title, path)


def write_report(spec: StudySpec, study: Any, out: str | os.PathLike[str], *, storage_url: str | None = None,
                 top: int = 3) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and the PNG plots into ``out``; return the summary."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    groups = groups_of(trials)
    url = storage_url or spec.storage_url()
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    best = best_candidate(groups)
    baselines = [g for g in groups if g.role == "baseline"]
    uniform = next((g for g in baselines if g.arm.startswith("uniform")), None)

    plots = {"accuracy_vs_macs": out_dir / "accuracy_vs_macs.png", "best_blocks": out_dir / "best_blocks.png",
             "history": out_dir / "history.png"}
    title = f"study {spec.name}: budget {spec.budget.describe()}"
    _accuracy_plot(trials, groups, plots["accuracy_vs_macs"], title)
    shown = [g for g in groups if g.role == "candidate"][:top]
    if best is not None and best not in shown:
        shown.insert(0, best)
    _blocks_plot(shown + baselines, plots["best_blocks"],
                 f"per-block widths: best candidates and baselines ({spec.name})")
    _history_plot(trials, plots["history"], f"optimisation history ({spec.name})")

    summary: dict[str, Any] = {"study": spec.name, "storage": url, "states": states, "groups": []}
    lines = _header(spec, url, len(trials), states)
    lines += [f"- baseline left out: {s}" for s in study.user_attrs.get("skipped_baselines", [])]
    if best is not None and uniform is not None:
        lines += _comparison(best, uniform, summary)
    if uniform is not None:
        lines += _versus_uniform(([best] if best is not None else []) + [g for g in baselines if g is not uniform],
                                 uniform)
    lines += _configs_table(groups, summary)
    lines += _blocks_table(shown + baselines)
    if best is not None and best.first.params:
        lines += ["", f"Rule parameters of `{best.name}`: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in best.first.params.items())]
    lines += _trials_table(trials)
    lines += ["", "## Plots", ""] + [f"![{k}]({p.name})" for k, p in plots.items()]
    lines += ["", "## Open in optuna-dashboard", "", "```", dashboard_hint(url), "```",
              "Trials carry the user attributes role, arm, seed, group, macs, params, latency_ms, "
              "blocks, val_acc and test_acc (filter on role=baseline to see the baselines).", ""]
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


def _comparison(best: Group, uniform: Group, summary: dict[str, Any]) -> list[str]:
    """The headline: the best rule-generated config against the uniform baseline."""
    bv, uv = best.mean_std("test_acc"), uniform.mean_std("test_acc")
    bh, uh = best.mean_std("val_acc"), uniform.mean_std("val_acc")
    verdict = "better" if bv[0] > uv[0] else "worse" if bv[0] < uv[0] else "equal"
    summary["comparison"] = {"best": best.name, "best_test": bv, "best_val": bh, "best_n": best.n,
                             "best_macs": best.macs, "uniform": uniform.name, "uniform_test": uv,
                             "uniform_val": uh, "uniform_n": uniform.n, "uniform_macs": uniform.macs}
    return ["", "## Best rule-generated config vs uniform baseline", "",
            f"- best candidate `{best.name}` ({best.n} seed(s)): test top-1 **{_pm(bv)}%**, held-out {_pm(bh)}%, "
            f"MACs {counting.format_count(best.macs)}, EMB {best.first.user_attrs.get('embed_dim')}",
            f"- uniform baseline `{uniform.name}` ({uniform.n} seed(s)): test top-1 **{_pm(uv)}%**, held-out "
            f"{_pm(uh)}%, MACs {counting.format_count(uniform.macs)}, "
            f"EMB {uniform.first.user_attrs.get('embed_dim')}",
            f"- difference (candidate - uniform): test {100 * (bv[0] - uv[0]):+.2f} points "
            f"({verdict}; compare with the stds), MACs {100 * (best.macs / uniform.macs - 1):+.2f}%"]


def _versus_uniform(rivals: list[Group], uniform: Group) -> list[str]:
    lines = ["", "## Every rule-generated arm vs the uniform baseline (test top-1, mean ± std over seeds)", "",
             "| arm | group | seeds | test top-1 % | held-out % | MACs | minus uniform (points) |",
             "|---|---|---|---|---|---|---|"]
    ut = uniform.mean_std("test_acc")[0]
    for g in [*rivals, uniform]:
        m = g.mean_std("test_acc")
        lines.append(f"| {g.arm} | {g.name} | {g.n} | {_pm(m)} | {_pm(g.mean_std('val_acc'))} | "
                     f"{counting.format_count(g.macs)} | {'' if g is uniform else f'{100 * (m[0] - ut):+.2f}'} |")
    return lines


def _configs_table(groups: list[Group], summary: dict[str, Any]) -> list[str]:
    """One row per config (complete trials grouped), also appended to ``summary['groups']``."""
    lat = any(g.latency_ms is not None for g in groups)
    lines = ["", "## Configs (complete trials grouped by config; best held-out first)", "",
             "| group | role | arm | seeds | held-out top-1 % | test top-1 % | MACs | params | EMB | MLP factor |"
             + (" latency ms/batch |" if lat else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if lat else "")]
    for g in groups:
        u = g.first.user_attrs
        row = (f"| {g.name} | {g.role} | {g.arm} | {g.n} | {_pm(g.mean_std('val_acc'))} "
               f"| {_pm(g.mean_std('test_acc'))} | {counting.format_count(g.macs)} "
               f"| {counting.format_count(u.get('params', 0))} | {u.get('embed_dim')} | {u.get('mlp_factor', 1):g} |")
        if lat:
            row += f" {g.latency_ms:.3f} |" if g.latency_ms is not None else " - |"
        lines.append(row)
        summary["groups"].append({"group": g.name, "role": g.role, "arm": g.arm, "n": g.n,
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
    lines = ["", "## All trials", "", "| # | state | role | arm | seed | held-out | test | MACs | worker | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in sorted(trials, key=lambda t: t.number):
        u = t.user_attrs
        note = u.get("infeasible") or (f"retry of {u['retry_of']}" if "retry_of" in u else "") or (
            f"repeat of {u['repeat_of']}" if "repeat_of" in u else "") or u.get("error", "")
        note = str(note).splitlines()[0][:80] if note else ""
        va, te = u.get("val_acc"), u.get("test_acc")
        lines.append(f"| {t.number} | {t.state.name} | {u.get('role', '')} | {u.get('arm', '')} "
                     f"| {u.get('seed', '')} | "
                     f"{'' if va is None else f'{100 * va:.2f}'} | {'' if te is None else f'{100 * te:.2f}'} | "
                     f"{counting.format_count(u['macs']) if 'macs' in u else ''} | {u.get('worker', '')} | {note} |")
    return lines


__all__ = ["Group", "best_candidate", "dashboard_hint", "groups_of", "pareto_front", "write_report"]
