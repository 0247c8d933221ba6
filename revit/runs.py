"""Run folders are owned: a marker file says what kind of run a folder holds and whether it finished.

Every command that writes a run folder (``train``, ``prune``, ``model convert``, ``demo``,
``search report``) claims it with :func:`claim_run` *before* it writes anything: a folder of another
kind is refused, a finished run is only replaced with ``overwrite``, an unfinished one is continued
with ``resume``, and a non-empty folder that is no revit run is never touched.  The claim only
reads; :meth:`Claim.begin` writes the marker once the command's own checks have passed and
:meth:`Claim.finish` marks the run finished after its last output file.  ``latency build`` writes
one table file, not a folder: :func:`claim_output_file` applies the same rules to it and its journal.

The marker, ``.revit-run.json``, is JSON with a schema version, written atomically.  Folders written
before markers existed are recognised by their files (:data:`SIGNATURES`), so they resume as before.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from revit import __version__
from revit._io import atomic_write_text, load_json
from revit.errors import FileFormatError, OutputError, RunExistsError, check_keys

MARKER = ".revit-run.json"
SCHEMA = "revit/run/v1"
KINDS = ("train", "prune", "model-convert", "demo", "study-report", "latency-build")

# folders written before markers existed: (files that say the kind, the file that says it finished)
SIGNATURES: dict[str, tuple[tuple[str, ...], str]] = {
    "prune": (("state.pt", "trace.jsonl", "teacher.safetensors", "pruned.yaml"), "metrics.json"),
    "train": (("checkpoint.pt", "log.jsonl", "history.json"), "metrics.json"),
    "demo": (("1-base", "2-prune", "5-study"), "report/summary.json"),
    "study-report": (("report.md", "report.json"), "report.json"),
}


# runs whose output is one file: the bytes near its start that say the kind
FILE_SIGNATURES: dict[str, bytes] = {"latency-build": b'"revit/latency-table/'}


def file_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of run whose output file ``path`` is (``latency-build`` for a latency table), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    return next((k for k, sig in FILE_SIGNATURES.items() if sig in head), None)


OutputWriteError = OutputError  # the one error of a failed write (revit.errors.OutputError)


def save_atomic(path: str | os.PathLike[str], write: Callable[[Path], object], *,
                hint: str = "free space or fix permissions, then rerun with --resume") -> None:
    """``write(tmp)`` a temp file next to ``path`` and rename it over ``path`` (atomic: a reader or a crash sees
    the old file or the new one).  A failed write removes the temp file and is one line naming ``path``
    (:func:`revit._io.atomic_output`, the one atomic writer), with ``hint`` as the fix."""
    from revit._io import atomic_output

    try:
        with atomic_output(path) as tmp:
            write(tmp)
    except OutputError as e:
        raise OutputError(e.message, hint=hint) from None


class RunKindError(RunExistsError):
    """An output folder holds a run of another kind (or files that are no revit run)."""


class FinishedRunError(RunExistsError):
    """An output folder holds a finished run of the same kind and ``--overwrite`` was not given."""


class UnfinishedRunError(RunExistsError):
    """An output folder holds an unfinished run and neither ``--resume`` nor ``--overwrite`` was given."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunMarker:
    """What a run folder holds: its kind, when it was created, whether it finished, which revit wrote it."""

    kind: str
    created: str
    finished: bool = False
    revit_version: str = __version__
    legacy: bool = False  # inferred from the files of a folder written before markers (never saved)

    def to_dict(self) -> dict[str, Any]:
        d = {"schema": SCHEMA, **asdict(self)}
        d.pop("legacy")
        return d

    @classmethod
    def from_dict(cls, doc: Any, source: str) -> RunMarker:
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            got = doc.get("schema") if isinstance(doc, dict) else None
            raise FileFormatError(f"{source}: schema is {got!r}, expected {SCHEMA!r} (a run-folder marker)")
        check_keys(doc, ("schema", "kind", "created", "finished", "revit_version"), source, error=FileFormatError)
        d = doc
        if d.get("kind") not in KINDS or not isinstance(d.get("finished", False), bool):
            raise FileFormatError(f"{source}: kind must be one of {', '.join(KINDS)} and finished a boolean")
        return cls(kind=d["kind"], created=str(d.get("created", "")), finished=d.get("finished", False),
                   revit_version=str(d.get("revit_version", "")))


def marker_path(folder: str | os.PathLike[str]) -> Path:
    return Path(folder) / MARKER


def read_marker(folder: str | os.PathLike[str]) -> RunMarker | None:
    """The folder's marker; for an unmarked folder of a known layout, one inferred from its files; else None."""
    f = Path(folder)
    if marker_path(f).is_file():
        return RunMarker.from_dict(load_json(marker_path(f)), str(marker_path(f)))
    for kind, (signs, done) in SIGNATURES.items():
        if any((f / s).exists() for s in signs):
            return RunMarker(kind=kind, created="", finished=(f / done).exists(), legacy=True)
    names = {p.name for p in f.iterdir()} if f.is_dir() else set()
    if names == {"config.yaml", "model.safetensors"}:  # what model convert wrote
        return RunMarker(kind="model-convert", created="", finished=True, legacy=True)
    return None


