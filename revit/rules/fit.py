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
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from revit import __version__, counting
from revit.config import BLOCK_KINDS, BlockDims
from revit.errors import ConfigError
from revit.input_checks import short
from revit.rules.base import RuleFamily, block_positions, get_family
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
        for k in BLOCK_KINDS:
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
    data = _prepare(samples)
    best = None
    for x0 in _starts(fam, free, samples, fixed):
        x, cost = _solve(fam, free, fixed, data, x0)
        if best is None or cost < best[1]:
            best = (x, cost)
    assert best is not None

    def full(x: Any) -> dict[str, float]:
        return {**fixed, **{k: float(v) for k, v in zip(free, x, strict=True)}}

    positions = [d[1] for d in data]
    obs = [d[2] for d in data]
    # 6 significant digits: beyond the data's precision, and readable in the saved rule
    params = {k: min(max(float(f"{v:.6g}"), fam.params[k].low), fam.params[k].high) if k in free else v
              for k, v in full(best[0]).items()}

    r2: dict[str, float | None] = {}
    rmse: dict[str, float] = {}
    max_abs: dict[str, float] = {}
    resid: dict[str, list[list[float]]] = {k: [] for k in BLOCK_KINDS}
    for s, pos, o in zip(samples, positions, obs, strict=True):
        pred = fam.continuous(params, s.embed_dim, pos)
        for k in BLOCK_KINDS:
            resid[k].append([float(v) for v in o[k] - np.asarray(pred[k])])
    for k in BLOCK_KINDS:
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


def _prepare(samples: Sequence[Sample]) -> list[tuple[int, Any, dict[str, Any], dict[str, float]]]:
    """Per sample: EMB, block positions, observed widths per kind and the per-kind scale (mean width)."""
    import numpy as np

    out = []
    for s in samples:
        o = {k: np.array(s.widths(k)) for k in BLOCK_KINDS}
        out.append((s.embed_dim, np.array(block_positions(len(s.blocks))), o,
                    {k: max(float(o[k].mean()), 1e-9) for k in BLOCK_KINDS}))
    return out


