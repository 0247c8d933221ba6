"""Small helpers shared by the command modules (formatting, common arguments)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_command(sub: Any, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """Add a sub-command whose --help ends with an example."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return p


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def info(msg: str) -> None:
    """A human line for stderr (summaries, progress notes), keeping stdout for data."""
    print(msg, file=sys.stderr)


def add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    """``--overwrite``: replace a finished run of the same kind in ``--out`` (never a folder of another kind)."""
    p.add_argument("--overwrite", action="store_true",
                   help="replace the finished run of this kind in --out (or start an unfinished one over)")
