"""Latency builds: ONNX graphs vs a torch reference, backends' contract, sparse design, resume, validation."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from revit.cli.main import main
from revit.config import BlockDims, Setting, ViTConfig
from revit.errors import BackendUnavailableError, ConfigError
from revit.latency import graphs
from revit.latency.accuracy import random_configs, validate
from revit.latency.backends import BACKENDS, Backend, Workload, get_backend
from revit.latency.grid import WidthGrid
from revit.latency.profiler import BuildSettings, Journal, build_table, journal_path
from revit.latency.remeasure import remeasure_fixed
from revit.latency.table import LatencyTable

SETTING = {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "distilled": False, "class_token": True}
DIMS = [BlockDims(3, 8, 12, 40), BlockDims(2, 16, 4, 24), BlockDims(1, 4, 4, 8)]
HALF_DIMS = [BlockDims(0, 0, 0, 40), BlockDims(2, 8, 12, 0)]  # no attention; no MLP


# an independent torch reference of the block (written from the spec, not from revit's code) --------
def ref_block(x: torch.Tensor, w: Mapping[str, np.ndarray], d: BlockDims) -> torch.Tensor:
    t = {k: torch.from_numpy(np.array(v)) for k, v in w.items()}
    b, n, e = x.shape
    if d.heads:
        x = _ref_attention(x, t, d)
    if not d.mlp_dim:
        return x
    h = F.layer_norm(x, (e,), t["ln2_w"], t["ln2_b"], eps=1e-6)
    m = h @ t["fc1_w"] + t["fc1_b"]
    m = 0.5 * m * (1 + torch.erf(m / 2 ** 0.5))
    return x + m @ t["fc2_w"] + t["fc2_b"]


def _ref_attention(x: torch.Tensor, t: Mapping[str, torch.Tensor], d: BlockDims) -> torch.Tensor:
    b, n, e = x.shape
    h = F.layer_norm(x, (e,), t["ln1_w"], t["ln1_b"], eps=1e-6)
    qkv = h @ t["qkv_w"] + t["qkv_b"]
    hq = d.heads * d.qk_dim
    q = qkv[..., :hq].reshape(b, n, d.heads, d.qk_dim).permute(0, 2, 1, 3)
    k = qkv[..., hq:2 * hq].reshape(b, n, d.heads, d.qk_dim).permute(0, 2, 1, 3)
    v = qkv[..., 2 * hq:].reshape(b, n, d.heads, d.v_dim).permute(0, 2, 1, 3)
    a = torch.softmax(q @ k.transpose(-1, -2) / d.qk_dim ** 0.5, dim=-1)
    o = (a @ v).permute(0, 2, 1, 3).reshape(b, n, d.heads * d.v_dim)
    return x + o @ t["proj_w"] + t["proj_b"]


def ref_model(inits: Mapping[str, np.ndarray], cfg: ViTConfig, img: torch.Tensor) -> torch.Tensor:
    t = {k: torch.from_numpy(np.asarray(v).copy()) for k, v in inits.items()}
    x = F.conv2d(img, t["patch_w"], t["patch_b"], stride=cfg.patch_size).flatten(2).transpose(1, 2)
    if "prefix" in t:
        x = torch.cat([t["prefix"].expand(x.shape[0], -1, -1), x], 1)
    x = x + t["pos"]
    for i, d in enumerate(cfg.blocks):
        x = ref_block(x, {k[len(f"blk{i}_"):]: v for k, v in inits.items() if k.startswith(f"blk{i}_")}, d)
    x = F.layer_norm(x, (cfg.embed_dim,), t["norm_w"], t["norm_b"], eps=1e-6)
    out = x[:, 0] @ t["head_w"] + t["head_b"]
    if cfg.distilled:
        out = (out + x[:, 1] @ t["headd_w"] + t["headd_b"]) / 2
    return out


def _ort(model: Any) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("d", DIMS + HALF_DIMS, ids=str)
def test_shared_block_graph_matches_reference(d: BlockDims) -> None:
    sess = _ort(graphs.shared_block_graph(d.has_attention, d.has_mlp))
    rng = np.random.default_rng(0)
    for e in (16, 24):
        w = graphs.block_weights(e, d, rng)
        x = rng.standard_normal((2, 17, e)).astype(np.float32)
        (y,) = sess.run(None, {"x": x, **w, **graphs.block_shapes(d)})
        np.testing.assert_allclose(y, ref_block(torch.from_numpy(x), w, d).numpy(), rtol=1e-4, atol=1e-5)


def test_block_graph_matches_revit_models_block() -> None:
    from revit.models import layers

    d = DIMS[0]
    blk = layers.Block(24, d).eval()
    w = graphs.block_weights(24, d, np.random.default_rng(1))
    with torch.no_grad():
        for mod, a, b in ((blk.norm1, "ln1_w", "ln1_b"), (blk.norm2, "ln2_w", "ln2_b")):
            mod.weight.copy_(torch.from_numpy(w[a]))
            mod.bias.copy_(torch.from_numpy(w[b]))
        for lin, a, b in ((blk.attn.qkv, "qkv_w", "qkv_b"), (blk.attn.proj, "proj_w", "proj_b"),
                          (blk.mlp.fc1, "fc1_w", "fc1_b"), (blk.mlp.fc2, "fc2_w", "fc2_b")):
            lin.weight.copy_(torch.from_numpy(w[a]).T)
            lin.bias.copy_(torch.from_numpy(w[b]))
    x = np.random.default_rng(2).standard_normal((2, 17, 24)).astype(np.float32)
    (y,) = _ort(graphs.shared_block_graph()).run(None, {"x": x, **w, **graphs.block_shapes(d)})
    with torch.no_grad():
        np.testing.assert_allclose(y, blk(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("distilled", [False, True])
def test_tensorrt_onnx_graphs_run_in_onnxruntime(distilled: bool) -> None:
    """The static graphs the TensorRT backend parses, executed by onnxruntime against the reference."""
    import onnx.numpy_helper as nh

    from revit.latency.backends.tensorrt import TensorRTBackend

    cfg = ViTConfig(embed_dim=24, blocks=tuple(DIMS + HALF_DIMS),
                    **{**SETTING, "distilled": distilled})  # type: ignore[arg-type]
    model = TensorRTBackend.model_onnx(cfg, 3)
    inits = {i.name: nh.to_array(i) for i in model.graph.initializer}
    img = np.random.default_rng(4).standard_normal((3, 1, 28, 28)).astype(np.float32)
    (y,) = _ort(model).run(None, {"image": img})
    np.testing.assert_allclose(y, ref_model(inits, cfg, torch.from_numpy(img)).numpy(), rtol=1e-4, atol=1e-5)
    for d in (DIMS[1], *HALF_DIMS):
        blk = TensorRTBackend.block_onnx(24, d, cfg.tokens, 2)
        bw = {i.name[2:]: nh.to_array(i) for i in blk.graph.initializer if i.name.startswith("b_")}
        x = np.random.default_rng(5).standard_normal((2, cfg.tokens, 24)).astype(np.float32)
        (yb,) = _ort(blk).run(None, {"x": x})
        np.testing.assert_allclose(yb, ref_block(torch.from_numpy(x), bw, d).numpy(), rtol=1e-4, atol=1e-5)
    fixed = TensorRTBackend.fixed_onnx({**SETTING, "distilled": distilled}, 24, 3)
    assert _ort(fixed).run(None, {"image": img})[0].shape == (3, 10)


# backends: one contract, parametrized over the registry ------------------------------------------
@pytest.mark.parametrize("name", BACKENDS.names())
def test_backend_contract(name: str) -> None:
    try:
        b = get_backend(name)
    except BackendUnavailableError as e:
        assert name == "tensorrt", f"{name} should be available here: {e}"
        msg = str(e)
        assert "\n" not in msg and "pip install" in msg and "NVIDIA GPU" in msg
        return
    info = b.info()
    assert {"backend", "backend_version", "device", "dtype"} <= set(info) and info["backend"] == name
    cfg = ViTConfig(embed_dim=16, blocks=tuple(DIMS[1:]), **SETTING)  # type: ignore[arg-type]
    for w in (b.block(16, DIMS[0], 17, 2), b.fixed(SETTING, 16, 2), b.model(cfg, 2)):
        w.time(1)
        t = w.time(3)
        assert len(t) == 3 and all(x > 0 for x in t)
        w.close()


def test_tensorrt_cli_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        get_backend("tensorrt")
        pytest.skip("tensorrt and a GPU are available here")
    except BackendUnavailableError:
        pass
    rc = main(["latency", "build", "--backend", "tensorrt", "--preset", "micro", "--out", str(tmp_path / "t.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "tensorrt" in err and "NVIDIA GPU" in err and "pip install" in err
    assert not (tmp_path / "t.json").exists()


# a synthetic backend: exact, fast, counts its calls ------------------------------------------------
class _Const(Workload):
    def __init__(self, v: float) -> None:
        self.v = v

    def time(self, n: int) -> list[float]:
        return [self.v] * n


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, fn: Callable[[int, BlockDims], float], **kw: Any) -> None:
        super().__init__(**kw)
        self.fn, self.calls = fn, 0

    def info(self) -> dict[str, Any]:
        return {"backend": "fake", "backend_version": "1", "device": "unit test", "dtype": "fp32"}

    def block(self, embed_dim: int, dims: BlockDims, tokens: int, batch: int) -> Workload:
        self.calls += 1
        return _Const(self.fn(embed_dim, dims))

    def fixed(self, setting: Mapping[str, Any], embed_dim: int, batch: int) -> Workload:
        return _Const(1e-5 * embed_dim)

    def model(self, cfg: ViTConfig, batch: int) -> Workload:
        return _Const(sum(self.fn(cfg.embed_dim, b) for b in cfg.blocks) + 1e-5 * cfg.embed_dim)


def stepped(e: int, d: BlockDims) -> float:
    """MACs-like (multilinear) cost plus a step when mlp_dim passes 128 (a kernel switch)."""
    macs = e * d.heads * (2 * d.qk_dim + d.v_dim) + d.heads * d.v_dim * e + 2 * e * d.mlp_dim + 17 * d.heads * d.qk_dim
    return 1e-4 + 1e-8 * macs + (2e-4 if d.mlp_dim > 128 else 0.0)


def tiny_grid(heads: tuple[int, ...] = (1,), qk_dim: tuple[int, ...] = (4,),
              mlp_dim: tuple[int, ...] = (8, 32)) -> WidthGrid:
    """A grid of a few cells on the tiny setting (two embed widths, one V width)."""
    axes = {"embed_dim": (16, 32), "heads": heads, "qk_dim": qk_dim, "v_dim": (4,), "mlp_dim": mlp_dim}
    return WidthGrid("tiny", axes, Setting(**SETTING, depth=2))


def micro_grid() -> WidthGrid:
    from revit.latency.grid import micro

    return micro()


def test_auto_design_finds_the_step_and_stays_sparse(tmp_path: Path) -> None:
    b = FakeBackend(stepped)
    t = build_table(micro_grid(), b, tmp_path / "t.json", BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0),
                    progress=False)
    d = t.metadata["design"]
    # + the reference block; the half blocks on their sub-grids of the knots come on top of the cell budget
    assert d["cells_measured"] <= 937 and d["cells_measured"] + d["half_cells_measured"] == b.calls - 1
    assert d["half_cells_measured"] == t.half_cells == len(t.axes["embed_dim"]) * (
        len(t.axes["heads"]) * len(t.axes["qk_dim"]) * len(t.axes["v_dim"]) + len(t.axes["mlp_dim"]))
    assert {128, 136} <= set(t.axes["mlp_dim"])  # the step is bracketed by knots
    assert len(t.axes["heads"]) == 2 and len(t.axes["qk_dim"]) == 2  # linear axes need only their ends
    for cfg in random_configs(t, 20, seed=3):
        want = sum(stepped(cfg.embed_dim, blk) for blk in cfg.blocks) + 1e-5 * cfg.embed_dim
        assert t.predict(cfg).total_s == pytest.approx(want, rel=0.01)
    assert not journal_path(tmp_path / "t.json").exists()


def bent_at_small_mlp(e: int, d: BlockDims) -> float:
    """MACs-like cost with an embed-width bend that shows only in narrow MLPs (the pilot's anchors are wide)."""
    bend = 3e-4 * (1.0 - abs(e - 64) / 32) if d.mlp_dim <= 64 and 32 <= e <= 96 else 0.0
    return stepped(e, d) + max(bend, 0.0)


def test_forced_knots_catch_a_bend_the_pilot_sweeps_cannot_see(tmp_path: Path) -> None:
    cfg = ViTConfig(64, [BlockDims(2, 8, 8, 40)] * 4, Setting(**SETTING, depth=4))
    want = sum(bent_at_small_mlp(64, b) for b in cfg.blocks) + 1e-5 * 64
    s = BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0)
    auto = build_table(micro_grid(), FakeBackend(bent_at_small_mlp), tmp_path / "auto.json", s, progress=False)
    assert 64 not in auto.axes["embed_dim"]  # the anchors' wide MLPs hide the bend: auto design misses it
    assert abs(auto.predict(cfg).total_s / want - 1) > 0.1
    forced = BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, knots={"embed_dim": (40, 48, 56, 64, 72, 80, 88)})
    t = build_table(micro_grid(), FakeBackend(bent_at_small_mlp), tmp_path / "forced.json", forced, progress=False)
    assert set(forced.knots["embed_dim"]) <= set(t.axes["embed_dim"])
    assert t.predict(cfg).total_s == pytest.approx(want, rel=0.01)
    assert t.metadata["design"]["knots"]["embed_dim"] == list(range(32, 97, 8))


