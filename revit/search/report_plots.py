"""The study report's PNG plots: accuracy against MACs per family, comparisons with intervals, widths, history."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from revit.config import BLOCK_KINDS, PER_HEAD_KINDS
from revit.search import attrs as A
from revit.search.results import ConfigResult, Welch, family_bests, pareto_front, pm

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


def _colors(results: Sequence[ConfigResult], order: Sequence[str] = ()) -> dict[str, str]:
    """One matplotlib colour per family: the searched families in spec ``order``, then the baselines."""
    fams = list(dict.fromkeys([*order, *[g.family for g in results if g.role == A.CANDIDATE],
                               *[g.family for g in results if g.role != "candidate"]]))
    return {f: f"C{i % 10}" for i, f in enumerate(fams)}


def _blocks_plot(results: Sequence[ConfigResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for gi, g in enumerate(results):
        blocks = g.first.user_attrs.get(A.BLOCKS) or []
        style = "--" if g.role == A.BASELINE else "-"
        label = (f"{g.name} ({g.family}, EMB {g.first.user_attrs.get(A.EMBED_DIM)}, "
                 f"{pm(g.mean_std(A.VAL_ACC), unit='%')})")
        for i, ax in enumerate(axes):
            ax.plot(range(1, len(blocks) + 1), [b[i] for b in blocks], style, marker="o", ms=3,
                    label=label if i == 0 else None, color=f"C{gi % 10}")
    for kind, ax in zip(BLOCK_KINDS, axes, strict=True):
        ax.set_title(kind + (" (per head)" if kind in PER_HEAD_KINDS else ""))
        ax.set_xlabel("block")
        ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=2, fontsize=7, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.12 + 0.03 * max(0, len(results) - 4), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _accuracy_plot(trials: Sequence[FrozenTrial], results: Sequence[ConfigResult], path: Path, title: str,
                   colors: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    cg = [g for g in results if g.role == A.CANDIDATE]
    for fam in dict.fromkeys(g.family for g in cg):
        pts = [(g.macs / 1e6, 100 * v) for g in cg if g.family == fam for v in g.values(A.VAL_ACC)]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts],
                   s=16, color=colors[fam], alpha=0.5, label=f"{fam} candidates (each seed)")
    pts = [(g.macs, g.mean_std(A.VAL_ACC)[0]) for g in cg]
    front = pareto_front(pts)
    if len(front) > 1:
        ax.plot([pts[i][0] / 1e6 for i in front], [100 * pts[i][1] for i in front], "-", color="0.5", lw=1,
                label="Pareto front (candidate means)")
    for fam, best in family_bests(results).items():
        m, sd = best.mean_std(A.VAL_ACC)
        ax.errorbar([best.macs / 1e6], [100 * m], yerr=[_err(sd)], fmt="*", ms=14, color=colors[fam], capsize=4,
                    zorder=4, mec="k", label=f"best {fam}: {best.name} (n={best.n})")
    markers = "sD^vP"
    for i, g in enumerate([g for g in results if g.role == A.BASELINE]):
        m, sd = g.mean_std(A.VAL_ACC)
        ax.errorbar([g.macs / 1e6], [100 * m], yerr=[_err(sd)], fmt=markers[i % len(markers)], ms=9, capsize=4,
                    color=colors[g.family], mfc="none", mew=2, label=f"baseline {g.arm} (n={g.n})", zorder=4)
    ax.set_xlabel("MACs (M, attention matmuls included)")
    ax.set_ylabel("held-out top-1 (%)")
    _finish(fig, ax, title, path)


def _comparison_plot(arms: Sequence[ConfigResult], ref: ConfigResult, head: Welch | None, colors: dict[str, str],
                     path: Path, title: str) -> None:
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
        ax.errorbar([m], [y], xerr=[half], fmt="o" if g.role == A.CANDIDATE else "s", ms=8, capsize=5,
                    color=colors.get(g.family, "0.3"), mec="k", zorder=3)
    ax.axvline(statistics.fmean([100 * x for x in ref.values("test_acc")]), ls="--", color="0.4", lw=1)
    ax.set_yticks(range(len(arms)))
    ax.set_yticklabels([f"{g.family}: {g.name} (n={g.n})" if g.role == A.CANDIDATE else f"{g.family} (n={g.n})"
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


def _err(sd: float) -> float:
    """An error bar in points: none for one seed (no spread to show)."""
    return 0.0 if math.isnan(sd) else 100 * sd


def _history_plot(trials: Sequence[FrozenTrial], path: Path, title: str, colors: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from revit.search.attrs import trial_family

    fig, ax = plt.subplots(figsize=(7, 4))
    done = [t for t in sorted(trials, key=lambda t: t.number)
            if t.user_attrs.get(A.VAL_ACC) is not None and t.state.name == "COMPLETE"]
    fams = list(dict.fromkeys(trial_family(t) for t in done
                              if A.role(t) == A.CANDIDATE))
    for i, fam in enumerate(fams):
        ts = [t for t in done if A.role(t) == A.CANDIDATE
              and trial_family(t) == fam]
        color = colors.get(fam, f"C{i % 10}")
        ax.scatter([t.number for t in ts], [100 * t.user_attrs[A.VAL_ACC] for t in ts], color=color, s=18,
                   label=f"{fam} candidate")
        best, xs, ys = -math.inf, [], []
        for t in ts:
            best = max(best, t.user_attrs[A.VAL_ACC])
            xs.append(t.number)
            ys.append(100 * best)
        ax.step(xs, ys, where="post", color=color, label=f"best {fam} so far")
    base = [t for t in done if t.user_attrs.get(A.ROLE) == A.BASELINE]
    ax.scatter([t.number for t in base], [100 * t.user_attrs[A.VAL_ACC] for t in base], color="0.4", marker="s",
               s=18, label="baseline")
    ax.set_xlabel("trial (its number in its family's study)")
    ax.set_ylabel("held-out top-1 (%; a candidate: mean over its seeds)")
    _finish(fig, ax, title, path)
