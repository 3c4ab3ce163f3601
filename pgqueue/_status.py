"""The job states, mirroring the database enum ``pgqueue.job_status``."""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    """Where a job is in its life. The database enum ``pgqueue.job_status`` is the
    one definition; this mirror is checked against ``pg_enum`` by the test suite.

    See ``docs/state-machine.md`` for the diagram and who moves jobs between states.
    """

    PENDING = "pending"
    """Waiting; claimable once ``run_at`` has passed and its queue is not paused."""
    RUNNING = "running"
    """Held by one worker's lease (job id + attempt number), heartbeating."""
    RETRYING = "retrying"
    """An attempt ended badly; the next attempt is due at ``run_at``."""
    COMPLETED = "completed"
    """Terminal: the task returned; ``result`` holds its return value."""
    FAILED = "failed"
    """Terminal: a non-retryable error, or an error with no retries configured."""
    TIMEOUT = "timeout"
    """Terminal: the final attempt exceeded its time limit."""
    ZOMBIE = "zombie"
    """Terminal: the final attempt's worker vanished (heartbeat lost)."""
    DEAD_LETTER = "dead_letter"
    """Terminal: ``max_attempts`` used up by errors; kept for inspection and replay."""
    CANCELLED = "cancelled"
    """Terminal: cancelled by a user or operator."""

    @property
    def is_terminal(self) -> bool:
        """True for the states a job never leaves by itself."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.TIMEOUT,
        JobStatus.ZOMBIE,
        JobStatus.DEAD_LETTER,
        JobStatus.CANCELLED,
    }
)
"""States a job never leaves by itself (only an operator's replay moves some on)."""


class BatchStatus(enum.StrEnum):
    """Where a batch is in its life, mirroring ``pgqueue.batch_status``. It
    follows from the batch's per-state child counters; the three final states
    are reached exactly once and never left."""

    PENDING = "pending"
    """No child has started yet."""
    RUNNING = "running"
    """Some child has left pending (started or was cancelled); not all have finished."""
    PAUSED = "paused"
    """Paused by a user: its pending and retrying children are not claimed."""
    COMPLETED = "completed"
    """Final: every child completed."""
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    """Final: every child finished, and some did not complete."""
    CANCELLED = "cancelled"
    """Final: cancelled by a user or operator."""

    @property
    def is_final(self) -> bool:
        return self in (
            BatchStatus.COMPLETED,
            BatchStatus.COMPLETED_WITH_ERRORS,
            BatchStatus.CANCELLED,
        )
