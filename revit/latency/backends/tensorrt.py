"""TensorRT backend: ONNX -> engine through the TensorRT Python API, timed with CUDA events.

Each workload is a static-shape ONNX graph (:mod:`revit.latency.graphs`, weights as initializers so
TensorRT can fuse them), parsed by ``trt.OnnxParser`` and built in fp32 or fp16 with one timing
cache shared by every cell of a build; ``execute_async_v3`` runs on a CUDA stream and each run is
timed with a pair of CUDA events after the caller's warm-up.  Without the ``tensorrt`` package or
an NVIDIA GPU, constructing the backend raises one clear :class:`BackendUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from revit.config import BlockDims, ViTConfig
from revit.errors import BackendUnavailableError, ConfigError
from revit.latency import graphs
from revit.latency.backends.base import BACKENDS, Backend, Workload
from revit.options import Option

INSTALL = ("pip install 'revit[tensorrt]' (tensorrt + cuda-python) on a machine with an NVIDIA GPU and driver")


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _check(result: Any, what: str) -> Any:
    """cuda-python returns (error, values...); raise on error, return the values."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailableError(f"CUDA call {what} failed with error {int(err)}")
    return rest[0] if len(rest) == 1 else rest


class _TrtRun(Workload):
    """An engine, its execution context and device buffers; runs timed with CUDA events."""

    def __init__(self, backend: TensorRTBackend, model: Any) -> None:
        import numpy as np

        trt, cudart = backend.trt, backend.cudart
        self.b = backend
        engine = backend.build_engine(model)
        self.engine = engine
        self.context = engine.create_execution_context()
        self.buffers: list[Any] = []
        rng = np.random.default_rng(0)
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            ptr = _check(cudart.cudaMalloc(nbytes), "cudaMalloc")
            self.buffers.append(ptr)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                host = rng.standard_normal(shape).astype(dtype)
                _check(cudart.cudaMemcpy(ptr, host.ctypes.data, nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy")
            self.context.set_tensor_address(name, int(ptr))
        self.stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.start = _check(cudart.cudaEventCreate(), "cudaEventCreate")
        self.end = _check(cudart.cudaEventCreate(), "cudaEventCreate")

    def time(self, n: int) -> list[float]:
        cudart = self.b.cudart
        out = []
        for _ in range(n):
            _check(cudart.cudaEventRecord(self.start, self.stream), "cudaEventRecord")
            if not self.context.execute_async_v3(int(self.stream)):
                raise BackendUnavailableError("TensorRT execute_async_v3 failed")
            _check(cudart.cudaEventRecord(self.end, self.stream), "cudaEventRecord")
            _check(cudart.cudaEventSynchronize(self.end), "cudaEventSynchronize")
            ms = _check(cudart.cudaEventElapsedTime(self.start, self.end), "cudaEventElapsedTime")
            out.append(float(ms) / 1e3)
        return out

    def close(self) -> None:
        cudart = self.b.cudart
        for p in self.buffers:
            cudart.cudaFree(p)
        self.buffers.clear()
        cudart.cudaEventDestroy(self.start)
        cudart.cudaEventDestroy(self.end)
        cudart.cudaStreamDestroy(self.stream)


@BACKENDS.register
class TensorRTBackend(Backend):
    """TensorRT engines (fp32 or fp16) on an NVIDIA GPU; one timing cache across all cells."""

    name = "tensorrt"
    description = "TensorRT engines (fp32 or fp16) on an NVIDIA GPU"
    default_device = "cuda"
    option_specs = (Option("workspace_mb", 1024, "TensorRT builder workspace in MiB"),)

    def __init__(self, *, workspace_mb: int = 1024, **kw: Any) -> None:
        kw.setdefault("device", "cuda")
        super().__init__(**kw)
        if workspace_mb < 1:
            raise ConfigError(f"workspace_mb must be >= 1, got {workspace_mb}")
        if self.dtype not in ("fp32", "fp16"):
            raise ConfigError(f"tensorrt dtype must be fp32 or fp16, got {self.dtype!r}")
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailableError(f"backend tensorrt needs the tensorrt package and an NVIDIA GPU: "
                                          f"{INSTALL}") from None
        try:
            cudart = _cudart()
        except ImportError:
            raise BackendUnavailableError(f"backend tensorrt needs cuda-python and an NVIDIA GPU: {INSTALL}") from None
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            raise BackendUnavailableError(f"backend tensorrt needs an NVIDIA GPU; none found (CUDA error {int(err)}). "
                                          f"Build TensorRT tables on the GPU that will serve the model")
        self.trt, self.cudart = trt, cudart
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builder = trt.Builder(self.logger)
        self.runtime = trt.Runtime(self.logger)
        self.workspace = workspace_mb << 20
        cfg = self.builder.create_builder_config()
        self.timing_cache = cfg.create_timing_cache(b"")  # shared by every engine of this backend

    def info(self) -> dict[str, Any]:
        props = _check(self.cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return {"backend": self.name, "backend_version": self.trt.__version__, "device": name.strip("\x00 "),
                "dtype": self.dtype, "timing_cache": "shared across cells", "timer": "CUDA events"}

    def build_engine(self, model: Any) -> Any:
        """Parse an ONNX model and build an engine with this backend's precision and shared timing cache."""
        trt = self.trt
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = self.builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(model.SerializeToString()):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailableError(f"TensorRT could not parse the ONNX graph: {errs}")
        config = self.builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        if self.dtype == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        config.set_timing_cache(self.timing_cache, False)
        plan = self.builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendUnavailableError("TensorRT failed to build an engine (see the TensorRT log above)")
        return self.runtime.deserialize_cuda_engine(plan)

    # the graphs TensorRT consumes; static and importable without TensorRT (tests run them in onnxruntime)
    @staticmethod
    def block_onnx(embed_dim: int, dims: BlockDims, tokens: int, batch: int) -> Any:
        return graphs.block_graph(embed_dim, dims, tokens, batch)

    @staticmethod
    def fixed_onnx(setting: Mapping[str, Any], embed_dim: int, batch: int) -> Any:
        return graphs.fixed_graph(setting, embed_dim, batch)

    @staticmethod
    def model_onnx(cfg: ViTConfig, batch: int) -> Any:
        return graphs.model_graph(cfg, batch)

    def block(self, embed_dim: int, dims: BlockDims, tokens: int, batch: int) -> Workload:
        return _TrtRun(self, self.block_onnx(embed_dim, dims, tokens, batch))

    def fixed(self, setting: Mapping[str, Any], embed_dim: int, batch: int) -> Workload:
        return _TrtRun(self, self.fixed_onnx(setting, embed_dim, batch))

    def model(self, cfg: ViTConfig, batch: int) -> Workload:
        return _TrtRun(self, self.model_onnx(cfg, batch))
