"""ONNX Runtime backend: CPU execution provider by default; CUDA/TensorRT providers when present.

Blocks run through one shared session of :func:`~revit.latency.graphs.shared_block_graph` (weights
are inputs, so no graph is built per cell; a block without attention or without MLP has its own
shared session of that half); ``graph="per-cell"`` builds a static graph per cell
instead.  The intra-op thread count is explicit and recorded: on a shared 2-core machine one
thread gives the steadiest numbers, and with one thread ONNX Runtime runs in the calling thread,
which also makes the ``thread`` clock (CPU time of this thread, blind to time-slicing) meaningful.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from revit.config import BlockDims, ViTConfig
from revit.errors import BackendUnavailableError, ConfigError
from revit.latency import graphs
from revit.latency.backends.base import BACKENDS, Backend, Workload, cpu_name
from revit.options import Option

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class _Run(Workload):
    """A session plus bound inputs; each timed run is one ``run_with_iobinding``."""

    def __init__(self, backend: OrtBackend, sess: Any, feeds: Mapping[str, np.ndarray]) -> None:
        import onnxruntime as ort

        self.sess, self.clock = sess, backend.clock
        self.binding = sess.io_binding()
        self._keep = []
        for k, a in feeds.items():
            v = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), backend.ort_device)
            self._keep.append(v)
            self.binding.bind_ortvalue_input(k, v)
        for o in sess.get_outputs():
            self.binding.bind_output(o.name, backend.ort_device)

    def time(self, n: int) -> list[float]:
        out = []
        run, b, clock = self.sess.run_with_iobinding, self.binding, self.clock
        for _ in range(n):
            t0 = clock()
            run(b)
            out.append(clock() - t0)
        return out

    def close(self) -> None:
        self._keep.clear()


@BACKENDS.register
class OrtBackend(Backend):
    """onnxruntime InferenceSession; ``device`` is cpu, cuda or tensorrt (the execution provider)."""

    name = "onnxruntime"
    description = "ONNX Runtime (default; --device cpu, cuda or tensorrt picks the execution provider)"
    option_specs = (Option("graph", "shared", "onnxruntime block graph: one shared graph whose weights are inputs, "
                           "or a static graph per cell", choices=("shared", "per-cell")),
                    Option("opt_level", "all", "ONNX Runtime graph optimisation level",
                           choices=("all", "extended", "basic", "none")))

    def __init__(self, *, graph: str = "shared", opt_level: str = "all", **kw: Any) -> None:
        super().__init__(**kw)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError("backend onnxruntime needs the onnxruntime package: "
                                          "pip install onnxruntime (or onnxruntime-gpu)") from None
        if self.device not in PROVIDERS:
            raise ConfigError(f"onnxruntime device must be one of {', '.join(PROVIDERS)}, got {self.device!r}")
        if self.dtype != "fp32":
            raise ConfigError("the onnxruntime backend measures fp32 graphs only; use tensorrt for fp16")
        if graph not in ("shared", "per-cell"):
            raise ConfigError(f"graph must be 'shared' or 'per-cell', got {graph!r}")
        self.provider = PROVIDERS[self.device]
        if self.provider not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"onnxruntime here has no {self.provider} (available: {', '.join(ort.get_available_providers())}); "
                f"install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --device cpu")
        if self.clock_name == "thread" and (self.device != "cpu" or self.threads != 1):
            raise ConfigError("the thread clock is only meaningful for onnxruntime on cpu with --threads 1")
        self.ort = ort
        self.graph = graph
        self.ort_device = "cpu" if self.device == "cpu" else "cuda"
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        if opt_level not in levels:
            raise ConfigError(f"opt_level must be one of {', '.join(levels)}")
        self.opt_level = opt_level
        self._level = levels[opt_level]
        self._shared: dict[tuple[bool, bool], Any] = {}  # per (has attention, has MLP)
        self._empty: dict[tuple[int, int], Any] = {}

    @classmethod
    def default_clock(cls, device: str, threads: int | None) -> str:
        """One thread on the CPU runs in the calling thread: its CPU time is blind to time-slicing."""
        return "thread" if device == "cpu" and threads == 1 else "wall"

    @classmethod
    def reopen_kwargs(cls, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """The base class's, with the graph optimisation level the table records (``graph_optimization``)."""
        kw = super().reopen_kwargs(metadata)
        level = (metadata.get("backend_settings") or {}).get("graph_optimization")
        return {**kw, "opt_level": str(level)} if level else kw

    @classmethod
    def table_device(cls, metadata: Mapping[str, Any]) -> str:
        provider = str((metadata.get("backend_settings") or {}).get("provider", ""))
        return next((d for d, p in PROVIDERS.items() if p == provider), "cpu")

    def info(self) -> dict[str, Any]:
        device = cpu_name() if self.device == "cpu" else self._gpu_name()
        return {"backend": self.name, "backend_version": self.ort.__version__, "device": device,
                "dtype": self.dtype, "provider": self.provider, "intra_op_threads": self.threads,
                "graph": self.graph, "graph_optimization": self.opt_level}

    def _gpu_name(self) -> str:
        try:
            import torch

            return str(torch.cuda.get_device_name(0))
        except Exception:  # noqa: BLE001 - best effort only
            return "NVIDIA GPU"

    def session(self, model: Any) -> Any:
        """An InferenceSession with this backend's settings on ``model`` (an ONNX ModelProto, or a file's path, which
        onnxruntime reads itself); checks the provider actually used."""
        so = self.ort.SessionOptions()
        so.graph_optimization_level = self._level
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        src = model if isinstance(model, str) else model.SerializeToString()
        sess = self.ort.InferenceSession(src, so, providers=[self.provider])
        used = sess.get_providers()[0]
        if used != self.provider:
            raise BackendUnavailableError(f"onnxruntime fell back to {used} instead of {self.provider}")
        return sess

    @property
    def reopen_models(self) -> bool:
        """On CPU a session opens in milliseconds, and whole micro models differ by about 1% (sd) from one session to
        the next (docs/evidence/latency.md); the TensorRT provider builds an engine per session."""
        return self.device == "cpu"

    def block(self, embed_dim: int, dims: BlockDims, tokens: int, batch: int) -> Workload:
        rng = np.random.default_rng(embed_dim * 7919 + dims.mlp_dim)
        x = rng.standard_normal((batch, tokens, embed_dim)).astype(np.float32)
        if self.graph == "per-cell":
            return _Run(self, self.session(graphs.block_graph(embed_dim, dims, tokens, batch)), {"x": x})
        parts = (dims.has_attention, dims.has_mlp)
        if parts not in self._shared:
            self._shared[parts] = self.session(graphs.shared_block_graph(*parts))
        feeds = {"x": x, **graphs.block_weights(embed_dim, dims, rng), **graphs.block_shapes(dims)}
        return _Run(self, self._shared[parts], feeds)

    def fixed(self, setting: Mapping[str, Any], embed_dim: int, batch: int) -> Workload:
        return self._image_run(graphs.fixed_graph(setting, embed_dim, batch, dynamic_batch=True), setting, batch)

    def model(self, cfg: ViTConfig, batch: int) -> Workload:
        from revit.latency.table import config_setting

        return self._image_run(graphs.model_graph(cfg, batch, dynamic_batch=True), config_setting(cfg), batch)

    def onnx_file(self, path: str, cfg: ViTConfig, batch: int) -> Workload:
        """Time an ONNX file (e.g. ``revit model export-onnx`` output) with this backend's settings; onnxruntime reads
        the file itself (a whole model is opened once per timing pass, so no parse and re-serialisation in Python)."""
        from revit.latency.table import config_setting

        return self._image_run(os.fspath(path), config_setting(cfg), batch)

    def _image_run(self, model: Any, setting: Mapping[str, Any], batch: int) -> Workload:
        s = int(setting["img_size"])
        img = np.random.default_rng(0).standard_normal((batch, int(setting["in_chans"]), s, s)).astype(np.float32)
        sess = self.session(model)
        return _Run(self, sess, {sess.get_inputs()[0].name: img})

    def overhead(self, tokens: int, embed_dim: int, batch: int) -> Workload | None:
        key = (tokens, embed_dim)
        if key not in self._empty:
            self._empty[key] = self.session(graphs.empty_graph(tokens, embed_dim))
        x = np.zeros((batch, tokens, embed_dim), np.float32)
        return _Run(self, self._empty[key], {"x": x})
