"""Pruning steps per kind (temporary home until the one Granularity in revit.config)."""

from __future__ import annotations

from revit.errors import ConfigError
from revit.prune.structure import KINDS

GRANULARITY: dict[str, dict[str, int]] = {
    "standard": {"embed_dim": 16, "heads": 2, "qk_dim": 8, "v_dim": 8, "mlp_dim": 16},
    "micro": {"embed_dim": 8, "heads": 1, "qk_dim": 4, "v_dim": 4, "mlp_dim": 8},
    "one": {k: 1 for k in KINDS},
}


def resolve_granularity(spec: str | dict[str, int], img_size: int) -> dict[str, int]:
    """``auto`` (micro for images <= 64 px, else standard), a preset name, ``E,H,Q,V,M`` or a mapping."""
    if isinstance(spec, dict):
        unknown = set(spec) - set(KINDS)
        if unknown:
            raise ConfigError(f"granularity: unknown kind(s) {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}")
        return {**GRANULARITY["one"], **{k: int(v) for k, v in spec.items()}}
    if spec == "auto":
        return dict(GRANULARITY["micro" if img_size <= 64 else "standard"])
    if spec in GRANULARITY:
        return dict(GRANULARITY[spec])
    parts = spec.split(",")
    if len(parts) == 5 and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return dict(zip(KINDS, (int(p) for p in parts), strict=False))
    raise ConfigError(f"granularity {spec!r}: use auto, {', '.join(GRANULARITY)} or five steps E,H,QK,V,MLP "
                      "such as 16,2,8,8,16")
