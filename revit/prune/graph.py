"""The dimension analysis behind :mod:`revit.prune.structure`: fx tracing, symbolic axis atoms, union-find.

Every tensor axis of the traced graph gets a *dimension atom*; ops equate atoms (a Linear's input
axis with its weight's input axis, residual adds, attention query/key widths), reshapes define
products (``heads * qk_dim``) and ``split``/``cat`` concatenations ([Q | K | V]).  The structure
module reads the pruning groups from the result.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from revit.errors import ConfigError


class StructureError(ConfigError):
    """The model contains an op or a coupling the structure analysis does not understand."""


# --- symbolic dimensions ------------------------------------------------------------------------
class _Dims:
    """Union-find over dimension atoms; an atom may be *defined* as a product or concatenation of atoms."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.defn: dict[int, tuple[str, tuple[int, ...]]] = {}

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def unify(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            raise StructureError(f"cannot couple dimensions of sizes {self.size[ra]} and {self.size[rb]}")
        da, db = self.defn.pop(ra, None), self.defn.pop(rb, None)
        self.parent[rb] = ra
        if da is not None and db is not None:
            self._unify_defs(da, db)
            self.defn[self.find(ra)] = da
        elif da is not None or db is not None:
            self.defn[self.find(ra)] = da or db  # type: ignore[assignment]

    def define(self, a: int, kind: str, children: Sequence[int]) -> None:
        r = self.find(a)
        d = (kind, tuple(children))
        if r in self.defn:
            self._unify_defs(self.defn[r], d)
        else:
            self.defn[r] = d

    def _unify_defs(self, d1: tuple[str, tuple[int, ...]], d2: tuple[str, tuple[int, ...]]) -> None:
        if d1[0] != d2[0] or len(d1[1]) != len(d2[1]):
            raise StructureError(f"inconsistent dimension structure ({d1[0]} of {len(d1[1])} vs "
                                 f"{d2[0]} of {len(d2[1])})")
        for x, y in zip(d1[1], d2[1], strict=False):
            self.unify(x, y)

    def tree(self, a: int) -> tuple[Any, ...]:
        """Resolved structure of atom ``a``: ``("atom", root)`` or ``(kind, root, children...)``."""
        r = self.find(a)
        if r not in self.defn:
            return ("atom", r)
        kind, ch = self.defn[r]
        return (kind, r, *(self.tree(c) for c in ch))

    def coords(self, a: int) -> dict[int, torch.Tensor]:
        """For every atom in ``a``'s structure (defined ones included): its index at each position (-1: absent)."""
        n = self.size[self.find(a)]
        return _coords(self.tree(a), n, self.size, self)


def _coords(tree: tuple[Any, ...], n: int, size: list[int], dims: _Dims) -> dict[int, torch.Tensor]:
    out: dict[int, torch.Tensor] = {}
    root = tree[1]
    out[root] = torch.arange(n)
    if tree[0] == "atom":
        return out
    children = tree[2:]
    csizes = [size[dims.find(c[1])] for c in children]
    if tree[0] == "prod":
        stride = n
        pos = torch.arange(n)
        for c, s in zip(children, csizes, strict=False):
            stride //= s
            local = (pos // stride) % s
            for k, v in _coords(c, s, size, dims).items():
                out[k] = v[local]
    else:  # cat
        off = 0
        for c, s in zip(children, csizes, strict=False):
            for k, v in _coords(c, s, size, dims).items():
                t = out.setdefault(k, torch.full((n,), -1, dtype=torch.long))
                t[off:off + s] = v
            off += s
    return out


# --- tracing ------------------------------------------------------------------------------------
def _leaf_types() -> tuple[type, ...]:
    from timm.layers import PatchEmbed

    return (nn.Linear, nn.LayerNorm, nn.Conv2d, PatchEmbed)


class Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _leaf_types()) or super().is_leaf_module(m, qualname)


@dataclass(frozen=True)
class ParamAxis:
    """One axis of one parameter and its role: ``out`` (rows of a Linear/Conv weight and biases),
    ``in`` (input columns), ``norm`` (LayerNorm weight/bias) or ``free`` (tokens, embeddings)."""

    param: str
    axis: int
    role: str
    module: str


_PASS_METHODS = {"contiguous", "clone", "float", "to", "type_as"}
_PASS_FUNCS = {"gelu", "relu", "silu", "dropout"}


class Analyzer:
    """Runs over the fx graph with shapes and records the atom of every tensor axis."""

    def __init__(self, model: nn.Module, gm: torch.fx.GraphModule) -> None:
        self.model, self.gm = model, gm
        self.dims = _Dims()
        self.param_atoms: dict[str, list[int]] = {}
        self.param_axes: dict[str, list[ParamAxis]] = {}
        self.external: set[int] = set()
        self.query_atoms: list[int] = []
        self.key_atoms: list[int] = []
        self.norms: list[str] = []
        self.env: dict[torch.fx.Node, Any] = {}
        self.params = dict(model.named_parameters())

    # helpers
    def _param(self, name: str, roles: Sequence[str], module: str) -> list[int]:
        if name not in self.param_atoms:
            p = self.params[name]
            self.param_atoms[name] = [self.dims.new(s) for s in p.shape]
            self.param_axes[name] = [ParamAxis(name, i, r, module) for i, r in enumerate(roles)]
        return self.param_atoms[name]

    def _fresh(self, shape: Sequence[int]) -> list[int]:
        return [self.dims.new(s) for s in shape]

    def _eq(self, a: int, b: int) -> None:
        """Couple two axes; axes of different sizes are a broadcast and stay apart."""
        if self.dims.size[self.dims.find(a)] == self.dims.size[self.dims.find(b)]:
            self.dims.unify(a, b)

    @staticmethod
    def _shape(n: Any) -> tuple[int, ...] | None:
        meta = n.meta.get("tensor_meta") if isinstance(n, torch.fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def _val(self, a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return self.env.get(a)
        if isinstance(a, (list, tuple)):
            return type(a)(self._val(x) for x in a)
        return a

    def run(self) -> None:
        for n in self.gm.graph.nodes:
            self.env[n] = self._node(n)

    def _node(self, n: torch.fx.Node) -> Any:
        shape = self._shape(n)
        if n.op == "placeholder":
            axes = self._fresh(shape or ())
            self.external.update(axes)
            return axes
        if n.op == "output":
            for v in _flatten(self._val(n.args[0])):
                self.external.update(v)
            return None
        if n.op == "get_attr":
            name = str(n.target)
            if name not in self.params:
                raise StructureError(f"get_attr {name}: buffers/constants in the forward are not supported")
            p = self.params[name]
            return list(self._param(name, ["free"] * p.ndim, name.rpartition(".")[0]))
        if n.op == "call_module":
            return self._module(n, str(n.target), shape)
        if n.op == "call_method":
            return self._method(n, str(n.target), shape)
        return self._function(n, shape)

    def _module(self, n: torch.fx.Node, name: str, shape: tuple[int, ...] | None) -> Any:
        from timm.layers import PatchEmbed

        m = self.gm.get_submodule(name)
        x = self._val(n.args[0])
        if isinstance(m, nn.Linear):
            w = self._param(f"{name}.weight", ["out", "in"], name)
            self._eq(x[-1], w[1])
            if m.bias is not None:
                b = self._param(f"{name}.bias", ["out"], name)
                self._eq(w[0], b[0])
            return [*x[:-1], w[0]]
        if isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                w = self._param(f"{name}.weight", ["norm"], name)
                self._eq(x[-1], w[0])
                if m.bias is not None:
                    self._eq(w[0], self._param(f"{name}.bias", ["norm"], name)[0])
            self.norms.append(name)
            return list(x)
        if isinstance(m, PatchEmbed):
            conv = m.proj
            w = self._param(f"{name}.proj.weight", ["out", "in", "free", "free"], f"{name}.proj")
            self._eq(x[1], w[1])
            if conv.bias is not None:
                self._eq(w[0], self._param(f"{name}.proj.bias", ["out"], f"{name}.proj")[0])
            if not isinstance(m.norm, nn.Identity):
                raise StructureError(f"{name}: patch embedding with a norm is not supported")
            assert shape is not None
            return [x[0], self.dims.new(shape[1]), w[0]]
        if isinstance(m, nn.Conv2d):
            w = self._param(f"{name}.weight", ["out", "in", "free", "free"], name)
            self._eq(x[1], w[1])
            if m.bias is not None:
                self._eq(w[0], self._param(f"{name}.bias", ["out"], name)[0])
            assert shape is not None
            return [x[0], w[0], *self._fresh(shape[2:])]
        if not any(True for _ in m.parameters()) and shape is not None and tuple(shape) == self._shape(n.args[0]):
            return list(x)  # dropout, activation, identity
        raise StructureError(f"module {name} ({type(m).__name__}) is not supported by the structure analysis")

    def _method(self, n: torch.fx.Node, name: str, shape: tuple[int, ...] | None) -> Any:
        x = self._val(n.args[0])
        if name in _PASS_METHODS:
            return x
        if name in ("reshape", "view", "flatten"):
            return self._reshape(x, self._shape(n.args[0]), shape)
        if name == "transpose":
            d0, d1 = (int(a) for a in n.args[1:3])  # type: ignore[arg-type]
            out = list(x)
            out[d0], out[d1] = out[d1], out[d0]
            return out
        if name == "permute":
            order = n.args[1] if isinstance(n.args[1], (list, tuple)) else n.args[1:]
            return [x[int(i)] for i in order]  # type: ignore[arg-type]
        if name == "expand":
            in_shape = self._shape(n.args[0])
            assert shape is not None and in_shape is not None
            lead = len(shape) - len(in_shape)
            return [self.dims.new(s) if i < lead or in_shape[i - lead] != s else x[i - lead]
                    for i, s in enumerate(shape)]
        if name == "split":
            return self._split(x, n, self._shape(n.args[0]))
        if name in ("mean", "sum", "amax"):
            return self._reduce(x, n, shape)
        if name in ("add", "sub", "mul", "div"):
            return self._binary(n, shape)
        raise StructureError(f"tensor method {name!r} is not supported by the structure analysis")

    def _function(self, n: torch.fx.Node, shape: tuple[int, ...] | None) -> Any:
        f = n.target
        fname = getattr(f, "__name__", str(f))
        if f is getattr and n.args[1] == "shape":
            return None
        if f is operator.getitem:
            base = self._val(n.args[0])
            if base is None:
                return None
            if isinstance(base, tuple):  # split outputs
                return base[int(n.args[1])]  # type: ignore[arg-type]
            return self._index(base, n.args[1], shape)
        if f in (operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.mul, torch.sub):
            return self._binary(n, shape)
        if f is torch.cat:
            tensors = [self._val(t) for t in n.args[0]]  # type: ignore[union-attr]
            dim = int(n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0))  # type: ignore[arg-type]
            assert shape is not None
            dim %= len(shape)
            for ax in range(len(shape)):
                if ax != dim:
                    for t in tensors[1:]:
                        self._eq(tensors[0][ax], t[ax])
            cat = self.dims.new(shape[dim])
            self.dims.define(cat, "cat", [t[dim] for t in tensors])
            out = list(tensors[0])
            out[dim] = cat
            return out
        if fname == "scaled_dot_product_attention":
            q, k, v = (self._val(a) for a in n.args[:3])
            for i in range(len(q) - 2):  # batch and head axes
                self._eq(q[i], k[i])
                self._eq(q[i], v[i])
            self._eq(q[-1], k[-1])  # query/key width
            self._eq(k[-2], v[-2])  # key tokens
            self.query_atoms.append(self._origin_axis(n.args[0]))
            self.key_atoms.append(self._origin_axis(n.args[1]))
            return [*q[:-1], v[-1]]
        if fname in _PASS_FUNCS:
            return self._val(n.args[0])
        if fname in ("mean", "sum"):
            return self._reduce(self._val(n.args[0]), n, shape)
        raise StructureError(f"function {fname!r} is not supported by the structure analysis")

    def _origin_axis(self, a: Any) -> int:
        """The last-axis atom of the tensor a head-split reshape was applied to (Q or K part)."""
        node = a
        while isinstance(node, torch.fx.Node) and node.op == "call_method" and node.target in (
                "transpose", "permute", "contiguous"):
            node = node.args[0]
        if isinstance(node, torch.fx.Node) and node.op == "call_method" and node.target in ("reshape", "view"):
            return int(self._val(node.args[0])[-1])
        return int(self._val(a)[-1])

    def _binary(self, n: torch.fx.Node, shape: tuple[int, ...] | None) -> Any:
        a, b = n.args[0], n.args[1]
        va, vb = self._val(a), self._val(b)
        if not isinstance(va, list):
            return vb if isinstance(vb, list) else None
        if not isinstance(vb, list):
            return va
        sa, sb = self._shape(a), self._shape(b)
        assert sa is not None and sb is not None and shape is not None
        out = []
        for i in range(1, len(shape) + 1):
            ia = va[-i] if i <= len(va) else None
            ib = vb[-i] if i <= len(vb) else None
            if ia is not None and ib is not None:
                self._eq(ia, ib)
            pick = ia if ia is not None and (ib is None or sa[-i] >= sb[-i]) else ib
            out.append(pick)
        return out[::-1]

    def _index(self, x: list[int], idx: Any, shape: tuple[int, ...] | None) -> list[int]:
        items = idx if isinstance(idx, tuple) else (idx,)
        out: list[int] = []
        i = 0
        for it in items:
            if it is Ellipsis:
                raise StructureError("Ellipsis indexing is not supported by the structure analysis")
            if isinstance(it, int):
                i += 1
                continue
            if isinstance(it, slice):
                if it == slice(None):
                    out.append(x[i])
                else:
                    assert shape is not None
                    out.append(self.dims.new(shape[len(out)]))
                i += 1
                continue
            raise StructureError(f"indexing with {type(it).__name__} is not supported by the structure analysis")
        return out + list(x[i:])

    def _reduce(self, x: list[int], n: torch.fx.Node, shape: tuple[int, ...] | None) -> list[int]:
        dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
        keep = bool(n.kwargs.get("keepdim", False))
        dims = [dim] if isinstance(dim, int) else list(dim or range(len(x)))  # type: ignore[arg-type]
        dims = [int(d) % len(x) for d in dims]
        if keep:
            return [self.dims.new(1) if i in dims else a for i, a in enumerate(x)]
        return [a for i, a in enumerate(x) if i not in dims]

    def _split(self, x: list[int], n: torch.fx.Node, in_shape: tuple[int, ...] | None) -> tuple[list[int], ...]:
        sizes = n.args[1]
        dim = int(n.kwargs.get("dim", n.args[2] if len(n.args) > 2 else 0))  # type: ignore[arg-type]
        assert in_shape is not None
        dim %= len(in_shape)
        if isinstance(sizes, int):
            sizes = [sizes] * math.ceil(in_shape[dim] / sizes)
        parts = [self.dims.new(int(s)) for s in sizes]  # type: ignore[union-attr, arg-type]
        self.dims.define(x[dim], "cat", parts)
        return tuple([*x[:dim], p, *x[dim + 1:]] for p in parts)

    def _reshape(self, x: list[int], ins: tuple[int, ...] | None, outs: tuple[int, ...] | None) -> list[int]:
        assert ins is not None and outs is not None
        out: list[int] = []
        i = j = 0
        while i < len(ins) or j < len(outs):
            if j >= len(outs):  # trailing input singletons
                i += 1
                continue
            if i >= len(ins):  # trailing output singletons
                out.append(self.dims.new(1))
                j += 1
                continue
            if ins[i] == 1 and outs[j] == 1:
                out.append(x[i])
                i, j = i + 1, j + 1
                continue
            gi, gj = [i], [j]
            pi, pj = ins[i], outs[j]
            while pi != pj:
                if pi < pj:
                    i += 1
                    gi.append(i)
                    pi *= ins[i]
                else:
                    j += 1
                    gj.append(j)
                    pj *= outs[j]
            i, j = i + 1, j + 1
            if len(gi) == 1 and len(gj) == 1:
                out.append(x[gi[0]])
            elif len(gi) == 1:
                new = [self.dims.new(outs[k]) for k in gj]
                self.dims.define(x[gi[0]], "prod", new)
                out.extend(new)
            elif len(gj) == 1:
                merged = self.dims.new(outs[gj[0]])
                self.dims.define(merged, "prod", [x[k] for k in gi])
                out.append(merged)
            else:
                raise StructureError(f"reshape {ins} -> {outs} regroups several axes at once")
        return out


def _flatten(v: Any) -> Iterator[list[int]]:
    if isinstance(v, list) and all(isinstance(a, int) for a in v):
        yield v
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _flatten(x)
