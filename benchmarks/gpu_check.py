"""One-GPU check of revit at its users' scale, crash-proof, in at most 8 minutes on an H200 (issues 9, 20).

Runs from the checkout (``PYTHONPATH=. python benchmarks/gpu_check.py --out DIR``) on synthetic data (no
dataset on the GPU machine).  Every part runs in its own subprocess with its own time cap (the caps add up
to ``--seconds``, 480 by default), so a CUDA fault, an abort or a hang in one part loses that part alone;
``DIR/gpu_check.json`` is rewritten after every part and a one-screen table (part, figure, goal, met) ends
the run.  A part that dies reports ``crashed`` (exit code or signal, and its output's tail), one that
outlives its cap ``timeout``:

(a) training images/s of ``revit_deit_small_patch16_224`` vs timm's ``deit_small_patch16_224`` in the
    same loop, fp32 and bf16 autocast (goal: revit >= 0.95x timm with bf16);
(b) a pruning step's overhead (GlobalPruner.accumulate + step, hessian) over a plain training step of
    DeiT-S, medians, CUDA-graph and eager scoring (goal <= 5%);
(c) a torch-backend fp16 table of the ``deit`` preset at batch 64 (<= 400 cells, CUDA graphs) and its
    validation on 30 random whole models: MAPE (goal <= 3%) and build time (full size in <= 10 min);
(d) whether TensorRT imports, and if so the same table on it;
(e) latency-aware vs MACs-only pruning of DeiT-S (distilled, the table's setting) to 50% MACs, the
    two dense models timed whole on the GPU (goal: latency-aware >= 5% faster);
(f) the NCCL path: a one-process NCCL group, DDP training with the pruner's broadcasts;
(g) ``revit prune --device cuda --amp bf16`` end to end (CLI, synthetic Fashion-MNIST files, dense export);
(h) one study trial on the GPU through the CLI (``revit search run SPEC --n-trials 1 --no-repeats``);
    optuna is not on the GPU machine's image: ``--wheels DIR`` installs the wheels in DIR (optuna and the
    dependencies the image lacks; ``benchmarks/gpu_wheels.sh`` downloads them) into a temporary folder;
(i) predicted vs measured speedup: DeiT-S (distilled, 198 tokens) pruned to 0.5 of the table's latency,
    exported dense and timed whole on the GPU as a user deploys it (fp16, eval, eager and CUDA graph),
    against the table's prediction (goal: within 5%).

(e) and (i) use the table that (c) wrote in DIR, else the H200 table committed under
``benchmarks/results/gpu/``.  Only (h) imports optuna, and only in the CLI subprocess it starts.

``--dry-run`` runs every part at toy sizes on the CPU (the test suite does this).  For tests,
``GPU_CHECK_FAULT=PART:MODE[,PART:MODE]`` makes a part fail at its start: ``raise`` (an exception),
``abort`` (``os.abort()``, as a CUDA fault kills a process) or ``hang`` (sleeps past its cap).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"a_bf16_ratio": 0.95, "b_overhead": 0.05, "c_mape": 0.03, "c_full_build_s": 600.0, "e_speedup": 1.05,
         "i_error": 0.05}
H200_TABLE = ROOT / "benchmarks" / "results" / "gpu" / "h200_torch_fp16_bs64_t198_cudagraphs.json"
FAULT_ENV = "GPU_CHECK_FAULT"


@dataclass(frozen=True)
class Part:
    """One part: its key, the name in the JSON, its hard cap in seconds on an H200 (start-up included)."""

    key: str
    name: str
    cap_s: float


PARTS = (Part("a", "a_train_throughput", 45), Part("b", "b_prune_overhead", 45), Part("c", "c_torch_table", 120),
         Part("d", "d_tensorrt", 15), Part("e", "e_latency_vs_macs_pruning", 70), Part("f", "f_nccl", 20),
         Part("g", "g_prune_cli_cuda_bf16", 50), Part("h", "h_study_trial", 60), Part("i", "i_predicted_speedup", 55))
BY_KEY = {p.key: p for p in PARTS}
STARTUP_S = 12.0  # a child's imports and CUDA start-up, taken off its cap for the part's own loops
DRY_CAP_S = 300.0  # per part in a dry run (a shared CPU is slow; nothing hangs there)


class Budget:
    """A part's time cap: ``left()`` seconds remain; loops stop early when it runs out."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


