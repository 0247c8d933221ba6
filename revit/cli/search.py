"""``revit search run|worker|report``: Optuna studies of rule-generated configs against baselines."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from revit.cli._common import add_command, add_overwrite_arg, info, outcome, print_json
from revit.input_checks import check_output_dir, count, non_negative, number


def register(sub: Any) -> None:
    p = add_command(sub, "search", "search studies: rule-generated configs vs scratch-trained uniform baselines",
                    "revit search run search/smoke.yaml && revit search report search/smoke.yaml --out runs/smoke")
    ss = p.add_subparsers(dest="search_command", metavar="SUBCOMMAND")

    def usage(_: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)

    r = add_command(ss, "run", "create or resume a study: baselines and sampled candidates (each with its seeds)",
                    "revit search run search/fashion-mnist.yaml --storage journal:runs/studies/fm.log\n"
                    "  revit search run search/imagenet-deit-s.yaml --gpus 0,1,2,3 --storage journal:runs/deit-s.log")
    _common(r)
    r.add_argument("--gpus", help="comma-separated GPU indices (0,1,2,3): one worker process per GPU on the same "
                                  "storage, this process waits for them (default: trials run in this process)")
    r.set_defaults(func=cmd_run)

    w = add_command(ss, "worker", "join a running study from another process or machine",
                    "revit search worker search/imagenet-deit-s.yaml --device cuda:1 "
                    "--storage postgresql://revit@db:5432/studies")
    _common(w, storage_required=True)
    w.add_argument("--max-trials", type=count(), help="stop after this many trials of this worker")
    w.set_defaults(func=cmd_worker)

    st = add_command(ss, "status", "trials of each part of a study (family studies, baselines) by state",
                     "revit search status search/smoke.yaml --storage runs/studies/smoke.db")
    st.add_argument("spec", help="study spec YAML (or a shipped name: smoke, fashion-mnist, imagenet-deit-s)")
    st.add_argument("--storage", help="storage URL (default: the spec's, else sqlite:///runs/studies/NAME.db)")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=cmd_status)

    rp = add_command(ss, "report", "markdown table and PNG plots (accuracy vs MACs, Pareto front, per-block dims)",
                     "revit search report search/smoke.yaml --out runs/smoke-report")
    rp.add_argument("spec", help="study spec YAML (or a shipped name: smoke, fashion-mnist, imagenet-deit-s)")
    rp.add_argument("--storage", help="storage URL (default: the spec's, else sqlite:///runs/studies/NAME.db)")
    rp.add_argument("--out", required=True, help="report folder")
    rp.add_argument("--json", action="store_true", help="print the report's summary as one JSON object")
    add_overwrite_arg(rp)
    rp.set_defaults(func=cmd_report)


def _common(p: argparse.ArgumentParser, storage_required: bool = False) -> None:
    p.add_argument("spec", help="study spec YAML (or a shipped name: smoke, fashion-mnist, imagenet-deit-s)")
    p.add_argument("--storage", required=storage_required,
                   help="storage URL: sqlite:///F.db, postgresql://..., journal:F.log, or a .db/.log path")
    p.add_argument("--n-trials", type=non_negative(), help="candidate trials of the whole study (default: the spec's)")
    p.add_argument("--timeout", type=number(0, lo_open=True), help="stop starting trials after this many seconds")
    p.add_argument("--threads", type=count(), help="torch threads per worker (default: the spec's)")
    p.add_argument("--json", action="store_true", help="end with one JSON object on stdout (trials by state)")
    p.add_argument("--no-repeats", action="store_true",
                   help="candidates of this process train their first seed only (no other seeds)")
    p.add_argument("--device", help="device of this process's trials: auto, cpu, cuda, cuda:N (default: the spec's "
                                    "train.device, else auto)")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), help="mixed precision of the trials (default: the spec's)")
    p.add_argument("--loader-workers", type=non_negative(),
                   metavar="N", help="DataLoader workers per trial (default: the spec's)")


_TRAIN_OVERRIDES = {"device": "device", "amp": "amp", "loader_workers": "loader_workers"}


def _spec(args: argparse.Namespace) -> Any:
    from revit.recipes import TrainConfig
    from revit.search.spec import load_spec

    spec = load_spec(args.spec)
    if getattr(args, "threads", None):
        spec = dataclasses.replace(spec, threads=args.threads)
    over = {key: getattr(args, a) for a, key in _TRAIN_OVERRIDES.items() if getattr(args, a, None) is not None}
    if over:
        if isinstance(spec.train, TrainConfig):  # a typed spec: replace() validates (one line, exit 2)
            spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, **over))
        else:
            train = {**dict(spec.train), **over}
            TrainConfig(**train)  # validates
            spec = dataclasses.replace(spec, train=train)
    return spec


def _check_device(spec: Any) -> None:
    """Fail before the first trial (one line, exit 2) when the trials' device is not on this machine."""
    from revit.devices import resolve_device

    train = spec.train
    resolve_device(str(train.device if hasattr(train, "device") else train.get("device", "auto")))


def _worker_args(args: argparse.Namespace) -> list[str]:
    """The options a ``run --gpus`` passes on to its worker processes (all but --device)."""
    out = []
    for flag in ("threads", "amp", "loader_workers"):
        v = getattr(args, flag, None)
        if v is not None:
            out += [f"--{flag.replace('_', '-')}", str(v)]
    return out + ["-q"] * getattr(args, "log_quiet", 0) + ["-v"] * getattr(args, "log_verbose", 0)


def _gpus(text: str) -> list[str]:
    """``0,1,3`` -> [cuda:0, cuda:1, cuda:3], each checked to exist (one line and exit 2 otherwise)."""
    from revit.devices import resolve_device
    from revit.errors import ConfigError

    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"--gpus takes distinct GPU indices separated by commas (0,1,2,3), got {text!r}")
    return [str(resolve_device(f"cuda:{p}")) for p in parts]


