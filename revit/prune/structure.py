"""Pruning structure derived from the model itself: which tensor slices form one prunable unit.

The model is traced with ``torch.fx`` (Linear, LayerNorm, Conv2d and PatchEmbed as leaves) and
shapes are propagated; every tensor axis gets a symbolic *dimension atom*.  Ops equate atoms
(a Linear's input axis with its weight's input axis, the two operands of a residual add, the
query and key head width in attention, ...), reshapes define an atom as the *product* of others
(``heads * qk_dim``) and ``split``/``cat`` as their *concatenation* ([Q | K | V]).  A union-find
over atoms then yields the coupled dimensions: each class of atoms that lives in parameters is
one family of pruning units.  Nothing here names a tensor: the five kinds (``embed_dim``,
``heads``, ``qk_dim``, ``v_dim``, ``mlp_dim``) are recognised from the derived structure (shared
by several blocks; outer factor of a product; inner factor feeding the attention query/key;
other inner factor; plain hidden width).  ``networkx`` gives the connected components of the
parameter-axis coupling graph that the kinds are read from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from revit.config import ATTENTION_KINDS, BLOCK_KINDS, WIDTH_KINDS, BlockDims, ViTConfig
from revit.prune.graph import Analyzer, ParamAxis, StructureError, Tracer


# --- the result ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slice:
    """Where a group lives in one parameter axis: ``coord[p]`` is the group's index at position ``p`` (-1: none)."""

    param: str
    axis: int
    role: str
    module: str
    coord: torch.Tensor


