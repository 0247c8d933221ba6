"""The ReViT model: timm's ``VisionTransformer`` (and DeiT's distilled one) with per-block widths.

:class:`ReViT` *is* a timm ``VisionTransformer``: timm's constructor builds it, with a block
factory that gives every block its own widths, so the whole timm model API (``forward_features``,
``forward_head``, ``reset_classifier``, ``forward_intermediates``, ``set_input_size``, ...) is
timm's own code.  Every model (dense preset, pruned, rule-generated, converted checkpoint) is made
by timm's ``build_model_with_cfg`` from a :class:`~revit.config.ViTConfig`, with a pretrained cfg
(input size, mean/std, classifier names) derived from that config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, cast

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from revit.config import ViTConfig
from revit.errors import CheckpointError, ConfigError
from revit.models.checkpoint import load_checkpoint
from revit.models.layers import Block, PerBlock
from revit.presets import FASHION_MNIST_MEAN, FASHION_MNIST_STD, PRESETS

log = logging.getLogger(__name__)

# Fashion-MNIST's statistics (revit.data.datasets normalises with the same numbers)


def as_config(config: ViTConfig | Mapping[str, Any] | str | os.PathLike[str]) -> ViTConfig:
    """A :class:`ViTConfig` from a config, its dict form, a YAML path or a preset name."""
    if isinstance(config, ViTConfig):
        return config
    if isinstance(config, Mapping):
        return ViTConfig.from_dict(dict(config), "config")
    if isinstance(config, (str, os.PathLike)):
        from revit.presets import resolve_config

        return resolve_config(str(config))
    raise ConfigError(f"config must be a ViTConfig, a dict or a YAML path, got {type(config).__name__}")


# the config fields a timm factory argument or a model change can set (ViTConfig keyword arguments)
_SETTING_KEYS = ("img_size", "patch_size", "in_chans", "num_classes", "distilled", "class_token", "qkv_bias",
                 "init_values", "no_embed_class")


def _updated(c: ViTConfig, blocks: Any = None, **changes: Any) -> ViTConfig:
    """``c`` with setting fields (and blocks) changed; the preset name is kept only when nothing changed."""
    kw = {k: getattr(c, k) for k in _SETTING_KEYS}
    new = ViTConfig(embed_dim=c.embed_dim, blocks=tuple(blocks or c.blocks), **{**kw, **changes})
    return c if new == c else new


def _square(size: Any, what: str) -> int:
    """An int from timm's int-or-(h, w) size argument; per-block configs are square."""
    if isinstance(size, int):
        return size
    h, w = (int(s) for s in size)
    if h != w:
        raise ConfigError(f"{what} {h}x{w}: revit configs are square (one {what})")
    return h


