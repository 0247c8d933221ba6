"""Entry point of the ``revit`` console script.

Each command group lives in its own module exposing ``register(subparsers)``; the module is
imported when the parser is built, so command modules must keep heavy imports (torch) inside
their handler functions.  A :class:`~revit.errors.RevitError` becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from typing import Any

from revit import __version__
from revit.errors import RevitError

# command modules, in the order they appear in --help
COMMAND_MODULES = ("model", "latency", "prune", "train", "rules", "generate", "search", "demo")


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and one line on bad usage, prefixed ``revit: error:`` as every error."""

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # argparse drops a lone "--" value (``--threads=--``) and stores [] without calling ``type``
        if arg_strings == ["--"] and action.nargs is None and action.option_strings:
            self.error(f"argument {'/'.join(action.option_strings)}: expected a value, got '--'")
        return super()._get_values(action, arg_strings)

    def error(self, message: str) -> None:  # type: ignore[override]
        where = self.prog.removeprefix("revit").strip()  # the subcommand, e.g. "latency build"
        self.exit(2, f"revit: error: {where + ': ' if where else ''}{one_line(message)}\n")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def one_line(text: str) -> str:
    """An error message as one plain line: ANSI colour codes removed, line breaks joined with '; '."""
    lines = [ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    return "; ".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="revit",
        description="Make Vision Transformers cheaper by redistributing their parameters (NViT/ReViT).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  revit generate --rule paper --macs 4.6G --distilled > revit_s.yaml\n"
        "  revit model info revit_s.yaml",
    )
    parser.add_argument("--version", action="version", version=f"revit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"revit.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # a usage error (one line, 2) or --help/--version (0): returned, as every other exit
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    clean = False
    try:
        rc = args.func(args)
        clean = True
    except RevitError as e:
        print(f"revit: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # an output on a read-only or full disk, a folder given as a file: one line
        from revit.validation import OUTPUT_ERRNOS, output_error

        if e.errno not in OUTPUT_ERRNOS or not e.filename:
            raise
        print(f"revit: error: {one_line(str(output_error(e, e.filename)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("revit: interrupted", file=sys.stderr)
        return 130
    finally:
        _end_process_group(clean)
    return int(rc or 0)


def _end_process_group(clean: bool) -> None:
    """Close a torchrun process group the command started (torch is imported only if it already was)."""
    if "torch.distributed" in sys.modules:
        from revit.runtime import shutdown_distributed

        shutdown_distributed(clean)


if __name__ == "__main__":
    sys.exit(main())
