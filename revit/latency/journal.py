"""A build's journal: append-only JSON lines, so a killed latency build resumes with nothing measured lost."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from revit._io import dumps_json
from revit.errors import FileFormatError


class Journal:
    """Append-only JSON lines: a header, then one line per measurement (or design decision)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def append(self, record: dict[str, Any]) -> None:
        """One ``write`` of one complete line, flushed and fsynced: a crash loses at most this line."""
        line = (dumps_json(record, "a build journal record", separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def repair(self) -> None:
        """Drop a partial last line (a crash mid-write) so that further appends start on a fresh line."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def read(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Header and records; a truncated last line (a crash mid-write) is dropped, other damage is an error."""
        from revit._io import check_json_values, read_bytes

        lines = read_bytes(self.path).split(b"\n")
        recs: list[dict[str, Any]] = []
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            check_json_values(raw, f"{self.path}: line {i + 1}")
            try:
                rec = json.loads(raw)
            except (ValueError, RecursionError):  # malformed JSON, binary bytes, nesting too deep
                if i == len(lines) - 1:  # no newline after it: cut short by a crash
                    continue
                raise FileFormatError(f"{self.path}: line {i + 1} is corrupted; delete the journal to rebuild") \
                    from None
            if not isinstance(rec, dict):
                raise FileFormatError(f"{self.path}: line {i + 1} is not a journal record; delete the journal to "
                                      "rebuild")
            recs.append(rec)
        if not recs or recs[0].get("type") != "header":
            raise FileFormatError(f"{self.path}: not a revit build journal (no header line)")
        return recs[0], recs[1:]


__all__ = ["Journal"]
