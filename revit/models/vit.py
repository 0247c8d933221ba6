"""The ReViT model: a timm-style ViT/DeiT whose blocks each have their own widths.

Every model (dense preset, pruned, rule-generated, converted timm checkpoint) is built by one
function, :func:`build_model`, from a :class:`~revit.config.ViTConfig`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.models import register_model
from timm.models.vision_transformer import init_weights_vit_timm
from torch import nn

from revit.config import ViTConfig
from revit.models.layers import LN_EPS, Block
from revit.presets import PRESETS


class ReViT(nn.Module):
    """Vision Transformer with per-block heads, QK/V width per head and MLP width.

    Parameter names equal timm's ``VisionTransformer`` (and ``VisionTransformerDistilled`` when
    ``distilled``): eval outputs of a converted timm model are identical.
    """

    def __init__(self, cfg: ViTConfig, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 attn_drop_rate: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        e = cfg.embed_dim
        self.num_classes = cfg.num_classes
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.global_pool = cfg.global_pool
        self.embed_dim = self.num_features = e
        self.distilled_training = False  # as timm: return (cls, dist) logits in training when set
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, e)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, e)) if cfg.distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens, e))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, cfg.depth)]
        self.blocks = nn.Sequential(*[
            Block(e, d, cfg.qkv_bias, drop_rate, attn_drop_rate, dpr[i]) for i, d in enumerate(cfg.blocks)
        ])
        use_fc_norm = cfg.global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(e, eps=LN_EPS)
        self.fc_norm = nn.LayerNorm(e, eps=LN_EPS) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(e, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        if cfg.distilled:
            self.head_dist = nn.Linear(e, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    @property
    def config(self) -> ViTConfig:
        """The config this model was built from (its per-block dims and setting)."""
        return self.cfg

    def init_weights(self) -> None:
        """timm's original ViT initialisation (truncated normal 0.02, zero biases)."""
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            trunc_normal_(self.dist_token, std=0.02)
        for name, m in self.named_modules():
            if m is not self:
                init_weights_vit_timm(m, name)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token"}

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        if prefix:
            x = torch.cat([*prefix, x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pos_embed(self.patch_embed(x))
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.cfg.distilled:
            x, x_dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
            if pre_logits:
                return (x + x_dist) / 2
            x, x_dist = self.head(x), self.head_dist(x_dist)
            if self.distilled_training and self.training and not torch.jit.is_scripting():
                return x, x_dist
            return (x + x_dist) / 2
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # type: ignore[return-value]


_TIMM_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only")


def build_model(cfg: ViTConfig, *, checkpoint: str | os.PathLike[str] | None = None, **kwargs: Any) -> ReViT:
    """Build a :class:`ReViT` from ``cfg`` (the one build path), optionally loading a local checkpoint.

    ``kwargs`` are regularisation settings (``drop_rate``, ``drop_path_rate``, ``attn_drop_rate``).
    """
    for k in _TIMM_KWARGS:
        kwargs.pop(k, None)
    model = ReViT(cfg, **kwargs)
    if checkpoint is not None:
        from revit.models.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model


def _make_entrypoint(name: str) -> Any:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> ReViT:
        checkpoint = kwargs.pop("checkpoint_path", None) or kwargs.pop("checkpoint", None)
        if pretrained and checkpoint is None:
            from revit.errors import CheckpointError

            raise CheckpointError(f"{name} has no hub weights; pass a local file: checkpoint_path=FILE")
        return build_model(PRESETS[name](), checkpoint=checkpoint, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = PRESETS[name].__doc__ or f"ReViT preset {name}."
    return entrypoint


for _name in PRESETS:
    globals()[_name] = register_model(_make_entrypoint(_name))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