@pytest.mark.parametrize("knots, words", [({"depth": (1,)}, "not an axis"),
                                          ({"embed_dim": (33,)}, "not in space micro"),
                                          ({"embed_dim": tuple(range(32, 97, 8)), "heads": (1, 2, 3, 4),
                                            "mlp_dim": tuple(range(8, 385, 8))}, "raise --max-cells")])
def test_forced_knots_are_checked_before_any_journal(tmp_path: Path, knots: dict[str, tuple[int, ...]],
                                                     words: str) -> None:
    from revit.latency.profiler import check_cell_budget

    s = BuildSettings(smooth=0.0, knots=knots)
    with pytest.raises(ConfigError, match=words):
        s.check()
        check_cell_budget(micro_grid(), s)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, words", [(["--knots", "embed_dim=a"], "--knots"),
                                         (["--half-knots", "mlp_dim="], "--half-knots"),
                                         (["--half-knots", "mlp_dim=9"], "half-knots: mlp_dim [9] not in space"),
                                         (["--design", "additive", "--half-knots", "mlp_dim=8"], "additive")])
def test_forced_knots_cli_refuses_bad_text_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       args: list[str], words: str) -> None:
    rc = main(["latency", "build", "--backend", "toy", *args, "--out", str(tmp_path / "t.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and words in err and not list(tmp_path.iterdir())


class _Tracked(_Const):
    open: set[int] = set()

    def __init__(self, v: float) -> None:
        super().__init__(v)
        _Tracked.open.add(id(self))

    def close(self) -> None:
        _Tracked.open.discard(id(self))


class TrackingBackend(FakeBackend):
    """Every block workload it opens is remembered until closed."""

    def block(self, embed_dim: int, dims: BlockDims, tokens: int, batch: int) -> Workload:
        self.calls += 1
        return _Tracked(self.fn(embed_dim, dims))


@pytest.mark.parametrize("stop_at", [None, 3])
def test_build_closes_every_workload_including_the_reference(tmp_path: Path, stop_at: int | None) -> None:
    _Tracked.open.clear()

    def cb(n: int) -> None:
        if n == stop_at:
            raise KeyboardInterrupt

    b = TrackingBackend(stepped)
    s = BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, design="full")
    if stop_at is None:
        build_table(tiny_grid(), b, tmp_path / "t.json", s, progress=False, on_measure=cb)
    else:
        with pytest.raises(KeyboardInterrupt):
            build_table(tiny_grid(), b, tmp_path / "t.json", s, progress=False, on_measure=cb)
    assert b.calls > 1 and not _Tracked.open  # the reference block was opened (calls > cells) and closed


def test_resumed_build_keeps_its_cells(tmp_path: Path) -> None:
    grid = tiny_grid(qk_dim=(4, 8), mlp_dim=(8, 16))
    s = BuildSettings(smooth=0.0, passes=2, repeats=2, warmup=0, design="full", reference=False)
    out = tmp_path / "t.json"

    class Stop(Exception):
        pass

    def stop_after(k: int) -> Callable[[int], None]:
        def cb(n: int) -> None:
            if n == k:
                raise Stop

        return cb

    first = FakeBackend(lambda e, d: 1.0)
    with pytest.raises(Stop):
        build_table(grid, first, out, s, progress=False, on_measure=stop_after(6))
    header, recs = Journal(journal_path(out)).read()
    assert header["type"] == "header" and len(recs) == 6
    # a crash in the middle of a line: the partial line is dropped, nothing else
    with open(journal_path(out), "a") as f:
        f.write('{"type": "measure", "what": "block", "cel')
    with pytest.raises(ConfigError, match="--resume"):
        build_table(grid, FakeBackend(lambda e, d: 3.0), out, s, progress=False)
    with pytest.raises(ConfigError, match="different settings"):
        build_table(grid, FakeBackend(lambda e, d: 3.0), out, BuildSettings(smooth=0.0, passes=3, repeats=2, warmup=0,
                    design="full", reference=False), resume=True, progress=False)
    # killed again after 3 more measurements: the journal stays readable (the partial line was dropped)
    with pytest.raises(Stop):
        build_table(grid, FakeBackend(lambda e, d: 3.0), out, s, resume=True, progress=False,
                    on_measure=stop_after(3))
    _, recs2 = Journal(journal_path(out)).read()
    assert recs2[:6] == recs and len(recs2) == 9
    second = FakeBackend(lambda e, d: 3.0)
    t = build_table(grid, second, out, s, resume=True, progress=False)
    # 8 cells x 2 passes, + overhead (None here) x 2, + 2 fixed x 2, + 8 half blocks x 2 = 38 measurements
    first_blocks = [r for r in recs if r["what"] == "block"]
    assert t.half_cells == 8
    assert second.calls == 16 + 2 * 8 - len([r for r in recs2 if r["what"] in ("block", "attention", "mlp")])
    by_pass = {tuple(r["cell"]) for r in first_blocks}
    for cell in by_pass:  # measured once by each backend: median of [1, 1, 3, 3] = 2
        idx = tuple(t.axes[a].index(float(v)) for a, v in zip(t.axes, cell, strict=True))
        assert t.values[idx] == pytest.approx(2.0)
    others = [c for c in np.ndindex(t.values.shape)
              if tuple(int(t.axes[a][i]) for a, i in zip(t.axes, c, strict=True)) not in by_pass]
    assert all(t.values[c] == pytest.approx(3.0) for c in others)


def test_validation_of_an_exact_table_has_zero_error(tmp_path: Path) -> None:
    b = FakeBackend(stepped)
    t = build_table(micro_grid(), b, tmp_path / "t.json", BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0),
                    progress=False)
    r = validate(t, b, 10, noise_k=3, progress=False)
    assert len(r.measured) == 10 and r.mape < 0.01 and r.noise_floor == 0.0


def test_real_build_and_validate_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 4-cell onnxruntime table from a space YAML through the CLI, then query and validate (seconds)."""
    import yaml

    grid = tiny_grid()
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(grid.to_dict()))
    out = tmp_path / "t.json"
    assert main(["latency", "build", "--space", str(tmp_path / "space.yaml"), "--design", "full", "--batch", "4",
                 "--passes", "1", "--repeats", "3", "--warmup", "1", "--out", str(out), "--no-progress"]) == 0
    t = LatencyTable.load(out)
    assert t.metadata["measurement"]["clock"] == "thread" and t.metadata["backend_settings"]["intra_op_threads"] == 1
    assert t.metadata["space"] == grid.to_dict() and t.n_cells == 4
    assert (t.values > 0).all() and t.fixed is not None and t.fixed.setting == SETTING
    capsys.readouterr()
    assert main(["latency", "validate", str(out), "--samples", "2", "--noise-k", "2", "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["samples"] == 2 and res["mape"] < 1.0 and res["noise_floor"] is not None and res["normalised"]
    assert res["model_source"] == "exported"  # the default: the model a user deploys, through torch.onnx
    cfg = random_configs(t, 1, seed=9)[0]
    cfg.save(tmp_path / "c.yaml")
    assert main(["latency", "query", str(out), str(tmp_path / "c.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_s"] == pytest.approx(t.predict(cfg).total_s)


class LoadedBackend(FakeBackend):
    """Every new workload sees a different machine load (x1 .. x2.5); a reference timed around it sees the same."""

    def __init__(self, fn: Callable[[int, BlockDims], float]) -> None:
        super().__init__(fn)
        self.load, self.k = 1.0, 0
        outer = self

        class _Loaded(Workload):
            def __init__(self, v: float) -> None:
                self.v = v

            def time(self, n: int) -> list[float]:
                return [self.v * outer.load] * n

        self._Loaded = _Loaded

    def _next(self, v: float) -> Workload:
        self.k += 1
        self.load = 1.0 + 0.5 * (self.k % 4)
        return self._Loaded(v)

    def block(self, embed_dim: int, dims: BlockDims, tokens: int, batch: int) -> Workload:
        self.calls += 1
        return self._next(self.fn(embed_dim, dims))

    def model(self, cfg: ViTConfig, batch: int) -> Workload:
        return self._next(sum(self.fn(cfg.embed_dim, b) for b in cfg.blocks) + 1e-5 * cfg.embed_dim)

    def fixed(self, setting: Mapping[str, Any], embed_dim: int, batch: int) -> Workload:
        return self._next(1e-5 * embed_dim)


@pytest.mark.parametrize("reference", [True, False])
def test_reference_normalisation_removes_common_mode_load(tmp_path: Path, reference: bool) -> None:
    grid = tiny_grid(heads=(1, 2))
    b = LoadedBackend(stepped)
    t = build_table(grid, b, tmp_path / "t.json",
        BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, design="full",
                    reference=reference), progress=False)
    ratios = [t.block_latency(e, BlockDims(h, 4, 4, m)) / stepped(e, BlockDims(h, 4, 4, m))
              for e in (16, 32) for h in (1, 2) for m in (8, 32)]
    spread = max(ratios) / min(ratios) - 1
    if reference:
        assert spread < 1e-9  # every cell off by the same factor: the reference's median load
        assert t.metadata["measurement"]["reference"]["cell"]["embed_dim"] in (16, 32)
        r = validate(t, b, 6, noise_k=3, progress=False)
        assert r.normalised and r.mape < 1e-6 and r.raw_mape > 0.05
    else:
        assert spread > 0.2 and t.metadata["measurement"]["reference"] is None


class SlowerBackend(LoadedBackend):
    """The same machine ``factor`` times slower throughout, with ``junction`` seconds more in the fixed parts."""

    def __init__(self, factor: float, junction: float = 0.0) -> None:
        super().__init__(lambda e, d: factor * stepped(e, d))
        self.factor, self.junction = factor, junction

    def fixed(self, setting: Mapping[str, Any], embed_dim: int, batch: int) -> Workload:
        return self._next(self.factor * (1e-5 * embed_dim + self.junction))


def test_remeasured_fixed_parts_are_in_the_tables_units(tmp_path: Path) -> None:
    """Fixed parts timed again on a machine 3x slower (and busy) come out in the units of the old cells."""
    grid = tiny_grid(heads=(1, 2))
    t = build_table(grid, LoadedBackend(stepped), tmp_path / "t.json",
                    BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, design="full"), progress=False)
    same = remeasure_fixed(t, SlowerBackend(3.0), passes=2, repeats=2)
    assert same.fixed is not None and t.fixed is not None
    assert same.fixed.values == pytest.approx(t.fixed.values, rel=1e-9)
    assert np.array_equal(same.values, t.values) and same.axes == t.axes
    # a fixed-part graph that costs 2e-5 s more (in the build's units: times the build's common factor)
    more = remeasure_fixed(t, SlowerBackend(3.0, junction=2e-5), passes=2, repeats=2, note="junction")
    assert more.fixed is not None
    unit = t.fixed.values[0] / (1e-5 * 16)
    assert [b - a for a, b in zip(t.fixed.values, more.fixed.values, strict=True)] == pytest.approx([2e-5 * unit] * 2)
    cfg = ViTConfig(embed_dim=32, blocks=(BlockDims(2, 4, 4, 32),) * 2, **SETTING)
    assert more.predict(cfg).total_s - t.predict(cfg).total_s == pytest.approx(2e-5 * unit)
    rec = more.metadata["measurement"]["fixed_remeasured"]
    assert rec["normalised"] and rec["note"] == "junction" and rec["passes"] == 2
    more.save(tmp_path / "t2.json")
    assert LatencyTable.load(tmp_path / "t2.json").fixed == more.fixed
    # without a reference the figures are seconds now
    raw = build_table(grid, FakeBackend(stepped), tmp_path / "r.json",
                      BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, design="full", reference=False),
                      progress=False)
    class Junction(FakeBackend):
        def fixed(self, setting: Mapping[str, Any], embed_dim: int, batch: int) -> Workload:
            return _Const(1e-5 * embed_dim + 1e-5)

    again = remeasure_fixed(raw, Junction(stepped), passes=1, repeats=1)
    assert again.fixed is not None and again.fixed.values == pytest.approx((1e-5 * 16 + 1e-5, 1e-5 * 32 + 1e-5))


def test_fixed_graph_fuses_the_final_norm_as_a_model_does() -> None:
    """onnxruntime fuses a model's last residual Add and final norm into SkipLayerNormalization (slow on CPU);
    the fixed-part graph has the same node, so the fixed parts pay for it."""
    import onnxruntime as ort

    def ops(model: Any, path: Path) -> set[str]:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(path)
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        import onnx

        return {n.op_type for n in onnx.load(str(path)).graph.node}

    import tempfile

    cfg = ViTConfig(embed_dim=32, blocks=(DIMS[0],) * 2, **SETTING)
    with tempfile.TemporaryDirectory() as tmp:
        whole = ops(graphs.model_graph(cfg, 4, dynamic_batch=True), Path(tmp) / "m.onnx")
        fixed = ops(graphs.fixed_graph(SETTING, 32, 4, dynamic_batch=True), Path(tmp) / "f.onnx")
    assert "SkipLayerNormalization" in whole and "SkipLayerNormalization" in fixed
    assert "LayerNormalization" not in fixed  # the final norm is the fused one, as in the model


@pytest.mark.parametrize("distilled", [False, True])
def test_model_graph_computes_the_revit_model(distilled: bool) -> None:
    """The whole-model graph validation times is the function of ``revit.models.build_model`` (same weights)."""
    import onnx.numpy_helper as nh

    from revit import models

    cfg = ViTConfig(embed_dim=24, blocks=tuple(DIMS), **{**SETTING, "distilled": distilled})  # type: ignore[arg-type]
    g = graphs.model_graph(cfg, 2, dynamic_batch=True)
    w = {i.name: torch.from_numpy(nh.to_array(i).copy()) for i in g.graph.initializer}
    sd = {"cls_token": w["prefix"][:, :1], "pos_embed": w["pos"], "patch_embed.proj.weight": w["patch_w"],
          "patch_embed.proj.bias": w["patch_b"], "norm.weight": w["norm_w"], "norm.bias": w["norm_b"],
          "head.weight": w["head_w"].T, "head.bias": w["head_b"]}
    if distilled:
        sd.update({"dist_token": w["prefix"][:, 1:2], "head_dist.weight": w["headd_w"].T,
                   "head_dist.bias": w["headd_b"]})
    names = {"norm1": "ln1", "norm2": "ln2", "attn.qkv": "qkv", "attn.proj": "proj", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}
    for i in range(cfg.depth):
        for mod, short in names.items():
            wt = w[f"blk{i}_{short}_w"]
            sd[f"blocks.{i}.{mod}.weight"] = wt if short.startswith("ln") else wt.T
            sd[f"blocks.{i}.{mod}.bias"] = w[f"blk{i}_{short}_b"]
    model = models.build_model(cfg).eval()
    model.load_state_dict(sd)
    img = np.random.default_rng(6).standard_normal((3, 1, 28, 28)).astype(np.float32)  # batch 3: dynamic
    (y,) = _ort(g).run(None, {"image": img})
    with torch.no_grad():
        np.testing.assert_allclose(y, model(torch.from_numpy(img)).numpy(), rtol=1e-4, atol=1e-5)


def test_held_out_speedups_of_an_exact_table_and_of_a_blind_one(tmp_path: Path) -> None:
    """An exact table predicts every speedup (error 0); a whole model with a per-head overhead that the blocks
    never showed makes the table overpromise where that overhead weighs more than in the base."""
    from revit.latency.speedups import HeldOut, base_drift, summary, time_speedups

    b = FakeBackend(stepped)
    t = build_table(micro_grid(), b, tmp_path / "t.json", BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0),
                    progress=False)
    cfgs = random_configs(t, 6, seed=3)
    base, held = cfgs[0], [HeldOut("random" if i % 2 else "pruned", f"c{i}", c) for i, c in enumerate(cfgs[1:])]
    rows, _ = time_speedups(t, b, base, held, passes=2, warmup=0, repeats=1, progress=False)
    assert [r.name for r in rows] == [h.name for h in held]
    assert max(abs(r.error) for r in rows) < 1e-6 and abs(base_drift(rows)) < 1e-9

    class PerHead(FakeBackend):
        def model(self, cfg: ViTConfig, batch: int) -> Workload:
            return _Const(super().model(cfg, batch).time(1)[0] + 5e-5 * sum(blk.heads for blk in cfg.blocks))

    rows, _ = time_speedups(t, PerHead(stepped), base, held, passes=1, warmup=0, repeats=1, progress=False)
    def share(c: ViTConfig) -> float:  # the hidden overhead's share of what the table prices
        return 5e-5 * sum(blk.heads for blk in c.blocks) / t.predict(c).total_s

    for r in rows:  # the table overpromises exactly where the hidden share is larger than the base's
        assert (r.error > 0) == (share(r.config) > share(base))
        assert r.measured == pytest.approx((t.predict(base).total_s * (1 + share(base)))
                                           / (t.predict(r.config).total_s * (1 + share(r.config))))
    assert base_drift(rows) == pytest.approx(share(base))  # the base measured dearer than priced, by its share
    s = summary(rows)
    errs = np.abs([r.error for r in rows])
    assert s["all"]["n"] == 5 and s["all"]["max"] == pytest.approx(errs.max())
    assert s["all"]["median"] == pytest.approx(np.median(errs)) and s["pruned"]["n"] == 3 and s["random"]["n"] == 2


class _Session(_Const):
    """A whole model as one session runs it: its true time times that session's own speed factor."""

    def __init__(self, v: float, luck: float, closed: list[int]) -> None:
        super().__init__(v * luck)
        self.closed = closed

    def close(self) -> None:
        self.closed.append(1)


class SessionLuck(FakeBackend):
    """Every whole model opened gets its own speed factor (a session's memory layout): the k-th session of the i-th
    model runs at ``LUCK[(i + k) % 5]``, whose median is 1."""

    LUCK = (1.05, 0.97, 1.0, 1.03, 0.95)

    def __init__(self, fn: Callable[[int, BlockDims], float], reopen: bool, **kw: Any) -> None:
        super().__init__(fn, **kw)
        self.reopen, self.opened, self.closed = reopen, 0, []
        self.seen: dict[ViTConfig, list[int]] = {}

    @property
    def reopen_models(self) -> bool:
        return self.reopen

    def model(self, cfg: ViTConfig, batch: int) -> Workload:
        self.opened += 1
        i_k = self.seen.setdefault(cfg, [len(self.seen), 0])
        luck = self.LUCK[sum(i_k) % 5]
        i_k[1] += 1
        return _Session(super().model(cfg, batch).time(1)[0], luck, self.closed)


def test_whole_models_are_opened_afresh_each_pass_where_the_backend_says_so(tmp_path: Path) -> None:
    """Where sessions differ in speed and opening is cheap, a median over passes is also one over sessions: the
    held-out speedups of an exact table are exact again, where one session per model leaves its speed in them."""
    from revit.latency.speedups import BASE_VISITS, HeldOut, time_speedups

    t = build_table(micro_grid(), FakeBackend(stepped), tmp_path / "t.json",
                    BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0), progress=False)
    cfgs = random_configs(t, 6, seed=5)
    base, held = cfgs[0], [HeldOut("random", f"c{i}", c) for i, c in enumerate(cfgs[1:])]
    b = SessionLuck(stepped, reopen=False)
    rows, _ = time_speedups(t, b, base, held, passes=5, warmup=0, repeats=1, progress=False)
    assert b.opened == len(cfgs) and len(b.closed) == b.opened
    order = {c: i for c, (i, _) in b.seen.items()}  # one session each: its luck stays in the speedup
    for r in rows:
        assert r.error == pytest.approx(SessionLuck.LUCK[order[r.config] % 5] / SessionLuck.LUCK[order[base] % 5] - 1)
    assert max(abs(r.error) for r in rows) > 0.05
    b = SessionLuck(stepped, reopen=True)
    rows, _ = time_speedups(t, b, base, held, passes=5, warmup=0, repeats=1, progress=False)
    assert b.opened == 5 * (len(held) + BASE_VISITS) and len(b.closed) == b.opened
    assert b.seen[base][1] == 5 * BASE_VISITS  # the denominator of every speedup: visited most
    assert max(abs(r.error) for r in rows) < 1e-9
    b = SessionLuck(stepped, reopen=True)  # validate (calibrate, align, transfer and room time through it) too
    r = validate(t, b, 4, seed=2, noise_k=0, passes=5, warmup=0, repeats=1, model_source="graph", progress=False)
    assert b.opened == 5 * 4 and len(b.closed) == b.opened
    assert max(abs(m / p - 1) for m, p in zip(r.measured, r.predicted, strict=True)) < 1e-9


