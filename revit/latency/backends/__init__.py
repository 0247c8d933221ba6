"""Latency backends behind one small ABC and a registry: onnxruntime (default), torch, tensorrt.

Each module registers its class on import; the heavy packages are imported only when a backend
is instantiated, so listing or choosing a backend stays light.
"""

from revit.latency.backends import ort as _ort  # noqa: F401
from revit.latency.backends import tensorrt as _trt  # noqa: F401
from revit.latency.backends import torch_backend as _torch  # noqa: F401
from revit.latency.backends.base import BACKENDS, Backend, Workload, get_backend

__all__ = ["BACKENDS", "Backend", "Workload", "get_backend"]
