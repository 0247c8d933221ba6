"""Run folders are owned: a marker file says what kind of run a folder holds, whether it finished, and which
of its files are revit's.

Every command that writes a run folder (``train``, ``prune``, ``model convert``, ``demo``,
``search report``) claims it with :func:`claim_run` *before* it writes anything: a folder of another
kind is refused, a finished run is only replaced with ``overwrite``, an unfinished one is continued
with ``resume``, and a non-empty folder without revit's marker is never touched (the refusal names
the files found).  The claim only reads; :meth:`Claim.begin` takes the folder's advisory lock (a
second run into it refuses in one line), writes the marker once the command's own checks have
passed and :meth:`Claim.finish` marks the run finished after its last output file.

``--overwrite`` deletes only the entries the marker lists as revit's (:data:`OUTPUTS` of the kind, by
name: never "whatever is new", so a file a user adds while a run goes is never claimed) and their temp
files; a user's own files in the folder stay, byte-identical.  Model folders (kind ``model``) carry the
same marker.  A run's files are read with :func:`run_file`, never through a link.  ``--resume`` removes the
stale temp files of a killed run.  ``latency build`` writes one file, not a folder:
:func:`claim_output_file` applies the same rules to it and its journal.

The marker, ``.revit-run.json``, is JSON with a schema version, written atomically.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from revit import __version__
from revit._io import atomic_write_text, dumps_json, load_json
from revit._locks import RunLockedError, acquire, check_unlocked, release
from revit.errors import FileFormatError, OutputError, RunExistsError, check_keys

MARKER = ".revit-run.json"
SCHEMA = "revit/run/v1"
KINDS = ("train", "prune", "model-convert", "demo", "study-report", "latency-build", "model")

HUB_DIR = "hf"  # the hub-format folder (timm's config.json, weights, card) that train, prune and convert write

# the entries each kind writes into its folder (the marker adds what a run created besides these)
OUTPUTS: dict[str, tuple[str, ...]] = {
    "train": ("config.yaml", "checkpoint.pt", "log.jsonl", "history.json", "model.safetensors",
              "model_ema.safetensors", "metrics.json", HUB_DIR),
    "prune": ("state.pt", "trace.jsonl", "teacher.safetensors", "pruned.yaml", "pruned.safetensors", "metrics.json",
              "plots", HUB_DIR),
    "model-convert": ("config.yaml", "model.safetensors", HUB_DIR),
    "demo": ("1-base", "2-prune", "3-rule", "4-configs", "5-study", "report"),
    "study-report": ("report.md", "report.json", "accuracy_vs_macs.png", "comparison.png", "best_blocks.png",
                     "history.png"),
    "latency-build": (),
    # a hub model folder (``revit model save``, and the hf/ folder of runs): timm's files and the card
    "model": ("config.json", "model.safetensors", "README.md", "trace.png"),
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


class RunKindError(RunExistsError):
    """An output folder holds a run of another kind (or files that are no revit run)."""


class FinishedRunError(RunExistsError):
    """An output folder holds a finished run of the same kind and ``--overwrite`` was not given."""


class UnfinishedRunError(RunExistsError):
    """An output folder holds an unfinished run and neither ``--resume`` nor ``--overwrite`` was given."""


def now() -> str:
    """The time now (UTC, to the second), as a marker records it."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")



@dataclass(frozen=True)
class RunMarker:
    """What a run folder holds: its kind, when it was created, whether it finished, which revit wrote it, and
    the entries (top-level names) that are revit's: the only ones ``--overwrite`` ever deletes."""

    kind: str
    created: str
    finished: bool = False
    revit_version: str = __version__
    files: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = {"schema": SCHEMA, **asdict(self)}
        d["files"] = sorted(self.files)
        return d

    @property
    def owned(self) -> tuple[str, ...]:
        """The entries revit may delete: those listed, else (a marker of an older revit) the kind's outputs."""
        return self.files or OUTPUTS.get(self.kind, ())

    @classmethod
    def from_dict(cls, doc: Any, source: str) -> RunMarker:
        from revit.input_checks import short

        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            got = doc.get("schema") if isinstance(doc, dict) else None
            raise FileFormatError(f"{source}: schema is {short(got)}, expected {SCHEMA!r} (a run-folder marker)")
        check_keys(doc, ("schema", "kind", "created", "finished", "revit_version", "files"), source,
                   error=FileFormatError)
        d = doc
        if d.get("kind") not in KINDS or not isinstance(d.get("finished", False), bool):
            raise FileFormatError(f"{source}: kind must be one of {', '.join(KINDS)} and finished a boolean")
        files = d.get("files", [])
        if not isinstance(files, list) or not all(_plain_name(f) for f in files) or len(files) > 10_000:
            raise FileFormatError(f"{source}: files must be a list of plain file names in the run folder")
        return cls(kind=d["kind"], created=str(d.get("created", ""))[:64], finished=d.get("finished", False),
                   revit_version=str(d.get("revit_version", ""))[:64], files=tuple(files))


