"""Read-only views of rows: a job, one of its attempts, a progress report, a batch."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from ._status import BatchStatus, JobStatus


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, JobStatus | BatchStatus):
        return value.value
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one row of ``pgqueue.jobs``."""

    id: int
    queue: str
    task: str
    args: dict[str, Any]
    status: JobStatus
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    timeout: timedelta | None
    created_at: datetime
    started_at: datetime | None
    leased_at: datetime | None
    completed_at: datetime | None
    heartbeat_at: datetime | None
    worker_id: str | None
    progress: int
    progress_message: str | None
    result: Any
    error: str | None
    owner: str | None
    batch_id: int | None
    metadata: dict[str, Any]
    # None: pgqueue's workers run it; "procrastinate": a procrastinate job the
    # bridge mirrors (docs/procrastinate.md), whose id there is external_id
    executor: str | None = None
    external_id: int | None = None
    # attempts handed back at worker shutdown: counted in attempts and in
    # max_attempts, charged to neither (the job was given max_attempts - released)
    released: int = 0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        """Build from a ``dict_row`` of ``pgqueue.jobs``; unknown columns are ignored
        so a newer schema does not break an older client, and columns an older
        schema lacks keep their defaults."""
        values = {f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in row}
        values["status"] = JobStatus(values["status"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: timestamps as ISO 8601, the timeout in seconds."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """One finished attempt of a job (a row of ``pgqueue.attempts``)."""

    job_id: int
    attempt: int
    worker_id: str
    started_at: datetime
    ended_at: datetime
    outcome: str
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True, slots=True)
class ProgressEntry:
    """One progress report of a job (a row of ``pgqueue.progress_history``);
    ``id`` orders reports and is the cursor for paging through them."""

    id: int
    job_id: int
    attempt: int
    at: datetime
    pct: int
    message: str | None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


# The per-state counters of a batch, in the order of JobStatus.
BATCH_COUNTERS = tuple(s.value for s in JobStatus)


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """A snapshot of one row of ``pgqueue.batches``: a parent of many child jobs.

    ``counts`` holds the number of children in each job state (always equal to
    a recount: the database keeps them in the statement that moves a child).
    """

    id: int
    queue: str
    task: str
    status: BatchStatus
    paused: bool
    total: int
    counts: dict[str, int]
    owner: str | None
    metadata: dict[str, Any]
    on_complete: dict[str, Any] | None
    on_complete_job_id: int | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Batch:
        values = {f.name: row[f.name] for f in dataclasses.fields(cls) if f.name != "counts"}
        values["status"] = BatchStatus(values["status"])
        values["counts"] = {name: int(row[name]) for name in BATCH_COUNTERS}
        return cls(**values)

    @property
    def finished(self) -> int:
        """Children in a terminal state."""
        return sum(self.counts[s.value] for s in JobStatus if s.is_terminal)

    @property
    def progress(self) -> int:
        """Percentage of children finished (0-100), whatever their outcome."""
        return 100 if self.total == 0 else self.finished * 100 // self.total

    @property
    def is_final(self) -> bool:
        return self.completed_at is not None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["progress"] = self.progress
        return out
