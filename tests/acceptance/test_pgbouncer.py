"""pgqueue through a real PgBouncer in transaction mode (``tests/pgbouncer.py``:
5 server connections per database, no prepared-statement support as in
PgBouncer < 1.21).

Every test ends by checking the pooler's server connections: none holds a
prepared statement or LISTENs (a pooled session left that way would hand its
state to whichever client gets it next). Each step runs more often than
psycopg's default prepare threshold (5 executions), so a prepared statement
would have been made had pgqueue asked for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import pgqueue
from pgqueue import JobStatus
from tests import pgbouncer as bouncer

from . import app
from .helpers import (
    Processes,
    attempt_outcomes,
    rows,
    scalar,
    status_counts,
    wait_for_status,
    wait_until,
)

POOLER_FLAGS = ("--no-listen", "--vacuum-interval", "0")


@pytest.fixture
def pooled(db_dsn: str, pgbouncer: bouncer.PgBouncer) -> Iterator[str]:
    """The test database through the pooler; its server connections are
    checked for leftovers once the test is done."""
    app.create_runs_table(db_dsn)
    yield pgbouncer.dsn(db_dsn)
    assert_pool_clean(pgbouncer.dsn(db_dsn), db_dsn)


def assert_pool_clean(pooled_dsn: str, direct_dsn: str) -> None:
    """No server connection of the pooler holds a prepared statement or a
    LISTEN. Prepared statements belong to one server session: as many
    transactions at once as the pool has server connections see all of them."""
    conns = [psycopg.connect(pooled_dsn, prepare_threshold=None) for _ in range(bouncer.POOL_SIZE)]
    try:
        seen = []
        for conn in conns:  # each holds its server connection until rollback
            row = conn.execute(
                "SELECT pg_backend_pid(), (SELECT count(*) FROM pg_prepared_statements),"
                " (SELECT count(*) FROM pg_listening_channels())"
            ).fetchone()
            assert row is not None
            seen.append(row)
    finally:
        for conn in conns:
            conn.close()
    assert len({pid for pid, _, _ in seen}) == bouncer.POOL_SIZE, seen
    assert [(prepared, listening) for _, prepared, listening in seen] == [
        (0, 0)
    ] * bouncer.POOL_SIZE, f"(backend, prepared statements, channels): {seen}"
    listening = scalar(
        direct_dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND query ILIKE 'listen%%' AND state = 'idle'"
        " AND client_port IS NOT NULL AND backend_type = 'client backend'"
        " AND application_name = ''",
    )
    assert listening == 0


def assert_quiet(log: str) -> None:
    """No warning, error or traceback in a worker's log."""
    noisy = [
        line
        for line in log.splitlines()
        if re.search(r" (WARNING|ERROR|CRITICAL) |Traceback", line)
    ]
    assert not noisy, "\n".join(noisy)


# -- the client side -------------------------------------------------------------------


async def test_enqueue_in_every_form_through_the_pooler(pooled: str, db_dsn: str) -> None:
    queue = app.build_queue(pooled)
    try:
        made = []
        for n in range(8):
            made.append(await queue.enqueue("record", {"tag": f"one {n}"}))
            made += await queue.enqueue_many("record", [{"tag": f"many {n}"}] * 3)
            batch = await queue.enqueue_batch("record", [{"tag": f"batch {n}"}] * 2)
            assert batch.total == 2
            made.append(queue.enqueue_sync("record", {"tag": f"sync {n}"}))
            async with await psycopg.AsyncConnection.connect(
                pooled, prepare_threshold=None
            ) as conn:
                async with conn.transaction():
                    made.append(await queue.enqueue("record", {"tag": f"tx {n}"}, conn=conn))
                with contextlib.suppress(_Rollback):
                    async with conn.transaction():
                        await queue.enqueue("record", {"tag": "rolled back"}, conn=conn)
                        raise _Rollback
            job = await queue.get_job(made[-1])
            assert job is not None and job.args == {"tag": f"tx {n}"}
        assert len(await queue.list_jobs(limit=1000)) == len(made) + 8 * 2
    finally:
        await queue.close()
    assert scalar(db_dsn, "SELECT count(*) FROM pgqueue.jobs") == 8 * 8
    assert (
        scalar(db_dsn, "SELECT count(*) FROM pgqueue.jobs WHERE args->>'tag' = 'rolled back'") == 0
    )


class _Rollback(Exception):
    pass


# -- workers ---------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["no-listen", "listen-dsn"])
def test_a_worker_drains_through_the_pooler(
    listen: str, pooled: str, db_dsn: str, procs: Processes
) -> None:
    client = app.build_queue(pooled)
    try:
        ids = client.enqueue_many_sync("record", [{"tag": str(n)} for n in range(300)])
    finally:
        asyncio.run(client.close())
    if listen == "no-listen":
        flags, env = POOLER_FLAGS, {}
    else:  # LISTEN and the vacuum pass on a direct connection
        flags, env = (), {"PGQUEUE_LISTEN_DSN": db_dsn}
    worker = procs.worker(pooled, *flags, "--until-idle", concurrency=8, env=env)
    assert worker.wait(timeout=40) == 0, worker.log()

    assert status_counts(db_dsn) == {"completed": 300}
    wrong = scalar(
        db_dsn,
        "SELECT count(*) FROM pgqueue.jobs WHERE result IS DISTINCT FROM"
        " jsonb_build_object('job_id', id, 'tag', args->'tag')",
    )
    assert wrong == 0
    assert scalar(db_dsn, "SELECT count(*) FROM acceptance_runs") == len(ids)
    assert_quiet(worker.log())


