"""pgqueue's seam to PostgreSQL: every operation the client (``Queue``, the
CLI, the status API) and a worker perform, with typed rows in and out.

:class:`ClientDatabase` is the client's: enqueue (one job, a bulk, a batch),
the reads, and the operator's acts. :class:`WorkerDatabase` is a worker's:
claim, complete, fail, release, heartbeat, progress and maintenance. Python
code above this module calls these methods and never SQL; the statements are
the named queries of ``sql/queries.sql``, and each method runs the query of
its own name (``list_jobs`` also its owner form, ``list_owner_jobs``).

Each class owns its connection pools, the check that passes over pooled
connections the server ended (:func:`pgqueue._connect.live_connection`) and
the translation of SQLSTATEs into pgqueue's exceptions
(:func:`pgqueue.errors.translate`). A worker's calls retry a lost
connection with backoff until ``give_up`` seconds have passed (by default,
until it works), so a database restart only pauses a worker; a client's
calls do not retry: a lost connection raises :class:`DatabaseUnavailable` at
once, so an enqueue whose reply was lost is not sent twice (waiting for a
pooled connection is bounded by ``pool_timeout``, which a web process sets
short). A refusal (a stale
lease, a job in the wrong state) is raised at once by both.

Tests inject faults here: ``Worker(queue, database=SubclassOfWorkerDatabase)``
(tests/db/test_worker_fencing.py) and ``Queue(database=...)``
(tests/db/test_client_database.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from . import _connect
from ._job import Attempt, Batch, Job, ProgressEntry
from ._sql import query
from ._status import BatchStatus, JobStatus
from .errors import translate

AsyncConn = psycopg.AsyncConnection[Any]
SyncConn = psycopg.Connection[Any]

log = logging.getLogger("pgqueue.worker")

# Failures worth retrying: the connection or server went away (restart,
# pg_terminate_backend, pool timeout), the connection is on a server that no
# longer takes writes (failover; live_connection replaces it), or a
# deadlock/serialization conflict.
RETRYABLE = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.ReadOnlySqlTransaction,
    psycopg.errors.TransactionRollback,
)


# -- the client's side ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class NewJob:
    """One job ready for ``pgqueue.enqueue``: validated, every default resolved."""

    task: str
    args: Jsonb
    queue: str
    priority: int
    run_at: datetime | None
    max_attempts: int
    timeout: timedelta | None
    owner: str | None
    metadata: Jsonb
    dedupe_key: str | None = None
    dedupe_scope: str = "pending"  # pending, active or window
    dedupe_window: timedelta | None = None
    concurrency_key: str | None = None
    concurrency_limit: int = 1

    def params(self) -> dict[str, Any]:
        """Parameters of the ``enqueue`` query."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True, slots=True)
class NewJobs:
    """Jobs of one task sharing ``options`` (a :class:`NewJob` whose own
    arguments and keys are unused), one per item of ``args``: the items'
    arguments as checked JSON texts, encoded once each. A bulk enqueue, or a
    batch's children."""

    options: NewJob
    args: list[str]
    dedupe_keys: list[str | None] | None = None
    """One per item, or None when no item has a key: the function's plain path."""
    concurrency_keys: list[str | None] | None = None

    def params(self) -> dict[str, Any]:
        """Parameters of the ``enqueue_bulk`` query: the options once, the items' arrays."""
        params = self.options.params()
        del params["dedupe_key"], params["concurrency_key"]
        params["args"] = self.args
        params["dedupe_keys"] = self.dedupe_keys
        params["concurrency_keys"] = self.concurrency_keys
        return params


