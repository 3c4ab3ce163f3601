"""Rate limits per queue: at most ``rate_limit`` jobs started in any window of
``rate_period``, across all workers, exact under concurrent claimers (the
claim serializes on the queue's row); unlimited queues pay nothing and lock
no queue row; idle workers sleep until the window has room instead of polling.

Exactness is checked on the jobs' ``leased_at`` (the database time the claim
recorded in the window): no half-open window [t, t + period) holds more than
the limit, with no tolerance. Times seen by task bodies in Python add the
worker's own dispatch delay on top, so the worker test checks their windows
shortened by that tolerance, BODY_LAG (documented in docs/scheduling.md).
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

import pgqueue
from pgqueue._database import ClaimedJob, WorkerDatabase

from ._helpers import BAD_INPUT, Conn, claim, complete, new_queue, rows, scalar

SHARED_DATABASE = True  # one database per module, emptied before each test (conftest.py)


def set_limit(conn: Conn, queue: str, limit: int | None, seconds: float = 1.0) -> None:
    conn.execute(
        "SELECT pgqueue.set_rate_limit(%s, %s, %s)", (queue, limit, timedelta(seconds=seconds))
    )


def fill(conn: Conn, queue: str, n: int, *, key: str | None = None) -> None:
    """``n`` due jobs in ``queue`` (with concurrency key ``key``, limit 1000)."""
    conn.execute(
        "INSERT INTO pgqueue.jobs (queue, task, concurrency_key, concurrency_limit)"
        " SELECT %s, 't', %s, CASE WHEN %s::text IS NULL THEN NULL ELSE 1000 END"
        "   FROM generate_series(1, %s)",
        (queue, key, key, n),
    )


def max_in_window(times: list[datetime], period: timedelta) -> int:
    """The most of ``times`` in any half-open window [t, t + period)."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + period:
            j += 1
        best = max(best, j - i)
    return best


def window(conn: Conn, queue: str) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT rate_limit, rate_period, cardinality(rate_at), rate_n"
        "  FROM pgqueue.queues WHERE name = %s",
        (queue,),
    ).fetchone()
    assert row is not None
    return tuple(row)


# -- the claim ---------------------------------------------------------------------------


def test_claim_takes_at_most_the_limit_per_period(conn: Conn) -> None:
    q = new_queue()
    set_limit(conn, q, 3, seconds=0.5)
    fill(conn, q, 10)
    assert len(claim(conn, queues=[q], limit=2)) == 2
    assert len(claim(conn, queues=[q], limit=5)) == 1  # one left in this window
    assert claim(conn, queues=[q], limit=5) == []
    assert window(conn, q)[2:] == (2, [2, 1])
    time.sleep(0.55)
    assert len(claim(conn, queues=[q], limit=5)) == 3
    # the claims that left the window are dropped from it
    assert window(conn, q) == (3, timedelta(seconds=0.5), 1, [3])


def test_unlimited_queues_in_the_same_claim_are_unaffected(conn: Conn) -> None:
    limited, free = new_queue(), new_queue()
    set_limit(conn, limited, 2, seconds=60)
    fill(conn, limited, 5)
    fill(conn, free, 5)
    got = claim(conn, queues=[limited, free], limit=10)
    assert sorted(r["queue"] for r in got) == sorted([limited] * 2 + [free] * 5)
    fill(conn, free, 3)
    got = claim(conn, queues=[limited, free], limit=10)
    assert [r["queue"] for r in got] == [free] * 3


def test_keyed_and_plain_jobs_share_the_limit(conn: Conn) -> None:
    q = new_queue()
    set_limit(conn, q, 4, seconds=60)
    fill(conn, q, 3)
    fill(conn, q, 3, key="k")
    got = claim(conn, queues=[q], limit=10)
    assert len(got) == 4
    assert claim(conn, queues=[q], limit=10) == []


def test_a_full_queue_leaves_its_jobs_pending(conn: Conn) -> None:
    q = new_queue()
    set_limit(conn, q, 1, seconds=60)
    fill(conn, q, 2)
    assert len(claim(conn, queues=[q], limit=5)) == 1
    assert claim(conn, queues=[q], limit=5) == []
    assert (
        scalar(
            conn, "SELECT count(*) FROM pgqueue.jobs WHERE queue = %s AND status = 'pending'", (q,)
        )
        == 1
    )


