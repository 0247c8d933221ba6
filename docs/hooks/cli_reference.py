"""MkDocs hook: the CLI reference, generated at build time from the parsers ``revit.cli.main.build_parser``
makes, so the page cannot drift from the commands.

A page that holds the marker ``<!-- revit:cli-reference -->`` gets, in its place, one section per command
(``revit``, ``revit model``, ``revit model info``, ...) with that command's ``--help`` text.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- revit:cli-reference -->"
WIDTH = "100"  # help text wrapped at a fixed width, whatever the terminal building the site


def command_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command of the ``revit`` CLI as (command path, parser), in ``--help`` order.

    The subcommand parsers are recorded as ``build_parser()`` adds them (``add_subparsers`` returns the action
    whose ``choices`` map names to parsers), so the tree is read without argparse's private attributes.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from revit.cli.main import build_parser

    made: dict[int, argparse.Action] = {}
    real = argparse.ArgumentParser.add_subparsers

    def recording(self: argparse.ArgumentParser, **kwargs: Any) -> argparse.Action:
        action = real(self, **kwargs)
        made[id(self)] = action
        return action

    with mock.patch.object(argparse.ArgumentParser, "add_subparsers", recording):
        root = build_parser()
    out: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        out.append((path, parser))
        action = made.get(id(parser))
        seen: set[int] = set()
        for name, sub in (action.choices or {}).items() if action is not None else ():
            if id(sub) not in seen:  # aliases name the same parser
                seen.add(id(sub))
                walk(sub, f"{path} {name}")

    walk(root, "revit")
    return out


def cli_markdown() -> str:
    """The reference: a list of the commands, then each command's ``--help`` in a text block."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        cmds = [(path, parser.format_help()) for path, parser in command_parsers()]
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    lines = [f"- [`{path}`](#{path.replace(' ', '-')})" for path, _ in cmds]
    for path, text in cmds:
        lines += ["", f"## {path}", "", "```text", text.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_markdown())
    return markdown
