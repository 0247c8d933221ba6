"""One-GPU check of revit at its users' scale, in at most 5 minutes (issue 9).

Runs from the checkout (``PYTHONPATH=. python benchmarks/gpu_check.py --out DIR``), imports neither
optuna nor ``revit.search``, and uses synthetic batches (no dataset on the GPU machine).  Each part
has a time cap and writes ``DIR/gpu_check.json`` as it ends, so a timeout keeps what was measured:

(a) training images/s of ``revit_deit_small_patch16_224`` vs timm's ``deit_small_patch16_224`` in the
    same loop, fp32 and bf16 autocast (goal: revit >= 0.95x timm with bf16);
(b) a pruning step's overhead (GlobalPruner.accumulate + step, hessian) over a plain training step of
    DeiT-S, 50 steps, medians (goal <= 5%);
(c) a torch-backend fp16 table of the ``deit`` preset at batch 64 (<= 400 cells, CUDA graphs when the
    backend has them) and its validation on 30 random whole models: MAPE against the noise floor
    (goal <= 3%) and build time (goal: full size in <= 10 min, scaled from the cells built);
(d) whether TensorRT imports, and if so the same table on it;
(e) latency-aware vs MACs-only pruning of DeiT-S (distilled, the table's setting) to 50% MACs, the
    two dense models timed whole on the GPU (goal: latency-aware >= 5% faster);
(f) the NCCL path: a one-process NCCL group, DDP training with the pruner's broadcasts.

``--dry-run`` runs every CPU-safe part at toy sizes on the CPU (the test suite does this).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

GOALS = {"a_bf16_ratio": 0.95, "b_overhead": 0.05, "c_mape": 0.03, "c_full_build_s": 600.0, "e_speedup": 1.05}


class Budget:
    """A part's time cap: ``left()`` seconds remain; loops stop early when it runs out."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


class Report:
    """The figures so far, rewritten atomically after every part."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.path = out / "gpu_check.json"
        self.data: dict[str, Any] = {"meta": meta, "parts": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(".gpu_check.json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)

    def part(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        print(f"--- {name}", flush=True)
        try:
            res = fn()
            res["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - one part's failure must not lose the others
            res = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        res["seconds"] = round(time.perf_counter() - t0, 2)
        self.data["parts"][name] = res
        self.save()
        print(json.dumps({k: v for k, v in res.items() if k != "traceback"}, default=str), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp_ctx(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    from revit.runtime import autocast

    return autocast(device, amp)


# --- (a) training throughput ------------------------------------------------------------------------
def train_steps(model: nn.Module, device: torch.device, amp: str, batch: int, img: int, chans: int, classes: int,
                steps: int, warmup: int, budget: Budget, before: Callable[[], None] | None = None,
                after: Callable[[], None] | None = None) -> list[float]:
    """Seconds of each timed training step (forward, CE, backward, AdamW) on one synthetic batch.

    ``before``/``after`` run around the optimizer step (where a user calls accumulate() / step())."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, chans, img, img, generator=g).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        with amp_ctx(device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if before is not None:
            before()
        opt.step()
        if after is not None:
            after()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        if budget.left() < 0 and len(times) >= 3:
            break
    return times


