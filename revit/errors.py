"""One exception hierarchy: every error a user can cause is a :class:`RevitError`.

The CLI turns a ``RevitError`` into one line on stderr and exit code 2; anything else is a bug.
"""

from __future__ import annotations


class RevitError(Exception):
    """Base of every error caused by bad input or an unusable environment."""


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


class TableRangeError(RevitError):
    """A latency-table query falls outside the measured range."""


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
