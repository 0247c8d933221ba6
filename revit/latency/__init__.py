"""Latency tables: backends, profiler, table lookup/prediction, NViT import, validation.

Importing this package is light (numpy/scipy only); backends and the profiler import their heavy
dependencies (onnx, onnxruntime, torch, tensorrt) when used.
"""

from revit.latency.table import FixedParts, LatencyTable, Prediction

__all__ = ["FixedParts", "LatencyTable", "Prediction"]