def _solve(fam: Any, free: Sequence[str], fixed: Mapping[str, float],
           data: Sequence[tuple[int, Any, dict[str, Any], dict[str, float]]],
           x0: Mapping[str, float]) -> tuple[Any, float]:
    """One bounded least-squares solve from ``x0``: the free parameters' values and the cost."""
    import numpy as np
    from scipy.optimize import least_squares

    lo = np.array([fam.params[k].low for k in free])
    hi = np.array([fam.params[k].high for k in free])

    def residuals(x: Any) -> Any:
        p = {**fixed, **{k: float(v) for k, v in zip(free, x, strict=True)}}
        res = []
        for emb, pos, o, sc in data:
            pred = fam.continuous(p, emb, pos)
            for k in BLOCK_KINDS:
                res.append((np.asarray(pred[k]) - o[k]) / sc[k])
        return np.concatenate(res)

    start = np.clip(np.array([x0[k] for k in free]), lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
    r = least_squares(residuals, start, bounds=(lo, hi), x_scale="jac", max_nfev=2000)
    return r.x, float(r.cost)


def _starts(fam: RuleFamily, free: Sequence[str], samples: Sequence[Sample],
            fixed: Mapping[str, float]) -> list[dict[str, float]]:
    """The family's starting points (:meth:`RuleFamily.starting_points`), with the fixed values, in bounds."""
    specs = fam.params
    widths = [(s.embed_dim, {k: s.widths(k) for k in BLOCK_KINDS}) for s in samples]
    return [{k: min(max({**x, **fixed}[k], specs[k].low), specs[k].high) for k in free}
            for x in fam.starting_points(widths)]


# --- bootstrap intervals and the non-monotone test ------------------------------------------
BOOT_UNITS = ("auto", "blocks", "traces", "traces+blocks")


def regions(depth: int) -> tuple[range, range, range]:
    """First quarter, middle half and last quarter of the blocks (at least one block per end)."""
    q = max(1, round(depth / 4))
    if depth < 3:
        raise ConfigError(f"the non-monotone test needs at least 3 blocks, got {depth}")
    return range(q), range(q, depth - q), range(depth - q, depth)


@dataclass(frozen=True)
class ProfileContrast:
    """One kind's relative widths (block width / the sample's mean width) by region, pooled over samples."""

    first: float
    middle: float
    last: float

    @property
    def diff(self) -> float:
        """Middle minus the wider end: > 0 when the middle is wider than both ends."""
        return self.middle - max(self.first, self.last)


def profile_contrasts(samples: Sequence[Sample],
                      picks: Sequence[Sequence[int]] | None = None) -> dict[str, ProfileContrast]:
    """Per kind, the pooled mean relative width of the first quarter, middle half and last quarter.

    ``picks`` (per sample, block indices, repeats allowed) selects a resample; widths are divided by
    the sample's own mean over all its blocks so that traces at different EMB pool.
    """
    out = {}
    for k in BLOCK_KINDS:
        sums = [0.0, 0.0, 0.0]
        counts = [0, 0, 0]
        for j, s in enumerate(samples):
            w = s.widths(k)
            mean = max(sum(w) / len(w), 1e-9)
            reg = regions(len(w))
            for i in (picks[j] if picks is not None else range(len(w))):
                r = 0 if i in reg[0] else (1 if i in reg[1] else 2)
                sums[r] += w[i] / mean
                counts[r] += 1
        first, middle, last = (sums[r] / max(counts[r], 1) for r in range(3))
        out[k] = ProfileContrast(first, middle, last)
    return out


class Verdict(str, Enum):
    """What the bootstrap says about one kind's middle half against its ends (written as the value)."""

    WIDER_MIDDLE = "less-more-less"
    NARROWER_MIDDLE = "middle narrower than an end"
    NOT_SIGNIFICANT = "not significant"

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class Bootstrap:
    """Percentile intervals of the fitted parameters and of the middle-minus-ends contrast per kind."""

    n: int
    seed: int
    unit: str
    level: float
    intervals: dict[str, tuple[float, float]]  # free parameter -> (low, high)
    contrast: dict[str, ProfileContrast]  # on the data (not resampled)
    contrast_interval: dict[str, tuple[float, float]]  # kind -> interval of ProfileContrast.diff
    first_last_interval: dict[str, tuple[float, float]]  # kind -> interval of first minus last quarter
    at_bound: tuple[str, ...]  # fitted parameters on a bound of their range (their interval is one-sided)
    draws: dict[str, list[float]]  # parameter or "diff:<kind>" -> the n resampled values

    def verdict(self, kind: str) -> Verdict:
        """:attr:`Verdict.WIDER_MIDDLE` when the contrast's interval is above 0, ``NARROWER_MIDDLE`` below."""
        lo, hi = self.contrast_interval[kind]
        return Verdict.WIDER_MIDDLE if lo > 0 else (Verdict.NARROWER_MIDDLE if hi < 0 else Verdict.NOT_SIGNIFICANT)

    def non_monotone(self) -> bool:
        """True when some kind is significantly wider in the middle than at both ends."""
        return any(self.verdict(k) is Verdict.WIDER_MIDDLE for k in BLOCK_KINDS)

    def to_dict(self) -> dict[str, Any]:
        """What the rule's provenance stores (rounded; -0.0 written as 0.0)."""

        def r4(v: float) -> float:
            return round(v, 4) + 0.0
        return {
            "n": self.n, "seed": self.seed, "unit": self.unit, "level": self.level,
            "method": "percentile bootstrap; each resample refitted from the point estimate",
            "intervals": {k: [float(f"{lo:.4g}"), float(f"{hi:.4g}")] for k, (lo, hi) in self.intervals.items()},
            "at_bound": list(self.at_bound),
            "non_monotone": {
                "test": "relative width: mean of the middle half minus the larger of the first- and last-quarter "
                        "means; less-more-less when its interval is above 0",
                "significant": self.non_monotone(),
                "kinds": {k: {"first": r4(c.first), "middle": r4(c.middle), "last": r4(c.last),
                              "diff": r4(c.diff),
                              "interval": [r4(self.contrast_interval[k][0]),
                                           r4(self.contrast_interval[k][1])],
                              "verdict": self.verdict(k).value, "first_minus_last": r4(c.first - c.last),
                              "first_minus_last_interval": [r4(self.first_last_interval[k][0]),
                                                            r4(self.first_last_interval[k][1])]}
                          for k, c in self.contrast.items()},
            },
        }

    def summary_lines(self) -> list[str]:
        pct = f"{100 * self.level:g}%"
        lines = [f"bootstrap: {self.n} resamples ({self.unit}), seed {self.seed}, {pct} percentile intervals:"]
        lines += [f"  {k:14s} [{lo:.4g}, {hi:.4g}]" + ("  (fit on a bound of the range)" if k in self.at_bound else "")
                  for k, (lo, hi) in self.intervals.items()]
        lines.append("middle half minus the wider end (relative width), per kind:")
        for k, c in self.contrast.items():
            lo, hi = self.contrast_interval[k]
            flo, fhi = self.first_last_interval[k]
            lines.append(f"  {k:8s} ends {c.first:.3f} / {c.last:.3f}  middle {c.middle:.3f}  "
                         f"diff {c.diff + 0.0:+.3f} [{lo + 0.0:+.3f}, {hi + 0.0:+.3f}]  {self.verdict(k)}; "
                         f"first - last {c.first - c.last:+.3f} [{flo + 0.0:+.3f}, {fhi + 0.0:+.3f}]")
        lines.append("significantly non-monotone (less-more-less in some kind): "
                     + ("yes" if self.non_monotone() else "no"))
        return lines


def _resample(samples: Sequence[Sample], unit: str, rng: Any) -> tuple[list[Sample], list[list[int]]]:
    """One resample: which samples (whole traces) and which of their blocks (within each region)."""
    chosen = list(samples)
    if unit in ("traces", "traces+blocks"):
        chosen = [samples[int(i)] for i in rng.integers(0, len(samples), len(samples))]
    picks = [list(range(len(s.blocks))) if unit == "traces"
             else [int(r[i]) for r in regions(len(s.blocks)) for i in rng.integers(0, len(r), len(r))]
             for s in chosen]
    return chosen, picks


def bootstrap_fit(result: FitResult, *, n: int = 200, seed: int = 0, unit: str = "auto",
                  level: float = 0.95) -> Bootstrap:
    """Resample the fitted samples ``n`` times, refit and take percentile intervals.

    ``unit``: ``blocks`` resamples blocks within each region of each trace; ``traces`` whole traces;
    ``traces+blocks`` (``auto`` with several traces) both, in two stages; ``auto`` with one trace is
    ``blocks``.  Each refit starts from the point estimate (one solve), which keeps 200 resamples fast.
    """
    import numpy as np

    if n < 10:
        raise ConfigError(f"--bootstrap needs at least 10 resamples, got {n}")
    if unit not in BOOT_UNITS:
        raise ConfigError(f"--bootstrap-unit must be one of {', '.join(BOOT_UNITS)}, got {short(unit)}")
    if unit == "auto":
        unit = "traces+blocks" if len(result.samples) > 1 else "blocks"
    if unit == "traces" and len(result.samples) < 2:
        raise ConfigError("--bootstrap-unit traces needs at least 2 traces")
    if not 0 < level < 1:
        raise ConfigError(f"the interval level must be in (0, 1), got {level}")
    fam = result.rule.family_obj
    fixed = dict(result.rule.provenance.get("fixed") or {})
    free = [k for k in fam.params if k not in fixed]
    x0 = {k: float(result.rule.params[k]) for k in free}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in free}
    draws.update({f"diff:{k}": [] for k in BLOCK_KINDS})
    draws.update({f"first-last:{k}": [] for k in BLOCK_KINDS})
    for _ in range(n):
        chosen, picks = _resample(result.samples, unit, rng)
        data = []
        for (emb, pos, o, sc), pk in zip(_prepare(chosen), picks, strict=True):
            data.append((emb, pos[pk], {k: v[pk] for k, v in o.items()}, sc))
        x, _cost = _solve(fam, free, fixed, data, x0)
        for k, v in zip(free, x, strict=True):
            draws[k].append(float(v))
        for k, c in profile_contrasts(chosen, picks).items():
            draws[f"diff:{k}"].append(c.diff)
            draws[f"first-last:{k}"].append(c.first - c.last)
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]

    def interval(vals: list[float]) -> tuple[float, float]:
        return float(np.percentile(vals, q[0])), float(np.percentile(vals, q[1]))

    return Bootstrap(n=n, seed=seed, unit=unit, level=level,
                     intervals={k: interval(draws[k]) for k in free},
                     contrast=profile_contrasts(result.samples),
                     contrast_interval={k: interval(draws[f"diff:{k}"]) for k in BLOCK_KINDS},
                     first_last_interval={k: interval(draws[f"first-last:{k}"]) for k in BLOCK_KINDS},
                     at_bound=tuple(k for k in free if _on_bound(x0[k], fam.params[k].low, fam.params[k].high)),
                     draws=draws)


