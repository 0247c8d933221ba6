"""One vocabulary per concept: the width kinds are spelled only in revit/config.py and the trial
attributes only in revit/search/attrs.py; every other module imports the names.

An AST walk over revit/ (and benchmarks/): a tuple, list or set literal naming two or more width
kinds (a mapping keyed by width, such as a space's axes, is data and stays readable), or a literal
trial-attribute key read from or written to a trial's ``user_attrs``, fails the test with the file
and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from revit.config import BLOCK_KINDS, WIDTH_KINDS
from revit.search import attrs

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "revit").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])
KINDS_HOME = ROOT / "revit" / "config.py"
ATTRS_HOME = ROOT / "revit" / "search" / "attrs.py"
ATTR_KEYS = {v for k, v in vars(attrs).items() if k.isupper() and isinstance(v, str)}


def _strings(nodes: list[ast.expr | None]) -> set[str]:
    return {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def width_kind_literals(tree: ast.AST) -> list[int]:
    """Lines of tuple/list/set literals whose constant strings name two or more width kinds."""
    return [node.lineno for node in ast.walk(tree) if isinstance(node, (ast.Tuple, ast.List, ast.Set))
            and len(_strings(list(node.elts)) & set(WIDTH_KINDS)) >= 2]


def _is_user_attrs(node: ast.expr, aliases: set[str]) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "user_attrs") or \
        (isinstance(node, ast.Name) and node.id in aliases)


def attr_literals(tree: ast.AST) -> list[int]:
    """Lines where a string constant is a trial's user-attribute key or a value compared with one."""
    aliases = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and _is_user_attrs(n.value, set())
               for t in n.targets if isinstance(t, ast.Name)}
    out = []
    for node in ast.walk(tree):
        consts: list[ast.expr | None] = []
        if isinstance(node, ast.Subscript) and _is_user_attrs(node.value, aliases):
            consts = [node.slice]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr in ("set_user_attr", "set_system_attr") or (f.attr == "get" and _is_user_attrs(f.value, aliases)):
                consts = list(node.args)
            consts += [k for kw in node.keywords if kw.arg == "user_attrs" and isinstance(kw.value, ast.Dict)
                       for k in kw.value.keys]
        elif isinstance(node, ast.Compare) and any(isinstance(s, ast.Call) and isinstance(s.func, ast.Attribute)
                                                   and s.func.attr == "get" and _is_user_attrs(s.func.value, aliases)
                                                   for s in (node.left, *node.comparators)):
            consts = [node.left, *node.comparators]
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)) and \
                any(_is_user_attrs(c, aliases) for c in node.comparators):
            consts = [node.left]
        if _strings(consts) & ATTR_KEYS:
            out.append(node.lineno)
    return out


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_width_kinds_and_trial_attributes_are_spelled_once(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(ROOT)
    if path != KINDS_HOME:
        assert not width_kind_literals(tree), \
            f"{where}: width kinds spelled at lines {width_kind_literals(tree)}; import revit.config.WIDTH_KINDS"
    if path != ATTRS_HOME:
        assert not attr_literals(tree), \
            f"{where}: trial attributes spelled at lines {attr_literals(tree)}; use revit.search.attrs"


def test_the_checks_catch_what_they_are_for():
    """The two detectors flag the shapes they exist for (so the test above can fail)."""
    assert width_kind_literals(ast.parse('K = ("heads", "qk_dim", "v_dim")')) == [1]
    assert width_kind_literals(ast.parse('w = ["embed_dim", "mlp_dim"]')) == [1]
    assert width_kind_literals(ast.parse('x = ("heads", "heads label")')) == []
    src = ('def f(t, study):\n    u = t.user_attrs\n    a = u["val_acc"]\n    b = t.user_attrs.get("role")\n'
           '    t.set_user_attr("seed", 1)\n    study.enqueue_trial({}, user_attrs={"arm": "x"})\n'
           '    c = "retry_of" in t.user_attrs\n    d = t.user_attrs.get(attrs.ROLE) == "baseline"\n')
    assert attr_literals(ast.parse(src)) == [3, 4, 5, 6, 7, 8]
    assert BLOCK_KINDS == WIDTH_KINDS[1:]
