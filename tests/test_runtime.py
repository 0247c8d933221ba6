import argparse
import importlib

import pytest
import torch
from torch.utils.data import TensorDataset

from revit.devices import AMP_MODES, autocast, grad_scaler, init_distributed, make_loader, resolve_device, to_device
from revit.errors import ConfigError, DeviceError, RevitError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_cuda_without_gpu_is_one_line_device_error(spec):
    with pytest.raises(DeviceError) as e:
        resolve_device(spec)
    assert isinstance(e.value, RevitError) and "\n" not in str(e.value) and "no CUDA GPU" in str(e.value)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cpu:1", "mps"])
def test_unknown_device_names(spec):
    with pytest.raises(DeviceError, match="auto, cpu, cuda"):
        resolve_device(spec)


def test_autocast_and_scaler_modes():
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    assert AMP_MODES == ("off", "bf16", "fp16")
    with autocast(cpu, "off"):
        assert (a @ b).dtype == torch.float32
    with autocast(cpu, "bf16"):
        out = a @ b
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), a @ b, atol=0.1, rtol=0.02)
    assert grad_scaler(cpu, "off") is None and grad_scaler(cpu, "bf16") is None
    assert isinstance(grad_scaler(cpu, "fp16"), torch.amp.GradScaler)
    with pytest.raises(ConfigError, match="off, bf16, fp16"):
        autocast(cpu, "fp8")


def test_single_process_init_is_rank_zero():
    assert init_distributed(torch.device("cpu")) == (0, 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_do_not_depend_on_workers_or_ranks(workers):
    ds = TensorDataset(torch.arange(50))
    ref = [b[0].tolist() for b in make_loader(ds, 8, seed=3)]
    assert len(ref) == 6 and sorted(sum(ref, [])) == sorted(set(sum(ref, [])))
    halves = [[b[0].tolist() for b in make_loader(ds, 8, seed=3, rank=r, world=2, workers=workers)]
              for r in range(2)]
    assert [h0 + h1 for h0, h1 in zip(*halves, strict=True)] == ref
    dl = make_loader(ds, 8, seed=3, workers=workers, device=torch.device("cpu"))
    assert dl.num_workers == workers and dl.persistent_workers == (workers > 0) and not dl.pin_memory


def test_loader_creation_leaves_the_global_rng_alone():
    ds = TensorDataset(torch.arange(20))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for _ in make_loader(ds, 4, seed=1):
        pass
    torch.testing.assert_close(torch.rand(3), expected)


def test_to_device_nested_and_channels_last():
    x, y = torch.randn(2, 3, 4, 4), torch.tensor([1, 0])
    xs, ys = to_device((x, y), torch.device("cpu"), channels_last=True)
    assert xs.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(
        memory_format=torch.channels_last)
    torch.testing.assert_close(xs, x)
    assert ys.dtype == torch.int64
    d = to_device({"x": x, "n": 3}, torch.device("cpu"))
    assert d["n"] == 3 and d["x"] is x


@pytest.mark.parametrize("clean", [True, False])
def test_cli_ends_the_process_group_it_started(tmp_path, monkeypatch, clean):
    """A command that started a process group leaves none behind, on success (barrier first) and after an
    error (no barrier), so no gloo thread is left to abort the process at exit."""
    import torch.distributed as dist

    cli_main = importlib.import_module("revit.cli.main")

    def command(args):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        assert dist.is_initialized()
        if not clean:
            raise ConfigError("bad input after the group started")
        return 0

    parser = cli_main.build_parser()
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(func=command))
    assert cli_main.main([]) == (0 if clean else 2)
    assert not dist.is_initialized()
