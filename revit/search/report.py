"""Study report: a markdown table, a JSON summary and PNG plots from any storage.

Trials are gathered by their ``group`` tag into one :class:`ConfigResult` per config (a candidate trial,
which trains all its seeds; a baseline arm at one budget, one trial per seed), with mean and standard
deviation over its seeds of the held-out (validation, used for selection) and test top-1.  Each searched
family's best config is chosen on mean held-out top-1 (:func:`family_bests`): the trial that is its family
study's ``best_trial``; every family's best and every baseline is compared with the
reference - the best *searched* uniform config, or the uniform baseline when no uniform family is
searched - by Welch's t-test over seeds on test top-1 (never used for selection): difference of the
means, its 95% interval and the two-sided p-value (:func:`welch`, scipy.stats).  Plots: accuracy
against MACs (each family in its colour, its best with error bars, the baselines marked), the
comparison with intervals, per-block widths of the best configs, and the optimisation history.
The same study opens in optuna-dashboard (see :func:`dashboard_hint`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from revit import counting
from revit._io import atomic_output, dumps_json
from revit.search import attrs as A
from revit.search.attrs import trial_ref
from revit.search.report_plots import _accuracy_plot, _blocks_plot, _colors, _comparison_plot, _history_plot
from revit.search.results import (
    ConfigResult,
    Welch,
    best_candidate,
    best_rule_result,
    compare,
    config_results,
    family_bests,
    pareto_front,
    pm,
    reference_result,
    welch,
)
from revit.search.spec import StudySpec
from revit.search.studies import BASELINES, StudySet, part_name

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

__all__ = ["ConfigResult", "Welch", "best_candidate", "best_rule_result", "compare", "config_results", "dashboard_hint",
           "family_bests", "pareto_front", "reference_result", "welch", "write_report"]


def dashboard_hint(url: str) -> str:
    """How to open the study in optuna-dashboard."""
    if url.startswith("journal:"):
        path = url.split(":", 1)[1].removeprefix("//")
        return (f"pip install optuna-dashboard && optuna-dashboard {path}   "
                "(a journal file is opened by its path; recent optuna-dashboard versions read it directly)")
    return f"pip install optuna-dashboard && optuna-dashboard '{url}'"


def write_report(spec: StudySpec, study: StudySet, out: str | os.PathLike[str], *, storage_url: str | None = None,
                 top: int = 3) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and the PNG plots of ``study`` (all its parts) into ``out``;
    return the summary.  Reads the storage only.

    The summary has ``families`` (each searched family's best), ``comparisons`` (every family's best
    and every baseline minus the reference, Welch on test top-1), ``headline`` (best rule minus best
    uniform) and ``comparison`` (the headline pair's means, as before families).  It is strict JSON: a
    number that has no value (the spread of one seed, an interval of too few) is null, never NaN.
    """
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = study.trials()
    results = config_results(trials)
    url = storage_url or study.url
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    bests = family_bests(results)
    baselines = [g for g in results if g.role == A.BASELINE]
    ref = reference_result(spec, bests, baselines)
    best = best_rule_result(spec, bests) or best_candidate(results)
    head = compare(best, ref) if best is not None and ref is not None and best is not ref else None
    arms = [*bests.values(), *[g for g in baselines if g not in bests.values()]]
    rivals = [g for g in arms if g is not ref]

    plots = {"accuracy_vs_macs": out_dir / "accuracy_vs_macs.png", "comparison": out_dir / "comparison.png",
             "best_blocks": out_dir / "best_blocks.png", "history": out_dir / "history.png"}
    if ref is None or not arms:
        del plots["comparison"]
    shown = [g for g in results if g.role == A.CANDIDATE][:top]
    shown += [g for g in bests.values() if g not in shown]
    title = f"study {spec.name}: budget {spec.budget.describe()}"
    colors = _colors(results, spec.family_names)

    def draw(tmp: dict[str, Path]) -> None:
        _accuracy_plot(trials, results, tmp["accuracy_vs_macs"], title, colors)
        if "comparison" in tmp and ref is not None:
            _comparison_plot(arms, ref, head, colors, tmp["comparison"], title)
        _blocks_plot(shown + baselines, tmp["best_blocks"],
                     f"per-block widths: best candidates and baselines ({spec.name})")
        _history_plot(trials, tmp["history"], f"optimisation history ({spec.name})", colors)

    summary: dict[str, Any] = {"study": spec.name, "storage": url, "states": states, "groups": [],
                               "families": {f: {"best": g.name, "n": g.n, "val": g.mean_std(A.VAL_ACC),
                                                "test": g.mean_std(A.TEST_ACC), A.MACS: g.macs,
                                                "params": dict(g.first.params),
                                                "trials": [trial_ref(t) for t in g.trials]}
                                           for f, g in bests.items()}}
    lines = _header(spec, url, len(trials), states)
    lines += [f"- baseline left out: {s}" for s in study.user_attrs.get(A.SKIPPED_BASELINES, [])]
    if best is not None and ref is not None and best is not ref:
        lines += _comparison(best, ref, head, summary)
    if ref is not None:
        lines += _versus_reference(rivals, ref, summary)
    lines += _configs_table(results, summary)
    lines += _blocks_table(shown + baselines)
    for fam, g in bests.items():
        if g.first.params:
            lines += ["", f"Parameters of `{g.name}` (best {fam}): "
                      + ", ".join(f"{k}={v:.4g}" for k, v in g.first.params.items())]
    lines += _trials_table(trials)
    lines += ["", "## Plots", ""] + [f"![{k}]({p.name})" for k, p in plots.items()]
    lines += ["", "## Open in optuna-dashboard", "", "```", dashboard_hint(url), "```",
              f"Each searched family is its own Optuna study "
              f"({', '.join(f'`{part_name(spec.name, f)}`' for f in spec.family_names)}) "
              f"and the baselines are `{part_name(spec.name, BASELINES)}`, all in this storage: "
              f"`optuna.load_study(study_name='{part_name(spec.name, spec.family_names[0])}', storage=...).best_trial` "
              "is that family's best config, the one ranked first here: a candidate trial trains all its seeds and "
              "its value is their mean held-out top-1 (`best_trials` for two objectives).  Trials carry the user "
              "attributes role, family, arm, seed, group, macs, params, latency_ms, blocks, val_acc and test_acc "
              "(a candidate: the means over its seeds, each seed's in runs); `study.trials_dataframe()` has one "
              "row per trial.", ""]
    if spec.multi_objective:
        summary["pareto"] = _pareto_sets(spec, results)
    summary["plots"] = {k: str(p) for k, p in plots.items()}
    summary = json.loads(dumps_json(summary, "the study report", nonfinite="null", default=str))
    _publish(out_dir, plots, draw, {"report.md": "\n".join(lines),
                                    "report.json": dumps_json(summary, "the study report", indent=1)})
    return summary


