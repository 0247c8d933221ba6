"""The shipped rule families: ``paper`` (official code), ``paper-table6`` (paper text),
``less-more-less`` (parametric, fittable) and ``uniform`` (DeiT-style baselines).

See NVIT_SPEC.md section 7 for the two paper rules and their domain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from revit.config import BlockDims, Granularity
from revit.errors import ConfigError
from revit.rules.base import FAMILIES, DomainNote, NamedRule, ParamSpec, RuleFamily, block_positions, scale_mlp

REF_DEPTH = 12  # both paper rules are written for 12 blocks
MIN_HEADS, MIN_QK = 2, 8  # what section 7 keeps when a paper rule leaves its domain


def reference_block(i: int, depth: int, ref: int = REF_DEPTH) -> int:
    """Index of the ``ref``-block rule's block that block ``i`` of ``depth`` maps to.

    By normalised depth of the block centre, mirrored so that the mapping is symmetric: the first
    and last quarter land on the rule's end blocks, the middle half on its wide blocks.  Identity
    when ``depth == ref``.
    """
    if 2 * i + 1 > depth:  # second half: mirror the first
        return ref - 1 - reference_block(depth - 1 - i, depth, ref)
    return ((2 * i + 1) * ref) // (2 * depth)


def _is_wide(j: int, ref: int = REF_DEPTH) -> bool:
    return ref // 4 <= j < ref - ref // 4


@FAMILIES.register
class PaperRule(RuleFamily):
    """The official NViT code's ReViT rule (NVIT_SPEC.md section 7 [C]); EMB 384 gives ReViT-S."""

    name = "paper"
    depth_doc = ("keeps the asked depth; other depths than 12 take the rule block at each block's normalised "
                 "depth; a depth search prefers 12")
    description = ("official NViT code rule: y=round(E/200), x=round(E/160); ends 2y heads, middle 4y; depth: "
                   + depth_doc)
    reference_depth = REF_DEPTH

    @staticmethod
    def reference(embed_dim: int) -> list[tuple[int, int, int, int]]:
        """The 12 blocks of the official code, unclamped: (heads, qk, v, mlp) per block."""
        e = embed_dim
        y, x = round(e / 200), round(e / 160)  # Python round: half to even, as the code
        heads = [10, 2 * y, 2 * y] + [4 * y] * 6 + [2 * y, 2 * y, 10]
        qk = [16 * x, 8 * x, 8 * x] + [16 * x] * 6 + [8 * x, 8 * x, 16 * x]
        mlp = [3 * e] * 3 + [6 * e] * 6 + [3 * e] * 3
        return [(h, q, 64, m) for h, q, m in zip(heads, qk, mlp, strict=True)]

    def blocks(self, params: Mapping[str, float], embed_dim: int, depth: int, gran: Granularity,
               mlp_factor: float = 1.0) -> tuple[BlockDims, ...]:
        ref = self.reference(embed_dim)
        out = []
        for i in range(depth):
            h, q, v, m = ref[reference_block(i, depth)]
            out.append(BlockDims(max(MIN_HEADS, h), max(MIN_QK, q), v, scale_mlp(m, mlp_factor, gran)))
        return tuple(out)

    def domain_notes(self, params: Mapping[str, float], embed_dim: int, depth: int) -> list[DomainNote]:
        notes = []
        if depth != REF_DEPTH:
            notes.append(DomainNote(f"rule 'paper' is written for 12 blocks; each of the {depth} blocks takes "
                                    "the rule block at its normalised depth (first/last quarter = ends, "
                                    "middle half = wide)"))
        if round(embed_dim / 200) == 0 or round(embed_dim / 160) == 0:
            notes.append(DomainNote(f"EMB {embed_dim} is outside the domain of rule 'paper' (EMB > 100): "
                                    f"heads kept >= {MIN_HEADS} and QK per head >= {MIN_QK}", outside=True))
        return notes