def per_head_bend(e: int, d: BlockDims) -> float:
    """An attention whose cost bends with the head count (a kernel per head) and an MLP with a step: additive."""
    heads = 3e-5 * d.heads ** 2 if d.heads else 0.0
    return stepped(e, d) + heads


def test_additive_design_measures_halves_and_sums_them(tmp_path: Path) -> None:
    """The additive design times the halves on dense knots plus a few whole blocks, and prices every whole block as
    attention half + MLP half + join: exact for an additive device, with far fewer cells than the product."""
    grid = micro_grid()
    knots = {"heads": (1, 2, 3, 4), "embed_dim": tuple(range(32, 97, 8))}
    s = BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, design="additive", knots=knots, max_cells=4000)
    b = FakeBackend(per_head_bend)
    t = build_table(grid, b, tmp_path / "t.json", s, progress=False)
    d = t.metadata["design"]
    assert d["design"] == "additive" and set(knots["heads"]) <= set(d["knots"]["heads"])
    e = len(d["knots"]["embed_dim"])
    halves = e * (len(d["knots"]["heads"]) * len(d["knots"]["qk_dim"]) * len(d["knots"]["v_dim"])
                  + len(d["knots"]["mlp_dim"]))
    assert d["half_cells_measured"] == halves and d["join_cells"] == 3 * e
    assert b.calls - 1 == halves + d["cells_measured"]  # + the reference block; no product grid was timed
    from revit.latency.additive import join_keys
    from revit.latency.profiler import pilot_cells

    whole = {("block", *c) for c in pilot_cells(grid)} | set(join_keys(d["knots"]))
    assert d["cells_measured"] == len(whole) < t.n_cells  # whole blocks: the pilot's and the join's only
    assert d["additive_check"]["held_out_cells"] > 0 and d["additive_check"]["max_abs"] < 1e-9
    assert set(t.axes["heads"]) == {1, 2, 3, 4}  # the bend keeps every head count in the derived grid
    for cfg in random_configs(t, 30, seed=4):  # random widths, some branches absent
        want = sum(per_head_bend(cfg.embed_dim, blk) for blk in cfg.blocks if blk.heads or blk.mlp_dim)
        want += 1e-5 * cfg.embed_dim
        assert t.predict(cfg).total_s == pytest.approx(want, rel=0.01)
    assert LatencyTable.load(tmp_path / "t.json").predict(cfg).total_s == pytest.approx(t.predict(cfg).total_s)