@dataclass
class Ctx:
    """What a part gets: device, dry run or not, its budget, the output folder and the wheel folder."""

    device: torch.device
    dry: bool
    budget: Budget
    out: Path
    wheels: Path | None


def write_json(path: Path, data: Any) -> None:
    """Temp file + rename (revit's one atomic writer): a reader never sees half a file, a kill never leaves one."""
    from revit._io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp_ctx(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    from revit.devices import autocast

    return autocast(device, amp)


def faults() -> dict[str, str]:
    """``GPU_CHECK_FAULT`` as {part key: mode}."""
    out = {}
    for item in os.environ.get(FAULT_ENV, "").split(","):
        if ":" in item:
            k, mode = item.split(":", 1)
            out[k.strip()] = mode.strip()
    return out


def inject_fault(key: str) -> None:
    """The fault asked for this part, if any (tests of the isolation between parts)."""
    mode = faults().get(key)
    if mode == "raise":
        raise RuntimeError(f"fault injected into part {key} ({FAULT_ENV})")
    if mode == "abort":
        import resource

        print(f"aborting part {key} ({FAULT_ENV})", flush=True)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file for a test's fault
        os.abort()
    if mode == "hang":
        print(f"hanging part {key} ({FAULT_ENV})", flush=True)
        time.sleep(10**6)
    if mode is not None:
        raise ValueError(f"{FAULT_ENV}: unknown mode {mode!r} (raise, abort, hang)")


# --- (a) training throughput ------------------------------------------------------------------------
def train_steps(model: nn.Module, device: torch.device, amp: str, batch: int, img: int, chans: int, classes: int,
                steps: int, warmup: int, budget: Budget, before: Callable[[], None] | None = None,
                after: Callable[[], None] | None = None) -> list[float]:
    """Seconds of each timed training step (forward, CE, backward, AdamW) on one synthetic batch.

    ``before``/``after`` run around the optimizer step (where a user calls accumulate() / step())."""
    import torch
    import torch.nn.functional as F

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
    import torch

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
    res["figure"] = f"revit/timm bf16 {res['ratio_bf16']:.3f}x, fp32 {res['ratio_off']:.3f}x"
    return res


# --- (b) pruning-step overhead ----------------------------------------------------------------------
def part_b(device: torch.device, dry: bool, budget: Budget) -> dict[str, Any]:
    """Median step time with GlobalPruner.accumulate/step vs without, on two copies of DeiT-S."""
    import copy

    import timm
    import torch

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
            p = GlobalPruner(copy.deepcopy(base).to(device), x, target_macs=0.5, criterion="hessian",
                             schedule=Schedule.fixed(interval=1, per_step=8), cuda_graphs=graphs)
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
    res["figure"] = ", ".join(f"{n} {res[f'{n}_overhead']:+.1%}" for n in pruners)
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


def _grid(dry: bool) -> Any:
    from revit.config import Setting
    from revit.latency.grid import WidthGrid, deit

    if not dry:
        return deit()
    return WidthGrid("dry", {"embed_dim": (32, 64), "heads": (1, 2), "qk_dim": (4, 8), "v_dim": (4, 8),
                             "mlp_dim": (16, 64)},
                     Setting(img_size=28, patch_size=7, in_chans=1, num_classes=10, distilled=True, depth=2))


def build_and_validate(backend_name: str, device: torch.device, dtype: str, out: Path, dry: bool,
                       budget: Budget) -> tuple[dict[str, Any], Any]:
    from revit.latency.accuracy import validate
    from revit.latency.profiler import BuildSettings, build_table, journal_path

    backend = _backend(backend_name, device, dtype, dry)
    width_grid = _grid(dry)
    cells = 48 if dry else 400
    settings = BuildSettings(batch=4 if dry else 64, max_cells=cells, warmup=1 if dry else 3,
                             repeats=2 if dry else 5, passes=1 if dry else 3)
    path = out / f"{backend_name}_{dtype}_table.json"
    for p in (path, journal_path(path)):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    table = build_table(width_grid, backend, path, settings, progress=False)
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
    res["figure"] = (f"MAPE {mape:.1%} (noise {res.get('noise_floor') or 0:.1%}), "
                     f"937 cells {res['full_size_build_s_937_cells']:.0f} s")
    return res, table


# --- (e) latency-aware vs MACs-only pruning -------------------------------------------------------------
def _prune_once(base_sd: dict[str, torch.Tensor], cfg: Any, device: torch.device, table: Any, latency_aware: bool,
                steps: int, batch: int, eta: float, target_latency: float | None = None) -> Any:
    """GlobalPruner on synthetic batches distilled from the unpruned model; the pruner at the end.

    The target is 50% MACs, or ``target_latency`` x the table's latency when given."""
    import torch
    import torch.nn.functional as F

    from revit.cost import LatencyCost, MacsCost
    from revit.models import build_model
    from revit.prune import GlobalPruner

    model = build_model(cfg).to(device)
    model.load_state_dict(base_sd)
    teacher = build_model(cfg).to(device).eval().requires_grad_(False)
    teacher.load_state_dict(base_sd)
    penalty = LatencyCost(table) if latency_aware else MacsCost()
    target: dict[str, float] = {"target_latency": target_latency} if target_latency else {"target_macs": 0.5}
    pruner = GlobalPruner(model, table=table, penalty=penalty, criterion="hessian", total_steps=steps, eta=eta,
                          **target)
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
    return pruner


def _dry_cfg() -> Any:
    """The toy distilled model of a dry run (inside the dry table's space)."""
    from revit.config import BlockDims, ViTConfig

    return ViTConfig(embed_dim=64, blocks=(BlockDims(2, 8, 8, 64),) * 2, img_size=28, patch_size=7, in_chans=1,
                     num_classes=10, distilled=True)


def part_e(device: torch.device, dry: bool, table: Any, budget: Budget) -> dict[str, Any]:
    import torch

    from revit import counting
    from revit.models import build_model
    from revit.presets import get_preset

    if dry:
        cfg = _dry_cfg()
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
            cfgs[name] = _prune_once(base_sd, cfg, device, table, aware, steps, batch, eta).current_config()
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
    res["figure"] = f"latency-aware {best:.3f}x MACs-only"
    return res


# --- (f) NCCL ---------------------------------------------------------------------------------------------
def part_f(device: torch.device, dry: bool) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch import nn

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


# --- shared by (e), (g), (h), (i) ---------------------------------------------------------------------
def load_table(ctx: Ctx) -> tuple[Any, str]:
    """The table of part (c) in the output folder, else the committed H200 table (a dry run builds a toy one)."""
    from revit.latency.table import LatencyTable

    for name in ("torch_fp16_table.json", "torch_fp32_table.json"):
        if (ctx.out / name).is_file():
            return LatencyTable.load(ctx.out / name), name
    if not ctx.dry and H200_TABLE.is_file():
        return LatencyTable.load(H200_TABLE), str(H200_TABLE.relative_to(ROOT))
    if ctx.dry:
        from revit.latency.profiler import BuildSettings, build_table

        path = ctx.out / "dry_fallback_table.json"
        settings = BuildSettings(batch=4, max_cells=48, warmup=1, repeats=2, passes=1)
        backend = _backend("torch", ctx.device, "fp32", True)
        return build_table(_grid(True), backend, path, settings, progress=False, overwrite=True), path.name
    raise RuntimeError(f"no latency table: part (c) wrote none in {ctx.out} and {H200_TABLE} is missing")


def synthetic_fashion_mnist(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random 28x28 images in Fashion-MNIST's IDX files (class-dependent brightness, so a trial can learn)."""
    import gzip
    import struct

    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = (rng.integers(0, 120, (n, 28, 28)) + 12 * y[:, None, None]).astype(np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBB3I", 0, 8, 3, n, 28, 28) + x.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBI", 0, 8, 1, n) + y.tobytes())
    return folder


def run_cli(args: list[str], env: dict[str, str], budget: Budget, what: str) -> subprocess.CompletedProcess[str]:
    """``python -m revit ARGS`` (or another command) from the checkout; raises with its output's tail on failure."""
    cmd = [sys.executable, "-m", "revit", *args] if args[0] != sys.executable else args
    print("+", " ".join(cmd[1:]), flush=True)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(5.0, budget.left()))
    print(r.stdout[-1500:], r.stderr[-1500:], sep="\n", flush=True)
    if r.returncode != 0:
        raise RuntimeError(f"{what} exited with {r.returncode}: {(r.stderr or r.stdout)[-1500:]}")
    return r


