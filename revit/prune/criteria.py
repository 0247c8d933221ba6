"""Importance criteria: one score per index of every group, from the weights and their gradients.

Each criterion is a class with one call, ``criterion(params, grads) -> {group id: scores}``
(Torch-Pruning's shape), registered by name in :data:`CRITERIA`.  Lower scores are pruned first.
Scores of one batch are accumulated over a pruning interval and smoothed across intervals by
:class:`ScoreAccumulator` (NVIT_SPEC.md section 2: interval mean, then EMA 0.9 old / 0.1 new).

- ``hessian`` (the paper): I_S = (sum_{s in S} w_s dL/dw_s)^2 over every tensor entry index S owns;
  this equals (dL/dg_S)^2 for a gate g_S multiplying all of them.
- ``nvit-code`` (the official code): per-unit sums over a subset of the tensors, divided by a
  per-kind normaliser, squared, summed over the units of the index (see :class:`NvitCode`).
- ``taylor``: |sum_{s in S} w_s dL/dw_s| (absolute first order).
- ``magnitude``: L2 norm of the owned weights (needs no gradient).
- ``random``: uniform random scores from a seeded generator (a baseline).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from revit.errors import ConfigError
from revit.options import Option, check_options
from revit.prune.structure import Group, Slice, Structure, head_coord, in_query
from revit.registry import CRITERIA_GROUP, Registry

Scores = dict[int, torch.Tensor]

def _reduce(t: torch.Tensor, axis: int) -> torch.Tensor:
    """``t`` summed over every axis but ``axis``, in float64 (a vector of ``t.shape[axis]``)."""
    dims = [d for d in range(t.ndim) if d != axis]
    return t.sum(dim=dims, dtype=torch.float64) if dims else t.double()


class _Plan:
    """Precomputed index tensors of one group's slices: where each entry's sum goes.

    ``parts``: per slice ``(param, axis, positions along the axis, flat output index, axis length)``.
    Built once per group, so a scoring call only sums axes and scatters (no index arithmetic per batch).
    """

    def __init__(self, group: Group, slices: tuple[Slice, ...], units: Any, n_units: int) -> None:
        self.size, self.n_units = group.size, n_units
        self.parts: list[tuple[str, int, torch.Tensor, torch.Tensor, int]] = []
        for s in slices:
            u = torch.zeros_like(s.coord) if units is None else units(s)
            ok = (s.coord >= 0) & (u >= 0)
            pos = torch.nonzero(ok).flatten()
            self.parts.append((s.param, s.axis, pos, s.coord[pos] * n_units + u[pos], s.coord.numel()))

    def sums(self, per_param: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sum of ``per_param`` over the entries each index owns, per unit: (size, n_units), float64.

        One group on its own (the reference path of ``benchmarks/saliency_kernels.py``); criteria score
        through :class:`_FusedPlan`."""
        device = next(iter(per_param.values())).device if per_param else torch.device("cpu")
        out = torch.zeros(self.size * self.n_units, dtype=torch.float64, device=device)
        for param, axis, pos, flat, _ in self.parts:
            out.index_add_(0, flat.to(device), _reduce(per_param[param], axis).index_select(0, pos.to(device)))
        return out.view(self.size, self.n_units)


