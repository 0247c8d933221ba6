"""Options a plug-in declares for itself: name, default, help text; parsed from the command line or checked as given.

A latency backend (``Backend.option_specs``) and an importance criterion (``Criterion.option_specs``) list
their keyword options as :class:`Option` objects.  The command line turns a backend's options into flags of
``revit latency build`` and a criterion's into ``revit prune --criterion-option KEY=VALUE``; the library
checks the same declaration (:func:`check_options`), so a value is validated once, the same way everywhere.
Torch-free: the CLI reads declarations without importing a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from revit.errors import ConfigError

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@dataclass(frozen=True)
class Option:
    """One keyword option of a plug-in: its ``default`` gives its type (bool, int, float or str);
    ``choices`` limits a str option; ``help`` is what ``--help`` and the list commands show."""

    name: str
    default: bool | int | float | str
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        """The command-line flag of a backend option: ``cuda_graphs`` -> ``--cuda-graphs``."""
        return "--" + self.name.replace("_", "-")

    @property
    def default_text(self) -> str:
        """The default as a user types it (``true``, ``1024``, ``shared``)."""
        return str(self.default).lower() if isinstance(self.default, bool) else str(self.default)

    @property
    def kind(self) -> str:
        """``bool``, ``int``, ``float`` or ``str``: the type a value must have."""
        return type(self.default).__name__

    def parse(self, value: Any, where: str) -> Any:
        """``value`` (a command-line string, or a value given in Python/YAML) as this option's type; a value
        of another type, a non-finite number or a choice not offered is one :class:`ConfigError` line."""
        text = str(value)[:60]
        if isinstance(self.default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
                return value.lower() in _TRUE
            raise ConfigError(f"{where}: {self.name} must be true or false, got {text!r}")
        if isinstance(self.default, (int, float)):
            return self._number(value, where, text)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {self.name} must be a string, got {text!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where}: {self.name} must be one of {', '.join(self.choices)}, got {text!r}")
        return value

    def _number(self, value: Any, where: str, text: str) -> int | float:
        want_int = isinstance(self.default, int)
        try:
            if isinstance(value, bool):
                raise ValueError
            number = int(value) if want_int and not isinstance(value, float) else float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where}: {self.name} must be {'an integer' if want_int else 'a number'}, "
                              f"got {text!r}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(f"{where}: {self.name} must be a finite number, got {text!r}")
        return number


def check_options(specs: Sequence[Option], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Every declared option's value: ``given`` parsed (:meth:`Option.parse`) over the defaults; an unknown
    key is one line naming the declared ones (``where``: the plug-in, as the error names it)."""
    by_name = {o.name: o for o in specs}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        known = ", ".join(by_name) or "none"
        raise ConfigError(f"{where} has no option {unknown[0]!r}; its options: {known}")
    return {name: o.parse(given[name], where) if name in given else o.default for name, o in by_name.items()}


def parse_assignments(words: Iterable[str], flag: str) -> dict[str, str]:
    """``["k=v", ...]`` (a repeatable ``flag KEY=VALUE``) as a dict; a word without ``=`` or a key given twice
    is one line."""
    out: dict[str, str] = {}
    for w in words:
        key, eq, value = w.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{flag} takes KEY=VALUE, got {w[:60]!r}")
        if key.strip() in out:
            raise ConfigError(f"{flag} {key.strip()} is given twice")
        out[key.strip()] = value
    return out


def describe_options(specs: Sequence[Option]) -> list[str]:
    """One line per option, ``name=default  help`` (for the list commands)."""
    return [f"{o.name}={o.default_text}  {o.help}" for o in specs]


__all__ = ["Option", "check_options", "describe_options", "parse_assignments"]