def _publish(out_dir: Path, plots: dict[str, Path], draw: Callable[[dict[str, Path]], None],
             texts: dict[str, str]) -> None:
    """Write every file of the report to a temp file beside its name, then rename them all into place: a full
    disk (or any failure) is one line and leaves no half report, and an older report stays whole."""
    with contextlib.ExitStack() as stack:
        draw({k: stack.enter_context(atomic_output(p, ".png")) for k, p in plots.items()})
        for name, text in texts.items():
            with open(stack.enter_context(atomic_output(out_dir / name)), "wb") as f:
                f.write(text.encode())
                f.flush()
                os.fsync(f.fileno())


def _pareto_sets(spec: StudySpec, results: list[ConfigResult]) -> dict[str, list[str]]:
    """Each family's Pareto set of configs (mean held-out top-1 against the second objective): what its family
    study's ``best_trials`` holds, as group names by increasing cost."""
    from revit.search.objective import metric_names

    cost = metric_names(spec)[1]
    out: dict[str, list[str]] = {}
    for fam in spec.family_names:
        gs = [g for g in results if g.role == A.CANDIDATE and g.family == fam and g.values(cost)]
        pts = [(sum(g.values(cost)) / len(g.values(cost)), g.mean_std(A.VAL_ACC)[0]) for g in gs]
        order = sorted(range(len(gs)), key=lambda i: (pts[i][0], -pts[i][1]))
        # not dominated (no other config as cheap and as accurate, and better in one); equal configs all stay
        out[fam] = [gs[i].name for i in order if not any(c <= pts[i][0] and a >= pts[i][1] and (c, a) != pts[i]
                                                         for c, a in pts)]
    return out


