"""Latency tables keep their device: a torch table is validated on the device and dtype it was measured
on, CUDA graphs are an option recorded in the table, and ``build --out`` creates its folder."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from revit.cli.main import main
from revit.config import Setting
from revit.errors import BackendUnavailableError, ConfigError
from revit.latency.accuracy import backend_for_table
from revit.latency.backends.torch_backend import TorchBackend
from revit.latency.grid import WidthGrid
from revit.latency.table import LatencyTable

SETTING = {"img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": 10, "distilled": False, "class_token": True}


def test_torch_bf16_table_built_into_a_new_folder_and_validated_on_its_device(tmp_path, capsys):
    grid = WidthGrid("tiny", {"embed_dim": (16, 32), "heads": (1,), "qk_dim": (4,), "v_dim": (4,), "mlp_dim": (8, 32)},
                     Setting(**SETTING, depth=2))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(grid.to_dict()))
    out = tmp_path / "new" / "deeper" / "t.json"
    assert main(["latency", "build", "--backend", "torch", "--dtype", "bf16", "--space", str(tmp_path / "space.yaml"),
                 "--design", "full", "--batch", "4", "--passes", "1", "--repeats", "3", "--warmup", "1",
                 "--out", str(out), "--no-progress"]) == 0
    t = LatencyTable.load(out)
    bs = t.metadata["backend_settings"]
    assert t.metadata["dtype"] == "bf16" and bs["torch_device"] == "cpu" and bs["cuda_graphs"] is False
    b = backend_for_table(t)
    assert isinstance(b, TorchBackend) and (b.device, b.dtype, b.tdtype) == ("cpu", "bf16", torch.bfloat16)
    capsys.readouterr()
    assert main(["latency", "validate", str(out), "--samples", "2", "--noise-k", "2", "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["samples"] == 2 and all(r["measured_s"] > 0 for r in res["rows"])


def _fake_table(tmp_path: Path, settings: dict, device: str, dtype: str) -> LatencyTable:
    """A 1-cell torch table whose metadata says where it was measured."""
    import numpy as np

    from revit.config import WIDTH_KINDS

    knots = {a: (4.0, 8.0) for a in WIDTH_KINDS}
    meta = {"device": device, "backend": "torch", "backend_version": torch.__version__, "dtype": dtype,
            "batch_size": 4, "tokens": 5, "backend_settings": settings, "measurement": {"clock": "wall"},
            "created": "2026-01-01T00:00:00+00:00", "revit_version": "0"}
    return LatencyTable(knots, np.ones((2,) * len(WIDTH_KINDS)), metadata=meta)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
@pytest.mark.parametrize("settings", [{"torch_device": "cuda:0", "cuda_graphs": True, "intra_op_threads": 1},
                                      {"compile": False, "intra_op_threads": 1}])  # an older table: no torch_device
def test_cuda_fp16_table_is_not_validated_on_the_cpu(tmp_path, settings):
    t = _fake_table(tmp_path, settings, "NVIDIA H200", "fp16")
    with pytest.raises(BackendUnavailableError, match="NVIDIA GPU"):
        backend_for_table(t)


def test_cpu_name_means_cpu_for_older_tables(tmp_path):
    t = _fake_table(tmp_path, {"compile": False, "intra_op_threads": 1}, "Some CPU (2 logical CPUs)", "fp32")
    assert backend_for_table(t).device == "cpu"


def test_cuda_graphs_need_cuda_and_no_compile():
    with pytest.raises(ConfigError, match="need --device cuda"):
        TorchBackend(device="cpu", cuda_graphs=True)
    assert main(["latency", "build", "--backend", "onnxruntime", "--cuda-graphs", "--out", "/nonexistent/x.json"]) == 2
    assert not Path("/nonexistent").exists()


@pytest.mark.gpu
def test_cuda_graph_replay_times_the_model():
    from revit.config import BlockDims

    with pytest.raises(ConfigError, match="either --compile or --cuda-graphs"):
        TorchBackend(device="cuda", cuda_graphs=True, compile=True)
    b = TorchBackend(device="cuda", dtype="fp16", cuda_graphs=True)
    ts = b.block(64, BlockDims(2, 32, 32, 128), 17, 8).time(5)
    assert len(ts) == 5 and all(t > 0 for t in ts) and b.info()["cuda_graphs"] is True