@dataclass(frozen=True)
class Group:
    """A family of pruning units of one kind in one block (``block`` None for ``embed_dim``).

    ``size`` indices (an MLP neuron, a head, a QK index shared by every head, an EMB channel ...);
    index ``i`` owns, in every slice, the positions whose ``coord`` equals ``i``.
    """

    gid: int
    kind: str
    block: int | None
    size: int
    atom: int
    slices: tuple[Slice, ...]

    @property
    def name(self) -> str:
        return self.kind if self.block is None else f"blocks.{self.block}.{self.kind}"

    def owned(self, params: Mapping[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
        """Boolean masks of the entries index ``index`` owns, per parameter (for tests and tools)."""
        out: dict[str, torch.Tensor] = {}
        for s in self.slices:
            p = params[s.param]
            sel = (s.coord == index)
            shape = [1] * p.ndim
            shape[s.axis] = p.shape[s.axis]
            m = sel.view(shape).expand_as(p)
            out[s.param] = out[s.param] | m if s.param in out else m.clone()
        return out


class Structure:
    """The pruning groups of a ViT, derived from its forward graph, and the per-axis coordinates
    needed to mask, score and slice it."""

    def __init__(self, groups: list[Group], axis_coords: dict[str, list[dict[int, torch.Tensor]]],
                 param_axes: dict[str, list[ParamAxis]], query_atoms: set[int], norms: list[str],
                 depth: int) -> None:
        self.groups = groups
        self.axis_coords = axis_coords
        self.param_axes = param_axes
        self.query_atoms = query_atoms
        self.norms = norms
        self.depth = depth
        self.by_atom = {g.atom: g for g in groups}
        self.embed = next(g for g in groups if g.kind == "embed_dim")

    def group(self, kind: str, block: int | None = None) -> Group:
        for g in self.groups:
            if g.kind == kind and g.block == block:
                return g
        raise KeyError(f"no group {kind} in block {block}")

    def axis_keep(self, param: str, axis: int, alive: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Boolean keep-mask of a parameter axis: a position is kept iff every group index there is alive."""
        coords = self.axis_coords[param][axis]
        n = next(iter(coords.values())).numel() if coords else 0
        keep = torch.ones(n, dtype=torch.bool)
        for atom, c in coords.items():
            g = self.by_atom.get(atom)
            if g is None:
                continue
            present = c >= 0
            keep &= ~present | alive[g.gid][c.clamp(min=0)]
        return keep

    def alive_count(self, kind: str, block: int, alive: Mapping[int, torch.Tensor]) -> int:
        """Alive indices of a block's group (0 when the block has no such group: an absent branch)."""
        g = next((x for x in self.groups if x.kind == kind and x.block == block), None)
        return 0 if g is None else int(alive[g.gid].sum())

    def block_dims(self, alive: Mapping[int, torch.Tensor]) -> list[BlockDims]:
        """Every block's dense widths; a branch with a group left empty is absent (attention: no head, no QK
        or no V index left; MLP: no unit left), a block with neither is :data:`~revit.config.REMOVED`."""
        out = []
        for i in range(self.depth):
            attn = [self.alive_count(k, i, alive) for k in ATTENTION_KINDS]
            h, q, v = attn if min(attn) > 0 else (0, 0, 0)
            out.append(BlockDims(h, q, v, self.alive_count("mlp_dim", i, alive)))
        return out

    def dead_branch_params(self, alive: Mapping[int, torch.Tensor]) -> list[str]:
        """Every parameter of the modules of a branch that :meth:`block_dims` finds absent (its output bias
        included), which masking zeroes whole so that the masked branch adds nothing, as the removed one."""
        dims = self.block_dims(alive)
        modules = {s.module for g in self.groups if g.block is not None
                   and not (dims[g.block].has_attention if g.kind in ATTENTION_KINDS else dims[g.block].has_mlp)
                   for s in g.slices}
        return [name for name in self.axis_coords if name.rpartition(".")[0] in modules]

    def config(self, base: ViTConfig, alive: Mapping[int, torch.Tensor]) -> ViTConfig:
        """The dense config that keeps the alive indices (absent branches and removed blocks as they go)."""
        return base.with_blocks(self.block_dims(alive), embed_dim=int(alive[self.embed.gid].sum()))


def _block_of(param: str) -> int | None:
    parts = param.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def _trace(model: nn.Module, example: torch.Tensor | None) -> torch.fx.GraphModule:
    """Trace ``model`` with fx and propagate shapes of ``example`` (default: from ``model.config``)."""
    from torch.fx.passes.shape_prop import ShapeProp

    cfg: ViTConfig | None = getattr(model, "config", None)
    if example is None:
        if cfg is None:
            raise StructureError("pass an example input for a model without .config")
        example = torch.zeros(2, cfg.in_chans, cfg.img_size, cfg.img_size)  # batch 2: no size-1 coincidences
    was_training = model.training
    model.eval()
    try:
        graph = Tracer().trace(model)
        gm = torch.fx.GraphModule(model, graph)
        with torch.no_grad():
            p0 = next(model.parameters())
            ShapeProp(gm).propagate(example.to(device=p0.device, dtype=p0.dtype))
    except StructureError:
        raise
    except Exception as e:  # noqa: BLE001 - fx raises many types; report them as one clear line
        raise StructureError(f"cannot trace the model with torch.fx ({type(e).__name__}: {str(e)[:200]})") from None
    finally:
        model.train(was_training)
    return gm


@dataclass
class _Atoms:
    """What the parameter axes say about each atom class: coordinates, occurrences, factor roles."""

    axis_coords: dict[str, list[dict[int, torch.Tensor]]] = field(default_factory=dict)
    occ: dict[int, list[Slice]] = field(default_factory=dict)
    factor_outer: set[int] = field(default_factory=set)
    factor_inner: set[int] = field(default_factory=set)
    under_query: set[int] = field(default_factory=set)


def _collect_atoms(an: Analyzer, query_or_key: set[int]) -> _Atoms:
    """Coordinates of every parameter axis and the occurrences and factor roles of each atom class."""
    dims = an.dims
    out = _Atoms()

    def walk(tree: tuple[Any, ...], in_query: bool) -> None:
        if tree[0] == "atom":
            if in_query:
                out.under_query.add(tree[1])
            return
        in_query = in_query or tree[1] in query_or_key
        kids = tree[2:]
        if tree[0] == "prod":
            for k in kids[:-1]:
                out.factor_outer.add(k[1])
            out.factor_inner.add(kids[-1][1])
        for k in kids:
            walk(k, in_query)

    for name, atoms in an.param_atoms.items():
        out.axis_coords[name] = []
        for ax, a in enumerate(atoms):
            coords = dims.coords(a)
            out.axis_coords[name].append(coords)
            walk(dims.tree(a), False)
            pa = an.param_axes[name][ax]
            for atom, c in coords.items():
                if atom in dims.defn:
                    continue
                out.occ.setdefault(atom, []).append(Slice(name, ax, pa.role, pa.module, c))
    return out


def _candidates(at: _Atoms, external: set[int], sizes: Sequence[int]) -> list[int]:
    """Atom classes that are layer widths, in the order networkx lists the coupling graph's components."""
    import networkx as nx

    g = nx.Graph()
    for atom, slices in at.occ.items():
        g.add_node(("atom", atom))
        for s in slices:
            g.add_edge(("atom", atom), (s.param, s.axis))
    candidates: list[int] = []
    for comp in nx.connected_components(g):
        for node in comp:
            if node[0] != "atom":
                continue
            atom = node[1]
            if atom in external or (sizes[atom] <= 1 and atom not in at.factor_outer):
                continue
            if not any(s.role in ("out", "in") for s in at.occ[atom]):
                continue  # tokens/positions: no layer width
            candidates.append(atom)
    return candidates


def _group(at: _Atoms, atom: int, size: int) -> Group:
    """The (unnumbered) group of one candidate atom, its kind read from where the atom occurs."""
    sl = at.occ[atom]
    blocks = {_block_of(s.param) for s in sl}
    if len(blocks) > 1 or None in blocks:
        return Group(-1, "embed_dim", None, size, atom, tuple(sl))
    if atom in at.factor_outer:
        kind = "heads"
    elif atom in at.factor_inner:
        kind = "qk_dim" if atom in at.under_query else "v_dim"
    else:
        kind = "mlp_dim"
    return Group(-1, kind, next(iter(blocks)), size, atom, tuple(sl))


def _numbered(groups: list[Group]) -> tuple[list[Group], int]:
    """Groups sorted by (block, kind) and numbered; the depth, after checking each block is complete."""
    order = {k: i for i, k in enumerate(WIDTH_KINDS)}
    groups = sorted(groups, key=lambda x: (-1 if x.block is None else x.block, order[x.kind]))
    groups = [Group(i, x.kind, x.block, x.size, x.atom, x.slices) for i, x in enumerate(groups)]
    depth = 1 + max((x.block for x in groups if x.block is not None), default=-1)
    complete = (sorted(BLOCK_KINDS), sorted(ATTENTION_KINDS), ["mlp_dim"])  # both branches, or one (absent other)
    for b in range(depth):
        kinds = sorted(x.kind for x in groups if x.block == b)
        if kinds not in complete:
            raise StructureError(f"block {b}: found dimension families {kinds}, expected one each of "
                                 f"{', '.join(BLOCK_KINDS)} (or of one branch)")
    return groups, depth


def derive_structure(model: nn.Module, example: torch.Tensor | None = None) -> Structure:
    """Trace ``model`` and derive its pruning groups (kinds recognised from the coupling pattern)."""
    gm = _trace(model, example)
    an = Analyzer(model, gm)
    an.run()
    dims = an.dims
    external = {dims.find(a) for a in an.external}
    query = {dims.find(a) for a in an.query_atoms}
    query_or_key = query | {dims.find(a) for a in an.key_atoms}
    at = _collect_atoms(an, query_or_key)
    groups, depth = _numbered([_group(at, a, dims.size[a]) for a in _candidates(at, external, dims.size)])
    embeds = [x for x in groups if x.kind == "embed_dim"]
    if len(embeds) != 1:
        raise StructureError(f"expected one shared embedding width, found {len(embeds)}")
    norms = [n for n in an.norms if any(s.param == f"{n}.weight" for s in embeds[0].slices)]
    return Structure(groups, at.axis_coords, an.param_axes, query, norms, depth)


def in_query(structure: Structure, s: Slice) -> torch.Tensor:
    """Positions of a slice that belong to an attention *query* projection (Q rows, not K)."""
    coords = structure.axis_coords[s.param][s.axis]
    out = torch.zeros(s.coord.numel(), dtype=torch.bool)
    for atom in structure.query_atoms:
        if atom in coords:
            out |= coords[atom] >= 0
    return out


def head_coord(structure: Structure, s: Slice, block: int) -> torch.Tensor:
    """Head index at each position of a slice of ``block`` (-1 where the axis has no head)."""
    coords = structure.axis_coords[s.param][s.axis]
    h = structure.group("heads", block).atom
    return coords.get(h, torch.full((s.coord.numel(),), -1, dtype=torch.long))