@FAMILIES.register
class PaperTable6Rule(RuleFamily):
    """The paper text's ReViT rule (NVIT_SPEC.md section 7 [P]): eps = 2 in blocks 4-9, else 1."""

    name = "paper-table6"
    depth_doc = "keeps the asked depth; eps = 2 in its middle half by normalised depth; a depth search prefers 12"
    description = "paper text rule: H=eps*E/100 (even), QK=eps*E/20 (x8), V=64, MLP=3*eps*E; depth: " + depth_doc
    reference_depth = REF_DEPTH

    def blocks(self, params: Mapping[str, float], embed_dim: int, depth: int, gran: Granularity,
               mlp_factor: float = 1.0) -> tuple[BlockDims, ...]:
        e = embed_dim
        out = []
        for i in range(depth):
            eps = 2 if _is_wide(reference_block(i, depth)) else 1
            h = max(gran.heads, round(eps * e / 100 / gran.heads) * gran.heads)
            q = max(gran.qk_dim, round(eps * e / 20 / gran.qk_dim) * gran.qk_dim)
            out.append(BlockDims(h, q, 64, scale_mlp(3 * eps * e, mlp_factor, gran)))
        return tuple(out)

    def domain_notes(self, params: Mapping[str, float], embed_dim: int, depth: int) -> list[DomainNote]:
        notes = []
        if depth != REF_DEPTH:
            notes.append(DomainNote(f"rule 'paper-table6' is written for 12 blocks; eps = 2 in the middle half "
                                    f"of the {depth} blocks by normalised depth"))
        if embed_dim <= 100:
            notes.append(DomainNote(f"EMB {embed_dim} is outside the domain of rule 'paper-table6' (EMB > 100): "
                                    "heads and QK per head kept at their granularity minimum", outside=True))
        return notes


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    ez = math.exp(z)
    return ez / (1.0 + ez)


def bump(t: float, center: float, plateau: float, softness: float) -> float:
    """Smooth plateau over normalised depth: 1 at ``center``, about 0 beyond ``plateau``/2 from it."""
    lo, hi = center - plateau / 2, center + plateau / 2

    def raw(u: float) -> float:
        return _sigmoid((u - lo) / softness) * _sigmoid((hi - u) / softness)

    return raw(t) / raw(center)


LML_KINDS = {"heads": "heads_per_emb", "qk_dim": "qk_per_emb", "v_dim": "v_per_emb", "mlp_dim": "mlp_per_emb"}
LML_ENDS = {"heads": "heads_end", "qk_dim": "qk_end", "v_dim": "v_end", "mlp_dim": "mlp_end"}


@FAMILIES.register
class LessMoreLess(RuleFamily):
    """Width profile over normalised depth (a smooth plateau) times per-kind ratios to EMB.

    width_k(t) = base_k * (end_k + (1 - end_k) * bump(t; center, plateau, softness)), with
    base = heads_per_emb*E, qk_per_emb*E and v_per_emb*E (both per head), mlp_per_emb*E; each block
    is then rounded to the granularity.  end_k < 1 gives narrow ends (less-more-less).  Every kind
    scales with E (V too, although the paper keeps V = 64) so that one member serves ImageNet and
    micro settings alike.
    """

    name = "less-more-less"
    depth_doc = ("keeps the asked depth; the profile is over normalised depth, so any depth has one; a depth "
                 "search takes the deepest that meets the budget")
    description = "smooth plateau over normalised depth, per-kind ratios to EMB and end ratios; depth: " + depth_doc
    params = {
        "center": ParamSpec(0.5, 0.2, 0.8, "normalised depth of the plateau's centre"),
        "plateau": ParamSpec(0.5, 0.05, 1.0, "width of the wide plateau, fraction of depth"),
        "softness": ParamSpec(0.03, 0.005, 0.3, "edge width of the plateau (small = step)"),
        "heads_per_emb": ParamSpec(1 / 48, 1e-4, 1.0, "heads per EMB channel on the plateau"),
        "heads_end": ParamSpec(0.5, 0.05, 3.0, "heads at the ends relative to the plateau"),
        "qk_per_emb": ParamSpec(1 / 12, 1e-4, 2.0, "QK width per head per EMB channel on the plateau"),
        "qk_end": ParamSpec(0.5, 0.05, 3.0, "QK per head at the ends relative to the plateau"),
        "v_per_emb": ParamSpec(1 / 6, 1e-4, 2.0, "V width per head per EMB channel on the plateau"),
        "v_end": ParamSpec(1.0, 0.05, 3.0, "V per head at the ends relative to the plateau"),
        "mlp_per_emb": ParamSpec(6.0, 0.05, 32.0, "MLP width per EMB channel on the plateau"),
        "mlp_end": ParamSpec(0.5, 0.05, 3.0, "MLP at the ends relative to the plateau"),
    }

    def starting_points(self, samples: Sequence[tuple[int, Mapping[str, Sequence[float]]]]) -> list[dict[str, float]]:
        """Data-derived ratios (widest block / EMB, narrowest / widest per kind) and six profile shapes."""
        start = {k: float(s.default) for k, s in self.params.items()}
        for kind, key in LML_KINDS.items():
            start[key] = max(max(w[kind]) / emb for emb, w in samples)
        for kind, key in LML_ENDS.items():
            start[key] = min(min(w[kind]) / max(w[kind]) for _, w in samples)
        return [{**start, "plateau": plateau, "softness": softness}
                for plateau in (0.3, 0.5, 0.7) for softness in (0.02, 0.08)]

    def continuous(self, params: Mapping[str, float], embed_dim: int,
                   positions: Sequence[float]) -> dict[str, list[float]]:
        p = params
        b = [bump(t, p["center"], p["plateau"], p["softness"]) for t in positions]
        base = {"heads": p["heads_per_emb"] * embed_dim, "qk_dim": p["qk_per_emb"] * embed_dim,
                "v_dim": p["v_per_emb"] * embed_dim, "mlp_dim": p["mlp_per_emb"] * embed_dim}
        ends = {k: p[key] for k, key in LML_ENDS.items()}
        return {k: [base[k] * (ends[k] + (1 - ends[k]) * bi) for bi in b] for k in LML_KINDS}

    def blocks(self, params: Mapping[str, float], embed_dim: int, depth: int, gran: Granularity,
               mlp_factor: float = 1.0) -> tuple[BlockDims, ...]:
        w = self.continuous(params, embed_dim, block_positions(depth))
        return tuple(
            BlockDims(gran.round_to("heads", w["heads"][i]), gran.round_to("qk_dim", w["qk_dim"][i]),
                      gran.round_to("v_dim", w["v_dim"][i]), gran.round_to("mlp_dim", w["mlp_dim"][i] * mlp_factor))
            for i in range(depth)
        )


