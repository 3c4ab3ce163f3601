"""Request and response bodies of the API: pydantic models that validate input
and generate the OpenAPI schemas."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)

import pgqueue

MAX_BIGINT = 2**63 - 1
MAX_QUEUE_NAME = 128
STATUS_NAMES = "|".join(s.value for s in pgqueue.JobStatus)
STATUS_LIST = rf"^({STATUS_NAMES})(,({STATUS_NAMES}))*$"


# -- cursors -----------------------------------------------------------------------------
# Opaque to clients: base64url of "<kind>:<key>", so the key can change shape later.


def encode_cursor(kind: str, key: str | int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{key}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> str:
    """The key inside ``cursor``; ``ValueError`` if it is not a ``kind`` cursor.

    The key goes to the database as a query parameter, so anything a cursor of
    this API cannot hold (NUL, lone surrogates, a key of another shape) is
    refused here rather than by PostgreSQL."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor returned by this API") from None
    prefix, sep, key = text.partition(":")
    if prefix != kind or not sep or not key or "\x00" in key:
        raise ValueError("not a cursor returned by this endpoint")
    return key


def is_decimal(text: str) -> bool:
    """True for ASCII digits only: ``str.isdigit`` and ``int`` also take other
    scripts' digits, signs, spaces and underscores."""
    return 0 < len(text) <= 19 and text.isascii() and text.isdigit()


def id_cursor(kind: str, cursor: str | None) -> int | None:
    """The id inside a ``kind`` cursor (None for no cursor); ``ValueError`` otherwise."""
    if cursor is None:
        return None
    key = decode_cursor(kind, cursor)
    if not is_decimal(key) or not 1 <= int(key) <= MAX_BIGINT:
        raise ValueError("not a cursor returned by this endpoint")
    return int(key)


def queue_cursor_name(cursor: str | None) -> str | None:
    """The queue name inside a queue cursor (None for no cursor); ``ValueError`` otherwise."""
    if cursor is None:
        return None
    name = decode_cursor("queue", cursor)
    if len(name) > MAX_QUEUE_NAME:
        raise ValueError("not a cursor returned by this endpoint")
    return name


def job_cursor_id(cursor: str | None) -> int | None:
    return id_cursor("job", cursor)


# -- parameters --------------------------------------------------------------------------

_INTEGER_TEXT = re.compile(r"-?[0-9]+")


def _integer_text(value: Any) -> Any:
    # pydantic's lax int also reads "+1", " 1", "1_0" and other scripts'
    # digits; a path or query integer is plain decimal digits.
    if isinstance(value, str) and not _INTEGER_TEXT.fullmatch(value):
        raise ValueError("must be an integer in decimal digits")
    return value


Integer = Annotated[int, BeforeValidator(_integer_text)]
"""An integer path or query parameter."""


def _no_nul(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class _Params(BaseModel):
    # An unknown query parameter is a 422 naming it, not silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _text_without_nul(cls, value: Any) -> Any:
        return _no_nul(value)


class JobPath(_Params):
    id: Integer = Field(ge=1, le=MAX_BIGINT, description="job id")


class QueuePath(_Params):
    name: str = Field(min_length=1, max_length=MAX_QUEUE_NAME, description="queue name")


class Page(_Params):
    cursor: str | None = Field(
        default=None,
        max_length=200,
        description="`next_cursor` of the previous page; omit for the first page",
    )


class ActiveQuery(Page):
    limit: Integer = Field(default=100, ge=1, le=500, description="jobs per page")

    @field_validator("cursor")
    @classmethod
    def _job_cursor(cls, value: str | None) -> str | None:
        job_cursor_id(value)
        return value


class JobListQuery(ActiveQuery):
    limit: Integer = Field(default=50, ge=1, le=500, description="jobs per page")
    status: str | None = Field(
        default=None,
        pattern=STATUS_LIST,
        description="comma-separated states, e.g. `failed,dead_letter`",
    )
    queue: str | None = Field(default=None, min_length=1, max_length=MAX_QUEUE_NAME)
    task: str | None = Field(default=None, min_length=1, max_length=256)
    owner: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="admins: only this owner's jobs (others may only name themselves)",
    )

    @property
    def statuses(self) -> list[pgqueue.JobStatus] | None:
        if self.status is None:
            return None
        return [pgqueue.JobStatus(s) for s in self.status.split(",")]


