"""Entry point of the ``revit`` console script.

Each command group lives in its own module exposing ``register(subparsers)``; the module is
imported when the parser is built, so command modules must keep heavy imports (torch) inside
their handler functions.  A :class:`~revit.errors.RevitError` becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from revit import __version__, logs
from revit._io import dumps_json
from revit.cli._common import catalogue_lines, run_deferred
from revit.errors import RevitError
from revit.input_checks import elide
from revit.registry import lazy_choices

log = logging.getLogger(__name__)

# command modules, in the order they appear in --help
COMMAND_MODULES = tuple("model latency prune train rules generate search demo plugins".split())
OPTUNA_COMMANDS = ("search", "demo")  # commands that run Optuna studies: Optuna's own logger follows -v/-q
VERSION_PACKAGES = ("torch", "timm", "optuna", "onnxruntime")  # listed by --version (read without importing)
MAX_WORD = 160  # characters an error line quotes of one word (a path, a value) before cutting its middle
MAX_LINE = 1000  # characters of a whole error line
SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away (``| head``)


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and one line on bad usage, prefixed ``revit: error:`` as every error."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """An option whose choices come from a registry (``lazy_choices``) also ends the help with that
        registry's members, each with its description and options (read only when the help is printed)."""
        action = super().add_argument(*args, **kwargs)
        choices = kwargs.get("choices")
        if isinstance(choices, lazy_choices):
            self.help_tails = [*getattr(self, "help_tails", []), (action.option_strings[-1], choices)]
        return action

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        run_deferred(self)  # the flags plug-ins declare (``latency build``'s backend options)
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        run_deferred(self)
        text = super().format_help()
        for flag, choices in getattr(self, "help_tails", []):
            reg = choices.registry()
            text += f"\n{reg.family} ({flag}):\n" + "".join(f"  {line}\n" for line in catalogue_lines(reg))
        return text

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        self.children = action  # the sub-commands, to add -q/-v to every parser (see _add_verbosity)
        return action

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # argparse drops a lone "--" value (``--threads=--``) and stores [] without calling ``type``
        if arg_strings == ["--"] and action.nargs is None and action.option_strings:
            self.error(f"argument {'/'.join(action.option_strings)}: expected a value, got '--'")
        return super()._get_values(action, arg_strings)

    def error(self, message: str) -> None:  # type: ignore[override]
        where = self.prog.removeprefix("revit").strip()  # the subcommand, e.g. "latency build"
        text = one_line(f"{where + ': ' if where else ''}{message}")
        sys.stderr.write(f"revit: error: {text}\n")
        raise UsageError(text)


