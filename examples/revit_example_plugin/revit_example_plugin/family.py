"""Rule family ``taper``: every block's widths shrink linearly with depth by ``taper``; it ships the rule
``taper-20`` (``revit generate --rule taper-20 --macs 4.6G``).

A family declares its parameters (:class:`~revit.rules.base.ParamSpec`: default, range, meaning), which
``revit rules fit`` and a study's search space read; :meth:`blocks` must be non-decreasing in ``embed_dim``
and ``mlp_factor`` (generation bisects on both).
"""

from __future__ import annotations

from collections.abc import Mapping

from revit.config import BlockDims, Granularity
from revit.rules.base import NamedRule, ParamSpec, RuleFamily, block_positions, scale_mlp


class Taper(RuleFamily):
    """Heads of 64 channels and MLP = mlp_ratio x EMB at the first block, each scaled by 1 - taper x depth."""

    description = "every width shrinks linearly with depth (taper: how much narrower the last block is)"
    params = {
        "taper": ParamSpec(0.2, 0.0, 0.8, "how much narrower the last block is than the first, as a fraction"),
        "mlp_ratio": ParamSpec(4.0, 1.0, 8.0, "MLP width per EMB channel at the first block"),
    }
    named_rules = {"taper-20": NamedRule("widths 20% narrower at the last block than at the first",
                                         {"taper": 0.2, "mlp_ratio": 4.0})}

    @property
    def fittable(self) -> bool:
        return False

    def blocks(self, params: Mapping[str, float], embed_dim: int, depth: int, gran: Granularity,
               mlp_factor: float = 1.0) -> tuple[BlockDims, ...]:
        out = []
        for t in block_positions(depth):
            scale = 1 - params["taper"] * t
            heads = max(1, gran.round_to("heads", scale * embed_dim / 64))
            mlp = gran.round_to("mlp_dim", scale * params["mlp_ratio"] * embed_dim)
            out.append(BlockDims(heads, gran.round_to("qk_dim", 64), gran.round_to("v_dim", 64),
                                 scale_mlp(mlp, mlp_factor, gran)))
        return tuple(out)
