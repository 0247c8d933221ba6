"""The budget and token sweep: does redistribution beat a uniform design searched as hard, and does the
answer change with the budget or the token count?

Runs the shipped studies ``search/sweep-3m.yaml``, ``sweep-12m.yaml`` (17 tokens) and ``sweep-12m-p4.yaml``
(50 tokens), one after the other, each with ``--workers`` processes (``revit search run`` plus
``revit search worker``) on a journal under ``benchmarks/results/sweep/`` (small files, committed as they
grow: a killed sweep resumes where it stopped, in this session or the next).  Then, per study, the report
(``revit search report``) and, over all studies, the table of

- best searched less-more-less minus best searched uniform (test top-1, Welch 95% interval, p), and
- the fitted rule (a baseline) minus best searched uniform,

per budget and pooled across the budgets (inverse-variance weighted; normal 95% interval; with Cochran's Q,
I^2 and the DerSimonian-Laird random-effects interval, since budgets may disagree), and one plot of the
differences against the budget.  ``search/sweep-12m-control.yaml`` (the 12M winner's flat twin, baselines
only) separates the less-more-less shape from the wide embedding; its comparison is printed when it ran.

    python benchmarks/sweep.py                 # run (or resume) every study, then report
    python benchmarks/sweep.py --studies sweep-12m-control   # the control study
    python benchmarks/sweep.py --report-only   # the table and plot from what the journals hold
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "sweep"
STUDIES = ["sweep-3m", "sweep-12m", "sweep-12m-p4"]
CONTROL = "sweep-12m-control"  # the 12M winner's flat twin (baselines only); compared with sweep-12m's best configs


def run_study(name: str, workers: int) -> int:
    """``revit search run`` plus ``workers - 1`` workers on the study's journal; returns run's exit code."""
    url = f"journal:{OUT / (name + '.log')}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    spec = str(ROOT / "search" / f"{name}.yaml")
    logf = open(OUT / f"{name}.out", "a")  # noqa: SIM115 - closed below
    run = subprocess.Popen([sys.executable, "-m", "revit", "search", "run", spec, "--storage", url],
                           env=env, stdout=logf, stderr=subprocess.STDOUT)
    time.sleep(20)  # the run process creates the studies and enqueues the baselines first

    def worker() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "revit", "search", "worker", spec, "--storage", url],
                                env=env, stdout=logf, stderr=subprocess.STDOUT)

    helpers = [worker() for _ in range(workers - 1)]
    while run.poll() is None:  # a worker that found nothing to do ends; retries may come later: start another
        time.sleep(60)
        helpers = [h if h.poll() is None else worker() for h in helpers] if run.poll() is None else helpers
    for h in helpers:
        h.wait()
    logf.close()
    return run.returncode


def report(name: str) -> dict | None:
    """Write the study's report under OUT/NAME and return its summary (None when it has no trial yet)."""
    url = f"journal:{OUT / (name + '.log')}"
    if not (OUT / f"{name}.log").is_file():
        return None
    r = subprocess.run([sys.executable, "-m", "revit", "search", "report", str(ROOT / "search" / f"{name}.yaml"),
                        "--storage", url, "--out", str(OUT / name), "--overwrite", "--json"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{name}: report failed: {r.stderr.strip()[-300:]}")
        return None
    return json.loads(r.stdout)


def _se(c: dict) -> float:
    """Standard error of a Welch difference from its interval and degrees of freedom."""
    from scipy import stats

    if c.get("low") is None or math.isnan(c["low"]):
        return math.nan
    return (c["high"] - c["low"]) / (2 * stats.t.ppf(0.975, c["df"]))


def pooled(rows: list[dict]) -> dict:
    """Inverse-variance weighted mean of the differences and its normal 95% interval (one common effect),
    with the heterogeneity between budgets (Cochran's Q, its p, I^2) and the DerSimonian-Laird
    random-effects mean and interval, which widens when the budgets disagree."""
    from scipy import stats

    ok = [r for r in rows if r["se"] > 0 and math.isfinite(r["se"])]
    if not ok:
        return {"diff": math.nan, "low": math.nan, "high": math.nan, "n_budgets": 0}
    w = [1 / r["se"] ** 2 for r in ok]
    d = sum(wi * r["diff"] for wi, r in zip(w, ok, strict=True)) / sum(w)
    se = 1 / math.sqrt(sum(w))
    out = {"diff": d, "low": d - 1.96 * se, "high": d + 1.96 * se, "se": se, "n_budgets": len(ok)}
    if len(ok) > 1:
        q = sum(wi * (r["diff"] - d) ** 2 for wi, r in zip(w, ok, strict=True))
        df = len(ok) - 1
        tau2 = max(0.0, (q - df) / (sum(w) - sum(x * x for x in w) / sum(w)))
        wr = [1 / (r["se"] ** 2 + tau2) for r in ok]
        dr = sum(wi * r["diff"] for wi, r in zip(wr, ok, strict=True)) / sum(wr)
        ser = 1 / math.sqrt(sum(wr))
        out["heterogeneity"] = {"q": q, "df": df, "p": float(stats.chi2.sf(q, df)),
                                "i2": max(0.0, (q - df) / q) if q > 0 else 0.0, "tau2": tau2}
        out["random_effects"] = {"diff": dr, "low": dr - 1.96 * ser, "high": dr + 1.96 * ser, "se": ser}
    return out


def welch(a: dict, b: dict) -> dict:
    """Welch's difference a - b of test top-1 from two report groups' mean, std and n (95% interval, p)."""
    from scipy import stats

    (ma, sa), (mb, sb), na, nb = a["test"], b["test"], a["n"], b["n"]
    va, vb = sa * sa / na, sb * sb / nb
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    t = stats.t.ppf(0.975, df)
    return {"a": a["group"], "b": b["group"], "diff": ma - mb, "low": ma - mb - t * se, "high": ma - mb + t * se,
            "p": float(2 * stats.t.sf(abs(ma - mb) / se, df)), "df": df, "n": [na, nb]}


def control() -> dict | None:
    """The flat twin of sweep-12m's best rule config against that config and the best searched uniform."""
    ctl, ref = OUT / CONTROL / "report.json", OUT / "sweep-12m" / "report.json"
    if not (ctl.is_file() and ref.is_file()):
        return None
    c = json.loads(ctl.read_text())
    r = json.loads(ref.read_text())
    flat = next((g for g in c["groups"] if g["role"] == "baseline" and g["n"] > 1), None)
    if flat is None:
        return None
    by_name = {g["group"]: g for g in r["groups"]}
    best_rule, best_uniform = by_name[r["headline"]["a"]], by_name[r["headline"]["b"]]
    return {"flat": {k: flat[k] for k in ("group", "n", "test", "embed_dim", "blocks", "macs")},
            "best_rule_minus_flat": welch(best_rule, flat), "flat_minus_best_uniform": welch(flat, best_uniform)}


def table(summaries: dict[str, dict]) -> dict:
    """Per study: best rule - best uniform and fitted rule - best uniform; pooled over the studies."""
    out: dict = {"studies": {}, "pooled": {}}
    for kind in ("best_rule", "fitted_rule"):
        rows = []
        for name, s in summaries.items():
            if kind == "best_rule":
                c = s.get("headline")
            else:
                c = next((x for x in s.get("comparisons", []) if x["family"] == "baseline:fitted-rule"), None)
            if not c:
                continue
            row = {"study": name, "diff": c["diff"], "low": c["low"], "high": c["high"], "p": c["p"],
                   "n": [c["n_a"], c["n_b"]], "a": c["a"], "b": c["b"], "se": _se(c)}
            rows.append(row)
            out["studies"].setdefault(name, {})[kind] = row
        out["pooled"][kind] = pooled(rows)
    return out


def plot(t: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"sweep-3m": "3M MACs\n17 tokens", "sweep-12m": "12M MACs\n17 tokens",
              "sweep-12m-p4": "12M MACs\n50 tokens"}
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [n for n in STUDIES if n in t["studies"]]
    for j, (kind, color) in enumerate((("best_rule", "C0"), ("fitted_rule", "C1"))):
        xs, ys, lo, hi = [], [], [], []
        for i, n in enumerate(names):
            r = t["studies"][n].get(kind)
            if r is None or r["low"] is None or math.isnan(r["low"]):
                continue
            xs.append(i + (j - 0.5) * 0.15)
            ys.append(100 * r["diff"])
            lo.append(100 * (r["diff"] - r["low"]))
            hi.append(100 * (r["high"] - r["diff"]))
        label = "best searched less-more-less" if kind == "best_rule" else "fitted rule (baseline)"
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", color=color, capsize=4, label=f"{label} - best searched uniform")
        p = t["pooled"][kind]
        if p["n_budgets"]:
            band = p.get("random_effects", p)
            ax.axhspan(100 * band["low"], 100 * band["high"], color=color, alpha=0.12)
    ax.axhline(0, color="0.3", lw=1)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_xticks(range(len(names)), [labels.get(n, n) for n in names])
    ax.set_ylabel("test top-1 difference (points), 95% interval")
    ax.set_title("redistribution vs uniform searched as hard (bands: pooled, random effects)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="processes per study (one torch thread each)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--studies", default=",".join(STUDIES))
    ap.add_argument("--out", type=Path, default=OUT, help="folder of the journals and reports")
    args = ap.parse_args()
    OUT = args.out
    OUT.mkdir(parents=True, exist_ok=True)
    names = args.studies.split(",")
    if not args.report_only:
        for name in names:
            t0 = time.time()
            code = run_study(name, args.workers)
            print(f"{name}: exit {code} after {(time.time() - t0) / 60:.1f} min", flush=True)
            report(name)
    summaries = {n: s for n in names if n != CONTROL and (s := report(n)) is not None}
    t = table(summaries)
    if (OUT / f"{CONTROL}.log").is_file():
        report(CONTROL)
    t["control"] = control()
    (OUT / "sweep.json").write_text(json.dumps(t, indent=1))
    plot(t, OUT / "sweep.png")
    for kind in ("best_rule", "fitted_rule"):
        print(f"\n{kind.replace('_', ' ')} minus best searched uniform (test top-1, points):")
        for n, r in t["studies"].items():
            if kind in r:
                x = r[kind]
                print(f"  {n:14s} {100 * x['diff']:+.2f} [{100 * x['low']:+.2f}, {100 * x['high']:+.2f}] "
                      f"p={x['p']:.3g} n={x['n'][0]} vs {x['n'][1]}")
        p = t["pooled"][kind]
        if p["n_budgets"]:
            print(f"  pooled         {100 * p['diff']:+.2f} [{100 * p['low']:+.2f}, {100 * p['high']:+.2f}] "
                  f"over {p['n_budgets']} budgets (one common effect)")
        if "random_effects" in p:
            h, r = p["heterogeneity"], p["random_effects"]
            print(f"  random-effects {100 * r['diff']:+.2f} [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}]; "
                  f"heterogeneity Q={h['q']:.2f} (df {h['df']}, p={h['p']:.3g}), I^2={100 * h['i2']:.0f}%")
    if t["control"]:
        print(f"\ncontrol ({CONTROL}: the 12M winner's flat twin, {t['control']['flat']['group']}):")
        for k in ("best_rule_minus_flat", "flat_minus_best_uniform"):
            x = t["control"][k]
            print(f"  {x['a']} - {x['b']}: {100 * x['diff']:+.2f} [{100 * x['low']:+.2f}, {100 * x['high']:+.2f}] "
                  f"p={x['p']:.3g} n={x['n'][0]} vs {x['n'][1]}")


if __name__ == "__main__":
    main()