def test_clearing_the_limit_frees_the_queue(conn: Conn) -> None:
    q = new_queue()
    set_limit(conn, q, 1, seconds=60)
    fill(conn, q, 5)
    assert len(claim(conn, queues=[q], limit=5)) == 1
    set_limit(conn, q, None)
    assert window(conn, q) == (None, None, 0, [])
    assert len(claim(conn, queues=[q], limit=5)) == 4


def test_changing_the_limit_keeps_the_window(conn: Conn) -> None:
    q = new_queue()
    set_limit(conn, q, 2, seconds=60)
    fill(conn, q, 10)
    assert len(claim(conn, queues=[q], limit=5)) == 2
    set_limit(conn, q, 5, seconds=60)
    assert len(claim(conn, queues=[q], limit=5)) == 3


def test_a_paused_limited_queue_stays_paused(conn: Conn) -> None:
    q = new_queue()
    set_limit(conn, q, 5, seconds=60)
    conn.execute("SELECT pgqueue.pause_queue(%s)", (q,))
    fill(conn, q, 2)
    assert claim(conn, queues=[q], limit=5) == []
    conn.execute("SELECT pgqueue.resume_queue(%s)", (q,))
    assert len(claim(conn, queues=[q], limit=5)) == 2
    assert window(conn, q)[0] == 5


@pytest.mark.parametrize(
    ("limit", "seconds"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -1.0), (1, None)]
)
def test_set_rate_limit_refuses_bad_values(conn: Conn, limit: int, seconds: float | None) -> None:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(
            "SELECT pgqueue.set_rate_limit('q', %s, %s)",
            (limit, None if seconds is None else timedelta(seconds=seconds)),
        )
    assert info.value.sqlstate == BAD_INPUT


def test_rate_wait_says_when_a_full_queue_has_room(conn: Conn) -> None:
    limited, free = new_queue(), new_queue()
    set_limit(conn, limited, 2, seconds=2)
    assert scalar(conn, "SELECT pgqueue.rate_wait(%s)", ([limited, free],)) is None
    fill(conn, limited, 5)
    claim(conn, queues=[limited], limit=1)
    assert scalar(conn, "SELECT pgqueue.rate_wait(%s)", ([limited],)) is None  # room for one
    claim(conn, queues=[limited], limit=1)
    wait = scalar(conn, "SELECT pgqueue.rate_wait(%s)", ([limited, free],))
    assert 1.5 < wait <= 2.0
    assert scalar(conn, "SELECT pgqueue.rate_wait(%s)", ([free],)) is None


# -- exact under concurrency ---------------------------------------------------------------


