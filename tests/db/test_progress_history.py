"""Progress reports: pgqueue.progress() clamps and records them under the lease,
pgqueue.progress_history keeps the newest N per job, Queue.progress_history
reads them back in order with filters and keyset pages, and every report is
announced on pgqueue_job. All against the real database."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import pgqueue

from ._helpers import (
    BAD_INPUT,
    JOB_MISSING,
    STALE_LEASE,
    Conn,
    cancel,
    db_now,
    fail,
    job,
    new_queue,
    progress,
    reclaim,
    rows,
    scalar,
    start,
)
from .test_worker_inprocess import WAIT, eventually, running_worker

SHARED_DATABASE = True  # one database per module, emptied before each test (conftest.py)

_EMPTY = (
    "TRUNCATE pgqueue.jobs, pgqueue.batches, pgqueue.attempts, pgqueue.progress_history,"
    " pgqueue.queues RESTART IDENTITY CASCADE"
)


@pytest.fixture(autouse=True)
def _empty(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        admin.execute(_EMPTY)


def report(conn: Conn, job_id: int, attempt: int, pct: Any, message: str | None, keep: int) -> int:
    """pgqueue.progress with an explicit history bound."""
    return int(
        scalar(
            conn,
            "SELECT pgqueue.progress(%s::bigint, %s::int, %s::numeric, %s::text, %s::int)",
            (job_id, attempt, pct, message, keep),
        )
    )


def recorded(conn: Conn, job_id: int) -> list[dict[str, Any]]:
    return rows(
        conn,
        "SELECT id, attempt, at, pct, message FROM pgqueue.progress_history"
        " WHERE job_id = %s ORDER BY id",
        (job_id,),
    )


@pytest.mark.parametrize(
    ("pct", "stored"),
    [
        (-5, 0),
        (0, 0),
        (33.4, 33),
        (33.6, 34),
        (99.5, 100),
        (150, 100),
        (Decimal("1e9"), 100),
        (float("inf"), 100),
        (float("-inf"), 0),
    ],
)
def test_progress_is_clamped_to_0_100_and_recorded_with_its_message(
    conn: Conn, pct: Any, stored: int
) -> None:
    job_id, attempt = start(conn)
    assert progress(conn, job_id, attempt, pct, f"at {pct}") == stored
    row = job(conn, job_id)
    assert (row["progress"], row["progress_message"]) == (stored, f"at {pct}")
    ((entry,),) = [recorded(conn, job_id)]
    assert (entry["pct"], entry["message"], entry["attempt"]) == (stored, f"at {pct}", attempt)
    assert entry["at"] == row["heartbeat_at"]  # the report is also a heartbeat


def test_nan_progress_is_refused_and_nothing_is_recorded(conn: Conn) -> None:
    job_id, attempt = start(conn)
    progress(conn, job_id, attempt, 10, "ten")
    for bad in (float("nan"), Decimal("NaN"), None):
        with pytest.raises(psycopg.Error) as exc:
            progress(conn, job_id, attempt, bad, "bad")
        assert exc.value.sqlstate == BAD_INPUT
    assert [e["pct"] for e in recorded(conn, job_id)] == [10]
    assert (job(conn, job_id)["progress"], job(conn, job_id)["progress_message"]) == (10, "ten")


def test_negative_history_limit_is_refused(conn: Conn) -> None:
    job_id, attempt = start(conn)
    with pytest.raises(psycopg.Error) as exc:
        report(conn, job_id, attempt, 5, None, -1)
    assert exc.value.sqlstate == BAD_INPUT
    assert recorded(conn, job_id) == []


def test_long_messages_are_cut_to_1000_characters(conn: Conn) -> None:
    job_id, attempt = start(conn)
    progress(conn, job_id, attempt, 1, "x" * 5000)
    assert len(recorded(conn, job_id)[0]["message"]) == 1000
    assert len(job(conn, job_id)["progress_message"]) == 1000


async def test_history_is_read_back_oldest_first_by_id(queue: pgqueue.Queue, conn: Conn) -> None:
    job_id, attempt = start(conn)
    other, other_attempt = start(conn)
    for pct in (10, 5, 50, 50, 90):  # progress may go back and repeat; every report is kept
        progress(conn, job_id, attempt, pct, f"p{pct}")
        progress(conn, other, other_attempt, 1, "other job")
    entries = await queue.progress_history(job_id)
    assert [e.pct for e in entries] == [10, 5, 50, 50, 90]
    assert [e.message for e in entries] == ["p10", "p5", "p50", "p50", "p90"]
    assert [e.id for e in entries] == sorted(e.id for e in entries)
    assert all(e.job_id == job_id and e.attempt == attempt for e in entries)
    assert [e.at for e in entries] == sorted(e.at for e in entries)
    assert entries[0].to_dict()["at"] == entries[0].at.isoformat()
    assert await queue.progress_history(987_654) == []


async def test_history_since_keeps_reports_at_or_after_the_instant(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    job_id, attempt = start(conn)
    for pct in (1, 2, 3, 4):
        progress(conn, job_id, attempt, pct)
    third = recorded(conn, job_id)[2]
    assert [e.pct for e in await queue.progress_history(job_id, since=third["at"])] == [3, 4]
    later = db_now(conn) + timedelta(seconds=1)
    assert await queue.progress_history(job_id, since=later) == []


async def test_history_pages_with_after_id_and_limit(queue: pgqueue.Queue, conn: Conn) -> None:
    job_id, attempt = start(conn)
    for pct in range(7):
        progress(conn, job_id, attempt, pct)
    pages: list[list[int]] = []
    after: int | None = None
    while True:
        page = await queue.progress_history(job_id, after_id=after, limit=3)
        if not page:
            break
        pages.append([e.pct for e in page])
        after = page[-1].id
    assert pages == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="limit"):
        await queue.progress_history(job_id, limit=0)
    with pytest.raises(ValueError, match="limit"):
        await queue.progress_history(job_id, limit=1001)


def test_history_keeps_only_the_newest_n_reports_per_job(conn: Conn) -> None:
    job_id, attempt = start(conn)
    other, other_attempt = start(conn)
    for i in range(3):
        report(conn, other, other_attempt, i, f"other {i}", 100)
    for i in range(12):
        report(conn, job_id, attempt, i, f"r{i}", 5)
        assert len(recorded(conn, job_id)) == min(i + 1, 5)
    assert [e["message"] for e in recorded(conn, job_id)] == [f"r{i}" for i in range(7, 12)]
    assert len(recorded(conn, other)) == 3  # another job's history is untouched
    # a smaller bound trims at the next report; 0 records nothing but still reports
    report(conn, job_id, attempt, 50, "trim", 2)
    assert [e["message"] for e in recorded(conn, job_id)] == ["r11", "trim"]
    report(conn, job_id, attempt, 60, "unrecorded", 0)
    assert [e["message"] for e in recorded(conn, job_id)] == ["r11", "trim"]
    assert job(conn, job_id)["progress"] == 60


def test_default_bound_is_100_reports(conn: Conn) -> None:
    job_id, attempt = start(conn)
    for i in range(105):
        progress(conn, job_id, attempt, i % 101)
    kept = recorded(conn, job_id)
    assert len(kept) == 100
    assert [e["pct"] for e in kept[-3:]] == [(i % 101) for i in range(102, 105)]


def test_history_spans_attempts_and_each_report_names_its_attempt(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=2)
    progress(conn, job_id, attempt, 40, "first try")
    assert fail(conn, job_id, attempt, retry_in=timedelta(0)) == "retrying"
    second = reclaim(conn, job_id)
    assert job(conn, job_id)["progress"] == 0  # a new attempt starts from 0
    progress(conn, job_id, second, 20, "second try")
    assert [(e["attempt"], e["message"]) for e in recorded(conn, job_id)] == [
        (attempt, "first try"),
        (second, "second try"),
    ]


def test_history_is_deleted_with_its_job(conn: Conn) -> None:
    job_id, attempt = start(conn)
    keep_id, keep_attempt = start(conn)
    progress(conn, job_id, attempt, 10)
    progress(conn, keep_id, keep_attempt, 10)
    conn.execute("SELECT pgqueue.complete(%s, %s)", (job_id, attempt))
    assert scalar(conn, "SELECT pgqueue.prune('0', '0')") == 1
    assert recorded(conn, job_id) == []
    assert len(recorded(conn, keep_id)) == 1
    conn.execute("DELETE FROM pgqueue.jobs WHERE id = %s", (keep_id,))
    assert scalar(conn, "SELECT count(*) FROM pgqueue.progress_history") == 0


def test_progress_under_a_stale_lease_is_refused_and_not_recorded(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=2)
    progress(conn, job_id, attempt, 10, "mine")
    assert fail(conn, job_id, attempt, retry_in=timedelta(0)) == "retrying"
    with pytest.raises(psycopg.Error) as exc:  # retrying: nobody holds a lease
        progress(conn, job_id, attempt, 90, "late")
    assert exc.value.sqlstate == STALE_LEASE
    second = reclaim(conn, job_id, "w2")
    with pytest.raises(psycopg.Error) as exc:  # the old attempt, while attempt 2 runs
        progress(conn, job_id, attempt, 95, "later")
    assert exc.value.sqlstate == STALE_LEASE
    assert cancel(conn, job_id) == "cancelled"
    with pytest.raises(psycopg.Error) as exc:  # the current attempt, after a cancel
        progress(conn, job_id, second, 99, "cancelled")
    assert exc.value.sqlstate == STALE_LEASE
    assert [e["message"] for e in recorded(conn, job_id)] == ["mine"]
    row = job(conn, job_id)  # attempt 2 started from 0 and reported nothing
    assert (row["progress"], row["progress_message"]) == (0, None)
    with pytest.raises(psycopg.Error) as exc:
        progress(conn, 987_654, 1, 5)
    assert exc.value.sqlstate == JOB_MISSING


def test_progress_notify_carries_owner_batch_id_and_message(conn: Conn, db_dsn: str) -> None:
    queue = new_queue()
    batch_id = scalar(
        conn,
        "SELECT pgqueue.enqueue_batch(ARRAY['t'], ARRAY['{}'::jsonb], ARRAY[%s], ARRAY[0],"
        " ARRAY[NULL::timestamptz], ARRAY[1], ARRAY[NULL::interval], ARRAY['{}'::jsonb],"
        " 'alice', '{}', NULL)",
        (queue,),
    )
    (job_id, attempt) = conn.execute(
        "SELECT id, attempts FROM pgqueue.claim('w1', ARRAY[%s], 1)", (queue,)
    ).fetchone() or (0, 0)
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_job")
        progress(conn, job_id, attempt, 42.2, "resizing " + "y" * 300)
        progress(conn, job_id, attempt, 42, "resizing " + "y" * 300)  # no change: no notice
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=0.3)]
    assert len(notes) == 1
    note = notes[0]
    assert note["id"] == job_id and note["status"] == "running" and note["progress"] == 42
    assert note["owner"] == "alice" and note["batch_id"] == batch_id and note["queue"] == queue
    assert note["message"] == ("resizing " + "y" * 300)[:200]  # cut to keep NOTIFY small
    assert len(recorded(conn, job_id)) == 2  # both reports are in the history


async def test_worker_progress_history_setting_bounds_what_is_kept(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    @queue.task
    async def steps(ctx: pgqueue.JobContext, n: int) -> int:
        for i in range(1, n + 1):
            ctx.progress(i * 10, f"step {i}")
            await asyncio.sleep(0.06)
        return n

    @queue.task
    async def quiet(ctx: pgqueue.JobContext) -> None:
        ctx.progress(50, "half")
        await asyncio.sleep(0.1)

    async with running_worker(queue, progress_history=3, progress_interval=0.01):
        job_id = await steps.enqueue(n=8)
        assert await queue.wait(job_id, timeout=WAIT) == 8
    kept = await queue.progress_history(job_id)
    assert len(kept) == 3
    assert kept[-1].message == "step 8" and kept[-1].pct == 80
    assert [e.pct for e in kept] == sorted(e.pct for e in kept)

    async with running_worker(queue, progress_history=0, progress_interval=0.01):
        silent = await quiet.enqueue()
        await queue.wait(silent, timeout=WAIT)

        async def reported() -> bool:
            j = await queue.get_job(silent)
            return j is not None and j.progress_message == "half"

        await eventually(reported, what="the progress message to be stored on the job")
    assert await queue.progress_history(silent) == []


def test_history_rows_keep_the_pct_check(conn: Conn) -> None:
    job_id, attempt = start(conn)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO pgqueue.progress_history (job_id, attempt, at, pct)"
            " VALUES (%s, %s, now(), 101)",
            (job_id, attempt),
        )