class ReViT(VisionTransformer):
    """Vision Transformer with per-block heads, QK/V width per head and MLP width (timm's ViT otherwise).

    ``cfg`` gives the per-block widths and the setting; the timm factory arguments ``img_size``,
    ``patch_size``, ``in_chans``, ``num_classes`` and ``init_values`` override its setting, and
    :attr:`config` always describes the model as it is.  Parameter names equal timm's, so eval
    outputs of a converted timm model are identical.
    """

    def __init__(self, cfg: ViTConfig | Mapping[str, Any] | str | os.PathLike[str], *,
                 img_size: int | tuple[int, int] | None = None, patch_size: int | tuple[int, int] | None = None,
                 in_chans: int | None = None, num_classes: int | None = None, global_pool: str | None = None,
                 init_values: float | None = None, fc_norm: bool | None = None, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, patch_drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, weight_init: str = "",
                 fix_init: bool = False, device: Any = None, dtype: Any = None) -> None:
        base = as_config(cfg)
        changes: dict[str, Any] = {}
        if img_size is not None:
            changes["img_size"] = _square(img_size, "img_size")
        if patch_size is not None:
            changes["patch_size"] = _square(patch_size, "patch_size")
        for k, v in (("in_chans", in_chans), ("num_classes", num_classes)):
            if v is not None:
                changes[k] = v
        if init_values is not None:
            changes["init_values"] = init_values or None  # as timm: 0 means no layer scale
        c = _updated(base, **changes)
        if c.distilled and c.no_embed_class:
            raise ConfigError("a distilled model with no_embed_class is not supported (timm's DeiT has none)")
        super().__init__(
            img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, num_classes=c.num_classes,
            global_pool=c.global_pool if global_pool is None else global_pool,  # type: ignore[arg-type]
            embed_dim=c.embed_dim, depth=c.depth, num_heads=max(1, max(b.heads for b in c.blocks)), qkv_bias=c.qkv_bias,
            init_values=c.init_values, class_token=c.class_token, no_embed_class=c.no_embed_class, fc_norm=fc_norm,
            drop_rate=drop_rate, pos_drop_rate=pos_drop_rate, patch_drop_rate=patch_drop_rate,
            proj_drop_rate=proj_drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            weight_init=weight_init, fix_init=fix_init, block_fn=PerBlock(c.blocks),  # type: ignore[arg-type]
            device=device, dtype=dtype,
        )
        self._revit_config = c

    def fix_init_weight(self) -> None:
        """timm's ``fix_init`` rescale (output projections by sqrt(2 * layer)), on the branches a block has."""
        import math

        for layer_id, layer in enumerate(self.blocks, 1):
            for branch, out in (("attn", "proj"), ("mlp", "fc2")):
                module = getattr(layer, branch)
                if module is not None:
                    getattr(module, out).weight.data.div_(math.sqrt(2.0 * layer_id))

    # timm records a model's construction arguments in ``_model_args`` (timm's ``create_model`` sets it,
    # ``timm.models.get_model_args`` and ``save_for_hf`` read it into config.json's ``model_args``).  A
    # ReViT's architecture is its config, which a path or a ViTConfig object would not carry into a JSON
    # file and which pruning changes: so the recorded ``config`` is always the current config, as a dict.
    @property
    def _model_args(self) -> dict[str, Any]:
        args = dict(self.__dict__.get("_revit_model_args", {}))
        args["config"] = self.config.to_dict()
        return args

    @_model_args.setter
    def _model_args(self, value: Mapping[str, Any]) -> None:
        self.__dict__["_revit_model_args"] = dict(value)

    @property
    def config(self) -> ViTConfig:
        """The config of the model as it is now (after ``reset_classifier``, ``set_input_size``, pruning)."""
        c = self._revit_config
        (h, w), (ph, pw) = self.patch_embed.img_size, self.patch_embed.patch_size
        if h != w or ph != pw:
            raise ConfigError(f"input {h}x{w} / patch {ph}x{pw} is not square: no ViTConfig describes it")
        return _updated(c, blocks=[cast(Block, b).dims for b in self.blocks], img_size=h, patch_size=ph,
                        in_chans=self.in_chans, num_classes=self.num_classes)


class ReViTDistilled(VisionTransformerDistilled, ReViT):
    """ReViT with DeiT's distillation token and head (timm's ``VisionTransformerDistilled`` on top)."""


def pretrained_cfg(cfg: ViTConfig, **overrides: Any) -> dict[str, Any]:
    """timm's pretrained cfg for a config: input size, normalisation, classifier names, first conv.

    One-channel configs are normalised with Fashion-MNIST's statistics, others with ImageNet's.
    """
    gray = cfg.in_chans == 1
    return {
        "url": "", "num_classes": cfg.num_classes, "input_size": (cfg.in_chans, cfg.img_size, cfg.img_size),
        "pool_size": None, "fixed_input_size": True,
        "crop_pct": 1.0 if gray else 0.9, "interpolation": "bilinear" if gray else "bicubic",
        "mean": (FASHION_MNIST_MEAN,) if gray else IMAGENET_DEFAULT_MEAN,
        "std": (FASHION_MNIST_STD,) if gray else IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": ("head", "head_dist") if cfg.distilled else "head",
        **overrides,
    }


default_cfgs = generate_default_cfgs({
    **{name: pretrained_cfg(make()) for name, make in PRESETS.items()},
    "revit": pretrained_cfg(PRESETS["revit_deit_small_patch16_224"](), description="ReViT of any config (config=)"),
})
_SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id")


