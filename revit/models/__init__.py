"""ReViT models on timm's VisionTransformer; importing this registers every preset in timm's registry."""

from revit.models.checkpoint import (
    config_from_state_dict,
    load_checkpoint,
    load_state_dict,
    read_state_dict,
)
from revit.models.convert import config_from_timm, from_timm, to_timm
from revit.models.hub import ModelCard, load_pretrained, save_pretrained
from revit.models.vit import ReViT, ReViTDistilled, as_config, build_model, count_params, pretrained_cfg

__all__ = [
    "ModelCard", "ReViT", "ReViTDistilled", "as_config", "build_model", "config_from_state_dict", "config_from_timm",
    "count_params", "from_timm", "load_checkpoint", "load_pretrained", "load_state_dict", "pretrained_cfg",
    "read_state_dict", "save_pretrained", "to_timm",
]
