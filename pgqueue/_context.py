"""What a running task sees of its job: :class:`JobContext`."""

from __future__ import annotations

import threading
from typing import Any


class JobContext:
    """Passed as the first argument to every task.

    It names the job and attempt, lets the task report progress, and tells it
    when to stop (``should_stop``): the job was cancelled, its lease was lost,
    its time limit passed or the worker is shutting down. Async tasks are also
    cancelled in those cases; sync tasks running in threads should check it.

    ``progress()`` never blocks: the latest value is written by the worker
    shortly after (updates are coalesced, so a chatty task cannot flood the
    database). A completed job's progress is 100.
    """

    __slots__ = (
        "_dirty",
        "_lock",
        "_message",
        "_on_progress",
        "_pct",
        "_stop_reason",
        "args",
        "attempt",
        "job_id",
        "max_attempts",
        "queue",
        "task_name",
    )

    def __init__(
        self,
        *,
        job_id: int,
        attempt: int,
        max_attempts: int,
        task_name: str,
        queue: str,
        args: dict[str, Any],
        on_progress: Any = None,
    ) -> None:
        self.job_id = job_id
        """The job's id."""
        self.attempt = attempt
        """This attempt's number, from 1; with ``job_id`` it is the lease."""
        self.max_attempts = max_attempts
        self.task_name = task_name
        self.queue = queue
        self.args = args
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._pct: float | None = None
        self._message: str | None = None
        self._dirty = False
        self._stop_reason: str | None = None

    @property
    def should_stop(self) -> bool:
        """True once the task should stop as soon as it can."""
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        """Why the task should stop: ``cancelled``, ``lost``, ``timeout``, ``shutdown``."""
        return self._stop_reason

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    def progress(self, pct: float, message: str | None = None) -> None:
        """Report progress in percent (clamped to 0..100 by the database)."""
        if not isinstance(pct, int | float) or pct != pct:  # rejects NaN too
            raise ValueError(f"progress must be a number, not {pct!r}")
        with self._lock:
            was_dirty = self._dirty
            self._pct = float(pct)
            self._message = message
            self._dirty = True
        if self._on_progress is not None and not was_dirty:
            self._on_progress(self)  # the worker writes the latest value shortly

    @property
    def progress_unwritten(self) -> bool:
        """Whether a report waits for the worker to write it."""
        return self._dirty

    def take_progress(self) -> tuple[float, str | None] | None:
        """The unwritten progress report, if any (used by the worker)."""
        with self._lock:
            if not self._dirty or self._pct is None:
                return None
            self._dirty = False
            return self._pct, self._message

    def request_stop(self, reason: str) -> None:
        """Ask the task to stop (used by the worker); the first reason wins."""
        if self._stop_reason is None:
            self._stop_reason = reason

    def __repr__(self) -> str:
        return f"JobContext(job_id={self.job_id}, attempt={self.attempt}, task={self.task_name!r})"
