"""One generic name -> object registry, used by every pluggable family (backends, criteria, ...).

The built-in members register themselves with :meth:`Registry.register` when their module is
imported.  A registry with an entry-point ``group`` (``revit.criteria``, ``revit.backends``,
``revit.rule_families``) also lists the entry points that installed packages declare in that group,
so a user's own package adds a member without editing revit: the group is read once, on the first
question asked of the registry, and each entry point is imported only when its member is used.

A name is written once: a built-in class carries it (``name = "hessian"``, or the registry's ``key``
attribute, e.g. a storage's ``scheme``) and ``@REGISTRY.register`` reads it; an entry point's name is the
name of the class it loads (the registry sets the attribute when the class leaves it out).  Every member
has a ``description`` (its class attribute, else the first line of its docstring) that ``--help`` and the
list commands show (:meth:`Registry.catalogue`).

:func:`lazy_choices` lets a command-line parser take its choices from a registry whose module is
heavy (torch): nothing is imported until the value is checked or the help is printed.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from revit.errors import ConfigError, UnknownNameError

T = TypeVar("T")

log = logging.getLogger(__name__)

# the entry-point groups a package uses to add to revit (its pyproject's [project.entry-points."revit.criteria"])
CRITERIA_GROUP = "revit.criteria"
BACKENDS_GROUP = "revit.backends"
RULE_FAMILIES_GROUP = "revit.rule_families"
SAMPLERS_GROUP = "revit.samplers"
OPTUNA_PRUNERS_GROUP = "revit.optuna_pruners"


class Registry(Generic[T]):
    """Maps names to classes (or factories) of one family; unknown names list the valid ones.

    A plug-in fails alone: an entry point that raises (or calls ``sys.exit``) on import, that is not a
    subclass of ``base``, or whose name is taken already, is *broken*: a command that names it gets one
    :class:`~revit.errors.ConfigError` line naming its package, :meth:`broken` lists it for the list
    commands, and :meth:`loaded` (what iterating code uses) leaves it out.  A built-in keeps its name.
    """

    def __init__(self, family: str, group: str | None = None, base: type | None = None, key: str = "name") -> None:
        self.family = family
        self.group = group
        self.base = base  # what a member loaded from an entry point must subclass (None: anything)
        self.key = key  # the class attribute that holds a member's name
        self._items: dict[str, T] = {}
        self._pending: dict[str, EntryPoint] = {}  # entry points listed, not imported yet
        self._broken: dict[str, str] = {}  # a broken entry point's name -> the line saying why
        self._ignored: dict[str, str] = {}  # "NAME (package)" of an entry point whose name was taken -> why
        self._scanned = group is None

    def register(self, obj: T) -> T:
        """Class decorator: register ``obj`` under the name it carries (its :attr:`key` attribute) and its
        ``aliases``; registering a name twice is a bug."""
        name = getattr(obj, self.key, None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.family} {obj!r} has no {self.key!r}: give the class {self.key} = \"NAME\"")
        for n in (name, *getattr(obj, "aliases", ())):
            self._add(n, obj)
        return obj

    def _add(self, name: str, obj: T) -> None:
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.family} {name!r} is already registered")
        self._items[name] = obj
        self._pending.pop(name, None)

    def _scan(self) -> None:
        """Read this registry's entry-point group (once); a name already registered keeps its member, and the
        entry point that wanted it is listed as broken."""
        if self._scanned:
            return
        self._scanned = True
        for ep in entry_points(group=str(self.group)):
            if ep.name in self._items or ep.name in self._pending:
                owner = "a built-in" if ep.name in self._items else f"package {_package(self._pending[ep.name])}"
                line = (f"{self._where(ep)} is ignored: the name {ep.name!r} is taken by {owner} {self.family}; "
                        "rename the entry point")
                log.debug("%s", line)  # shown by the list commands; a warning would be noise everywhere
                self._ignored[f"{ep.name} ({_package(ep)})"] = line
                continue
            self._pending[ep.name] = ep

    def _where(self, ep: EntryPoint) -> str:
        """``rule family 'x' (entry point m:X of package p)``: a plug-in as its one line names it."""
        return f"{self.family} {ep.name!r} (entry point {ep.value} of package {_package(ep)})"

    def _load(self, name: str) -> None:
        """Import the entry point of ``name`` and check its kind; a failure makes it broken, in one line."""
        ep = self._pending.pop(name)
        try:
            obj = ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - whatever a plug-in raises (SystemExit too), it fails alone
            from revit.input_checks import short

            self._broken[name] = (f"{self._where(ep)} failed to load: {type(e).__name__}: "
                                  f"{short(str(e), 200, quote=False)}")
            return
        problem = self._kind_problem(obj) or self._name_problem(obj, name)
        if problem:
            self._broken[name] = f"{self._where(ep)} {problem}"
            return
        if isinstance(obj, type) and not vars(obj).get(self.key):
            setattr(obj, self.key, name)  # the entry point names it: the class need not say it again
        self._add(name, obj)

    def _name_problem(self, obj: Any, name: str) -> str | None:
        """Why a class that names itself otherwise than its entry point cannot be a member, or None."""
        own = vars(obj).get(self.key) if isinstance(obj, type) else None
        if own and own != name:
            return (f"calls itself {own!r}: write the name once, in the entry point (leave out {self.key} = "
                    f"{own!r}, or name the entry point {own!r})")
        return None

    def _kind_problem(self, obj: Any) -> str | None:
        """Why ``obj`` cannot be a member (an int, a function, an unrelated or abstract class), or None."""
        import inspect

        if self.base is None:
            return None
        want = f"a subclass of {self.base.__module__}.{self.base.__qualname__}"
        if not isinstance(obj, type):
            return f"is {_describe(obj)}, not {want}"
        if not issubclass(obj, self.base):
            return f"is the class {obj.__module__}.{obj.__qualname__}, not {want}"
        if inspect.isabstract(obj):
            missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
            return f"is an abstract class (it does not define {missing})"
        return None

    def get(self, name: str) -> T:
        self._scan()
        if name in self._pending and name not in self._items:
            self._load(name)
        if name in self._broken:
            raise ConfigError(self._broken[name])
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.family} {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Every name a command may give: the members, the entry points not imported yet and the broken ones
        (naming one gives its one-line reason, not "unknown")."""
        self._scan()
        return sorted({*self._items, *self._pending, *self._broken})

    def loaded(self) -> dict[str, T]:
        """Every member that can be used, by name, each entry point imported; broken ones are left out
        (see :meth:`broken`), so code that goes through all members never fails for a plug-in."""
        self._scan()
        for name in list(self._pending):
            self._load(name)
        return {n: self._items[n] for n in sorted(self._items)}

    def broken(self) -> dict[str, str]:
        """The broken entry points (after :meth:`loaded` imported them), by name (``NAME (package)`` for one
        whose name was taken), and the line saying why."""
        self.loaded()
        return dict(sorted({**self._broken, **self._ignored}.items()))

    def describe(self, name: str) -> str:
        """What member ``name`` is, in a line: its ``description``, else its docstring's first line (a broken
        entry point: the line saying why)."""
        try:
            obj = self.get(name)
        except (ConfigError, UnknownNameError) as e:
            return str(e)
        return describe(obj)

    def catalogue(self) -> list[dict[str, Any]]:
        """Every usable member once (aliases folded in): ``name``, ``aliases``, ``description`` and its declared
        ``options`` (``Option`` objects, when the class has ``option_specs``), for the list commands and help."""
        rows = []
        for name, obj in self.loaded().items():
            if self.name_of(obj) != name:
                continue  # an alias
            aliases = [n for n, o in self._items.items() if o is obj and n != name]
            rows.append({"name": name, "aliases": aliases, "description": describe(obj),
                         "options": list(getattr(obj, "option_specs", ()))})
        return rows

    def name_of(self, obj: object) -> str | None:
        """The name ``obj`` is registered under (None when it is not registered)."""
        return next((n for n, o in self._items.items() if o is obj), None)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def _package(ep: EntryPoint) -> str:
    """The distribution that declares ``ep`` (its module's top package when the metadata does not say)."""
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return str(name) if name else ep.module.split(".")[0]


