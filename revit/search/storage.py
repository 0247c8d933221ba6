"""Study storages behind one small contract: a URL in, an Optuna storage out.

Every backend is registered by URL scheme in :data:`STORAGES`:

- ``sqlite:///path/study.db`` (the default: one file, fine for one to a few processes on one disk),
- ``postgresql://user@host:port/db`` (and ``postgresql+psycopg2://``; needs ``revit[postgres]``),
  ``mysql://...`` - any SQLAlchemy URL that Optuna's ``RDBStorage`` accepts,
- ``journal:PATH`` (Optuna's journal file: many processes on one machine or a shared disk).

A bare path is read by its suffix: ``.db``/``.sqlite`` -> SQLite, ``.log``/``.journal``/``.jsonl``
-> journal.  Opening checks that the storage answers (a database is connected to, its tables are
created) and turns every failure into one :class:`~revit.errors.StorageError` line; an unreachable
server leaves nothing behind on the local disk.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from revit.errors import BackendUnavailableError, StorageError, UnknownNameError
from revit.registry import Registry

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9]*)(\+[a-zA-Z0-9_]+)?:")


class StorageBackend(ABC):
    """One kind of study storage.

    Contract: :meth:`open` returns a ready Optuna storage usable from several threads of one
    process (Optuna's own storages are), raises :class:`StorageError` with the cause and the fix
    when the storage cannot be reached or created, and :class:`BackendUnavailableError` when a
    driver package is missing.  It must not create local files before it knows the storage works,
    except the storage's own file (SQLite database, journal file) and its parent folder.
    """

    scheme: ClassVar[str]
    multi_host: ClassVar[bool]  # workers on other machines can share it
    description: ClassVar[str]

    @abstractmethod
    def open(self, url: str, read_only: bool = False) -> BaseStorage:
        """Open (and create if needed) the storage at ``url``; ``read_only``: never write to it (a report)."""

    def local_path(self, url: str) -> Path | None:
        """The local file the storage lives in, if any (for messages and clean-up)."""
        return None


STORAGES: Registry[type[StorageBackend]] = Registry("storage", key="scheme")


def _redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


class _RDB(StorageBackend):
    """Optuna's ``RDBStorage`` over SQLAlchemy; subclasses differ in driver and file handling."""

    driver_hint: ClassVar[str] = ""

    def _check_driver(self) -> None:
        """Raise :class:`BackendUnavailableError` when the database driver is not installed."""

    def engine_kwargs(self) -> dict[str, Any]:
        """SQLAlchemy engine arguments (a liveness check on pooled connections)."""
        return {"pool_pre_ping": True}

    unreachable: ClassVar[str] = "cannot reach the study database"
    unreachable_hint: ClassVar[str] = " (is the server running and the URL right?)"

    def connect_url(self, url: str, read_only: bool) -> str:
        """The SQLAlchemy URL to connect with (a read-only variant where the database offers one)."""
        return url

    def open(self, url: str, read_only: bool = False) -> BaseStorage:
        self._check_driver()
        import sqlalchemy.exc
        from optuna.storages import RDBStorage

        engine_kwargs = self.engine_kwargs()
        try:
            return RDBStorage(self.connect_url(url, read_only), engine_kwargs=engine_kwargs,
                              skip_table_creation=read_only)
        except sqlalchemy.exc.ArgumentError as e:
            raise StorageError(f"invalid storage URL {_redact(url)!r}: {_first(e)}") from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
            raise StorageError(f"{self.unreachable} {_redact(url)}: {_first(getattr(e, 'orig', e))}"
                               f"{self.unreachable_hint}") from None
        except sqlalchemy.exc.SQLAlchemyError as e:
            raise StorageError(f"study database {_redact(url)}: {_first(e)}") from None
        except ImportError as e:
            raise BackendUnavailableError(f"storage {_redact(url)}: driver missing ({e}){self.driver_hint}") from None
        except (ValueError, TypeError) as e:  # a malformed URL (a port that is no number, an open bracket)
            raise StorageError(f"invalid storage URL {_redact(url)!r}: {_first(e)}") from None


@STORAGES.register
class SQLiteStorage(_RDB):
    """One SQLite file: the default; the parent folder is created."""

    scheme = "sqlite"
    multi_host = False
    description = "SQLite file (default): sqlite:///runs/studies/NAME.db"

    unreachable = "cannot use the study database"
    unreachable_hint = ""  # a file: the cause (disk full, read-only, not a database) says it all

    def local_path(self, url: str) -> Path | None:
        """The file SQLAlchemy opens for ``url`` (its ``%XX`` escapes decoded, as SQLAlchemy decodes them)."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            path = make_url(url).database or ""
        except ArgumentError:
            path = url.split(":///", 1)[1] if ":///" in url else ""
        return Path(path) if path and path != ":memory:" else None

    def connect_url(self, url: str, read_only: bool) -> str:
        path = self.local_path(url)
        if not read_only or path is None:
            return url
        from urllib.parse import quote

        # SQLite decodes %XX in a file: URI too, so the path is quoted for SQLite, then for SQLAlchemy
        return sqlite_url(f"file:{quote(str(path))}", {"mode": "ro", "uri": "true"})

    def open(self, url: str, read_only: bool = False) -> BaseStorage:
        path = self.local_path(url)
        if path is None:
            raise StorageError(f"storage {url!r} is an in-memory database, which vanishes with the process; "
                               "give a file: sqlite:///runs/studies/NAME.db")
        if not read_only:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(f"cannot create the folder of {path}: {e.strerror}") from None
        return super().open(url, read_only)


@STORAGES.register
class PostgresStorage(_RDB):
    """A PostgreSQL server (many workers on many machines); driver from ``revit[postgres]``."""

    scheme = "postgresql"
    multi_host = True
    description = "PostgreSQL server: postgresql://USER[:PASSWORD]@HOST:PORT/DB (pip install 'revit[postgres]')"
    driver_hint = "; the driver comes with pip install 'revit[postgres]'"

    def open(self, url: str, read_only: bool = False) -> BaseStorage:
        return super().open(self.with_driver(url), read_only)

    def engine_kwargs(self) -> dict[str, Any]:
        # an unreachable host fails in 10 s instead of the OS's TCP timeout
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}

    @staticmethod
    def with_driver(url: str) -> str:
        """``postgresql://`` with the installed driver made explicit.

        SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, while ``revit[postgres]``
        installs psycopg2; a URL naming its driver (``postgresql+psycopg://``) is kept as given.
        """
        import importlib.util

        scheme, rest = url.split("://", 1)
        if "+" in scheme:
            return url
        for module, dialect in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
            if importlib.util.find_spec(module) is not None:
                return f"postgresql+{dialect}://{rest}"
        raise BackendUnavailableError("PostgreSQL storage needs a driver: pip install 'revit[postgres]' "
                                      "(psycopg2-binary)")


@STORAGES.register
class MySQLStorage(_RDB):
    """A MySQL/MariaDB server through SQLAlchemy (driver installed by the user, e.g. PyMySQL)."""

    scheme = "mysql"
    multi_host = True
    description = "MySQL server: mysql+pymysql://USER:PASSWORD@HOST/DB (install the driver yourself)"


@STORAGES.register
class JournalStorage(StorageBackend):
    """Optuna's journal file: append-only log with a file lock (one machine or a shared disk)."""

    scheme = "journal"
    multi_host = True  # on a shared disk with working links/locks
    description = "journal file: journal:runs/studies/NAME.log (many processes, one disk)"

    def local_path(self, url: str) -> Path | None:
        rest = url.split(":", 1)[1]
        if rest.startswith("//"):
            rest = rest[2:]  # journal:///abs/path -> /abs/path, journal://rel -> rel
        if not rest:
            raise StorageError("journal storage needs a file path: journal:runs/studies/NAME.log")
        return Path(rest)

    def open(self, url: str, read_only: bool = False) -> BaseStorage:
        from optuna.storages import JournalStorage as _Journal
        from optuna.storages.journal import JournalFileBackend

        from revit.search.journal import check_journal, release_dangling_lock, repair_torn_tail

        path = self.local_path(url)
        assert path is not None
        check_journal(path)
        try:
            if not read_only:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "ab"):
                    pass
                release_dangling_lock(path)
                repair_torn_tail(path.absolute())
            # Optuna's lock link points at the path it is given: an absolute one never dangles
            return _Journal(JournalFileBackend(str(path.absolute())))
        except OSError as e:
            raise StorageError(f"cannot open the journal file {path}: {e.strerror}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise StorageError(f"journal file {path} is corrupt: {_first(e)}") from None
        except (KeyError, TypeError, AttributeError, IndexError, AssertionError) as e:
            # Optuna replays every record as it opens the journal; a record of a shape it does not know (an
            # unknown op_code, a missing trial_id, a line that is no object) fails there, with these types
            raise StorageError(f"journal file {path} is corrupt: a record Optuna cannot replay "
                               f"({type(e).__name__}: {_first(e)})") from None


_SUFFIXES = {".db": "sqlite", ".sqlite": "sqlite", ".sqlite3": "sqlite",
             ".log": "journal", ".journal": "journal", ".jsonl": "journal"}


def _first(e: object) -> str:
    """The first line of an error, at most 200 characters."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def sqlite_url(path: str, query: dict[str, str] | None = None) -> str:
    """The SQLite URL of a file path, taken literally: SQLAlchemy's own builder quotes ``%`` and the like,
    which its parser would otherwise decode (``100%41.db`` is not ``100A.db``)."""
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=path, query=query or {}).render_as_string(hide_password=False)


def normalize_url(url: str) -> str:
    """A storage URL with bare paths turned into ``sqlite:///`` or ``journal:`` URLs."""
    if url.startswith("postgres://"):
        return "postgresql://" + url[len("postgres://"):]
    if _SCHEME.match(url) and "://" in url or url.startswith("journal:"):
        return url
    if any(c in url for c in "?#"):
        raise StorageError(f"storage path {url[:80]!r} has '?' or '#', which a database URL reads as the start of "
                           "its options; rename the file")
    suffix = Path(url).suffix.lower()
    if suffix in _SUFFIXES:
        kind = _SUFFIXES[suffix]
        return sqlite_url(url) if kind == "sqlite" else f"journal:{url}"
    raise UnknownNameError(f"storage {url!r}: not a URL and not a file ending in "
                           f"{', '.join(_SUFFIXES)}; known schemes: {', '.join(STORAGES.names())}")


def backend_for(url: str) -> StorageBackend:
    """The registered backend for ``url`` (``postgresql+psycopg2://`` -> ``postgresql``)."""
    m = _SCHEME.match(url)
    if not m:
        raise UnknownNameError(f"storage {url!r} has no scheme; known: {', '.join(STORAGES.names())}")
    scheme = m.group(1).lower()
    if scheme == "postgres":
        scheme = "postgresql"
    try:
        return STORAGES.get(scheme)()
    except UnknownNameError:
        raise UnknownNameError(f"unknown storage {scheme!r} in {_redact(url)!r}; known: "
                               f"{', '.join(STORAGES.names())} (or a path ending in .db or .log)") from None


def open_storage(url: str, read_only: bool = False) -> BaseStorage:
    """Open the storage at ``url`` (a URL or a ``.db``/``.log`` path); see :class:`StorageBackend`.

    ``read_only``: never write (no tables created, no journal repaired), as a report must not.
    """
    url = normalize_url(os.fspath(url))
    return backend_for(url).open(url, read_only)


def default_storage(study_name: str, root: str | os.PathLike[str] = "runs/studies") -> str:
    """The default storage of a study: an SQLite file named after it."""
    return sqlite_url(f"{Path(root) / study_name}.db")


__all__ = ["STORAGES", "StorageBackend", "backend_for", "default_storage", "normalize_url", "open_storage",
           "sqlite_url"]