def _plain_name(name: Any) -> bool:
    """A top-level entry name of a folder: no separator, not ``.``/``..``, not the marker itself."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and "/" not in name and "\\" not in name
            and "\0" not in name and name not in (".", "..", MARKER))


def marker_path(folder: str | os.PathLike[str]) -> Path:
    return Path(folder) / MARKER


def linked_part(folder: str | os.PathLike[str], *parts: str) -> Path | None:
    """The first of ``folder/parts[0]``, ``folder/parts[0]/parts[1]``, ... that is a symbolic link, else None."""
    path = Path(folder)
    for part in parts:
        path = path / part
        if path.is_symlink():
            return path
    return None


def run_file(folder: str | os.PathLike[str], *parts: str) -> Path:
    """``folder/parts...``, refused (one line) when it or a folder on the way inside ``folder`` is a symbolic
    link: revit never reads or copies a run's files through one (a link could point at a user's secrets)."""
    link = linked_part(folder, *parts)
    if link is not None:
        raise FileFormatError(f"{link} is a symbolic link; revit never reads or copies a run's files through one",
                              hint="replace it with the file itself")
    return Path(folder).joinpath(*parts)


def read_marker(folder: str | os.PathLike[str]) -> RunMarker | None:
    """The folder's marker, or None when it has none (then revit never deletes or resumes anything in it)."""
    m = marker_path(folder)
    if m.is_symlink() or not m.is_file():
        return None
    return RunMarker.from_dict(load_json(m), str(m))


def write_marker(folder: str | os.PathLike[str], marker: RunMarker) -> None:
    atomic_write_text(marker_path(folder), dumps_json(marker.to_dict(), "the run marker", indent=1) + "\n")


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


