"""File helpers shared by every format: atomic writes, YAML/JSON loading with schema checks."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from revit.errors import FileFormatError, OutputError, RevitError, check_keys

RESUME_HINT = "free space or fix permissions, then rerun with --resume"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], suffix: str = ".tmp", *, hint: str | None = None) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on any failure it is removed.

    The one atomic writer, for writers that take a file name (``safetensors.save_file``, ``torch.save``, ONNX,
    ``savefig``): a crash never leaves half a file and never touches an existing one.  An unwritable destination
    (a folder given as a file, a read-only or full disk) is one :class:`~revit.errors.OutputError` line naming
    ``path``, with ``hint`` as its fix when given (a run's :data:`RESUME_HINT`).
    """
    try:
        with _atomic_output(path, suffix) as tmp:
            yield tmp
    except OutputError as e:
        if hint is None:
            raise
        raise OutputError(e.message, hint=hint) from None


@contextlib.contextmanager
def _atomic_output(path: str | os.PathLike[str], suffix: str) -> Iterator[Path]:
    from revit.input_checks import check_output_file, output_error

    p = check_output_file(path, "output")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=suffix)
    except OSError as e:
        raise output_error(e, path) from None
    tmp = Path(name)
    try:
        with writer_errors(path):
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a saved file gets the usual mode
            os.close(fd)
            yield tmp
            os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def writer_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Make a writer's failure to write ``path`` one :class:`OutputError` line: an ``OSError``, or (a full disk)
    the error of a writer that wraps ENOSPC in its own type (``torch.save``, safetensors' ``SafetensorError``)."""
    from revit.input_checks import output_error

    try:
        yield
    except RevitError:
        raise
    except OSError as e:
        raise output_error(e, path) from None
    except Exception:
        if _disk_full(Path(path).parent):
            raise output_error(OSError(errno.ENOSPC, "no space left on device"), path) from None
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_output` (synced to disk before the rename)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(text.encode())
        f.flush()
        os.fsync(f.fileno())


def append_text(path: str | os.PathLike[str], text: str, *, fsync: bool = False) -> None:
    """Append ``text`` to ``path`` in one write, never through a symlink (``O_NOFOLLOW``): a link planted
    where a log goes cannot make revit write outside its folder."""
    from revit.input_checks import output_error

    fd = open_no_follow(path, os.O_APPEND)
    try:
        os.write(fd, text.encode())
        if fsync:
            os.fsync(fd)
    except OSError as e:
        raise output_error(e, path) from None
    finally:
        os.close(fd)


def open_no_follow(path: str | os.PathLike[str], mode: int) -> int:
    """A descriptor for writing ``path`` (created if missing; ``mode``: ``os.O_APPEND`` or ``os.O_TRUNC``), never
    through a symlink (``O_NOFOLLOW``); a link or an unwritable path is one OutputError line."""
    from revit.input_checks import output_error

    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | mode | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"cannot write {path}: it is a symbolic link; revit never writes through one") \
                from None
        raise output_error(e, path) from None


def open_new_text(path: str | os.PathLike[str]) -> Any:
    """A fresh text file for writing (truncated), never opened through a symlink (``O_NOFOLLOW``)."""
    return os.fdopen(open_no_follow(path, os.O_TRUNC), "w")


def _disk_full(folder: Path) -> bool:
    """Whether ``folder``'s file system has (almost) no space left: the cause of a writer's own error."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 16)


def current_umask() -> int:
    """The process's umask (read by setting and restoring it): what a file or folder revit makes should honour."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# limits on what a file may hold: a hostile file is refused in one line, never exhausts the machine
MAX_FILE_BYTES = 256 << 20  # any YAML/JSON/JSONL file revit reads
MAX_YAML_NODES = 1_000_000  # YAML nodes after alias expansion ("billion laughs" stops here)
MAX_DEPTH = 100  # nesting of lists and mappings (revit's deepest format, a table, nests 6)
MAX_JSON_VALUES = 1_000_000  # JSON values in one document or line (a full-grid DeiT table holds about 200k)


def format_limit(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"


def read_bytes(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """A file's bytes, refused in one line when missing, unreadable or larger than ``limit``
    (default :data:`MAX_FILE_BYTES`)."""
    limit = MAX_FILE_BYTES if limit is None else limit
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise FileFormatError(f"{path}: {size} bytes, more than the {format_limit(limit)} revit reads")
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise FileFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FileFormatError(f"{path}: is a folder, not a file") from None
    except OSError as e:
        raise FileFormatError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    if len(data) > limit:  # a file that grew, or a pipe
        raise FileFormatError(f"{path}: more than the {format_limit(limit)} revit reads")
    return data


def read_text(path: str | os.PathLike[str], limit: int | None = None) -> str:
    """A UTF-8 text file (see :func:`read_bytes`); binary bytes are one line, not a UnicodeDecodeError."""
    data = read_bytes(path, limit)
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{path}: not a UTF-8 text file (byte {e.start} is not text)") from None


def check_depth(doc: Any, source: str, limit: int = MAX_DEPTH) -> None:
    """Refuse a document whose lists and mappings nest deeper than ``limit`` (iterative: no recursion)."""
    stack = [(doc, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (list, tuple, dict)):
            if d > limit:
                raise FileFormatError(f"{source}: nested more than {limit} levels deep")
            stack.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))


def _yaml_node_limits(root: Any, source: str) -> None:
    """Refuse a YAML node graph that expands (aliases counted at every use) to more than
    :data:`MAX_YAML_NODES` nodes, nests deeper than :data:`MAX_DEPTH`, or refers to itself."""
    import yaml

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    busy: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        kids = ([c for kv in node.value for c in kv] if isinstance(node, yaml.MappingNode)
                else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if done:
            busy.discard(id(node))
            size[id(node)] = min(1 + sum(size[id(c)] for c in kids), MAX_YAML_NODES + 1)
            depth[id(node)] = 1 + max((depth[id(c)] for c in kids), default=0)
            if size[id(node)] > MAX_YAML_NODES:
                raise FileFormatError(f"{source}: expands to more than {MAX_YAML_NODES} YAML nodes (aliases "
                                      "counted at every use); refused")
            if depth[id(node)] > MAX_DEPTH:
                raise FileFormatError(f"{source}: nested more than {MAX_DEPTH} levels deep")
            continue
        if id(node) in size:
            continue
        if id(node) in busy:
            raise FileFormatError(f"{source}: line {node.start_mark.line + 1}: an alias refers to a node that "
                                  "contains it (a recursive structure)")
        busy.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in kids if id(c) not in size)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text strictly: a syntax error, a key given twice, a key that is not a scalar, an alias bomb or
    nesting past :data:`MAX_DEPTH` is a one-line :class:`FileFormatError` (SafeLoader: no Python objects)."""
    import yaml

    from revit.input_checks import short

    class _Strict(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: set[Any] = set()
        for k, _ in node.value:
            if not isinstance(k, yaml.ScalarNode):
                what = "list" if isinstance(k, yaml.SequenceNode) else "mapping"
                raise FileFormatError(f"{source}: line {k.start_mark.line + 1}: a key must be a string or a "
                                      f"number, not a {what}")
            key = loader.construct_object(k)
            if key in seen:
                raise FileFormatError(f"{source}: line {k.start_mark.line + 1}: key {short(key)} is given twice")
            seen.add(key)
        return loader.construct_mapping(node)

    _Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    loader = _Strict(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _yaml_node_limits(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise FileFormatError(f"{source}:{where} malformed YAML ({short(problem, 120, quote=False)})") from None
    except RecursionError:
        raise FileFormatError(f"{source}: nested too deeply to parse") from None
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file strictly (see :func:`parse_yaml`), read with :func:`read_text`'s limits."""
    return parse_yaml(read_text(path), str(path))


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_STRING_BYTES = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _json_value_bound(text: str | bytes) -> int:
    """An upper bound on the values in JSON ``text``: each value but the first of a container follows a comma,
    and each container adds at most its first one (commas inside strings make it only larger)."""
    if isinstance(text, bytes):
        return text.count(b",") + text.count(b"[") + text.count(b"{") + 1
    return text.count(",") + text.count("[") + text.count("{") + 1


def check_json_values(text: str | bytes, source: str, limit: int = MAX_JSON_VALUES) -> None:
    """Refuse JSON ``text`` holding more than ``limit`` values (arrays, objects, scalars; keys not counted),
    counted on the text before parsing, so a 60 MB ``[{}, {}, ...]`` never becomes 3 GB of Python objects.

    The count is a few ``str.count`` passes; only text above the limit has the commas and brackets inside its
    strings (which are not values) counted and taken off, one string at a time."""
    bound = _json_value_bound(text)
    if bound <= limit:
        return
    strings = _JSON_STRING_BYTES.finditer(text) if isinstance(text, bytes) else _JSON_STRING.finditer(text)
    if bound - sum(_json_value_bound(m.group()) - 1 for m in strings) > limit:
        raise FileFormatError(f"{source}: holds more than {limit} JSON values; refused")


def parse_json(text: str | bytes, source: str) -> Any:
    """Parse JSON strictly: a syntax error, a key given twice in one object, more than :data:`MAX_JSON_VALUES`
    values or nesting past :data:`MAX_DEPTH` is one line."""
    from revit.input_checks import short

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise FileFormatError(f"{source}: key {short(k)} is given twice in one object")
            out[k] = v
        return out

    check_json_values(text, source)
    try:
        doc = json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{source}: malformed JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise FileFormatError(f"{source}: nested too deeply to parse") from None
    except ValueError as e:  # bytes that are not text, a number of more than 4300 digits
        raise FileFormatError(f"{source}: malformed JSON ({short(str(e), 100, quote=False)})") from None
    check_depth(doc, source)
    return doc


def load_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file strictly (see :func:`parse_json`), read with :func:`read_text`'s limits."""
    return parse_json(read_text(path), str(path))


def _non_finite(obj: Any) -> str | None:
    """The path (``rows[3].error``) of the first NaN or infinite float in ``obj``, or None (iterative)."""
    import math

    stack: list[tuple[Any, str]] = [(obj, "")]
    while stack:
        x, where = stack.pop()
        if isinstance(x, float) and not math.isfinite(x):
            return where or "the value"
        if isinstance(x, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in reversed(x.items()))
        elif isinstance(x, (list, tuple)):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(x))))
    return None


def finite_or_null(doc: Any) -> Any:
    """``doc`` with every NaN or infinite number replaced by None (tuples become lists): strict JSON has no NaN,
    and a value that does not exist (a spread of one seed, the loss of a diverged batch) is null."""
    import math

    if isinstance(doc, float) and not math.isfinite(doc):
        return None
    if isinstance(doc, dict):
        return {k: finite_or_null(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [finite_or_null(v) for v in doc]
    return doc


def dumps_json(obj: Any, what: str = "the output", *, nonfinite: str = "refuse", **kwargs: Any) -> str:
    """``obj`` serialised as strict JSON: a NaN or an infinity is refused in one line (``nonfinite="refuse"``:
    Python would write ``NaN``/``Infinity``, which other readers reject, and a prediction or report that is not
    finite is not an answer) or written as null (``"null"``: logs and records, where it means "no value")."""
    from revit.errors import ConfigError

    if nonfinite == "null":
        obj = finite_or_null(obj)
    bad = _non_finite(obj)
    if bad is not None:
        raise ConfigError(f"{what}: {bad} is not a finite number; refused (JSON has no NaN or Infinity)")
    return json.dumps(obj, allow_nan=False, **kwargs)


def dump_yaml(doc: Any) -> str:
    import yaml

    return str(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100))


def check_schema(doc: Any, kind: str, source: str = "document", keys: Sequence[str] | None = None,
                 versions: Sequence[int] = (1,)) -> dict[str, Any]:
    """Check that ``doc`` is a mapping carrying ``schema: revit/<kind>/v<N>`` for an ``N`` in ``versions`` (and
    ``kind``, when it has one, equal to ``kind``), with no keys outside ``keys`` when given; return it."""
    wants = [f"revit/{kind}/v{n}" for n in versions]
    want = " or ".join(repr(w) for w in wants)
    if not isinstance(doc, dict):
        raise FileFormatError(f"{source}: expected a mapping with 'schema: {wants[-1]}'")
    schema = doc.get("schema")
    if schema not in wants:
        if isinstance(schema, str) and schema.startswith(f"revit/{kind}/"):
            raise FileFormatError(f"{source}: unsupported schema version {schema!r} (this revit reads {want})")
        raise FileFormatError(f"{source}: schema is {schema!r}, expected {want}")
    if keys is not None:
        check_keys(doc, keys, source, error=FileFormatError)
    if doc.get("kind", kind) != kind:
        raise FileFormatError(f"{source}: kind is {doc.get('kind')!r}, expected {kind!r}")
    return doc
