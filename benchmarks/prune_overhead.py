"""Time per pruning-loop training step with and without the saliency bookkeeping (issue 4; goal <= 5%).

On revit_micro (Fashion-MNIST batches of 128, one thread), one :class:`revit.prune.PruneRun` runs
its own training step (``_train_batch``: forward, frozen-teacher forward, CE + KL, backward,
``GlobalPruner.accumulate`` (gradient masks + saliency), AdamW; then ``GlobalPruner.step``: weight
masks and the schedule check) in three variants, interleaved in rounds so that load changes on a
shared machine hit all of them alike:

- ``plain``: the same step on the unmasked model (no mask hooks, no saliency) - context only;
- ``no-saliency``: the pruner's step with the criterion and the score accumulator switched off;
- ``saliency``: the pruner's step as it runs (criterion on the gradients + interval accumulator).

Overhead = median(saliency) / median(no-saliency) - 1, per criterion.  Pruning steps themselves
(ranking, removal, trace record) happen once per interval and are timed separately, per call.
Usage: python benchmarks/prune_overhead.py [--rounds 12] [--steps 4] [--criteria hessian,nvit-code]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def main() -> None:
    """Build one pruner per criterion, time the step variants in interleaved rounds, print the ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12, help="interleaved rounds")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--criteria", default="hessian,nvit-code")
    ap.add_argument("--clock", choices=("thread", "wall"), default="thread",
                    help="thread: CPU time of this thread (with one torch thread all compute runs in it, and time "
                         "slices lost to other processes do not count); wall: elapsed time")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    from revit.data import DataSpec, load_splits
    from revit.models import build_model
    from revit.presets import get_preset
    from revit.prune import CostTarget, PruneConfig, PruneRun

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from prune_quality import fetch

    torch.set_num_threads(args.threads)
    if args.clock == "thread" and args.threads != 1:
        raise SystemExit("--clock thread needs --threads 1 (other threads' work would not be counted)")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    cfg = get_preset("revit_micro")
    splits = load_splits(DataSpec("fashion-mnist", train_limit=4096, val_size=0, test_limit=1))
    n_batches = 8
    batches = [fetch(splits.train, list(range(i * args.batch_size, (i + 1) * args.batch_size)))
               for i in range(n_batches)]
    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    runs: dict[str, PruneRun] = {}
    tmp = tempfile.mkdtemp(prefix="prune_overhead_")

    def make_run(crit: str, folder: str) -> PruneRun:
        torch.manual_seed(0)
        pc = PruneConfig(target=CostTarget.macs(0.5), criterion=crit, interval=10**9, per_step=2,
                         batch_size=args.batch_size, lr=3e-4, eval_size=0, device="cpu")
        run = PruneRun(build_model(cfg), splits.train, None, pc, f"{tmp}/{folder}", progress=False)
        run.model.train()
        return run

    for crit in criteria:
        runs[crit] = make_run(crit, crit)
    plain_run = make_run("random", "plain")
    plain_run.pruner.masks.remove()  # no mask hooks on this one
    plain_model = plain_run.model

    def plain_step(x: torch.Tensor, y: torch.Tensor) -> None:
        from revit.train_loop import distillation_loss

        logits = plain_model(x)
        with torch.no_grad():
            t = plain_run.teacher(x)
        loss = torch.nn.functional.cross_entropy(logits, y) + distillation_loss(logits, t, 3.0)
        plain_run.opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_run.opt.step()

    class _Off:
        """Stands in for the criterion and the accumulator: does nothing."""

        needs_grad = False

        def __call__(self, *a: Any) -> dict[int, torch.Tensor]:
            return {}

        def add(self, *a: Any) -> None:
            return None

    book: list[float] = []  # time inside criterion + accumulator, measured directly

    class _Timed:
        """Wraps the criterion and the accumulator and adds their time to ``book``."""

        def __init__(self, crit: Any, acc: Any) -> None:
            self.crit, self.acc, self.t = crit, acc, 0.0
            self.needs_grad = crit.needs_grad

        def __call__(self, *a: Any) -> Any:
            t0 = clock()
            r = self.crit(*a)
            self.t += clock() - t0
            return r

        def add(self, *a: Any) -> None:
            t0 = clock()
            self.acc.add(*a)
            self.t += clock() - t0

    def pruner_step(run: PruneRun, saliency: bool) -> Any:
        p = run.pruner
        crit, acc = p.criterion, p.acc

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            timed = _Timed(crit, acc)
            if not saliency:
                p.criterion, p.acc = _Off(), _Off()  # type: ignore[assignment]
            else:
                p.criterion, p.acc = timed, timed  # type: ignore[assignment]
            try:
                run._train_batch(run.model, x, y)
                p.step()
            finally:
                p.criterion, p.acc = crit, acc
            if saliency:
                book.append(timed.t)

        return step

    variants: dict[str, Any] = {"plain": plain_step}
    for crit, run in runs.items():
        variants[f"{crit}/no-saliency"] = pruner_step(run, False)
        variants[f"{crit}/saliency"] = pruner_step(run, True)
    times: dict[str, list[float]] = {k: [] for k in variants}
    books: dict[str, list[float]] = {c: [] for c in criteria}
    for fn in variants.values():  # warm-up
        for x, y in batches[:2]:
            fn(x, y)
    k = 0
    for r in range(args.rounds):
        names = list(variants)
        names = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in names:
            for _ in range(args.steps):
                x, y = batches[k % n_batches]
                k += 1
                t0 = clock()
                variants[name](x, y)
                times[name].append(clock() - t0)
                if name.endswith("/saliency"):
                    books[name.split("/")[0]].append(book[-1])
    # one pruning step (ranking + removal + trace record), for scale
    r0 = runs[criteria[0]]
    t0 = clock()
    r0.pruner.prune_now()  # what step() does when the schedule says so (the schedule here never does)
    prune_step_s = clock() - t0

    med = {k: statistics.median(v) for k, v in times.items()}
    out: dict[str, Any] = {"clock": args.clock, "threads": args.threads, "batch_size": args.batch_size,
                           "model": "revit_micro",
                           "samples_per_variant": args.rounds * args.steps,
                           "median_step_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
                           "one_pruning_step_ms": round(prune_step_s * 1e3, 1), "overhead": {}}
    print(f"revit_micro, batch {args.batch_size}, {args.threads} thread(s), {args.clock} clock, {args.rounds} "
          f"interleaved rounds x {args.steps} steps; median ms per step:")
    for name, v in med.items():
        print(f"  {name:24s} {v * 1e3:8.2f}")
    for crit in criteria:
        ratio = med[f"{crit}/saliency"] / med[f"{crit}/no-saliency"]
        direct = statistics.median(books[crit]) / med[f"{crit}/no-saliency"]
        out["overhead"][crit] = {"ratio": round(ratio, 4), "direct": round(direct, 4),
                                 "bookkeeping_ms": round(statistics.median(books[crit]) * 1e3, 2),
                                 "vs_plain": round(med[f"{crit}/saliency"] / med["plain"], 4)}
        verdict = "meets" if ratio <= 1.05 else "misses"
        print(f"{crit}: step with saliency / without x{ratio:.3f} ({(ratio - 1) * 100:+.1f}%, {verdict} the <= 5% "
              f"goal); bookkeeping timed directly {statistics.median(books[crit]) * 1e3:.1f} ms = "
              f"{direct * 100:.1f}% of a step; pruner step with saliency vs plain training "
              f"x{med[f'{crit}/saliency'] / med['plain']:.3f}")
    print(f"one pruning step (rank, remove, trace record): {prune_step_s * 1e3:.0f} ms, once per interval")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
