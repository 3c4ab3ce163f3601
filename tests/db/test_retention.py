"""Retention: pgqueue.prune() deletes old finished jobs (their attempts and
progress history with them) and old finished batches with all their children,
in chunks, one pruner at a time; it never touches a job that can still run.
Workers run it on their own, so a steadily loaded table stays bounded."""

from __future__ import annotations

import asyncio
import secrets
import threading
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import pgqueue
from pgqueue._maintenance import vacuumer as vacuum

from ._helpers import (
    BAD_INPUT,
    TERMINAL,
    Conn,
    claim,
    complete_many,
    enqueue_many,
    fail,
    job_in_state,
    new_queue,
    progress,
    rows,
    scalar,
    start,
)
from .test_worker_inprocess import WAIT, eventually, running_worker

SHARED_DATABASE = True  # one database per module, emptied before each test (conftest.py)

COUNTERS = (
    "pending",
    "running",
    "retrying",
    "completed",
    "failed",
    "timeout",
    "zombie",
    "dead_letter",
    "cancelled",
)
_EMPTY = (
    "TRUNCATE pgqueue.jobs, pgqueue.batches, pgqueue.attempts, pgqueue.progress_history,"
    " pgqueue.queues RESTART IDENTITY CASCADE"
)


@pytest.fixture(autouse=True)
def _empty(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        admin.execute(_EMPTY)


def prune(conn: Conn, completed_after: str, failed_after: str, limit: int = 1000) -> int:
    return int(
        scalar(
            conn,
            "SELECT pgqueue.prune(%s::interval, %s::interval, %s::int)",
            (completed_after, failed_after, limit),
        )
    )


def age(conn: Conn, job_ids: list[int], by: str) -> None:
    """Move every timestamp of these jobs ``by`` into the past (the CHECKs stay true)."""
    conn.execute(
        """UPDATE pgqueue.jobs
              SET created_at = created_at - %(by)s::interval,
                  run_at = run_at - %(by)s::interval,
                  started_at = started_at - %(by)s::interval,
                  leased_at = leased_at - %(by)s::interval,
                  heartbeat_at = heartbeat_at - %(by)s::interval,
                  completed_at = completed_at - %(by)s::interval
            WHERE id = ANY(%(ids)s)""",
        {"by": by, "ids": job_ids},
    )


def age_batch(conn: Conn, batch_id: int, by: str) -> None:
    """Age a batch and all its children."""
    conn.execute(
        """UPDATE pgqueue.batches
              SET created_at = created_at - %(by)s::interval,
                  started_at = started_at - %(by)s::interval,
                  completed_at = completed_at - %(by)s::interval
            WHERE id = %(id)s""",
        {"by": by, "id": batch_id},
    )
    age(conn, batch_children(conn, batch_id), by)


def existing(conn: Conn, job_ids: list[int]) -> set[int]:
    found = conn.execute("SELECT id FROM pgqueue.jobs WHERE id = ANY(%s)", (job_ids,)).fetchall()
    return {int(r[0]) for r in found}


def count(conn: Conn, table: str) -> int:
    return int(scalar(conn, f"SELECT count(*) FROM pgqueue.{table}"))


def sql_batch(conn: Conn, n: int, *, queue: str, on_complete: dict[str, Any] | None = None) -> int:
    return int(
        scalar(
            conn,
            "SELECT pgqueue.enqueue_batch(%s::text[], %s::jsonb[], %s::text[], %s::int[],"
            " %s::timestamptz[], %s::int[], %s::interval[], %s::jsonb[], NULL, '{}', %s::jsonb)",
            (
                ["t"] * n,
                [Jsonb({"i": i}) for i in range(n)],
                [queue] * n,
                [0] * n,
                [None] * n,
                [1] * n,
                [None] * n,
                [Jsonb({})] * n,
                None if on_complete is None else Jsonb(on_complete),
            ),
        )
    )


def batch_children(conn: Conn, batch_id: int) -> list[int]:
    found = conn.execute(
        "SELECT id FROM pgqueue.jobs WHERE batch_id = %s ORDER BY id", (batch_id,)
    ).fetchall()
    return [int(r[0]) for r in found]


def batch_row(conn: Conn, batch_id: int) -> dict[str, Any] | None:
    found = rows(conn, "SELECT * FROM pgqueue.batches WHERE id = %s", (batch_id,))
    return found[0] if found else None


def assert_counters_equal_recount(conn: Conn, batch_id: int) -> None:
    row = batch_row(conn, batch_id)
    assert row is not None
    recount = dict.fromkeys(COUNTERS, 0)
    for status, n in conn.execute(
        "SELECT status::text, count(*) FROM pgqueue.jobs WHERE batch_id = %s GROUP BY status",
        (batch_id,),
    ).fetchall():
        recount[status] = int(n)
    assert {c: row[c] for c in COUNTERS} == recount
    assert row["total"] == sum(recount.values())


def finish_batch(conn: Conn, batch_id: int, *, failing: int = 0) -> None:
    """Claim and finish every child; the first ``failing`` ones fail for good."""
    queue = scalar(conn, "SELECT queue FROM pgqueue.batches WHERE id = %s", (batch_id,))
    leases = [(r["id"], r["attempts"]) for r in claim(conn, "w1", [queue], 1000)]
    for job_id, attempt in leases[:failing]:
        assert fail(conn, job_id, attempt, retryable=False) == "failed"
    complete_many(conn, [(i, a, {"ok": i}) for i, a in leases[failing:]])
    assert scalar(
        conn, "SELECT completed_at IS NOT NULL FROM pgqueue.batches WHERE id = %s", (batch_id,)
    )


# -- what is deleted and what is kept ----------------------------------------------------------


def test_prune_deletes_completed_after_their_age_and_other_finished_jobs_after_the_longer_one(
    conn: Conn,
) -> None:
    old = {status: job_in_state(conn, status) for status in TERMINAL}  # 2 days old
    middle = {status: job_in_state(conn, status) for status in TERMINAL}  # 2 hours old
    fresh = {status: job_in_state(conn, status) for status in TERMINAL}
    waiting = {status: job_in_state(conn, status) for status in ("pending", "retrying", "running")}
    age(conn, list(old.values()), "2 days")
    age(conn, list(middle.values()), "2 hours")
    age(conn, list(waiting.values()), "30 days")  # however old, they can still run

    deleted = prune(conn, "1 hour", "1 day")

    gone = set(old.values()) | {middle["completed"]}
    assert deleted == len(gone)
    everything = [*old.values(), *middle.values(), *fresh.values(), *waiting.values()]
    assert existing(conn, everything) == set(everything) - gone
    assert prune(conn, "1 hour", "1 day") == 0


def test_prune_never_deletes_pending_retrying_or_running_jobs(conn: Conn) -> None:
    waiting = [job_in_state(conn, status) for status in ("pending", "retrying", "running")]
    age(conn, waiting, "365 days")
    assert prune(conn, "0", "0") == 0
    assert existing(conn, waiting) == set(waiting)


def test_attempts_and_progress_history_go_with_their_job(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=2)
    progress(conn, job_id, attempt, 10, "first")
    assert fail(conn, job_id, attempt, retry_in=timedelta(0)) == "retrying"
    second = claim(
        conn, "w1", [scalar(conn, "SELECT queue FROM pgqueue.jobs WHERE id = %s", (job_id,))]
    )
    progress(conn, job_id, second[0]["attempts"], 20, "second")
    complete_many(conn, [(job_id, second[0]["attempts"], "ok")])
    kept_id, kept_attempt = start(conn)
    progress(conn, kept_id, kept_attempt, 5)
    assert count(conn, "attempts") == 2 and count(conn, "progress_history") == 3

    assert prune(conn, "0", "0") == 1
    assert count(conn, "attempts") == 0
    assert [r[0] for r in conn.execute("SELECT job_id FROM pgqueue.progress_history")] == [kept_id]


def test_prune_never_deletes_children_of_an_unfinished_batch(conn: Conn) -> None:
    queue = new_queue()
    batch_id = sql_batch(conn, 3, queue=queue)
    leases = [(r["id"], r["attempts"]) for r in claim(conn, "w1", [queue], 2)]
    complete_many(conn, [(leases[0][0], leases[0][1], 1)])
    assert fail(conn, leases[1][0], leases[1][1], retryable=False) == "failed"
    age_batch(conn, batch_id, "30 days")

    assert prune(conn, "0", "0") == 0
    assert len(batch_children(conn, batch_id)) == 3
    assert_counters_equal_recount(conn, batch_id)


# -- batches -----------------------------------------------------------------------------------


def test_old_finished_batch_goes_with_all_its_children_in_chunks(conn: Conn) -> None:
    batch_id = sql_batch(conn, 7, queue=new_queue(), on_complete={"task": "after"})
    finish_batch(conn, batch_id)
    follow_up = batch_row(conn, batch_id)["on_complete_job_id"]  # type: ignore[index]
    age_batch(conn, batch_id, "2 hours")
    assert prune(conn, "1 day", "1 day") == 0  # not old enough yet

    seen = []
    while True:
        deleted = prune(conn, "1 hour", "1 day", limit=3)
        seen.append(deleted)
        left = batch_children(conn, batch_id)
        if left:
            assert_counters_equal_recount(conn, batch_id)  # counters follow the deletes
            row = batch_row(conn, batch_id)
            assert row is not None and row["status"] == "completed"
        else:
            assert batch_row(conn, batch_id) is None  # the row goes with its last child
        if deleted == 0:
            break
    assert seen == [3, 3, 1, 0]
    assert existing(conn, [follow_up]) == {follow_up}  # the on_complete job is its own job


def test_batch_with_errors_is_kept_as_long_as_failures_are(conn: Conn) -> None:
    with_errors = sql_batch(conn, 3, queue=new_queue())
    finish_batch(conn, with_errors, failing=1)
    cancelled = sql_batch(conn, 2, queue=new_queue())
    conn.execute("SELECT pgqueue.cancel_batch(%s)", (cancelled,))
    clean = sql_batch(conn, 2, queue=new_queue())
    finish_batch(conn, clean)
    for batch_id in (with_errors, cancelled, clean):
        age_batch(conn, batch_id, "2 hours")

    assert prune(conn, "1 hour", "1 day") == 2  # only the clean batch's children
    assert batch_row(conn, clean) is None
    for batch_id in (with_errors, cancelled):
        assert batch_row(conn, batch_id) is not None
        assert_counters_equal_recount(conn, batch_id)

    for batch_id in (with_errors, cancelled):
        age_batch(conn, batch_id, "2 days")
    assert prune(conn, "1 hour", "1 day") == 5
    assert count(conn, "batches") == 0 and count(conn, "jobs") == 0


# -- chunks and concurrency --------------------------------------------------------------------


def make_old_completed(conn: Conn, n: int, by: str = "2 hours") -> list[int]:
    queue = new_queue()
    ids = enqueue_many(conn, [{"queue": queue} for _ in range(n)])
    leases = [(r["id"], r["attempts"], None) for r in claim(conn, "w1", [queue], n)]
    assert len(complete_many(conn, leases)) == n
    age(conn, ids, by)
    return ids


def test_prune_works_in_chunks_of_its_limit(conn: Conn) -> None:
    make_old_completed(conn, 35)
    assert [prune(conn, "1 hour", "1 day", limit=10) for _ in range(5)] == [10, 10, 10, 5, 0]
    assert count(conn, "jobs") == 0


def test_prune_chunk_mixes_completed_and_failed_jobs_within_its_limit(conn: Conn) -> None:
    make_old_completed(conn, 4)
    failed = [job_in_state(conn, "failed") for _ in range(4)]
    age(conn, failed, "2 days")
    assert [prune(conn, "1 hour", "1 day", limit=3) for _ in range(4)] == [3, 3, 2, 0]


async def test_queue_prune_repeats_chunks_until_done(queue: pgqueue.Queue, conn: Conn) -> None:
    make_old_completed(conn, 25)
    assert await queue.prune(completed_after=3600, failed_after=86400, chunk=10) == 25
    assert count(conn, "jobs") == 0
    make_old_completed(conn, 3, by="10 minutes")
    assert await queue.prune(completed_after=timedelta(hours=1), chunk=10) == 0
    with pytest.raises(pgqueue.InvalidJobError):
        await queue.prune(completed_after=-1)


def test_only_one_pruner_at_a_time(conn: Conn, db_dsn: str) -> None:
    make_old_completed(conn, 5)
    with psycopg.connect(db_dsn) as first:  # one open transaction that called prune
        assert prune(first, "1 hour", "1 day", limit=1) == 1
        assert prune(conn, "1 hour", "1 day") == 0  # another pruner backs off at once
        assert count(conn, "jobs") == 5  # the first one's delete is not committed yet
        first.commit()
    assert prune(conn, "1 hour", "1 day") == 4


def test_prune_refuses_negative_ages_and_a_limit_below_one(conn: Conn) -> None:
    for args in (("-1 second", "0", 10), ("0", "-1 second", 10), ("0", "0", 0)):
        with pytest.raises(psycopg.Error) as exc:
            prune(conn, *args)
        assert exc.value.sqlstate == BAD_INPUT
    with pytest.raises(psycopg.Error) as exc:
        scalar(conn, "SELECT pgqueue.prune(NULL, '0')")
    assert exc.value.sqlstate == BAD_INPUT


def test_prune_while_workers_finish_children_keeps_counters_equal(conn: Conn, db_dsn: str) -> None:
    """A pruner deleting an old finished batch while workers finish another one."""
    old = sql_batch(conn, 60, queue=new_queue())
    finish_batch(conn, old)
    age_batch(conn, old, "2 days")
    live_queue = new_queue()
    live = sql_batch(conn, 60, queue=live_queue)
    errors: list[BaseException] = []

    def drain() -> None:
        try:
            with psycopg.connect(db_dsn, autocommit=True) as c:
                while leases := claim(c, "w2", [live_queue], 5):
                    complete_many(c, [(r["id"], r["attempts"], 1) for r in leases])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=drain)
    thread.start()
    with psycopg.connect(db_dsn, autocommit=True) as pruner:
        while prune(pruner, "1 hour", "1 day", limit=7):
            if batch_row(conn, old) is not None:
                assert_counters_equal_recount(conn, old)
    thread.join(10)
    assert errors == []
    assert batch_row(conn, old) is None
    assert_counters_equal_recount(conn, live)
    assert batch_row(conn, live)["status"] == "completed"  # type: ignore[index]