def test_additive_design_reports_a_device_that_is_not_additive(tmp_path: Path) -> None:
    """A whole block that costs more than its halves in a width-dependent way shows in the design's own check."""
    def joined(e: int, d: BlockDims) -> float:
        extra = 2e-4 * (d.mlp_dim / 384) * (d.heads / 4) if d.heads and d.mlp_dim else 0.0
        return stepped(e, d) + extra

    s = BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, design="additive", max_cells=4000)
    t = build_table(micro_grid(), FakeBackend(joined), tmp_path / "t.json", s, progress=False)
    check = t.metadata["design"]["additive_check"]
    assert check["held_out_max_abs"] > 0.05  # the pilot's whole blocks disagree with halves + join


def test_additive_design_counts_its_cells_in_the_budget(tmp_path: Path) -> None:
    from revit.latency.profiler import check_cell_budget, design_cells

    knots = {"embed_dim": tuple(range(32, 97, 8)), "heads": (1, 2, 3, 4), "mlp_dim": tuple(range(8, 385, 8))}
    full = dict(micro_grid().axes, **knots)
    assert design_cells(full, "additive") == 9 * (4 * 6 * 6 + 48) + 3 * 9 < design_cells(full, "auto")
    check_cell_budget(micro_grid(), BuildSettings(smooth=0.0, design="additive", knots=knots, max_cells=4000))
    with pytest.raises(ConfigError, match="raise --max-cells"):
        check_cell_budget(micro_grid(), BuildSettings(smooth=0.0, design="additive", knots=knots, max_cells=500))


