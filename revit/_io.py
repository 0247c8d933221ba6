"""File helpers shared by every format: atomic writes, YAML/JSON loading with schema checks."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from revit.errors import FileFormatError, check_keys


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename, so a crash never leaves half a file."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on any failure it is removed.

    For writers that take a file name (``safetensors.save_file``, ``torch.save``, ONNX): a crash never
    leaves half a file and never touches an existing one.  An unwritable destination (a folder given
    as a file, a read-only or full disk) is one :class:`~revit.errors.OutputError` line naming ``path``.
    """
    from revit.validation import check_output_file, output_error

    p = check_output_file(path, "output")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=suffix)
    except OSError as e:
        raise output_error(e, path) from None
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file gets the usual mode
        os.close(fd)
        yield tmp
        os.replace(tmp, p)
    except OSError as e:
        raise output_error(e, path) from None
    except Exception:
        if _disk_full(p.parent):  # writers that wrap ENOSPC in their own errors (torch.save, safetensors)
            raise output_error(OSError(errno.ENOSPC, "no space left on device"), path) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _disk_full(folder: Path) -> bool:
    """Whether ``folder``'s file system has (almost) no space left: the cause of a writer's own error."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 16)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_text(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise FileFormatError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{path}: cannot read ({e})") from None


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text strictly: a syntax error or a key given twice is a one-line :class:`FileFormatError`."""
    import yaml

    class _Strict(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: set[Any] = set()
        for k, _ in node.value:
            key = loader.construct_object(k)
            if key in seen:
                raise FileFormatError(f"{source}: line {k.start_mark.line + 1}: key {key!r} is given twice")
            seen.add(key)
        return loader.construct_mapping(node)

    _Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(text, Loader=_Strict)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise FileFormatError(f"{source}:{where} malformed YAML ({problem})") from None


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file strictly (see :func:`parse_yaml`)."""
    return parse_yaml(read_text(path), str(path))


def load_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file strictly: a syntax error or a key given twice in one object is one line."""
    text = read_text(path)

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise FileFormatError(f"{path}: key {k!r} is given twice in one object")
            out[k] = v
        return out

    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None


def dump_yaml(doc: Any) -> str:
    import yaml

    return str(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100))


def check_schema(doc: Any, kind: str, source: str = "document", keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Check that ``doc`` is a mapping carrying ``schema: revit/<kind>/v1`` (and ``kind``, when it has one,
    equal to ``kind``), with no keys outside ``keys`` when given; return it."""
    if not isinstance(doc, dict):
        raise FileFormatError(f"{source}: expected a mapping with 'schema: revit/{kind}/v1'")
    schema = doc.get("schema")
    want = f"revit/{kind}/v1"
    if schema != want:
        if isinstance(schema, str) and schema.startswith(f"revit/{kind}/"):
            raise FileFormatError(f"{source}: unsupported schema version {schema!r} (this revit reads {want!r})")
        raise FileFormatError(f"{source}: schema is {schema!r}, expected {want!r}")
    if keys is not None:
        check_keys(doc, keys, source, error=FileFormatError)
    if doc.get("kind", kind) != kind:
        raise FileFormatError(f"{source}: kind is {doc.get('kind')!r}, expected {kind!r}")
    return doc
