"""Pruning quality on Fashion-MNIST: revit criteria vs Torch-Pruning, equal training budgets (issue 4).

One base model (a timm ``VisionTransformer`` of the revit_micro shape: patch 7, 8 blocks, embed 96,
4 heads, MLP 384, 28x28x1, 10 classes, converted to revit by ``from_timm`` so every method starts
from the same weights) is trained once and cached.  It is pruned to each MACs ratio by

- revit ``hessian``, ``nvit-code``, ``magnitude``: ``revit.prune.GlobalPruner`` with
  ``total_steps`` = the pruning phase's optimizer steps and ``prune_steps`` = ``--prune-steps``
  (global, MACs penalty eta 1), inside this script's own loop: KL to the unpruned model + CE,
  AdamW, gradient clipping 1; the phase stops at the first pruning step under the target;
- ``uniform``: Torch-Pruning local pruning (the same ratio in every layer), L2 magnitude;
- ``tp-taylor`` / ``tp-hessian``: Torch-Pruning 1.6 global ``GroupTaylorImportance`` /
  ``GroupHessianImportance``, from gradients of ``--calib-batches`` batches;
- ``tp-isomorphic``: Torch-Pruning's Isomorphic pruning (``isomorphic=True``: global ranking
  within each group of isomorphic structures), Taylor importance.

Torch-Pruning runs with its defaults (``max_pruning_ratio`` 1.0) on every structure its timm ViT
example prunes (EMB, MLP hidden width, head dims alike in all heads; only the classifier
ignored).  It prunes in one shot; its global pruning ratio is searched over (0, 1] - a grid scan
to the first ratio whose MACs are <= the target, then bisection below it - so that the MACs land
at the largest value <= the target (the same stopping rule as revit's).  The search scans because
the MACs are not monotone in the ratio (Torch-Pruning skips a group whose every channel falls
under the global threshold, so a larger ratio can keep EMB whole).  A pruned model that revit's
config cannot express (a width pruned to zero, say) keeps its timm form; its MACs are then counted
by Torch-Pruning's ``count_ops_and_params`` (ratio to the same counter on the base) and the table
marks it.  Training budgets count
optimizer steps after the base: revit's pruning phase (``--prune-share`` of the shortest budget)
plus its fine-tune equals the peers' fine-tune.  Every fine-tune: AdamW, cosine from ``--lr``,
CE + KL (T=3) to the unpruned base.  Each budget fine-tunes from the same pruned model.

Reported per method and ratio (mean +- std over seeds): MACs (NViT convention) and params, latency
measured with onnxruntime CPU (1 thread, thread clock, batch 64, interleaved with the base,
medians), test top-1 right after pruning (revit: at the end of its pruning phase) and after each
budget.  Everything is cached under ``--out``: the base, each pruned model, and one JSON per
(method, ratio, seed), so a killed run resumes.

Full scale (about 3 h on 2 free cores):
    python benchmarks/prune_quality.py --base-epochs 15 --seeds 0,1,2
Reduced scale used for the README figures (``--mirror`` keeps the small result files to commit; runs found there
are not re-run, so a run resumes on another machine):
    python benchmarks/prune_quality.py --out runs/bench-prune-quality-12k --base-epochs 6 --train-limit 12000 \
        --val-size 2000 --test-limit 5000 --seeds 0,1,2 --prune-steps 6 --mirror benchmarks/results/prune-quality-12k
NViT's whole recipe (issue 29): ``--teacher resnet10t`` fine-tunes every method alike with both teachers (the
unpruned base and a timm CNN trained first by ``revit train resnet10t`` on the same images, or
``--teacher-weights W``); its settings differ, so it needs its own ``--out`` (copy ``OUT/base`` over to reuse
the base).  Full scale, 25% MACs:
    python benchmarks/prune_quality.py --out runs/bench-prune-quality-whole --base-epochs 15 --seeds 0,1,2 \
        --ratios 0.25 --teacher resnet10t --mirror benchmarks/results/prune-quality-whole
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from revit._io import atomic_write_text
from revit.devices import size
from revit.models.checkpoint import save_torch, save_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))

REVIT_METHODS = ("hessian", "nvit-code", "magnitude")
TP_METHODS = ("uniform", "tp-taylor", "tp-hessian", "tp-isomorphic")
ALL_METHODS = REVIT_METHODS + TP_METHODS
# settings that change results: a cache folder holds one combination only
RESULT_KEYS = ("base_epochs", "train_limit", "val_size", "test_limit", "batch_size", "base_lr", "lr", "budgets",
               "prune_share", "prune_steps", "calib_batches", "tp_iters", "tp_max_ratio", "revit_pruner")
TP_MAX_RATIO = 1.0  # Torch-Pruning's default max_pruning_ratio, and the top of the ratio search
TP_GRID = 50  # grid points of the ratio scan over (0, TP_MAX_RATIO]


def log(msg: str) -> None:
    """Timestamped progress line on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (revit's one atomic writer)."""
    atomic_write_text(path, json.dumps(obj, indent=1))


def config_of(model: nn.Module) -> Any:
    """The ViTConfig of a ReViT (typed loosely: nn.Module attributes read as Tensor | Module)."""
    return cast(Any, model).config


def micro_timm() -> nn.Module:
    """The timm ViT of the revit_micro shape (what Torch-Pruning can trace)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=96, depth=8,
                             num_heads=4, mlp_ratio=4.0, qkv_bias=True)


def is_revit(model: nn.Module) -> bool:
    """Whether ``model`` is a revit model (else a pruned timm model revit's config cannot express)."""
    return hasattr(model, "config")


def save_model(model: nn.Module, path: Path) -> None:
    """Config YAML + safetensors next to each other (atomic weights); a timm fallback model is pickled whole."""
    if not is_revit(model):
        save_torch(model, path.with_suffix(".pt"))
        return
    config_of(model).save(path.with_suffix(".yaml"))
    save_weights(model, path)


def saved(path: Path) -> bool:
    """Whether :func:`save_model` wrote ``path`` (either form)."""
    return path.is_file() or path.with_suffix(".pt").is_file()


def load_model(path: Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_model`."""
    from revit.config import ViTConfig
    from revit.models import build_model

    if path.with_suffix(".pt").is_file():
        return cast(nn.Module, torch.load(path.with_suffix(".pt"), weights_only=False))
    return build_model(ViTConfig.load(path.with_suffix(".yaml")), checkpoint=path)


def fetch(ds: Any, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch by index (fast path for a Subset of a TensorDataset, as revit's data splits are)."""
    from torch.utils.data import Subset, TensorDataset, default_collate

    if isinstance(ds, Subset) and isinstance(ds.dataset, TensorDataset):
        rows = torch.as_tensor([ds.indices[i] for i in idx])
        return ds.dataset.tensors[0][rows], ds.dataset.tensors[1][rows]
    x, y = default_collate([ds[i] for i in idx])
    return x, y


# --- base --------------------------------------------------------------------------------------
def get_base(args: argparse.Namespace, splits: Any, out: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Train (or load the cached) base model; returns it and its summary."""
    from revit.models import from_timm
    from revit.train_loop import TrainConfig, evaluate, train

    path, info_path = out / "base" / "model.safetensors", out / "base" / "base.json"
    if path.is_file() and info_path.is_file():
        return load_model(path), json.loads(info_path.read_text())
    torch.manual_seed(0)
    model = from_timm(micro_timm())
    log(f"training the base: {args.base_epochs} epochs on {size(splits.train)} images")
    t0 = time.perf_counter()
    tc = TrainConfig(epochs=args.base_epochs, batch_size=args.batch_size, lr=args.base_lr, seed=0)
    hist = train(model, splits.train, splits.val if size(splits.val) else None, tc, out_dir=out / "base" / "train",
                 resume=True, progress=False)
    info = {"epochs": args.base_epochs, "train_images": size(splits.train), "test_images": size(splits.test),
            "test_top1": evaluate(model, splits.test), "history": hist.history,
            "seconds": time.perf_counter() - t0}
    save_model(model, path)
    write_json(info_path, info)
    return model, info


# --- Torch-Pruning -----------------------------------------------------------------------------
def _tp_hessian_cls() -> type:
    """GroupHessianImportance with a working accumulate_grad.

    Torch-Pruning 1.6.1 tests ``name not in self._accu_grad`` on a dict keyed by the parameter, so
    every sample *replaces* the accumulated squared gradient and only the last sample counts; this
    subclass sums over all samples as documented.
    """
    import torch_pruning as tp

    class FixedHessian(tp.importance.GroupHessianImportance):
        def accumulate_grad(self, model: nn.Module) -> None:
            for p in model.parameters():
                if p.grad is None:
                    continue
                g2 = p.grad.detach().pow(2)
                if p in self._accu_grad:
                    self._accu_grad[p] += g2
                    self._counter[p] += 1
                else:
                    self._accu_grad[p] = g2.clone()
                    self._counter[p] = 1

    return FixedHessian


def _tp_importance(method: str) -> Any:
    import torch_pruning as tp

    if method in ("tp-taylor", "tp-isomorphic"):
        return tp.importance.GroupTaylorImportance()
    if method == "tp-hessian":
        return _tp_hessian_cls()()
    return tp.importance.GroupMagnitudeImportance(p=2)


def _calibrate(model: nn.Module, imp: Any, method: str, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Gradients for Taylor (summed batch gradients) or per-sample squared gradients for Hessian."""
    model.zero_grad()
    if method in ("tp-taylor", "tp-isomorphic"):
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()
    elif method == "tp-hessian":
        imp.zero_grad()
        for x, y in batches:
            for i in range(len(y)):  # per-sample loss, as Torch-Pruning's example (one forward each)
                model.zero_grad()
                F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
                imp.accumulate_grad(model)


def _clone_with_grads(model: nn.Module, imp: Any, method: str) -> tuple[nn.Module, Any]:
    """A deep copy of the model carrying the gradients / Hessian accumulators of the original."""
    m = copy.deepcopy(model)
    src = dict(model.named_parameters())
    new_imp = _tp_importance(method)
    for n, p in m.named_parameters():
        g = src[n].grad
        p.grad = None if g is None else g.clone()
        if method == "tp-hessian" and src[n] in imp._accu_grad:
            new_imp._accu_grad[p] = imp._accu_grad[src[n]].clone()
            new_imp._counter[p] = imp._counter[src[n]]
    return m, new_imp


def _tp_trial(timm_model: nn.Module, imp: Any, method: str, ratio: float) -> nn.Module:
    """Prune a copy by Torch-Pruning at pruning ratio ``ratio``: the revit model, or the timm one if
    revit's config cannot express it."""
    import torch_pruning as tp
    from timm.models.vision_transformer import Attention

    from revit.models import from_timm

    m, imp2 = _clone_with_grads(timm_model, imp, method)
    num_heads = {a.qkv: a.num_heads for a in m.modules() if isinstance(a, Attention)}
    pruner = tp.pruner.MetaPruner(m, torch.randn(1, 1, 28, 28), importance=imp2, global_pruning=method != "uniform",
                                  isomorphic=method == "tp-isomorphic", pruning_ratio=ratio,
                                  max_pruning_ratio=TP_MAX_RATIO, ignored_layers=[m.head], num_heads=num_heads,
                                  prune_num_heads=False, prune_head_dims=True)
    for g in pruner.step(interactive=True):
        g.prune()
    for a in m.modules():
        if isinstance(a, Attention):
            a.num_heads = pruner.num_heads[a.qkv]
            a.head_dim = a.qkv.out_features // (3 * a.num_heads)
            a.attn_dim = a.num_heads * a.head_dim
            a.scale = a.head_dim**-0.5
    try:
        return from_timm(m)
    except Exception:  # a width revit's config cannot express: keep the timm model, counted by Torch-Pruning
        for p in m.parameters():
            p.grad = None
        return m


def tp_macs(model: nn.Module) -> float:
    """MACs by Torch-Pruning's own counter (``count_ops_and_params``) on one 28x28x1 image."""
    import torch_pruning as tp

    return float(tp.utils.count_ops_and_params(model, torch.randn(1, 1, 28, 28))[0])


def tp_prune(base: nn.Module, method: str, ratio: float, batches: list[tuple[torch.Tensor, torch.Tensor]],
             iters: int) -> tuple[nn.Module, dict[str, Any]]:
    """One-shot Torch-Pruning to the largest MACs <= ``ratio`` x base.

    The MACs are not monotone in Torch-Pruning's ratio, so: scan a grid over (0, TP_MAX_RATIO] up to the
    first ratio whose MACs are <= the target, then bisect between it and the grid point below.
    """
    import warnings

    from revit import counting
    from revit.models import to_timm

    base_macs = counting.macs(config_of(base))
    timm_model = to_timm(copy.deepcopy(base)).train()
    tp_base = tp_macs(timm_model)
    imp = _tp_importance(method)
    _calibrate(timm_model, imp, method, batches)

    def macs_of(m: nn.Module) -> float:
        return counting.macs(config_of(m)) / base_macs if is_revit(m) else tp_macs(m) / tp_base

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best: nn.Module | None = None
        lo, hi, trials = 0.0, TP_MAX_RATIO, 0
        lowest: tuple[float, float] = (math.inf, TP_MAX_RATIO)
        for i in range(1, TP_GRID + 1):
            r = TP_MAX_RATIO * i / TP_GRID
            cand = _tp_trial(timm_model, imp, method, r)
            trials += 1
            m = macs_of(cand)
            lowest = min(lowest, (m, r))
            if m <= ratio:
                best, hi = cand, r
                break
            lo = r
        reached = best is not None
        if best is None:  # never reached: keep the smallest model the search saw
            best, hi = _tp_trial(timm_model, imp, method, lowest[1]), lowest[1]
        else:
            for _ in range(iters):
                mid = (lo + hi) / 2
                cand = _tp_trial(timm_model, imp, method, mid)
                trials += 1
                if macs_of(cand) <= ratio:
                    best, hi = cand, mid
                else:
                    lo = mid
    info: dict[str, Any] = {"pruning_ratio": hi, "reached_target": reached, "tp_trials": trials,
                            "max_pruning_ratio": TP_MAX_RATIO}
    if not is_revit(best):
        info.update(macs_counter="torch-pruning", macs_tp=tp_macs(best), macs_tp_base=tp_base,
                    params_tp=sum(p.numel() for p in best.parameters()))
    return best, info


# --- revit -------------------------------------------------------------------------------------
def revit_prune(base: nn.Module, teacher: nn.Module, method: str, ratio: float, splits: Any, seed: int,
                args: argparse.Namespace, prune_batches: int) -> tuple[nn.Module, dict[str, Any]]:
    """revit's pruning phase: ``GlobalPruner(schedule=Schedule.by_budget(prune_batches, --prune-steps))`` inside this
    script's loop (CE + KL(T=3) to the base, AdamW, clip 1), until the first pruning step under the target."""
    from revit.devices import GlobalBatchSampler
    from revit.prune import CostTarget, GlobalPruner, Schedule
    from revit.train_loop import TrainConfig, distillation_loss, make_optimizer

    torch.manual_seed(seed)
    pruner = GlobalPruner(copy.deepcopy(base).train(), target=CostTarget.macs(ratio), criterion=method,
                          schedule=Schedule.by_budget(prune_batches, args.prune_steps), eta=1.0, seed=seed)
    net = pruner.model
    opt = make_optimizer(net, TrainConfig(lr=args.lr, weight_decay=0.05))
    sampler = GlobalBatchSampler(size(splits.train), args.batch_size, seed)
    epoch = 0
    while not pruner.done:
        sampler.set_epoch(epoch)
        for idx in sampler:
            x, y = fetch(splits.train, idx)
            logits = net(x)
            with torch.no_grad():
                t_logits = teacher(x)
            loss = F.cross_entropy(logits, y) + distillation_loss(logits, t_logits, 3.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            pruner.accumulate(loss.detach())
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            pruner.step()
            if pruner.done:
                break
            if pruner.calls > 10 * prune_batches:
                raise SystemExit(f"{method} r={ratio:g}: {pruner.calls} batches without reaching the target")
        epoch += 1
    dense, trace = pruner.export()
    return dense, {"schedule": pruner.schedule.describe(), "steps": pruner.steps, "prune_batches": pruner.calls,
                   "eta_abs": pruner.eta_abs,
                   "trace": [{k: v for k, v in st.to_dict().items() if k != "extra"} for st in trace.steps]}


# --- fine-tune, measure ------------------------------------------------------------------------
def finetune(model: nn.Module, teacher: nn.Module, splits: Any, steps: int, seed: int,
             args: argparse.Namespace, cnn: nn.Module | None = None) -> float:
    """``steps`` optimizer steps of CE + KL(T=3) to the base, cosine lr; returns test top-1.  With ``cnn``
    (``--teacher``: NViT's whole recipe), CE + KL(T=3) to the base + KL(T=3) to the CNN, each of weight 1."""
    from revit.train_loop import TrainConfig, evaluate, train

    if steps > 0:
        per_epoch = size(splits.train) // args.batch_size
        epochs = math.ceil(steps / per_epoch)  # more than an epoch: equal slices (rounded up) of each epoch
        tc = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, min_lr=args.lr * 0.02,
                         warmup_epochs=0.0, label_smoothing=0.0, distill_weight=1.0, distill_temperature=3.0,
                         grad_clip=1.0, seed=seed, max_steps_per_epoch=math.ceil(steps / epochs),
                         self_distill_weight=1.0 if cnn is not None else 0.0)
        if cnn is None:
            train(model, splits.train, None, tc, teacher=teacher, progress=False)
        else:
            train(model, splits.train, None, tc, teacher=cnn, self_teacher=teacher, progress=False)
    return evaluate(model, splits.test)


def cnn_teacher(args: argparse.Namespace, out: Path) -> tuple[nn.Module, dict[str, Any]]:
    """``--teacher``'s frozen CNN (``--teacher-weights``, else trained here by ``revit train NAME`` on the same
    images into OUT/cnn-teacher) and what names it (the settings and the results)."""
    from revit.cli.main import main as revit_main
    from revit.distill import load_teacher
    from revit.run_folders import read_marker

    weights = Path(args.teacher_weights) if args.teacher_weights else out / "cnn-teacher" / "model.safetensors"
    folder = weights.parent
    marker = read_marker(folder) if folder.is_dir() else None
    if not args.teacher_weights and not (marker is not None and marker.finished):
        argv = ["train", args.teacher, "--data", "fashion-mnist", "--val-size", args.val_size, "--epochs",
                args.teacher_epochs, "--batch-size", args.batch_size, "--seed", 0, "--threads", args.threads,
                "--no-progress", "--out", folder, *(["--train-limit", args.train_limit] if args.train_limit else []),
                *(["--test-limit", args.test_limit] if args.test_limit else []),
                *(["--resume"] if folder.exists() else [])]
        log(f"training the CNN teacher: revit {' '.join(map(str, argv))}")
        if revit_main([str(a) for a in argv]) != 0:
            raise SystemExit("training the CNN teacher failed")
    t = load_teacher(args.teacher, weights, num_classes=10, in_chans=1, img_size=28)
    return t.module, {"teacher": args.teacher, "teacher_sha256": t.sha256}


def measure_latency(cfgs: list[Any], batch: int = 64, passes: int = 3, repeats: int = 5, warmup: int = 2,
                    seed: int = 0) -> list[float]:
    """Median seconds per batch of each config, onnxruntime CPU, 1 thread, thread clock, interleaved."""
    from prune_latency import measure_models

    return measure_models(cfgs, batch=batch, passes=passes, repeats=repeats, warmup=warmup, seed=seed)


def calib_batches(splits: Any, n: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` training batches in a seeded order (Torch-Pruning's gradient estimate)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    order = torch.randperm(size(splits.train), generator=g).tolist()
    return [fetch(splits.train, order[i * batch:(i + 1) * batch]) for i in range(n)]


def run_one(method: str, ratio: float, seed: int, base: nn.Module, teacher: nn.Module, splits: Any,
            args: argparse.Namespace, out: Path, budgets: dict[str, int],
            base_latency: Callable[[Any], tuple[float, float]], cnn: nn.Module | None = None) -> dict[str, Any]:
    """Prune, measure and fine-tune one (method, ratio, seed); cached at every stage."""
    from revit import counting
    from revit.train_loop import evaluate

    key = f"{method}_r{ratio:g}_s{seed}"
    final = out / "results" / f"{key}.json"
    if final.is_file():
        return dict(json.loads(final.read_text()))
    stage = out / "work" / key
    pruned_path, pruned_info = stage / "pruned.safetensors", stage / "pruned.json"
    prune_batches = round(args.prune_share * min(budgets.values()))
    if saved(pruned_path) and pruned_info.is_file():
        info = json.loads(pruned_info.read_text())
    else:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        if method in REVIT_METHODS:
            model, extra = revit_prune(base, teacher, method, ratio, splits, seed, args, prune_batches)
        else:
            model, extra = tp_prune(base, method, ratio, calib_batches(splits, args.calib_batches, args.batch_size,
                                                                        seed), args.tp_iters)
            extra["prune_batches"] = 0
        model.eval()
        info = {"method": method, "ratio": ratio, "seed": seed, "top1_after_pruning": evaluate(model, splits.test)}
        if is_revit(model):
            cfg = config_of(model)
            lat, lat_ratio = base_latency(cfg)
            info.update(macs=counting.macs(cfg), macs_ratio=counting.macs(cfg) / counting.macs(config_of(base)),
                        params=counting.params(cfg), latency_ms=lat * 1e3, latency_ratio_to_base=lat_ratio,
                        config=cfg.to_dict())
        else:  # revit's config cannot express it: Torch-Pruning's own counter, no latency (ONNX export is revit's)
            info.update(macs=extra["macs_tp"], macs_ratio=extra["macs_tp"] / extra["macs_tp_base"],
                        params=extra["params_tp"], latency_ms=None, latency_ratio_to_base=None, config=None)
        info.update(prune_seconds=time.perf_counter() - t0, **extra)
        save_model(model, pruned_path)
        write_json(pruned_info, info)
    result = dict(info)
    for name, total in budgets.items():
        bpath = stage / f"budget_{name}.json"
        if bpath.is_file():
            result[f"top1_{name}"] = json.loads(bpath.read_text())["top1"]
            continue
        steps = total - int(info["prune_batches"])
        if steps < 0:
            raise SystemExit(f"{key}: pruning used {info['prune_batches']} batches, more than the {name} budget "
                             f"{total}")
        t0 = time.perf_counter()
        model = load_model(pruned_path)
        acc = finetune(model, teacher, splits, steps, seed, args, cnn)
        write_json(bpath, {"top1": acc, "finetune_steps": steps, "budget_steps": total,
                           "seconds": time.perf_counter() - t0})
        result[f"top1_{name}"] = acc
    write_json(final, result)
    if args.mirror:
        write_json(Path(args.mirror) / "results" / final.name, result)
    if args.clean:
        shutil.rmtree(stage, ignore_errors=True)
    return result


def _ms(xs: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not xs:
        return "-"
    m = statistics.mean(xs) * scale
    s = statistics.stdev(xs) * scale if len(xs) > 1 else 0.0
    return f"{m:.{digits}f} +- {s:.{digits}f}"


def joint_latency(results: list[dict[str, Any]], base_cfg: Any, passes: int) -> None:
    """Re-time every pruned model and the base together, interleaved (``latency_*`` fields, in place)."""
    from revit.config import ViTConfig

    timed = [r for r in results if r.get("config")]  # a timm fallback model has no latency
    cfgs = [base_cfg] + [ViTConfig.from_dict(r["config"]) for r in timed]
    lat = measure_latency(cfgs, passes=passes)
    for r, t in zip(timed, lat[1:], strict=True):
        r["latency_ms"], r["latency_ratio_to_base"] = t * 1e3, t / lat[0]
    log(f"joint latency: {len(cfgs)} models x {passes} passes, base {lat[0] * 1e3:.2f} ms per batch of 64")


def report(results: list[dict[str, Any]], budgets: dict[str, int], base_info: dict[str, Any]) -> str:
    """A Markdown table: mean +- std over seeds per (method, ratio)."""
    lines = [f"base: {base_info['epochs']} epochs on {base_info['train_images']} images, test top-1 "
             f"{base_info['test_top1'] * 100:.2f}% ({base_info['test_images']} test images)", ""]
    head = ["ratio", "method", "seeds", "MACs", "params", "latency ms (x base)", "top-1 after pruning"]
    head += [f"top-1 after {n} ({t} steps)" for n, t in budgets.items()]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = sorted({(r["ratio"], r["method"]) for r in results}, key=lambda k: (-k[0], ALL_METHODS.index(k[1])))
    for ratio, method in keys:
        rs = [r for r in results if r["ratio"] == ratio and r["method"] == method]
        missed = "*" if any(r.get("reached_target") is False for r in rs) else ""
        missed += "+" if any(r.get("macs_counter") == "torch-pruning" for r in rs) else ""
        timed = [r for r in rs if r.get("latency_ms") is not None]
        lat = (f"{statistics.mean(r['latency_ms'] for r in timed):.2f} "
               f"({statistics.mean(r['latency_ratio_to_base'] for r in timed):.3f})") if timed else "-"
        row = [f"{ratio:g}", method, str(len(rs)),
               f"{statistics.mean(r['macs'] for r in rs) / 1e6:.2f}M "
               f"({statistics.mean(r['macs_ratio'] for r in rs):.3f}){missed}",
               f"{statistics.mean(r['params'] for r in rs) / 1e3:.0f}K", lat,
               _ms([r["top1_after_pruning"] for r in rs])]
        row += [_ms([r[f"top1_{n}"] for r in rs if f"top1_{n}" in r]) for n in budgets]
        lines.append("| " + " | ".join(row) + " |")
    lines += contrasts(results, budgets)
    if any(r.get("reached_target") is False for r in results):
        lines += ["", f"* Torch-Pruning did not reach the target at any pruning ratio up to {TP_MAX_RATIO:g}: the "
                      "smallest model it produced, MACs above the target"]
    if any(r.get("macs_counter") == "torch-pruning" for r in results):
        lines += ["", "+ a width revit's config cannot express (kept in timm form): MACs and params counted by "
                      "Torch-Pruning's count_ops_and_params (ratio to the same counter on the base), latency not "
                      "timed, mean over such seeds mixed with revit-counted ones if any"]
    return "\n".join(lines)


def contrasts(results: list[dict[str, Any]], budgets: dict[str, int], ref: str = "hessian") -> list[str]:
    """Markdown rows: ``ref`` minus each other method per (ratio, budget), in points, with a 95% Welch
    interval and p-value over the seeds (revit.search.results.welch); [] with fewer than 2 seeds."""
    from revit.search.results import welch

    ratios = sorted({r["ratio"] for r in results}, reverse=True)
    peers = [m for m in ALL_METHODS if m != ref and any(r["method"] == m for r in results)]
    stages = ["after_pruning", *budgets]
    rows = []
    for ratio in ratios:
        for stage in stages:
            key = "top1_after_pruning" if stage == "after_pruning" else f"top1_{stage}"
            mine = [r[key] for r in results if r["method"] == ref and r["ratio"] == ratio and key in r]
            cells = []
            for m in peers:
                theirs = [r[key] for r in results if r["method"] == m and r["ratio"] == ratio and key in r]
                d, lo, hi, _, pv = welch(mine, theirs)
                cells.append("-" if math.isnan(d) else f"{100 * d:+.1f}" if math.isnan(lo) else
                             f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}], p {pv:.2g}")
            rows.append(f"| {ratio:g}, {stage.replace('_', ' ')} | " + " | ".join(cells) + " |")
    if not rows or not any("[" in r for r in rows):
        return []
    return ["", f"`{ref}` minus each method, top-1 points (mean over seeds, 95% Welch interval, p-value):", "",
            "| ratio, stage | " + " | ".join(f"vs {m}" for m in peers) + " |", "|" + "---|" * (len(peers) + 1),
            *rows]


def main() -> None:
    """Parse the scale, then run every (seed, ratio, method) not cached yet and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-prune-quality", help="cache folder (base, pruned models, JSON)")
    ap.add_argument("--base-epochs", type=int, default=15)
    ap.add_argument("--train-limit", type=int, default=None, help="training images (default: all 55,000)")
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--test-limit", type=int, default=None, help="test images scored (default: all 10,000)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--ratios", default="0.5,0.25", help="MACs targets as fractions of the base")
    ap.add_argument("--budgets", default="0.25,1", help="training budgets after the base, in epochs")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--base-lr", type=float, default=1e-3)
    ap.add_argument("--lr", type=float, default=5e-4, help="lr of revit's pruning phase and of every fine-tune")
    ap.add_argument("--prune-share", type=float, default=0.5,
                    help="revit's pruning phase: share of the shortest budget")
    ap.add_argument("--prune-steps", type=int, default=10, help="revit's pruning steps (step fraction (1-r)/steps)")
    ap.add_argument("--calib-batches", type=int, default=4, help="Torch-Pruning gradient batches")
    ap.add_argument("--tp-iters", type=int, default=10, help="bisection steps on Torch-Pruning's pruning ratio")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="print the table of the cached results, run nothing")
    ap.add_argument("--latency-passes", type=int, default=10,
                    help="re-time all models together for the table with this many interleaved passes (0: keep the "
                         "per-run timings)")
    ap.add_argument("--clean", action="store_true", help="delete per-run work folders once their JSON is written")
    ap.add_argument("--teacher", help="NViT's whole recipe (issue 29): fine-tune every method (revit and peers alike) "
                                     "with both teachers, this timm CNN and the unpruned base (off by default)")
    ap.add_argument("--teacher-weights", help="the CNN's weights (default: trained here by `revit train TEACHER` on "
                                             "the same images into OUT/cnn-teacher)")
    ap.add_argument("--teacher-epochs", type=int, default=2, help="epochs of that CNN training")
    ap.add_argument("--mirror", default=None,
                    help="also keep the small result files (settings, base summary, per-run JSON, report) here, e.g. "
                         "under benchmarks/results/ to commit them; runs found there are not re-run")
    args = ap.parse_args()

    from revit.data import DataSpec, load_splits

    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        raise SystemExit(f"unknown method(s) {sorted(unknown)}; known: {', '.join(ALL_METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]
    out = Path(args.out)
    settings = {k: getattr(args, k) for k in RESULT_KEYS if hasattr(args, k)}
    settings.update(tp_max_ratio=TP_MAX_RATIO, revit_pruner="GlobalPruner(total_steps)")
    cnn = None
    if args.teacher:  # only then: the default settings (and caches) stay those of the one-teacher comparison
        cnn, named = cnn_teacher(args, out)
        settings.update(named, finetune="CE + KL(T=3) to the base + KL(T=3) to the CNN teacher")
    mirror = Path(args.mirror) if args.mirror else None
    for folder in (out, mirror):
        sp = folder / "settings.json" if folder else None
        if sp is not None and sp.is_file() and json.loads(sp.read_text()) != settings:
            old = json.loads(sp.read_text())
            diff = ", ".join(f"{k}: {old.get(k)} -> {v}" for k, v in settings.items() if old.get(k) != v)
            raise SystemExit(f"{folder} caches results of other settings ({diff}); use another --out / --mirror")
        if sp is not None:
            write_json(sp, settings)
    if mirror is not None:  # resume elsewhere: results committed in the mirror count as done
        for f in sorted((mirror / "results").glob("*.json")):
            if not (out / "results" / f.name).is_file():
                write_json(out / "results" / f.name, json.loads(f.read_text()))
    splits = load_splits(DataSpec("fashion-mnist", train_limit=args.train_limit, val_size=args.val_size,
                                  test_limit=args.test_limit, seed=0))
    per_epoch = size(splits.train) // args.batch_size
    budgets = {f"{float(b):g}ep": max(1, round(float(b) * per_epoch)) for b in args.budgets.split(",")}
    print(f"settings: {json.dumps(settings)}\n  methods {methods}, ratios {ratios}, seeds {seeds}, threads "
          f"{args.threads}; {size(splits.train)} train / {size(splits.test)} test images, {per_epoch} batches of "
          f"{args.batch_size} per epoch; budgets (optimizer steps after the base) {budgets}; revit pruning phase "
          f"{round(args.prune_share * min(budgets.values()))} batches in {args.prune_steps} steps; cache {out}",
          flush=True)
    base, base_info = get_base(args, splits, out)
    base.eval()
    teacher = copy.deepcopy(base).requires_grad_(False)  # train() freezes its teacher in place; base stays trainable
    log(f"base: {base_info['epochs']} epochs, test top-1 {base_info['test_top1']:.4f}")
    if mirror is not None:
        write_json(mirror / "base.json", {k: v for k, v in base_info.items()})

    def base_latency(cfg: Any) -> tuple[float, float]:
        lat = measure_latency([config_of(base), cfg])
        return lat[1], lat[1] / lat[0]

    results = []
    for seed in seeds:  # seed-major: a partial run still covers every method
        for ratio in ratios:
            for method in methods:
                if args.report_only:
                    f = out / "results" / f"{method}_r{ratio:g}_s{seed}.json"
                    if f.is_file():
                        results.append(json.loads(f.read_text()))
                    continue
                t0 = time.perf_counter()
                r = run_one(method, ratio, seed, base, teacher, splits, args, out, budgets, base_latency, cnn)
                results.append(r)
                accs = " ".join(f"{k}={v:.4f}" for k, v in r.items() if k.startswith("top1"))
                lat = r["latency_ratio_to_base"]
                log(f"{method} r={ratio:g} seed {seed}: MACs {r['macs_ratio']:.3f}, latency "
                    f"{'-' if lat is None else f'x{lat:.3f}'}, {accs} ({time.perf_counter() - t0:.0f} s)")
    if not results:
        raise SystemExit("no results yet")
    if args.latency_passes:
        joint_latency(results, config_of(base), args.latency_passes)
    table = report(results, budgets, base_info)
    for folder in (out, mirror):
        if folder is not None:
            (folder / "report.md").write_text(f"settings: {json.dumps(settings)}\n\n{table}\n")
    print(table, flush=True)


if __name__ == "__main__":
    main()