def child_env(**extra: str) -> dict[str, str]:
    pp = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + pp if pp else ""), **extra}


# --- (g) revit prune on the GPU, end to end -------------------------------------------------------------
def part_g(ctx: Ctx) -> dict[str, Any]:
    """``revit prune --device cuda --amp bf16`` on synthetic Fashion-MNIST files; the dense export loaded back."""
    import torch

    from revit.config import ViTConfig
    from revit.models import build_model
    from revit.models.checkpoint import load_checkpoint

    n_train, n_held, batch = (256, 64, 64) if ctx.dry else (8192, 256, 256)
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_fashion_mnist(Path(tmp) / "fashion-mnist", n_train, n_held)
        run = Path(tmp) / "prune"
        t0 = time.perf_counter()
        run_cli(["prune", "--model", "revit_micro", "--data", "fashion-mnist", "--train-limit", str(n_train),
                 "--val-size", str(n_held), "--test-limit", str(n_held), "--target-macs", "0.5",
                 "--batch-size", str(batch),
                 "--device", ctx.device.type, "--amp", "bf16", "--out", str(run), "--no-progress"],
                child_env(REVIT_FASHION_MNIST=str(data)), ctx.budget, "revit prune")
        cli_s = time.perf_counter() - t0
        metrics = json.loads((run / "metrics.json").read_text())
        cfg = ViTConfig.load(run / "pruned.yaml")
        dense = build_model(cfg)
        load_checkpoint(dense, run / "pruned.safetensors")
        dense = dense.to(ctx.device).eval()
        with torch.no_grad(), amp_ctx(ctx.device, "bf16"):
            out = dense(torch.randn(8, cfg.in_chans, cfg.img_size, cfg.img_size, device=ctx.device)).float()
    diff = float(metrics["dense_vs_masked_max_abs_diff"])
    res = {"cli_s": round(cli_s, 1), "device": metrics["device"], "amp": metrics["amp"], "steps": metrics["steps"],
           "macs_ratio": round(metrics["macs_ratio"], 4), "dense_vs_masked_max_abs_diff": diff,
           "reloaded_forward_finite": bool(torch.isfinite(out).all()), "test_accuracy": metrics.get("test_accuracy")}
    res["goal"] = "runs end to end; dense export == masked model (max |diff| <= 1e-2), reloads and runs"
    res["met"] = diff <= 1e-2 and res["reloaded_forward_finite"] and metrics["device"].startswith(ctx.device.type)
    res["figure"] = f"{cli_s:.0f} s, MACs x{res['macs_ratio']:.2f}, dense-masked {diff:.1e}"
    return res