def test_half_knots_make_the_halves_dense_and_leave_the_grid_alone(tmp_path: Path) -> None:
    """``half_knots`` measure a block without attention or MLP on knots of its own: a step in the MLP that the full
    grid's knots straddle is priced exactly in an MLP-only block, and the full grid's knots are unchanged."""
    def mlp_step(e: int, d: BlockDims) -> float:
        # two widths run off their kernel where nothing hides them: in an MLP-only block (the pilot never sees one)
        return stepped(e, d) + (1e-4 if d.mlp_dim in (168, 176) and not d.heads else 0.0)

    grid = micro_grid()
    plain = BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0)
    dense = BuildSettings(smooth=0.0, passes=1, repeats=1, warmup=0, half_knots={"mlp_dim": tuple(range(8, 385, 8))})
    a = build_table(grid, FakeBackend(mlp_step), tmp_path / "a.json", plain, progress=False)
    b = build_table(grid, FakeBackend(mlp_step), tmp_path / "b.json", dense, progress=False)
    assert a.axes == b.axes and np.array_equal(a.values, b.values)
    assert b.branches is not None and b.branches["mlp"].axes["mlp_dim"] == tuple(range(8, 385, 8))
    assert b.metadata["design"]["half_knots"]["mlp_dim"] == list(range(8, 385, 8))
    cfg = ViTConfig(88, [BlockDims(0, 0, 0, 176), BlockDims(2, 8, 8, 0)], Setting(**SETTING, depth=2))
    want = mlp_step(88, cfg.blocks[0]) + mlp_step(88, cfg.blocks[1]) + 1e-5 * 88
    assert b.predict(cfg).total_s == pytest.approx(want, rel=1e-6)
    assert abs(a.predict(cfg).total_s / want - 1) > 0.05
    with pytest.raises(ConfigError, match="additive"):
        BuildSettings(smooth=0.0, design="additive", half_knots={"mlp_dim": (8,)}).check()
    with pytest.raises(ConfigError, match="half-knots: mlp_dim"):
        check = BuildSettings(smooth=0.0, half_knots={"mlp_dim": (9,)})
        check.check_knots(grid)


