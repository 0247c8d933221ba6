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
from typing import Any

import torch

from revit.prune.structure import Group, Slice, Structure, head_coord, in_query
from revit.registry import Registry

Scores = dict[int, torch.Tensor]

CRITERIA: Registry[type[Criterion]] = Registry("importance criterion")


class _Plan:
    """Precomputed index tensors of one group's slices: where each entry's sum goes (per device).

    Built once per (group, device), so a scoring call only sums axes and scatters (no index
    arithmetic per batch); this is what keeps the saliency bookkeeping cheap.
    """

    def __init__(self, group: Group, slices: tuple[Slice, ...], units: Any, n_units: int) -> None:
        self.size, self.n_units = group.size, n_units
        self.parts: list[tuple[str, int, torch.Tensor, torch.Tensor]] = []
        for s in slices:
            u = torch.zeros_like(s.coord) if units is None else units(s)
            ok = (s.coord >= 0) & (u >= 0)
            pos = torch.nonzero(ok).flatten()
            self.parts.append((s.param, s.axis, pos, s.coord[pos] * n_units + u[pos]))
        self._on: dict[torch.device, list[tuple[str, int, torch.Tensor, torch.Tensor]]] = {}

    def on(self, device: torch.device) -> list[tuple[str, int, torch.Tensor, torch.Tensor]]:
        if device not in self._on:
            self._on[device] = [(p, a, pos.to(device), flat.to(device)) for p, a, pos, flat in self.parts]
        return self._on[device]

    def sums(self, per_param: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sum of ``per_param`` over the entries each index owns, per unit: (size, n_units), float64."""
        device = next(iter(per_param.values())).device if per_param else torch.device("cpu")
        out = torch.zeros(self.size * self.n_units, dtype=torch.float64, device=device)
        for param, axis, pos, flat in self.on(device):
            t = per_param[param]
            dims = [d for d in range(t.ndim) if d != axis]
            r = t.sum(dim=dims, dtype=torch.float64) if dims else t.double()
            out.index_add_(0, flat, r.index_select(0, pos))
        return out.view(self.size, self.n_units)


def index_sums(group: Group, per_param: Mapping[str, torch.Tensor], slices: tuple[Slice, ...] | None = None,
               units: Any = None, n_units: int = 1) -> torch.Tensor:
    """Sum of ``per_param`` over the entries each index owns: shape (size, n_units) (uncached form).

    ``units(slice) -> (unit id per position, or -1 to skip)`` splits an index's entries into units
    (per head, per module); by default every entry of an index is one unit.
    """
    return _Plan(group, slices if slices is not None else group.slices, units, n_units).sums(per_param)


class Criterion(ABC):
    """Scores every index of every group from one batch.

    Contract: ``__call__(params, grads)`` gets the current parameters and their (all-reduced)
    gradients by name and returns, per group id, a float64 tensor of ``group.size`` scores on the
    parameters' device; it must not modify its inputs.  A criterion may be built without a
    structure (``Hessian()``, as Torch-Pruning's importance objects) and bound to one by the pruner
    with :meth:`bind`.  Stateful criteria implement ``state_dict``/``load_state_dict``.
    """

    needs_grad: bool = True
    capturable: bool = True  # pure tensor work on the parameters' device: can be replayed as a CUDA graph

    def __init__(self, structure: Structure | None = None, seed: int = 0) -> None:
        self.seed = seed
        self._plans: dict[int, _Plan] = {}
        if structure is not None:
            self.bind(structure)

    def bind(self, structure: Structure) -> Criterion:
        """Attach the model's structure (and precompute the per-group plans); returns ``self``."""
        self.structure = structure
        self._plans = {g.gid: self._plan(g) for g in structure.groups}
        return self

    def _plan(self, g: Group) -> _Plan:
        return _Plan(g, g.slices, None, 1)

    def _sums(self, per_param: Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        if not hasattr(self, "structure"):
            raise TypeError(f"{type(self).__name__} is not bound to a model structure: call bind(structure)")
        return {gid: plan.sums(per_param) for gid, plan in self._plans.items()}

    @abstractmethod
    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


def _wg(params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """w * dL/dw per parameter, in the parameter's precision (sums are taken in float64)."""
    out = {}
    for k, g in grads.items():
        w = params[k].detach()
        out[k] = w * g if w.dtype == g.dtype else w.float() * g.float()
    return out


@CRITERIA.register("hessian")
class Hessian(Criterion):
    """The paper's saliency: squared gate gradient, (sum over owned entries of w * dL/dw)^2."""

    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores:
        return {gid: v[:, 0] ** 2 for gid, v in self._sums(_wg(params, grads)).items()}


@CRITERIA.register("taylor")
class Taylor(Criterion):
    """Absolute first-order Taylor term of removing the index: |sum w * dL/dw|."""

    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores:
        return {gid: v[:, 0].abs() for gid, v in self._sums(_wg(params, grads)).items()}


@CRITERIA.register("magnitude")
class Magnitude(Criterion):
    """L2 norm of the weights the index owns (not comparable across kinds: a weak global criterion)."""

    needs_grad = False

    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores:
        sq = {k: v.detach().double() ** 2 for k, v in params.items()}
        return {gid: v[:, 0].sqrt() for gid, v in self._sums(sq).items()}


@CRITERIA.register("random")
class Random(Criterion):
    """Uniform random scores from a seeded generator (identical on every process)."""

    needs_grad = False
    capturable = False  # draws from a CPU generator

    def __init__(self, structure: Structure | None = None, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed + 12345)
        super().__init__(structure, seed)

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


@CRITERIA.register("nvit-code")
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
    The normalisers are the official constants for 12 blocks (pass ``normalisers`` to change them).
    """

    def __init__(self, structure: Structure | None = None, seed: int = 0,
                 normalisers: Mapping[str, float] | None = None) -> None:
        self.norm = dict(NVIT_NORMALISERS, **(normalisers or {}))
        super().__init__(structure, seed)

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

    def __call__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Scores:
        kinds = {g.gid: g.kind for g in self.structure.groups}
        return {gid: ((v / self.norm[kinds[gid]]) ** 2).sum(dim=1) for gid, v in self._sums(_wg(params, grads)).items()}


def build_criterion(name: str, structure: Structure, seed: int = 0) -> Criterion:
    """The criterion registered under ``name`` (an unknown name lists the known ones)."""
    return CRITERIA.get(name)(seed=seed).bind(structure)


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
        return {"momentum": self.momentum, "sum": self.sum, "count": self.count, "ema": self.ema}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.momentum, self.sum, self.count, self.ema = (state["momentum"], dict(state["sum"]), int(state["count"]),
                                                         dict(state["ema"]))