@dataclasses.dataclass(frozen=True, slots=True)
class NewBatch:
    """A batch ready for ``pgqueue.enqueue_batch``: its children, its own
    metadata and the job to enqueue when it finishes (None: no follow-up)."""

    children: NewJobs
    metadata: Jsonb
    on_complete: Jsonb | None

    def params(self) -> dict[str, Any]:
        """Parameters of the ``enqueue_batch`` query (one array element per child)."""
        jobs, n = self.children.options, len(self.children.args)
        return {
            "tasks": [jobs.task] * n,
            "args": self.children.args,
            "queues": [jobs.queue] * n,
            "priorities": [jobs.priority] * n,
            "run_ats": [jobs.run_at] * n,
            "max_attempts": [jobs.max_attempts] * n,
            "timeouts": [jobs.timeout] * n,
            "metadata": [jobs.metadata] * n,
            "owner": jobs.owner,
            "batch_metadata": self.metadata,
            "on_complete": self.on_complete,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class JobOutcome:
    """Where a job stands, for a wait: its status, and its result or error."""

    status: JobStatus
    result: Any
    error: str | None


class ClientDatabase:
    """The operations of a client (``Queue``, the CLI, the status API) on its database.

    ``dsn`` is asked for the DSN when the first pool opens (resolving it may
    start the embedded server, so it is not asked before). Operations that
    take ``conn`` run on that connection, inside its current transaction,
    instead of a pooled one.
    """

    def __init__(self, dsn: Callable[[], str], *, pool_size: int) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None
        self._pool_lock: asyncio.Lock | None = None
        self._pool_timeout: float | None = None
        self._sync_pool: ConnectionPool | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def pool(self) -> AsyncConnectionPool:
        """The async pool (autocommit connections), opened on first use."""
        if self._pool is None:
            if self._pool_lock is None:
                self._pool_lock = asyncio.Lock()
            async with self._pool_lock:
                if self._pool is None:
                    dsn = await asyncio.to_thread(self._dsn)
                    await _probe(dsn)
                    pool = _connect.async_pool(
                        dsn, min_size=1, max_size=self._pool_size, name="pgqueue-client"
                    )
                    if self._pool_timeout is not None:
                        pool.timeout = self._pool_timeout
                    await pool.open()
                    self._pool = pool
        return self._pool

    def sync_pool(self) -> ConnectionPool:
        """The blocking pool of the ``*_sync`` operations, opened on first use."""
        if self._sync_pool is None:
            dsn = self._dsn()
            try:
                _connect.connect_sync(dsn, connect_timeout=10).close()
            except psycopg.Error as exc:
                raise translate(exc) from exc
            pool = _connect.sync_pool(
                dsn, min_size=1, max_size=self._pool_size, name="pgqueue-client-sync"
            )
            pool.open()
            self._sync_pool = pool
        return self._sync_pool

    @property
    def pool_timeout(self) -> float | None:
        """Seconds a call waits for a pooled connection (None: psycopg_pool's 30 s)."""
        return self._pool_timeout

    @pool_timeout.setter
    def pool_timeout(self, seconds: float | None) -> None:
        self._pool_timeout = seconds
        if self._pool is not None and seconds is not None:
            self._pool.timeout = seconds

    @property
    def opened(self) -> bool:
        """Whether either pool has been opened (and not closed since)."""
        return self._pool is not None or self._sync_pool is not None

    async def close(self) -> None:
        """Close the pools this seam opened."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._sync_pool is not None:
            self._sync_pool.close()
            self._sync_pool = None

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection (autocommit), passing over any the server ended."""
        async with _connect.live_connection(await self.pool()) as conn:
            yield conn

    # -- enqueue -------------------------------------------------------------------------

    async def enqueue(self, job: NewJob, conn: AsyncConn | None = None) -> int:
        """Write one job (or find the job holding its dedupe key); its id."""
        rows = await self.fetch(query("enqueue"), job.params(), conn)
        return int(rows[0]["id"])

    def enqueue_sync(self, job: NewJob, conn: SyncConn | None = None) -> int:
        """Blocking form of :meth:`enqueue`."""
        rows = self.fetch_sync(query("enqueue"), job.params(), conn)
        return int(rows[0]["id"])

    async def enqueue_bulk(self, jobs: NewJobs, conn: AsyncConn | None = None) -> list[int]:
        """Write every job in one statement; their ids, in the items' order."""
        rows = await self.fetch(query("enqueue_bulk"), jobs.params(), conn)
        return list(rows[0]["ids"] or ())  # array_agg of no rows is NULL

    def enqueue_bulk_sync(self, jobs: NewJobs, conn: SyncConn | None = None) -> list[int]:
        """Blocking form of :meth:`enqueue_bulk`."""
        rows = self.fetch_sync(query("enqueue_bulk"), jobs.params(), conn)
        return list(rows[0]["ids"] or ())  # array_agg of no rows is NULL

    async def enqueue_batch(self, batch: NewBatch, conn: AsyncConn | None = None) -> Batch:
        """Write the batch and its children in one statement; the batch as written."""
        rows = await self.fetch(query("enqueue_batch"), batch.params(), conn)
        written = await self.fetch(query("get_batch"), {"id": rows[0]["id"]}, conn)
        return Batch.from_row(written[0])

    def enqueue_batch_sync(self, batch: NewBatch, conn: SyncConn | None = None) -> Batch:
        """Blocking form of :meth:`enqueue_batch`."""
        rows = self.fetch_sync(query("enqueue_batch"), batch.params(), conn)
        written = self.fetch_sync(query("get_batch"), {"id": rows[0]["id"]}, conn)
        return Batch.from_row(written[0])

    # -- jobs ----------------------------------------------------------------------------

    async def get_job(self, job_id: int) -> Job | None:
        rows = await self.fetch(query("get_job"), {"id": job_id})
        return Job.from_row(rows[0]) if rows else None

    async def job_outcome(self, job_id: int) -> JobOutcome | None:
        """The job's status with its result and error (None: no such job)."""
        rows = await self.fetch(query("job_outcome"), {"id": job_id})
        if not rows:
            return None
        return JobOutcome(JobStatus(rows[0]["status"]), rows[0]["result"], rows[0]["error"])

    async def list_jobs(
        self,
        statuses: list[str] | None,
        queue: str | None,
        task: str | None,
        owner: str | None,
        before_id: int | None,
        limit: int,
    ) -> list[Job]:
        """Jobs, newest first; with an owner, read through the owner index."""
        params = {
            "status": statuses,
            "queue": queue,
            "task": task,
            "before_id": before_id,
            "limit": limit,
        }
        if owner is None:
            rows = await self.fetch(query("list_jobs"), params)
        else:
            rows = await self.fetch(query("list_owner_jobs"), {**params, "owner": owner})
        return [Job.from_row(row) for row in rows]

    async def attempts(self, job_id: int) -> list[Attempt]:
        rows = await self.fetch(query("attempts"), {"id": job_id})
        return [Attempt(**row) for row in rows]

    async def progress_history(
        self, job_id: int, since: datetime | None, after_id: int | None, limit: int
    ) -> list[ProgressEntry]:
        params = {"id": job_id, "since": since, "after_id": after_id, "limit": limit}
        rows = await self.fetch(query("progress_history"), params)
        return [ProgressEntry(**row) for row in rows]

    async def cancel(self, job_id: int) -> JobStatus:
        rows = await self.fetch(query("cancel"), {"id": job_id})
        return JobStatus(rows[0]["status"])

    async def replay(self, job_id: int, extra_attempts: int) -> JobStatus:
        """Give a job that ended without success ``extra_attempts`` more."""
        rows = await self.fetch(query("replay"), {"id": job_id, "extra_attempts": extra_attempts})
        return JobStatus(rows[0]["status"])

    async def rescue(self, stale_after: timedelta) -> list[tuple[int, JobStatus]]:
        rows = await self.fetch(query("rescue"), {"stale_after": stale_after})
        return [(int(row["id"]), JobStatus(row["status"])) for row in rows]

    async def prune(
        self, completed_after: timedelta | None, failed_after: timedelta | None, limit: int
    ) -> int:
        """Delete up to ``limit`` finished jobs past their retention; how many."""
        params = {"completed_after": completed_after, "failed_after": failed_after, "limit": limit}
        rows = await self.fetch(query("prune"), params)
        return int(rows[0]["deleted"])

    # -- queues --------------------------------------------------------------------------

    async def pause_queue(self, name: str) -> None:
        await self.fetch(query("pause_queue"), {"name": name})

    async def resume_queue(self, name: str) -> None:
        await self.fetch(query("resume_queue"), {"name": name})

    async def set_rate_limit(self, name: str, limit: int | None, period: timedelta | None) -> None:
        await self.fetch(query("set_rate_limit"), {"name": name, "limit": limit, "period": period})

    async def queue_stats(self) -> list[dict[str, Any]]:
        return await self.fetch(query("queue_stats"), {})

    # -- batches -------------------------------------------------------------------------

    async def get_batch(self, batch_id: int) -> Batch | None:
        rows = await self.fetch(query("get_batch"), {"id": batch_id})
        return Batch.from_row(rows[0]) if rows else None

    async def list_batches(
        self, statuses: list[str] | None, owner: str | None, before_id: int | None, limit: int
    ) -> list[Batch]:
        params = {"status": statuses, "owner": owner, "before_id": before_id, "limit": limit}
        return [Batch.from_row(row) for row in await self.fetch(query("list_batches"), params)]

    async def batch_children(
        self, batch_id: int, statuses: list[str] | None, after_id: int | None, limit: int
    ) -> list[Job]:
        params = {"id": batch_id, "status": statuses, "after_id": after_id, "limit": limit}
        return [Job.from_row(row) for row in await self.fetch(query("batch_children"), params)]

    async def batch_results(self, batch_id: int) -> list[Any]:
        """The children's results, in the order they were enqueued."""
        rows = await self.fetch(query("batch_results"), {"id": batch_id})
        return [row["result"] for row in rows]

    async def batch_errors(self, batch_id: int) -> dict[int, tuple[str, str | None]]:
        """Up to 100 children that ended without success: id → (status, error)."""
        rows = await self.fetch(query("batch_errors"), {"id": batch_id})
        return {int(row["id"]): (str(row["status"]), row["error"]) for row in rows}

    async def pause_batch(self, batch_id: int) -> BatchStatus:
        return await self._batch_status(query("pause_batch"), batch_id)

    async def resume_batch(self, batch_id: int) -> BatchStatus:
        return await self._batch_status(query("resume_batch"), batch_id)

    async def cancel_batch(self, batch_id: int) -> BatchStatus:
        return await self._batch_status(query("cancel_batch"), batch_id)

    async def _batch_status(self, statement: LiteralString, batch_id: int) -> BatchStatus:
        rows = await self.fetch(statement, {"id": batch_id})
        return BatchStatus(rows[0]["status"])

    # -- periodic tasks and the schema ---------------------------------------------------

    async def scheduler_query(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """A query of the periodic scheduler (:func:`pgqueue._periodic.schedule_due`
        and ``schedule_status`` name them), its rows as tuples."""
        return [tuple(row.values()) for row in await self.fetch(query(name), params)]

    async def schema_status(self, release: str, timeout: float) -> tuple[str | None, bool]:
        """The schema's revision (None: not installed), and whether it serves
        ``release``; raises if no connection comes within ``timeout``."""
        pool = await self.pool()
        try:
            async with _connect.live_connection(pool, timeout=timeout) as conn:
                try:
                    row = await (await conn.execute(query("schema_revision"))).fetchone()
                except psycopg.errors.UndefinedTable:
                    return None, False
                revision = None if row is None else str(row[0])
                if revision is None or revision == release:
                    return revision, revision is not None
                cur = await conn.execute(query("serves_revision"), {"revision": release})
                answer = await cur.fetchone()
                return revision, bool(answer and answer[0])
        except psycopg.Error as exc:
            raise translate(exc) from exc

    # -- the one way in ------------------------------------------------------------------

    async def fetch(
        self,
        statement: LiteralString,
        params: Mapping[str, Any],
        conn: AsyncConn | None = None,
    ) -> list[dict[str, Any]]:
        """Run ``statement`` (on ``conn``, else a live pooled connection); its
        rows as dicts (none for a statement that returns none), errors
        translated. The status API's own reads come in here too."""
        try:
            if conn is not None:
                return await _fetch_dicts(conn, statement, params)
            # live_connection directly, not self.connection(): one context
            # manager less on every call of the request path
            async with _connect.live_connection(await self.pool()) as pooled:
                return await _fetch_dicts(pooled, statement, params)
        except psycopg.Error as exc:
            raise translate(exc) from exc

    def fetch_sync(
        self,
        statement: LiteralString,
        params: Mapping[str, Any],
        conn: SyncConn | None = None,
    ) -> list[dict[str, Any]]:
        """Blocking form of :meth:`fetch`."""
        try:
            if conn is not None:
                return _fetch_dicts_sync(conn, statement, params)
            with _connect.live_connection_sync(self.sync_pool()) as pooled:
                return _fetch_dicts_sync(pooled, statement, params)
        except psycopg.Error as exc:
            raise translate(exc) from exc


async def _fetch_dicts(
    conn: AsyncConn, statement: LiteralString, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(statement, params)
        return await cur.fetchall() if cur.description else []


def _fetch_dicts_sync(
    conn: SyncConn, statement: LiteralString, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


async def _probe(dsn: str) -> None:
    """Connect once, so an unreachable database fails fast with a clear error
    instead of a pool timeout."""
    try:
        conn = await _connect.connect(dsn, connect_timeout=10)
    except psycopg.Error as exc:
        raise translate(exc) from exc
    await conn.close()


# -- a worker's side -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """A worker's hold on one attempt of one job: every worker call names it."""

    job_id: int
    attempt: int


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimedJob:
    """One job a claim handed to this worker."""

    lease: Lease
    task: str
    args: dict[str, Any]
    queue: str
    max_attempts: int
    timeout: float | None
    """Seconds the attempt may run, or None."""
    leased: float
    """When the claim that leased it was sent, by this process's monotonic
    clock: the lease is as fresh as that (a claim retried through an outage
    counts from its last try, not its first)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """How an attempt ended badly: ``pgqueue.fail`` decides the next state."""

    error: str
    retryable: bool
    timed_out: bool = False
    retry_in: timedelta | None = None
    """Delay before the next attempt; None: the default backoff."""


@dataclasses.dataclass(frozen=True, slots=True)
class Release:
    """A job handed back without charging its attempt, claimable after ``run_in``."""

    run_in: timedelta = timedelta(0)


class WorkerDatabase:
    """The operations of one worker process on its database.

    ``give_up_now(operation)`` is asked after each failed try: True ends the
    retrying at once (a stopping worker claims nothing more; a worker past
    its shutdown deadline writes nothing more).
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int,
        name: str,
        give_up_now: Callable[[str], bool] = lambda operation: False,
    ) -> None:
        self.dsn = dsn
        self._pool_size = pool_size
        self._name = name
        self._give_up_now = give_up_now
        self._pool: AsyncConnectionPool | None = None
        self.claim_retries = 0
        """Claims retried after a connection failure (an earlier try may have
        committed rows whose reply was lost: see :meth:`held_by_worker`)."""

    # -- lifecycle -----------------------------------------------------------------------

    def new_pool(self) -> AsyncConnectionPool:
        """The pool (not yet open), made by :mod:`pgqueue._connect`."""
        return _connect.async_pool(
            self.dsn,
            min_size=2,
            max_size=self._pool_size,
            name=self._name,
            # Keep reconnecting through a database restart or outage (a day is
            # "forever" here; psycopg_pool treats 0 as "give up at once").
            reconnect_timeout=86_400,
        )

    async def open(self, timeout: float = 30.0) -> None:
        self._pool = self.new_pool()
        await self._pool.open(wait=True, timeout=timeout)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    # -- claiming ------------------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_timeout: timedelta,
        tasks: Sequence[str],
    ) -> list[ClaimedJob]:
        """Lease up to ``limit`` due jobs of ``queues`` and ``tasks``."""
        params = {
            "worker_id": worker_id,
            "queues": list(queues),
            "limit": limit,
            "lease_timeout": lease_timeout,
            "tasks": list(tasks),
        }
        rows, sent = await self._run_timed("claim", params)
        return [
            ClaimedJob(Lease(job_id, attempt), task, args, queue, max_attempts, timeout, sent)
            for job_id, task, args, queue, attempt, max_attempts, timeout in rows
        ]

    async def rate_wait(self, queues: Sequence[str]) -> float | None:
        """Seconds until a rate-limited queue of ``queues`` that is out of room
        may start a job again; None if none is held back by its limit."""
        rows = await self._run("rate_wait", {"queues": list(queues)}, give_up=0)
        wait = rows[0][0] if rows else None
        return None if wait is None else float(wait)

    async def held_by_worker(self, worker_id: str, within: timedelta) -> list[Lease]:
        """Leases the database gave ``worker_id`` in the last ``within``."""
        rows = await self._run("held_by_worker", {"worker_id": worker_id, "within": within})
        return [Lease(job_id, attempt) for job_id, attempt in rows]

    async def unfinished(self, queues: Sequence[str]) -> bool:
        """Whether any job of ``queues`` is pending, retrying (due or not) or running."""
        rows = await self._run("unfinished", {"queues": list(queues)})
        return bool(rows[0][0])

    # -- outcomes ------------------------------------------------------------------------

    async def complete_many(self, results: Sequence[tuple[Lease, Jsonb]]) -> set[Lease]:
        """Complete each lease with its result, in one statement; the leases
        that were still held (and so completed)."""
        params = {
            "ids": [lease.job_id for lease, _ in results],
            "attempts": [lease.attempt for lease, _ in results],
            "results": [result for _, result in results],
        }
        rows = await self._run("complete_many", params)
        return {Lease(job_id, attempt) for job_id, attempt in rows}

    async def fail(self, lease: Lease, failure: Failure) -> JobStatus:
        """Record a failed attempt; the job's new status."""
        params = {
            "id": lease.job_id,
            "attempt": lease.attempt,
            "error": failure.error,
            "retryable": failure.retryable,
            "timed_out": failure.timed_out,
            "retry_in": failure.retry_in,
        }
        rows = await self._run("fail", params)
        return JobStatus(rows[0][0])

    async def release(self, lease: Lease, run_in: timedelta = timedelta(0)) -> None:
        """Hand the job back without charging the attempt; claimable after ``run_in``."""
        params = {"id": lease.job_id, "attempt": lease.attempt, "run_in": run_in}
        await self._run("release", params)

    # -- leases --------------------------------------------------------------------------

    async def heartbeat(
        self, worker_id: str, leases: Sequence[Lease], *, give_up: float | None = None
    ) -> set[Lease]:
        """Renew ``leases`` in one statement; those still held."""
        params = {
            "worker_id": worker_id,
            "ids": [lease.job_id for lease in leases],
            "attempts": [lease.attempt for lease in leases],
        }
        rows = await self._run("heartbeat", params, give_up=give_up)
        return {Lease(row[0], row[1]) for row in rows}

    async def progress(
        self,
        lease: Lease,
        pct: float,
        message: str | None,
        *,
        history: int,
        give_up: float | None = None,
    ) -> None:
        """Record a progress report (and keep ``history`` of them)."""
        params = {
            "id": lease.job_id,
            "attempt": lease.attempt,
            "pct": pct,
            "message": message,
            "history": history,
        }
        await self._run("progress", params, give_up=give_up)

    # -- maintenance ---------------------------------------------------------------------

    async def rescue(self, stale_after: timedelta) -> list[tuple[int, JobStatus]]:
        """One rescue pass (one worker at a time): running jobs whose lease went
        stale, with the status each was moved to. Tries once."""
        rows = await self._run("rescue", {"stale_after": stale_after}, give_up=0)
        return [(int(job_id), JobStatus(status)) for job_id, status in rows]

    async def prune(self, completed_after: timedelta, failed_after: timedelta, limit: int) -> int:
        """Delete up to ``limit`` finished jobs past their retention; how many. Tries once."""
        params = {"completed_after": completed_after, "failed_after": failed_after, "limit": limit}
        rows = await self._run("prune", params, give_up=0)
        return int(rows[0][0])

    async def scheduler_query(
        self, name: str, params: dict[str, Any], *, give_up: float | None = None
    ) -> list[Any]:
        """A query of the periodic scheduler (:func:`pgqueue._periodic.schedule_due`
        names them: the schedules' state and the ticks it enqueues)."""
        return await self._run(name, params, give_up=give_up)

    # -- the one way in ------------------------------------------------------------------

    async def _run(
        self, name: str, params: dict[str, Any], *, give_up: float | None = None
    ) -> list[Any]:
        """Run named query ``name``, retrying connection failures with backoff
        for at most ``give_up`` seconds (None: until it works, or until
        ``give_up_now``); pgqueue's refusals raise at once, translated."""
        rows, _ = await self._run_timed(name, params, give_up=give_up)
        return rows

    async def _run_timed(
        self, name: str, params: dict[str, Any], *, give_up: float | None = None
    ) -> tuple[list[Any], float]:
        """:meth:`_run`, and when the try that succeeded began (monotonic)."""
        assert self._pool is not None, "the worker's database is not open"
        sql = query(name)
        delay = 0.05
        started = time.monotonic()
        while True:
            tried = time.monotonic()
            try:
                async with _connect.live_connection(self._pool, timeout=5) as conn:
                    cur = await conn.execute(sql, params)
                    return (await cur.fetchall() if cur.description else []), tried
            except RETRYABLE as exc:
                expired = give_up is not None and time.monotonic() - started >= give_up
                if expired or self._give_up_now(name):
                    raise translate(exc) if isinstance(exc, psycopg.Error) else exc from exc
                if name == "claim":
                    self.claim_retries += 1
                log.warning(
                    "database unavailable for %s (%s); retrying in %.1fs",
                    name,
                    str(exc).strip()[:200],
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except psycopg.Error as exc:
                raise translate(exc) from exc