def describe(obj: Any) -> str:
    """A member's ``description`` attribute, else the first line of its docstring (else "")."""
    text = getattr(obj, "description", None)
    if isinstance(text, str) and text:
        return text
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _describe(obj: Any) -> str:
    """A few words for a loaded object that is not a class: ``an int (3)``, ``a function (make_thing)``."""
    from revit.input_checks import short

    kind = type(obj).__name__
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind} ({getattr(obj, '__qualname__', None) or short(obj, 40)})"


class lazy_choices:  # noqa: N801 - used like a function: choices=lazy_choices("module", "REGISTRY")
    """A registry's names, imported from ``module`` only when asked (argparse ``choices``).

    argparse tests a given value with ``in`` and lists the choices by iterating, both only when the
    option is used or the help is printed, so building the parser imports nothing heavy (give the
    option a ``metavar``: without one, argparse lists the choices while adding the option).
    """

    def __init__(self, module: str, attr: str) -> None:
        self.module, self.attr = module, attr

    def registry(self) -> Registry[Any]:
        reg = getattr(importlib.import_module(self.module), self.attr)
        if not isinstance(reg, Registry):
            raise TypeError(f"{self.module}.{self.attr} is not a Registry")
        return reg

    def __contains__(self, name: object) -> bool:
        return name in self.registry()

    def __iter__(self) -> Iterator[str]:
        return iter(self.registry().names())

    def __len__(self) -> int:
        return len(self.registry())
