"""Latency backends behind one small ABC and a registry: onnxruntime (default), torch, tensorrt.

Each module registers its class on import; the heavy packages are imported only when a backend
is instantiated, so listing or choosing a backend stays light.
"""

from typing import Any

from revit.latency.backends import ort as _ort  # noqa: F401
from revit.latency.backends import tensorrt as _trt  # noqa: F401
from revit.latency.backends import torch_backend as _torch  # noqa: F401
from revit.latency.backends.base import BACKENDS, Backend, Workload

__all__ = ["BACKENDS", "Backend", "Workload", "get_backend"]


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Instantiate a registered backend (the imports above have registered the built-in ones)."""
    return BACKENDS.get(name)(**kwargs)