def _on_bound(v: float, lo: float, hi: float) -> bool:
    """Whether ``v`` sits on (within 1e-6 of the range of) a bound of [lo, hi]."""
    return v <= lo + 1e-6 * (hi - lo) or v >= hi - 1e-6 * (hi - lo)


def with_bootstrap(result: FitResult, boot: Bootstrap) -> FitResult:
    """The fit result whose rule's provenance also stores the bootstrap intervals and verdicts."""
    rule = replace(result.rule, provenance={**result.rule.provenance, "bootstrap": boot.to_dict()})
    return replace(result, rule=rule)


def _band(result: FitResult, boot: Bootstrap, embed_dim: int, dense: Sequence[float]) -> dict[str, Any]:
    """Per kind, the pointwise percentile band of the resampled fitted profiles at ``dense`` positions."""
    import numpy as np

    fam = result.rule.family_obj
    free = list(boot.intervals)
    curves: dict[str, list[list[float]]] = {k: [] for k in BLOCK_KINDS}
    for j in range(boot.n):
        p = {**result.rule.params, **{k: boot.draws[k][j] for k in free}}
        for k, v in fam.continuous(p, embed_dim, dense).items():
            curves[k].append(v)
    q = [100 * (1 - boot.level) / 2, 100 * (1 + boot.level) / 2]
    return {k: np.percentile(np.array(v), q, axis=0) for k, v in curves.items()}


