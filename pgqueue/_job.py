"""Read-only views of rows: a job and one of its attempts."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from ._status import JobStatus


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

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        """Build from a ``dict_row`` of ``pgqueue.jobs``; unknown columns are ignored
        so a newer schema does not break an older client."""
        values = {f.name: row[f.name] for f in dataclasses.fields(cls)}
        values["status"] = JobStatus(values["status"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: timestamps as ISO 8601, the timeout in seconds."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, timedelta):
                value = value.total_seconds()
            elif isinstance(value, JobStatus):
                value = value.value
            out[field.name] = value
        return out


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
        out = dataclasses.asdict(self)
        out["started_at"] = self.started_at.isoformat()
        out["ended_at"] = self.ended_at.isoformat()
        return out