class QueueListQuery(Page):
    limit: Integer = Field(default=100, ge=1, le=1000, description="queues per page")

    @field_validator("cursor")
    @classmethod
    def _queue_cursor(cls, value: str | None) -> str | None:
        queue_cursor_name(value)
        return value


class EventsQuery(_Params):
    access_token: str | None = Field(
        default=None,
        max_length=4096,
        description="the bearer token, for clients that cannot send headers (EventSource)",
    )


# -- bodies ------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _text_without_nul(cls, value: Any) -> Any:
        return _no_nul(value)


# A stored run_at is read back in the session's time zone, and Python's
# datetime ends at years 1 and 9999: a day's margin on either side keeps every
# accepted instant readable whatever the zone.
EARLIEST_RUN_AT = datetime(1, 1, 2, tzinfo=UTC)
LATEST_RUN_AT = datetime(9999, 12, 30, tzinfo=UTC)


class JobCreate(_Body):
    """A job to enqueue; it is owned by the caller. Unset options take the
    task's defaults."""

    task: str = Field(min_length=1, max_length=256, description="a task registered on the server")
    args: dict[str, Any] = Field(default_factory=dict, description="the task's keyword arguments")
    queue: str | None = Field(default=None, min_length=1, max_length=MAX_QUEUE_NAME)
    priority: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1)
    delay: float | None = Field(
        default=None, ge=0, le=10 * 365 * 86400, description="seconds before it may run"
    )
    run_at: AwareDatetime | None = Field(default=None, description="when it may run (with offset)")
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    timeout: float | None = Field(
        default=None, gt=0, le=365 * 86400, description="seconds an attempt may run"
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("run_at")
    @classmethod
    def _representable(cls, value: datetime | None) -> datetime | None:
        if value is not None and not EARLIEST_RUN_AT <= value <= LATEST_RUN_AT:
            raise ValueError("must be between 0001-01-02 and 9999-12-30 (UTC)")
        return value


class RetryBody(_Body):
    extra_attempts: int = Field(default=1, ge=1, le=1000, description="attempts to add")


# -- responses ---------------------------------------------------------------------------


class JobOut(BaseModel):
    """One job."""

    id: int
    queue: str
    task: str
    args: dict[str, Any]
    status: pgqueue.JobStatus
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    timeout: float | None = Field(description="seconds")
    created_at: datetime
    started_at: datetime | None
    leased_at: datetime | None
    completed_at: datetime | None
    heartbeat_at: datetime | None
    worker_id: str | None
    progress: int = Field(ge=0, le=100)
    progress_message: str | None
    result: Any = Field(description="the task's return value (completed jobs)")
    error: str | None = Field(description="the last error")
    owner: str | None
    batch_id: int | None
    metadata: dict[str, Any]
    executor: str | None = Field(
        default=None,
        description="who runs it: null for pgqueue's workers, 'procrastinate' for a"
        " procrastinate job the bridge mirrors (docs/procrastinate.md)",
    )
    external_id: int | None = Field(default=None, description="the job's id in its executor")
    released: int = Field(
        default=0,
        description="attempts handed back at worker shutdown: counted in attempts and"
        " max_attempts, charged to neither",
    )

    @classmethod
    def of(cls, job: pgqueue.Job) -> JobOut:
        values = {name: getattr(job, name) for name in cls.model_fields}
        values["timeout"] = job.timeout.total_seconds() if job.timeout is not None else None
        return cls.model_validate(values)


class AttemptOut(BaseModel):
    attempt: int
    worker_id: str
    started_at: datetime
    ended_at: datetime
    outcome: str
    error: str | None


class JobDetail(JobOut):
    """One job with its finished attempts."""

    attempt_history: list[AttemptOut]


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


class QueueCounts(BaseModel):
    pending: int = 0
    retrying: int = 0
    running: int = 0


class QueueOut(BaseModel):
    queue: str
    paused: bool
    counts: QueueCounts = Field(description="unfinished jobs (the caller's, unless admin)")
    oldest_pending_age: float | None = Field(description="seconds the oldest due job has waited")
    rate_limit: int | None = Field(
        default=None, description="at most this many jobs started per `rate_per` seconds"
    )
    rate_per: float | None = Field(default=None, description="the rate limit's period, seconds")
    rate_used: int | None = Field(
        default=None, description="jobs started within the last `rate_per` seconds"
    )


class QueuePage(BaseModel):
    items: list[QueueOut]
    next_cursor: str | None


class QueueState(BaseModel):
    queue: str
    paused: bool


class WhoAmI(BaseModel):
    owner: str
    admin: bool


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="`ready` or `unavailable`")
    database: bool
    listener: bool
    schema_at_head: bool = Field(
        description="the database's pgqueue schema is at this package's latest revision"
    )
    schema_serves_release: bool = Field(
        description="the schema is at this package's revision, or newer and still serving it "
        "(pgqueue.served_revisions): what readiness requires, so a rolling deploy that "
        "migrates first keeps the previous release ready"
    )
    schema_revision: str | None = Field(description="the database's pgqueue schema revision")


