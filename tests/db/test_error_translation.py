"""What a caller catches when the database refuses or goes away: errors say
what happened (a lost session is DatabaseUnavailable; a CHECK is bad input only
when it guards a value the caller passed)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

import pgqueue
from pgqueue import errors

from ._helpers import Conn, noop_task, scalar


async def test_a_caller_connection_the_server_ended_is_database_unavailable(
    queue: pgqueue.Queue, db_dsn: str, conn: Conn
) -> None:
    t = noop_task(queue)
    async with await psycopg.AsyncConnection.connect(db_dsn) as aconn:
        pid = aconn.info.backend_pid
        assert scalar(conn, "SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(pgqueue.DatabaseUnavailable):
            await t.enqueue(conn=aconn)


async def test_a_session_the_server_ends_mid_call_is_database_unavailable(
    queue: pgqueue.Queue, db_dsn: str, conn: Conn
) -> None:
    """cancel waits on a row lock another transaction holds; the server ends
    the waiting session: the caller gets DatabaseUnavailable, not AdminShutdown."""
    t = noop_task(queue)
    job_id = await t.enqueue()
    with psycopg.connect(db_dsn) as holder:
        holder.execute("SELECT 1 FROM pgqueue.jobs WHERE id = %s FOR UPDATE", [job_id])
        call = asyncio.create_task(queue.cancel(job_id))
        for _ in range(200):
            waiting = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            ).fetchall()
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting, "the cancel never waited on the lock"
        assert scalar(conn, "SELECT pg_terminate_backend(%s)", [waiting[0][0]])
        with pytest.raises(pgqueue.DatabaseUnavailable):
            await call
        holder.rollback()
    # nothing took effect: the job is still pending, and cancellable
    assert scalar(conn, "SELECT status::text FROM pgqueue.jobs WHERE id = %s", [job_id]) == (
        "pending"
    )
    assert await queue.cancel(job_id) is pgqueue.JobStatus.CANCELLED


async def test_a_check_on_pgqueue_state_is_an_invariant_violation_not_bad_input(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    job_id = await noop_task(queue).enqueue()
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        conn.execute(
            "UPDATE pgqueue.jobs SET status = 'completed', completed_at = NULL WHERE id = %s",
            [job_id],
        )
    translated = errors.translate(raised.value)
    assert type(translated) is pgqueue.InvariantViolation
    assert translated.constraint == "jobs_terminal_iff_completed_at"


async def test_a_check_on_a_value_the_caller_passed_is_bad_input_naming_it(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    job_id = await noop_task(queue).enqueue()
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        conn.execute("UPDATE pgqueue.jobs SET owner = '' WHERE id = %s", [job_id])
    translated = errors.translate(raised.value)
    assert type(translated) is pgqueue.InvalidJobError
    assert translated.field == "owner"


async def test_a_database_without_pgqueue_schema_says_to_migrate(empty_db_dsn: str) -> None:
    async with pgqueue.Queue(empty_db_dsn) as queue:
        t = noop_task(queue)
        with pytest.raises(pgqueue.ConfigurationError, match="run `pgqueue migrate`"):
            await t.enqueue()
        with pytest.raises(pgqueue.ConfigurationError, match="run `pgqueue migrate`"):
            await queue.get_job(1)


async def test_an_unknown_enqueue_option_is_named(queue: pgqueue.Queue) -> None:
    t = noop_task(queue)
    with pytest.raises(pgqueue.InvalidJobError, match="unknown option\\(s\\) 'prio'") as exc:
        await queue.enqueue(t, {}, prio=3)
    assert exc.value.field == "prio"
    assert "priority" in str(exc.value)