def _given(obj: Any) -> dict[str, Any]:
    """The fields of a dataclass value that differ from their defaults (what a spec set)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) != f.default}


def _header(spec: StudySpec, url: str, n_trials: int, states: dict[str, int]) -> list[str]:
    return [f"# Study `{spec.name}`", "",
            f"- spec: `{spec.source}`; storage: `{url}`",
            f"- objective(s): {', '.join(spec.objectives)}; sampler {spec.sampler.name}, "
            f"Optuna pruner {spec.optuna_pruner.name}; budget {spec.budget.describe()}",
            f"- data: {dumps_json(_given(spec.data))}; training: {dumps_json(_given(spec.train))} "
            f"(other fields at their defaults); seeds {list(spec.seeds)}",
            f"- trials: {n_trials} ({', '.join(f'{k} {v}' for k, v in sorted(states.items()))})",
            "- accuracy: *held-out* = validation split carved from the training set (the value optimised); "
            "*test* = the dataset's own test set (never used for selection); mean ± std over seeds", ""]


def _comparison(best: ConfigResult, ref: ConfigResult, head: Welch | None, summary: dict[str, Any]) -> list[str]:
    """The headline: the best rule-generated config against the best uniform one (or the uniform baseline)."""
    bv, uv = best.mean_std(A.TEST_ACC), ref.mean_std(A.TEST_ACC)
    bh, uh = best.mean_std(A.VAL_ACC), ref.mean_std(A.VAL_ACC)
    summary["comparison"] = {"best": best.name, "best_family": best.family, "best_test": bv, "best_val": bh,
                             "best_n": best.n, "best_macs": best.macs, "uniform": ref.name,
                             "uniform_family": ref.family, "uniform_test": uv, "uniform_val": uh, "uniform_n": ref.n,
                             "uniform_macs": ref.macs}
    lines = ["", "## Best rule-generated config vs best uniform config", "",
             f"- best `{best.family}` config `{best.name}` ({best.n} seed(s)): test top-1 **{pm(bv, unit='%')}**, "
             f"held-out {pm(bh, unit='%')}, MACs {counting.format_count(best.macs)}, "
             f"EMB {best.first.user_attrs.get(A.EMBED_DIM)}, depth {_depth(best)}",
             f"- {'best searched uniform config' if ref.role == A.CANDIDATE else 'uniform baseline'} `{ref.name}` "
             f"({ref.family}, {ref.n} seed(s)): test top-1 **{pm(uv, unit='%')}**, held-out {pm(uh, unit='%')}, "
             f"MACs {counting.format_count(ref.macs)}, EMB {ref.first.user_attrs.get(A.EMBED_DIM)}, "
             f"depth {_depth(ref)}"]
    if head is not None:
        summary["headline"] = head.to_json()
        lines.append(f"- difference (rule - uniform), test top-1: **{head.describe()}**; "
                     f"MACs {100 * (best.macs / ref.macs - 1):+.2f}%")
        if min(head.n_a, head.n_b) < 3:
            lines.append("- fewer than 3 seeds on a side: the interval is wide and the p-value rough; "
                         "give the spec 3 or more seeds")
    lines.append("- each family's best: its config with the best mean held-out top-1 over all its seeds (its family "
                 "study's best_trial; a candidate whose first seed was not among the family's best "
                 "repeats.top_k so far stopped there, PRUNED); the interval is on test top-1, which no choice used")
    return lines


def _depth(g: ConfigResult) -> int:
    """A config's number of blocks (a family may search depth, so configs of one study may differ in it)."""
    return len(g.first.user_attrs.get(A.BLOCKS) or [])


def _versus_reference(rivals: list[ConfigResult], ref: ConfigResult, summary: dict[str, Any]) -> list[str]:
    """Every family's best and every baseline minus the reference, with Welch intervals (test top-1)."""
    lines = ["", f"## Every family's best and every baseline vs `{ref.name}` ({ref.family})", "",
             "Test top-1, mean ± std over seeds; difference to the reference with its 95% interval "
             "(Welch's t, unequal variances) and two-sided p-value.", "",
             "| family | group | seeds | test top-1 % | held-out % | MACs | minus reference (points) "
             "| 95% interval | p |",
             "|---|---|---|---|---|---|---|---|---|"]
    summary["comparisons"] = []
    for g in [*rivals, ref]:
        m = g.mean_std(A.TEST_ACC)
        cells = ["", "", ""]
        if g is not ref:
            w = compare(g, ref)
            summary["comparisons"].append(w.to_json() | {"family": g.family, "reference_family": ref.family})
            cells = [f"{100 * w.diff:+.2f}",
                     "-" if math.isnan(w.low) else f"[{100 * w.low:+.2f}, {100 * w.high:+.2f}]",
                     "-" if math.isnan(w.p) else f"{w.p:.3g}"]
        lines.append(f"| {g.family} | {g.name} | {g.n} | {pm(m)} | {pm(g.mean_std(A.VAL_ACC))} | "
                     f"{counting.format_count(g.macs)} | {' | '.join(cells)} |")
    return lines


