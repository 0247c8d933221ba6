"""Fit a rule family's parameters to observed per-block widths by least squares.

Observations come from pruning traces (the widths at a chosen step or MACs/latency ratio) or
from another rule evaluated at some widths (to find the family member nearest to ``paper``).
Residuals are relative per kind (each kind divided by its mean width in the sample) so heads,
QK, V and MLP weigh alike; quality is reported as R^2 and residuals per kind in width units.
numpy and scipy are imported here only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revit import __version__, counting
from revit.config import BlockDims
from revit.errors import ConfigError
from revit.rules.base import WIDTH_KINDS, block_positions, get_family
from revit.rules.rule import Rule
from revit.trace import Trace, TraceStep


@dataclass(frozen=True)
class Sample:
    """Observed per-block widths at one embedding width, and where they came from."""

    embed_dim: int
    blocks: tuple[BlockDims, ...]
    source: str
    info: Mapping[str, Any] = field(default_factory=dict)
    img_size: int = 224  # of the setting, to pick the granularity when the fit is rounded

    def widths(self, kind: str) -> list[float]:
        return [float(getattr(b, kind)) for b in self.blocks]


def select_step(trace: Trace, *, at_ratio: float | None = None, at_latency_ratio: float | None = None,
                at_step: int | None = None, source: str = "trace") -> TraceStep:
    """The step to read: the first at or below a MACs (or latency) ratio of the base, a step number, or the last."""
    if not trace.steps:
        raise ConfigError(f"{source}: the trace has no steps")
    if sum(x is not None for x in (at_ratio, at_latency_ratio, at_step)) > 1:
        raise ConfigError("give at most one of --at-ratio, --at-latency-ratio and --at-step")
    if at_step is not None:
        for st in trace.steps:
            if st.step == at_step:
                return st
        raise ConfigError(f"{source}: no step {at_step} (steps {trace.steps[0].step}..{trace.steps[-1].step})")
    if at_ratio is not None:
        if not 0 < at_ratio <= 1:
            raise ConfigError(f"--at-ratio must be in (0, 1], got {at_ratio}")
        base = counting.macs(trace.base_config)
        for st in trace.steps:
            if st.macs <= at_ratio * base:
                return st
        low = min(st.macs for st in trace.steps) / base
        raise ConfigError(f"{source}: the trace never reaches {at_ratio:g} of the base MACs (lowest {low:.3f}); "
                          f"choose --at-ratio >= {math.ceil(low * 1000) / 1000:g}")
    if at_latency_ratio is not None:
        lat = [st for st in trace.steps if st.latency is not None]
        if not lat:
            raise ConfigError(f"{source}: the trace records no latency; use --at-ratio (MACs) instead")
        base_lat = float(trace.header.get("base_latency") or lat[0].latency or 0.0)
        for st in lat:
            if st.latency is not None and st.latency <= at_latency_ratio * base_lat:
                return st
        raise ConfigError(f"{source}: the trace never reaches {at_latency_ratio:g} of the base latency")
    return trace.steps[-1]


def _sha256(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def samples_from_traces(paths: Sequence[str | os.PathLike[str]], **select: Any) -> list[Sample]:
    """One sample per trace file, read at the step chosen by ``select`` (see :func:`select_step`)."""
    out = []
    for p in paths:
        tr = Trace.load(p)
        st = select_step(tr, source=str(p), **select)
        base_macs = counting.macs(tr.base_config)
        out.append(Sample(st.embed_dim, st.blocks, str(p), {
            "trace": str(p), "sha256": _sha256(p), "step": st.step, "embed_dim": st.embed_dim,
            "depth": len(st.blocks), "macs_ratio": round(st.macs / base_macs, 4),
            "criterion": tr.header.get("criterion"), "target": tr.header.get("target"),
        }, img_size=tr.base_config.img_size))
    return out


def samples_from_rule(rule: Rule, embed_dims: Sequence[int], depth: int = 12) -> list[Sample]:
    """The rule's own widths at several embedding widths (granularity of the ImageNet setting)."""
    gran = rule.resolve_granularity(224)
    return [Sample(e, rule.blocks(e, depth, gran), f"rule {rule.name} EMB {e}",
                   {"rule": rule.name, "embed_dim": e, "depth": depth}) for e in embed_dims]


