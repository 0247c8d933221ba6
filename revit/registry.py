"""One generic name -> object registry, used by every pluggable family (backends, criteria, ...).

The built-in members register themselves with :meth:`Registry.register` when their module is
imported.  A registry with an entry-point ``group`` (``revit.criteria``, ``revit.backends``,
``revit.rule_families``) also lists the entry points that installed packages declare in that group,
so a user's own package adds a member without editing revit: the group is read once, on the first
question asked of the registry, and each entry point is imported only when its member is used.

:func:`lazy_choices` lets a command-line parser take its choices from a registry whose module is
heavy (torch): nothing is imported until the value is checked or the help is printed.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from revit.errors import ConfigError, UnknownNameError

T = TypeVar("T")

log = logging.getLogger(__name__)

# the entry-point groups a package uses to add to revit (its pyproject's [project.entry-points."revit.criteria"])
CRITERIA_GROUP = "revit.criteria"
BACKENDS_GROUP = "revit.backends"
RULE_FAMILIES_GROUP = "revit.rule_families"


class Registry(Generic[T]):
    """Maps names to classes (or factories) of one family; unknown names list the valid ones."""

    def __init__(self, family: str, group: str | None = None) -> None:
        self.family = family
        self.group = group
        self._items: dict[str, T] = {}
        self._pending: dict[str, EntryPoint] = {}  # entry points listed, not imported yet
        self._scanned = group is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``; registering a name twice is a bug."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.family} {name!r} is already registered")
            self._items[name] = obj
            self._pending.pop(name, None)
            return obj

        return deco

    def _scan(self) -> None:
        """Read this registry's entry-point group (once); a name already registered keeps its member."""
        if self._scanned:
            return
        self._scanned = True
        for ep in entry_points(group=str(self.group)):
            if ep.name in self._items or ep.name in self._pending:
                log.warning("ignoring entry point %s = %s: %s %r is already registered", ep.name, ep.value,
                            self.family, ep.name)
                continue
            self._pending[ep.name] = ep

    def get(self, name: str) -> T:
        self._scan()
        if name in self._pending and name not in self._items:
            ep = self._pending[name]
            try:
                obj = ep.load()
            except Exception as e:  # noqa: BLE001 - a broken plugin is named, whatever it raised
                raise ConfigError(f"{self.family} {name!r} (entry point {ep.value} in group {self.group}) "
                                  f"failed to load: {type(e).__name__}: {e}") from e
            self.register(name)(obj)
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.family} {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        self._scan()
        return sorted({*self._items, *self._pending})

    def name_of(self, obj: object) -> str | None:
        """The name ``obj`` is registered under (None when it is not registered)."""
        return next((n for n, o in self._items.items() if o is obj), None)

    def __contains__(self, name: object) -> bool:
        self._scan()
        return name in self._items or name in self._pending

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


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