# -- workers -----------------------------------------------------------------------------------


async def test_worker_prune_loop_deletes_old_completed_jobs_and_keeps_recent_failures(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    @queue.task
    def ok(ctx: pgqueue.JobContext, i: int) -> int:
        return i

    @queue.task
    def broken(ctx: pgqueue.JobContext) -> None:
        raise pgqueue.NonRetryableError("bad input")

    async with running_worker(queue, prune_interval=0.2, retain_completed=0, retain_failed=3600):
        done = [await ok.enqueue(i=i) for i in range(5)]
        failed = [await broken.enqueue() for _ in range(3)]
        for job_id in failed:
            with pytest.raises(pgqueue.JobFailed):
                await queue.wait(job_id, timeout=WAIT)

        async def completed_pruned() -> bool:
            return not existing(conn, done)

        await eventually(completed_pruned, what="completed jobs to be pruned")
        await asyncio.sleep(0.6)  # a few more passes
    assert existing(conn, failed) == set(failed)
    assert all(r["status"] == "failed" for r in rows(conn, "SELECT status::text FROM pgqueue.jobs"))


async def test_table_stays_bounded_under_steady_load_with_zero_retention(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    @queue.task
    async def unit(ctx: pgqueue.JobContext, i: int) -> int:
        ctx.progress(50)
        return i

    @queue.task
    async def after(ctx: pgqueue.JobContext, batch_id: int, batch_status: str) -> None:
        return None

    peak = 0

    async def drained() -> bool:
        nonlocal peak
        peak = max(peak, count(conn, "jobs"))
        unfinished = scalar(
            conn,
            "SELECT (SELECT count(*) FROM pgqueue.jobs WHERE completed_at IS NULL)"
            " + (SELECT count(*) FROM pgqueue.batches WHERE completed_at IS NULL)",
        )
        return bool(unfinished == 0)

    async def emptied() -> bool:
        return count(conn, "jobs") + count(conn, "batches") == 0

    async with running_worker(
        queue, concurrency=8, prune_interval=0.2, retain_completed=0, retain_failed=0
    ):
        for _ in range(5):
            await queue.enqueue_batch("unit", [{"i": i} for i in range(30)], on_complete="after")
            await queue.enqueue_many("unit", [{"i": i} for i in range(10)])
            await eventually(drained, what="the round to be done")
            await eventually(emptied, what="every finished job and batch to be pruned")
            assert count(conn, "attempts") == 0 and count(conn, "progress_history") == 0
    assert 0 < peak <= 41  # never more than one round's worth of rows


# -- vacuum ------------------------------------------------------------------------------------


VACUUM_PARAMS = {"min_dead": 10_000, "fraction": 0.1}


def vacuum_count(conn: Conn) -> int:
    return int(
        scalar(
            conn,
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'pgqueue.jobs'::regclass",
        )
    )


def make_dead_rows(conn: Conn, n: int) -> None:
    """n dead row versions in pgqueue.jobs, reported to the statistics now."""
    conn.execute(
        "INSERT INTO pgqueue.jobs (task, queue)"
        " SELECT 'dead', 'graveyard' FROM generate_series(1, %s)",
        (n,),
    )
    conn.execute("DELETE FROM pgqueue.jobs WHERE queue = 'graveyard'")
    conn.execute("SELECT pg_stat_force_next_flush()")


async def test_worker_vacuums_the_jobs_table_once_it_is_full_of_dead_rows(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    """Claims, completions and prunes leave dead rows faster than autovacuum
    (about once a minute) removes them; a worker VACUUMs once there are many."""
    before = vacuum_count(conn)
    async with running_worker(queue, vacuum_interval=0.2, prune_interval=0):
        await asyncio.sleep(0.6)
        assert vacuum_count(conn) == before, "vacuumed a table without many dead rows"
        make_dead_rows(conn, 12_000)

        async def vacuumed() -> bool:
            return vacuum_count(conn) > before

        await eventually(vacuumed, what="a worker to VACUUM pgqueue.jobs")
    dead = scalar(
        conn, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'pgqueue.jobs'::regclass"
    )
    assert int(dead) < 12_000


async def test_vacuum_off_leaves_dead_rows_to_autovacuum(queue: pgqueue.Queue, conn: Conn) -> None:
    before = vacuum_count(conn)
    async with running_worker(queue, vacuum_interval=0, prune_interval=0):
        make_dead_rows(conn, 12_000)
        await asyncio.sleep(1.0)
    assert vacuum_count(conn) == before


async def test_a_role_that_does_not_own_the_tables_leaves_vacuum_to_autovacuum(
    queue: pgqueue.Queue, conn: Conn, db_dsn: str
) -> None:
    role = f"pgqueue_not_owner_{uuid.uuid4().hex[:8]}"
    password = secrets.token_hex(8)
    conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        make_dead_rows(conn, 12_000)
        before = vacuum_count(conn)
        other = await psycopg.AsyncConnection.connect(
            db_dsn, user=role, password=password, autocommit=True
        )
        async with other:
            assert await vacuum.vacuum_pass(other, VACUUM_PARAMS) == "not owner"
        owner = await psycopg.AsyncConnection.connect(db_dsn, autocommit=True)
        async with owner:
            assert await vacuum.vacuum_pass(owner, VACUUM_PARAMS) == "vacuumed"
            assert await vacuum.vacuum_pass(owner, VACUUM_PARAMS) == "clean"
        assert vacuum_count(conn) == before + 1
    finally:
        conn.execute(f"DROP ROLE {role}")


async def test_dead_rows_an_old_snapshot_still_needs_are_reported_stuck(
    queue: pgqueue.Queue, conn: Conn, db_dsn: str
) -> None:
    """VACUUM cannot remove rows an open snapshot may still see: the pass says
    so (the worker then backs off) instead of vacuuming in a loop."""
    with psycopg.connect(db_dsn) as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM pgqueue.jobs")  # holds its snapshot
        make_dead_rows(conn, 12_000)
        vacuumer = await psycopg.AsyncConnection.connect(db_dsn, autocommit=True)
        async with vacuumer:
            assert await vacuum.vacuum_pass(vacuumer, VACUUM_PARAMS) == "stuck"
            reader.rollback()
            assert await vacuum.vacuum_pass(vacuumer, VACUUM_PARAMS) == "vacuumed"


async def test_the_vacuum_lock_lets_one_worker_at_a_time_and_is_released(
    queue: pgqueue.Queue, conn: Conn, db_dsn: str
) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext('pgqueue.vacuum'))")
        make_dead_rows(conn, 12_000)
        other = await psycopg.AsyncConnection.connect(db_dsn, autocommit=True)
        async with other:
            assert await vacuum.vacuum_pass(other, VACUUM_PARAMS) == "busy"
            holder.execute("SELECT pg_advisory_unlock(hashtext('pgqueue.vacuum'))")
            assert await vacuum.vacuum_pass(other, VACUUM_PARAMS) == "vacuumed"
            # released at once, not when this connection closes
            locks = scalar(
                conn,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND objid = hashtext('pgqueue.vacuum')::oid",
            )
            assert int(locks) == 0
