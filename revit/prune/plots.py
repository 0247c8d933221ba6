"""Plots of a pruning trace (PNG): each kind's width per block against the step, and the final
per-block profile of each kind next to the base (the paper's figure 4)."""

from __future__ import annotations

import os
from pathlib import Path

from revit.trace import Trace

PANELS = (("heads", "heads"), ("qk_dim", "QK per head"), ("v_dim", "V per head"), ("mlp_dim", "MLP"))


def plot_trace(trace_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``widths_vs_step.png`` and ``final_profile.png`` into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = Trace.load(trace_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = [s.step for s in tr.steps]
    depth = len(tr.steps[0].blocks)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 5, figsize=(20, 3.8))
    axes[0].plot(steps, [s.embed_dim for s in tr.steps], color="k")
    axes[0].set_title("EMB (all blocks)")
    for ax, (key, title) in zip(axes[1:], PANELS, strict=False):
        for b in range(depth):
            ax.plot(steps, [getattr(s.blocks[b], key) for s in tr.steps], color=cmap(b / max(depth - 1, 1)),
                    label=f"block {b + 1}")
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("pruning step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("width")
    axes[-1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{tr.header.get('criterion', '?')} pruning to {tr.header.get('target', {}).get('ratio', '?')} "
                 f"of base {tr.header.get('target', {}).get('kind', '?')}")
    fig.tight_layout()
    p1 = out / "widths_vs_step.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    first, last = tr.steps[0], tr.steps[-1]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    xs = list(range(1, depth + 1))
    for ax, (key, title) in zip(axes, PANELS, strict=False):
        ax.plot(xs, [getattr(b, key) for b in first.blocks], "--", color="gray", label="base")
        ax.plot(xs, [getattr(b, key) for b in last.blocks], "o-", color="C0", label=f"step {last.step}")
        ax.set_title(title)
        ax.set_xlabel("block")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("width")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"final per-block widths (EMB {first.embed_dim} -> {last.embed_dim}, MACs "
                 f"{last.macs / first.macs:.2f} of base)")
    fig.tight_layout()
    p2 = out / "final_profile.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]