def architecture_name(cfg: ViTConfig) -> str:
    """The registered name that describes ``cfg``: the preset it equals (widths and setting), else ``revit``."""
    return next((name for name, make in PRESETS.items() if make() == cfg), "revit")


def describe(cfg: ViTConfig) -> str:
    """One line saying what a model is (timm's ``pretrained_cfg['description']``)."""
    from revit import counting

    widths = "uniform blocks" if cfg.is_uniform() else "per-block widths"
    return (f"ReViT{' ' + cfg.name if cfg.name else ''}: {cfg.depth} blocks, embed {cfg.embed_dim}, {widths}, "
            f"{cfg.img_size} px / patch {cfg.patch_size}, {cfg.in_chans} channel(s), {cfg.num_classes} classes"
            f"{', distilled' if cfg.distilled else ''}; {counting.format_count(counting.macs(cfg))} MACs, "
            f"{counting.format_count(counting.params(cfg))} params")


def _create(variant: str | None, pretrained: bool = False, *, config: Any = None, **kwargs: Any) -> ReViT:
    """Build through timm's ``build_model_with_cfg`` (pretrained cfg, weights, ``features_only``)."""
    if config is None and variant not in PRESETS:
        raise ConfigError("timm.create_model('revit') needs config=: a ViTConfig, its dict, a YAML path or a "
                          "preset name")
    from revit import counting

    cfg = as_config(config) if config is not None else PRESETS[variant]()  # type: ignore[index]
    counting.check_memory(cfg)  # every build, timm.create_model('local-dir:...') too: refuse before allocating
    arch = variant if config is None else architecture_name(cfg)
    if config is not None and not kwargs.get("pretrained_cfg"):
        # a config of its own: its pretrained cfg follows the config and names what it is, not the entrypoint
        kwargs["pretrained_cfg"] = pretrained_cfg(cfg, architecture=arch, description=describe(cfg))
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not any(overlay.get(k) for k in _SOURCE_KEYS) \
            and not any((kwargs.get("pretrained_cfg") or {}).get(k) for k in _SOURCE_KEYS):
        raise CheckpointError(f"{variant or cfg.name} has no hub weights; pass a local file: "
                              "checkpoint_path=FILE or pretrained_cfg_overlay=dict(file=FILE)")
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        ReViTDistilled if cfg.distilled else ReViT, arch or "revit", pretrained,
        model_cfg=cfg, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs,
    )


def build_model(cfg: ViTConfig | Mapping[str, Any] | str | os.PathLike[str], *,
                checkpoint: str | os.PathLike[str] | None = None, use_ema: bool = False, **kwargs: Any) -> ReViT:
    """Build a :class:`ReViT` from ``cfg`` (the one build path), optionally loading a local checkpoint.

    ``kwargs`` are timm factory arguments (``drop_path_rate``, ``num_classes``, ``device``, ...).
    A timm ``train.py`` checkpoint gives its plain weights unless ``use_ema``; when it holds both,
    the choice is logged (INFO).
    """
    model = _create(None, config=as_config(cfg), **kwargs)  # checks the memory it needs first
    if checkpoint is not None:
        choice = load_checkpoint(model, checkpoint, use_ema)
        if choice.ema_matters:
            log.info("%s", choice)
    return model


def _make_entrypoint(name: str) -> Any:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> ReViT:
        return _create(name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = PRESETS[name].__doc__ or f"ReViT preset {name}."
    return entrypoint


__all__ = ["ReViT", "ReViTDistilled", "architecture_name", "as_config", "build_model", "count_params",
           "describe", "pretrained_cfg"]


@register_model
def revit(pretrained: bool = False, **kwargs: Any) -> ReViT:
    """A ReViT of any config: ``timm.create_model('revit', config=CFG)`` with CFG a :class:`ViTConfig`, its
    dict, a YAML path or a preset name (the neutral architecture of pruned and generated models)."""
    return _create("revit", pretrained, **kwargs)


for _name in PRESETS:  # register_model adds each name to __all__
    globals()[_name] = register_model(_make_entrypoint(_name))


def count_params(model: nn.Module) -> int:
    """Number of parameters of a model."""
    return sum(p.numel() for p in model.parameters())

