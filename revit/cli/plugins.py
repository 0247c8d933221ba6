"""``revit plugins [FAMILY] [--json]``: every plug-in family, its members with their descriptions and options,
and the broken plug-ins with the line saying why (``revit rules list`` and ``revit latency backends`` list one
family each)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from revit.cli._common import add_command, catalogue_json, catalogue_lines, print_json

# family -> (module, registry): the families a package can add to, in the order they are listed
FAMILIES = {
    "criteria": ("revit.prune.criteria", "CRITERIA"),
    "backends": ("revit.latency.backends", "BACKENDS"),
    "rule-families": ("revit.rules.base", "FAMILIES"),
    "samplers": ("revit.search.samplers", "SAMPLERS"),
    "optuna-pruners": ("revit.search.samplers", "OPTUNA_PRUNERS"),
    "storages": ("revit.search.storage", "STORAGES"),
    "cost-models": ("revit.cost", "COSTS"),
}


def register(sub: Any) -> None:
    p = add_command(sub, "plugins", "list the plug-ins of every family (built-in and installed) with what they do",
                    "revit plugins criteria   (revit plugins --json: every family)")
    p.add_argument("family", nargs="?", choices=tuple(FAMILIES), metavar="FAMILY",
                   help=f"one family: {', '.join(FAMILIES)} (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_plugins)


def _plugins(a: argparse.Namespace) -> int:
    from revit.registry import lazy_choices

    names = [a.family] if a.family else list(FAMILIES)
    regs = {n: lazy_choices(*FAMILIES[n]).registry() for n in names}
    if a.json:
        groups = {n: reg.group for n, reg in regs.items()}
        print_json({n: {**catalogue_json(reg), "entry_point_group": groups[n]} for n, reg in regs.items()})
        return 0
    out = []
    for n, reg in regs.items():
        group = f" (entry-point group {reg.group})" if reg.group else " (built-in only)"
        out += [f"{n}{group}:", *(f"  {line}" for line in catalogue_lines(reg)), ""]
    sys.stdout.write("\n".join(out))
    return 0