def part_a(device: torch.device, dry: bool, budget: Budget) -> dict[str, Any]:
    """revit vs timm DeiT-S images/s, fp32 and bf16, same loop, interleaved twice."""
    import timm

    import revit.models  # noqa: F401 - registers revit_* in timm

    if dry:
        from timm.models.vision_transformer import VisionTransformer

        from revit.models import from_timm

        def timm_fn() -> nn.Module:
            torch.manual_seed(0)
            return VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=64, depth=2,
                                     num_heads=4)

        def revit_fn() -> nn.Module:
            return from_timm(timm_fn())

        batch, img, chans, classes, steps, warmup = 8, 28, 1, 10, 3, 1
    else:
        def timm_fn() -> nn.Module:
            return timm.create_model("deit_small_patch16_224")

        def revit_fn() -> nn.Module:
            return timm.create_model("revit_deit_small_patch16_224")

        batch, img, chans, classes, steps, warmup = 128, 224, 3, 1000, 20, 5
    models = {"revit": revit_fn().to(device), "timm": timm_fn().to(device)}
    res: dict[str, Any] = {"batch": batch, "img_size": img, "steps": steps}
    per: dict[str, list[float]] = {}
    for rnd in range(2):
        for amp in ("off", "bf16"):
            for name, m in models.items():
                t = train_steps(m, device, amp, batch, img, chans, classes, steps, warmup if rnd == 0 else 1,
                                Budget(budget.left() / 6))
                per.setdefault(f"{name}_{amp}", []).extend(t)
    for k, t in per.items():
        res[f"{k}_img_per_s"] = round(batch / statistics.median(t), 1)
    for amp in ("off", "bf16"):
        res[f"ratio_{amp}"] = round(res[f"revit_{amp}_img_per_s"] / res[f"timm_{amp}_img_per_s"], 4)
    res["goal"] = f"revit/timm bf16 >= {GOALS['a_bf16_ratio']}"
    res["met"] = res["ratio_bf16"] >= GOALS["a_bf16_ratio"]
    return res