# --- (h) one study trial ------------------------------------------------------------------------------
def install_wheels(wheels: Path, site: Path) -> list[str]:
    """``pip install --no-index --no-deps --target SITE WHEELS/*.whl``: optuna and what the image lacks."""
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    if not files:
        raise RuntimeError(f"--wheels {wheels}: no .whl files there (benchmarks/gpu_wheels.sh downloads them)")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--disable-pip-version-check", "--target", str(site), *files], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"pip could not install the wheels of {wheels}: {(r.stderr or r.stdout).strip()[-800:]}")
    return [Path(f).name for f in files]


STUDY_COUNT = """import json, sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
out = {}
for s in optuna.get_all_study_summaries(sys.argv[1]):
    st = optuna.load_study(study_name=s.study_name, storage=sys.argv[1])
    out[s.study_name] = {t.state.name: sum(1 for u in st.trials if u.state == t.state) for t in st.trials}
print(json.dumps({"optuna": optuna.__version__, "studies": out}))
"""


def part_h(ctx: Ctx) -> dict[str, Any]:
    """``revit search run SPEC --n-trials 1 --no-repeats`` on the device (the CLI: it survives search rewrites)."""
    from revit._io import dump_yaml, load_yaml

    with tempfile.TemporaryDirectory() as tmp:
        env = child_env()
        installed: list[str] = []
        if ctx.wheels is not None:
            site = Path(tmp) / "site"
            installed = install_wheels(ctx.wheels, site)
            env["PYTHONPATH"] = env["PYTHONPATH"] + os.pathsep + str(site)
        probe = subprocess.run([sys.executable, "-c", "import optuna; print(optuna.__version__)"], env=env,
                               capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            raise RuntimeError("optuna is not importable here: pass --wheels DIR (see benchmarks/gpu_wheels.sh); "
                               + probe.stderr.strip().splitlines()[-1])
        n_train, n_held = (256, 128) if ctx.dry else (4096, 512)
        env["REVIT_FASHION_MNIST"] = str(synthetic_fashion_mnist(Path(tmp) / "fashion-mnist", n_train, n_held))
        spec = load_yaml(ROOT / "search" / "smoke.yaml")
        space = spec["space"][:1] if isinstance(spec["space"], list) else spec["space"]  # one family
        spec.update(name="gpu-check", n_trials=1, seeds=[0], baselines=[], space=space,
                    data={"source": "fashion-mnist", "train_limit": n_train, "val_size": n_held // 2,
                          "test_limit": n_held},
                    train={**spec.get("train", {}), "epochs": 1, "batch_size": 128})
        spec_path = Path(tmp) / "gpu-check.yaml"
        spec_path.write_text(dump_yaml(spec))
        storage = f"sqlite:///{tmp}/study.db"
        t0 = time.perf_counter()
        run_cli(["search", "run", str(spec_path), "--storage", storage, "--n-trials", "1", "--no-repeats",
                 "--device", ctx.device.type, "--amp", "off" if ctx.dry else "bf16", "--quiet"], env, ctx.budget,
                "revit search run")
        run_s = time.perf_counter() - t0
        r = run_cli([sys.executable, "-c", STUDY_COUNT, storage], env, ctx.budget, "reading the study")
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    complete = sum(c.get("COMPLETE", 0) for c in counts["studies"].values())
    res = {"wheels_installed": installed, "optuna": counts["optuna"], "studies": counts["studies"],
           "complete_trials": complete, "run_s": round(run_s, 1), "device": ctx.device.type}
    res["goal"] = "one study trial completes on the device"
    res["met"] = complete >= 1
    res["figure"] = f"{complete} trial(s) complete in {run_s:.0f} s (optuna {counts['optuna']})"
    return res


# --- (i) predicted vs measured speedup --------------------------------------------------------------------
def time_models(models: dict[str, Any], x: Any, device: torch.device, rounds: int, n: int, budget: Budget,
                graphs: bool) -> dict[str, list[float]]:
    """Seconds per call of each model on ``x`` (inference mode), models interleaved ABAB, ``n`` calls per round.

    ``graphs``: each model's call captured once in a CUDA graph and replayed (how the table was measured)."""
    import torch

    calls: dict[str, Callable[[], Any]] = {}
    for name, m in models.items():
        if graphs:
            with torch.inference_mode():
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        m(x)
                torch.cuda.current_stream().wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    m(x)
            calls[name] = g.replay
        else:
            calls[name] = lambda m=m: m(x)
    got: dict[str, list[float]] = {k: [] for k in calls}
    names = list(calls)
    with torch.inference_mode():
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                for _ in range(2):
                    calls[name]()
                sync(device)
                t0 = time.perf_counter()
                for _ in range(n):
                    calls[name]()
                sync(device)
                got[name].append((time.perf_counter() - t0) / n)
            if budget.left() < 0 and r >= 2:
                break
    return got


def part_i(ctx: Ctx) -> dict[str, Any]:
    """DeiT-S (distilled) pruned to 0.5 of the table's latency, dense, timed whole against the unpruned model."""
    import torch

    from revit.models import build_model
    from revit.presets import get_preset

    table, source = load_table(ctx)
    cfg = _dry_cfg() if ctx.dry else get_preset("revit_deit_small_distilled_patch16_224")
    # the toy model's latency is mostly fixed parts and its toy table noisy, so no latency target is sure to be
    # reachable: a dry run prunes it to 50% MACs (latency penalty), since the pipeline is what it checks
    steps, batch, target = (4, 4, None) if ctx.dry else (30, 32, 0.5)
    torch.manual_seed(0)
    base = build_model(cfg)
    pruner = _prune_once(base.state_dict(), cfg, ctx.device, table, True, steps, batch, 1.0, target_latency=target)
    dense, _ = pruner.export()
    pcfg = dense.config
    pred_base, pred_pruned = table.predict(cfg).total_s, table.predict(pcfg).total_s
    dtype = torch.float16 if ctx.device.type == "cuda" else torch.float32
    models = {"base": base.to(ctx.device, dtype).eval(), "pruned": dense.to(ctx.device, dtype).eval()}
    x = torch.randn(table.batch_size, cfg.in_chans, cfg.img_size, cfg.img_size, device=ctx.device, dtype=dtype)
    rounds, n = (3, 2) if ctx.dry else (20, 20)
    res: dict[str, Any] = {"table": source, "batch": table.batch_size, "dtype": str(dtype).split(".")[-1],
                           "target": f"{target} x latency" if target else "0.5 x MACs", "reached": pruner.done,
                           "pruning_steps": pruner.steps,
                           "predicted_ms": {"base": pred_base * 1e3, "pruned": pred_pruned * 1e3},
                           "predicted_speedup": round(pred_base / pred_pruned, 4),
                           "pruned_config": pcfg.to_dict()}
    modes = ["eager"] + (["cuda_graphs"] if ctx.device.type == "cuda" else [])
    for mode in modes:
        got = time_models(models, x, ctx.device, rounds, n, Budget(ctx.budget.left() / (len(modes) + 1)),
                          mode == "cuda_graphs")
        med = {k: statistics.median(v) for k, v in got.items()}
        per_round = sorted(a / b for a, b in zip(got["base"], got["pruned"], strict=False))
        res[mode] = {"measured_ms": {k: round(v * 1e3, 4) for k, v in med.items()},
                     "measured_speedup": round(med["base"] / med["pruned"], 4),
                     "per_round_speedup_range": [round(per_round[0], 4), round(per_round[-1], 4)],
                     "error": round(pred_base / pred_pruned / (med["base"] / med["pruned"]) - 1, 4)}
    graphs = bool((table.metadata.get("backend_settings") or {}).get("cuda_graphs"))
    judged = "cuda_graphs" if graphs and "cuda_graphs" in res else "eager"
    res["judged_on"] = judged
    res["goal"] = f"|predicted/measured speedup - 1| <= {GOALS['i_error']:.0%} ({judged}, the table's protocol)"
    res["met"] = abs(res[judged]["error"]) <= GOALS["i_error"]
    res["figure"] = (f"predicted {res['predicted_speedup']:.3f}x, measured " +
                     ", ".join(f"{res[m]['measured_speedup']:.3f}x {m}" for m in modes))
    return res


# --- (d) TensorRT, (f) NCCL as parts ----------------------------------------------------------------------
def part_d(ctx: Ctx) -> dict[str, Any]:
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        return {"tensorrt_importable": False, "why": str(e), "goal": "a TensorRT table when TensorRT imports",
                "met": None, "figure": "TensorRT not importable"}
    if ctx.dry:
        return {"tensorrt_importable": True, "note": "not built in a dry run", "met": None, "figure": "importable"}
    res, _ = build_and_validate("tensorrt", ctx.device, "fp16", ctx.out, ctx.dry, ctx.budget)
    return {"tensorrt_importable": True, **res}


def part_f_ctx(ctx: Ctx) -> dict[str, Any]:
    res = part_f(ctx.device, ctx.dry)
    res.update(goal="one-process DDP with the pruner's broadcasts runs", met=True,
               figure=f"{res['backend']}: {res['pruning_steps']} pruning steps, MACs x{res['macs_ratio']:.2f}")
    return res


def part_c(ctx: Ctx) -> dict[str, Any]:
    res, _ = build_and_validate("torch", ctx.device, "fp32" if ctx.dry else "fp16", ctx.out, ctx.dry, ctx.budget)
    return res


def part_e_ctx(ctx: Ctx) -> dict[str, Any]:
    table, source = load_table(ctx)
    return {"table": source, **part_e(ctx.device, ctx.dry, table, ctx.budget)}


RUNNERS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "a": lambda c: part_a(c.device, c.dry, c.budget), "b": lambda c: part_b(c.device, c.dry, c.budget),
    "c": part_c, "d": part_d, "e": part_e_ctx, "f": part_f_ctx, "g": part_g, "h": part_h, "i": part_i}


