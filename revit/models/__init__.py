"""ReViT models on timm layers; importing this registers every preset in timm's registry."""

from revit.models.checkpoint import (
    config_from_state_dict,
    config_from_timm,
    from_timm,
    load_checkpoint,
    load_state_dict,
    to_timm,
)
from revit.models.vit import ReViT, build_model, count_params

__all__ = [
    "ReViT", "build_model", "config_from_state_dict", "config_from_timm", "count_params", "from_timm",
    "load_checkpoint", "load_state_dict", "to_timm",
]
