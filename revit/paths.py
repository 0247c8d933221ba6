"""Where the shipped data lives: top-level ``rules/``, ``search/`` and ``latency_tables/``.

In a source checkout they sit beside the package; in a wheel they are installed as the
namespace ``revit/_shipped/<kind>`` (see pyproject.toml).  Both are found the same way.
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("rules", "search", "latency_tables")


def shipped_dir(kind: str) -> Path:
    """Directory of the shipped ``kind`` files (``rules``, ``search`` or ``latency_tables``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown shipped kind {kind!r}; known: {', '.join(KINDS)}")
    pkg = Path(__file__).resolve().parent
    installed = pkg / "_shipped" / kind
    if installed.is_dir():
        return installed
    return pkg.parent / kind
