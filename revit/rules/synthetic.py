"""Synthetic pruning traces from a known family member plus noise: to test and demonstrate fitting.

The written trace has four steps: the unpruned base (twice the width, uniform DeiT-style), the base
blocks at the pruned width, the known member with multiplicative Gaussian noise (rounded to
integers), and a further-pruned step; reading it at ``--at-ratio 0.5`` selects the member.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace

from revit import counting
from revit.config import BLOCK_KINDS, BlockDims, Setting
from revit.rules.base import block_positions, get_family
from revit.trace import TraceStep, TraceWriter


def write_synthetic_trace(path: str | os.PathLike[str], params: Mapping[str, float], *, embed_dim: int,
                          depth: int, family: str = "less-more-less", noise: float = 0.03, seed: int = 0,
                          setting: Setting | None = None) -> tuple[BlockDims, ...]:
    """Write the trace; return the noisy member's blocks (what a fit at ratio 0.5 reads)."""
    fam = get_family(family)
    full = fam.check_params(params)
    w = fam.continuous(full, embed_dim, block_positions(depth))
    return write_profile_trace(path, w, embed_dim=embed_dim, noise=noise, seed=seed, setting=setting,
                               criterion=f"synthetic {family} member, noise {noise}, seed {seed}",
                               settings={"true_params": dict(full)})


def linear_profile(embed_dim: int, depth: int, ratios: Mapping[str, float], *, end: float = 0.4,
                   rising: bool = False) -> dict[str, list[float]]:
    """A monotone profile: each kind falls linearly from ``ratios[k] * EMB`` to ``end`` times that (or rises)."""
    pos = block_positions(depth)
    out = {}
    for k in BLOCK_KINDS:
        top = ratios[k] * embed_dim
        out[k] = [top * (end + (1 - end) * (t if rising else 1 - t)) for t in pos]
    return out


def write_profile_trace(path: str | os.PathLike[str], widths: Mapping[str, Sequence[float]], *, embed_dim: int,
                        noise: float = 0.03, seed: int = 0, setting: Setting | None = None,
                        criterion: str = "synthetic profile", settings: Mapping[str, object] | None = None,
                        ) -> tuple[BlockDims, ...]:
    """Write a trace whose 0.5-ratio step is ``widths`` (per kind, per block) with multiplicative noise."""
    depth = len(widths["heads"])
    rng = random.Random(seed)
    member = tuple(BlockDims(*(max(1, round(widths[k][i] * (1 + rng.gauss(0, noise)))) for k in BLOCK_KINDS))
                   for i in range(depth))
    s = replace(setting or Setting(), depth=depth)
    e0 = 2 * embed_dim
    base = s.config(e0, [BlockDims(max(1, e0 // 64), 64, 64, 4 * e0)] * depth, name="synthetic-base")
    steps = [base, base.with_blocks(base.blocks, embed_dim), base.with_blocks(member, embed_dim),
             base.with_blocks([BlockDims(max(1, b.heads // 2), b.qk_dim, b.v_dim, max(1, b.mlp_dim // 2))
                               for b in member], embed_dim)]
    writer = TraceWriter(path, {"base_config": base.to_dict(), "target": "synthetic", "criterion": criterion,
                                "settings": dict(settings or {})})
    for i, cfg in enumerate(steps):
        writer.append(TraceStep(step=i, embed_dim=cfg.embed_dim, blocks=cfg.blocks, macs=counting.macs(cfg),
                                params=counting.params(cfg)))
    return member