def write_marker(folder: str | os.PathLike[str], marker: RunMarker) -> None:
    atomic_write_text(marker_path(folder), json.dumps(marker.to_dict(), indent=1) + "\n")


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Claim:
    """A checked claim on a run folder; ``mode`` is ``new``, ``resume`` or ``overwrite``."""

    folder: Path
    kind: str
    mode: str
    found: RunMarker | None = None

    @property
    def resuming(self) -> bool:
        """Whether the folder holds this kind's earlier work to continue."""
        return self.mode == "resume" and self.found is not None

    def begin(self) -> None:
        """Write the marker (unfinished); with ``overwrite``, first remove the replaced run's files."""
        if self.mode == "overwrite" and self.folder.is_dir():
            for p in self.folder.iterdir():
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        self.folder.mkdir(parents=True, exist_ok=True)
        created = self.found.created if self.resuming and self.found and self.found.created else _now()
        write_marker(self.folder, RunMarker(kind=self.kind, created=created, finished=False))

    def finish(self) -> None:
        """Mark the run finished (after its last output file): from now on only ``overwrite`` replaces it."""
        found = read_marker(self.folder)
        created = found.created if found is not None and found.created else _now()
        write_marker(self.folder, replace(RunMarker(kind=self.kind, created=created), finished=True))


def claim_run(folder: str | os.PathLike[str], kind: str, *, resume: bool = False, overwrite: bool = False,
              flag: str = "--out") -> Claim:
    """Check that ``kind`` may write ``folder`` (reads only; raise a :class:`RunExistsError` subclass if not).

    An empty or missing folder is new; a folder of another kind, or a non-empty one that holds no revit
    run, is refused; a finished run needs ``overwrite``; an unfinished one ``resume`` (continue) or
    ``overwrite`` (start over).  ``resume`` on a missing folder starts a new run.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}")
    f = Path(folder)
    if f.exists() and not f.is_dir():
        other = file_kind(f)
        what = f"{_article(other)} {other} output file" if other else "a file"
        raise RunKindError(f"{f} is {what}, not {_article(kind)} {kind} run folder", hint=f"choose another {flag}")
    if not f.exists() or not any(f.iterdir()):
        return Claim(f, kind, "new")
    found = read_marker(f)
    if found is None:
        names = sorted(p.name for p in f.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise RunKindError(f"{f} holds files that are no revit run ({shown}), not {_article(kind)} {kind} run",
                           hint=f"choose a new or empty {flag}")
    if found.kind != kind:
        raise RunKindError(f"{f} holds {_article(found.kind)} {found.kind} run, not {_article(kind)} {kind} run",
                           hint=f"choose another {flag}")
    if overwrite:
        return Claim(f, kind, "overwrite", found)
    if found.finished:
        raise FinishedRunError(f"{f} holds a finished {kind} run",
                               hint=f"pass --overwrite to replace it or choose another {flag}")
    if not resume:
        raise UnfinishedRunError(f"{f} holds an unfinished {kind} run",
                                 hint=f"pass --resume to continue it, --overwrite to start over, or choose "
                                      f"another {flag}")
    return Claim(f, kind, "resume", found)


@dataclass(frozen=True)
class FileClaim:
    """A checked claim on a single-file output and its journal (``latency build``)."""

    path: Path
    journal: Path
    mode: str  # new | resume | overwrite

    def begin(self) -> None:
        """With ``overwrite``, drop the journal of the replaced build (the old file is replaced at the end)."""
        if self.mode == "overwrite" and self.journal.exists():
            self.journal.unlink()


def claim_output_file(path: str | os.PathLike[str], journal: str | os.PathLike[str], kind: str,
                      is_kind: Callable[[Path], bool], *, resume: bool = False, overwrite: bool = False,
                      flag: str = "--out") -> FileClaim:
    """Check that a run writing one file ``path`` (finished when the file exists and ``journal`` does not)
    may go on; ``is_kind`` says whether an existing file is this kind's output.  Reads only."""
    p, j = Path(path), Path(journal)
    if p.is_dir():
        found = read_marker(p) if any(p.iterdir()) else None
        what = f"holds {_article(found.kind)} {found.kind} run" if found else "is a folder"
        raise RunKindError(f"{p} {what}, not {_article(kind)} {kind} output file", hint=f"choose another {flag}")
    if p.exists() and not is_kind(p):
        raise RunKindError(f"{p} is a file that is not {_article(kind)} {kind} output",
                           hint=f"choose another {flag}")
    if j.exists():
        if overwrite and not resume:
            return FileClaim(p, j, "overwrite")
        if not resume:
            raise UnfinishedRunError(f"{j} holds an unfinished {kind} run",
                                     hint="pass --resume to continue it, --overwrite to start over, or delete it")
        return FileClaim(p, j, "resume")
    if p.exists():
        if not overwrite:
            raise FinishedRunError(f"{p} holds a finished {kind} run",
                                   hint=f"pass --overwrite to replace it or choose another {flag}")
        return FileClaim(p, j, "overwrite")
    return FileClaim(p, j, "new")


__all__ = ["KINDS", "MARKER", "Claim", "FileClaim", "FinishedRunError", "OutputWriteError", "RunKindError",
           "RunMarker", "UnfinishedRunError", "claim_output_file", "claim_run", "file_kind", "read_marker",
           "save_atomic", "write_marker"]
