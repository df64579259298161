"""The exception hierarchy: one base, "you misused it" kept apart from "the world failed".

``TransferError`` is never raised itself.  Builtin mix-ins let callers catch what
they already know: a bad argument is a ``ValueError``, a storage failure an
``OSError`` (with ``errno``), a timeout a ``TimeoutError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine._ops.masking import mask_text
from engine.web_error import WebErrorStatus

if TYPE_CHECKING:
    import uuid


class TransferError(Exception):
    """Base of every bgtransfer error; carries the WebErrorStatus and the operation's guid."""

    attempts = 1
    """Tries in a row that failed before the engine gave up (retries of a transient
    failure: a refused connection, a reset, a 503...)."""
    retried_for = 0.0
    """Seconds from the first of those tries failing to the last."""

    def __init__(
        self,
        *args: Any,
        web_error_status: WebErrorStatus | None = None,
        guid: uuid.UUID | None = None,
    ) -> None:
        super().__init__(*args)
        self.web_error_status = web_error_status
        self.guid = guid

    def __str__(self) -> str:
        """The message with the secrets of any URL in it masked: an error is printed,
        logged and stored as the operation's reason, and a presigned URL's signature
        must be in none of them."""
        return mask_text(super().__str__())


class InvalidRequestError(TransferError, ValueError):
    """The caller asked for something malformed: a bad URI, header, block size or path."""


class InvalidStateError(TransferError, RuntimeError):
    """The call is not legal in the operation's current status (e.g. resume a completed one)."""


class ResultFileInUseError(InvalidRequestError):
    """Another operation already writes to this result file."""


class HttpError(TransferError):
    """The server answered with a status that ends the transfer."""

    def __init__(self, *args: Any, status_code: int, **kwargs: Any) -> None:
        kwargs.setdefault("web_error_status", WebErrorStatus.from_http_status(status_code))
        super().__init__(*args, **kwargs)
        self.status_code = status_code


class TransportError(TransferError, ConnectionError):
    """The network failed: no connection, a reset, TLS, a redirect that is not allowed."""


class TransferTimeoutError(TransportError, TimeoutError):
    """A connect, response or low-speed timeout ran out."""


class StorageError(TransferError, OSError):
    """The result file could not be written: disk full, permission, file too large."""


class ControlFileError(StorageError):
    """A control file is foreign, of another format, corrupt or truncated: it is never trusted."""


class IntegrityError(TransferError):
    """The downloaded bytes do not match the checksum the caller asked for."""


class TransferCanceled(TransferError):
    """The operation was cancelled; its partial data is gone."""
