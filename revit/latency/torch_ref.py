"""Plain torch modules with the same computation as :mod:`revit.latency.graphs` (torch backend).

The torch backend times these for blocks and fixed parts; for whole models it prefers
``revit.models.build_model`` when that package is present.  Weights can be loaded from the graph
layout (``load_graph_weights``) so graphs and modules can be compared numerically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from revit.config import BlockDims, ViTConfig


class Block(nn.Module):
    """x + proj(attn(LN1(x))); x + fc2(GELU(fc1(LN2(x)))) with per-head qk_dim / v_dim."""

    def __init__(self, embed_dim: int, dims: BlockDims, qkv_bias: bool = True) -> None:
        super().__init__()
        self.h, self.q, self.v = dims.heads, dims.qk_dim, dims.v_dim
        self.norm1 = nn.LayerNorm(embed_dim, eps=1e-6)
        self.qkv = nn.Linear(embed_dim, dims.heads * (2 * dims.qk_dim + dims.v_dim), bias=qkv_bias)
        self.proj = nn.Linear(dims.heads * dims.v_dim, embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc1 = nn.Linear(embed_dim, dims.mlp_dim)
        self.fc2 = nn.Linear(dims.mlp_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h, q, v = self.h, self.q, self.v
        qkv = self.qkv(self.norm1(x))
        qq, kk, vv = qkv.split([h * q, h * q, h * v], dim=-1)
        qq = qq.reshape(b, n, h, q).transpose(1, 2)
        kk = kk.reshape(b, n, h, q).transpose(1, 2)
        vv = vv.reshape(b, n, h, v).transpose(1, 2)
        o = F.scaled_dot_product_attention(qq, kk, vv, scale=q ** -0.5)
        x = x + self.proj(o.transpose(1, 2).reshape(b, n, h * v))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    def load_graph_weights(self, w: Mapping[str, np.ndarray]) -> None:
        """Copy weights from :func:`revit.latency.graphs.block_weights` layout ([in, out] matrices)."""
        t = {k: torch.from_numpy(np.asarray(a, np.float32)) for k, a in w.items()}
        with torch.no_grad():
            self.norm1.weight.copy_(t["ln1_w"])
            self.norm1.bias.copy_(t["ln1_b"])
            self.qkv.weight.copy_(t["qkv_w"].T)
            if self.qkv.bias is not None:
                self.qkv.bias.copy_(t["qkv_b"])
            self.proj.weight.copy_(t["proj_w"].T)
            self.proj.bias.copy_(t["proj_b"])
            self.norm2.weight.copy_(t["ln2_w"])
            self.norm2.bias.copy_(t["ln2_b"])
            self.fc1.weight.copy_(t["fc1_w"].T)
            self.fc1.bias.copy_(t["fc1_b"])
            self.fc2.weight.copy_(t["fc2_w"].T)
            self.fc2.bias.copy_(t["fc2_b"])


class ViT(nn.Module):
    """Patch embedding, prefix tokens, positions, blocks, final norm, head(s) (distilled: mean of both)."""

    def __init__(self, setting: Mapping[str, Any], embed_dim: int, blocks: list[BlockDims],
                 qkv_bias: bool = True) -> None:
        super().__init__()
        p, c, img = int(setting["patch_size"]), int(setting["in_chans"]), int(setting["img_size"])
        self.classes, self.distilled = int(setting["num_classes"]), bool(setting["distilled"])
        self.cls_tok = bool(setting["class_token"])
        prefix = int(self.cls_tok) + int(self.distilled)
        self.patch = nn.Conv2d(c, embed_dim, p, p)
        self.prefix = nn.Parameter(torch.randn(1, prefix, embed_dim) * 0.02) if prefix else None
        self.pos = nn.Parameter(torch.randn(1, (img // p) ** 2 + prefix, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(embed_dim, b, qkv_bias) for b in blocks])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, self.classes) if self.classes else nn.Identity()
        self.head_dist = nn.Linear(embed_dim, self.classes) if self.classes and self.distilled else None

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch(img).flatten(2).transpose(1, 2)
        if self.prefix is not None:
            x = torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x + self.pos))
        if not self.cls_tok:
            return self.head(x.mean(1))
        out = self.head(x[:, 0])
        if self.head_dist is not None:
            out = (out + self.head_dist(x[:, 1])) / 2
        return out


def vit(cfg: ViTConfig) -> ViT:
    from revit.latency.table import config_setting

    return ViT(config_setting(cfg), cfg.embed_dim, list(cfg.blocks), cfg.qkv_bias)
