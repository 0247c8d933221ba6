"""Per-block layers: attention whose QK and V widths per head are free, and the ViT block.

Parameter names and layouts equal timm's ``Attention``/``Block`` (fused ``qkv`` laid out
[Q of all heads | K of all heads | V of all heads], head-major; layer scale ``ls1``/``ls2`` with
``gamma``), so timm checkpoints load as is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm, LayerScale, Mlp
from torch import nn

from revit.config import BlockDims
from revit.errors import ConfigError

LN_EPS = 1e-6


class PerHeadAttention(nn.Module):
    """Multi-head self-attention with ``heads`` heads of QK width ``qk_dim`` and V width ``v_dim``."""

    def __init__(self, dim: int, heads: int, qk_dim: int, v_dim: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_heads, self.qk_dim, self.v_dim = heads, qk_dim, v_dim
        self.scale = qk_dim**-0.5
        self.qkv = nn.Linear(dim, heads * (2 * qk_dim + v_dim), bias=qkv_bias, **dd)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(heads * v_dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        h, dq, dv = self.num_heads, self.qk_dim, self.v_dim
        q, k, v = self.qkv(x).split([h * dq, h * dq, h * dv], dim=-1)
        q = q.reshape(b, n, h, dq).transpose(1, 2)
        k = k.reshape(b, n, h, dq).transpose(1, 2)
        v = v.reshape(b, n, h, dv).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        x = x.transpose(1, 2).reshape(b, n, h * dv)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block as timm's ``Block`` (optional layer scale) with its own widths.

    An absent branch (``heads`` 0 or ``mlp_dim`` 0) has no modules at all, its norm and layer scale
    included (its attributes are None): the block is the other branch and its residual.
    """

    def __init__(self, dim: int, dims: BlockDims, qkv_bias: bool = True, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, init_values: float | None = None,
                 norm_layer: Callable[..., nn.Module] = LayerNorm, act_layer: type[nn.Module] = nn.GELU,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.dims = dims
        self.norm1: nn.Module | None = None
        self.attn: PerHeadAttention | None = None
        self.ls1: nn.Module | None = None
        self.drop_path1: nn.Module | None = None
        if dims.has_attention:
            self.norm1 = norm_layer(dim, **dd)
            self.attn = PerHeadAttention(dim, dims.heads, dims.qk_dim, dims.v_dim, qkv_bias, attn_drop, proj_drop,
                                         **dd)
            self.ls1 = LayerScale(dim, init_values, **dd) if init_values else nn.Identity()
            self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2: nn.Module | None = None
        self.mlp: Mlp | None = None
        self.ls2: nn.Module | None = None
        self.drop_path2: nn.Module | None = None
        if dims.has_mlp:
            self.norm2 = norm_layer(dim, **dd)
            self.mlp = Mlp(dim, hidden_features=dims.mlp_dim, act_layer=act_layer, drop=proj_drop, **dd)
            self.ls2 = LayerScale(dim, init_values, **dd) if init_values else nn.Identity()
            self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if self.attn is not None:
            x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask,  # type: ignore[misc]
                                                       is_causal=is_causal)))
        if self.mlp is not None:
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))  # type: ignore[misc]
        return x


# the options of timm's VisionTransformer block that the per-block model has, at timm's defaults
_TIMM_BLOCK_DEFAULTS: dict[str, Any] = {
    "qk_norm": False, "scale_attn_norm": False, "scale_mlp_norm": False, "proj_bias": True,
}


class PerBlock:
    """A ``block_fn`` for timm's ``VisionTransformer``: block ``depth`` gets its own widths from ``blocks``.

    timm builds every block with the same arguments plus its index ``depth``; this picks that
    block's :class:`BlockDims` and refuses block options the per-block model does not have.
    """

    def __init__(self, blocks: Sequence[BlockDims]) -> None:
        self.blocks = tuple(blocks)

    def __call__(self, *, dim: int, depth: int, qkv_bias: bool, init_values: float | None, proj_drop: float,
                 attn_drop: float, drop_path: float, norm_layer: Callable[..., nn.Module],
                 act_layer: type[nn.Module], mlp_layer: Any = Mlp, device: Any = None, dtype: Any = None,
                 **options: Any) -> Block:
        bad = [k for k, v in options.items() if k in _TIMM_BLOCK_DEFAULTS and v != _TIMM_BLOCK_DEFAULTS[k]]
        if bad or mlp_layer is not Mlp:
            raise ConfigError(f"revit's per-block ViT does not support {(bad or ['mlp_layer'])[0]}")
        return Block(dim, self.blocks[depth], qkv_bias, proj_drop, attn_drop, drop_path, init_values,
                     norm_layer, act_layer, device=device, dtype=dtype)
