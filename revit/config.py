"""The types passed between every stage: granularity, model setting, per-block dims, ViT config.

All of them are frozen and torch-free.  ``qk_dim`` and ``v_dim`` are *per head*; field names are
the config's everywhere (DESIGN.md).  YAML carries ``schema: revit/vit-config/v1`` and is
validated on load (derived numbers in a file are ignored).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

from revit._io import atomic_write_text, check_schema, dump_yaml, load_yaml, parse_yaml
from revit.errors import ConfigError, check_keys
from revit.input_checks import short

SCHEMA = "revit/vit-config/v1"
BLOCK_KINDS = ("heads", "qk_dim", "v_dim", "mlp_dim")  # the four widths each block has its own value of
WIDTH_KINDS = ("embed_dim", *BLOCK_KINDS)  # the five prunable widths, in the order of "E,H,Q,V,M"
PER_HEAD_KINDS = ("qk_dim", "v_dim")  # widths of one head (a block's attention width is heads x these)
ATTENTION_KINDS = ("heads", *PER_HEAD_KINDS)  # the widths of a block's attention branch (all 0 without one)


def _check_int(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer, got {short(value)}")
    if value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}")
    return value


def _check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, got {short(value)}")
    return value


# granularity ---------------------------------------------------------------------------------
_OLD_GRANULARITY_KEYS = {"embed": "embed_dim", "qk": "qk_dim", "v": "v_dim", "mlp": "mlp_dim"}
AUTO_MICRO_MAX_IMG = 64  # ``auto`` picks ``micro`` for images of at most this many pixels a side


@dataclass(frozen=True)
class Granularity:
    """The step of every prunable width, which is also its minimum (a width never rounds to zero).

    NViT prunes in units (EMB 16, heads 2, QK 8, V 8, MLP 16; NVIT_SPEC.md section 1) so that dims
    stay friendly to tensor cores; small models need finer steps (``micro``: 8, 1, 4, 4, 8).
    """

    embed_dim: int = 16
    heads: int = 2
    qk_dim: int = 8
    v_dim: int = 8
    mlp_dim: int = 16

    PRESETS: ClassVar[dict[str, Granularity]]

    def __post_init__(self) -> None:
        for k in WIDTH_KINDS:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"granularity {k} must be a positive integer, got {short(v)}")

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in WIDTH_KINDS}

    def describe(self) -> str:
        """One line for humans: ``EMB 16 HEADS 2 QK 8 V 8 MLP 16``."""
        labels = ("EMB", "HEADS", "QK", "V", "MLP")
        return " ".join(f"{lab} {getattr(self, k)}" for lab, k in zip(labels, WIDTH_KINDS, strict=True))

    def round_to(self, kind: str, x: float) -> int:
        """``x`` rounded to the nearest multiple of this kind's step (halves up), never below the step."""
        step = getattr(self, kind)
        return max(step, int(math.floor(x / step + 0.5)) * step)

    @classmethod
    def auto(cls, img_size: int) -> Granularity:
        """What ``auto`` means for a setting: ``micro`` for images of at most 64 px a side, else ``standard``."""
        return cls.PRESETS["micro" if img_size <= AUTO_MICRO_MAX_IMG else "standard"]

    @classmethod
    def for_widths(cls, embed_dim: int, blocks: Sequence[BlockDims]) -> Granularity:
        """What ``auto`` means for a model: its widths decide, not its image size.

        ``standard`` when the model is wide enough for NViT's steps (embedding and MLP at least 8 standard
        steps, 128; QK and V per head at least 4, 32: a DeiT-Tiny keeps 8-wide QK steps at any image size),
        else ``micro`` (the embedded 96-wide default and smaller test models).
        """
        std = cls.PRESETS["standard"]
        wide = (embed_dim >= 8 * std.embed_dim and max(b.mlp_dim for b in blocks) >= 8 * std.mlp_dim
                and max(b.qk_dim for b in blocks) >= 4 * std.qk_dim and max(b.v_dim for b in blocks) >= 4 * std.v_dim)
        return std if wide else cls.PRESETS["micro"]

    @classmethod
    def parse(cls, spec: Any, img_size: int) -> Granularity:
        """``auto``/None, a preset name, ``"E,H,Q,V,M"``, a mapping of the five widths, or a Granularity.

        Mappings may use the old short keys (embed, heads, qk, v, mlp) of earlier rule files;
        missing widths take the standard steps.
        """
        if spec is None or spec == "auto":
            return cls.auto(img_size)
        if isinstance(spec, Granularity):
            return spec
        if isinstance(spec, Mapping):
            d = {_OLD_GRANULARITY_KEYS.get(str(k), str(k)): v for k, v in spec.items()}
            check_keys(d, WIDTH_KINDS, "granularity")
            return cls(**d)
        if isinstance(spec, str):
            if spec in cls.PRESETS:
                return cls.PRESETS[spec]
            parts = spec.split(",")
            if len(parts) == len(WIDTH_KINDS) and all(p.strip().isdigit() for p in parts):
                return cls(*(int(p) for p in parts))
        raise ConfigError(f"granularity {spec!r}: use auto, {', '.join(cls.PRESETS)} or five steps "
                          f"EMB,HEADS,QK,V,MLP such as 16,2,8,8,16")


