"""Rules that keep one job from running under two live leases, and keep the
worker's own bookkeeping honest, in the awkward cases: sync threads that
cannot be interrupted, rows locked by other sessions, workers with different
lease timeouts, claims whose reply was lost."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import psycopg
import pytest

import pgqueue
from pgqueue import JobStatus
from pgqueue._database import Lease, WorkerDatabase
from tests.db.test_worker_inprocess import WAIT, job, running_worker, wait_status


async def test_timed_out_sync_task_keeps_its_slot_until_its_thread_returns(
    queue: pgqueue.Queue,
) -> None:
    """With one slot, the job after a stuck sync task must not be claimed into
    a queue behind the stuck thread (where its own timeout would run out)."""
    stuck_returned: list[float] = []

    @queue.task(timeout=0.3)
    def stuck(ctx: pgqueue.JobContext) -> None:
        time.sleep(1.2)  # ignores should_stop
        stuck_returned.append(time.time())

    @queue.task(timeout=0.5)
    def quick(ctx: pgqueue.JobContext) -> str:
        return "ran"

    stuck_id = await stuck.enqueue()
    quick_id = await quick.enqueue()
    # leases far longer than the run: this is about slots, not heartbeats
    async with running_worker(queue, queues=["default"], concurrency=1, stale_after=10.0):
        with pytest.raises(pgqueue.JobFailed) as info:
            await queue.wait(stuck_id, timeout=WAIT)
        assert info.value.status == "timeout"
        assert await queue.wait(quick_id, timeout=WAIT) == "ran"
    quick_job = await job(queue, quick_id)
    assert quick_job.leased_at is not None
    assert stuck_returned and quick_job.leased_at.timestamp() >= stuck_returned[0] - 0.05


async def test_next_attempt_of_a_timed_out_sync_task_never_runs_beside_it(
    queue: pgqueue.Queue,
) -> None:
    spans: list[tuple[int, float, float]] = []
    lock = threading.Lock()

    @queue.task(timeout=0.2, max_attempts=3, retry_delay=0)
    def slow(ctx: pgqueue.JobContext) -> None:
        start = time.monotonic()
        time.sleep(0.6)  # ignores should_stop
        with lock:
            spans.append((ctx.attempt, start, time.monotonic()))

    job_id = await slow.enqueue()
    async with running_worker(queue, queues=["default"], concurrency=4, stale_after=10.0):
        with pytest.raises(pgqueue.JobFailed) as info:
            await queue.wait(job_id, timeout=3 * WAIT)
    assert info.value.status == "timeout"
    spans.sort()
    assert [a for a, _, _ in spans] == [1, 2, 3]
    for (_, _, end), (_, start, _) in itertools.pairwise(spans):
        assert start >= end, f"attempts overlapped: {spans}"


def test_heartbeat_skips_a_row_locked_elsewhere_and_keeps_the_others(db_dsn: str) -> None:
    """A session holding one job's row lock must not stall the heartbeat of the
    worker's other leases (they would be rescued from a live worker)."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for _ in range(2):
            conn.execute("SELECT pgqueue.enqueue('t', '{}', 'q')")
        claimed = conn.execute(
            "SELECT id, attempts FROM pgqueue.claim('w1', ARRAY['q'], 2) ORDER BY id"
        ).fetchall()
        (a, attempt_a), (b, attempt_b) = claimed
        with psycopg.connect(db_dsn) as other:
            other.execute("SELECT 1 FROM pgqueue.jobs WHERE id = %s FOR UPDATE", (a,))
            conn.execute("SET statement_timeout = '3s'")  # blocking would fail the test
            rows = conn.execute(
                "SELECT id, attempt, refreshed FROM pgqueue.heartbeat('w1', %s, %s) ORDER BY id",
                ([a, b], [attempt_a, attempt_b]),
            ).fetchall()
            other.rollback()
    assert rows == [(a, attempt_a, False), (b, attempt_b, True)]


