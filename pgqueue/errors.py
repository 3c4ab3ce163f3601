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
    """PostgreSQL could not be reached, or ended the session mid-call (a
    restart, a failover, ``pg_terminate_backend``). Retryable: the call did
    not take effect, or took effect as a whole, as its transaction decided."""

    retryable = True


class InvalidJobError(PgQueueError, ValueError):
    """An enqueue was refused because of bad input; nothing was written.
    ``field`` names the input at fault when it is known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvariantViolation(PgQueueError):
    """The database refused a change that would break one of pgqueue's
    invariants (a CHECK constraint on its state, timestamps or counters).
    Not bad input: a defect, or a change made outside pgqueue's functions.
    ``constraint`` names the constraint."""

    def __init__(self, message: str, *, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint


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


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (a server's error spans several), or
    its repr when it has none: what a log line or a user's message shows."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def _message(exc: psycopg.Error) -> str:
    diag: Any = exc.diag
    text = str(diag.message_primary or exc).strip()
    return text.removeprefix("pgqueue: ")


# CHECK constraints on values a caller passes in, with the input each guards.
# Every other CHECK of pgqueue's tables guards an invariant of its own state.
_INPUT_CHECKS: dict[str, str] = {
    "jobs_queue_valid": "queue",
    "jobs_task_valid": "task",
    "jobs_args_object": "args",
    "jobs_metadata_object": "metadata",
    "jobs_max_attempts_positive": "max_attempts",
    "jobs_timeout_positive": "timeout",
    "jobs_lease_timeout_positive": "lease_timeout",
    "jobs_owner_valid": "owner",
    "jobs_progress_range": "progress",
    "jobs_dedupe_valid": "dedupe_key",
    "jobs_concurrency_valid": "concurrency_key",
    "queues_rate_valid": "rate_limit",
    "progress_history_pct_range": "progress",
    "batches_owner_valid": "owner",
    "batches_metadata_object": "metadata",
    "batches_on_complete_object": "on_complete",
    "periodic_ticks_name_valid": "name",
}

# The server ended the session (admin or crash shutdown), or is starting or
# stopping; class 08 is a connection exception; 53300: no connection slot;
# 25006: the session is on a read-only server (a standby, or a primary fenced
# during a switchover), so the write belongs on the new primary.
# 57P04: the database was dropped; 57P05: idle_session_timeout ended the session.
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05", "53300", "25006"})


def _unavailable(exc: psycopg.Error) -> bool:
    state = exc.sqlstate
    if state is None:  # raised by the client: the connection is gone or closed
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state in _UNAVAILABLE_STATES or state.startswith("08")


MISSING_OBJECT = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.InvalidSchemaName,
    psycopg.errors.UndefinedObject,
)
"""What a statement raises when an object it names does not exist."""


def translate(exc: psycopg.Error, *, ours: bool = True) -> Exception:
    """Map a database error from a pgqueue statement to the matching exception.

    A lost connection or a session the server ended becomes
    :class:`DatabaseUnavailable`. For a statement of pgqueue's own (``ours``),
    a missing object means the schema is missing or outdated, and a CHECK
    violation is :class:`InvalidJobError` when the constraint guards a value
    the caller passed, :class:`InvariantViolation` otherwise. Errors pgqueue
    does not own, and every error of a statement that is not pgqueue's
    (``ours=False``: the CLI's last resort also sees the bench's peers), are
    returned unchanged.
    """
    if not ours:
        return DatabaseUnavailable(first_line(exc)) if _unavailable(exc) else exc
    if isinstance(exc, MISSING_OBJECT):
        return ConfigurationError(
            "the pgqueue schema is missing or outdated in this database: run `pgqueue migrate`"
        )
    cls = _BY_SQLSTATE.get(exc.sqlstate or "")
    if cls is not None:
        return cls(_message(exc))
    if isinstance(exc, psycopg.errors.CheckViolation):
        constraint = exc.diag.constraint_name
        field = _INPUT_CHECKS.get(constraint or "")
        if field is not None:
            return InvalidJobError(f"{field}: {_message(exc)}", field=field)
        return InvariantViolation(
            f"refused by pgqueue's invariant {constraint or '(unnamed)'}: {_message(exc)}",
            constraint=constraint,
        )
    if isinstance(exc, psycopg.errors.InvalidTextRepresentation):
        return InvalidJobError(_message(exc))
    if _unavailable(exc):
        return DatabaseUnavailable(first_line(exc))
    return exc