def test_real_additive_build_with_per_cell_graphs_through_the_cli(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """onnxruntime, per-cell graphs (weights as initializers, as a deployed model has them), additive design: the
    halves and the join cells are measured, the derived whole blocks are the halves' sum plus the join, and the
    build says how far that sum is from the whole blocks it measured."""
    import yaml

    grid = tiny_grid(mlp_dim=(8, 16, 32))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(grid.to_dict()))
    out = tmp_path / "t.json"
    assert main(["latency", "build", "--space", str(tmp_path / "space.yaml"), "--design", "additive", "--graph",
                 "per-cell", "--batch", "4", "--passes", "1", "--repeats", "3", "--warmup", "1", "--out", str(out),
                 "--smooth", "off", "--no-progress"]) == 0  # the grid is the halves' sum exactly, as measured
    err = capsys.readouterr().err
    assert "additive check" in err
    t = LatencyTable.load(out)
    d = t.metadata["design"]
    assert t.metadata["backend_settings"]["graph"] == "per-cell" and d["design"] == "additive"
    assert t.branches is not None  # 2 EMB knots x (1 attention cell + the MLP knots the pilot chose)
    assert d["half_cells_measured"] == 2 * (1 + len(d["knots"]["mlp_dim"]))
    a, m = t.branches["attention"], t.branches["mlp"]
    join = d["additive_check"]["join_s"]
    for i, e in enumerate(t.axes["embed_dim"]):
        for j, mlp in enumerate(t.axes["mlp_dim"]):
            want = a.values[list(a.axes["embed_dim"]).index(e), 0, 0, 0] + m.values[
                list(m.axes["embed_dim"]).index(e), list(m.axes["mlp_dim"]).index(mlp)] + join[i]
            assert t.values[i, 0, 0, 0, j] == pytest.approx(max(want, 0.0))
