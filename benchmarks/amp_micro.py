"""fp32 against bf16 autocast on the same run: revit_micro, 5k Fashion-MNIST images, 2 epochs, same seed.

A correctness check of ``--amp bf16`` (the test accuracy must stay within 2 points of fp32), not a
speed figure: on a CPU without native bf16 the autocast kernels are emulated.
Usage: python benchmarks/amp_micro.py [--threads 1] [--train-limit 5000] [--epochs 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

GOAL_POINTS = 2.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-limit", type=int, default=5000)
    ap.add_argument("--test-limit", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from revit.data import DataSpec
    from revit.presets import get_preset
    from revit.recipes import TrainConfig
    from revit.workflows import run_training

    load = os.getloadavg()[0]
    data = DataSpec(train_limit=args.train_limit, test_limit=args.test_limit, seed=args.seed)
    runs = {}
    for amp in ("off", "bf16"):
        out = tempfile.mkdtemp(prefix=f"amp_micro_{amp}_")
        tc = TrainConfig(epochs=args.epochs, seed=args.seed, amp=amp, device=args.device)
        t0 = time.perf_counter()
        m = run_training(get_preset("revit_micro"), data, tc, out, threads=args.threads, progress=False)
        runs["fp32" if amp == "off" else amp] = {
            "test_top1": round(m["test_acc"], 4), "val_top1": round(m["val_acc"], 4),
            "train_loss": round(m["train_loss"], 4), "seconds_per_epoch": round(m["seconds_per_epoch"], 1),
            "wall_s": round(time.perf_counter() - t0, 1)}
    diff = 100 * (runs["bf16"]["test_top1"] - runs["fp32"]["test_top1"])
    print(json.dumps({"train_images": args.train_limit, "epochs": args.epochs, "threads": args.threads,
                      "device": args.device, "seed": args.seed, **runs, "bf16_minus_fp32_points": round(diff, 2),
                      "goal": f"|difference| <= {GOAL_POINTS} points", "met": abs(diff) <= GOAL_POINTS,
                      "load_average_at_start": round(load, 2)}, indent=1))


if __name__ == "__main__":
    main()
