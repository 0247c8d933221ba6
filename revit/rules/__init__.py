"""Design rules: rule families, rules on disk, generation for a budget, fitting to traces.

Light to import (no torch, no numpy); fitting imports numpy/scipy and plotting matplotlib
only when called.  :class:`Granularity` and :class:`Setting` live in :mod:`revit.config`.
"""

from revit.config import Granularity, Setting
from revit.cost import CostTarget
from revit.rules import families as _families  # noqa: F401  (registers the families)
from revit.rules.base import FAMILIES, DomainNote, NamedRule, ParamSpec, RuleFamily, get_family
from revit.rules.generate import (
    Generated,
    GenerationBounds,
    apply_rule,
    generate,
    latency_budget,
    macs_budget,
)
from revit.rules.rule import Rule, family_rules, load_rule, shipped_rules, uniform_rule

__all__ = [
    "FAMILIES", "CostTarget", "DomainNote", "Generated", "GenerationBounds", "Granularity", "NamedRule", "ParamSpec",
    "Rule", "RuleFamily", "Setting", "apply_rule", "family_rules", "generate", "get_family", "latency_budget",
    "load_rule", "macs_budget", "shipped_rules", "uniform_rule",
]
