"""The ViT config passed between every stage: per-block dims and the model setting.

``qk_dim`` and ``v_dim`` are *per head*.  Configs are frozen; YAML carries
``schema: revit/vit-config/v1`` and is validated on load (derived numbers in a file are ignored).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from revit._io import atomic_write_text, check_schema, dump_yaml, load_yaml
from revit.errors import ConfigError

SCHEMA = "revit/vit-config/v1"
BLOCK_KEYS = ("heads", "qk_dim", "v_dim", "mlp_dim")


def _check_int(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}")
    return value


def _check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class BlockDims:
    """Widths of one transformer block: heads, QK and V width *per head*, MLP hidden width."""

    heads: int
    qk_dim: int
    v_dim: int
    mlp_dim: int

    def __post_init__(self) -> None:
        for k in BLOCK_KEYS:
            _check_int(getattr(self, k), f"block {k}")

    @property
    def attn_qk(self) -> int:
        """Total query (= key) width of the block: heads * qk_dim."""
        return self.heads * self.qk_dim

    @property
    def attn_v(self) -> int:
        """Total value width of the block (input of the projection): heads * v_dim."""
        return self.heads * self.v_dim

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in BLOCK_KEYS}

    @classmethod
    def from_dict(cls, d: Any, where: str = "block") -> BlockDims:
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where} must be a mapping with keys {', '.join(BLOCK_KEYS)}, got {d!r}")
        unknown = set(d) - set(BLOCK_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                              f"allowed: {', '.join(BLOCK_KEYS)}")
        missing = [k for k in BLOCK_KEYS if k not in d]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
        return cls(**{k: _check_int(d[k], f"{where} {k}") for k in BLOCK_KEYS})


@dataclass(frozen=True)
class ViTConfig:
    """A per-block ViT/DeiT: the setting (image, patch, classes, tokens) and every block's widths."""

    embed_dim: int
    blocks: tuple[BlockDims, ...]
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    distilled: bool = False
    class_token: bool = True
    qkv_bias: bool = True
    init_values: float | None = None  # layer scale (timm ls1/ls2, DeiT-III): initial gamma; None = none
    no_embed_class: bool = False  # DeiT-III position embedding: patches only, prefix tokens added after
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_int(self.embed_dim, "embed_dim")
        _check_int(self.img_size, "img_size")
        _check_int(self.patch_size, "patch_size")
        _check_int(self.in_chans, "in_chans")
        _check_int(self.num_classes, "num_classes", minimum=0)
        _check_bool(self.distilled, "distilled")
        _check_bool(self.class_token, "class_token")
        _check_bool(self.qkv_bias, "qkv_bias")
        _check_bool(self.no_embed_class, "no_embed_class")
        if self.init_values is not None and (isinstance(self.init_values, bool)
                                             or not isinstance(self.init_values, (int, float))
                                             or not self.init_values > 0):
            raise ConfigError(f"init_values (layer scale) must be a positive number or null, got {self.init_values!r}")
        if not isinstance(self.blocks, tuple):
            object.__setattr__(self, "blocks", tuple(self.blocks))
        if len(self.blocks) == 0:
            raise ConfigError("a ViT needs at least one block (depth 0 given)")
        for i, b in enumerate(self.blocks):
            if not isinstance(b, BlockDims):
                raise ConfigError(f"block {i} must be a BlockDims, got {type(b).__name__}")
        if self.img_size % self.patch_size:
            raise ConfigError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.distilled and not self.class_token:
            raise ConfigError("a distilled model needs class_token: true")

    # derived numbers -------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.blocks)

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

    def is_uniform(self) -> bool:
        return all(b == self.blocks[0] for b in self.blocks)

    def with_blocks(self, blocks: Sequence[BlockDims], embed_dim: int | None = None) -> ViTConfig:
        return replace(self, blocks=tuple(blocks), embed_dim=embed_dim or self.embed_dim, name=None)

    # I/O ------------------------------------------------------------------------------------
    def to_dict(self, derived: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": SCHEMA}
        if self.name:
            d["name"] = self.name
        for f in fields(self):
            if f.name in ("blocks", "name"):
                continue
            d[f.name] = getattr(self, f.name)
        d["blocks"] = [b.to_dict() for b in self.blocks]
        if derived:
            from revit import counting

            d["derived"] = {
                "tokens": self.tokens,
                "params": counting.params(self),
                "macs": counting.macs(self),
                "macs_linear_only": counting.macs(self, convention="timm"),
                "note": "informational; recomputed on load, never trusted",
            }
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "config") -> ViTConfig:
        d = check_schema(d, "vit-config", source)
        allowed = {f.name for f in fields(cls)} | {"schema", "derived"}
        unknown = set(d) - allowed
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                              f"allowed: {', '.join(sorted(allowed))}")
        if "embed_dim" not in d or "blocks" not in d:
            raise ConfigError(f"{source}: 'embed_dim' and 'blocks' are required")
        blocks = d["blocks"]
        if not isinstance(blocks, list):
            raise ConfigError(f"{source}: 'blocks' must be a list of {{heads, qk_dim, v_dim, mlp_dim}}")
        kw = {k: v for k, v in d.items() if k not in ("schema", "derived", "blocks")}
        name = kw.pop("name", None)
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{source}: name must be a string")
        try:
            return cls(blocks=tuple(BlockDims.from_dict(b, f"{source}: block {i}") for i, b in enumerate(blocks)),
                       name=name, **kw)
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(source) else f"{source}: {msg}") from None

    def to_yaml(self, derived: bool = False) -> str:
        return dump_yaml(self.to_dict(derived=derived))

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "config") -> ViTConfig:
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            from revit.errors import FileFormatError

            raise FileFormatError(f"{source}: malformed YAML ({str(e).splitlines()[0]})") from None
        return cls.from_dict(doc, source)

    def save(self, path: str | os.PathLike[str], derived: bool = True) -> None:
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
