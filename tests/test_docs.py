"""The documentation: the site builds with --strict, its CLI reference is the parsers' own help, the API reference
covers every public module, the README stays a short guide, and the Python examples of the README and the guides run.

Python examples are the ```python blocks of README.md and docs/**/*.md. Each runs in a fresh namespace in a temporary
working directory, unless the HTML comment on the line just before it says otherwise:
``<!-- example: NAME -->`` names it, ``<!-- example: NAME; output -->`` also checks that it prints exactly the text of
the fenced block right after it, ``<!-- example: NAME; slow -->`` runs it in the slow suite only, and
``<!-- example: skip: REASON -->`` leaves it out with the reason given. Named examples in DEDICATED run in their own
tests instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DEDICATED = {"global-pruner": "tests/test_global_pruner.py"}  # example name -> the test that runs it verbatim
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*example:\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Example:
    path: Path
    line: int
    code: str
    name: str
    flags: frozenset[str]
    skip: str | None
    output: str | None  # the next fenced block's text, when the example checks its output

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}" + (f"[{self.name}]" if self.name else "")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)]


def examples(path: Path) -> list[Example]:
    text = path.read_text()
    blocks = list(FENCE.finditer(text))
    out = []
    for i, m in enumerate(blocks):
        if m.group(1) != "python":
            continue
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        name, flags, skip = "", frozenset(), None
        if marker:
            spec = marker.group(1)
            if spec.startswith("skip:"):
                skip = spec.removeprefix("skip:").strip()
                assert skip, f"{path}:{line}: a skipped example must say why"
            else:
                name, *rest = (s.strip() for s in spec.split(";"))
                flags = frozenset(rest)
                assert flags <= {"slow", "output"}, f"{path}:{line}: unknown example flags {sorted(flags)}"
        output = None
        if "output" in flags:
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            assert nxt and not text[m.end():nxt.start()].strip(), f"{path}:{line}: no output block right after"
            output = nxt.group(2)
        out.append(Example(path, line, m.group(2), name, flags, skip, output))
    return out


ALL = [e for p in doc_files() for e in examples(p)]


def _param(e: Example) -> object:
    marks = [pytest.mark.slow] if "slow" in e.flags else []
    if e.skip:
        marks.append(pytest.mark.skip(reason=e.skip))
    return pytest.param(e, id=e.id, marks=marks)


@pytest.mark.parametrize("example", [_param(e) for e in ALL if e.name not in DEDICATED])
def test_python_example_runs(example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             one_torch_thread: None) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example.code, f"{example.path}:{example.line}", "exec"), {"__name__": "__doc_example__"})
    if example.output is not None:
        assert out.getvalue().rstrip().splitlines() == example.output.rstrip().splitlines()


def test_examples_are_found_and_dedicated_ones_have_their_test() -> None:
    """The collector sees the README's examples; each example left to a dedicated test is run by that test."""
    readme = [e for e in ALL if e.path.name == "README.md"]
    assert len(readme) >= 3 and any(e.name == "global-pruner" for e in readme)
    for name, test in DEDICATED.items():
        assert f"example: {name}" in (ROOT / test).read_text()
    ids = [e.id for e in ALL]
    assert len(ids) == len(set(ids))


def test_readme_is_a_short_guide() -> None:
    """At most 300 lines, and every relative link of it (the docs pages it points to) names an existing file."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    links = [u.split("#")[0] for u in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in u]
    assert len(links) >= 10 and all((ROOT / u).is_file() for u in links), [u for u in links if not (ROOT / u).is_file()]


def test_stale_drafts_are_gone() -> None:
    assert not (DOCS / "readme").exists() and not list(DOCS.glob("readme_*.md"))


def _public_modules() -> set[str]:
    mods = set()
    for p in (ROOT / "revit").rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        if p.name == "__init__.py":
            parts = parts[:-1]
        if any(s.startswith("_") for s in parts) or parts[:2] == ("revit", "cli") or parts[-1] == "testing":
            continue
        if p.name != "__init__.py":
            mods.add(".".join(parts))
    return mods


def test_api_reference_covers_every_public_module() -> None:
    """Each public module (not the CLI, which has its own page, nor test helpers) has a ``::: module`` entry."""
    listed = set()
    for p in (DOCS / "reference" / "api").glob("*.md"):
        listed |= set(re.findall(r"^::: ([\w.]+)\s*$", p.read_text(), re.M))
    missing, unknown = _public_modules() - listed, listed - _public_modules()
    assert not missing and not unknown, (sorted(missing), sorted(unknown))


def _hook():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "hooks" / "cli_reference.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_is_each_commands_help(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Every command module's commands are on the generated page, each with the text ``revit ... --help`` prints."""
    from revit.cli.main import COMMAND_MODULES, main

    hook = _hook()
    page = hook.cli_markdown()
    paths = [p for p, _ in hook.command_parsers()]
    assert {p.split()[1] for p in paths[1:]} == set(COMMAND_MODULES)
    assert {"revit model info", "revit latency build", "revit search run", "revit rules fit"} <= set(paths)
    monkeypatch.setenv("COLUMNS", hook.WIDTH)
    for path in paths:
        assert main([*path.split()[1:], "--help"]) == 0
        helptext = capsys.readouterr().out.rstrip()
        assert f"## {path}\n\n```text\n{helptext}\n```" in page, path


