"""Masks during pruning, exact masked LayerNorm, and the dense rebuild by slicing.

While pruning, a removed index is *zeroed* in every tensor it owns (weights, their gradients, so
AdamW keeps them at zero).  Zeroing alone is exact for heads, QK, V and MLP units, but not for an
EMB channel: LayerNorm would still average over the zeroed channel.  :meth:`Masks.install` puts a
forward hook on every LayerNorm over the residual stream that recomputes it over the kept channels
only, so the masked model equals the dense rebuilt one.  The rebuild slices every parameter to the
kept positions and rescales the query rows by sqrt(new QK / old QK), because the attention scale
qk_dim**-0.5 follows the dense width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from revit.config import BlockDims, ViTConfig
from revit.prune.structure import Structure


class Masks:
    """Alive indices per group, and the per-parameter keep masks derived from them."""

    def __init__(self, structure: Structure) -> None:
        self.structure = structure
        self.alive: dict[int, torch.Tensor] = {g.gid: torch.ones(g.size, dtype=torch.bool) for g in structure.groups}
        self._keep: dict[str, torch.Tensor] = {}
        self._cast: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        self._embed_keep = torch.ones(structure.embed.size)
        self._hooks: list[Any] = []
        self.refresh()

    def refresh(self) -> None:
        """Recompute the keep masks after ``alive`` changed."""
        self._keep, self._cast = {}, {}
        for name, axes in self.structure.axis_coords.items():
            keep: torch.Tensor | None = None
            for ax in range(len(axes)):
                k = self.structure.axis_keep(name, ax, self.alive)
                if bool(k.all()):
                    continue
                shape = [1] * len(axes)
                shape[ax] = k.numel()
                k = k.view(shape)
                keep = k if keep is None else keep & k
            if keep is not None:
                self._keep[name] = keep
        for name in self.structure.dead_branch_params(self.alive):  # a branch with no unit left adds nothing
            self._keep[name] = torch.zeros([1] * len(self.structure.axis_coords[name]), dtype=torch.bool)
        self._embed_keep = self.alive[self.structure.embed.gid].float()

    def counts(self) -> dict[int, int]:
        return {gid: int(a.sum()) for gid, a in self.alive.items()}

    def config(self, base: ViTConfig) -> ViTConfig:
        return self.structure.config(base, self.alive)

    def _on(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The keep mask of ``name`` in ``like``'s dtype and device (cached until the next refresh)."""
        key = (name, like.device, like.dtype)
        if key not in self._cast:
            self._cast[key] = self._keep[name].to(device=like.device, dtype=like.dtype)
        return self._cast[key]

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero every removed entry of the model's parameters (one fused multi-tensor multiply)."""
        params = dict(model.named_parameters())
        ts: list[torch.Tensor] = [params[name] for name in self._keep]
        if ts:
            keeps: list[torch.Tensor] = [self._on(name, t) for name, t in zip(self._keep, ts, strict=True)]
            torch._foreach_mul_(ts, keeps)

    @torch.no_grad()
    def zero_grads(self, model: nn.Module) -> None:
        """Zero the gradients of removed entries (so optimizer moments stay zero there)."""
        params = dict(model.named_parameters())
        pairs: list[tuple[str, torch.Tensor]] = [(n, g) for n in self._keep if (g := params[n].grad) is not None]
        if pairs:
            keeps: list[torch.Tensor] = [self._on(name, g) for name, g in pairs]
            torch._foreach_mul_([g for _, g in pairs], keeps)

    def install(self, model: nn.Module) -> None:
        """Make the model's residual-stream LayerNorms normalise over kept channels only."""
        for name in self.structure.norms:
            mod = model.get_submodule(name)
            self._hooks.append(mod.register_forward_hook(self._norm_hook))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _norm_hook(self, mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> Any:
        m = self._embed_keep
        if bool((m > 0).all()):
            return None
        x = inputs[0].float()  # in fp32 under autocast too, as LayerNorm itself
        m = m.to(device=x.device, dtype=x.dtype)
        n = m.sum()
        mu = (x * m).sum(-1, keepdim=True) / n
        xc = (x - mu) * m
        var = (xc * xc).sum(-1, keepdim=True) / n
        y = xc / torch.sqrt(var + mod.eps)  # type: ignore[operator]
        w, b = getattr(mod, "weight", None), getattr(mod, "bias", None)
        if isinstance(w, torch.Tensor):
            y = y * w.float()
        if isinstance(b, torch.Tensor):
            y = y + b.float()
        return (y * m).to(output.dtype)


def dense_state_dict(model: nn.Module, structure: Structure,
                     alive: Mapping[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parameters sliced to the kept positions (query rows rescaled for the dense attention scale)."""
    out: dict[str, torch.Tensor] = {}
    params = dict(model.named_parameters())
    for name, p in params.items():
        t = p.detach()
        axes = structure.axis_coords.get(name, [])
        for ax in range(len(axes)):
            keep = structure.axis_keep(name, ax, alive)
            scale = _query_scale(structure, name, ax, alive)
            if scale is not None:
                shape = [1] * t.ndim
                shape[ax] = -1
                t = t * scale.to(device=t.device, dtype=t.dtype).view(shape)
            t = t.index_select(ax, torch.nonzero(keep).flatten().to(t.device))
        out[name] = t.contiguous().clone()
    for name, b in model.named_buffers():
        out[name] = b.detach().clone()
    return out


def _query_scale(structure: Structure, name: str, axis: int, alive: Mapping[int, torch.Tensor]) -> torch.Tensor | None:
    coords = structure.axis_coords[name][axis]
    q_atoms = [a for a in structure.query_atoms if a in coords]
    if not q_atoms:
        return None
    n = next(iter(coords.values())).numel()
    scale = torch.ones(n, dtype=torch.float64)
    for g in structure.groups:
        if g.kind != "qk_dim" or g.atom not in coords:
            continue
        new = int(alive[g.gid].sum())
        for qa in q_atoms:
            sel = (coords[qa] >= 0) & (coords[g.atom] >= 0)
            scale[sel] = (new / g.size) ** 0.5
    return scale


def rebuild_dense(model: nn.Module, structure: Structure, alive: Mapping[int, torch.Tensor]) -> nn.Module:
    """A dense :class:`~revit.models.ReViT` with only the alive indices; same outputs as the masked model.

    An absent branch's parameters are left out and the blocks after a removed one renumbered.
    """
    from revit.models import build_model

    cfg: ViTConfig = model.config  # type: ignore[assignment]
    dense = build_model(structure.config(cfg, alive))
    dense.load_state_dict(_renumbered(dense_state_dict(model, structure, alive), structure.block_dims(alive),
                                      dense.state_dict().keys()), strict=True)
    return dense.to(next(model.parameters()).device)


def _renumbered(sd: Mapping[str, torch.Tensor], dims: list[BlockDims], keys: Any) -> dict[str, torch.Tensor]:
    """``sd`` in the dense model's names: removed blocks dropped, later blocks renumbered, absent branches'
    parameters (present in ``sd`` with no entry in the dense ``keys``) dropped."""
    new_index: dict[int, int] = {}
    for i, b in enumerate(dims):
        if not b.is_removed:
            new_index[i] = len(new_index)
    wanted = set(keys)
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        parts = name.split(".")
        if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
            i = int(parts[1])
            if i not in new_index:
                continue
            name = ".".join(["blocks", str(new_index[i]), *parts[2:]])
            if name not in wanted and not (dims[i].has_attention and dims[i].has_mlp):
                continue  # a parameter of the block's absent branch
        out[name] = t
    return out