# -- batches and progress history ---------------------------------------------------------

BATCH_STATUS_NAMES = "|".join(s.value for s in pgqueue.BatchStatus)


class BatchPath(_Params):
    id: Integer = Field(ge=1, le=MAX_BIGINT, description="batch id")


def batch_cursor_id(cursor: str | None) -> int | None:
    return id_cursor("batch", cursor)


class BatchListQuery(Page):
    limit: Integer = Field(default=50, ge=1, le=500, description="batches per page")
    status: str | None = Field(
        default=None,
        pattern=rf"^({BATCH_STATUS_NAMES})(,({BATCH_STATUS_NAMES}))*$",
        description="comma-separated batch states, e.g. `running,paused`",
    )

    @field_validator("cursor")
    @classmethod
    def _batch_cursor(cls, value: str | None) -> str | None:
        batch_cursor_id(value)
        return value

    @property
    def statuses(self) -> list[str] | None:
        return self.status.split(",") if self.status else None


class BatchOut(BaseModel):
    """One batch: its children counted by state."""

    id: int
    queue: str
    task: str
    status: pgqueue.BatchStatus
    paused: bool
    total: int
    counts: dict[str, int] = Field(description="children per job state")
    progress: int = Field(description="percentage of children finished, whatever the outcome")
    owner: str | None
    metadata: dict[str, Any]
    on_complete_job_id: int | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None

    @classmethod
    def of(cls, batch: pgqueue.Batch) -> BatchOut:
        values = {name: getattr(batch, name) for name in cls.model_fields}
        return cls.model_validate(values)


class BatchPage(BaseModel):
    items: list[BatchOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


def progress_cursor_id(cursor: str | None) -> int | None:
    return id_cursor("progress", cursor)


class ProgressQuery(Page):
    limit: Integer = Field(default=100, ge=1, le=500, description="reports per page")
    since: AwareDatetime | None = Field(
        default=None, description="only reports at or after this time (ISO 8601 with offset)"
    )

    @field_validator("cursor")
    @classmethod
    def _progress_cursor(cls, value: str | None) -> str | None:
        progress_cursor_id(value)
        return value

    @field_validator("since", mode="before")
    @classmethod
    def _iso_time(cls, value: Any) -> Any:
        # pydantic would also take a number as a Unix time; the document says ISO 8601.
        if isinstance(value, str):
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise ValueError("must be an ISO 8601 date-time with an offset") from None
        return value


class ProgressOut(BaseModel):
    id: int
    attempt: int
    at: datetime
    pct: int = Field(ge=0, le=100)
    message: str | None


class ProgressPage(BaseModel):
    items: list[ProgressOut] = Field(description="oldest first")
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


# -- periodic schedules -------------------------------------------------------------------


class PeriodicOut(BaseModel):
    """One cron schedule of the served app, with its last and next tick."""

    name: str
    task: str
    queue: str
    cron: str
    timezone: str
    catch_up: int
    args: dict[str, Any]
    last_tick: datetime | None = Field(description="the latest tick recorded in the database")
    last_job_id: int | None = Field(description="its job (null marks where a schedule started)")
    next_tick: datetime | None = Field(description="the next run, by the database's clock")


class PeriodicList(BaseModel):
    items: list[PeriodicOut] = Field(description="by name")
    now: datetime | None = Field(description="the database's clock")
