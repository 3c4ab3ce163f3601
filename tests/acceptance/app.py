"""The app the acceptance tests run in real ``pgqueue worker`` processes.

Workers load it with ``pgqueue worker --app tests.acceptance.app:queue`` (cwd =
the repository root); the module-level :data:`queue` takes its DSN from
``PGQUEUE_DSN`` in the worker's environment.

Tests enqueue through their own Queue: ``build_queue(db_dsn)`` returns a new
:class:`pgqueue.Queue` on the test's database with *the same tasks* (same names,
queues and signatures) registered, so ``enqueue`` checks the arguments exactly
as a worker running this module will call them. Nothing is shared between
the test process and the workers except the database.

Every task that runs a body writes to ``acceptance_runs`` (created by
:func:`create_runs_table`) on its *own* connection, outside the worker's
transactions, so the tests can tell from the database how many times each
job's body started (one row per start) and finished (``ended`` set).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

import pgqueue

RUNS_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS acceptance_runs (
    job_id   bigint NOT NULL,
    attempt  integer NOT NULL,
    pid      integer NOT NULL,
    started  timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended    timestamptz
)
"""

CRASH_QUEUE = "crash"
"""Queue of :func:`crash` jobs, so a worker only gets them when it asks for them."""


def create_runs_table(dsn: str) -> None:
    """Create ``acceptance_runs`` in the database of ``dsn`` (idempotent)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(RUNS_TABLE_SQL)


class _Recorder:
    """Writes ``acceptance_runs`` rows on connections of its own.

    Async tasks share a small per-process pool (opened lazily on the worker's
    loop) so 60 concurrent no-op jobs do not need 60 connections; sync tasks,
    running in threads, open a short-lived connection each.
    """

    def __init__(self, queue: pgqueue.Queue) -> None:
        self._queue = queue
        self._pool: AsyncConnectionPool | None = None
        self._lock = asyncio.Lock()

    async def _get_pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    pool = AsyncConnectionPool(
                        self._queue.dsn,
                        min_size=1,
                        max_size=3,
                        # no prepared statements: the DSN may be a pooler's
                        kwargs={"autocommit": True, "prepare_threshold": None},
                        open=False,
                        name="acceptance-recorder",
                    )
                    await pool.open(wait=True, timeout=30)
                    self._pool = pool
        return self._pool

    async def run(self, sql: str, params: tuple[Any, ...]) -> None:
        pool = await self._get_pool()
        async with pool.connection() as conn:
            await conn.execute(sql, params)

    def run_sync(self, sql: str, params: tuple[Any, ...]) -> None:
        with psycopg.connect(self._queue.dsn, autocommit=True, prepare_threshold=None) as conn:
            conn.execute(sql, params)


_START_SQL = "INSERT INTO acceptance_runs (job_id, attempt, pid) VALUES (%s, %s, %s)"
_ONCE_SQL = (
    "INSERT INTO acceptance_runs (job_id, attempt, pid, started, ended) "
    "VALUES (%s, %s, %s, clock_timestamp(), clock_timestamp())"
)
_END_SQL = (
    "UPDATE acceptance_runs SET ended = clock_timestamp() "
    "WHERE job_id = %s AND attempt = %s AND pid = %s AND ended IS NULL"
)


def build_queue(dsn: str | None = None) -> pgqueue.Queue:
    """A Queue with every acceptance task registered (DSN: ``dsn`` or the env)."""
    q = pgqueue.Queue(dsn, pool_size=3)
    recorder = _Recorder(q)

    @q.task
    async def record(ctx: pgqueue.JobContext, tag: str | None = None) -> dict[str, Any]:
        """No-op: one ``acceptance_runs`` row (started = ended) per execution."""
        await recorder.run(_ONCE_SQL, (ctx.job_id, ctx.attempt, os.getpid()))
        return {"job_id": ctx.job_id, "tag": tag}

    @q.task
    async def slow(
        ctx: pgqueue.JobContext, seconds: float, then_seconds: float | None = None
    ) -> str:
        """Sleep ``seconds`` (``then_seconds`` on attempts after the first, if
        given), watching ``ctx.should_stop``. The row's ``ended`` is set only if
        the whole sleep ran, so a stopped body leaves ``ended`` NULL."""
        await recorder.run(_START_SQL, (ctx.job_id, ctx.attempt, os.getpid()))
        duration = seconds if ctx.attempt == 1 or then_seconds is None else then_seconds
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            if ctx.should_stop:
                return f"stopped: {ctx.stop_reason}"
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        await recorder.run(_END_SQL, (ctx.job_id, ctx.attempt, os.getpid()))
        return f"slept {duration}"

    @q.task
    def slow_sync(
        ctx: pgqueue.JobContext,
        seconds: float,
        then_seconds: float | None = None,
        cooperative: bool = True,
    ) -> str:
        """Like :func:`slow`, in a worker thread. With ``cooperative`` False it
        ignores ``ctx.should_stop`` (a thread cannot be interrupted)."""
        recorder.run_sync(_START_SQL, (ctx.job_id, ctx.attempt, os.getpid()))
        duration = seconds if ctx.attempt == 1 or then_seconds is None else then_seconds
        deadline = time.monotonic() + duration
        stopped = threading.Event()
        while time.monotonic() < deadline:
            if cooperative and ctx.should_stop:
                return f"stopped: {ctx.stop_reason}"
            stopped.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        recorder.run_sync(_END_SQL, (ctx.job_id, ctx.attempt, os.getpid()))
        return f"slept {duration}"

    @q.task
    async def steps(ctx: pgqueue.JobContext, count: int = 4, pause: float = 0.3) -> int:
        """Report progress ``count`` times, ``pause`` seconds apart."""
        for step in range(1, count + 1):
            await asyncio.sleep(pause)
            ctx.progress(step * 100 / count, f"step {step}/{count}")
        return count

    @q.task
    async def fail(ctx: pgqueue.JobContext, message: str = "boom") -> None:
        """Always raises (one attempt by default: the job ends ``failed``)."""
        raise ValueError(message)

    @q.task(queue=CRASH_QUEUE, max_attempts=2)
    def leak(ctx: pgqueue.JobContext, mib_per_step: int = 20) -> None:
        """A sync task whose memory grows until its worker stops it."""
        recorder.run_sync(_START_SQL, (ctx.job_id, ctx.attempt, os.getpid()))
        hoard: list[bytearray] = []
        while not ctx.should_stop:
            hoard.append(bytearray(os.urandom(16)) * (mib_per_step * 2**16))
            time.sleep(0.1)

    @q.task(queue=CRASH_QUEUE)
    async def crash(ctx: pgqueue.JobContext) -> None:
        """Kills its worker process outright, like a segfault or the OOM killer."""
        await recorder.run(_START_SQL, (ctx.job_id, ctx.attempt, os.getpid()))
        os._exit(1)

    return q


queue = build_queue()
