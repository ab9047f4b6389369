"""Exception classes raised by deathtensors.

Every error the library raises about a file or an argument derives from
:class:`DeathtensorsError`. Operating-system failures (a missing file, a
permission problem) raise the usual built-in :class:`OSError` subclasses.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

__all__ = [
    "DeathtensorsError",
    "FormatError",
    "EncryptedFileError",
    "ChecksumError",
    "NoChecksumError",
    "PluginError",
    "TensorNotFoundError",
    "InvalidArgumentError",
    "UnsupportedDtypeError",
    "SchemaError",
    "HubError",
    "HubAuthError",
    "HubNotFoundError",
    "HubRepoNotFoundError",
    "HubRevisionNotFoundError",
    "HubEntryNotFoundError",
    "HubConnectionError",
    "HubUploadError",
]


class DeathtensorsError(Exception):
    """Base class of every deathtensors error."""


class FormatError(DeathtensorsError):
    """The file is not a valid ``.deathtensors`` file (bad magic, header, offsets, chunks...)."""


class EncryptedFileError(FormatError):
    """The file sets the reserved encryption flag; such files are refused."""


class ChecksumError(DeathtensorsError):
    """The checksum footer does not match the file's contents."""


class NoChecksumError(ChecksumError):
    """Verification was requested but the file was written without a checksum footer."""


class PluginError(DeathtensorsError, ValueError):
    """An unknown codec/checksum/dtype id, or two plugins registered under one id."""


class TensorNotFoundError(DeathtensorsError, KeyError):
    """No tensor of that name in the file."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(DeathtensorsError, ValueError):
    """An argument cannot be honoured (duplicate names, wrong sizes, bad metadata...)."""


class UnsupportedDtypeError(DeathtensorsError, TypeError):
    """A dtype has no equivalent in the requested framework (e.g. BF16 in numpy)."""


class SchemaError(DeathtensorsError):
    """A file does not match a :class:`deathtensors.Schema`.

    The message lists every violation, one per line; :attr:`violations` holds
    the same lines as a list of strings.
    """

    def __init__(self, message: str, violations: Optional[Sequence[str]] = None) -> None:
        super().__init__(message)
        self.violations: List[str] = list(violations or [])

    def __reduce__(self) -> Tuple[Any, ...]:  # keep violations through pickling (multiprocessing)
        return (type(self), (str(self), self.violations))


class HubError(DeathtensorsError):
    """A Hugging Face Hub operation failed (see :mod:`deathtensors.huggingface`).

    The client's own exception, when there is one, is the ``__cause__``.
    """


class HubAuthError(HubError):
    """No token for an operation that needs one, or the Hub refused the token."""


class HubNotFoundError(HubError, LookupError):
    """Something named does not exist on the Hub (or is private to others)."""


class HubRepoNotFoundError(HubNotFoundError):
    """The repo does not exist, or is private and the token cannot see it."""


class HubRevisionNotFoundError(HubNotFoundError):
    """The branch, tag or commit does not exist in the repo."""


class HubEntryNotFoundError(HubNotFoundError):
    """The file does not exist at that revision of the repo."""


class HubConnectionError(HubError, ConnectionError):
    """The Hub could not be reached, or offline mode is on and the file is not cached."""


class HubUploadError(HubError):
    """An upload failed; nothing was committed, so the repo is unchanged."""
