"""Validate a table against whole-model measurements: random configs, predicted vs measured.

Configs are drawn inside the table's range on the space's granularity (so almost all are off the
grid and none was measured while building).  Each model is timed with the table's protocol (warm-up,
repeats, passes in random order: :mod:`revit.latency.timing`).  One config is additionally measured as ``noise_k``
independent copies in the same run: the spread of those copies is the *noise floor*, the error
a perfect predictor would still show on this machine at this moment.

When the table was built with a reference block (see :mod:`revit.latency.profiler`), each model's
samples are divided by the same reference timed around them and scaled by the table's reference
median, so build-time and validation-time load levels cancel; the raw figures are kept as well.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from revit.config import REMOVED, WIDTH_KINDS, BlockDims, ViTConfig
from revit.errors import ConfigError, FileFormatError
from revit.latency.backends import BACKENDS, Backend, Workload
from revit.latency.grid import WidthGrid
from revit.latency.table import LatencyTable
from revit.latency.timing import Reference, ref_level, shuffled_passes, time_bracketed


def backend_for_table(table: LatencyTable, threads: int | None = None) -> Backend:
    """The backend a table was measured with, on the same device, dtype, threads, clock and options (or with
    ``threads`` intra-op threads and the backend's clock for them, for ``latency transfer``).

    Each backend reads its own settings back from the table (:meth:`Backend.reopen_kwargs`): a torch
    table is validated on the device it records (``backend_settings.torch_device``) and with its
    ``compile``/``cuda_graphs`` settings, so an fp16 CUDA table is validated in fp16 on CUDA; when
    that device is missing here the backend raises :class:`~revit.errors.BackendUnavailableError`.
    """
    m = table.metadata
    if m.get("backend") == "nvit-official":
        raise ConfigError(f"{table.source or 'the table'} is an imported NViT table (V100); validate needs a table "
                          "built on this machine")
    cls = BACKENDS.get(str(m["backend"]))
    kw = cls.reopen_kwargs(m)
    if threads is not None and threads != kw.get("threads"):
        kw.update(threads=threads, clock=cls.default_clock(kw["device"], threads))
    return cls(**kw)


def table_space(table: LatencyTable) -> WidthGrid | None:
    """The space a table records (``metadata.space``), validated as a space file is: its widths, setting and
    depth are counts read from a file; None when it records none."""
    space = table.metadata.get("space")
    if not space:
        return None
    try:
        return WidthGrid.from_dict(space, f"{table.source}: metadata.space")
    except ConfigError as e:
        raise FileFormatError(str(e)) from None


def candidates(table: LatencyTable) -> dict[str, list[int]]:
    """Values to draw per axis: the space's granularity when recorded, else every integer in range."""
    space = table_space(table)
    if space is not None:
        return {a: list(space.axes[a]) for a in WIDTH_KINDS}
    return {a: list(range(max(1, int(lo)), int(hi) + 1)) for a, (lo, hi) in table.ranges().items()}


def setting_of(table: LatencyTable) -> tuple[dict[str, Any], int]:
    """The model setting and depth the table serves (from its space or fixed parts)."""
    space = table_space(table)
    if space is not None:
        return space.setting.to_dict(depth=False), space.depth
    if table.fixed is not None:
        return dict(table.fixed.setting), 12
    raise ConfigError("the table records no model setting (img_size, patch, classes); validation needs one")


def check_validation_memory(table: LatencyTable, samples: int, noise_k: int) -> None:
    """Refuse, before any allocation, a validation whose models do not fit here: all ``samples + noise_k``
    models are built (weights and an input batch each) before timing, and one runs at a time."""
    from revit import counting
    from revit.input_checks import check_fits_memory

    cand = candidates(table)
    setting, depth = setting_of(table)
    top = {a: max(cand[a]) for a in WIDTH_KINDS}
    e, h, q, v, m = (top[a] for a in WIDTH_KINDS)
    widest = ViTConfig(embed_dim=e, blocks=(BlockDims(h, q, v, m),) * depth, **setting)
    b, t = table.batch_size, widest.tokens
    if t != table.tokens:  # the reference block is built at the table's tokens, the models at the setting's
        raise FileFormatError(f"{table.source}: metadata tokens is {table.tokens}, but the models it serves have {t}")
    per_model = counting.params(widest) + b * widest.in_chans * widest.img_size ** 2
    acts = b * t * max(h * (2 * q + v), m, e) + b * h * t * t  # the widest block's activations (as block_bytes)
    check_fits_memory(4 * ((samples + noise_k) * per_model + 3 * acts),
                      f"validating {table.source} ({samples + noise_k} models at batch {b})",
                      hint="use fewer --samples or a table of a smaller batch")


# the chance that a block drawn for validation from a table that prices absent branches lacks its attention, and
# the same for its MLP (half of it again: the block is removed), so that validation covers every block it prices
ABSENT_RATE = 0.15


def random_configs(table: LatencyTable, n: int, seed: int = 0, depth: int | None = None,
                   absent: float | None = None) -> list[ViTConfig]:
    """``n`` random per-block configs inside the table's range (independent widths per block).

    Each block loses its attention with probability ``absent``, its MLP with the same, and is removed with half of
    it (at least one block stays); by default ``ABSENT_RATE`` for a table that prices absent branches, else 0 (the
    draws of a v1 table are what they were)."""
    cand = candidates(table)
    setting, d = setting_of(table)
    rate = (ABSENT_RATE if table.prices_absent_branches else 0.0) if absent is None else absent
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        blocks = tuple(BlockDims(rng.choice(cand["heads"]), rng.choice(cand["qk_dim"]), rng.choice(cand["v_dim"]),
                                 rng.choice(cand["mlp_dim"])) for _ in range(depth or d))
        if rate > 0:
            blocks = _without_some_branches(blocks, rate, rng)
        out.append(ViTConfig(embed_dim=rng.choice(cand["embed_dim"]), blocks=blocks, **setting))
    return out


def _without_some_branches(blocks: tuple[BlockDims, ...], rate: float, rng: random.Random) -> tuple[BlockDims, ...]:
    """``blocks`` with branches dropped at random (see :func:`random_configs`); never every block removed."""
    out = []
    for b in blocks:
        r = rng.random()
        out.append(BlockDims(0, 0, 0, b.mlp_dim) if r < rate else BlockDims(b.heads, b.qk_dim, b.v_dim, 0)
                   if r < 2 * rate else REMOVED if r < 2.5 * rate else b)
    return tuple(out) if any(not b.is_removed for b in out) else blocks


@dataclass
class ValidationResult:
    """Per-config predicted and measured seconds (per batch), the errors and the noise floor."""

    configs: list[ViTConfig]
    predicted: list[float]
    measured: list[float]
    noise_measurements: list[float] = field(default_factory=list)
    seconds: float = 0.0
    raw_measured: list[float] = field(default_factory=list)
    raw_noise_measurements: list[float] = field(default_factory=list)
    normalised: bool = False
    model_source: str = "graph"

    @property
    def raw_mape(self) -> float:
        """MAPE against the measurements before reference normalisation (same as ``mape`` without one)."""
        p, m = np.asarray(self.predicted), np.asarray(self.raw_measured or self.measured)
        return float(np.mean(np.abs((p - m) / m)))

    @property
    def raw_noise_floor(self) -> float | None:
        m = np.asarray(self.raw_noise_measurements or self.noise_measurements)
        if m.size < 2:
            return None
        return float(np.mean(np.abs(m - np.median(m)) / np.median(m)))

    @property
    def rel_errors(self) -> np.ndarray:
        p, m = np.asarray(self.predicted), np.asarray(self.measured)
        return np.asarray((p - m) / m)

    @property
    def mape(self) -> float:
        return float(np.mean(np.abs(self.rel_errors)))

    @property
    def worst(self) -> float:
        return float(np.max(np.abs(self.rel_errors)))

    @property
    def bias(self) -> float:
        return float(np.mean(self.rel_errors))

    @property
    def noise_floor(self) -> float | None:
        """Mean absolute relative deviation of repeated measurements of one config from their median."""
        if len(self.noise_measurements) < 2:
            return None
        m = np.asarray(self.noise_measurements)
        return float(np.mean(np.abs(m - np.median(m)) / np.median(m)))

    def to_dict(self) -> dict[str, Any]:
        return {"samples": len(self.configs), "mape": self.mape, "worst": self.worst, "bias": self.bias,
                "noise_floor": self.noise_floor, "noise_measurements": self.noise_measurements,
                "normalised": self.normalised, "raw_mape": self.raw_mape, "raw_noise_floor": self.raw_noise_floor,
                "seconds": round(self.seconds, 1), "model_source": self.model_source,
                "rows": [{"embed_dim": c.embed_dim, "predicted_s": p, "measured_s": m, "error": (p - m) / m}
                         for c, p, m in zip(self.configs, self.predicted, self.measured, strict=True)]}


# where whole models come from: "exported" = revit's torch model through torch.onnx (what a user deploys; the
# default where the backend runs ONNX files), "graph" = the backend's own synthetic whole-model graph
MODEL_SOURCES = ("exported", "graph")
_ALIASES = {"revit-models": "exported"}  # the name before the exported model became the default


def model_source_for(backend: Backend, source: str | None) -> str:
    """The model source to validate with: ``source`` (aliases resolved), or by default the exported model where
    ``backend`` runs ONNX files and its own graph elsewhere (the torch backend's graph is revit's torch model)."""
    if source is None:
        return "exported" if getattr(backend, "onnx_file", None) is not None else "graph"
    source = _ALIASES.get(source, source)
    if source not in MODEL_SOURCES:
        raise ConfigError(f"model source must be one of {', '.join(MODEL_SOURCES)}, got {source!r}")
    return source


class WholeModel:
    """A whole model of ``cfg`` to time on ``backend``: exported once into folder ``tmp`` with ``torch.onnx`` (source
    ``exported``) or the backend's own graph (``graph``), then opened for each timing visit.

    Where :attr:`Backend.reopen_models` (onnxruntime on CPU) every visit opens a fresh session, so a median over
    passes is also a median over sessions: a session's own memory layout moves a whole model's speed by about 1%
    there, which one session would freeze into every pass. Elsewhere one workload is opened and kept."""

    def __init__(self, backend: Backend, cfg: ViTConfig, batch: int, source: str, tmp: str,
                 path: str | None = None) -> None:
        self.backend, self.cfg, self.batch = backend, cfg, batch
        self.path: str | None = path  # exported already (:func:`whole_models`)
        self.opened = 0
        if source != "graph" and path is None:
            self.path = export_for_timing(backend, cfg, batch, tmp)
        self._kept = None if backend.reopen_models else self._open()

    def _open(self) -> Workload:
        self.opened += 1
        if self.path is None:
            return self.backend.model(self.cfg, self.batch)
        w: Workload = self.backend.onnx_file(self.path, self.cfg, self.batch)  # type: ignore[attr-defined]
        return w

    @contextmanager
    def visit(self) -> Iterator[Workload]:
        """The workload to time now: a fresh one, closed afterwards, or the one kept."""
        if self._kept is not None:
            yield self._kept
            return
        w = self._open()
        try:
            yield w
        finally:
            w.close()

    def close(self) -> None:
        """Release the kept workload, if any."""
        if self._kept is not None:
            self._kept.close()
            self._kept = None


def export_for_timing(backend: Backend, cfg: ViTConfig, batch: int, tmp: str) -> str:
    """``cfg``'s revit model exported with ``torch.onnx`` into a new file in folder ``tmp``; its path."""
    return export_many(backend, [cfg], batch, tmp)[0]


def export_many(backend: Backend, cfgs: list[ViTConfig], batch: int, tmp: str, progress: bool = False) -> list[str]:
    """Each distinct config of ``cfgs`` exported once with ``torch.onnx`` into folder ``tmp``; the path of each.

    An export costs 4-10 s whatever the model's size (tracing and translation, not arithmetic), so the same config
    is exported once: a validation's noise copies share its file (each visit still opens its own session).  In
    worker processes they would not be faster on two cores: a fresh process pays torch's import and the exporter's
    first call, 10 s, before its first model."""
    import torch

    from revit.models import build_model
    from revit.models.export import export_onnx

    if getattr(backend, "onnx_file", None) is None:
        raise ConfigError("--model-source exported needs a backend that runs ONNX files (onnxruntime); "
                          "give --model-source graph")
    paths: dict[ViTConfig, str] = {}
    from tqdm import tqdm

    for c in tqdm(list(dict.fromkeys(cfgs)), desc="export", unit="model", disable=not progress, leave=False):
        fd, paths[c] = tempfile.mkstemp(suffix=".onnx", dir=tmp)
        os.close(fd)
        export_onnx(build_model(c).eval(), paths[c], torch.randn(batch, c.in_chans, c.img_size, c.img_size))
    return [paths[c] for c in cfgs]


def whole_models(backend: Backend, cfgs: list[ViTConfig], batch: int, source: str, tmp: str,
                 progress: bool = False) -> list[WholeModel]:
    """A :class:`WholeModel` of each config, the exported ones exported first, together (:func:`export_many`)."""
    paths: list[str | None] = [None] * len(cfgs)
    if source != "graph":
        paths = list(export_many(backend, cfgs, batch, tmp, progress))
    return [WholeModel(backend, c, batch, source, tmp, path=p) for c, p in zip(cfgs, paths, strict=True)]


def validate(table: LatencyTable, backend: Backend, samples: int, *, seed: int = 1, noise_k: int = 10,
             warmup: int | None = None, repeats: int | None = None, passes: int | None = None,
             model_source: str | None = None, progress: bool = True, configs: list[ViTConfig] | None = None
             ) -> ValidationResult:
    """Measure ``samples`` random whole models (plus ``noise_k`` copies of the first) against predictions.

    ``model_source``: see :func:`model_source_for` (default: the exported model where the backend runs ONNX)."""
    model_source = model_source_for(backend, model_source)
    meas = table.metadata.get("measurement") or {}
    warmup = int(meas.get("warmup") or 2) if warmup is None else warmup
    repeats = int(meas.get("repeats") or 5) if repeats is None else repeats
    passes = int(meas.get("passes") or 3) if passes is None else passes
    cfgs = configs if configs is not None else random_configs(table, samples, seed)
    predicted = [table.predict(c).total_s for c in cfgs]
    batch = table.batch_size
    t_start = time.perf_counter()
    from tqdm import tqdm

    items = list(range(len(cfgs))) + [-(k + 1) for k in range(noise_k if cfgs else 0)]
    ref_info = meas.get("reference")
    ref = Reference.of_table(table, backend, warmup)
    got: dict[int, list[float]] = {i: [] for i in items}
    ratio: dict[int, list[float]] = {i: [] for i in items}
    loads: dict[int, WholeModel] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            made = whole_models(backend, [cfgs[max(i, 0)] for i in items], batch, model_source, tmp, progress)
            loads = dict(zip(items, made, strict=True))
            with tqdm(total=len(items) * passes, desc="validate", unit="model", disable=not progress,
                      leave=False) as bar:
                for i in shuffled_passes(items, passes, seed):
                    with loads[i].visit() as w:
                        t, refs = time_bracketed(w, warmup, repeats, ref)
                    got[i] += t
                    r = ref_level(refs)
                    ratio[i] += [x / r for x in t]
                    bar.update(1)
    finally:
        for m in loads.values():
            m.close()
        if ref is not None:
            ref.close()
    raw = [float(np.median(got[i])) for i in range(len(cfgs))]
    raw_noise = [float(np.median(got[i])) for i in items if i < 0]
    if ref is None:
        return ValidationResult(cfgs, predicted, raw, raw_noise, time.perf_counter() - t_start, raw, raw_noise,
                                model_source=model_source)
    assert ref_info is not None
    # in the units of the predictions: the build's reference level, or the calibration's when one is applied
    cal = table.calibration
    scale = float(ref_info["median_s"]) * (cal.reference_ratio if cal is not None and cal.reference_ratio else 1.0)
    measured = [float(np.median(ratio[i])) * scale for i in range(len(cfgs))]
    noise = [float(np.median(ratio[i])) * scale for i in items if i < 0]
    return ValidationResult(cfgs, predicted, measured, noise, time.perf_counter() - t_start, raw, raw_noise, True,
                            model_source)
