"""``revit search run|worker|report``: Optuna studies of rule-generated configs against baselines."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from revit.cli._common import add_command, info


def register(sub: Any) -> None:
    p = add_command(sub, "search", "search studies: rule-generated configs vs scratch-trained uniform baselines",
                    "revit search run search/smoke.yaml && revit search report search/smoke.yaml --out runs/smoke")
    ss = p.add_subparsers(dest="search_command", metavar="SUBCOMMAND")

    def usage(_: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)

    r = add_command(ss, "run", "create or resume a study: baselines, sampled candidates, repeats with other seeds",
                    "revit search run search/fashion-mnist.yaml --storage journal:runs/studies/fm.log")
    _common(r)
    r.add_argument("--no-repeats", action="store_true", help="do not re-run the best candidates with other seeds")
    r.set_defaults(func=cmd_run)

    w = add_command(ss, "worker", "join a running study from another process or machine",
                    "revit search worker search/fashion-mnist.yaml --storage postgresql://revit@db:5432/studies")
    _common(w, storage_required=True)
    w.add_argument("--max-trials", type=int, help="stop after this many trials of this worker")
    w.set_defaults(func=cmd_worker)

    rp = add_command(ss, "report", "markdown table and PNG plots (accuracy vs MACs, Pareto front, per-block dims)",
                     "revit search report search/smoke.yaml --out runs/smoke-report")
    rp.add_argument("spec", help="study spec YAML (or a shipped name: smoke, fashion-mnist, imagenet-deit-s)")
    rp.add_argument("--storage", help="storage URL (default: the spec's, else sqlite:///runs/studies/NAME.db)")
    rp.add_argument("--out", required=True, help="report folder")
    rp.set_defaults(func=cmd_report)


def _common(p: argparse.ArgumentParser, storage_required: bool = False) -> None:
    p.add_argument("spec", help="study spec YAML (or a shipped name: smoke, fashion-mnist, imagenet-deit-s)")
    p.add_argument("--storage", required=storage_required,
                   help="storage URL: sqlite:///F.db, postgresql://..., journal:F.log, or a .db/.log path")
    p.add_argument("--n-trials", type=int, help="candidate trials of the whole study (default: the spec's)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: the spec's)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def _spec(args: argparse.Namespace) -> Any:
    from revit.search.spec import load_spec

    spec = load_spec(args.spec)
    if getattr(args, "threads", None):
        spec = dataclasses.replace(spec, threads=args.threads)
    return spec


def _optuna_logging(quiet: bool) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING if quiet else optuna.logging.INFO)


def cmd_run(args: argparse.Namespace) -> int:
    from revit.search.runner import run_study

    spec = _spec(args)
    _optuna_logging(args.quiet)
    study = run_study(spec, args.storage, n_trials=args.n_trials, repeats=not args.no_repeats, timeout=args.timeout)
    _summary(study)
    info(f"report: revit search report {args.spec} --storage '{spec.storage_url(args.storage)}' --out DIR")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from revit.search.runner import join_study

    spec = _spec(args)
    _optuna_logging(args.quiet)
    stats = join_study(spec, args.storage, n_trials=args.n_trials, timeout=args.timeout, max_trials=args.max_trials)
    info(f"worker {stats.worker}: {stats.count} trial(s) in {stats.seconds:.0f} s "
         f"({', '.join(f'{k} {len(v)}' for k, v in sorted(stats.trials.items())) or 'none'})")
    return 0


def _summary(study: Any) -> None:
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    counts = ", ".join(f"{k} {v}" for k, v in states.items())
    info(f"study {study.study_name}: {sum(states.values())} trials ({counts})")


def cmd_report(args: argparse.Namespace) -> int:
    from revit.search.report import write_report
    from revit.search.runner import open_study

    spec = _spec(args)
    study = open_study(spec, args.storage, create=False)
    s = write_report(spec, study, args.out, storage_url=spec.storage_url(args.storage))
    c = s.get("comparison")
    if c:
        print(f"best candidate {c['best']} (n={c['best_n']}): test top-1 {100 * c['best_test'][0]:.2f} ± "
              f"{100 * c['best_test'][1]:.2f}%; uniform {c['uniform']} (n={c['uniform_n']}): "
              f"{100 * c['uniform_test'][0]:.2f} ± {100 * c['uniform_test'][1]:.2f}%")
    info(f"wrote {args.out}/report.md, report.json, {', '.join(p.split('/')[-1] for p in s['plots'].values())}")
    return 0