def test_docs_build_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict`` (what ``make docs`` runs): broken links, anchors or API references fail it."""
    import mkdocs  # noqa: F401 - the docs extra, which make test installs: a missing one fails, never skips
    import mkdocstrings  # noqa: F401
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "revit latency build" in cli and "--max-cells" in cli
    api = (tmp_path / "site" / "reference" / "api" / "prune" / "index.html").read_text()
    assert "GlobalPruner" in api
    guide = (tmp_path / "site" / "guides" / "pruning" / "index.html").read_text()
    assert "pruner.accumulate" in guide  # the README's example, included by the guide


def _builtin_names(module: str, registry: str) -> set[str]:
    """The names (not aliases) of a registry's members that revit itself ships."""
    reg = getattr(importlib.import_module(module), registry)
    return {n for n, obj in reg.loaded().items() if obj.__module__.startswith("revit.") and reg.name_of(obj) == n}


def test_search_guide_lists_the_builtin_samplers_and_optuna_pruners() -> None:
    """The search guide's spec comments and its Samplers paragraph name exactly the samplers and Optuna pruners
    revit ships (the registries), so a new one or a rename shows up in the guide."""
    text = (DOCS / "guides" / "search.md").read_text()
    sampler = re.search(r"^sampler: \{.*?#\s*(.+)$", text, re.M)
    pruner = re.search(r"^pruner: \{.*?#\s*Optuna pruner:\s*(.+)$", text, re.M)
    paragraph = re.search(r"^\*\*Samplers\.\*\*(.*?)\n\n", text, re.M | re.S)
    assert sampler and pruner and paragraph
    samplers = _builtin_names("revit.search.samplers", "SAMPLERS")
    assert {s.strip() for s in sampler.group(1).split("|")} == samplers
    assert {s.strip() for s in pruner.group(1).split("|")} == _builtin_names("revit.search.samplers", "OPTUNA_PRUNERS")
    assert set(re.findall(r"`([a-z0-9-]+)`", paragraph.group(1))) == samplers
    assert "`revit plugins samplers`" in text and "`revit plugins optuna-pruners`" in text


# names of issue 28's renamed or merged code, as a page would quote them
STALE_NAMES = re.compile(r"`(?:Target|Budget|BudgetSpec)\b|\brevit\.(?:runs|runtime|train|validation)\b|`run\.py`|"
                         r"prune/run\.py|latency/validate\.py|validate_table|samplers\.PRUNERS|\b(?:build|check)_pruner\b|"
                         r"\bspec\.pruner\b")


def test_docs_name_no_renamed_code() -> None:
    """No page names a type, module or function that was renamed or merged (issue 28): the cost target is
    ``CostTarget``, the modules are run_folders, devices, train_loop, input_checks, prune/loop.py,
    latency/accuracy.py and table_checks; the Optuna pruner is ``OPTUNA_PRUNERS``/``optuna_pruner``.
    Measured evidence pages (docs/evidence) quote what ran then and are left out."""
    pages = [ROOT / "README.md", *(p for p in DOCS.rglob("*.md") if "evidence" not in p.parts)]
    found = [f"{p.relative_to(ROOT)}:{i}: {m.group(0)}" for p in pages
             for i, line in enumerate(p.read_text().splitlines(), 1) for m in STALE_NAMES.finditer(line)]
    assert not found, found
