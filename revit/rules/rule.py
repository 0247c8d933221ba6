"""A rule: one family plus parameter values, with the depth it was made for and its provenance.

On disk (``schema: revit/rule/v1``)::

    schema: revit/rule/v1
    kind: rule
    name: paper
    family: paper
    description: ...
    depth: 12                 # depth the rule was written or fitted for (informational)
    max_depth: 16             # optional: the deepest config the rule makes (generation refuses deeper)
    granularity: auto         # or standard | micro | one | "E,H,Q,V,M" | {embed_dim, heads, qk_dim, v_dim, mlp_dim}
    params: {}                # the family's parameters; missing ones take the family default
    provenance: {...}         # where it came from: source, traces, fit quality (R^2 per kind)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from revit._io import atomic_write_text, check_schema, dump_yaml, load_yaml
from revit.config import BlockDims, Granularity
from revit.errors import ConfigError, FileFormatError, UnknownNameError
from revit.input_checks import short
from revit.paths import shipped_dir
from revit.rules.base import FAMILIES, DomainNote, RuleFamily, get_family

SCHEMA = "revit/rule/v1"
_KEYS = ("schema", "kind", "name", "family", "description", "depth", "max_depth", "granularity", "params",
         "provenance")


@dataclass(frozen=True)
class Rule:
    """A family with parameter values (validated and completed with defaults on construction)."""

    name: str
    family: str
    params: Mapping[str, float] = field(default_factory=dict)
    depth: int | None = None
    granularity: str | Granularity | None = None  # None/'auto': chosen from the setting; or a preset name
    description: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)
    max_depth: int | None = None  # the deepest config this rule makes (None: the family's limit, if any)

    def __post_init__(self) -> None:
        fam = get_family(self.family)
        object.__setattr__(self, "params", fam.check_params(self.params, f"rule {self.name!r}"))
        if self.max_depth is not None and (isinstance(self.max_depth, bool) or not isinstance(self.max_depth, int)
                                           or self.max_depth < 1):
            raise ConfigError(f"rule {self.name!r}: max_depth must be a positive integer, got {short(self.max_depth)}")
        gran = self.granularity
        if gran == "auto":
            object.__setattr__(self, "granularity", None)
        elif gran is not None and not (isinstance(gran, str) and gran in Granularity.PRESETS):
            # validate now (a preset name stays a name; auto resolves per setting later)
            object.__setattr__(self, "granularity", Granularity.parse(gran, 224))

    @property
    def family_obj(self) -> RuleFamily:
        return get_family(self.family)

    def resolve_granularity(self, img_size: int, override: Any = None) -> Granularity:
        """The granularity for a setting: ``override`` if given, else the rule's, else auto."""
        return Granularity.parse(override if override not in (None, "auto") else self.granularity, img_size)

    def blocks(self, embed_dim: int, depth: int, gran: Granularity, mlp_factor: float = 1.0) -> tuple[BlockDims, ...]:
        """Per-block widths of this rule at ``embed_dim`` and ``depth``."""
        return self.family_obj.blocks(self.params, embed_dim, depth, gran, mlp_factor)

    def domain_notes(self, embed_dim: int, depth: int) -> list[DomainNote]:
        return self.family_obj.domain_notes(self.params, embed_dim, depth)

    @property
    def depth_limit(self) -> int | None:
        """The deepest config this rule makes: the smaller of its ``max_depth`` and its family's (None: none)."""
        limits = [d for d in (self.max_depth, self.family_obj.max_depth(self.params)) if d is not None]
        return min(limits) if limits else None

    def check_depth(self, depth: int, what: str = "depth") -> int:
        """``depth`` when this rule can make it; else one-line :class:`ConfigError` naming the limit."""
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"{what} must be a positive integer (at least 1 block), got {short(depth)}")
        limit = self.depth_limit
        if limit is not None and depth > limit:
            whose = "its max_depth" if limit == self.max_depth else f"family {self.family!r}"
            raise ConfigError(f"{what} {depth} is above the limit of {limit} blocks of rule {self.name!r} ({whose})")
        return depth

    def depth_for(self, asked: int, what: str = "depth") -> int:
        """The depth this rule builds when ``asked`` blocks are wanted (its family may set its own), checked."""
        return self.check_depth(self.family_obj.depth(self.params, asked), what)

    # I/O -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        gran = self.granularity
        return {
            "schema": SCHEMA, "kind": "rule", "name": self.name, "family": self.family,
            "description": self.description, "depth": self.depth,
            "granularity": gran.to_dict() if isinstance(gran, Granularity) else (gran or "auto"),
            "params": {k: _tidy(v) for k, v in self.params.items()},
            "provenance": _plain(self.provenance),
            **({"max_depth": self.max_depth} if self.max_depth is not None else {}),
        }

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_text(path, self.to_yaml())

    @classmethod
    def from_dict(cls, doc: Any, source: str = "rule") -> Rule:
        """Validate a parsed rule document; every problem is one-line :class:`FileFormatError`."""
        d = check_schema(doc, "rule", source, keys=_KEYS)
        family = d.get("family")
        if not isinstance(family, str):
            raise FileFormatError(f"{source}: 'family' (a rule family name) is required")
        params = d.get("params") or {}
        if not isinstance(params, Mapping):
            raise FileFormatError(f"{source}: 'params' must be a mapping of parameter names to numbers")
        depth = d.get("depth")
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise FileFormatError(f"{source}: 'depth' must be a positive integer, got {short(depth)}")
        max_depth = d.get("max_depth")
        if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1):
            raise FileFormatError(f"{source}: 'max_depth' must be a positive integer, got {short(max_depth)}")
        prov = d.get("provenance") or {}
        if not isinstance(prov, Mapping):
            raise FileFormatError(f"{source}: 'provenance' must be a mapping")
        try:
            return cls(name=str(d.get("name") or Path(source).stem), family=family, params=dict(params),
                       depth=depth, granularity=d.get("granularity"), description=str(d.get("description") or ""),
                       provenance=dict(prov), max_depth=max_depth)
        except UnknownNameError as e:
            raise FileFormatError(f"{source}: {e}") from None
        except ConfigError as e:
            msg = str(e)
            raise FileFormatError(msg if msg.startswith(source) else f"{source}: {msg}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Rule:
        return cls.from_dict(load_yaml(path), str(path))


def _tidy(v: float) -> float | int:
    """Whole numbers as ints; other values exactly (a saved rule reloads to the same widths)."""
    return int(v) if float(v).is_integer() else float(v)


def _plain(obj: Any) -> Any:
    """Convert numpy scalars, tuples and paths into YAML-safe plain types."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, float):
        return round(obj, 6)
    if hasattr(obj, "item"):
        return _plain(obj.item())
    return str(obj)


def shipped_rules() -> dict[str, Path]:
    """Names and paths of the rules shipped in ``rules/``."""
    d = shipped_dir("rules")
    return {p.stem: p for p in sorted(d.glob("*.yaml"), key=lambda q: q.stem)} if d.is_dir() else {}


def family_rules() -> dict[str, Rule]:
    """The rules the registered families ship by name (:attr:`RuleFamily.named_rules`), e.g. ``uniform``; a
    plug-in family that fails to load ships none (it breaks only the commands that name it)."""
    return {name: Rule(name=name, family=fam, params=dict(nr.params), description=nr.description)
            for fam, cls in FAMILIES.loaded().items() for name, nr in cls.named_rules.items()}


def uniform_rule(head_dim: int = 0, mlp_ratio: float = 4.0) -> Rule:
    """The DeiT-style uniform baseline as a rule (head_dim per head, 0 = auto; MLP = mlp_ratio * EMB)."""
    return replace(family_rules()["uniform"], params={"head_dim": head_dim, "mlp_ratio": mlp_ratio})


def load_rule(name_or_path: str) -> Rule:
    """A shipped rule by name (``paper``), a rule a family ships (``uniform``, a plugin's), or a path to a
    rule YAML file."""
    shipped = shipped_rules()
    if name_or_path in shipped:
        return Rule.load(shipped[name_or_path])
    named = family_rules()
    if name_or_path in named:
        return named[name_or_path]
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path or "/" in name_or_path:
        return Rule.load(name_or_path)
    broken = FAMILIES.broken()
    if name_or_path in broken:  # the name of a plug-in family that failed to load: its own line
        raise ConfigError(broken[name_or_path])
    known = ", ".join(sorted({*shipped, *named}))
    also = f"; broken rule family plug-ins: {', '.join(broken)} (see revit rules list)" if broken else ""
    raise UnknownNameError(f"unknown rule {name_or_path!r}; known: {known} (or a path to a rule YAML){also}")
