"""Plots of a pruning trace (PNG): each kind's width per block against the step, and the final
per-block profile of each kind next to the base (the paper's figure 4).  Removals show: a dotted line at each
step that removed a branch or a block, and in the profile a removed block shaded, a lost branch marked x."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from revit.trace import Trace, TraceStep

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
        for st in _removal_steps(tr.steps):
            ax.axvline(st.step, color="C3", ls=":", lw=1)
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
        _mark_removals(ax, last, key)
        ax.set_title(title)
        ax.set_xlabel("block")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("width")
    axes[0].legend(fontsize=8)
    gone = sum(b.is_removed for b in last.blocks)
    fig.suptitle(f"final per-block widths (EMB {first.embed_dim} -> {last.embed_dim}, MACs "
                 f"{last.macs / first.macs:.2f} of base" + (f", {gone} block(s) removed" if gone else "") + ")")
    fig.tight_layout()
    p2 = out / "final_profile.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]


def _removal_steps(steps: tuple[TraceStep, ...]) -> list[TraceStep]:
    """The steps that removed a branch or a block (their ``removals`` entry)."""
    return [st for st in steps if st.extra.get("removals")]


def _mark_removals(ax: Any, last: TraceStep, key: str) -> None:
    """Shade each removed block; mark x where the block lost the branch this panel's width belongs to."""
    for i, b in enumerate(last.blocks, start=1):
        lost = not b.has_mlp if key == "mlp_dim" else not b.has_attention
        if b.is_removed:
            ax.axvspan(i - 0.4, i + 0.4, color="gray", alpha=0.25, lw=0)
        elif lost:
            ax.plot([i], [0], "x", color="C3", ms=9, mew=2)
