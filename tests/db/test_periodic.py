"""Periodic tasks against a real database: each tick is enqueued exactly once
however many schedulers (workers) run, by the database's clock; missed ticks
follow the schedule's policy; retention keeps each schedule's latest tick."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

import pgqueue
from pgqueue import cli

from ._helpers import BAD_INPUT, Conn, rows, scalar

SECONDLY = "* * * * * *"  # every second (croniter's sixth field)


def app(dsn: str, cron: str = SECONDLY, **options: Any) -> pgqueue.Queue:
    """A Queue with one periodic task ``beat`` (a fresh one per scheduler)."""
    queue = pgqueue.Queue(dsn)

    @queue.periodic(cron, queue="periodic", **options)
    async def beat(ctx: pgqueue.JobContext) -> str:
        return "beat"

    return queue


def ticks(conn: Conn, name: str = "beat") -> list[dict[str, Any]]:
    return rows(
        conn,
        "SELECT tick, job_id FROM pgqueue.periodic_ticks WHERE name = %s ORDER BY tick",
        (name,),
    )


def periodic_jobs(conn: Conn) -> list[dict[str, Any]]:
    return rows(
        conn,
        "SELECT id, task, queue, status::text, metadata FROM pgqueue.jobs"
        " WHERE metadata ? 'periodic' ORDER BY id",
    )


def test_concurrent_enqueue_tick_of_one_tick_makes_one_job(db_dsn: str, conn: Conn) -> None:
    tick = scalar(conn, "SELECT date_trunc('second', clock_timestamp())")
    barrier = threading.Barrier(16)
    results: list[Any] = []

    def run() -> None:
        with psycopg.connect(db_dsn) as tx:
            barrier.wait(timeout=30)
            results.append(scalar(tx, "SELECT pgqueue.enqueue_tick('b', %s, 'beat')", (tick,)))
            time.sleep(0.01)

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    winners = [r for r in results if r is not None]
    assert len(results) == 16 and len(winners) == 1
    assert ticks(conn, "b") == [{"tick": tick, "job_id": winners[0]}]
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 1


def test_a_tick_in_the_database_future_is_refused(conn: Conn) -> None:
    with pytest.raises(psycopg.Error) as refused:
        conn.execute("SELECT pgqueue.enqueue_tick('b', clock_timestamp() + interval '2 s', 'beat')")
    assert refused.value.sqlstate == BAD_INPUT
    assert "not due yet" in str(refused.value)
    assert ticks(conn, "b") == []


async def test_many_schedulers_many_ticks_each_tick_enqueued_exactly_once(
    db_dsn: str, conn: Conn
) -> None:
    schedulers = [app(db_dsn) for _ in range(8)]
    enqueued: list[int] = []
    deadline = time.monotonic() + 4.0

    async def run(queue: pgqueue.Queue) -> None:
        while time.monotonic() < deadline:
            done = await queue.enqueue_due_ticks()
            assert done is not None
            enqueued.extend(done.enqueued)
            await asyncio.sleep(0.02)

    try:
        await asyncio.gather(*(run(q) for q in schedulers))
    finally:
        for q in schedulers:
            await q.close()

    recorded = ticks(conn)
    jobs = periodic_jobs(conn)
    assert len(recorded) >= 3
    # every second from the first recorded tick on, none skipped, none twice
    seconds = [r["tick"] for r in recorded]
    assert seconds == [seconds[0] + timedelta(seconds=i) for i in range(len(seconds))]
    # the first tick of a new schedule may only mark its start; every other has a job
    with_jobs = [r for r in recorded if r["job_id"] is not None]
    assert len(with_jobs) >= len(recorded) - 1
    assert sorted(enqueued) == sorted(r["job_id"] for r in with_jobs) == [j["id"] for j in jobs]
    tick_of_job = {j["id"]: j["metadata"]["tick"] for j in jobs}
    assert len(set(tick_of_job.values())) == len(jobs)
    assert {(j["task"], j["queue"], j["metadata"]["periodic"]) for j in jobs} == {
        ("beat", "periodic", "beat")
    }


async def test_the_database_clock_decides_not_the_workers(
    db_dsn: str, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduler whose own clock runs an hour ahead enqueues the ticks the
    database's clock makes due, no more."""
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    queue = app(db_dsn, "* * * * *")  # minutely
    try:
        first = await queue.enqueue_due_ticks()
        await asyncio.sleep(0.05)
        again = await queue.enqueue_due_ticks()
    finally:
        await queue.close()
    assert first is not None and again is not None
    # Each pass reads the database's clock (.now); the two may straddle a minute
    # boundary, and then the second pass rightly enqueues the new minute's tick.
    first_minute = first.now.replace(second=0, microsecond=0)
    again_minute = again.now.replace(second=0, microsecond=0)
    recorded = [row["tick"] for row in ticks(conn)]
    assert recorded[0] in (first_minute, first_minute - timedelta(minutes=1))
    assert max(recorded) <= again_minute  # never a tick of the scheduler's own clock
    if again_minute == first_minute:
        assert len(recorded) == 1 and again.enqueued == []
    else:
        assert recorded[1:] == [again_minute] and len(again.enqueued) == 1
    assert first.next_due is not None and first.next_due - first.now <= timedelta(minutes=1)


