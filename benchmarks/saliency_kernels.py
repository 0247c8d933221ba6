"""How many kernels does one saliency call launch?  (The GPU cost of the pruner's bookkeeping.)

On a GPU a scoring call is launch-bound: its arithmetic is small next to a training step, but
every tensor op is a kernel launch of a few microseconds.  This counts the tensor ops that launch
a kernel (aten ops other than views and detaches, counted with a ``TorchDispatchMode``) in one
``criterion(params, grads)`` call and one ``ScoreAccumulator.add``, for revit_micro and DeiT-S,
on the CPU (the ops are the same on CUDA), and next to them the per-group path
(``_Plan.sums`` per group, one score op per group, one add per group: how scoring ran before the
fused plan).  Scores of both paths are compared (max relative difference).

    python benchmarks/saliency_kernels.py [--models revit_micro,revit_deit_small_patch16_224] [--json F]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

NO_KERNEL = {"detach", "view", "slice", "select", "alias", "_unsafe_view", "t", "expand", "as_strided"}


class KernelCount(TorchDispatchMode):
    """Counts dispatched aten ops that launch a kernel (views and detaches excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.overloadpacket.__name__ not in NO_KERNEL:
            self.n += 1
        return func(*args, **(kwargs or {}))


def per_group_scores(crit: Any, name: str, per_param: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """The per-group path: each group's plan summed on its own, then one score op per group."""
    sums = {gid: plan.sums(per_param) for gid, plan in crit._plans.items()}
    if name == "hessian":
        return {gid: v[:, 0] ** 2 for gid, v in sums.items()}
    kinds = {g.gid: g.kind for g in crit.structure.groups}
    return {gid: ((v / crit.norm[kinds[gid]]) ** 2).sum(dim=1) for gid, v in sums.items()}


def measure(model_name: str, criteria: list[str]) -> list[dict[str, Any]]:
    from revit.models import build_model
    from revit.presets import get_preset
    from revit.prune import ScoreAccumulator, build_criterion, derive_structure
    from revit.prune.criteria import _wg

    torch.manual_seed(0)
    cfg = get_preset(model_name)
    model = build_model(cfg)
    x = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    structure = derive_structure(model, x)
    torch.nn.functional.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    params = dict(model.named_parameters())
    grads = {k: p.grad for k, p in params.items() if p.grad is not None}
    rows = []
    for name in criteria:
        crit = build_criterion(name, structure)
        fused = crit(params, grads)  # warm: index tensors built
        with KernelCount() as k_fused:
            fused = crit(params, grads)
        acc = ScoreAccumulator()
        acc.add(fused)
        with KernelCount() as k_add:
            acc.add(fused)
        with KernelCount() as k_group:
            ref = per_group_scores(crit, name, _wg(params, grads))
        slow = {gid: v.clone() for gid, v in ref.items()}
        with KernelCount() as k_group_add:
            for gid, v in ref.items():
                slow[gid] = slow[gid] + v
        diff = max(float(((fused[g] - ref[g]).abs() / ref[g].abs().clamp_min(1e-300)).max()) for g in ref)
        rows.append({"model": model_name, "criterion": name, "groups": len(structure.groups),
                     "parameters": len(params), "kernels_fused": k_fused.n, "kernels_add": k_add.n,
                     "kernels_per_group_path": k_group.n, "kernels_per_group_add": k_group_add.n,
                     "max_rel_diff": diff})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="revit_micro,revit_deit_small_patch16_224")
    ap.add_argument("--criteria", default="hessian,nvit-code")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    rows = [r for m in args.models.split(",") for r in measure(m.strip(), args.criteria.split(","))]
    print("| model | criterion | groups | params | kernels per call (fused) | per-group path | "
          "accumulate (fused / per group) | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['criterion']} | {r['groups']} | {r['parameters']} | {r['kernels_fused']} | "
              f"{r['kernels_per_group_path']} (x{r['kernels_per_group_path'] / r['kernels_fused']:.1f}) | "
              f"{r['kernels_add']} / {r['kernels_per_group_add']} | {r['max_rel_diff']:.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