class _FusedPlan:
    """Every group's plan fused into one scatter: a scoring call sums each (parameter, axis) once,
    gathers all owned positions with one ``index_select`` and adds them into one flat float64 buffer
    with one ``index_add_``; each group's scores are a view of that buffer.

    Per call this is O(parameters) kernels instead of O(slices x groups) (DeiT-S hessian: 1027 -> 106,
    ``benchmarks/saliency_kernels.py``), which is what a GPU step's bookkeeping costs: launches, not
    arithmetic.  Index tensors are moved to a device once.
    """

    def __init__(self, plans: Mapping[int, _Plan]) -> None:
        offsets: dict[tuple[str, int], int] = {}
        self.keys: list[tuple[str, int]] = []
        self.spans: dict[int, tuple[int, int, int]] = {}  # gid -> (offset, size, units per index)
        src: list[torch.Tensor] = []
        dst: list[torch.Tensor] = []
        index_of: list[torch.Tensor] = []  # flat entry -> its index's position in the per-index vector
        n_in = n_out = n_index = 0
        for gid, plan in plans.items():
            for param, axis, pos, flat, length in plan.parts:
                if (param, axis) not in offsets:
                    offsets[(param, axis)] = n_in
                    self.keys.append((param, axis))
                    n_in += length
                src.append(pos + offsets[(param, axis)])
                dst.append(flat + n_out)
            self.spans[gid] = (n_out, plan.size, plan.n_units)
            index_of.append(torch.arange(plan.size).repeat_interleave(plan.n_units) + n_index)
            n_out += plan.size * plan.n_units
            n_index += plan.size
        self.total, self.n_index = n_out, n_index
        empty = torch.zeros(0, dtype=torch.long)
        self._cpu = tuple(torch.cat(x) if x else empty for x in (src, dst, index_of))
        self._on: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(gather positions, scatter positions, index of each entry) on ``device``, moved once."""
        if device not in self._on:
            self._on[device] = tuple(t.to(device) for t in self._cpu)
        return self._on[device]

    def flat(self, per_param: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """All groups' per-unit sums in one float64 vector (group ``gid`` at its span)."""
        device = next(iter(per_param.values())).device if per_param else torch.device("cpu")
        src, dst, _ = self.on(device)
        out = torch.zeros(self.total, dtype=torch.float64, device=device)
        if self.keys:
            # 1-D tensors go in as they are: cat promotes them to float64 exactly, without a copy kernel each
            reduced = torch.cat([t if t.ndim == 1 else _reduce(t, a)
                                 for t, a in ((per_param[p], a) for p, a in self.keys)]).double()
            out.index_add_(0, dst, reduced.index_select(0, src))
        return out

    def split(self, flat: torch.Tensor) -> dict[int, torch.Tensor]:
        """Views of a flat vector (or a per-entry function of it) as ``{gid: (size, n_units)}``."""
        return {gid: flat[o:o + size * n].view(size, n) for gid, (o, size, n) in self.spans.items()}

    def per_index(self, flat: torch.Tensor) -> dict[int, torch.Tensor]:
        """A flat per-unit vector summed over each index's units (one scatter), as ``{gid: (size,)}``."""
        index_of = self.on(flat.device)[2]
        out = torch.zeros(self.n_index, dtype=flat.dtype, device=flat.device).index_add_(0, index_of, flat)
        spans, n = {}, 0
        for gid, (_, size, _) in self.spans.items():
            spans[gid] = out[n:n + size]
            n += size
        return spans