def test_a_killed_workers_jobs_are_rescued_through_the_pooler(
    pooled: str, db_dsn: str, procs: Processes
) -> None:
    client = app.build_queue(pooled)
    try:
        ids = [
            client.enqueue_sync("slow", {"seconds": 60, "then_seconds": 0.1}, max_attempts=2)
            for _ in range(3)
        ]
    finally:
        asyncio.run(client.close())
    doomed = procs.worker(pooled, *POOLER_FLAGS, quick_rescue=True, name="doomed")
    wait_until(
        lambda: scalar(db_dsn, "SELECT count(*) FROM acceptance_runs") == 3,
        timeout=15,
        what="the three jobs to start",
    )
    doomed.kill()  # SIGKILL: its leases stay behind
    rescuer = procs.worker(pooled, *POOLER_FLAGS, "--until-idle", quick_rescue=True, name="rescuer")
    assert rescuer.wait(timeout=30) == 0, rescuer.log()

    wait_for_status(db_dsn, {"completed": 3}, timeout=5)
    outcomes = attempt_outcomes(db_dsn)
    assert {job_id: outcomes[job_id][-1] for job_id in ids} == dict.fromkeys(ids, "completed")
    log = rescuer.log()
    assert log.count("rescued job") == 3, log
    assert "pass failed" not in log, log


async def test_periodic_ticks_and_a_rate_limited_queue_through_the_pooler(
    pooled: str, db_dsn: str
) -> None:
    queue = pgqueue.Queue(pooled)
    ran: list[str] = []

    @queue.task(queue="limited")
    async def limited(ctx: pgqueue.JobContext, n: int) -> int:
        ran.append(f"limited {n}")
        return n

    @queue.periodic("* * * * * *", name="every-second", queue="ticks")
    async def tick(ctx: pgqueue.JobContext) -> str:
        ran.append("tick")
        return "tick"

    try:
        await queue.set_rate_limit("limited", 4, per=0.5)
        await queue.enqueue_many(limited, [{"n": n} for n in range(12)])
        started = time.monotonic()
        worker = pgqueue.Worker(
            queue,
            queues=["limited", "ticks"],
            listen=False,
            vacuum_interval=0,
            poll_interval=0.1,
            periodic_interval=0.5,
            rescue_interval=0.5,
            metrics_port=0,
        )
        runner = asyncio.create_task(worker.run(install_signal_handlers=False))
        try:

            async def done() -> bool:
                return sum(r.startswith("limited") for r in ran) == 12 and ran.count("tick") >= 2

            deadline = time.monotonic() + 20
            while not await done():
                assert time.monotonic() < deadline, ran
                assert not runner.done(), runner
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
        finally:
            worker.stop()
            await asyncio.wait_for(runner, 15)
    finally:
        await queue.close()
    # 4 starts per half second: 12 jobs need at least a second
    assert elapsed >= 1.0
    assert worker.maintenance_passes["periodic"] >= 2
    assert sum(worker.maintenance_failures.values()) == 0, worker.maintenance_failures
    counts = dict(
        rows(
            db_dsn, "SELECT queue, count(*) FROM pgqueue.jobs WHERE status = 'completed' GROUP BY 1"
        )
    )
    assert counts["limited"] == 12 and counts["ticks"] >= 2


# -- the status API --------------------------------------------------------------------


async def test_the_api_answers_through_the_pooler(
    aiohttp_client: Any, pooled: str, db_dsn: str
) -> None:
    from pgqueue_service import Settings, create_app, mint_token

    secret = "pgbouncer-tests-" + "s" * 60
    queue = pgqueue.Queue(pooled, listen_dsn=db_dsn)

    @queue.task(queue="api")
    async def echo(ctx: pgqueue.JobContext, value: Any = None) -> Any:
        return value

    client = await aiohttp_client(create_app(queue, Settings(secret=secret, keepalive=0.5)))
    headers = {"Authorization": f"Bearer {mint_token(secret, 'alice')}"}
    created = []
    for n in range(8):
        response = await client.post(
            "/api/v1/jobs", json={"task": "echo", "args": {"value": n}}, headers=headers
        )
        assert response.status == 201, await response.text()
        created.append((await response.json())["id"])
        response = await client.get("/api/v1/jobs/active", headers=headers)
        assert response.status == 200, await response.text()
    body = await response.json()
    assert sorted(job["id"] for job in body["items"]) == created, body
    statuses = dict(rows(db_dsn, "SELECT id, status::text FROM pgqueue.jobs"))
    assert statuses == dict.fromkeys(created, JobStatus.PENDING.value)
    await client.close()