Granularity.PRESETS = {
    "standard": Granularity(16, 2, 8, 8, 16),
    "micro": Granularity(8, 1, 4, 4, 8),
    "one": Granularity(1, 1, 1, 1, 1),
}


# setting ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """Everything about a ViT except its widths: image, patch, channels, classes, tokens, depth.

    ``depth`` matters where a setting makes configs (rule generation, latency spaces); a
    :class:`ViTConfig`'s setting always has the depth of its blocks.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    distilled: bool = False
    class_token: bool = True
    qkv_bias: bool = True
    init_values: float | None = None  # layer scale (timm ls1/ls2, DeiT-III): initial gamma; None = none
    no_embed_class: bool = False  # DeiT-III position embedding: patches only, prefix tokens added after
    depth: int = 12

    # what the latency of the parts outside the blocks (patch embedding, tokens, heads) depends on
    FIXED_PARTS_KEYS: ClassVar[tuple[str, ...]] = ("img_size", "patch_size", "in_chans", "num_classes",
                                                   "distilled", "class_token")
    PRESETS: ClassVar[dict[str, Setting]]

    def __post_init__(self) -> None:
        for k in ("img_size", "patch_size", "in_chans", "depth"):
            _check_int(getattr(self, k), k)
        _check_int(self.num_classes, "num_classes", minimum=0)
        for k in ("distilled", "class_token", "qkv_bias", "no_embed_class"):
            _check_bool(getattr(self, k), k)
        if self.init_values is not None and (isinstance(self.init_values, bool)
                                             or not isinstance(self.init_values, (int, float))
                                             or not self.init_values > 0):
            raise ConfigError("init_values (layer scale) must be a positive number or null, got "
                              f"{short(self.init_values)}")
        if self.img_size % self.patch_size:
            raise ConfigError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.distilled and not self.class_token:
            raise ConfigError("a distilled model needs class_token: true")
        self.check_memory()

    BLOCK_OVERHEAD_BYTES: ClassVar[int] = 64 << 10  # Python objects of one built block (modules, their dicts)

    def check_memory(self) -> None:
        """Refuse a depth whose blocks cannot even be represented here (depth 10^8), before any is made."""
        from revit.input_checks import check_fits_memory

        check_fits_memory(self.depth * self.BLOCK_OVERHEAD_BYTES, f"a model of {self.depth} blocks",
                          hint="use fewer blocks")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.distilled)

    @property
    def tokens(self) -> int:
        """Sequence length seen by every block: patches plus class and distillation tokens."""
        return self.num_patches + self.num_prefix_tokens

    @property
    def global_pool(self) -> str:
        return "token" if self.class_token else "avg"

    def fixed_parts(self) -> dict[str, Any]:
        """The fields that fix the cost of the parts outside the blocks (besides ``embed_dim``)."""
        return {k: getattr(self, k) for k in self.FIXED_PARTS_KEYS}

    def to_dict(self, depth: bool = True) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if depth or f.name != "depth"}

    def config(self, embed_dim: int, blocks: Sequence[BlockDims], name: str | None = None) -> ViTConfig:
        """The ViT of this setting with these widths (``depth`` blocks)."""
        if len(blocks) != self.depth:
            raise ConfigError(f"the setting has depth {self.depth}, got {len(blocks)} blocks")
        return ViTConfig(embed_dim, tuple(blocks), self, name=name)

    @classmethod
    def from_dict(cls, d: Any, source: str = "setting", base: Setting | None = None) -> Setting:
        """Read a mapping of setting fields on top of ``base`` (or of its ``preset``: a preset name)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source} must be a mapping of {', '.join(f.name for f in fields(cls))}")
        check_keys(d, ("preset", *(f.name for f in fields(cls))), source)
        over = {str(k): v for k, v in d.items() if k != "preset"}
        start = cls.parse(d["preset"], source) if "preset" in d else (base or cls())
        try:
            return replace(start, **over)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def parse(cls, spec: Any, source: str = "setting") -> Setting:
        """A preset name (``imagenet``, ``micro``), a mapping (optionally with ``preset``) or a Setting."""
        if isinstance(spec, Setting):
            return spec
        if isinstance(spec, str):
            if spec not in cls.PRESETS:
                raise ConfigError(f"{source}: unknown setting {spec!r}; known: {', '.join(cls.PRESETS)} "
                                  f"(or a mapping of {', '.join(f.name for f in fields(cls))})")
            return cls.PRESETS[spec]
        return cls.from_dict(spec, source)


Setting.PRESETS = {
    "imagenet": Setting(),
    "micro": Setting(img_size=28, patch_size=7, in_chans=1, num_classes=10, depth=8),
}


# blocks and configs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockDims:
    """Widths of one transformer block: heads, QK and V width *per head*, MLP hidden width.

    A branch may be absent: ``heads: 0`` (no attention; ``qk_dim`` and ``v_dim`` must then be 0 too:
    a head width without heads is refused, not guessed) or ``mlp_dim: 0`` (no MLP).  A block with
    neither (:data:`REMOVED`, all four 0) is a removed block: a :class:`ViTConfig` drops it.
    """

    heads: int
    qk_dim: int
    v_dim: int
    mlp_dim: int

    def __post_init__(self) -> None:
        for k in BLOCK_KINDS:
            _check_int(getattr(self, k), f"block {k}", minimum=0)
        if self.heads == 0 and (self.qk_dim or self.v_dim):
            raise ConfigError(f"block heads 0 (no attention) needs qk_dim 0 and v_dim 0, got qk_dim {self.qk_dim} "
                              f"and v_dim {self.v_dim}: a block without attention has no head width")
        if self.heads > 0:
            for k in PER_HEAD_KINDS:
                _check_int(getattr(self, k), f"block {k} (with {self.heads} heads)")

    @property
    def has_attention(self) -> bool:
        """Whether the block has its attention branch (heads > 0)."""
        return self.heads > 0

    @property
    def has_mlp(self) -> bool:
        """Whether the block has its MLP branch (mlp_dim > 0)."""
        return self.mlp_dim > 0

    @property
    def is_removed(self) -> bool:
        """Neither branch: the block is the identity, and a config drops it."""
        return not (self.has_attention or self.has_mlp)

    @property
    def attn_qk(self) -> int:
        """Total query (= key) width of the block: heads * qk_dim."""
        return self.heads * self.qk_dim

    @property
    def attn_v(self) -> int:
        """Total value width of the block (input of the projection): heads * v_dim."""
        return self.heads * self.v_dim

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in BLOCK_KINDS}

    @classmethod
    def from_dict(cls, d: Any, where: str = "block") -> BlockDims:
        """Read ``{heads, qk_dim, v_dim, mlp_dim}``; with ``heads: 0`` the per-head widths may be left out (0)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where} must be a mapping with keys {', '.join(BLOCK_KINDS)}, got {short(d)}")
        check_keys(d, BLOCK_KINDS, where)
        optional = PER_HEAD_KINDS if d.get("heads") == 0 and not isinstance(d.get("heads"), bool) else ()
        missing = [k for k in BLOCK_KINDS if k not in d and k not in optional]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
        widths = {k: _check_int(d.get(k, 0), f"{where} {k}", minimum=0) for k in BLOCK_KINDS}
        try:
            return cls(**widths)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


