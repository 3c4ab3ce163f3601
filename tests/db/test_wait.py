"""Queue.wait and the CLI's live views listen through the one notifier: they
wake on the change they wait for, also after the server ended their session."""

from __future__ import annotations

import asyncio

import pytest

import pgqueue
from pgqueue._queue import _notified_id

from ._helpers import Conn, noop_task, scalar


async def test_a_wait_rides_through_a_lost_listen_session(queue: pgqueue.Queue, conn: Conn) -> None:
    """Queue.wait listens through the notifier: when the server ends its LISTEN
    session it listens again and still wakes on the job's change (the backstop
    re-check is set to an hour here, so only a notification can end the wait)."""
    t = noop_task(queue)
    job_id = await t.enqueue()
    checks = 0

    async def check() -> tuple[bool, str]:
        nonlocal checks
        checks += 1
        status = scalar(conn, "SELECT status FROM pgqueue.jobs WHERE id = %s", [job_id])
        return status == "cancelled", status

    async def checked(times: int) -> None:
        # the wait checks once at its start, then once each time LISTEN is in place
        for _ in range(400):
            if checks >= times:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"checked {checks} times, not {times}")

    waiting = asyncio.create_task(
        queue._wait_for(
            "pgqueue_job",
            lambda payload: _notified_id(payload) == job_id,
            check,
            f"job {job_id}",
            60,
            recheck=3600,
        )
    )
    await checked(2)
    listening = scalar(
        conn,
        "SELECT array_agg(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND query LIKE 'LISTEN%%'",
    )
    assert len(listening) == 1
    assert scalar(conn, "SELECT pg_terminate_backend(%s)", listening)
    await checked(3)
    assert checks == 3 and not waiting.done()
    await queue.cancel(job_id)
    assert await asyncio.wait_for(waiting, 60) == "cancelled"


async def test_a_wait_whose_listen_dsn_cannot_be_reached_fails_at_once(db_dsn: str) -> None:
    """The first LISTEN session is opened by the wait itself: a listen DSN that
    refuses connections is an error for the caller, not a silent poll."""
    async with pgqueue.Queue(db_dsn, listen_dsn="postgresql://nobody@127.0.0.1:1/none") as queue:
        t = noop_task(queue)
        job_id = await t.enqueue()
        with pytest.raises(pgqueue.DatabaseUnavailable):
            await queue.wait(job_id, timeout=60)


async def test_a_wait_for_a_job_already_ended_opens_no_listen_session(db_dsn: str) -> None:
    # a listen DSN that cannot be reached: the wait must not need it
    async with pgqueue.Queue(db_dsn, listen_dsn="postgresql://nobody@127.0.0.1:1/none") as queue:
        t = noop_task(queue)
        job_id = await t.enqueue()
        await queue.cancel(job_id)
        with pytest.raises(pgqueue.JobFailed):
            await queue.wait(job_id, timeout=60)
