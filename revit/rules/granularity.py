"""Granularity: the step (and minimum) of every width a rule may emit, per setting.

NViT prunes in units (EMB 16, heads 2, QK 8, V 8, MLP 16; NVIT_SPEC.md section 1) so that the
dims stay friendly to tensor cores; small models need finer steps (DESIGN.md: the micro setting
uses EMB 8, heads 1, QK 4, V 4, MLP 8).  ``auto`` picks ``micro`` for images of at most 64 pixels
a side (MNIST/CIFAR-like settings, whose models are a few hundred channels wide at most) and
``standard`` otherwise; a rule file or the user can name a preset or give the five steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from revit.errors import ConfigError

KINDS = ("embed", "heads", "qk", "v", "mlp")
AUTO_MICRO_MAX_IMG = 64


@dataclass(frozen=True)
class Granularity:
    """Steps of the five widths; each is also the minimum kept (a width is never rounded to zero)."""

    embed: int = 16
    heads: int = 2
    qk: int = 8
    v: int = 8
    mlp: int = 16

    def __post_init__(self) -> None:
        for k in KINDS:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"granularity {k} must be a positive integer, got {v!r}")

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in KINDS}

    def describe(self) -> str:
        return " ".join(f"{k.upper()} {getattr(self, k)}" for k in KINDS)


PRESETS: dict[str, Granularity] = {
    "standard": Granularity(16, 2, 8, 8, 16),
    "micro": Granularity(8, 1, 4, 4, 8),
}


def round_to(x: float, step: int) -> int:
    """Nearest multiple of ``step`` (halves away from zero), never below ``step``."""
    return max(step, int(math.floor(x / step + 0.5)) * step)


def auto_granularity(img_size: int) -> Granularity:
    """The preset ``auto`` resolves to for a setting: ``micro`` for small images, else ``standard``."""
    return PRESETS["micro"] if img_size <= AUTO_MICRO_MAX_IMG else PRESETS["standard"]


def parse_granularity(spec: Any, img_size: int) -> Granularity:
    """Read ``auto``, a preset name, ``"E,H,Q,V,M"`` or a mapping ``{embed, heads, qk, v, mlp}``."""
    if spec is None or spec == "auto":
        return auto_granularity(img_size)
    if isinstance(spec, Granularity):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - set(KINDS)
        if unknown:
            raise ConfigError(f"granularity: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                              f"allowed: {', '.join(KINDS)}")
        return Granularity(**{k: spec[k] for k in KINDS if k in spec})
    if isinstance(spec, str):
        if spec in PRESETS:
            return PRESETS[spec]
        parts = spec.split(",")
        if len(parts) == len(KINDS):
            try:
                return Granularity(*(int(p) for p in parts))
            except ValueError:
                pass
    raise ConfigError(f"granularity {spec!r}: use auto, {', '.join(PRESETS)} or five steps "
                      f"EMB,HEADS,QK,V,MLP such as 16,2,8,8,16")