class Criterion(ABC):
    """Scores every index of every group from one batch.

    Contract: ``__call__(params, grads)`` gets the current parameters and their (all-reduced)
    gradients by name and returns, per group id, a float64 tensor of ``group.size`` scores on the
    parameters' device; it must not modify its inputs.  A criterion may be built without a
    structure (``Hessian()``, as Torch-Pruning's importance objects) and bound to one by the pruner
    with :meth:`bind`.  Stateful criteria implement ``state_dict``/``load_state_dict``.

    What a criterion may use (the public API a plug-in is written against):

    - :attr:`structure` (after :meth:`bind`): its ``groups``, each a
      :class:`~revit.prune.structure.Group` (``gid``, ``kind``, ``block``, ``size``) whose ``slices``
      (:class:`~revit.prune.structure.Slice`: ``param``, ``axis``, ``role``, ``module``) say which entries
      of which parameter each index owns: ``coord[i]`` is the index that owns position ``i`` along
      ``axis`` (-1: none);
    - :meth:`index_sums`: a per-parameter tensor summed over the entries each index owns, for every
      group at once (one float64 vector), and :meth:`per_group`: that vector as ``{gid: scores}``;
    - :attr:`options`: the values of the options the class declares in :attr:`option_specs`
      (``revit prune --criterion-option KEY=VALUE``, ``PruneConfig(criterion_options=...)``,
      ``GlobalPruner(criterion_options=...)``), checked against the declaration.

    A subclass sets :attr:`name` (the registry and an entry point read it; a plug-in may leave it to its
    entry point), :attr:`description` (or a docstring), :attr:`needs_grad` and :attr:`capturable`.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    needs_grad: ClassVar[bool] = True
    capturable: ClassVar[bool] = True  # pure tensor work on the parameters' device: can be replayed as a CUDA graph
    option_specs: ClassVar[tuple[Option, ...]] = ()  # the keyword options it takes, with their help

    def __init__(self, structure: Structure | None = None, seed: int = 0, **options: Any) -> None:
        self.seed = seed
        self.options: dict[str, Any] = check_options(self.option_specs, options, f"criterion {self.label()!r}")
        self._plans: dict[int, _Plan] = {}
        self._fused = _FusedPlan({})
        if structure is not None:
            self.bind(structure)

    @classmethod
    def label(cls) -> str:
        """The criterion's registered name (its class name when it has none)."""
        return str(getattr(cls, "name", None) or cls.__name__)

    def bind(self, structure: Structure) -> Criterion:
        """Attach the model's structure (and precompute the per-group plans); returns ``self``."""
        self.structure = structure
        self._plans = {g.gid: self._plan(g) for g in structure.groups}
        self._fused = _FusedPlan(self._plans)
        return self

    def _plan(self, g: Group) -> _Plan:
        return _Plan(g, g.slices, None, 1)

    def index_sums(self, per_param: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``per_param`` (a tensor of each parameter's shape, by name) summed over the entries each index owns:
        one float64 vector of every group's indices, in group order, on the tensors' device.

        One fused scatter for all groups (see :class:`_FusedPlan`); parameters missing from ``per_param``
        must not be owned by any group.  Turn the vector into scores with :meth:`per_group`."""
        if not hasattr(self, "structure"):
            raise TypeError(f"{type(self).__name__} is not bound to a model structure: call bind(structure)")
        return self._fused.flat(per_param)

    def per_group(self, flat: torch.Tensor) -> Scores:
        """A vector of :meth:`index_sums`' layout (or any elementwise function of it) as ``{gid: scores}``."""
        return {gid: v[:, 0] for gid, v in self._fused.split(flat).items()}

    @abstractmethod
    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


CRITERIA: Registry[type[Criterion]] = Registry("importance criterion", group=CRITERIA_GROUP, base=Criterion)


def _wg(params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """w * dL/dw per parameter, in the parameter's precision (sums are taken in float64); one
    multi-tensor multiply when weights and gradients share a dtype and device (the usual case)."""
    names = list(grads)
    ws = [params[k].detach() for k in names]
    gs = [grads[k] for k in names]
    if names and all(w.dtype == g.dtype and w.device == g.device for w, g in zip(ws, gs, strict=True)):
        return dict(zip(names, torch._foreach_mul(ws, gs), strict=True))
    return {k: w * g if w.dtype == g.dtype else w.float() * g.float() for k, w, g in zip(names, ws, gs, strict=True)}


@CRITERIA.register
class Hessian(Criterion):
    """The paper's saliency: squared gate gradient, (sum over owned entries of w * dL/dw)^2."""

    name = "hessian"

    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores:
        return self.per_group(self.index_sums(_wg(params, grads)) ** 2)


@CRITERIA.register
class Taylor(Criterion):
    """Absolute first-order Taylor term of removing the index: |sum w * dL/dw|."""

    name = "taylor"

    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores:
        return self.per_group(self.index_sums(_wg(params, grads)).abs())


@CRITERIA.register
class Magnitude(Criterion):
    """L2 norm of the weights the index owns (not comparable across kinds: a weak global criterion)."""

    name = "magnitude"

    needs_grad = False

    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores:
        sq = {k: v.detach().double() ** 2 for k, v in params.items()}
        return self.per_group(self.index_sums(sq).sqrt())


@CRITERIA.register
class Random(Criterion):
    """Uniform random scores from a seeded generator (identical on every process)."""

    name = "random"

    needs_grad = False
    capturable = False  # draws from a CPU generator

    def __init__(self, structure: Structure | None = None, seed: int = 0, **options: Any) -> None:
        self.gen = torch.Generator().manual_seed(seed + 12345)
        super().__init__(structure, seed, **options)

    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores:
        device = next(iter(params.values())).device if params else torch.device("cpu")
        return {g.gid: torch.rand(g.size, generator=self.gen, dtype=torch.float64).to(device)
                for g in self.structure.groups}

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "gen" in state:
            self.gen.set_state(state["gen"])


NVIT_NORMALISERS: dict[str, float] = {"embed_dim": 12.0, "heads": 12.0, "qk_dim": 2.0, "v_dim": 2.0, "mlp_dim": 1.0}


@CRITERIA.register
class NvitCode(Criterion):
    """The official NViT code's saliency (NVIT_SPEC.md section 2, [C]).

    Per index, units u are summed separately, s_u = sum over the unit's entries of w * dL/dw,
    then score = sum_u (s_u / c_kind)^2 with c = 12 (EMB), 12 (heads), 2 (QK, V), 1 (MLP):
    - QK index j: one unit per head h: the Q row (h, j) weight and bias (K rows unused);
    - V index j: one unit per head h: the V row (h, j) weight and bias (projection columns unused);
    - MLP neuron j: one unit: fc1 row j and bias (fc2 column unused);
    - head h: one unit: its Q, K and V rows and biases (projection columns unused);
    - EMB channel c: one unit per Linear/Conv layer: its input column c, or its output row c and
      bias (LayerNorms, tokens and position embedding unused).
    The normalisers are the official constants for 12 blocks (options ``norm_KIND``, or ``normalisers``
    by kind, change them).
    """

    name = "nvit-code"
    option_specs = tuple(Option(f"norm_{k}", v, f"divides the sum of one {k} unit (the official code: {v:g})")
                         for k, v in NVIT_NORMALISERS.items())

    def __init__(self, structure: Structure | None = None, seed: int = 0,
                 normalisers: Mapping[str, float] | None = None, **options: Any) -> None:
        self.options = check_options(self.option_specs, options, f"criterion {self.name!r}")
        self.norm = {k: float(self.options[f"norm_{k}"]) for k in NVIT_NORMALISERS} | dict(normalisers or {})
        if any(not c > 0 for c in self.norm.values()):
            raise ConfigError(f"criterion {self.name!r}: every normaliser must be > 0, got {self.norm}")
        super().__init__(structure, seed, **options)

    def _plan(self, g: Group) -> _Plan:
        return _Plan(g, *self._units(g))

    def _units(self, g: Group) -> tuple[tuple[Slice, ...], Any, int]:
        st = self.structure
        if g.kind == "embed_dim":
            sl = tuple(s for s in g.slices if s.role in ("in", "out"))
            mods = sorted({s.module for s in sl})
            ids = {m: i for i, m in enumerate(mods)}
            return sl, (lambda s: torch.full_like(s.coord, ids[s.module])), len(mods)
        out = tuple(s for s in g.slices if s.role == "out")
        assert g.block is not None
        block = g.block
        if g.kind == "mlp_dim":
            return out, None, 1
        if g.kind == "heads":
            return out, None, 1
        nh = st.group("heads", block).size
        if g.kind == "qk_dim":
            def unit_q(s: Slice) -> torch.Tensor:
                h = head_coord(st, s, block)
                return torch.where(in_query(st, s), h, torch.full_like(h, -1))
            return out, unit_q, nh
        return out, (lambda s: head_coord(st, s, block)), nh

    def bind(self, structure: Structure) -> Criterion:
        super().bind(structure)
        kinds = {g.gid: g.kind for g in structure.groups}
        self._norm = torch.cat([torch.full((size * n,), self.norm[kinds[gid]], dtype=torch.float64)
                                for gid, (_, size, n) in self._fused.spans.items()]) if kinds else torch.zeros(0)
        self._norm_on: dict[torch.device, torch.Tensor] = {}
        return self

    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores:
        flat = self.index_sums(_wg(params, grads))
        if flat.device not in self._norm_on:
            self._norm_on[flat.device] = self._norm.to(flat.device)
        return self._fused.per_index((flat / self._norm_on[flat.device]) ** 2)


def build_criterion(criterion: str | Criterion, structure: Structure, seed: int = 0,
                    options: Mapping[str, Any] | None = None) -> Criterion:
    """The criterion registered under a name (an unknown name lists the known ones) built with ``options``
    (checked against its ``option_specs``), or a :class:`Criterion` object, bound to ``structure``."""
    if isinstance(criterion, Criterion):
        if options:
            raise ConfigError("criterion options go with a criterion's name; a Criterion object has its own")
        return criterion.bind(structure)
    if not isinstance(criterion, str):
        raise ConfigError(f"criterion must be a name ({', '.join(CRITERIA.names())}) or a Criterion object")
    return CRITERIA.get(criterion)(seed=seed, **dict(options or {})).bind(structure)


def check_criterion(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options of criterion ``name`` with their defaults, ``options`` checked against its declaration
    (an unknown name, an unknown key or a bad value is one line), without building it."""
    cls = CRITERIA.get(name)
    return check_options(cls.option_specs, dict(options or {}), f"criterion {name!r}")


class ScoreAccumulator:
    """Interval mean of per-batch scores, smoothed across intervals: ema = m * ema + (1 - m) * mean.

    The first interval initialises the EMA with its mean.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum = momentum
        self.sum: Scores = {}
        self.count = 0
        self.ema: Scores = {}

    def add(self, scores: Scores) -> None:
        if self.sum and self.sum.keys() == scores.keys():  # one multi-tensor add into the owned sums
            keys = list(self.sum)
            torch._foreach_add_([self.sum[k] for k in keys], [scores[k] for k in keys])
        else:
            for k, v in scores.items():
                self.sum[k] = self.sum[k] + v if k in self.sum else v.clone()
        self.count += 1

    def end_interval(self) -> Scores:
        if self.count == 0:
            return self.ema
        for k, v in self.sum.items():
            mean = v / self.count
            self.ema[k] = mean if k not in self.ema else self.momentum * self.ema[k] + (1 - self.momentum) * mean
        self.sum, self.count = {}, 0
        return self.ema

    def state_dict(self) -> dict[str, Any]:
        # copies: the sums are added to in place, so a state taken now must not follow them
        return {"momentum": self.momentum, "sum": {k: v.clone() for k, v in self.sum.items()}, "count": self.count,
                "ema": dict(self.ema)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.momentum, self.count, self.ema = state["momentum"], int(state["count"]), dict(state["ema"])
        self.sum = {k: v.clone() for k, v in state["sum"].items()}  # added to in place: never the caller's tensors
