"""revit: make Vision Transformers cheaper by redistributing their parameters (NViT / ReViT).

Importing ``revit`` is light (no torch); ``import revit.models`` registers the ReViT models in timm.
"""

from revit.config import BlockDims, ViTConfig
from revit.errors import RevitError

__version__ = "0.1.0"
__all__ = ["BlockDims", "RevitError", "ViTConfig", "__version__"]
