"""Exceptions of the client."""

from __future__ import annotations

__all__ = ["EntryValidationError", "RunNotFoundError", "UsageApiError", "UsageRecorderError"]


class UsageRecorderError(Exception):
    """The recorder cannot deliver entries: Kafka unreachable at start, an entry not
    acknowledged within the delivery timeout, a permanent broker error, or use after close."""


class EntryValidationError(ValueError):
    """An entry breaks the contract (§2); it was not sent. ``field`` is the camelCase dotted
    path of the offending field (``None`` when the entry as a whole is wrong), ``code`` the
    dead-letter code the processor would have given it."""

    def __init__(self, code: str, message: str, field: str | None) -> None:
        super().__init__(message if field is None or field in message else f"{field}: {message}")
        self.code = code
        self.field = field


class UsageApiError(Exception):
    """The HTTP API answered with an error (or could not be reached: ``status`` 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


class RunNotFoundError(UsageApiError, LookupError):
    """404 for a run: unknown, or not visible to this API key's tenant."""