@pytest.mark.parametrize(("catch_up", "expected"), [(0, 1), (3, 4), (100, 10)])
async def test_missed_ticks_after_downtime_follow_the_policy(
    db_dsn: str, conn: Conn, catch_up: int, expected: int
) -> None:
    # the last tick recorded ten minutes ago: ten minutely ticks are missed
    conn.execute(
        "INSERT INTO pgqueue.periodic_ticks (name, tick, job_id)"
        " VALUES ('beat', date_trunc('minute', clock_timestamp()) - interval '10 minutes', 1)"
    )
    queue = app(db_dsn, "* * * * *", catch_up=catch_up)
    try:
        done = await queue.enqueue_due_ticks()
    finally:
        await queue.close()
    assert done is not None and len(done.enqueued) == expected
    recorded = [r["tick"] for r in ticks(conn)][1:]
    latest = scalar(conn, "SELECT date_trunc('minute', clock_timestamp())")
    assert recorded == [latest - timedelta(minutes=expected - 1 - i) for i in range(expected)]


async def test_a_new_schedule_does_not_run_a_stale_tick(db_dsn: str, conn: Conn) -> None:
    """Registering a yearly schedule does not run it now; its start is recorded."""
    queue = app(db_dsn, "0 0 1 1 *")
    try:
        done = await queue.enqueue_due_ticks()
        status = await queue.periodic_status()
    finally:
        await queue.close()
    assert done is not None and done.enqueued == []
    (start,) = ticks(conn)
    assert start["job_id"] is None
    assert periodic_jobs(conn) == []
    (row,) = status
    assert row["last_tick"] == start["tick"] and row["last_job_id"] is None
    assert row["next_tick"] == start["tick"].replace(year=start["tick"].year + 1)


async def test_workers_run_each_tick_once(db_dsn: str, conn: Conn) -> None:
    queues = [app(db_dsn) for _ in range(3)]
    workers = [
        pgqueue.Worker(q, queues=["periodic"], periodic_interval=0.5, poll_interval=0.1)
        for q in queues
    ]
    runners = [asyncio.create_task(w.run(install_signal_handlers=False)) for w in workers]
    try:
        await asyncio.sleep(3.5)
    finally:
        for w in workers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*runners), timeout=15)
        for q in queues:
            await q.close()
    recorded = ticks(conn)
    jobs = periodic_jobs(conn)
    assert len(jobs) >= 2
    assert [r["job_id"] for r in recorded if r["job_id"] is not None] == [j["id"] for j in jobs]
    seconds = [r["tick"] for r in recorded]
    assert seconds == [seconds[0] + timedelta(seconds=i) for i in range(len(seconds))]
    assert sum(w.jobs_done for w in workers) >= len(jobs) - 1  # the last may still be waiting


def test_prune_drops_old_ticks_but_keeps_each_schedules_latest(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO pgqueue.periodic_ticks (name, tick)"
        " SELECT name, clock_timestamp() - make_interval(days => d)"
        "   FROM unnest(ARRAY['a', 'b']) AS name, generate_series(1, 10) AS d"
    )
    conn.execute(
        "INSERT INTO pgqueue.periodic_ticks (name, tick)"
        " VALUES ('old', clock_timestamp() - interval '30 days')"
    )
    assert scalar(conn, "SELECT pgqueue.prune('1 day', '7 days')") == 0  # counts jobs only
    left = rows(
        conn,
        "SELECT name, count(*) AS n FROM pgqueue.periodic_ticks GROUP BY name ORDER BY name",
    )
    assert left == [{"name": "a", "n": 6}, {"name": "b", "n": 6}, {"name": "old", "n": 1}]
    scalar(conn, "SELECT pgqueue.prune('1 day', '7 days', 1000, '0')")
    assert scalar(conn, "SELECT count(*) FROM pgqueue.periodic_ticks") == 3


PERIODIC_APP = "tests.db._periodic_app:queue"


def test_cli_periodic_list_shows_next_runs(
    db_dsn: str, conn: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--dsn", db_dsn, "periodic", "list", "--app", PERIODIC_APP, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["task"], s["cron"], s["timezone"]) for s in listed] == [
        ("nightly", "cleanup", "0 3 * * *", "Europe/Paris"),
        ("reports", "report", "*/5 * * * *", "UTC"),
    ]
    nightly = datetime.fromisoformat(listed[0]["next_tick"])
    assert nightly.astimezone(datetime.now().astimezone().tzinfo) > datetime.now().astimezone()
    assert listed[0]["last_tick"] is None

    assert cli.main(["--dsn", db_dsn, "periodic", "list", "--app", PERIODIC_APP]) == 0
    table = capsys.readouterr().out
    assert "nightly" in table and "0 3 * * *" in table and "next run" in table

    assert cli.main(["--dsn", db_dsn, "periodic", "list"]) == 1
    assert "--app" in capsys.readouterr().err
