"""The Optuna seams of revit.search are typed with Optuna's public types, and stay light to import.

An AST walk over revit/search: every parameter named like a trial, trials or a study carries an annotation naming
``Trial``, ``FrozenTrial``, ``BaseTrial`` or ``Study`` imported from optuna (never ``Any``); importing the
modules still imports no optuna (the types come under ``TYPE_CHECKING``). Values read back from a storage
stay safe to interpret (a ``retry_of`` another program wrote as a list).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEARCH = sorted((ROOT / "revit" / "search").glob("*.py"))
SEAM_NAMES = {"trial", "trials", "study", "frozen", "frozen_trial", "ft", "t"}  # what the code calls trials, studies
OPTUNA_TYPES = {"Trial", "FrozenTrial", "BaseTrial", "Study"}
REVIT_TYPES = {"StudySet"}  # revit's own group of Optuna studies (revit.search.studies): typed, not a seam


def _optuna_names(tree: ast.AST) -> set[str]:
    """The names a module imports from optuna (at top level or under ``if TYPE_CHECKING:``)."""
    return {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            and (n.module or "").split(".")[0] == "optuna" for a in n.names}


def untyped_seams(tree: ast.AST) -> list[str]:
    """``line name: annotation`` of each trial or study parameter whose annotation is missing, says ``Any`` or
    names no Optuna type the module imports (nor revit's ``StudySet``)."""
    known = (_optuna_names(tree) & OPTUNA_TYPES) | REVIT_TYPES
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        a = fn.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs]:
            if arg.arg not in SEAM_NAMES:
                continue
            text = ast.unparse(arg.annotation) if arg.annotation is not None else ""
            words = set(re.findall(r"[\w.]+", text))  # names, dotted ones whole: optuna.trial.FrozenTrial
            typed = {w for w in words if w in known or (w.startswith("optuna.") and w.split(".")[-1] in OPTUNA_TYPES)}
            if "Any" in words or not typed:
                out.append(f"{fn.lineno} {fn.name}({arg.arg}: {text or '-'})")
    return out


def test_the_walk_finds_an_untyped_seam() -> None:
    """The check itself: ``Any``, a missing annotation and a type not imported from optuna are found."""
    src = ("from typing import Any\nfrom optuna.trial import FrozenTrial\nclass Trial: ...\n"
           "def a(trial: Any): ...\ndef b(study): ...\ndef c(t: Trial): ...\ndef d(ft: FrozenTrial | None): ...\n"
           "def e(study: 'optuna.Study', trial: optuna.trial.BaseTrial): ...\ndef f(t: dict[str, Any]): ...\n")
    assert [s.split()[1] for s in untyped_seams(ast.parse(src))] == ["a(trial:", "b(study:", "c(t:", "f(t:"]


@pytest.mark.parametrize("path", SEARCH, ids=lambda p: p.name)
def test_optuna_seams_are_typed(path: Path) -> None:
    bad = untyped_seams(ast.parse(path.read_text(), filename=str(path)))
    assert not bad, f"revit/search/{path.name}: type these with optuna's Trial/FrozenTrial/BaseTrial/Study: {bad}"


def test_typed_seams_import_no_optuna() -> None:
    """The types come under TYPE_CHECKING: importing the study modules (not the seeded sampler, which is
    Optuna's subclass) imports no optuna."""
    mods = [p.stem for p in SEARCH if p.stem not in ("__init__", "seeding")]
    code = (f"import importlib, sys\nfor m in {mods!r}: importlib.import_module('revit.search.' + m)\n"
            "print(sorted(m for m in ('optuna', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split() == ["[]"]


def test_a_foreign_retry_of_neither_crashes_nor_counts() -> None:
    """A ``retry_of`` that is no trial number (a list, text, true) is not a retry's: the liveness check and the
    tally read past it, and only an integer names the trial retried."""
    import optuna

    from revit.search import attrs as A
    from revit.search.liveness import recover
    from revit.search.runner import tally
    from revit.search.spec import StudySpec
    from revit.search.studies import StudySet
    from revit.search.testing import tiny_study_doc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.FloatDistribution(0, 1)
    fail = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={"x": 0.5}, distributions={"x": dist})
    study.add_trial(fail)
    for of in ([0], "0", True, 0):  # only the last names trial 0, and makes it good
        study.add_trial(optuna.trial.create_trial(value=0.5, params={"x": 0.5}, distributions={"x": dist},
                                                  user_attrs={A.RETRY_OF: of}))
    assert recover(study, grace_s=30) == []  # nothing running, nothing to fail; the list value is read past
    assert len(study.get_trials()) == 5  # no retry enqueued
    ss = StudySet(StudySpec.from_dict(tiny_study_doc()), "memory", {"less-more-less": study},
                  optuna.create_study(direction="maximize"))
    t = tally(ss)
    assert t.states == {"FAIL": 1, "COMPLETE": 4} and t.unrecovered == [] and t.pending == []
    assert [A.retry_of(t) for t in study.get_trials()] == [None, None, None, None, 0]
