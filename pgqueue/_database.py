"""The worker's seam to PostgreSQL: each operation a worker performs, by name,
with typed rows in and out.

The worker calls these methods and never SQL. This module owns the worker's
connection pool, the check that passes over pooled connections the server
ended (:func:`pgqueue._connect.live_connection`), the retrying of connection
failures, and the translation of SQLSTATEs into pgqueue's exceptions
(:func:`pgqueue.errors.translate`). A refusal (a stale lease, a job in the
wrong state) is raised at once; a lost connection is retried with backoff
until ``give_up`` seconds have passed (by default, until it works), so a
database restart only pauses a worker.

Tests inject faults here: ``Worker(queue, database=SubclassOfWorkerDatabase)``
(tests/db/test_worker_fencing.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from . import _connect
from ._sql import query
from ._status import JobStatus
from .errors import translate

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
