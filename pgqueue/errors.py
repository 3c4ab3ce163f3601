"""Exceptions raised by pgqueue.

Stored functions raise SQLSTATEs of their own (``PQ001``...); :func:`translate`
turns them into these classes so callers can catch what they mean.
"""

from __future__ import annotations

from typing import Any

import psycopg


class PgQueueError(Exception):
    """Base class of every pgqueue error."""


class ConfigurationError(PgQueueError, ValueError):
    """The configuration (DSN, app path, settings) is wrong or incomplete."""


class DatabaseUnavailable(PgQueueError):
    """PostgreSQL could not be reached."""


class InvalidJobError(PgQueueError, ValueError):
    """An enqueue was refused because of bad input; nothing was written."""


class UnknownTaskError(InvalidJobError):
    """The task name is not registered on the queue."""


class NotFound(PgQueueError, LookupError):
    """The job or batch named does not exist."""


class JobNotFound(NotFound):
    """No job with that id exists (SQLSTATE PQ001)."""


class BatchNotFound(NotFound):
    """No batch with that id exists (SQLSTATE PQ004)."""


class InvalidTransition(PgQueueError):
    """The job is not in a state the requested transition may leave (PQ002)."""


class StaleLease(PgQueueError):
    """A worker call named a lease that is no longer held (PQ003): the job was
    rescued, timed out, cancelled or re-run, and the call was refused."""


class JobFailed(PgQueueError):
    """Raised by :meth:`pgqueue.Queue.wait` when the job ended without success."""

    def __init__(self, job_id: int, status: str, error: str | None) -> None:
        super().__init__(f"job {job_id} ended {status}: {error or 'no error recorded'}")
        self.job_id = job_id
        self.status = status
        self.error = error


class BatchFailed(PgQueueError):
    """Raised by :meth:`pgqueue.Queue.wait_batch` when the batch finished with
    errors or was cancelled. ``unsuccessful`` counts its children that did not
    complete; ``errors`` maps the ids of (up to 100 of) them to their status
    and last error."""

    def __init__(
        self,
        batch_id: int,
        status: str,
        unsuccessful: int,
        errors: dict[int, tuple[str, str | None]],
    ) -> None:
        first = next(iter(errors.items()), None)
        detail = f"; e.g. job {first[0]} {first[1][0]}: {first[1][1]}" if first else ""
        super().__init__(
            f"batch {batch_id} ended {status}: {unsuccessful} children did not complete{detail}"
        )
        self.batch_id = batch_id
        self.status = status
        self.unsuccessful = unsuccessful
        self.errors = errors


class MemoryLimitExceeded(PgQueueError):
    """Raised by :meth:`pgqueue.Worker.run` after the worker went over its
    ``max_memory_mb``: its running attempts were failed and it stopped."""


class NonRetryableError(PgQueueError):
    """Raise from a task to fail the job at once, without further attempts."""


_BY_SQLSTATE: dict[str, type[PgQueueError]] = {
    "PQ001": JobNotFound,
    "PQ002": InvalidTransition,
    "PQ003": StaleLease,
    "PQ004": BatchNotFound,
    "22023": InvalidJobError,
}


def _message(exc: psycopg.Error) -> str:
    diag: Any = exc.diag
    text = str(diag.message_primary or exc).strip()
    return text.removeprefix("pgqueue: ")


def translate(exc: psycopg.Error) -> Exception:
    """Map a database error from a pgqueue function to the matching exception.

    Errors pgqueue does not own are returned unchanged; a connection failure
    becomes :class:`DatabaseUnavailable`.
    """
    missing = (
        psycopg.errors.UndefinedTable,
        psycopg.errors.UndefinedFunction,
        psycopg.errors.InvalidSchemaName,
        psycopg.errors.UndefinedObject,
    )
    if isinstance(exc, missing) and "pgqueue" in str(exc):
        return ConfigurationError(
            "the pgqueue schema is missing or outdated in this database: run `pgqueue migrate`"
        )
    cls = _BY_SQLSTATE.get(exc.sqlstate or "")
    if cls is not None:
        return cls(_message(exc))
    if isinstance(exc, psycopg.errors.CheckViolation | psycopg.errors.InvalidTextRepresentation):
        return InvalidJobError(_message(exc))
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        return DatabaseUnavailable(str(exc).strip().splitlines()[0] if str(exc) else repr(exc))
    return exc
