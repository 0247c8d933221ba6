"""ONNX export of a ReViT (torch.onnx with the dynamo exporter, dynamic batch)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from revit._io import atomic_output
from revit.config import ViTConfig


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example: torch.Tensor | None = None,
                dynamic_batch: bool = True, opset: int = 18) -> Path:
    """Export ``model`` (eval mode) to ``path`` with input ``images`` and output ``logits``.

    The file is written next to its destination and renamed (:func:`revit._io.atomic_output`), so a failed
    export leaves no file and an unwritable ``path`` is one line.
    """
    cfg: ViTConfig = model.config  # type: ignore[assignment]
    if example is None:
        example = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    out = Path(path)
    model = model.eval()
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with atomic_output(out, suffix=".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                                 dynamic_shapes=dynamic, opset_version=opset, verbose=False)
        assert prog is not None
        prog.save(str(tmp))
    return out