class UsageError(SystemExit):
    """argparse's refusal of a command line (exit 2, its line already on stderr); ``message`` is that line,
    kept so that ``--json`` gets its error object too."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # what is left after the colour codes: shown escaped, never sent raw
_LONG_WORD = re.compile(rf"\S{{{MAX_WORD + 1},}}")


def one_line(text: str) -> str:
    """An error message as one plain line: ANSI colour codes removed, line breaks joined with '; ', any other
    control character (a user's stray ESC) written as ``\\xNN``, and
    each long word (a 4 KB path, a huge value) and then the line itself cut in the middle (:func:`elide`).

    The one place that shortens what an error line quotes, whichever module raised it."""
    lines = [ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    joined = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", "; ".join(lines))
    line = _LONG_WORD.sub(lambda m: elide(m.group(), MAX_WORD), joined)
    return elide(line, MAX_LINE)


def json_error(message: str, kind: str) -> str:
    """The JSON error object a ``--json`` command prints on stdout when it fails (one line)."""

    return dumps_json({"error": message, "type": kind, "exit_code": 2}, "the error") + "\n"


def report_error(message: str, kind: str, as_json: bool) -> int:
    """One ``revit: error:`` line on stderr (``message`` is already one line); with ``--json`` also a JSON
    error object on stdout, so a script that parses stdout gets an answer: exit code 2."""
    if as_json:
        sys.stdout.write(json_error(message, kind))
        sys.stdout.flush()
    print(f"revit: error: {message}", file=sys.stderr)
    return 2


def _wants_json(argv: Sequence[str], args: argparse.Namespace | None) -> bool:
    """Whether the command asked for JSON: its parsed ``--json``, or (a usage error: nothing parsed) the flag
    among the options of the command line."""
    if args is not None:
        return bool(getattr(args, "json", False))
    words = list(argv)
    return "--json" in (words[:words.index("--")] if "--" in words else words)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="revit",
        description="Make Vision Transformers cheaper by redistributing their parameters (NViT/ReViT).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  revit generate --rule paper --macs 4.6G --distilled > revit_s.yaml\n"
        "  revit model info revit_s.yaml",
    )
    parser.add_argument("--version", action=_Version,
                        help="show the versions of revit and its main dependencies, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"revit.cli.{name}").register(sub)
    _add_verbosity(parser, top=True)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """``-q/--quiet`` and ``-v/--verbose`` (counted) on ``parser`` and every sub-command below it.

    On the top-level parser they default to 0; below, they are only set when given (a sub-command's
    own count replaces the top-level one).  A sub-command that already has ``--quiet`` keeps its own.
    """
    default = 0 if top else argparse.SUPPRESS
    for flags, dest, what in ((("-q", "--quiet"), "log_quiet", "fewer messages on stderr (-qq: errors only)"),
                              (("-v", "--verbose"), "log_verbose", "more messages on stderr (debug lines, Optuna's)")):
        for names in (flags, flags[:1], flags[1:]):  # a sub-command's own option of a name keeps that name
            try:
                parser.add_argument(*names, dest=dest, action="count", default=default, help=what)
                break
            except argparse.ArgumentError:
                continue
    children = getattr(parser, "children", None)
    for child in (children.choices.values() if children is not None else ()):
        _add_verbosity(child)


class _Version(argparse.Action):
    """``--version``: revit's version and those of its main dependencies, read from their metadata
    (nothing is imported, so it answers at once)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sys.stdout.write(version_text())
        parser.exit(0)


def version_text() -> str:
    """``revit X`` and one ``name version`` line per dependency (``not installed`` when missing)."""
    from importlib.metadata import PackageNotFoundError, version

    lines = [f"revit {__version__}"]
    for name in VERSION_PACKAGES:
        try:
            lines.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            lines.append(f"{name} not installed")
    lines.append(f"python {sys.version.split()[0]}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(words)
    except UsageError as e:  # one line on stderr already; --json also gets its error object
        if _wants_json(words, None):
            sys.stdout.write(json_error(e.message, "UsageError"))
        return _flushed(2)
    except SystemExit as e:  # --help/--version (0): returned, as every other exit
        return _flushed(e.code if isinstance(e.code, int) else 2)
    except BrokenPipeError:  # --help or --version into a pipe already closed
        _silence_stdout()
        return SIGPIPE_EXIT
    verbosity = getattr(args, "log_verbose", 0) - getattr(args, "log_quiet", 0)
    if verbosity < 0 and hasattr(args, "no_progress"):
        args.no_progress = True  # -q: no progress bars either
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    clean = False
    try:
        with logs.cli_session(verbosity):
            if getattr(args, "command", None) in OPTUNA_COMMANDS:
                logs.configure_optuna()
            rc = args.func(args)
            sys.stdout.flush()  # a closed pipe is found here, not at interpreter exit
        clean = True
    except RevitError as e:
        return report_error(one_line(str(e)), type(e).__name__, _wants_json(words, args))
    except BrokenPipeError:  # the reader went away (``revit ... | head``): end quietly, as a shell tool does
        _silence_stdout()
        return SIGPIPE_EXIT
    except OSError as e:  # an output on a read-only or full disk, a folder given as a file: one line
        from revit.input_checks import OUTPUT_ERRNOS, output_error

        if e.errno not in OUTPUT_ERRNOS or not e.filename:
            raise
        if e.errno == errno.ENAMETOOLONG:  # an input's path too (Path.is_file raises it): not "cannot write"
            return report_error(one_line(f"{e.filename}: a name in this path is too long"), "OutputError",
                                _wants_json(words, args))
        return report_error(one_line(str(output_error(e, e.filename))), "OutputError", _wants_json(words, args))
    except KeyboardInterrupt:
        print("revit: interrupted", file=sys.stderr)
        return 130
    finally:
        _end_process_group(clean)
    return int(rc or 0)


def _flushed(code: int) -> int:
    """``code``, after flushing stdout (``--help`` or ``--version`` into a closed pipe ends quietly too)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return SIGPIPE_EXIT
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so Python's own flush at exit does not report the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (a test's captured stdout): nothing to silence
        pass


def _end_process_group(clean: bool) -> None:
    """Close a torchrun process group the command started (torch is imported only if it already was)."""
    if "torch.distributed" in sys.modules:
        # a Ctrl-C during ``import torch`` can leave it half imported: then there is no group to close
        with contextlib.suppress(ImportError, AttributeError):
            from revit.devices import shutdown_distributed

            shutdown_distributed(clean)


if __name__ == "__main__":
    sys.exit(main())
