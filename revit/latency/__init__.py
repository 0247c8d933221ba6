"""Latency tables: backends, profiler, table lookup/prediction, NViT import, validation.

Importing this package is light (numpy/scipy only); backends and the profiler import their heavy
dependencies (onnx, onnxruntime, torch, tensorrt) when used.
"""

from revit.latency.table import AXES, FixedParts, LatencyTable, Prediction

__all__ = ["AXES", "FixedParts", "LatencyTable", "Prediction"]
