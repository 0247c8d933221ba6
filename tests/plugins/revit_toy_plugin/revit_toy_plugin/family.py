"""Rule family ``toy-family``: every block alike but its MLP, which widens linearly with depth;
it ships the rule ``toy-family-rule``."""

from __future__ import annotations

from collections.abc import Mapping

from revit.config import BlockDims, Granularity
from revit.rules.base import NamedRule, ParamSpec, RuleFamily, block_positions


class ToyFamily(RuleFamily):
    """Heads of 32 channels, MLP = ratio x EMB x (1 - growth/2 + growth x depth position)."""

    description = "toy plugin family: uniform attention, MLP widening linearly with depth"
    params = {
        "growth": ParamSpec(1.0, 0.0, 2.0, "how much wider the last MLP is than the first, relative to the mean"),
        "mlp_ratio": ParamSpec(4.0, 0.5, 8.0, "mean MLP width per EMB channel"),
    }
    named_rules = {"toy-family-rule": NamedRule("toy: MLP from 2x to 6x EMB over depth", {"growth": 1.0})}

    @property
    def fittable(self) -> bool:
        return False

    def blocks(self, params: Mapping[str, float], embed_dim: int, depth: int, gran: Granularity,
               mlp_factor: float = 1.0) -> tuple[BlockDims, ...]:
        g, ratio = params["growth"], params["mlp_ratio"]
        heads = gran.round_to("heads", embed_dim / 32)
        qk, v = gran.round_to("qk_dim", 32), gran.round_to("v_dim", 32)
        return tuple(BlockDims(heads, qk, v, gran.round_to("mlp_dim", ratio * embed_dim * (1 - g / 2 + g * t)
                                                          * mlp_factor))
                     for t in block_positions(depth))
