"""Checkpoints: timm ViT/DeiT <-> ReViT conversion, and local ``.pth``/``.safetensors`` loading.

The per-block model uses timm's parameter names and layouts, so a timm state dict needs no
renaming: conversion infers the :class:`ViTConfig` and checks every shape.  Parts the per-block
model lacks (layer scale, register tokens, QK norm, ...) are refused with their name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revit.config import BlockDims, ViTConfig
from revit.errors import CheckpointError

# key fragment -> the part it belongs to, for parts ReViT does not model
_UNSUPPORTED_KEYS = {
    ".ls1.": "layer scale (ls1/ls2)", ".ls2.": "layer scale (ls1/ls2)", "reg_token": "register tokens",
    "q_norm": "QK normalisation", "k_norm": "QK normalisation", "attn.norm.": "attention output norm",
    "norm_pre": "pre-norm (norm_pre)", "attn_pool": "attention pooling head", "patch_embed.norm": "patch-embed norm",
    "mlp.norm.": "MLP norm (scale_mlp_norm)", "fc1_g": "gated MLP (SwiGLU)", "fc1_x": "gated MLP (SwiGLU)",
    "pre_logits": "pre-logits layer",
}


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a local ``.pth``/``.pt``/``.bin``/``.safetensors`` file into a flat state dict."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    for wrapper in ("state_dict_ema", "model_ema", "model", "state_dict"):
        if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
            break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _refuse_unsupported(keys: Any, source: str) -> None:
    for k in keys:
        for frag, part in _UNSUPPORTED_KEYS.items():
            if frag in k:
                raise CheckpointError(f"{source}: has {part} ({k}), which revit's per-block ViT does not support")


def check_compatible(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first missing/unexpected keys and shape mismatches."""
    _refuse_unsupported(sd.keys(), source)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in sd and sd[k].shape != v.shape]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {'; '.join(wrong[:3])} (checkpoint vs config)")
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
    if problems:
        raise CheckpointError(f"{source} does not match the config: " + "; ".join(problems))


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a local checkpoint into ``model`` after checking it matches exactly."""
    sd = load_state_dict(path)
    check_compatible(model, sd, str(path))
    model.load_state_dict(sd, strict=True)


def config_from_state_dict(sd: Mapping[str, torch.Tensor], heads: int | list[int] | None = None,
                           head_dim: int = 64, qk_dim: int | list[int] | None = None) -> ViTConfig:
    """Infer a :class:`ViTConfig` from a timm-layout state dict.

    Head counts are not visible in the tensors: pass ``heads`` (per model or per block), else
    ``embed_dim // head_dim``.  ``qk_dim`` per head defaults to the V width (timm: QK == V).
    """
    _refuse_unsupported(sd.keys(), "state dict")
    try:
        pw = sd["patch_embed.proj.weight"]
        e, in_chans, p, _ = pw.shape
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        pos = sd["pos_embed"].shape[1]
    except KeyError as err:
        raise CheckpointError(f"state dict lacks {err}: not a timm ViT/DeiT") from None
    class_token = "cls_token" in sd
    distilled = "dist_token" in sd
    prefix = int(class_token) + int(distilled)
    grid = round((pos - prefix) ** 0.5)
    if grid * grid != pos - prefix:
        raise CheckpointError(f"pos_embed has {pos} tokens: not {prefix} prefix tokens + a square grid")
    head = sd.get("head.weight")
    num_classes = int(head.shape[0]) if head is not None else 0
    blocks = []
    for i in range(depth):
        qkv_out = sd[f"blocks.{i}.attn.qkv.weight"].shape[0]
        attn_v = sd[f"blocks.{i}.attn.proj.weight"].shape[1]
        mlp = sd[f"blocks.{i}.mlp.fc1.weight"].shape[0]
        h = heads[i] if isinstance(heads, list) else heads or max(1, attn_v // head_dim)
        if attn_v % h or (qkv_out - attn_v) % (2 * h):
            raise CheckpointError(f"block {i}: widths qkv {qkv_out}, v {attn_v} do not split into {h} heads")
        qk = (qk_dim[i] if isinstance(qk_dim, list) else qk_dim) or (qkv_out - attn_v) // (2 * h)
        if 2 * h * qk + attn_v != qkv_out:
            raise CheckpointError(f"block {i}: qkv width {qkv_out} != heads x (2 x qk + v)")
        blocks.append(BlockDims(h, qk, attn_v // h, mlp))
    return ViTConfig(embed_dim=int(e), blocks=tuple(blocks), img_size=grid * int(p), patch_size=int(p),
                     in_chans=int(in_chans), num_classes=num_classes, distilled=distilled,
                     class_token=class_token, qkv_bias="blocks.0.attn.qkv.bias" in sd)


def config_from_timm(model: nn.Module) -> ViTConfig:
    """The :class:`ViTConfig` of a timm ``VisionTransformer`` (or DeiT distilled), or a clear refusal."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise CheckpointError(f"{type(model).__name__} is not a timm VisionTransformer")
    name = type(model).__name__
    checks = {
        "register tokens": getattr(model, "reg_token", None) is not None,
        "pre-norm (norm_pre)": not isinstance(model.norm_pre, nn.Identity),
        "no_embed_class position embedding": bool(getattr(model, "no_embed_class", False)),
        "attention pooling head": getattr(model, "attn_pool", None) is not None,
        "dynamic image size": bool(getattr(model, "dynamic_img_size", False)),
        "global pool other than token/avg": model.global_pool not in ("token", "avg"),
        "patch-embed norm": not isinstance(getattr(model.patch_embed, "norm", nn.Identity()), nn.Identity),
    }
    blk: Any
    for i, blk in enumerate(model.blocks):
        checks[f"layer scale (block {i})"] = not isinstance(blk.ls1, nn.Identity)
        checks[f"QK normalisation (block {i})"] = not isinstance(blk.attn.q_norm, nn.Identity)
        checks[f"activation other than GELU (block {i})"] = not isinstance(getattr(blk.mlp, "act", None), nn.GELU)
        checks[f"LayerNorm eps other than 1e-6 (block {i})"] = getattr(blk.norm1, "eps", None) != 1e-6
    bad = [k for k, v in checks.items() if v]
    if bad:
        raise CheckpointError(f"{name} has {bad[0]}, which revit's per-block ViT does not support")
    if model.global_pool == "avg" and model.cls_token is not None:
        raise CheckpointError(f"{name}: average pooling with a class token is not supported")
    if model.global_pool == "token" and isinstance(model.norm, nn.Identity):
        raise CheckpointError(f"{name}: token pooling with fc_norm instead of norm is not supported")
    heads = [int(b.attn.num_heads) for b in model.blocks]  # type: ignore[union-attr, arg-type]
    return config_from_state_dict(model.state_dict(), heads=heads)


