"""The pruning loop end to end on a tiny model and the digits data: export, resume, DDP, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from revit.config import BlockDims, ViTConfig

TINY = ViTConfig(embed_dim=16, blocks=(BlockDims(2, 4, 4, 32), BlockDims(2, 4, 4, 32)), img_size=8, patch_size=2,
                 in_chans=1, num_classes=10)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def splits() -> Any:
    from revit.data import DataSpec, load_splits

    return load_splits(DataSpec("digits", val_size=200, img_size=8))


def _cfg(**kw: Any) -> Any:
    from revit.prune import CostTarget, PruneConfig

    if isinstance(kw.get("target"), float):
        kw["target"] = CostTarget.macs(kw["target"])
    base: dict[str, Any] = dict(target=CostTarget.macs(0.6), interval=3, per_step=4, batch_size=32, lr=1e-3,
                                granularity="one", eval_size=100)
    base.update(kw)
    return PruneConfig(**base)


def _model() -> Any:
    from revit.models import build_model

    torch.manual_seed(0)
    return build_model(TINY)


def _trace(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


def test_prune_to_target_and_export(tmp_path: Path, splits: Any) -> None:
    from revit import counting
    from revit.models import build_model
    from revit.prune import prune
    from revit.trace import Trace

    res = prune(_model(), splits.train, splits.val, _cfg(), tmp_path, progress=False, test_ds=splits.test)
    tr = Trace.load(tmp_path / "trace.jsonl")
    assert [s.step for s in tr.steps] == list(range(res.steps + 1))
    base = counting.macs(TINY)
    assert tr.steps[-1].macs <= 0.6 * base < tr.steps[-2].macs  # stops at the first step under the target
    kinds = ("heads", "qk_dim", "v_dim", "mlp_dim")
    for a, b in zip(tr.steps, tr.steps[1:], strict=False):  # widths only shrink, <= 4 units per step
        assert b.embed_dim <= a.embed_dim
        assert all(getattr(y, k) <= getattr(x, k) for x, y in zip(a.blocks, b.blocks, strict=True) for k in kinds)
        assert 1 <= len(b.extra["removed"]) <= 4
    assert all(s.macs == counting.macs(s.config(TINY)) for s in tr.steps)
    cfg = ViTConfig.load(tmp_path / "pruned.yaml")
    assert cfg == res.config and counting.macs(cfg) == tr.steps[-1].macs
    reloaded = build_model(cfg, checkpoint=tmp_path / "pruned.safetensors").eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(reloaded(x), res.model.eval()(x))
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["dense_vs_masked_max_abs_diff"] < 1e-5 and m["macs_ratio"] <= 0.6 and "test_accuracy" in m
    assert (tmp_path / "plots" / "widths_vs_step.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "final_profile.png").stat().st_size > 1000


@pytest.mark.parametrize("criterion", ["hessian", "nvit-code", "taylor", "magnitude", "random"])
def test_every_criterion_reaches_the_target(tmp_path: Path, splits: Any, criterion: str) -> None:
    from revit import counting
    from revit.prune import prune

    res = prune(_model(), splits.train, None, _cfg(criterion=criterion, target=0.7, per_step=None,
                                                    step_fraction=0.1), tmp_path, progress=False)
    assert counting.macs(res.config) <= 0.7 * counting.macs(TINY)
    assert res.steps <= 4  # 10% of the base MACs per step


class _Kill(Exception):
    pass


def test_resume_reproduces_uninterrupted_trace(tmp_path: Path, splits: Any) -> None:
    """Killed after the trace line of step 3 but before its state was saved; resumed run == uninterrupted."""
    from revit.prune import PruneRun, prune

    cfg = _cfg(target=0.4, per_step=2)
    prune(_model(), splits.train, splits.val, cfg, tmp_path / "full", progress=False)

    class Killed(PruneRun):
        def _save_state(self) -> None:
            if self.pruner.steps == 3:
                raise _Kill
            super()._save_state()

    with pytest.raises(_Kill):
        Killed(_model(), splits.train, splits.val, cfg, tmp_path / "cut", progress=False).run()
    assert len(_trace(tmp_path / "cut" / "trace.jsonl")) == 4  # steps 0..3, state at step 2
    with pytest.raises(Exception, match="resume"):
        PruneRun(_model(), splits.train, splits.val, cfg, tmp_path / "cut", progress=False)
    PruneRun(_model(), splits.train, splits.val, cfg, tmp_path / "cut", resume=True, progress=False).run()
    full, cut = _trace(tmp_path / "full" / "trace.jsonl"), _trace(tmp_path / "cut" / "trace.jsonl")
    assert len(full) > 5
    assert cut == full  # widths, MACs, loss, accuracy, removed units and their scores, bit for bit
    exported = [(tmp_path / d / "pruned.safetensors").read_bytes() for d in ("cut", "full")]
    assert exported[0] == exported[1]


class _FakeTable:
    """A latency table with a known, non-linear cost: heads are expensive, MLP neurons cheap."""

    batch_size = 1

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {k: (1.0, 1e9) for k in ("embed_dim", "heads", "qk_dim", "v_dim", "mlp_dim")}

    def block(self, e: int, b: BlockDims) -> float:
        return 1e-3 * (5 * b.heads + 0.5 * e * (b.heads * (2 * b.qk_dim + b.v_dim)) / 64 + 0.02 * b.mlp_dim) + 1e-4 * e

    def predict(self, cfg: ViTConfig) -> Any:
        total = sum(self.block(cfg.embed_dim, b) for b in cfg.blocks)
        return type("P", (), {"total_s": total})()

    def marginal_savings(self, cfg: ViTConfig, block_index: int, units: dict[str, int] | None = None,
                         *, only: Any = None) -> dict[str, float]:
        from dataclasses import replace

        u = units or {}
        b = cfg.blocks[block_index]
        out = {}
        for k in ("heads", "qk_dim", "v_dim", "mlp_dim"):
            n = u.get(k, 1)
            if getattr(b, k) - n < 1:
                out[k] = 0.0
                continue
            out[k] = self.block(cfg.embed_dim, b) - self.block(cfg.embed_dim, replace(b, **{k: getattr(b, k) - n}))
        n = u.get("embed_dim", 1)
        out["embed_dim"] = sum(self.block(cfg.embed_dim, d) - self.block(cfg.embed_dim - n, d) for d in cfg.blocks)
        return out if only is None else {k: out[k] for k in only}


def test_latency_target_with_a_table(tmp_path: Path, splits: Any) -> None:
    from revit.errors import ConfigError
    from revit.prune import CostTarget, PruneRun, prune

    table = _FakeTable()
    res = prune(_model(), splits.train, None, _cfg(target=CostTarget.latency(0.6), eta=5.0), tmp_path,
                table=table, progress=False)
    tr = _trace(tmp_path / "trace.jsonl")
    assert tr[-1]["latency"] <= 0.6 * tr[0]["latency"] < tr[-2]["latency"]
    assert tr[-1]["latency"] == pytest.approx(table.predict(res.config).total_s)
    removed = [r["group"] for s in tr for r in s["removed"]]
    assert any(g.endswith("heads") for g in removed)  # the expensive units go first under a strong penalty
    assert res.metrics["eta_abs"] > 0 and res.metrics["penalty"] == "latency"
    # the settings (trace header, state) keep the flat pair every earlier run has; the header and metrics.json
    # hold the one target shape with what it came to
    header = json.loads((tmp_path / "trace.jsonl").read_text().splitlines()[0])
    assert header["settings"]["target"] == 0.6 and header["settings"]["target_kind"] == "latency"
    assert header["target"] == res.metrics["target"]
    assert {k: res.metrics["target"][k] for k in ("kind", "ratio")} == {"kind": "latency", "ratio": 0.6}
    with pytest.raises(ConfigError, match="latency table"):
        PruneRun(_model(), splits.train, None, _cfg(target=CostTarget.latency(0.6)), tmp_path / "b", progress=False)


def test_unreachable_target_fails_before_training(tmp_path: Path, splits: Any) -> None:
    from revit.errors import BudgetError
    from revit.prune import PruneRun

    with pytest.raises(BudgetError, match="cannot be reached"):
        PruneRun(_model(), splits.train, None, _cfg(target=0.01, granularity="micro"), tmp_path, progress=False)
    assert not (tmp_path / "trace.jsonl").exists()


def test_nan_loss_stops_and_keeps_last_good_state(tmp_path: Path, splits: Any) -> None:
    from revit.prune import PruneError, PruneRun

    class Poisoned(PruneRun):
        def _after_prune_step(self) -> None:
            super()._after_prune_step()
            if self.pruner.steps == 2:
                with torch.no_grad():
                    cast(Any, self.model).head.weight.fill_(float("nan"))

    with pytest.raises(PruneError, match="last good state \\(step 2\\)"):
        Poisoned(_model(), splits.train, None, _cfg(target=0.3), tmp_path, progress=False).run()
    state = torch.load(tmp_path / "state.pt", weights_only=False)
    assert state["pruner"]["steps"] == 2 and torch.isfinite(state["model"]["head.weight"]).all()


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))


def test_cli_bad_inputs(tmp_path: Path, cli: Any) -> None:
    from safetensors.torch import save_file

    from revit.models import build_model
    from revit.presets import get_preset

    # below what one block with one branch at its minimum widths costs (0.0007 of the MACs; removals allowed)
    code, _, err = cli("prune", "--model", "revit_micro", "--data", "digits", "--target-macs", "0.0005",
                       "--out", tmp_path / "a", "--no-progress")
    assert code == 2 and "cannot be reached" in err and len(err.strip().splitlines()) == 1
    assert "with one branch of one block left" in err
    other = build_model(get_preset("revit_micro").with_blocks(get_preset("revit_micro").blocks[:2]))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "w.safetensors"))
    code, _, err = cli("prune", "--model", "revit_micro", "--checkpoint", tmp_path / "w.safetensors", "--data",
                       "fashion-mnist", "--train-limit", "256", "--target-macs", "0.5", "--out", tmp_path / "b")
    assert code == 2 and "does not match the config" in err
    table = Path(__file__).resolve().parents[1] / "latency_tables" / "cpu_onnxruntime_fp32_bs64_t17.json"
    if table.is_file():
        yaml = tmp_path / "tiny.yaml"
        TINY.save(yaml)
        code, _, err = cli("prune", "--model", yaml, "--data", "digits", "--target-latency", "0.5", "--table", table,
                           "--out", tmp_path / "c")
        assert code == 2 and "cover" in err, err


def _run_cli(args: list[str], nproc: int, out: Path) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
                str(_free_port()), "-m", "revit"] if nproc > 1 else [sys.executable, "-m", "revit"]
    r = subprocess.run([*launcher, *args, "--out", str(out)], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_workers(args: list[str], nproc: int, out: Path) -> None:
    """``nproc`` gloo workers started directly with torchrun's env:// variables (no launcher process)."""
    port = str(_free_port())
    procs = []
    for rank in range(nproc):
        env = dict(_env(), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-m", "revit", *args, "--out", str(out)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=300)[1] for p in procs]
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err[-3000:]


@pytest.mark.parametrize("launcher", ["direct", pytest.param("torchrun", marks=pytest.mark.slow)])
def test_torchrun_two_processes_equal_one(tmp_path: Path, cli: Any, launcher: str) -> None:
    """2 CPU processes (gloo) vs 1, same global batch: same widths at every step; EMA scores within 1e-5 relative.

    ``direct`` (default suite): the single process runs in-process and the two workers are started
    with torchrun's environment variables, sparing the launcher's and one process's start-up;
    ``torchrun`` (slow): both runs as real ``torchrun`` / ``python -m revit`` subprocesses.
    """
    yaml = tmp_path / "tiny.yaml"
    TINY.save(yaml)
    args = ["prune", "--model", str(yaml), "--data", "digits", "--val-size", "200", "--test-limit", "0",
            "--target-macs", "0.6", "--interval", "3", "--per-step", "4", "--batch-size", "32", "--lr", "1e-3",
            "--granularity", "one", "--eval-size", "100", "--no-progress"]
    if launcher == "torchrun":
        _run_cli(args, 1, tmp_path / "one")
        _run_cli(args, 2, tmp_path / "two")
    else:
        code, _, err = cli(*args, "--out", tmp_path / "one")
        assert code == 0, err
        _run_workers(args, 2, tmp_path / "two")
    one, two = _trace(tmp_path / "one" / "trace.jsonl"), _trace(tmp_path / "two" / "trace.jsonl")
    assert len(one) == len(two) > 3
    for a, b in zip(one, two, strict=False):
        assert (a["embed_dim"], a["blocks"]) == (b["embed_dim"], b["blocks"])
        assert [r["group"] for r in a["removed"]] == [r["group"] for r in b["removed"]]
        if a["loss"] is not None:
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    s1 = torch.load(tmp_path / "one" / "state.pt", weights_only=False)["pruner"]["acc"]["ema"]
    s2 = torch.load(tmp_path / "two" / "state.pt", weights_only=False)["pruner"]["acc"]["ema"]
    rel = max(float(((s1[k] - s2[k]).abs() / (s1[k].abs().max() + 1e-30)).max()) for k in s1)
    assert rel < 1e-5, rel  # measured: 7e-7 (float sums in another order)
    (tmp_path / "score_rel_diff.txt").write_text(f"{rel:.3e}\n")
    print(f"max relative EMA score difference 1 vs 2 processes: {rel:.3e}")


def test_latency_target_with_the_shipped_table_stays_inside_it(tmp_path):
    """The pruner never leaves the table's measured range (its minimum widths are raised to it)."""
    import json as _json

    from revit.cli.main import main as cli_main
    from revit.latency.table import LatencyTable
    from revit.paths import shipped_dir
    from revit.trace import Trace

    table_path = shipped_dir("latency_tables") / "cpu_onnxruntime_fp32_bs64_t17.json"
    rc = cli_main(["prune", "--model", "revit_micro", "--data", "digits", "--train-limit", "256", "--val-size", "64",
                   "--test-limit", "64", "--target-latency", "0.5", "--table", str(table_path), "--interval", "2",
                   "--step-fraction", "0.1", "--batch-size", "32", "--threads", "1", "--out", str(tmp_path / "run"),
                   "--no-progress"])
    assert rc == 0
    lo = {k: v[0] for k, v in LatencyTable.load(table_path).ranges().items()}
    for st in Trace.load(tmp_path / "run" / "trace.jsonl").steps:
        assert st.embed_dim >= lo["embed_dim"]
        for b in st.blocks:
            assert all(getattr(b, k) >= lo[k] for k in ("heads", "qk_dim", "v_dim", "mlp_dim"))
    metrics = _json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["target"]["kind"] == "latency" and metrics["cost_ratio"] <= 0.5


def test_bf16_autocast_on_cpu_and_a_missing_gpu(tmp_path: Path, splits: Any, cli: Any) -> None:
    """``--amp bf16`` prunes on the CPU (saliency in float64 all the same); ``--device cuda`` without one: exit 2."""
    from revit import counting
    from revit.prune import prune

    res = prune(_model(), splits.train, None, _cfg(amp="bf16", device="cpu"), tmp_path / "a", progress=False)
    assert counting.macs(res.config) <= 0.6 * counting.macs(TINY)
    assert res.metrics["amp"] == "bf16" and res.metrics["device"] == "cpu"
    assert res.metrics["dense_vs_masked_max_abs_diff"] < 1e-5
    if not torch.cuda.is_available():
        code, _, err = cli("prune", "--model", "revit_micro", "--data", "digits", "--target-macs", "0.5",
                           "--device", "cuda", "--out", tmp_path / "b")
        assert code == 2 and "cuda" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "b").exists()
