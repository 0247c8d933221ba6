"""timm ViT/DeiT/DeiT-III <-> ReViT conversion (same parameters, same outputs).

The per-block model uses timm's parameter names and layouts, so conversion infers the
:class:`ViTConfig` from the timm model and checks every shape; parts the per-block model lacks
(register tokens, QK norm, ...) are refused with their name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from revit.config import ViTConfig
from revit.errors import CheckpointError, ConfigError, RevitError
from revit.models.checkpoint import check_compatible, config_from_state_dict
from revit.models.vit import ReViT, build_model


def create_timm(name: str, *, pretrained: bool = False) -> nn.Module:
    """timm's model ``name``: a registered name, ``local-dir:DIR`` or, with ``pretrained``, ``hf-hub:ID``.

    A name timm cannot build is one :class:`ConfigError` that says why (a foreign architecture, a bad
    argument in ``config.json``), never a traceback; ``hf-hub:`` without ``pretrained`` is refused before
    any hub access (its config lives on the hub).  Revit's own refusals (the memory a config needs) pass.
    """
    import timm
    from timm.models import parse_model_name

    from revit.input_checks import short

    source, arch = parse_model_name(name)
    if source == "hf-hub" and not pretrained:
        raise ConfigError(f"{short(name, 200)}: a hub model's config is on the Hugging Face hub; revit reaches the "
                          "hub only with --pretrained", hint="pass --pretrained, or a registered timm name with "
                                                            "--checkpoint FILE")
    if source == "local-dir":
        _check_local_dir(arch, name)
    elif source is None and not timm.is_model(name):
        raise ConfigError(f"unknown timm model {short(name, 200)}", hint="see timm.list_models()")
    try:
        return timm.create_model(name, pretrained=pretrained)
    except RevitError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, OSError) as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ConfigError(f"cannot build timm model {short(name, 200)} ({type(e).__name__}: {why})") from None


def _check_local_dir(folder: str, name: str) -> None:
    """A ``local-dir:`` folder's ``config.json`` (read by revit's bounded reader) names a registered timm model."""
    import timm

    from revit._io import load_json
    from revit.input_checks import short

    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"{short(name, 200)}: no config.json in {short(folder, 200, quote=False)}")
    doc = load_json(cfg)
    arch = doc.get("architecture") if isinstance(doc, dict) else None
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise ConfigError(f"{cfg}: architecture {short(arch)} is not a timm model")


def config_from_timm(model: nn.Module) -> ViTConfig:
    """The :class:`ViTConfig` of a timm ``VisionTransformer`` (DeiT, DeiT-III, distilled), or a clear refusal."""
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, ReViT):
        return model.config
    if not isinstance(model, VisionTransformer):
        raise CheckpointError(f"{type(model).__name__} is not a timm VisionTransformer")
    name = type(model).__name__
    checks = {
        "register tokens": getattr(model, "reg_token", None) is not None,
        "pre-norm (norm_pre)": not isinstance(model.norm_pre, nn.Identity),
        "attention pooling head": getattr(model, "attn_pool", None) is not None,
        "dynamic image size": bool(getattr(model, "dynamic_img_size", False)),
        "global pool other than token/avg": model.global_pool not in ("token", "avg"),
        "patch-embed norm": not isinstance(getattr(model.patch_embed, "norm", nn.Identity()), nn.Identity),
    }
    blk: Any
    for i, blk in enumerate(model.blocks):
        checks[f"QK normalisation (block {i})"] = not isinstance(blk.attn.q_norm, nn.Identity)
        checks[f"activation other than GELU (block {i})"] = not isinstance(getattr(blk.mlp, "act", None), nn.GELU)
        checks[f"LayerNorm eps other than 1e-6 (block {i})"] = getattr(blk.norm1, "eps", None) != 1e-6
        checks[f"layer scale on only one branch (block {i})"] = isinstance(blk.ls1, nn.Identity) != isinstance(
            blk.ls2, nn.Identity)
    bad = [k for k, v in checks.items() if v]
    if bad:
        raise CheckpointError(f"{name} has {bad[0]}, which revit's per-block ViT does not support")
    if model.global_pool == "avg" and model.cls_token is not None:
        raise CheckpointError(f"{name}: average pooling with a class token is not supported")
    if model.global_pool == "token" and isinstance(model.norm, nn.Identity):
        raise CheckpointError(f"{name}: token pooling with fc_norm instead of norm is not supported")
    heads = [int(b.attn.num_heads) for b in model.blocks]  # type: ignore[union-attr, arg-type]
    ls = getattr(model.blocks[0], "ls1", None)
    init = float(ls.init_values) if ls is not None and hasattr(ls, "init_values") else 1e-6
    return config_from_state_dict(model.state_dict(), heads=heads, init_values=init)


def from_timm(model: nn.Module) -> ReViT:
    """Convert a timm ViT/DeiT model into the equivalent :class:`~revit.models.ReViT` (same outputs)."""
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
    partial = next((i for i, b in enumerate(cfg.blocks) if not (b.has_attention and b.has_mlp)), None)
    if partial is not None:
        what = "attention" if not cfg.blocks[partial].has_attention else "MLP"
        raise CheckpointError(f"timm's VisionTransformer has no block without {what} (block {partial} has none): "
                              "keep it a revit model (timm.create_model('revit', config=...) builds it)")
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
        qkv_bias=cfg.qkv_bias, class_token=cfg.class_token, global_pool=getattr(model, "global_pool", cfg.global_pool),
        init_values=cfg.init_values, no_embed_class=cfg.no_embed_class,
    )
    out = cls(**kw)
    sd = model.state_dict()
    check_compatible(out, sd, "ReViT")
    out.load_state_dict(sd, strict=True)
    return out