# --- one part, in its own process ----------------------------------------------------------------------------
def child(key: str, out: Path, result: Path, cap: float, dry: bool, wheels: Path | None) -> int:
    """Run part ``key`` and write its result (status ok or error) to ``result``; a crash writes nothing."""
    t0 = time.perf_counter()
    budget = Budget(max(5.0, cap - STARTUP_S))
    res: dict[str, Any]
    try:
        inject_fault(key)
        import torch

        sys.path.insert(0, str(ROOT))
        if not dry and not torch.cuda.is_available():
            raise RuntimeError("no CUDA GPU here (use --dry-run for the CPU-safe parts)")
        device = torch.device("cpu") if dry else torch.device("cuda", 0)
        if dry:
            torch.set_num_threads(1)
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        res = RUNNERS[key](Ctx(device, dry, budget, out, wheels))
        res["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - the part's error is its result
        res = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000],
               "traceback": traceback.format_exc()[-3000:]}
    import timm
    import torch

    res["env"] = {"device": torch.cuda.get_device_name(0) if not dry and torch.cuda.is_available() else "cpu",
                  "torch": torch.__version__, "cuda": torch.version.cuda, "timm": timm.__version__,
                  "python": sys.version.split()[0]}
    res["search_modules"] = sorted(m for m in sys.modules if m.startswith(("optuna", "revit.search")))
    res["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(result, res)
    return 0


# --- the parent: parts one by one, JSON after each, summary ---------------------------------------------------
def run_part(part: Part, cap: float, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """``part`` in a subprocess (its own process group), killed at ``cap`` seconds; its result or why none came."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", part.key, "--out", str(args.out),
               "--result", str(result), "--cap", str(cap)]
        cmd += ["--dry-run"] if args.dry_run else []
        cmd += ["--wheels", str(args.wheels)] if args.wheels else []
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                env=child_env(PYTHONUNBUFFERED="1"), start_new_session=True)
        lines: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                print(f"[{part.key}] {line}", end="", flush=True)
                log.write(f"[{part.key}] {line}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            rc = proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        reader.join(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # anything the part left running (CLI subprocesses)
            os.killpg(proc.pid, signal.SIGKILL)
        if result.is_file():
            res = json.loads(result.read_text())
        elif timed_out:
            res = {"status": "timeout", "error": f"killed at its cap of {cap:.0f} s"}
        else:
            why = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
            res = {"status": "crashed", "error": f"the part's process died ({why}) without a result",
                   "returncode": rc}
        res["cap_s"] = round(cap, 1)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        if res["status"] != "ok":
            res["output_tail"] = "".join(lines)[-3000:]
        return res


def summary(parts: dict[str, Any]) -> str:
    """One line per part: status, figure, goal, met."""
    rows = [("part", "met", "status", "figure", "goal")]
    for name, r in parts.items():
        met = r.get("met")
        rows.append((name[:22], "-" if met is None or r.get("status") != "ok" else ("yes" if met else "NO"),
                     r.get("status", "?"), str(r.get("figure") or r.get("error", ""))[:52],
                     str(r.get("goal", ""))[:44]))
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(f"{a:<{w[0]}}  {b:<{w[1]}}  {c:<{w[2]}}  {d:<{w[3]}}  {e}" for a, b, c, d, e in rows)


def caps(args: argparse.Namespace) -> dict[str, float]:
    """Hard cap per part: its share of ``--seconds`` (480 s: the table above), ``--cap K=S`` overrides."""
    total = sum(p.cap_s for p in PARTS)
    out = {p.key: (DRY_CAP_S if args.dry_run else p.cap_s * args.seconds / total) for p in PARTS}
    for item in args.cap:
        k, _, v = item.partition("=")
        if k not in BY_KEY or not v:
            raise SystemExit(f"gpu_check: --cap takes PART=SECONDS with PART in {','.join(BY_KEY)}, got {item!r}")
        out[k] = float(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, its log and the tables")
    ap.add_argument("--dry-run", action="store_true", help="every part at toy sizes on the CPU")
    ap.add_argument("--parts", default=",".join(BY_KEY), help="which parts to run (comma-separated)")
    ap.add_argument("--seconds", type=float, default=sum(p.cap_s for p in PARTS),
                    help="the parts' caps add up to this (default 480)")
    ap.add_argument("--cap", action="append", default=[], metavar="PART=SECONDS", help="one part's cap")
    ap.add_argument("--wheels", type=Path, help="folder of wheels (optuna and its dependencies) for part (h)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    args.wheels = args.wheels.resolve() if args.wheels else None
    if args.child:
        return child(args.child, args.out, args.result, float(args.cap[0]), args.dry_run, args.wheels)
    keys = [k.strip() for k in args.parts.split(",") if k.strip()]
    bad = [k for k in keys if k not in BY_KEY]
    if bad:
        print(f"gpu_check: unknown part(s) {','.join(bad)}; parts are {','.join(BY_KEY)}", file=sys.stderr)
        return 2
    cap = caps(args)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data: dict[str, Any] = {"meta": {"dry_run": args.dry_run, "python": sys.version.split()[0],
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "caps_s": {k: round(cap[k], 1)
                                                                                              for k in keys},
                                     "fault": os.environ.get(FAULT_ENV)}, "parts": {}}
    path = args.out / "gpu_check.json"
    write_json(path, data)
    with open(args.out / "gpu_check.log", "w") as log:
        for k in keys:
            part = BY_KEY[k]
            print(f"--- {part.name} (cap {cap[k]:.0f} s)", flush=True)
            res = run_part(part, cap[k], args, log)
            log.flush()
            data["parts"][part.name] = res
            if "env" in res and "env" not in data["meta"]:
                data["meta"]["env"] = res["env"]
            data["meta"]["total_s"] = round(time.perf_counter() - t_start, 1)
            write_json(path, data)
            print(json.dumps({k2: v for k2, v in res.items() if k2 not in ("traceback", "output_tail", "env")},
                             default=str)[:2000], flush=True)
    table = summary(data["parts"])
    print(f"\n{table}\nwrote {path} in {data['meta']['total_s']} s", flush=True)
    return 0 if all(r["status"] == "ok" for r in data["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
