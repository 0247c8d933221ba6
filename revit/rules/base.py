"""The rule-family contract and its registry.

A *family* turns (parameters, embedding width, depth, granularity, MLP factor) into per-block
widths; a *rule* (:mod:`revit.rules.rule`) is one family plus parameter values.  Families are
stateless and registered by name in :data:`FAMILIES`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from revit.config import BlockDims, Granularity
from revit.errors import ConfigError, check_keys
from revit.input_checks import short
from revit.registry import RULE_FAMILIES_GROUP, Registry


@dataclass(frozen=True)
class DomainNote:
    """One line about how a rule is applied; ``outside`` when it leaves the domain it was written for."""

    text: str
    outside: bool = False

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ParamSpec:
    """One family parameter: default, allowed interval and a one-line meaning."""

    default: float
    low: float
    high: float
    doc: str
    integer_step: str | None = None  # an integer searched on this granularity kind's step (qk_dim), else a float


@dataclass(frozen=True)
class NamedRule:
    """A rule a family ships under a name (``revit generate --rule NAME``): its parameter values."""

    description: str
    params: Mapping[str, float]


class RuleFamily(ABC):
    """A parametric way of shaping a ViT.

    Contract for implementations:
    - :meth:`blocks` is pure Python and deterministic, returns exactly ``depth`` legal blocks,
      and is non-decreasing in ``embed_dim`` and in ``mlp_factor`` for every width (generation
      bisects on both; a family that breaks this makes budgets unreachable).
    - ``mlp_factor == 1`` applies the family's own MLP widths unchanged; any other factor scales
      each block's MLP width and rounds it to the granularity.
    - :meth:`continuous` (fittable families only) gives the unrounded widths that
      :meth:`blocks` rounds, as floats, so least squares can fit :attr:`params`.
    - Depth: :meth:`depth` says how many blocks the family builds when ``asked`` blocks are wanted (default:
      ``asked``, the setting's depth or ``--depth``; a family may set its own), :meth:`max_depth` the most it
      builds (default: no limit of its own), and :attr:`depth_doc` says both in a line (``revit rules list``
      and the docs show it).  A depth search for a budget prefers :attr:`reference_depth` when the family has
      one, else the deepest depth that meets the budget (:func:`revit.rules.generate.depth_order`).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    params: ClassVar[dict[str, ParamSpec]] = {}
    reference_depth: ClassVar[int | None] = None
    # what the family does with depth, one line (shown with the description)
    depth_doc: ClassVar[str] = "keeps the asked depth (the setting's, or --depth)"
    # every block equal: the design a redistribution is measured against (a study's reference side)
    uniform: ClassVar[bool] = False
    # rules this family ships by name, found by load_rule after the rule files of rules/
    named_rules: ClassVar[Mapping[str, NamedRule]] = {}

    @property
    def fittable(self) -> bool:
        """True when the family has parameters that :func:`revit.rules.fit.fit_family` can fit."""
        return bool(self.params)

    def check_params(self, given: Mapping[str, object], source: str = "rule") -> dict[str, float]:
        """Fill defaults and validate names, types and bounds; return the full parameter dict."""
        check_keys(given, self.params, f"{source} (family {self.name!r})", what="parameter")
        out: dict[str, float] = {}
        for key, spec in self.params.items():
            value = given.get(key, spec.default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{source}: parameter {key} must be a number, got {short(value)}")
            if not spec.low <= value <= spec.high:
                raise ConfigError(f"{source}: parameter {key}={value} is outside [{spec.low}, {spec.high}]")
            out[key] = float(value)
        return out

    @abstractmethod
    def blocks(self, params: Mapping[str, float], embed_dim: int, depth: int, gran: Granularity,
               mlp_factor: float = 1.0) -> tuple[BlockDims, ...]:
        """The rounded widths of every block."""

    def depth(self, params: Mapping[str, float], asked: int) -> int:
        """The number of blocks the family builds when ``asked`` are wanted: ``asked`` unless it sets its own."""
        return asked

    def max_depth(self, params: Mapping[str, float]) -> int | None:
        """The most blocks the family builds (generation refuses deeper ones in one line); None: no limit."""
        return None

    def domain_notes(self, params: Mapping[str, float], embed_dim: int, depth: int) -> list[DomainNote]:
        """Notes on how (embed_dim, depth) is mapped onto the family; ``outside`` ones leave its domain."""
        return []

    def starting_points(self, samples: Sequence[tuple[int, Mapping[str, Sequence[float]]]]) -> list[dict[str, float]]:
        """Where least squares starts fitting the family to ``samples`` (EMB, widths per kind of each
        block); the fit is not convex, so a family may give several.  Default: its defaults."""
        return [{k: float(s.default) for k, s in self.params.items()}]

    def continuous(self, params: Mapping[str, float], embed_dim: int,
                   positions: Sequence[float]) -> dict[str, list[float]]:
        """Unrounded widths per kind at normalised depths ``positions`` (fittable families)."""
        raise ConfigError(f"rule family {self.name!r} has no parameters to fit; "
                          f"fittable: {', '.join(n for n, f in FAMILIES.loaded().items() if f().fittable)}")


FAMILIES: Registry[type[RuleFamily]] = Registry("rule family", group=RULE_FAMILIES_GROUP, base=RuleFamily)


def get_family(name: str) -> RuleFamily:
    """An instance of the registered family ``name`` (unknown names list the known ones)."""
    return FAMILIES.get(name)()


def block_positions(depth: int) -> list[float]:
    """Normalised depth of every block's centre: (i + 1/2) / depth."""
    return [(i + 0.5) / depth for i in range(depth)]


def scale_mlp(base: int, mlp_factor: float, gran: Granularity) -> int:
    """A block's MLP width under the global factor: unchanged at 1, else rounded to the granularity."""
    if mlp_factor == 1.0:
        return base
    return gran.round_to("mlp_dim", base * mlp_factor)
