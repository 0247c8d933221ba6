"""PyTorch backend: eager modules (optionally ``torch.compile``), CUDA events on GPU.

On CUDA, ``cuda_graphs=True`` captures each workload once as a CUDA graph and times its replays:
the per-kernel launch overhead of eager mode disappears, which is closer to a deployed engine
(TensorRT, a captured serving graph).  The choice is recorded in the table's metadata
(``backend_settings.cuda_graphs``, with ``torch_device``), and validation replays the same way.

Blocks, fixed parts and whole models are ``revit.models``' own modules (what the pruner produces: a
``Block``, and a model whose ``blocks`` are emptied for the fixed parts), so per-module overheads of
eager mode are the model's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from revit.config import BlockDims, ViTConfig
from revit.errors import BackendUnavailableError, ConfigError
from revit.latency.backends.base import BACKENDS, Backend, Workload, cpu_name, is_cpu_name
from revit.options import Option

DTYPES = ("fp32", "fp16", "bf16")


class _TorchRun(Workload):
    def __init__(self, backend: TorchBackend, module: Any, x: Any) -> None:
        self.b, self.m, self.x = backend, module, x
        if backend.cuda_graphs:
            self.m = _capture(backend.torch, module, x)

    def time(self, n: int) -> list[float]:
        torch = self.b.torch
        out = []
        with torch.inference_mode():
            if self.b.device.startswith("cuda"):
                for _ in range(n):
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    self.m(self.x)
                    e.record()
                    e.synchronize()
                    out.append(s.elapsed_time(e) / 1e3)
            else:
                clock = self.b.clock
                for _ in range(n):
                    t0 = clock()
                    self.m(self.x)
                    out.append(clock() - t0)
        return out

    def close(self) -> None:
        """Drop the module, input and captured graph (its memory pool) of this workload."""
        self.m = self.x = None


def _capture(torch: Any, module: Any, x: Any) -> Any:
    """``module(x)`` captured as a CUDA graph; returns a callable that replays it (same input buffer)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode():
        with torch.cuda.stream(s):
            for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs requires
                module(x)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            module(x)

    def replay(_: Any) -> None:
        graph.replay()

    # keep the graph (and its memory pool) and the module whose weights it reads alive as long as the replay
    replay.graph = graph  # type: ignore[attr-defined]
    replay.module = module  # type: ignore[attr-defined]
    return replay


@BACKENDS.register
class TorchBackend(Backend):
    """torch eager (``compile=True`` for torch.compile) on cpu or cuda (``cuda_graphs=True``: graph replays)."""

    name = "torch"
    description = "torch eager on cpu or cuda (--compile: torch.compile; --cuda-graphs: CUDA-graph replays)"
    option_specs = (Option("compile", False, "torch.compile each module"),
                    Option("cuda_graphs", False, "on cuda: time CUDA-graph replays (no launch overhead; recorded in "
                                                 "the table)"))

    def __init__(self, *, compile: bool = False, cuda_graphs: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        try:
            import torch
        except ImportError:
            raise BackendUnavailableError("backend torch needs PyTorch: pip install torch") from None
        if self.dtype not in DTYPES:
            raise ConfigError(f"torch dtype must be one of {', '.join(DTYPES)}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError("torch backend on cuda needs an NVIDIA GPU and a CUDA build of torch")
        if self.device == "cpu" and self.dtype == "fp16":
            raise ConfigError("fp16 on cpu is not a sensible latency target; use fp32 or bf16")
        if cuda_graphs and not self.device.startswith("cuda"):
            raise ConfigError("CUDA graphs need --device cuda (they time GPU kernel launches)")
        if cuda_graphs and compile:
            raise ConfigError("use either --compile or --cuda-graphs (torch.compile's reduce-overhead mode "
                              "captures graphs itself)")
        self.torch = torch
        self.compile = compile
        self.cuda_graphs = cuda_graphs
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.tdtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype]

    @classmethod
    def table_device(cls, metadata: Mapping[str, Any]) -> str:
        """The recorded ``torch_device``; tables from before that key: cuda unless measured on a CPU."""
        recorded = (metadata.get("backend_settings") or {}).get("torch_device")
        return str(recorded or ("cpu" if is_cpu_name(str(metadata.get("device", ""))) else "cuda"))

    def info(self) -> dict[str, Any]:
        dev = cpu_name() if self.device == "cpu" else str(self.torch.cuda.get_device_name(self.device))
        return {"backend": self.name, "backend_version": self.torch.__version__, "device": dev, "dtype": self.dtype,
                "intra_op_threads": self.threads, "compile": self.compile, "cuda_graphs": self.cuda_graphs,
                "torch_device": self.device}

    def _prep(self, m: Any, x: Any) -> Workload:
        m = m.to(self.device, self.tdtype).eval()
        if self.compile:
            m = self.torch.compile(m)
        return _TorchRun(self, m, x.to(self.device, self.tdtype))

    def block(self, embed_dim: int, dims: BlockDims, tokens: int, batch: int) -> Workload:
        from revit.models.layers import Block

        return self._prep(Block(embed_dim, dims), self.torch.randn(batch, tokens, embed_dim))

    def fixed(self, setting: Mapping[str, Any], embed_dim: int, batch: int) -> Workload:
        s = int(setting["img_size"])
        x = self.torch.randn(batch, int(setting["in_chans"]), s, s)
        from revit.models import build_model

        m = build_model(ViTConfig(embed_dim=embed_dim, blocks=(BlockDims(1, 1, 1, 1),), **setting))
        m.blocks = self.torch.nn.Sequential()  # the fixed parts alone: patch embedding, norm, head
        return self._prep(m, x)

    def model(self, cfg: ViTConfig, batch: int) -> Workload:
        from revit.models import build_model

        return self._prep(build_model(cfg), self.torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size))
