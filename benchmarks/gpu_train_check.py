"""One-GPU smoke check of the training runtime and the CUDA latency options (synthetic data, ~2 min).

Runs from the checkout with ``PYTHONPATH=.``; imports neither optuna nor ``revit.search``.  Parts:
(1) ``train()`` on ``cuda`` with amp off/bf16/fp16 (GradScaler), channels_last, grad accumulation,
2 loader workers and model EMA, on synthetic 28x28 class templates under noise; (2) a run checkpointed
on the GPU resumes on the CPU (and ends where the uninterrupted GPU run ends, up to float round-off);
(3) a torch-backend fp16 latency table built with CUDA graphs on a tiny space, then validated on the
device and dtype it records.  Writes ``OUT/gpu_train_check.json`` after every part.
Usage: PYTHONPATH=. python benchmarks/gpu_train_check.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any


def _task(n: int, seed: int = 0) -> Any:
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, 10, (n,), generator=g)
    x = 0.5 * templates[y] + torch.randn(n, 1, 28, 28, generator=g)  # a class template under noise
    return TensorDataset(x, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu checks the script's logic only")
    ap.add_argument("--quick", action="store_true", help="small sizes (a logic check on the CPU)")
    args = ap.parse_args()
    n_train, epochs = (1024, 1) if args.quick else (8192, 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {}

    def save() -> None:
        (out / "gpu_train_check.json").write_text(json.dumps(res, indent=1))

    import torch

    from revit.config import uniform
    from revit.devices import device_name, resolve_device
    from revit.models import build_model
    from revit.recipes import TrainConfig
    from revit.train_loop import evaluate, train

    dev = resolve_device(args.device)
    res["device"] = device_name(dev)
    res["torch"] = torch.__version__
    cfg = uniform(64, 4, 4, img_size=28, patch_size=7, in_chans=1, num_classes=10)
    tr, va = _task(n_train, 0), _task(2048, 1)

    # (1) the loop on the GPU
    for name, kw in [("fp32", {}), ("bf16", {"amp": "bf16"}), ("fp16", {"amp": "fp16"}),
                     ("bf16_cl_accum2_j2_ema", {"amp": "bf16", "channels_last": True, "grad_accum": 2,
                                                 "loader_workers": 2, "model_ema": True, "model_ema_decay": 0.99})]:
        try:
            torch.manual_seed(0)
            m = build_model(cfg)
            t0 = time.perf_counter()
            r = train(m, tr, va, TrainConfig(epochs=epochs, batch_size=128, lr=2e-3, device=str(dev), **kw),
                      progress=False)
            res[name] = {"val_acc": r.final["val_acc"], "train_loss": r.final["train_loss"],
                         "s_per_epoch": round((time.perf_counter() - t0) / epochs, 2),
                         "param_device": str(next(m.parameters()).device)}
            if r.ema is not None:
                res[name]["val_acc_ema"] = r.final.get("val_acc_ema")
        except Exception as e:  # noqa: BLE001 - record and go on
            res[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
        save()

    # (2) GPU checkpoint -> CPU resume
    try:
        tc = TrainConfig(epochs=2, batch_size=128, lr=2e-3, max_steps_per_epoch=4, device=str(dev))
        torch.manual_seed(0)
        ref = build_model(cfg)
        train(ref, tr, None, tc, out / "ref", progress=False)

        def stop(rec: dict[str, Any]) -> None:
            raise KeyboardInterrupt

        torch.manual_seed(0)
        try:
            train(build_model(cfg), tr, None, tc, out / "moved", on_epoch=stop, progress=False)
        except KeyboardInterrupt:
            pass
        cpu_model = build_model(cfg)
        import dataclasses

        r = train(cpu_model, tr, va, dataclasses.replace(tc, device="cpu"), out / "moved", resume=True,
                  progress=False)
        diff = max(float((a.float().cpu() - b.float()).abs().max())
                   for a, b in zip(ref.state_dict().values(), cpu_model.state_dict().values(), strict=True))
        res["gpu_to_cpu_resume"] = {"epochs": len(r.history), "max_abs_weight_diff_vs_gpu_run": diff,
                                    "cpu_val_acc": evaluate(cpu_model, va)}
    except Exception as e:  # noqa: BLE001
        res["gpu_to_cpu_resume"] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
    save()

    # (3) CUDA-graph fp16 latency table, validated on its own device and dtype
    try:
        from revit.config import Setting
        from revit.latency.accuracy import backend_for_table, validate
        from revit.latency.backends.torch_backend import TorchBackend
        from revit.latency.grid import WidthGrid
        from revit.latency.profiler import BuildSettings, build_table
        from revit.latency.table import LatencyTable

        setting = {"img_size": 224, "patch_size": 16, "in_chans": 3, "num_classes": 1000, "distilled": False,
                   "class_token": True}
        grid = WidthGrid("tiny-gpu", {"embed_dim": (192, 384), "heads": (3, 6), "qk_dim": (32, 64), "v_dim": (64,),
                                      "mlp_dim": (768, 1536)}, Setting(**setting, depth=12))
        cuda = dev.type == "cuda"
        if not cuda:
            grid = WidthGrid("tiny-cpu", {"embed_dim": (16, 32), "heads": (1,), "qk_dim": (4,), "v_dim": (4,),
                                          "mlp_dim": (8, 32)}, Setting(**{**setting, "img_size": 8, "patch_size": 4},
                                                                        depth=2))
        for graphs in ((False, True) if cuda else (False,)):
            t0 = time.perf_counter()
            b = TorchBackend(device=str(dev), dtype="fp16" if cuda else "bf16", cuda_graphs=graphs,
                             threads=None if cuda else 1)
            path = out / f"tbl_graphs{int(graphs)}" / "t.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            build_table(grid, b, path, BuildSettings(batch=64 if cuda else 4, design="full", passes=2,
                                                      repeats=10 if cuda else 2, warmup=3 if cuda else 1),
                        progress=False)
            t = LatencyTable.load(path)
            vb = backend_for_table(t)
            v = validate(t, vb, 10 if cuda else 2, noise_k=5 if cuda else 2, progress=False)
            res[f"latency_{b.dtype}_cuda_graphs_{graphs}"] = {
                "cells": t.n_cells, "build_s": round(time.perf_counter() - t0, 1),
                "validated_on": [vb.device, vb.dtype, getattr(vb, "cuda_graphs", None)],
                "metadata_backend_settings": t.metadata["backend_settings"], "mape": v.mape,
                "noise_floor": v.noise_floor}
            if cuda:
                res[f"latency_{b.dtype}_cuda_graphs_{graphs}"]["deit_s_like_pred_ms"] = 1e3 * t.predict(
                    uniform(384, 12, 6, **setting)).total_s
            save()
    except Exception as e:  # noqa: BLE001
        res["latency"] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
    save()
    print(json.dumps({k: v for k, v in res.items()}, indent=1, default=str)[:6000])


if __name__ == "__main__":
    main()
