"""Named configs (pure Python): the embedded default, ReViT-T/S and per-block DeiT equivalents.

``import revit.models`` registers each of these in timm's registry under the same name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from revit.config import BlockDims, ViTConfig, uniform
from revit.errors import UnknownNameError

# per-channel statistics of Fashion-MNIST's training images (the embedded default's normalisation: data
# loading applies it, a gray model's pretrained_cfg reports it)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530

_IMAGENET: dict[str, Any] = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000)


def _official_rule(embed_dim: int) -> tuple[BlockDims, ...]:
    """The official NViT code's ReViT rule for 12 blocks (NVIT_SPEC.md section 7, [C]).

    One source of truth: the ``paper`` rule family in :mod:`revit.rules.families`.
    """
    from revit.config import Granularity
    from revit.rules.families import PaperRule

    return PaperRule().blocks({}, embed_dim, 12, Granularity.PRESETS["standard"])


def revit_micro() -> ViTConfig:
    return uniform(96, 8, 4, img_size=28, patch_size=7, in_chans=1, num_classes=10, name="revit_micro")


def revit_tiny() -> ViTConfig:
    return ViTConfig(embed_dim=176, blocks=_official_rule(176), distilled=True, name="revit_tiny", **_IMAGENET)


def revit_small() -> ViTConfig:
    return ViTConfig(embed_dim=384, blocks=_official_rule(384), distilled=True, name="revit_small", **_IMAGENET)


def _deit(name: str, embed_dim: int, heads: int, distilled: bool) -> Callable[[], ViTConfig]:
    def make() -> ViTConfig:
        return uniform(embed_dim, 12, heads, distilled=distilled, name=name, **_IMAGENET)

    make.__name__ = name
    make.__doc__ = f"Per-block equivalent of timm's {name.removeprefix('revit_')}."
    return make


PRESETS: dict[str, Callable[[], ViTConfig]] = {
    "revit_micro": revit_micro,
    "revit_tiny": revit_tiny,
    "revit_small": revit_small,
}
for _size, (_e, _h) in {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}.items():
    for _dist in (False, True):
        _n = f"revit_deit_{_size}{'_distilled' if _dist else ''}_patch16_224"
        PRESETS[_n] = _deit(_n, _e, _h, _dist)


def hub_folder_config(folder: str) -> ViTConfig:
    """The ViT config of a hub-format model folder (``config.json``'s ``model_args.config``), read without torch
    and never through a link; a folder of another model is one line saying what it is."""
    from revit import counting
    from revit._io import load_json
    from revit.errors import ConfigError

    path = os.path.join(folder, "config.json")
    if os.path.islink(path) or not os.path.isfile(path):
        raise ConfigError(f"{folder}: is a folder without a config.json (give a config YAML, a preset name or a model "
                          "folder written by `revit model save`)")
    doc = load_json(path)
    args = doc.get("model_args") if isinstance(doc, dict) else None
    if not isinstance(args, dict) or not isinstance(args.get("config"), dict):
        raise ConfigError(f"{path}: not a revit model (no model_args.config); a timm model folder is read by "
                          f"`revit model convert local-dir:{folder}`")
    cfg = ViTConfig.from_dict(args["config"], f"{path}: model_args.config")
    counting.check_memory(cfg)
    return cfg


def get_preset(name: str) -> ViTConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def resolve_config(name_or_path: str) -> ViTConfig:
    """A preset name, a path to a ViT-config YAML file, or a model folder in timm's hub format that revit wrote
    (``revit model save`` / the ``hf/`` of a run: its ``config.json`` holds the whole config)."""
    if name_or_path in PRESETS:
        return get_preset(name_or_path)
    if os.path.isdir(name_or_path):
        return hub_folder_config(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        from revit import counting

        cfg = ViTConfig.load(name_or_path)
        counting.check_memory(cfg)  # before any command allocates it
        return cfg
    return get_preset(name_or_path)
