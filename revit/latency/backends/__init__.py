"""Latency backends behind one small ABC and a registry: onnxruntime (default), torch, tensorrt.

Each module registers its class on import; the heavy packages are imported only when a backend
is instantiated, so listing or choosing a backend stays light.
"""

from typing import Any

from revit.latency.backends import ort as _ort  # noqa: F401
from revit.latency.backends import tensorrt as _trt  # noqa: F401
from revit.latency.backends import torch_backend as _torch  # noqa: F401
from revit.latency.backends.base import BACKENDS, Backend, Workload

__all__ = ["BACKENDS", "BASE_ARGUMENTS", "Backend", "Workload", "get_backend"]


BASE_ARGUMENTS = ("device", "dtype", "threads", "clock")  # what every backend's constructor takes


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Instantiate a registered backend (the imports above have registered the built-in ones); arguments beyond
    device/dtype/threads/clock are checked against the options the backend declares (``option_specs``): an
    unknown one or a value of the wrong type is one :class:`~revit.errors.ConfigError` line."""
    from revit.options import check_options

    cls = BACKENDS.get(name)
    options = {k: v for k, v in kwargs.items() if k not in BASE_ARGUMENTS}
    if cls.option_specs or options:
        options = check_options(cls.option_specs, options, f"backend {name!r}")
    return cls(**{k: v for k, v in kwargs.items() if k in BASE_ARGUMENTS}, **options)
