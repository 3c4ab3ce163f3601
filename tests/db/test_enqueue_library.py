"""Enqueue through the library (pgqueue.Queue / Task) against a real database:
transactional enqueue, all-or-nothing bulk enqueue, and input validation that
names the offending field and writes nothing."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

import pgqueue
from pgqueue._connect import closed_by_server

from ._helpers import Conn, claim, db_now, job, scalar

SHARED_DATABASE = True  # one database per module, emptied before each test (conftest.py)


def count_jobs(conn: Conn) -> int:
    return int(scalar(conn, "SELECT count(*) FROM pgqueue.jobs"))


def register(q: pgqueue.Queue, **task_options: Any) -> pgqueue.Task[Any]:
    """Register task ``t(ctx, x: int)`` on ``q`` (bare, or with task options)."""

    async def t(ctx: pgqueue.JobContext, x: int) -> int:
        return x

    return q.task(**task_options)(t) if task_options else q.task(t)


# -- transactional enqueue ----------------------------------------------------------------


async def test_enqueue_in_a_rolled_back_transaction_leaves_no_job(
    queue: pgqueue.Queue, db_dsn: str, conn: Conn
) -> None:
    t = register(queue)

    class Abort(Exception):
        pass

    async with await psycopg.AsyncConnection.connect(db_dsn) as aconn:
        with pytest.raises(Abort):
            async with aconn.transaction():
                job_id = await t.enqueue(conn=aconn, x=1)
                assert job_id > 0
                raise Abort
    assert count_jobs(conn) == 0


async def test_enqueue_in_a_committed_transaction_leaves_one_job_visible_after_commit(
    queue: pgqueue.Queue, db_dsn: str, conn: Conn
) -> None:
    t = register(queue)
    async with await psycopg.AsyncConnection.connect(db_dsn) as aconn:
        async with aconn.transaction():
            job_id = await t.enqueue(conn=aconn, x=7)
            assert count_jobs(conn) == 0  # not visible to others before commit
            assert claim(conn, limit=10) == []
        assert count_jobs(conn) == 1
    row = job(conn, job_id)
    assert (row["task"], row["args"], row["status"]) == ("t", {"x": 7}, "pending")


async def test_enqueue_many_in_a_rolled_back_transaction_leaves_no_job(
    queue: pgqueue.Queue, db_dsn: str, conn: Conn
) -> None:
    t = register(queue)
    async with (
        await psycopg.AsyncConnection.connect(db_dsn) as aconn,
        aconn.transaction(force_rollback=True),
    ):
        ids = await queue.enqueue_many(t, [{"x": i} for i in range(5)], conn=aconn)
        assert len(ids) == 5
    assert count_jobs(conn) == 0


async def test_enqueue_sync_in_a_transaction_is_all_or_nothing(
    queue: pgqueue.Queue, db_dsn: str, conn: Conn
) -> None:
    t = register(queue)
    with psycopg.connect(db_dsn) as sconn:
        with sconn.transaction(force_rollback=True):
            t.enqueue_sync(conn=sconn, x=1)
            queue.enqueue_many_sync(t, [{"x": 2}, {"x": 3}], conn=sconn)
        assert count_jobs(conn) == 0
        with sconn.transaction():
            job_id = t.enqueue_sync(conn=sconn, x=4)
            assert count_jobs(conn) == 0
        assert count_jobs(conn) == 1
    assert job(conn, job_id)["args"] == {"x": 4}


async def test_enqueue_without_a_connection_commits_at_once(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    t = register(queue)
    job_id = await t.enqueue(x=3)
    sync_id = t.enqueue_sync(x=4)
    assert [r["id"] for r in claim(conn, limit=10)] == [job_id, sync_id]


# -- enqueue_many -------------------------------------------------------------------------


async def test_enqueue_many_returns_ids_in_item_order(queue: pgqueue.Queue, conn: Conn) -> None:
    t = register(queue)
    ids = await queue.enqueue_many(t, [{"x": i} for i in range(25)])
    assert [job(conn, job_id)["args"]["x"] for job_id in ids] == list(range(25))
    assert await queue.enqueue_many(t, []) == []


@pytest.mark.parametrize(
    ("bad_item", "named"),
    [
        ({"x": {1, 2}}, "'x' is not JSON-serialisable"),
        ({}, "missing a required argument: 'x'"),
        ({"x": 1, "y": 2}, "unexpected keyword argument 'y'"),
    ],
)
async def test_enqueue_many_with_one_invalid_item_names_it_and_writes_nothing(
    queue: pgqueue.Queue, conn: Conn, bad_item: dict[str, Any], named: str
) -> None:
    t = register(queue)
    items: list[dict[str, Any]] = [{"x": 0}, {"x": 1}, bad_item, {"x": 3}]
    with pytest.raises(pgqueue.InvalidJobError) as exc:
        await queue.enqueue_many(t, items)
    assert "item 2" in str(exc.value)
    assert named in str(exc.value)
    with pytest.raises(pgqueue.InvalidJobError, match="item 2"):
        queue.enqueue_many_sync(t, items)
    assert count_jobs(conn) == 0


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"delay": -1}, "delay"),
        ({"delay": timedelta(seconds=-5)}, "delay"),
        ({"run_at": datetime(2030, 1, 1, 12, 0)}, "run_at must be timezone-aware"),
        ({"run_at": datetime.now().astimezone(), "delay": 5}, "run_at or delay"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -3}, "timeout"),
        ({"queue": "q" * 200}, "queue name"),
        ({"queue": "q" * 129}, "queue name"),
        ({"priority": "high"}, "priority"),
        ({"priority": 2**31}, "priority"),
        ({"metadata": {"when": object()}}, "metadata"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_enqueue_refuses_bad_input_naming_the_field_and_writes_nothing(
    queue: pgqueue.Queue, conn: Conn, options: dict[str, Any], named: str
) -> None:
    t = register(queue)
    with pytest.raises(pgqueue.InvalidJobError, match=named):
        await queue.enqueue(t, {"x": 1}, **options)
    with pytest.raises(pgqueue.InvalidJobError, match=named):
        queue.enqueue_sync(t, {"x": 1}, **options)
    assert count_jobs(conn) == 0


async def test_enqueue_refuses_max_attempts_zero(queue: pgqueue.Queue, conn: Conn) -> None:
    t = register(queue, max_attempts=3)
    with pytest.raises(pgqueue.InvalidJobError, match="max_attempts"):
        await t.options(max_attempts=0).enqueue(x=1)
    assert count_jobs(conn) == 0


async def test_enqueue_refuses_an_empty_queue_name(queue: pgqueue.Queue, conn: Conn) -> None:
    t = register(queue)
    with pytest.raises(pgqueue.InvalidJobError, match="queue name"):
        await t.options(queue="").enqueue(x=1)
    assert count_jobs(conn) == 0


async def test_enqueue_of_an_unknown_task_name_raises_unknown_task_error(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    register(queue)
    with pytest.raises(pgqueue.UnknownTaskError, match="'nope'") as exc:
        await queue.enqueue("nope", {"x": 1})
    assert "registered: t" in str(exc.value)
    with pytest.raises(pgqueue.UnknownTaskError):
        queue.enqueue_sync("nope", {"x": 1})
    with pytest.raises(pgqueue.InvalidJobError, match="unknown task 'nope'"):
        await queue.enqueue_many("nope", [{"x": 1}])
    assert count_jobs(conn) == 0


async def test_enqueue_many_of_an_unknown_task_name_raises_unknown_task_error(
    queue: pgqueue.Queue,
) -> None:
    register(queue)
    with pytest.raises(pgqueue.UnknownTaskError):
        await queue.enqueue_many("nope", [{"x": 1}])


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"x": 1, "y": 2}, "unexpected keyword argument 'y'"),
        ({}, "missing a required argument: 'x'"),
        ({"x": {1, 2}}, "'x' is not JSON-serialisable"),
    ],
)
async def test_enqueue_refuses_arguments_that_do_not_fit_the_task(
    queue: pgqueue.Queue, conn: Conn, args: dict[str, Any], named: str
) -> None:
    t = register(queue)
    with pytest.raises(pgqueue.InvalidJobError, match=named):
        await t.enqueue(**args)
    with pytest.raises(pgqueue.InvalidJobError, match=named):
        t.enqueue_sync(**args)
    assert count_jobs(conn) == 0


async def test_enqueue_by_name_uses_the_registered_task(queue: pgqueue.Queue, conn: Conn) -> None:
    register(queue, queue="images", max_attempts=3, timeout=30, priority=5)
    row = job(conn, await queue.enqueue("t", {"x": 1}, owner="alice", metadata={"k": "v"}))
    assert (row["task"], row["queue"], row["max_attempts"], row["priority"]) == (
        "t",
        "images",
        3,
        5,
    )
    assert row["timeout"] == timedelta(seconds=30)
    assert (row["owner"], row["metadata"]) == ("alice", {"k": "v"})


async def test_per_call_options_override_the_task_defaults(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    t = register(queue, queue="images", max_attempts=3, priority=5)
    job_id = await t.options(queue="thumbs", max_attempts=7, priority=-1, timeout=2.5).enqueue(x=1)
    row = job(conn, job_id)
    assert (row["queue"], row["max_attempts"], row["priority"]) == ("thumbs", 7, -1)
    assert row["timeout"] == timedelta(seconds=2.5)


# -- scheduling and priority --------------------------------------------------------------


async def test_delayed_jobs_get_run_at_in_the_future(queue: pgqueue.Queue, conn: Conn) -> None:
    t = register(queue)
    before = db_now(conn)
    delayed = await t.options(delay=60).enqueue(x=1)
    at = before + timedelta(hours=2)
    scheduled = await t.options(run_at=at).enqueue(x=2)
    row = job(conn, delayed)
    assert row["run_at"] >= before + timedelta(seconds=55)
    assert row["run_at"] > row["created_at"]
    assert job(conn, scheduled)["run_at"] == at
    assert claim(conn, limit=10) == []  # neither is due yet
    now_id = await t.options(delay=0).enqueue(x=3)
    assert [r["id"] for r in claim(conn, limit=10)] == [now_id]


async def test_priority_is_respected_by_claim_order(queue: pgqueue.Queue, conn: Conn) -> None:
    t = register(queue)
    by_priority = {}
    for p in (0, 10, -5, 3):
        by_priority[p] = await t.options(priority=p).enqueue(x=p)
    order = [r["id"] for _ in range(4) for r in claim(conn, limit=1)]
    assert order == [by_priority[p] for p in (10, 3, 0, -5)]


async def test_oversized_arguments_are_refused_naming_the_limit(db_dsn: str) -> None:
    small = pgqueue.Queue(db_dsn, max_payload_bytes=1000)
    try:

        @small.task
        async def t(ctx: pgqueue.JobContext, blob: str) -> None: ...

        with pytest.raises(pgqueue.InvalidJobError, match="over the limit of 1,000"):
            await t.enqueue(blob="x" * 2000)
        with pytest.raises(pgqueue.InvalidJobError, match=r"item 1: .*over the limit"):
            await small.enqueue_many(t, [{"blob": "ok"}, {"blob": "x" * 2000}])
        assert await t.enqueue(blob="x" * 500) > 0
        assert [j.args for j in await small.list_jobs()] == [{"blob": "x" * 500}]
    finally:
        await small.close()


# -- connections the server ended ---------------------------------------------------------


async def _end_other_sessions(conn: Conn, *, expect: int | None = None) -> None:
    """End every other session on the test database, as a restart or a
    failover of the server would, and wait until those sessions are gone.

    ``expect``: first wait until that many other sessions are connected. A
    pool that grew for a burst of calls may still be connecting when the
    burst ends; a connection that arrived after the others were ended would
    be a live one (and used to make the wait below time out)."""
    # client sessions only: an autovacuum worker on the database is not one of
    # the pool's and comes back on its own
    others = (
        "datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'"
    )
    for _ in range(200):
        if (
            expect is None
            or scalar(conn, f"SELECT count(*) FROM pg_stat_activity WHERE {others}") >= expect
        ):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the pool did not connect its {expect} sessions")
    # the pids first: in one WHERE the planner may call pg_terminate_backend
    # before the filters that spare this session and other databases
    ended = [row[0] for row in conn.execute(f"SELECT pid FROM pg_stat_activity WHERE {others}")]
    for pid in ended:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert ended
    for _ in range(200):
        if scalar(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (ended,)) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the ended sessions {ended} did not exit")


async def _until_the_pool_sees_the_ends(pool: Any) -> None:
    """Wait until every idle connection of ``pool`` shows its server's goodbye.

    A backend's goodbye can reach the client's socket after the backend is gone
    from ``pg_stat_activity``: the loopback device delivers it in a softirq,
    which a busy machine runs late. ``closed_by_server`` costs no round trip,
    so it can only see what has arrived; a connection whose goodbye is still
    on its way fails its next query as any connection lost in flight does."""
    idle = list(pool._pool)  # psycopg_pool's idle connections, in a deque
    assert idle
    for _ in range(200):
        if all(closed_by_server(c) for c in idle):
            return
        await asyncio.sleep(0.05)
    alive = [c.info.backend_pid for c in idle if not closed_by_server(c)]
    raise AssertionError(f"idle connections of backends {alive} never saw their server end")


async def test_enqueue_passes_over_pooled_connections_the_server_ended(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    """After a restart every idle connection of the pool is dead; none of them
    may cost a caller an error (each used to fail one enqueue)."""
    t = register(queue)
    await asyncio.gather(*(queue.enqueue(t, {"x": i}) for i in range(8)))
    pool = await queue.pool()
    size = pool.get_stats()["pool_size"]
    assert size >= 2  # several idle connections to pass over
    await _end_other_sessions(conn, expect=size)
    await _until_the_pool_sees_the_ends(pool)

    first = await queue.enqueue(t, {"x": 100})
    more = await asyncio.gather(*(queue.enqueue(t, {"x": 101 + i}) for i in range(8)))
    assert job(conn, first)["args"] == {"x": 100}
    assert count_jobs(conn) == 17
    assert len({first, *more}) == 9


async def test_enqueue_sync_passes_over_a_pooled_connection_the_server_ended(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    t = register(queue)
    queue.enqueue_sync(t, {"x": 1})
    pool = queue.sync_pool()
    # the first call waited for the pool to open, so it may be adding one more
    await _end_other_sessions(conn, expect=pool.get_stats()["pool_size"])
    await _until_the_pool_sees_the_ends(pool)
    job_id = queue.enqueue_sync(t, {"x": 2})
    assert job(conn, job_id)["args"] == {"x": 2}
    assert count_jobs(conn) == 2


async def test_schema_status_passes_over_pooled_connections_the_server_ended(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    """The status API's readiness probe asks ``schema_status``: after a restart
    it answers from a live connection instead of failing on a dead one."""
    t = register(queue)
    await asyncio.gather(*(queue.enqueue(t, {"x": i}) for i in range(8)))
    pool = await queue.pool()
    size = pool.get_stats()["pool_size"]
    assert size >= 2
    await _end_other_sessions(conn, expect=size)
    await _until_the_pool_sees_the_ends(pool)
    head = pgqueue.head_revision()
    assert await queue.schema_status(head) == (head, True)
