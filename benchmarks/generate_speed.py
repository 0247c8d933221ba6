"""How fast and how exact is `revit generate`?

Measures (1) the cold wall time of `revit generate --rule paper --macs 4.6G` as a fresh process,
median of N runs (goal < 1 s), next to a bare `python -c pass` for the interpreter's share, and
(2) the MACs error of generated configs over the budget sweeps of issue 5: 1G..20G at 224/16
(paper, less-more-less, uniform) and 5M..60M at the micro setting (less-more-less, uniform).

    python benchmarks/generate_speed.py [--runs 10] [--budgets 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def cold(cmd: list[str], runs: int) -> list[float]:
    """Wall seconds of ``cmd`` as a fresh process, ``runs`` times."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--budgets", type=int, default=50, help="budgets per sweep (log spaced)")
    args = ap.parse_args()

    gen = [sys.executable, "-m", "revit", "generate", "--rule", "paper", "--macs", "4.6G"]
    t_gen = cold(gen, args.runs)
    t_py = cold([sys.executable, "-c", "pass"], args.runs)
    med, med_py = statistics.median(t_gen), statistics.median(t_py)
    print(f"cold `revit generate --rule paper --macs 4.6G`: median {med * 1e3:.0f} ms over {args.runs} runs "
          f"(min {min(t_gen) * 1e3:.0f}, max {max(t_gen) * 1e3:.0f}); goal 1000 ms -> {med:.2f}x of the goal")
    print(f"bare interpreter start: median {med_py * 1e3:.0f} ms; revit's own share {1e3 * (med - med_py):.0f} ms")

    from revit import counting
    from revit.config import ViTConfig
    from revit.rules import Setting, generate, load_rule, macs_budget

    n = args.budgets
    sweeps = [("imagenet", r, 1e9, 20e9) for r in ("paper", "less-more-less", "uniform")]
    sweeps += [("micro", r, 5e6, 60e6) for r in ("less-more-less", "uniform")]
    print(f"\nMACs error over {n} log-spaced budgets per sweep (configs re-read from their YAML and recounted):")
    print(f"{'setting':9s} {'rule':15s} {'range':>11s} {'worst |err|':>12s} {'mean |err|':>11s} "
          f"{'factor range':>13s} {'ms/config':>10s}")
    worst_all = 0.0
    for setting, rule_name, lo, hi in sweeps:
        rule = load_rule(rule_name)
        errs, factors = [], []
        t0 = time.perf_counter()
        for i in range(n):
            b = lo * (hi / lo) ** (i / (n - 1))
            g = generate(rule, macs_budget(b), Setting.PRESETS[setting])
            m = counting.macs(ViTConfig.from_yaml_text(g.config.to_yaml()))
            errs.append(abs(m / b - 1))
            factors.append(g.mlp_factor)
        dt = (time.perf_counter() - t0) / n
        worst_all = max(worst_all, max(errs))
        rng = f"{counting.format_count(lo)}..{counting.format_count(hi)}"
        print(f"{setting:9s} {rule_name:15s} {rng:>11s} {100 * max(errs):11.3f}% {100 * statistics.mean(errs):10.3f}% "
              f"{min(factors):6.3f}-{max(factors):<6.3f} {dt * 1e3:10.1f}")
    print(f"\nworst MACs error over all sweeps: {100 * worst_all:.3f}% (tolerance 1%)")


if __name__ == "__main__":
    main()