def _sigterm_is_interrupt() -> None:
    """SIGTERM stops a study as Ctrl-C does: the running trial is marked interrupted and retried later."""
    import signal
    import threading

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def _finish(args: argparse.Namespace, studies: Any, extra: dict[str, Any] | None = None) -> int:
    """The last line counts the trials by state; exit 1 when a trial failed and no retry made it good."""
    from revit.search.runner import tally

    t = tally(studies)
    if getattr(args, "json", False):
        print_json({"study": studies.name, "storage": studies.url, "states": t.states, "failed": t.unrecovered,
                    "studies": {part: s.study_name for part, s in studies.parts()}, **(extra or {})})
    outcome(t.line(studies.name))
    return 1 if t.unrecovered else 0


def cmd_run(args: argparse.Namespace) -> int:
    from revit.search.runner import run_study

    spec = _spec(args)
    devices = _gpus(args.gpus) if args.gpus else None
    if devices is None:
        _check_device(spec)
    _check_new_study(spec, args.storage)
    _sigterm_is_interrupt()
    studies = run_study(spec, args.storage, n_trials=args.n_trials, repeats=not args.no_repeats,
                        timeout=args.timeout, devices=devices, worker_args=_worker_args(args))
    info(f"report: revit search report {args.spec} --storage '{studies.url}' --out DIR")
    return _finish(args, studies)


def _check_storage_exists(spec: Any, storage: str | None) -> None:
    """A worker or report joins an existing study: a missing or empty local storage is refused, never created."""
    from revit.errors import StorageError
    from revit.search.storage import backend_for

    url = spec.storage_url(storage)
    path = backend_for(url).local_path(url)
    if path is not None and (not path.is_file() or path.stat().st_size == 0):
        what = "no such study storage" if not path.is_file() else "an empty file, not a study storage"
        raise StorageError(f"{path}: {what} (start the study with 'revit search run {spec.source} "
                           f"--storage {url}')")


def _check_new_study(spec: Any, storage: str | None) -> None:
    """Before a new study's storage is created: refuse a budget, data or setting with which every trial fails."""
    from revit.search.checks import check_study
    from revit.search.storage import backend_for

    url = spec.storage_url(storage)
    path = backend_for(url).local_path(url)
    fresh = path is None or not path.exists() or path.stat().st_size == 0
    check_study(spec, data=fresh)  # a resumed study loaded its data before


def cmd_worker(args: argparse.Namespace) -> int:
    from revit.search.runner import join_study
    from revit.search.studies import open_studies

    spec = _spec(args)
    _check_device(spec)
    _check_storage_exists(spec, args.storage)
    _sigterm_is_interrupt()
    stats = join_study(spec, args.storage, n_trials=args.n_trials, timeout=args.timeout, max_trials=args.max_trials,
                       repeats=not args.no_repeats)
    outcome(f"worker {stats.worker}: {stats.count} trial(s) in {stats.seconds:.0f} s "
         f"({', '.join(f'{k} {len(v)}' for k, v in sorted(stats.trials.items())) or 'none'})")
    studies = open_studies(spec, args.storage, create=False, read_only=True)
    return _finish(args, studies, {"worker": stats.worker, "trials": stats.trials})


def cmd_status(args: argparse.Namespace) -> int:
    from revit.search.runner import candidate_counts, tally
    from revit.search.studies import open_studies

    spec = _spec(args)
    _check_storage_exists(spec, args.storage)
    studies = open_studies(spec, args.storage, create=False, read_only=True)
    t = tally(studies)
    counts = candidate_counts(studies)
    if args.json:
        print_json({"study": studies.name, "storage": studies.url, "states": t.states, "failed": t.unrecovered,
                    "candidates": counts, "n_trials": spec.n_trials,
                    "studies": {part: s.study_name for part, s in studies.parts()}})
        return 0
    for part, s in studies.parts():
        states: dict[str, int] = {}
        for tr in s.get_trials(deepcopy=False):
            states[tr.state.name] = states.get(tr.state.name, 0) + 1
        done = f", {counts[part]}/{spec.n_trials} candidates" if part in counts else ""
        print(f"{s.study_name}: {sum(states.values())} trials "
              f"({', '.join(f'{k} {v}' for k, v in sorted(states.items())) or 'none'}){done}")
    print(t.line(studies.name))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from revit.run_folders import claim_run
    from revit.search.report import write_report
    from revit.search.results import pm
    from revit.search.studies import open_studies

    claim = claim_run(args.out, "study-report", resume=True, overwrite=args.overwrite)  # a killed report reruns
    check_output_dir(args.out)
    spec = _spec(args)
    _check_storage_exists(spec, args.storage)
    studies = open_studies(spec, args.storage, create=False, read_only=True)
    claim.begin()
    try:
        s = write_report(spec, studies, args.out, storage_url=studies.url)
    except BaseException:
        claim.abandon()  # a report that could not be written leaves no marker-only folder behind
        raise
    claim.finish()
    if args.json:
        print_json(s)
        return 0
    c = s.get("comparison")
    if c:
        def side(name: str, ms: Any, n: int) -> str:
            return f"{name}: test top-1 {pm(ms, unit='%')}" + (f" (n = {n})" if n > 1 else "")

        print(f"best candidate {side(c['best'], c['best_test'], c['best_n'])}; "
              f"uniform {side(c['uniform'], c['uniform_test'], c['uniform_n'])}")
    info(f"wrote {args.out}/report.md, report.json, {', '.join(p.split('/')[-1] for p in s['plots'].values())}")
    return 0