REMOVED = BlockDims(0, 0, 0, 0)  # a removed block (no attention, no MLP), as a trace may record it at its index


def _kept_blocks(blocks: Sequence[BlockDims]) -> tuple[BlockDims, ...]:
    """The blocks a config keeps: removed ones (no attention, no MLP) are dropped, so its depth shrinks.

    Depth 0 and a list whose every block is removed are refused: a ViT needs at least one block.
    """
    given = tuple(blocks)
    for i, b in enumerate(given):
        if not isinstance(b, BlockDims):
            raise ConfigError(f"block {i} must be a BlockDims, got {type(b).__name__}")
    if not given:
        raise ConfigError("a ViT needs at least one block (depth 0 given)")
    kept = tuple(b for b in given if not b.is_removed)
    if not kept:
        raise ConfigError(f"every block is removed (heads 0 and mlp_dim 0 in all {len(given)}): "
                          "a ViT needs at least one block")
    return kept


@dataclass(frozen=True, init=False)
class ViTConfig:
    """A per-block ViT/DeiT: its :class:`Setting` (image, patch, classes, tokens) and every block's widths.

    Built as ``ViTConfig(embed_dim, blocks, setting)`` or with the setting's fields as keywords
    (``ViTConfig(embed_dim=96, blocks=..., img_size=28, patch_size=7)``, on top of ``setting`` when
    both are given); the setting's fields read as attributes (``cfg.img_size``) and are flat in YAML.
    A block with ``heads: 0`` or ``mlp_dim: 0`` lacks that branch; removed blocks (both 0) are dropped,
    so a config is always the model as built: its depth is the number of blocks it keeps.
    """

    embed_dim: int
    blocks: tuple[BlockDims, ...]
    setting: Setting
    name: str | None = field(default=None, compare=False)

    def __init__(self, embed_dim: int, blocks: Sequence[BlockDims], setting: Setting | None = None, *,
                 name: str | None = None, **setting_fields: Any) -> None:
        check_keys(setting_fields, [f.name for f in fields(Setting)], "ViTConfig", what="argument")
        blocks = _kept_blocks(blocks)
        if "depth" in setting_fields and setting_fields["depth"] != len(blocks):
            raise ConfigError(f"depth {setting_fields['depth']} given with {len(blocks)} blocks")
        setting = replace(setting or Setting(), **{**setting_fields, "depth": len(blocks)})
        object.__setattr__(self, "embed_dim", embed_dim)
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "setting", setting)
        object.__setattr__(self, "name", name)
        self.__post_init__()

    def __post_init__(self) -> None:
        _check_int(self.embed_dim, "embed_dim")

    # the setting's fields and derived numbers --------------------------------------------------
    @property
    def img_size(self) -> int:
        return self.setting.img_size

    @property
    def patch_size(self) -> int:
        return self.setting.patch_size

    @property
    def in_chans(self) -> int:
        return self.setting.in_chans

    @property
    def num_classes(self) -> int:
        return self.setting.num_classes

    @property
    def distilled(self) -> bool:
        return self.setting.distilled

    @property
    def class_token(self) -> bool:
        return self.setting.class_token

    @property
    def qkv_bias(self) -> bool:
        return self.setting.qkv_bias

    @property
    def init_values(self) -> float | None:
        return self.setting.init_values

    @property
    def no_embed_class(self) -> bool:
        return self.setting.no_embed_class

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def num_patches(self) -> int:
        return self.setting.num_patches

    @property
    def num_prefix_tokens(self) -> int:
        return self.setting.num_prefix_tokens

    @property
    def tokens(self) -> int:
        """Sequence length seen by every block: patches plus class and distillation tokens."""
        return self.setting.tokens

    @property
    def global_pool(self) -> str:
        return self.setting.global_pool

    def is_uniform(self) -> bool:
        return all(b == self.blocks[0] for b in self.blocks)

    def with_blocks(self, blocks: Sequence[BlockDims], embed_dim: int | None = None) -> ViTConfig:
        return ViTConfig(embed_dim or self.embed_dim, tuple(blocks), self.setting)

    # I/O ------------------------------------------------------------------------------------
    def to_dict(self, derived: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The YAML document; ``derived`` (e.g. :func:`revit.counting.derived`) is written as information."""
        d: dict[str, Any] = {"schema": SCHEMA}
        if self.name:
            d["name"] = self.name
        d["embed_dim"] = self.embed_dim
        d.update(self.setting.to_dict(depth=False))
        d["blocks"] = [b.to_dict() for b in self.blocks]
        if derived is not None:
            d["derived"] = dict(derived)
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "config") -> ViTConfig:
        setting_keys = [f.name for f in fields(Setting) if f.name != "depth"]
        d = check_schema(d, "vit-config", source, keys=["schema", "name", "embed_dim", *setting_keys, "blocks",
                                                         "derived"])
        if "embed_dim" not in d or "blocks" not in d:
            raise ConfigError(f"{source}: 'embed_dim' and 'blocks' are required")
        blocks = d["blocks"]
        if not isinstance(blocks, list):
            raise ConfigError(f"{source}: 'blocks' must be a list of {{heads, qk_dim, v_dim, mlp_dim}}")
        name = d.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{source}: name must be a string")
        try:
            dims = tuple(BlockDims.from_dict(b, f"{source}: block {i}") for i, b in enumerate(blocks))
            return cls(d["embed_dim"], dims, name=name, **{k: d[k] for k in setting_keys if k in d})
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(source) else f"{source}: {msg}") from None

    def to_yaml(self, derived: Mapping[str, Any] | None = None) -> str:
        return dump_yaml(self.to_dict(derived=derived))

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "config") -> ViTConfig:
        return cls.from_dict(parse_yaml(text, source), source)

    def save(self, path: str | os.PathLike[str], derived: Mapping[str, Any] | None = None) -> None:
        atomic_write_text(path, self.to_yaml(derived=derived))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ViTConfig:
        return cls.from_dict(load_yaml(path), str(path))


def uniform(embed_dim: int, depth: int, heads: int, head_dim: int | None = None, mlp_dim: int | None = None,
            **setting: Any) -> ViTConfig:
    """A DeiT-style config: every block the same, head_dim = embed/heads and MLP = 4x by default."""
    hd = head_dim if head_dim is not None else embed_dim // heads
    mlp = mlp_dim if mlp_dim is not None else 4 * embed_dim
    return ViTConfig(embed_dim=embed_dim, blocks=tuple(BlockDims(heads, hd, hd, mlp) for _ in range(depth)), **setting)