def plot_fit(result: FitResult, path: str | os.PathLike[str], title: str | None = None,
             boot: Bootstrap | None = None) -> None:
    """Observed widths (dots), the fitted profile (line, with its bootstrap band) and rounded widths (crosses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from revit._io import atomic_output

    fam = result.rule.family_obj
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dense = [i / 200 for i in range(201)]
    bands = {e: _band(result, boot, e, dense) for e in {s.embed_dim for s in result.samples}} if boot else {}
    for ax, kind in zip(axes.flat, BLOCK_KINDS, strict=True):
        for j, s in enumerate(result.samples):
            c = colors[j % len(colors)]
            pos = block_positions(len(s.blocks))
            src = Path(s.source)
            run = src.parent.name if src.name == "trace.jsonl" else src.stem
            label = f"EMB {s.embed_dim}" + (f" ({run or s.source})" if "trace" in s.info else "")
            ax.plot(pos, s.widths(kind), "o", color=c, label=f"observed {label}")
            ax.plot(dense, fam.continuous(result.rule.params, s.embed_dim, dense)[kind], "-", color=c, alpha=0.7)
            if bands and j == min(i for i, t in enumerate(result.samples) if t.embed_dim == s.embed_dim):
                lo, hi = bands[s.embed_dim][kind]
                ax.fill_between(dense, lo, hi, color="gray", alpha=0.2, lw=0)
            gran = result.rule.resolve_granularity(s.img_size)
            rounded = fam.blocks(result.rule.params, s.embed_dim, len(s.blocks), gran)
            ax.plot(pos, [getattr(b, kind) for b in rounded], "x", color=c, alpha=0.8)
        r2 = result.r2[kind]
        ax.set_title(f"{kind}  R^2 = {'n/a (constant)' if r2 is None else f'{r2:.3f}'}")
        ax.set_xlabel("normalised depth")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    band = f", band {100 * boot.level:g}% bootstrap" if boot else ""
    fig.suptitle(title or f"{result.rule.family} fit: dots observed, line fitted{band}, x rounded")
    fig.tight_layout()
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
