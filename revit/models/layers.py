"""Per-block layers: attention whose QK and V widths per head are free, and the ViT block.

Parameter names and layouts equal timm's ``Attention``/``Block`` (fused ``qkv`` laid out
[Q of all heads | K of all heads | V of all heads], head-major), so timm checkpoints load as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from revit.config import BlockDims

LN_EPS = 1e-6


class PerHeadAttention(nn.Module):
    """Multi-head self-attention with ``heads`` heads of QK width ``qk_dim`` and V width ``v_dim``."""

    def __init__(self, dim: int, heads: int, qk_dim: int, v_dim: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.qk_dim, self.v_dim = heads, qk_dim, v_dim
        self.scale = qk_dim**-0.5
        self.qkv = nn.Linear(dim, heads * (2 * qk_dim + v_dim), bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(heads * v_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h, dq, dv = self.num_heads, self.qk_dim, self.v_dim
        q, k, v = self.qkv(x).split([h * dq, h * dq, h * dv], dim=-1)
        q = q.reshape(b, n, h, dq).transpose(1, 2)
        k = k.reshape(b, n, h, dq).transpose(1, 2)
        v = v.reshape(b, n, h, dv).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                                           scale=self.scale)
        x = x.transpose(1, 2).reshape(b, n, h * dv)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block (timm's ``Block`` without layer scale) with per-block widths."""

    def __init__(self, dim: int, dims: BlockDims, qkv_bias: bool = True, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dims = dims
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = PerHeadAttention(dim, dims.heads, dims.qk_dim, dims.v_dim, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, hidden_features=dims.mlp_dim, act_layer=nn.GELU, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))