# --- (b) pruning-step overhead ----------------------------------------------------------------------
def part_b(device: torch.device, dry: bool, budget: Budget) -> dict[str, Any]:
    """Median step time with GlobalPruner.accumulate/step vs without, on two copies of DeiT-S."""
    import copy

    import timm

    import revit.models  # noqa: F401
    from revit.prune import GlobalPruner
    from revit.prune.policy import Schedule

    if dry:
        from revit.presets import get_preset

        base = revit.models.build_model(get_preset("revit_micro"))
        batch, img, chans, classes, steps, amp = 8, 28, 1, 10, 4, "off"
    else:
        base = timm.create_model("revit_deit_small_patch16_224")
        batch, img, chans, classes, steps, amp = 64, 224, 3, 1000, 50, "bf16"
    base.train()
    plain = copy.deepcopy(base).to(device)
    x = torch.randn(2, chans, img, img, device=device)
    variants = {"graphed": None, "eager": False} if device.type == "cuda" else {"eager": False}
    pruners = {}
    errors: dict[str, str] = {}
    for name, graphs in variants.items():
        try:
            p = GlobalPruner(copy.deepcopy(base).to(device), x, target_macs=0.5, criterion="hessian", interval=1,
                             per_step=8, cuda_graphs=graphs)
            # one real pruning step first, so the masks are not trivially all-alive
            train_steps(p.model, device, amp, batch, img, chans, classes, 1, 0, Budget(60), before=p.accumulate,
                        after=p.step)
            assert p.steps == 1
        except Exception as e:  # noqa: BLE001 - keep the other variant's figure
            errors[name] = f"{type(e).__name__}: {e}"
            continue
        p.schedule = Schedule(interval=10**9, per_step=1)  # from here on: bookkeeping only, no removal
        pruners[name] = p
    times: dict[str, list[float]] = {"plain": [], **{n: [] for n in pruners}}
    rounds = 5
    per = max(1, steps // rounds)
    for _ in range(rounds):
        times["plain"] += train_steps(plain, device, amp, batch, img, chans, classes, per, 2,
                                      Budget(budget.left() / 6))
        for name, p in pruners.items():
            times[name] += train_steps(p.model, device, amp, batch, img, chans, classes, per, 2,
                                       Budget(budget.left() / 6), before=p.accumulate, after=p.step)
    p = next(iter(pruners.values()))
    p.schedule = Schedule(interval=1, per_step=8)  # one real pruning decision (rank, choose, masks), timed alone
    sync(device)
    t0 = time.perf_counter()
    p.step()
    sync(device)
    decision = time.perf_counter() - t0
    mp = statistics.median(times["plain"])
    res: dict[str, Any] = {"batch": batch, "amp": amp, "steps": {k: len(v) for k, v in times.items()},
                           "plain_step_ms": round(mp * 1e3, 3), "prune_decision_ms": round(decision * 1e3, 1)}
    for name in pruners:
        mq = statistics.median(times[name])
        res[f"{name}_step_ms"] = round(mq * 1e3, 3)
        res[f"{name}_overhead"] = round(mq / mp - 1, 4)
    if "graphed" in pruners:  # the graph's scores equal the eager criterion's on the same gradients
        from revit.prune.global_pruner import _GraphedScores

        g = pruners["graphed"]
        params = dict(g.model.named_parameters())
        grads = {k: q.grad for k, q in params.items() if q.grad is not None}
        eager = g.criterion(params, grads)
        graphed = _GraphedScores(g.criterion, params, grads)
        graphed.add(grads)
        res["graphed_vs_eager_max_rel_diff"] = max(
            float((graphed.sums[i] - eager[gid]).abs().max() / eager[gid].abs().max().clamp_min(1e-300))
            for i, gid in enumerate(graphed.gids))
    res["errors"] = errors
    best = min(res[f"{n}_overhead"] for n in pruners)
    res["goal"] = f"overhead <= {GOALS['b_overhead']:.0%}"
    res["met"] = best <= GOALS["b_overhead"]
    return res


# --- (c, d) latency tables ----------------------------------------------------------------------------
def _backend(name: str, device: torch.device, dtype: str, dry: bool) -> Any:
    import inspect

    from revit.latency.backends import BACKENDS, get_backend

    kw: dict[str, Any] = {"device": str(device), "dtype": dtype, "threads": 1 if device.type == "cpu" else None}
    cls = BACKENDS.get(name)
    if name == "torch" and device.type == "cuda" and "cuda_graphs" in inspect.signature(cls.__init__).parameters:
        kw["cuda_graphs"] = True
    return get_backend(name, **kw)


def _space(dry: bool) -> Any:
    from revit.config import Setting
    from revit.latency.space import Space, deit

    if not dry:
        return deit()
    return Space("dry", {"embed_dim": (32, 64), "heads": (1, 2), "qk_dim": (4, 8), "v_dim": (4, 8),
                         "mlp_dim": (16, 64)},
                 Setting(img_size=28, patch_size=7, in_chans=1, num_classes=10, distilled=True, depth=2))


def build_and_validate(backend_name: str, device: torch.device, dtype: str, out: Path, dry: bool,
                       budget: Budget) -> tuple[dict[str, Any], Any]:
    from revit.latency.profiler import BuildSettings, build_table
    from revit.latency.validate import validate

    backend = _backend(backend_name, device, dtype, dry)
    space = _space(dry)
    cells = 48 if dry else 400
    settings = BuildSettings(batch=4 if dry else 64, max_cells=cells, warmup=1 if dry else 3,
                             repeats=2 if dry else 5, passes=1 if dry else 3)
    path = out / f"{backend_name}_{dtype}_table.json"
    for p in (path, path.with_name(path.name + ".journal")):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    table = build_table(space, backend, path, settings, progress=False)
    build_s = time.perf_counter() - t0
    grid = math.prod(len(v) for v in table.axes.values())
    measured = int(table.metadata["design"]["cells_measured"])
    samples = 3 if dry else 30
    t1 = time.perf_counter()
    v = validate(table, backend, samples, noise_k=3 if dry else 10, progress=False)
    res = {"backend": backend.info(), "grid_cells": grid, "measured_cells": measured, "build_s": round(build_s, 1),
           "validate_s": round(time.perf_counter() - t1, 1), "samples": samples, **v.to_dict()}
    per_cell = build_s / max(measured, 1)
    res["full_size_build_s_937_cells"] = round(per_cell * 937, 1)
    res["nvit_grid_build_s_9375_cells"] = round(per_cell * 9375, 1)
    mape = float(res.get("mape", v.mape))
    res["goal"] = f"MAPE <= {GOALS['c_mape']:.0%} and a full-size (937-cell) build <= {GOALS['c_full_build_s']:.0f} s"
    res["met"] = mape <= GOALS["c_mape"] and res["full_size_build_s_937_cells"] <= GOALS["c_full_build_s"]
    return res, table


# --- (e) latency-aware vs MACs-only pruning -------------------------------------------------------------
def _prune_once(base_sd: dict[str, torch.Tensor], cfg: Any, device: torch.device, table: Any, latency_aware: bool,
                steps: int, batch: int, eta: float) -> Any:
    from revit.cost import LatencyCost, MacsCost
    from revit.models import build_model
    from revit.prune import GlobalPruner

    model = build_model(cfg).to(device)
    model.load_state_dict(base_sd)
    teacher = build_model(cfg).to(device).eval().requires_grad_(False)
    teacher.load_state_dict(base_sd)
    penalty = LatencyCost(table) if latency_aware else MacsCost()
    pruner = GlobalPruner(model, target_macs=0.5, table=table, penalty=penalty, criterion="hessian",
                          total_steps=steps, eta=eta)
    opt = torch.optim.AdamW(pruner.model.parameters(), lr=1e-5)
    g = torch.Generator(device="cpu").manual_seed(0)
    amp = "bf16" if device.type == "cuda" else "off"
    for _ in range(steps * 2):
        if pruner.done:
            break
        x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g).to(device)
        with amp_ctx(device, amp):
            out = pruner.model(x).float()
            with torch.no_grad():
                t = teacher(x).float()
        loss = F.kl_div(F.log_softmax(out, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)
        loss = loss + F.cross_entropy(out, t.argmax(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        pruner.accumulate(loss.detach())
        opt.step()
        pruner.step()
    return pruner.current_config()


def part_e(device: torch.device, dry: bool, table: Any, budget: Budget) -> dict[str, Any]:
    from revit import counting
    from revit.models import build_model
    from revit.presets import get_preset

    if table is None:
        raise RuntimeError("no latency table from part (c)")
    if dry:
        from revit.config import BlockDims, ViTConfig

        cfg = ViTConfig(embed_dim=64, blocks=(BlockDims(2, 8, 8, 64),) * 2, img_size=28, patch_size=7, in_chans=1,
                        num_classes=10, distilled=True)
        steps, batch, passes = 4, 4, 1
    else:
        cfg = get_preset("revit_deit_small_distilled_patch16_224")
        steps, batch, passes = 30, 32, 5
    torch.manual_seed(0)
    base_sd = build_model(cfg).state_dict()
    res: dict[str, Any] = {"model": cfg.name or "dry", "target_macs": 0.5, "steps": steps, "batch": batch}
    cfgs = {}
    for eta in (1.0, 4.0):
        for aware in (True, False):
            name = f"{'latency' if aware else 'macs'}_eta{eta:g}"
            cfgs[name] = _prune_once(base_sd, cfg, device, table, aware, steps, batch, eta)
            c = cfgs[name]
            res[name] = {"macs": counting.macs(c), "predicted_ms": round(table.predict(c).total_s * 1e3, 4),
                         "embed_dim": c.embed_dim, "blocks": [b.to_dict() for b in c.blocks]}
        if budget.left() < 60 and not dry:
            break
    backend = _backend("torch", device, "fp16" if device.type == "cuda" else "fp32", dry)
    loads = {n: backend.model(c, table.batch_size) for n, c in cfgs.items()}
    times: dict[str, list[float]] = {n: [] for n in loads}
    for _ in range(passes):
        for n, w in loads.items():
            w.time(3)
            times[n] += w.time(10)
    for n in loads:
        res[n]["measured_ms"] = round(statistics.median(times[n]) * 1e3, 4)
        loads[n].close()
    for eta in (1.0, 4.0):
        a, b = f"latency_eta{eta:g}", f"macs_eta{eta:g}"
        if a in res and b in res:
            res[f"speedup_eta{eta:g}"] = round(res[b]["measured_ms"] / res[a]["measured_ms"], 4)
    best = max(v for k, v in res.items() if k.startswith("speedup"))
    res["goal"] = f"latency-aware >= {GOALS['e_speedup']}x faster at equal MACs"
    res["met"] = best >= GOALS["e_speedup"]
    return res


# --- (f) NCCL ---------------------------------------------------------------------------------------------
def part_f(device: torch.device, dry: bool) -> dict[str, Any]:
    import torch.distributed as dist

    from revit.models import build_model
    from revit.presets import get_preset
    from revit.prune import GlobalPruner

    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        model = build_model(get_preset("revit_micro")).to(device)
        pruner = GlobalPruner(model, target_macs=0.8, total_steps=4, granularity="micro")
        ddp = nn.parallel.DistributedDataParallel(pruner.model, device_ids=[device.index] if device.index is not None
                                                  else None)
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
        for _ in range(4):
            x, y = torch.randn(16, 1, 28, 28, device=device), torch.randint(0, 10, (16,), device=device)
            loss = F.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            pruner.accumulate(loss.detach())
            opt.step()
            pruner.step()
        loss_sum = torch.tensor([1.0, 1.0], dtype=torch.float64)
        pruner._broadcast([], loss_sum)  # the broadcasts a multi-process run makes, on this backend
        return {"backend": dist.get_backend(), "pruning_steps": pruner.steps, "macs_ratio":
                round(pruner.trace.steps[-1].macs / pruner.trace.steps[0].macs, 4)}
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and the tables")
    ap.add_argument("--dry-run", action="store_true", help="CPU-safe parts at toy sizes on the CPU")
    ap.add_argument("--parts", default="a,b,c,d,e,f", help="which parts to run (comma-separated)")
    ap.add_argument("--seconds", type=float, default=290.0, help="total time cap (parts get shares of it)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (use --dry-run for the CPU-safe parts)", file=sys.stderr)
        return 2
    device = torch.device("cpu") if dry else torch.device("cuda", 0)
    if dry:
        torch.set_num_threads(1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    import timm

    meta = {"device": torch.cuda.get_device_name(0) if not dry else "cpu (dry run)", "torch": torch.__version__,
            "cuda": torch.version.cuda, "timm": timm.__version__, "dry_run": dry, "python": sys.version.split()[0],
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    rep = Report(Path(args.out), meta)
    parts = {p.strip() for p in args.parts.split(",")}
    share = {"a": 0.17, "b": 0.17, "c": 0.36, "d": 0.02, "e": 0.22, "f": 0.03}

    def cap(p: str) -> Budget:
        return Budget(max(5.0, share[p] * args.seconds))

    table: list[Any] = [None]
    if "a" in parts:
        rep.part("a_train_throughput", lambda: part_a(device, dry, cap("a")))
    if "b" in parts:
        rep.part("b_prune_overhead", lambda: part_b(device, dry, cap("b")))
    if "c" in parts:
        def c() -> dict[str, Any]:
            res, table[0] = build_and_validate("torch", device, "fp32" if dry else "fp16", Path(args.out), dry,
                                               cap("c"))
            return res
        rep.part("c_torch_table", c)
    if "d" in parts:
        def d() -> dict[str, Any]:
            try:
                import tensorrt  # noqa: F401
            except ImportError as e:
                return {"tensorrt_importable": False, "why": str(e)}
            if dry:
                return {"tensorrt_importable": True, "note": "not built in a dry run"}
            res, _ = build_and_validate("tensorrt", device, "fp16", Path(args.out), dry, cap("d"))
            return {"tensorrt_importable": True, **res}
        rep.part("d_tensorrt", d)
    if "e" in parts:
        rep.part("e_latency_vs_macs_pruning", lambda: part_e(device, dry, table[0], cap("e")))
    if "f" in parts:
        rep.part("f_nccl", lambda: part_f(device, dry))
    rep.data["meta"]["total_s"] = round(time.perf_counter() - t_start, 1)
    rep.save()
    print(f"wrote {rep.path} in {rep.data['meta']['total_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
