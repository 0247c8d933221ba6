"""Train revit_micro on Fashion-MNIST and print seconds per epoch and test top-1.

Reference (DEVELOPERS.md): a timm ViT of this shape trains an epoch in about 95 s on a 2-core CPU
and reaches 88% after 4 epochs.  Usage: python benchmarks/train_micro.py [--epochs 3] [--threads 2]
[--workers N] [--amp off|bf16|fp16] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

REFERENCE_S_PER_EPOCH = 95.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--workers", "-j", type=int, default=0, help="DataLoader worker processes")
    ap.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from revit.data import DataSpec
    from revit.presets import get_preset
    from revit.recipes import TrainConfig
    from revit.workflows import run_training

    out = args.out or tempfile.mkdtemp(prefix="train_micro_")
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    tc = TrainConfig(epochs=args.epochs, loader_workers=args.workers, amp=args.amp, device=args.device)
    m = run_training(get_preset("revit_micro"), DataSpec(train_limit=args.train_limit), tc, out, threads=args.threads,
                     progress=False)
    wall = time.perf_counter() - t0
    result = {
        "epochs": args.epochs, "train_images": m["train_images"], "threads": args.threads,
        "loader_workers": args.workers, "amp": args.amp, "device": args.device,
        "seconds_per_epoch": round(m["seconds_per_epoch"], 1),
        "ratio_to_reference_95s": round(m["seconds_per_epoch"] / REFERENCE_S_PER_EPOCH, 2),
        "test_top1": round(m["test_acc"], 4), "val_top1": round(m["val_acc"], 4), "wall_s": round(wall, 1),
        "load_average_at_start": round(load, 2),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
