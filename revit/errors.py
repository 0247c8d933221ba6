"""One exception hierarchy: every error a user can cause is a :class:`RevitError`.

The CLI turns a ``RevitError`` into one line on stderr and exit code 2; anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Iterable


class RevitError(Exception):
    """Base of every error caused by bad input or an unusable environment.

    ``message`` says what is wrong and ``hint`` (optional) how to fix it; ``str(e)`` joins them with
    ``"; "``, so a caller that rewords the error can keep the fact and drop or replace the fix.
    """

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}; {hint}" if hint else message)


class ConfigError(RevitError):
    """A config, rule, spec or option is invalid (wrong type, impossible value, unknown key)."""


class FileFormatError(RevitError):
    """A file is malformed, truncated, of the wrong kind or of an unsupported schema version."""


class UnknownNameError(RevitError, KeyError):
    """A name was looked up in a registry that does not know it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BudgetError(RevitError):
    """A MACs or latency budget cannot be met by any legal config."""


class OutsideDomainError(RevitError):
    """A query falls outside the domain a model was made for (a rule's widths, a table's measured range)."""


class TableRangeError(OutsideDomainError):
    """A latency-table query falls outside the measured range; ``axis`` names the width that does."""

    def __init__(self, message: str = "", *, hint: str | None = None, axis: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.axis = axis


class AbsentBranchError(TableRangeError):
    """A latency table cannot price a block without its attention or its MLP (a table of schema v1, or an
    import, has no half-block measurements); ``branch`` names the absent one (``attention`` or ``mlp``).
    Extrapolation cannot help: the table must be rebuilt."""

    def __init__(self, message: str = "", *, hint: str | None = None, axis: str | None = None,
                 branch: str = "") -> None:
        super().__init__(message, hint=hint, axis=axis)
        self.branch = branch


class RuleDomainError(OutsideDomainError, ConfigError):
    """A rule would be applied outside the domain it was written for (e.g. the paper rule below EMB 100)."""


class RunExistsError(ConfigError):
    """An output folder already holds a run; ``hint`` says how to resume it or where else to write."""


class CheckpointError(RevitError):
    """A checkpoint does not match the model it is loaded into, or has unsupported parts."""


class DatasetError(RevitError):
    """A dataset is missing or unreadable."""


class BackendUnavailableError(RevitError):
    """A latency backend (or a study storage) cannot run here: missing package or device."""


class StorageError(RevitError):
    """A study storage cannot be opened or used (unreachable database, unwritable journal file)."""


class DeviceError(RevitError):
    """A device was asked for that this machine does not have (``cuda`` without a GPU, a bad index)."""


def check_keys(given: Iterable[object], allowed: Iterable[str], where: str, *, what: str = "key",
               error: type[RevitError] = ConfigError) -> None:
    """Raise ``error`` naming the unknown keys of ``given`` and listing the ``allowed`` ones.

    The one unknown-key check of revit: configs, rules, specs and options all report the same way.
    """
    allowed = list(allowed)
    unknown = sorted({str(k) for k in given} - set(allowed))
    if unknown:
        raise error(f"{where}: unknown {what}(s) {', '.join(unknown)}; allowed: {', '.join(allowed) or 'none'}")


class OutputError(RevitError):
    """An output path cannot be written: a folder given as a file, a read-only or full disk, no permission."""