def from_timm(model: nn.Module) -> nn.Module:
    """Convert a timm ViT/DeiT model into the equivalent :class:`~revit.models.ReViT` (same outputs)."""
    from revit.models.vit import build_model

    cfg = config_from_timm(model)
    out = build_model(cfg)
    sd = model.state_dict()
    check_compatible(out, sd, type(model).__name__)
    out.load_state_dict(sd, strict=True)
    return out


def to_timm(model: nn.Module) -> nn.Module:
    """Convert a uniform ReViT with QK == V back into timm's ``VisionTransformer``(``Distilled``)."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    cfg: ViTConfig = model.config  # type: ignore[assignment]
    b0 = cfg.blocks[0]
    if not cfg.is_uniform():
        raise CheckpointError("timm's ViT needs identical blocks; this config's blocks differ")
    if b0.qk_dim != b0.v_dim:
        raise CheckpointError(f"timm's ViT needs QK width == V width per head (got {b0.qk_dim} vs {b0.v_dim})")
    if b0.attn_v != cfg.embed_dim:
        raise CheckpointError(f"timm's ViT needs heads x head_dim == embed_dim ({b0.attn_v} vs {cfg.embed_dim})")
    cls = VisionTransformerDistilled if cfg.distilled else VisionTransformer
    kw: dict[str, Any] = dict(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=b0.heads, mlp_ratio=b0.mlp_dim / cfg.embed_dim,
        qkv_bias=cfg.qkv_bias, class_token=cfg.class_token, global_pool=cfg.global_pool,
    )
    out = cls(**kw)
    sd = model.state_dict()
    check_compatible(out, sd, "ReViT")
    out.load_state_dict(sd, strict=True)
    return out
