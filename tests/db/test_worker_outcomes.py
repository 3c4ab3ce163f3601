"""What a worker does when writing an outcome fails for a reason other than
the outcome itself, on a real PostgreSQL.

The fault is injected in the one place it arises in production: the worker's
connections. ``_FlakyConnection`` makes the next ``complete_many`` statements
fail as a pooler mixing up prepared statements made them fail (the statement
never ran); everything else runs on the real database.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

import pgqueue
from pgqueue import JobStatus, _connect
from pgqueue._database import WorkerDatabase

from .test_worker_inprocess import FAST


class _FlakyConnection(psycopg.AsyncConnection[Any]):
    """Fails the next ``failures`` completion statements with ``error``, and
    every completion statement carrying a result that contains "poison"."""

    failures: ClassVar[int] = 0
    error: ClassVar[type[psycopg.Error]] = psycopg.errors.InvalidSqlStatementName

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        if "complete_many" in str(query):
            results = [str(getattr(r, "obj", r)) for r in (params or {}).get("results", [])]
            if any("poison" in r for r in results):
                raise psycopg.errors.UntranslatableCharacter("unsupported Unicode escape sequence")
            if _FlakyConnection.failures > 0:
                _FlakyConnection.failures -= 1
                raise _FlakyConnection.error('prepared statement "_pg3_1" does not exist')
        return await super().execute(query, params, **kwargs)


class _FlakyDatabase(WorkerDatabase):
    """The worker's database on connections that fail as ``_FlakyConnection`` says."""

    def new_pool(self) -> AsyncConnectionPool:
        return _connect.async_pool(
            self.dsn, min_size=2, max_size=4, name="flaky", connection_class=_FlakyConnection
        )


@pytest.fixture
def flaky() -> type[_FlakyConnection]:
    _FlakyConnection.failures = 0
    _FlakyConnection.error = psycopg.errors.InvalidSqlStatementName
    return _FlakyConnection


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.InvalidSqlStatementName,  # 26000
        psycopg.errors.DuplicatePreparedStatement,  # 42P05
        psycopg.errors.ProtocolViolation,  # 08P01
    ],
)
async def test_a_completion_error_not_caused_by_the_results_never_fails_the_jobs(
    queue: pgqueue.Queue, flaky: type[_FlakyConnection], error: type[psycopg.Error]
) -> None:
    @queue.task
    async def double(ctx: pgqueue.JobContext, n: int) -> int:
        return 2 * n

    ids = await queue.enqueue_many(double, [{"n": n} for n in range(20)])
    flaky.error = error
    flaky.failures = 2  # the batch, then its first retry
    worker = pgqueue.Worker(queue, database=_FlakyDatabase, **FAST)
    await asyncio.wait_for(worker.run(install_signal_handlers=False, until_idle=True), 30)

    assert flaky.failures == 0, "the fault was never injected"
    jobs = [await queue.get_job(i) for i in ids]
    assert [(j.status, j.result) for j in jobs if j is not None] == [
        (JobStatus.COMPLETED, 2 * n) for n in range(20)
    ]
    assert worker.outcomes["completed"] == 20
    assert sum(worker.outcomes.values()) == 20


async def test_a_result_the_database_refuses_fails_only_its_own_job(
    queue: pgqueue.Queue, flaky: type[_FlakyConnection]
) -> None:
    @queue.task
    async def echo(ctx: pgqueue.JobContext, s: str) -> str:
        return s

    ids = await queue.enqueue_many(echo, [{"s": s} for s in ("a", "poison", "b", "c")])
    worker = pgqueue.Worker(queue, database=_FlakyDatabase, **FAST)
    await asyncio.wait_for(worker.run(install_signal_handlers=False, until_idle=True), 30)

    jobs = [await queue.get_job(i) for i in ids]
    assert [(j.status, j.result) for j in jobs if j is not None] == [
        (JobStatus.COMPLETED, "a"),
        (JobStatus.FAILED, None),
        (JobStatus.COMPLETED, "b"),
        (JobStatus.COMPLETED, "c"),
    ]
    assert worker.outcomes["completed"] == 3
    assert worker.outcomes["failed"] == 1