def _configs_table(results: list[ConfigResult], summary: dict[str, Any]) -> list[str]:
    """One row per config (complete trials grouped), also appended to ``summary['groups']``; with latencies, how
    each was established (predicted by the table, or measured: ``measure_latency``) and the measured spread."""
    lat = any(g.latency_ms is not None for g in results)
    measured = [g.measured_latency_ms for g in results if g.measured_latency_ms is not None]
    one_budget = len({g.first.user_attrs.get(A.BUDGET) for g in results}) == 1
    lines = ["", "## Configs (complete trials grouped by config; best held-out first)", "",
             "| group | role | family | arm | seeds | held-out top-1 % | test top-1 % | MACs | params | EMB "
             "| MLP factor |" + (" latency ms/batch (table) | measured ms/batch | latency |" if lat else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if lat else "")]
    for g in results:
        u = g.first.user_attrs
        row = (f"| {g.name} | {g.role} | {g.family} | {g.arm} | {g.n} | {pm(g.mean_std(A.VAL_ACC))} "
               f"| {pm(g.mean_std(A.TEST_ACC))} | {counting.format_count(g.macs)} "
               f"| {counting.format_count(u.get(A.PARAMS, 0))} | {u.get(A.EMBED_DIM)} | {u.get(A.MLP_FACTOR, 1):g} |")
        if lat:
            m = g.measured_latency_ms
            row += (f" {g.latency_ms:.3f} |" if g.latency_ms is not None else " - |") + \
                   (f" {m:.3f} |" if m is not None else " - |") + f" {u.get(A.LATENCY_ESTABLISHED, 'predicted')} |"
        lines.append(row)
        summary["groups"].append({"group": g.name, "role": g.role, "family": g.family, "arm": g.arm, "n": g.n,
                                  "val": g.mean_std(A.VAL_ACC), "test": g.mean_std(A.TEST_ACC), A.MACS: g.macs,
                                  "latency_ms": g.latency_ms, A.MEASURED_LATENCY_MS: g.measured_latency_ms,
                                  A.LATENCY_ESTABLISHED: u.get(A.LATENCY_ESTABLISHED),
                                  "embed_dim": u.get(A.EMBED_DIM), "depth": _depth(g),
                                  "blocks": u.get(A.BLOCKS), "params": dict(g.first.params),
                                  "trials": [trial_ref(t) for t in g.trials]})
    if lat:
        lines += ["", _established_line(measured, len(results), one_budget)]
    return lines


def _established_line(measured: list[float], n: int, one_budget: bool) -> str:
    """How the configs' latencies were established, and how far apart the measured ones are (at one budget)."""
    if not measured:
        return ("Latency: predicted by the study's table for every config (not timed; `measure_latency: true` "
                "meets the budget as measured).")
    head = (f"Latency: measured for {len(measured)} of {n} configs (each exported, timed on the table's backend and "
            f"re-solved until it met the budget as measured)")
    if not one_budget:
        return head + "; the budget is searched, so the configs' latencies differ by design."
    spread = max(measured) / min(measured) - 1
    return head + (f"; at the one budget they measure {100 * spread:.1f}% apart (slowest / fastest - 1; each timed "
                   f"when its trial began).")


def _blocks_table(results: list[ConfigResult]) -> list[str]:
    lines = ["", "## Per-block widths of the best configs", "", "| group | EMB | blocks (heads/qk/v/mlp) |",
             "|---|---|---|"]
    for g in results:
        u = g.first.user_attrs
        blocks = " ".join("/".join(str(x) for x in b) for b in u.get(A.BLOCKS) or [])
        lines.append(f"| {g.name} | {u.get(A.EMBED_DIM)} | {blocks} |")
    return lines


def _seeds_cell(u: dict[str, Any]) -> str:
    """A trial's seed, or a candidate's finished seeds (``0,1,2``)."""
    runs = u.get(A.RUNS)
    if isinstance(runs, list) and runs:
        return ",".join(str(r.get(A.SEED, "?")) if isinstance(r, dict) else "?" for r in runs)
    return str(u.get(A.SEED, ""))


def _trials_table(trials: list[FrozenTrial]) -> list[str]:
    lines = ["", "## All trials", "",
             "| # | state | role | family | arm | seed(s) | held-out | test | MACs | worker | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in trials:
        u = t.user_attrs
        note = u.get(A.INFEASIBLE) or (f"retry of {u[A.RETRY_OF]}" if A.RETRY_OF in u else "") or (
            f"repeat of {u[A.REPEAT_OF]}" if A.REPEAT_OF in u else "") or u.get(A.ERROR, "")
        note = str(note).splitlines()[0][:80] if note else ""
        va, te = u.get(A.VAL_ACC), u.get(A.TEST_ACC)
        lines.append(f"| {trial_ref(t)} | {t.state.name} | {u.get(A.ROLE, '')} | {u.get(A.FAMILY, '')} "
                     f"| {u.get(A.ARM, '')} "
                     f"| {_seeds_cell(u)} | "
                     f"{'' if va is None else f'{100 * va:.2f}'} | {'' if te is None else f'{100 * te:.2f}'} | "
                     f"{counting.format_count(u[A.MACS]) if A.MACS in u else ''} | {u.get(A.WORKER, '')} | {note} |")
    return lines