def _names(folder: Path, limit: int = 8) -> str:
    """``a, b, c, ... (12 entries)``: what a refused folder holds, for the one-line message."""
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(n[:40] for n in names[:limit])
    return shown + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def _is_temp_of(name: str, owned: set[str]) -> bool:
    """Whether ``name`` is a temp file of revit's atomic writer for one of the ``owned`` entries (or the marker)."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    return any(name.startswith(f".{o}.") for o in (*owned, MARKER))


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


@dataclass(frozen=True)
class Claim:
    """A checked claim on a run folder; ``mode`` is ``new``, ``resume`` or ``overwrite``."""

    folder: Path
    kind: str
    mode: str
    found: RunMarker | None = None
    flags: tuple[bool, bool, str] = (False, False, "--out")  # resume, overwrite, flag: to check again at begin
    _state: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def resuming(self) -> bool:
        """Whether the folder holds this kind's earlier work to continue."""
        return self.mode == "resume" and self.found is not None

    def begin(self) -> None:
        """Lock the folder, check it again, then clean it (``overwrite``: the replaced run's entries;
        ``resume``: stale temp files) and write the marker (unfinished).  Idempotent within one process."""
        if self._state.get("begun"):
            self._write(finished=False)
            return
        created = _missing_chain(self.folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            acquire(self.folder, flag=self.flags[2])
        except OutputError:
            _remove_empty(created)
            raise
        except RunLockedError:
            raise
        try:
            self._check_unchanged()
            owned = set(self.found.owned) if self.found is not None else set()
            for p in list(self.folder.iterdir()):
                if self.mode == "overwrite" and p.name in owned:
                    _remove(p)
                elif self.mode in ("overwrite", "resume") and _is_temp_of(p.name, owned | set(OUTPUTS[self.kind])):
                    _remove(p)  # a killed run's half-written file
            self._state.update(begun=True, created=created,
                               files=set(OUTPUTS[self.kind]) | (owned if self.mode == "resume" else set()))
            self._write(finished=False)
        except BaseException:
            release(self.folder)
            if self.mode == "new":
                _remove_empty(created if created else [])
            raise

    def _entries(self) -> set[str]:
        return {p.name for p in self.folder.iterdir()} - {MARKER}

    def _check_unchanged(self) -> None:
        """The folder as the claim saw it: no other run started (and finished) in it since."""
        resume, overwrite, flag = self.flags
        now = claim_run(self.folder, self.kind, resume=resume, overwrite=overwrite, flag=flag)
        if now.mode != self.mode and not (self.mode == "new" and now.mode == "new"):
            raise RunLockedError(f"{self.folder} changed while this run was starting (another revit run wrote it)",
                                 hint=f"check it, then rerun or choose another {flag}")

    def _write(self, *, finished: bool) -> None:
        found = read_marker(self.folder)
        created = found.created if found is not None and found.created else (
            self.found.created if self.resuming and self.found and self.found.created else now())
        files = set(self._state.get("files", OUTPUTS[self.kind]))  # by name, from revit's own list of outputs
        write_marker(self.folder, RunMarker(kind=self.kind, created=created, finished=finished,
                                            files=tuple(sorted(f for f in files if _plain_name(f)))))

    def finish(self) -> None:
        """Mark the run finished (after its last output file) and release the lock: from now on only
        ``overwrite`` replaces it."""
        self._state.setdefault("files", set(OUTPUTS[self.kind]))
        self._write(finished=True)
        release(self.folder)

    def abandon(self) -> None:
        """A refusal after :meth:`begin`: a new folder that holds nothing but the marker (and files the run
        can rewrite at once) is removed with the folders begin created, so a refusal leaves nothing behind."""
        self._clear(lambda left: all(n in set(SETUP_FILES.get(self.kind, ())) or self._own_temp(n) for n in left))

    def discard(self) -> None:
        """A failure after :meth:`begin` (a full disk): a new run's own outputs (by name, with their temp files)
        and its marker are removed, then the folders begin created, so no half run is left; a user's file
        that appeared meanwhile stays.  A resumed or replaced run keeps its unfinished marker for ``--resume``."""
        self._clear(lambda left: True, keep_folder=True)

    def _own_temp(self, name: str) -> bool:
        return _is_temp_of(name, set(OUTPUTS[self.kind]))

    def _clear(self, whole: Callable[[set[str]], bool], *, keep_folder: bool = False) -> None:
        """Remove a new run's own entries and marker when ``whole(entries left)`` says so, then the folders begin
        created (``keep_folder``: only those, never an empty folder that was there before); release the lock."""
        try:
            if self.mode == "new" and self._state.get("begun") and self.folder.is_dir():
                left = self._entries()
                if whole(left):
                    for n in left:
                        if n in OUTPUTS[self.kind] or self._own_temp(n) or n in SETUP_FILES.get(self.kind, ()):
                            _remove(self.folder / n)
                    marker_path(self.folder).unlink(missing_ok=True)
                    created = [*self._state.get("created", [])]
                    _remove_empty(created if keep_folder else created or [self.folder])
        finally:
            release(self.folder)


# files a run writes before its first real work, that it writes again at once when started over
SETUP_FILES: dict[str, tuple[str, ...]] = {"train": ("config.yaml", "log.jsonl"), "model-convert": ("config.yaml",)}


def _missing_chain(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first (what ``mkdir(parents=True)`` makes)."""
    out, q = [], folder
    while not q.exists() and not q.is_symlink() and q != q.parent:
        out.append(q)
        q = q.parent
    return out


def _remove_empty(folders: list[Path]) -> None:
    """Remove each folder (deepest first) while it is empty: those a refused run created."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return


def claim_run(folder: str | os.PathLike[str], kind: str, *, resume: bool = False, overwrite: bool = False,
              flag: str = "--out") -> Claim:
    """Check that ``kind`` may write ``folder`` (reads only; raise a :class:`RunExistsError` subclass if not).

    An empty or missing folder is new; a folder of another kind, or a non-empty one without revit's
    marker, is refused (naming its files); a finished run needs ``overwrite``; an unfinished one
    ``resume`` (continue) or ``overwrite`` (start over).  ``resume`` on a missing folder starts a new run.
    A folder whose lock another process holds is refused.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}")
    f = Path(folder)
    flags = (resume, overwrite, flag)
    if f.is_symlink():
        raise RunKindError(f"{f} is a symbolic link; revit never creates run files through one",
                           hint=f"give the folder it points to, or another {flag}")
    if f.exists() and not f.is_dir():
        other = file_kind(f)
        what = f"{_article(other)} {other} output file" if other else "a file"
        raise RunKindError(f"{f} is {what}, not {_article(kind)} {kind} run folder", hint=f"choose another {flag}")
    if not f.exists() or not any(f.iterdir()):
        return Claim(f, kind, "new", flags=flags)
    check_unlocked(f, flag=flag)
    found = read_marker(f)
    if found is None:
        raise RunKindError(f"{f} holds files without revit's run marker ({_names(f)}), not {_article(kind)} {kind} "
                           "run; revit never deletes, overwrites or resumes them", hint=f"choose a new or empty {flag}")
    if found.kind != kind:
        raise RunKindError(f"{f} holds {_article(found.kind)} {found.kind} run, not {_article(kind)} {kind} run",
                           hint=f"choose another {flag}")
    if overwrite:
        return Claim(f, kind, "overwrite", found, flags=flags)
    if found.finished:
        raise FinishedRunError(f"{f} holds a finished {kind} run",
                               hint=f"pass --overwrite to replace it or choose another {flag}")
    if not resume:
        raise UnfinishedRunError(f"{f} holds an unfinished {kind} run",
                                 hint=f"pass --resume to continue it, --overwrite to start over, or choose "
                                      f"another {flag}")
    links = sorted(n for n in {*found.owned, *OUTPUTS[kind]} if (f / n).is_symlink())
    if links:  # a copied folder could point revit's outputs anywhere: they are never written through
        raise RunKindError(f"{f / links[0]} is a symbolic link; revit never writes a run's files through one",
                           hint=f"remove it to resume, pass --overwrite to start over, or choose another {flag}")
    return Claim(f, kind, "resume", found, flags=flags)


@dataclass(frozen=True)
class FileClaim:
    """A checked claim on a single-file output and its journal (``latency build``)."""

    path: Path
    journal: Path
    mode: str  # new | resume | overwrite
    _state: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def begin(self) -> None:
        """Create (``new``/``overwrite``: exclusively, never through a symlink) and lock the journal; with
        ``overwrite`` first drop the replaced build's journal, with ``resume`` the stale temp files."""
        j = self.journal
        created = _missing_chain(j.parent)
        try:
            j.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from revit.input_checks import output_error

            raise output_error(e, j) from None
        if self.mode == "overwrite" and (j.exists() or j.is_symlink()):
            check_unlocked(j)
            j.unlink()
        if self.mode in ("new", "overwrite"):
            try:
                os.close(os.open(j, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
            except FileExistsError:
                _remove_empty(created)
                raise RunLockedError(f"{j} was just created by another revit run",
                                     hint="wait for that run to end or choose another --out") from None
            except OSError as e:
                from revit.input_checks import output_error

                _remove_empty(created)
                raise output_error(e, j) from None
        acquire(j)
        if self.mode in ("resume", "overwrite"):
            for p in self.path.parent.iterdir():
                if _is_temp_of(p.name, {self.path.name}):
                    _remove(p)
        self._state.update(begun=True, created=created)

    def abandon(self) -> None:
        """A refusal after :meth:`begin`: a journal of this run that holds no measurement is removed (with the
        folders begin created), so a refused build leaves nothing behind."""
        try:
            j = self.journal
            if self.mode != "resume" and self._state.get("begun") and j.is_file() and not j.is_symlink():
                if b'"type":"measure"' not in j.read_bytes()[: 1 << 20]:
                    j.unlink()
                    _remove_empty(self._state.get("created", []))
        finally:
            release(self.journal)

    def done(self) -> None:
        """The table is written and the journal removed: let go of the lock."""
        release(self.journal)


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
    if j.is_symlink():
        raise RunKindError(f"{j} is a symbolic link; revit never creates or appends files through one",
                           hint=f"remove it or choose another {flag}")
    if j.exists() and not j.is_file():
        raise RunKindError(f"{j} is not a file (a journal is)", hint=f"remove it or choose another {flag}")
    if p.exists() and not is_kind(p):
        raise RunKindError(f"{p} is a file that is not {_article(kind)} {kind} output",
                           hint=f"choose another {flag}")
    if j.exists():
        check_unlocked(j, flag=flag)
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


__all__ = ["KINDS", "MARKER", "OUTPUTS", "Claim", "FileClaim", "FinishedRunError", "RunKindError",
           "RunLockedError", "RunMarker", "UnfinishedRunError", "acquire", "check_unlocked", "claim_output_file",
           "claim_run", "file_kind", "linked_part", "read_marker", "release", "run_file", "write_marker"]
