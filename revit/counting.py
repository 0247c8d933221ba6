"""Exact MACs and parameter counts of a :class:`~revit.config.ViTConfig`, in pure Python.

Conventions (NVIT_SPEC.md section 5):
- ``"nvit"`` (default): every linear layer (patch embedding and classifier heads included) plus
  the two attention matmuls (Q K^T and A V); the paper's "FLOPs" are these MACs.
- ``"timm"``: linear layers only (no attention matmuls), as many benchmark tables print.
LayerNorm, softmax, GELU, bias additions and the residual adds are not counted in either.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from revit.config import BlockDims, ViTConfig
from revit.errors import ConfigError, RevitError
from revit.input_checks import short

Convention = Literal["nvit", "timm"]
CONVENTIONS: dict[str, str] = {
    "nvit": "linear layers + attention matmuls (NViT paper)",
    "timm": "linear layers only, no attention matmuls",
}


def _check(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown MACs convention {convention!r}; known: {', '.join(CONVENTIONS)}")


def block_macs(embed_dim: int, b: BlockDims, tokens: int, convention: Convention = "nvit") -> int:
    """MACs of one block for one image of ``tokens`` tokens."""
    _check(convention)
    e, n = embed_dim, tokens
    linear = n * e * b.heads * (2 * b.qk_dim + b.v_dim)  # fused qkv
    linear += n * b.attn_v * e  # proj
    linear += 2 * n * e * b.mlp_dim  # fc1 + fc2
    if convention == "timm":
        return linear
    return linear + n * n * (b.attn_qk + b.attn_v)  # Q K^T and A V


def block_params(embed_dim: int, b: BlockDims, qkv_bias: bool = True) -> int:
    """Parameters of one block; an absent branch (heads 0, mlp_dim 0) has none, its LayerNorm included."""
    e = embed_dim
    p = 0
    if b.has_attention:
        qkv_out = b.heads * (2 * b.qk_dim + b.v_dim)
        p += 2 * e  # norm1
        p += e * qkv_out + (qkv_out if qkv_bias else 0)
        p += b.attn_v * e + e  # proj
    if b.has_mlp:
        p += 2 * e  # norm2
        p += e * b.mlp_dim + b.mlp_dim + b.mlp_dim * e + e  # fc1, fc2
    return p


def branches(cfg: ViTConfig) -> int:
    """Number of residual branches (attention and MLP) the config's blocks have."""
    return sum(int(b.has_attention) + int(b.has_mlp) for b in cfg.blocks)


def stem_macs(cfg: ViTConfig) -> int:
    """Patch embedding MACs (a conv with stride = kernel = patch size)."""
    return cfg.num_patches * cfg.embed_dim * cfg.in_chans * cfg.patch_size**2


def head_macs(cfg: ViTConfig) -> int:
    """Classifier head(s) MACs: one token (or the pooled vector) per head."""
    return cfg.embed_dim * cfg.num_classes * (2 if cfg.distilled else 1)


def macs(cfg: ViTConfig, convention: Convention = "nvit") -> int:
    """Multiply-accumulates of one forward pass of one image."""
    total = stem_macs(cfg) + head_macs(cfg)
    return total + sum(block_macs(cfg.embed_dim, b, cfg.tokens, convention) for b in cfg.blocks)


def params(cfg: ViTConfig) -> int:
    """Number of parameters, equal to the sum of ``numel`` over the built model."""
    e = cfg.embed_dim
    p = e * cfg.in_chans * cfg.patch_size**2 + e  # patch embedding conv
    p += cfg.num_prefix_tokens * e  # cls / dist tokens
    p += (cfg.num_patches if cfg.no_embed_class else cfg.tokens) * e  # position embedding (DeiT: + prefix)
    p += sum(block_params(e, b, cfg.qkv_bias) for b in cfg.blocks)
    p += e * branches(cfg) if cfg.init_values else 0  # layer scale gammas (ls1, ls2) of the branches kept
    p += 2 * e  # final norm (or fc_norm when pooling by average)
    p += (e * cfg.num_classes + cfg.num_classes) * (2 if cfg.distilled else 1)
    return p


def derived(cfg: ViTConfig) -> dict[str, Any]:
    """The derived numbers written into a config file for information (never trusted on load)."""
    return {"tokens": cfg.tokens, "params": params(cfg), "macs": macs(cfg), "macs_linear_only": macs(cfg, "timm"),
            "note": "informational; recomputed on load, never trusted"}


def format_count(n: float, unit: str = "") -> str:
    """Human format: 4.71G, 23.1M, 150.0K."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def format_spread(mean: float, std: float | None, n: int, fmt: str = "{:.2f}", unit: str = "") -> str:
    """``mean ± std unit (n = N)``, or ``mean unit (n = 1)`` when there is one value and so no spread."""
    if n <= 1 or std is None:
        return f"{fmt.format(mean)}{unit} (n = {n})"
    return f"{fmt.format(mean)} ± {fmt.format(std)}{unit} (n = {n})"


def parse_count(text: str) -> int:
    """Parse ``4.6G``, ``150M``, ``2e9`` or ``1200K`` into an integer."""
    t = str(text).strip()
    mult = 1.0
    suffixes = {"G": 1e9, "M": 1e6, "K": 1e3, "T": 1e12}
    if t and t[-1].upper() in suffixes:
        mult = suffixes[t[-1].upper()]
        t = t[:-1]
    try:
        value = float(t) * mult
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as a count (examples: 4.6G, 150M, 2e9)") from None
    if not math.isfinite(value) or value <= 0:  # nan, inf, 1e400
        raise ConfigError(f"a count must be a finite positive number, got {short(text)}")
    return int(round(value))


def check_memory(cfg: ViTConfig) -> None:
    """Refuse a config whose fp32 weights cannot fit in this machine's memory (embed 10^9) before anything
    is allocated; the exact count is cheap, so every config a command loads, generates or builds is checked."""
    from revit.input_checks import check_fits_memory

    n = params(cfg)
    check_fits_memory(4 * n, f"a config of {format_count(n)} parameters (fp32 weights)")


def count_text() -> Any:
    """argparse type: a positive, finite count such as ``4.6G``, ``150M`` or ``2e9`` (kept as text)."""
    import argparse

    def parse(text: str) -> str:
        try:
            parse_count(text)
        except RevitError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text

    parse.__name__ = "count"
    return parse
