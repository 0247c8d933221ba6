"""Do study workers scale?  Trials per hour with 1 and 2 worker processes (one torch thread each) on
a journal file and on a real PostgreSQL server (started here, see revit.search.testing).

Every configuration gets a fresh study of the same spec (Fashion-MNIST micro setting, a small
subset, 1 epoch, random sampler, a fixed MACs budget, more candidates than can finish) and each
worker runs ``revit search worker --timeout SECONDS``.  Throughput = complete trials / (last trial
end - first trial start) x 3600, so interpreter start-up does not count.  Checks that the counts add
up: the trials each worker says it ran sum to the trials in the storage, every trial is finished
(none RUNNING or WAITING) and each was run by exactly one worker.  Goal: 2 workers >= 1.7x of 1.
"time in trials" (sum of trial durations / (workers x span)) says how much of the workers' time went
to trials rather than to the storage and the sampler; "mean trial s" growing with 2 workers means the
two processes did not get two cores (other load on the machine: the load average is printed).

    python benchmarks/study_scaling.py [--seconds 120] [--storages journal,postgresql] [--train-limit 2000]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import yaml


def spec_doc(name: str, train_limit: int) -> dict:
    return {
        "schema": "revit/study/v1", "kind": "study", "name": name,
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
        "n_trials": 100000, "setting": "micro", "budget": {"macs": "4M"},
        "space": {"family": "less-more-less", "base": "less-more-less",
                  "params": {"plateau": [0.3, 0.9], "mlp_end": [0.4, 1.0]}},
        "data": {"source": "fashion-mnist", "train_limit": train_limit, "val_size": 1000, "test_limit": 1000},
        "train": {"epochs": 1, "batch_size": 128, "lr": 0.002},
        "threads": 1, "seeds": [0], "repeats": {"top_k": 0}, "baselines": [],
    }


def measure(url: str, workers: int, seconds: float, tmp: Path, train_limit: int) -> dict:
    from optuna.trial import TrialState

    from revit.search import attrs as A
    from revit.search.spec import StudySpec
    from revit.search.studies import open_studies

    name = f"scaling-{workers}w-{int(time.time())}"
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec_doc(name, train_limit)))
    spec = StudySpec.load(path)
    open_studies(spec, url)  # the run creates the study; the workers join it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "revit", "search", "worker", str(path), "--storage", url,
                               "--timeout", str(seconds), "--quiet"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(workers)]
    reported = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed:\n{err[-3000:]}")
        m = re.search(r"worker (\S+): (\d+) trial\(s\)", err)
        assert m, err[-2000:]
        reported.append((m.group(1), int(m.group(2))))
    trials = open_studies(spec, url, create=False, read_only=True).trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    unfinished = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    by_worker = Counter(t.user_attrs.get(A.WORKER) for t in trials)
    ok = (sum(n for _, n in reported) == len(trials) and not unfinished
          and sorted(by_worker.values()) == sorted(n for _, n in reported))
    start = min(t.datetime_start for t in done)
    end = max(t.datetime_complete for t in done)
    span = (end - start).total_seconds()
    busy = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done) / (workers * span)
    return {"workers": workers, "trials": len(trials), "complete": len(done), "span_s": span, "busy": busy,
            "per_hour": 3600 * len(done) / span if span > 0 else float("nan"),
            "per_worker": [n for _, n in reported], "counts_add_up": ok,
            "mean_trial_s": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done) / len(done)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120, help="how long each worker starts trials")
    ap.add_argument("--storages", default="journal,postgresql")
    ap.add_argument("--train-limit", type=int, default=2000, help="training images per trial")
    args = ap.parse_args()
    import optuna

    from revit.search.testing import PostgresUnavailable, postgres_server

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as d, ExitStack() as stack:
        tmp = Path(d)
        for storage in args.storages.split(","):
            if storage == "postgresql":
                try:
                    url = stack.enter_context(postgres_server())
                except PostgresUnavailable as e:
                    print(f"postgresql: skipped ({e})")
                    continue
            elif storage == "journal":
                url = f"journal:{tmp / 'scaling.log'}"
            else:
                url = storage
            for workers in (1, 2):
                r = measure(url, workers, args.seconds, tmp, args.train_limit)
                r["storage"] = storage
                rows.append(r)
                print(f"{storage:10s} {workers} worker(s): {r['complete']:3d} complete of {r['trials']} trials "
                      f"(per worker {r['per_worker']}, counts add up: {r['counts_add_up']}), "
                      f"{r['per_hour']:.0f} trials/h, mean trial {r['mean_trial_s']:.1f} s, workers busy "
                      f"{100 * r['busy']:.0f}% of the span, load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print("\n| storage | workers | complete trials (per worker) | counts add up | trials/hour | 2w / 1w | mean trial s "
          "| time in trials |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        one = next(x for x in rows if x["storage"] == r["storage"] and x["workers"] == 1)
        ratio = f"{r['per_hour'] / one['per_hour']:.2f}x" if r["workers"] == 2 else ""
        print(f"| {r['storage']} | {r['workers']} | {r['complete']} ({' + '.join(map(str, r['per_worker']))}) | "
              f"{r['counts_add_up']} | {r['per_hour']:.0f} | {ratio} | {r['mean_trial_s']:.1f} | "
              f"{100 * r['busy']:.0f}% |")
    if not all(r["counts_add_up"] for r in rows):
        raise SystemExit("trial counts do not add up")


if __name__ == "__main__":
    main()