@FAMILIES.register
class Uniform(RuleFamily):
    """DeiT-style baseline: every block equal, heads = E/head_dim (at least 1), MLP = ratio * EMB.

    ``head_dim`` 0 means auto: 64 (DeiT) with the standard granularity, 24 (the micro preset's
    heads) when the granularity's QK step is below 8.  ``heads_per_emb`` > 0 sets the head count
    to ``heads_per_emb * EMB`` instead, so the attention width (heads x head_dim) may differ from EMB.
    """

    name = "uniform"
    depth_doc = "keeps the asked depth, every block equal; a depth search takes the deepest that meets the budget"
    description = ("DeiT-style uniform blocks: heads of head_dim (auto 64, micro 24), MLP = mlp_ratio * EMB; "
                   "depth: " + depth_doc)
    uniform = True
    params = {
        "head_dim": ParamSpec(0.0, 0.0, 1024.0, "QK and V width per head (0 = auto: 64, or 24 when micro)",
                              integer_step="qk_dim"),
        "mlp_ratio": ParamSpec(4.0, 0.05, 32.0, "MLP width per EMB channel"),
        "heads_per_emb": ParamSpec(0.0, 0.0, 1.0, "heads per EMB channel (0 = EMB / head_dim, DeiT's choice)"),
    }
    named_rules = {"uniform": NamedRule("DeiT-style uniform baseline", {"head_dim": 0, "mlp_ratio": 4.0})}

    @property
    def fittable(self) -> bool:
        return False

    def check_params(self, given: Mapping[str, object], source: str = "rule") -> dict[str, float]:
        out = super().check_params(given, source)
        if out["head_dim"] != int(out["head_dim"]):
            raise ConfigError(f"{source}: head_dim must be an integer, got {out['head_dim']}")
        return out

    @staticmethod
    def head_dim(params: Mapping[str, float], gran: Granularity) -> int:
        """The head width used: the parameter, or the auto default for the granularity."""
        hd = int(params["head_dim"])
        return hd if hd > 0 else (64 if gran.qk_dim >= 8 else 24)

    def blocks(self, params: Mapping[str, float], embed_dim: int, depth: int, gran: Granularity,
               mlp_factor: float = 1.0) -> tuple[BlockDims, ...]:
        hd = self.head_dim(params, gran)
        per_emb = params.get("heads_per_emb", 0.0)
        heads = max(1, int(math.floor((per_emb * embed_dim if per_emb > 0 else embed_dim / hd) + 0.5)))
        base = params["mlp_ratio"] * embed_dim
        mlp = int(base) if mlp_factor == 1.0 and base == int(base) else gran.round_to("mlp_dim", base * mlp_factor)
        return tuple(BlockDims(heads, hd, hd, mlp) for _ in range(depth))