def test_rescue_honours_the_lease_timeout_the_holder_claimed_with(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for _ in range(2):
            conn.execute("SELECT pgqueue.enqueue('t', '{}', 'q', p_max_attempts => 2)")
        patient = conn.execute(
            "SELECT id FROM pgqueue.claim('patient', ARRAY['q'], 1, interval '1 hour')"
        ).fetchone()
        hasty = conn.execute(
            "SELECT id FROM pgqueue.claim('hasty', ARRAY['q'], 1, interval '1 second')"
        ).fetchone()
        assert patient and hasty
        conn.execute(
            "UPDATE pgqueue.jobs SET heartbeat_at = heartbeat_at - interval '30 minutes',"
            " leased_at = leased_at - interval '30 minutes',"
            " started_at = started_at - interval '30 minutes',"
            " created_at = created_at - interval '30 minutes'"
        )
        # The rescuer's own default (1 s) applies only to rows without one.
        rescued = conn.execute("SELECT id FROM pgqueue.rescue(interval '1 second')").fetchall()
    assert rescued == [(hasty[0],)]


def test_replay_never_shrinks_the_remaining_budget(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT pgqueue.enqueue('t', '{}', 'q', p_max_attempts => 5)").fetchone()
    assert row
    conn.execute("SELECT pgqueue.cancel(%s)", (row[0],))
    conn.execute("SELECT pgqueue.replay(%s, 1)", (row[0],))
    assert conn.execute(
        "SELECT status::text, attempts, max_attempts FROM pgqueue.jobs WHERE id = %s", (row[0],)
    ).fetchone() == ("pending", 0, 5)


def test_a_new_attempt_starts_with_no_progress(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT pgqueue.enqueue('t', '{}', 'q', p_max_attempts => 2)").fetchone()
    assert row
    job_id = row[0]
    conn.execute("SELECT pgqueue.claim('w', ARRAY['q'], 1)")
    conn.execute("SELECT pgqueue.progress(%s, 1, 90, 'almost')", (job_id,))
    conn.execute("SELECT pgqueue.fail(%s, 1, 'boom', true, false, interval '0')", (job_id,))
    conn.execute("SELECT pgqueue.claim('w', ARRAY['q'], 1)")
    assert conn.execute(
        "SELECT attempts, progress, progress_message FROM pgqueue.jobs WHERE id = %s", (job_id,)
    ).fetchone() == (2, 0, None)


async def test_claimed_rows_the_worker_never_saw_are_handed_back(
    queue: pgqueue.Queue, db_dsn: str
) -> None:
    """If the connection breaks after a claim committed, the worker retries the
    claim; the rows of the lost reply are released, not left to be rescued
    (which would charge an attempt to a job that never ran)."""

    @queue.task(queue="side")
    async def t(ctx: pgqueue.JobContext) -> str:
        return "done"

    job_id = await t.enqueue()
    # The worker watches "default" only, so the claim below is the only one.
    async with running_worker(queue, queues=["default"]) as worker:
        await asyncio.sleep(0.5)  # let it connect
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("SELECT 1 FROM pgqueue.claim(%s, ARRAY['side'], 1)", (worker.worker_id,))
        await worker._release_orphans(within=5.0)
        released = await job(queue, job_id)
        assert (released.status, released.attempts) == (JobStatus.PENDING, 1)
    assert [a.outcome for a in await queue.attempts(job_id)] == ["interrupted"]
    async with running_worker(queue, queues=["side"]):
        assert await queue.wait(job_id, timeout=WAIT) == "done"


@pytest.mark.parametrize("failure", ["raises", "hangs"])
async def test_worker_stops_its_tasks_when_it_cannot_heartbeat(
    queue: pgqueue.Queue, failure: str
) -> None:
    """A worker that cannot reach the database for nearly its lease timeout stops
    its tasks itself, before another worker rescues and re-runs them."""
    stopped = asyncio.Event()

    @queue.task
    async def long(ctx: pgqueue.JobContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise

    class Unreachable(WorkerDatabase):
        """Heartbeats fail once ``outage`` is set (the claim and the rest work)."""

        outage = False

        async def heartbeat(self, *args: Any, **kwargs: Any) -> set[Lease]:
            if self.outage:
                if failure == "hangs":  # e.g. a TCP connection lost in a partition
                    await asyncio.sleep(3600)
                raise pgqueue.DatabaseUnavailable("simulated outage")
            return await super().heartbeat(*args, **kwargs)

    job_id = await long.enqueue()
    async with running_worker(queue, queues=["default"], database=Unreachable) as worker:
        await wait_status(queue, job_id, JobStatus.RUNNING)
        database = worker.db
        assert isinstance(database, Unreachable)
        database.outage = True
        await asyncio.wait_for(stopped.wait(), timeout=WAIT)
        database.outage = False
    # its lease is then rescued by the database rules, not overwritten by this worker
    final = await job(queue, job_id)
    assert final.status in (JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.ZOMBIE)
    assert final.result is None