def test_concurrent_claimers_never_exceed_the_limit(db_dsn: str, conn: Conn) -> None:
    """8 threads claim as fast as they can for 3.2 s from a queue limited to
    10 jobs per second: no 1-second window of leased_at holds more than 10,
    and the limit is used (not starved by the serialization)."""
    q = new_queue()
    limit, period, run_for = 10, timedelta(seconds=1), 3.2
    set_limit(conn, q, limit, seconds=1)
    fill(conn, q, 500)
    stop = time.monotonic() + run_for
    errors: list[BaseException] = []

    def claimer(n: int) -> None:
        try:
            with psycopg.connect(db_dsn, autocommit=True) as c:
                while time.monotonic() < stop:
                    for job in claim(c, worker=f"w{n}", queues=[q], limit=3):
                        complete(c, job["id"], job["attempts"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    started = [
        r["leased_at"]
        for r in rows(
            conn, "SELECT leased_at FROM pgqueue.jobs WHERE queue = %s AND attempts > 0", (q,)
        )
    ]
    assert max_in_window(started, period) <= limit
    # 3.2 s hold at most 4 windows' worth; the first 3 windows are surely used
    assert 3 * limit <= len(started) <= 4 * limit


# -- unlimited queues pay nothing --------------------------------------------------------


def test_claims_of_unlimited_queues_lock_no_queue_row(db_dsn: str, conn: Conn) -> None:
    q = new_queue()
    set_limit(conn, q, 5)
    set_limit(conn, q, None)  # the queue keeps a row, without a limit
    fill(conn, q, 3)
    with psycopg.connect(db_dsn) as holder:
        # another transaction holds the queue's row: a claim that locked it would wait
        holder.execute("SELECT 1 FROM pgqueue.queues WHERE name = %s FOR UPDATE", (q,))
        conn.execute("SET lock_timeout = '1s'")
        try:
            assert len(claim(conn, queues=[q], limit=5)) == 3
        finally:
            conn.execute("RESET lock_timeout")
        holder.rollback()
    # nor does it write or lock the row (either would set its xmax)
    xmax = scalar(conn, "SELECT xmax::text FROM pgqueue.queues WHERE name = %s", (q,))
    fill(conn, q, 2)
    assert len(claim(conn, queues=[q], limit=5)) == 2
    assert scalar(conn, "SELECT xmax::text FROM pgqueue.queues WHERE name = %s", (q,)) == xmax


def test_claims_of_limited_queues_serialize_on_the_queue_row(db_dsn: str, conn: Conn) -> None:
    q = new_queue()
    set_limit(conn, q, 5)
    fill(conn, q, 3)
    with psycopg.connect(db_dsn) as holder:
        holder.execute("SELECT 1 FROM pgqueue.queues WHERE name = %s FOR UPDATE", (q,))
        conn.execute("SET lock_timeout = '200ms'")
        try:
            with pytest.raises(psycopg.errors.LockNotAvailable):
                claim(conn, queues=[q], limit=5)
        finally:
            conn.execute("RESET lock_timeout")
        holder.rollback()
    assert len(claim(conn, queues=[q], limit=5)) == 3


# -- a worker ------------------------------------------------------------------------------

BODY_LAG = timedelta(milliseconds=100)
"""Tolerance for the worker test: how much later than its claim's database
time a task body may start (thread dispatch; generous for a loaded server)."""


async def leased_at(queue: pgqueue.Queue, name: str) -> list[datetime]:
    async with await psycopg.AsyncConnection.connect(queue.dsn) as c:
        cur = await c.execute(
            "SELECT leased_at FROM pgqueue.jobs WHERE queue = %s AND attempts > 0", (name,)
        )
        return [r[0] for r in await cur.fetchall()]


async def test_worker_keeps_the_limit_and_sleeps_until_room(queue: pgqueue.Queue) -> None:
    """A worker with a long poll interval drains a limited queue at the limit's
    pace: it sleeps until the window has room (rate_wait), so it neither waits
    a poll interval per window nor spins. Task bodies record their start times;
    a body starts a little after its claim and that lag varies, so windows of
    their times are BODY_LAG shorter than the period."""
    limit, jobs = 5, 20
    starts: list[float] = []

    @queue.task(queue="limited")
    def record(ctx: pgqueue.JobContext) -> None:
        starts.append(time.monotonic())

    await queue.set_rate_limit("limited", limit, per=1.0)
    await queue.enqueue_many(record, [{} for _ in range(jobs)])
    claims = 0

    class CountingClaims(WorkerDatabase):
        async def claim(self, *args: Any, **kwargs: Any) -> list[ClaimedJob]:
            nonlocal claims
            claims += 1
            return await super().claim(*args, **kwargs)

    worker = pgqueue.Worker(
        queue, poll_interval=30.0, heartbeat_interval=0.5, concurrency=10, database=CountingClaims
    )
    began = time.monotonic()
    runner = asyncio.create_task(worker.run(install_signal_handlers=False, until_idle=True))
    await asyncio.wait_for(runner, timeout=15)
    took = time.monotonic() - began
    assert len(starts) == jobs
    # 20 jobs at 5 per second: 4 windows, the last one starting after ~3 s
    assert 2.9 < took < 8.0, took
    # by the database's clock, exact; by the bodies' clock, over windows
    # shortened by the tolerance for the lag of a body behind its claim
    assert max_in_window(await leased_at(queue, "limited"), timedelta(seconds=1)) <= limit
    body_starts = [datetime.fromtimestamp(s) for s in starts]
    assert max_in_window(body_starts, timedelta(seconds=1) - BODY_LAG) <= limit
    # one claim per window or so (plus wakeups), not a busy loop
    assert claims <= 20, claims
    stats = {s["queue"]: s for s in await queue.queue_stats()}
    assert stats["limited"]["rate_limit"] == limit
    assert stats["limited"]["rate_per"] == 1.0