@dataclass(frozen=True)
class FitResult:
    """A fitted rule with its quality: R^2, RMSE and max |residual| per kind, and per-block residuals."""

    rule: Rule
    samples: tuple[Sample, ...]
    r2: dict[str, float | None]
    rmse: dict[str, float]
    max_abs: dict[str, float]
    residuals: dict[str, list[list[float]]]  # kind -> per sample -> observed - fitted, per block

    def summary_lines(self) -> list[str]:
        lines = [f"fitted {self.rule.family} to {len(self.samples)} sample(s):"]
        for k in WIDTH_KINDS:
            r2 = self.r2[k]
            lines.append(f"  {k:8s} R^2 {'n/a (constant)' if r2 is None else f'{r2:.4f}':>14s}  "
                         f"RMSE {self.rmse[k]:.3g}  max |residual| {self.max_abs[k]:.3g}")
        lines.append("  params: " + ", ".join(f"{k}={v:.4g}" for k, v in self.rule.params.items()))
        return lines


def fit_family(family: str, samples: Sequence[Sample], *, name: str | None = None,
               fixed: Mapping[str, float] | None = None, provenance: Mapping[str, Any] | None = None,
               description: str | None = None) -> FitResult:
    """Least-squares fit of ``family``'s parameters (except ``fixed``) to the samples' widths."""
    import numpy as np
    from scipy.optimize import least_squares

    fam = get_family(family)
    if not fam.fittable:
        fam.continuous({}, 1, [0.5])  # raises the "no parameters to fit" error
    if not samples:
        raise ConfigError("nothing to fit: give at least one trace")
    fixed = dict(fixed or {})
    fam.check_params(fixed, "--fix")
    free = [k for k in fam.params if k not in fixed]
    if not free:
        raise ConfigError("every parameter is fixed; nothing to fit")
    lo = np.array([fam.params[k].low for k in free])
    hi = np.array([fam.params[k].high for k in free])
    positions = [block_positions(len(s.blocks)) for s in samples]
    obs = [{k: np.array(s.widths(k)) for k in WIDTH_KINDS} for s in samples]
    scale = [{k: max(float(o[k].mean()), 1e-9) for k in WIDTH_KINDS} for o in obs]

    def full(x: Any) -> dict[str, float]:
        return {**fixed, **{k: float(v) for k, v in zip(free, x, strict=True)}}

    def residuals(x: Any) -> Any:
        p = full(x)
        res = []
        for s, pos, o, sc in zip(samples, positions, obs, scale, strict=True):
            pred = fam.continuous(p, s.embed_dim, pos)
            for k in WIDTH_KINDS:
                res.append((np.asarray(pred[k]) - o[k]) / sc[k])
        return np.concatenate(res)

    best = None
    for x0 in _starts(fam.params, free, samples, fixed):
        x0 = np.clip(np.array([x0[k] for k in free]), lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
        r = least_squares(residuals, x0, bounds=(lo, hi), x_scale="jac", max_nfev=2000)
        if best is None or r.cost < best.cost:
            best = r
    assert best is not None
    # 6 significant digits: beyond the data's precision, and readable in the saved rule
    params = {k: min(max(float(f"{v:.6g}"), fam.params[k].low), fam.params[k].high) if k in free else v
              for k, v in full(best.x).items()}

    r2: dict[str, float | None] = {}
    rmse: dict[str, float] = {}
    max_abs: dict[str, float] = {}
    resid: dict[str, list[list[float]]] = {k: [] for k in WIDTH_KINDS}
    for s, pos, o in zip(samples, positions, obs, strict=True):
        pred = fam.continuous(params, s.embed_dim, pos)
        for k in WIDTH_KINDS:
            resid[k].append([float(v) for v in o[k] - np.asarray(pred[k])])
    for k in WIDTH_KINDS:
        allobs = np.concatenate([o[k] for o in obs])
        allres = np.concatenate([np.array(r) for r in resid[k]])
        ss_tot = float(((allobs - allobs.mean()) ** 2).sum())
        ss_res = float((allres**2).sum())
        r2[k] = None if ss_tot <= 1e-12 * max(1.0, float((allobs**2).sum())) else 1 - ss_res / ss_tot
        rmse[k] = float(np.sqrt((allres**2).mean()))
        max_abs[k] = float(np.abs(allres).max())
    depths = {len(s.blocks) for s in samples}
    prov = {
        "fitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "revit_version": __version__, "method": "scipy.optimize.least_squares, relative residuals per kind",
        "fixed": dict(fixed), "samples": [dict(s.info) for s in samples],
        "r2": {k: (None if v is None else round(v, 5)) for k, v in r2.items()},
        "rmse": {k: round(v, 4) for k, v in rmse.items()},
        **dict(provenance or {}),
    }
    rule = Rule(name=name or f"{family}-fitted", family=family, params=params,
                depth=depths.pop() if len(depths) == 1 else None,
                description=description or f"{family} fitted to {len(samples)} sample(s)", provenance=prov)
    return FitResult(rule, tuple(samples), r2, rmse, max_abs, resid)


def _starts(specs: Mapping[str, Any], free: Sequence[str], samples: Sequence[Sample],
            fixed: Mapping[str, float]) -> list[dict[str, float]]:
    """Starting points: data-derived ratios and a few profile shapes (the fit is not convex)."""
    start = {k: float(s.default) for k, s in specs.items()}
    per_emb = {"heads": "heads_per_emb", "qk_dim": "qk_per_emb", "v_dim": "v_per_emb", "mlp_dim": "mlp_per_emb"}
    for kind, key in per_emb.items():
        if key in specs:
            start[key] = max(max(s.widths(kind)) / s.embed_dim for s in samples)
    for kind, key in (("heads", "heads_end"), ("qk_dim", "qk_end"), ("v_dim", "v_end"), ("mlp_dim", "mlp_end")):
        if key in specs:
            start[key] = min(min(s.widths(kind)) / max(s.widths(kind)) for s in samples)
    out = []
    for plateau in (0.3, 0.5, 0.7):
        for softness in (0.02, 0.08):
            x = dict(start)
            if "plateau" in x:
                x["plateau"] = plateau
            if "softness" in x:
                x["softness"] = softness
            x.update(fixed)
            out.append({k: min(max(x[k], specs[k].low), specs[k].high) for k in free})
    return out


def plot_fit(result: FitResult, path: str | os.PathLike[str], title: str | None = None) -> None:
    """Observed widths (dots), the fitted profile (line) and its rounded widths (crosses), per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from revit._io import atomic_write_bytes

    fam = result.rule.family_obj
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dense = [i / 200 for i in range(201)]
    for ax, kind in zip(axes.flat, WIDTH_KINDS, strict=True):
        for j, s in enumerate(result.samples):
            c = colors[j % len(colors)]
            pos = block_positions(len(s.blocks))
            label = f"EMB {s.embed_dim}" + (f" ({Path(s.source).parent.name or s.source})" if "trace" in s.info else "")
            ax.plot(pos, s.widths(kind), "o", color=c, label=f"observed {label}")
            ax.plot(dense, fam.continuous(result.rule.params, s.embed_dim, dense)[kind], "-", color=c, alpha=0.7)
            gran = result.rule.resolve_granularity(s.img_size)
            rounded = fam.blocks(result.rule.params, s.embed_dim, len(s.blocks), gran)
            ax.plot(pos, [getattr(b, kind) for b in rounded], "x", color=c, alpha=0.8)
        r2 = result.r2[kind]
        ax.set_title(f"{kind}  R^2 = {'n/a (constant)' if r2 is None else f'{r2:.3f}'}")
        ax.set_xlabel("normalised depth")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title or f"{result.rule.family} fit: dots observed, line fitted, x rounded")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
