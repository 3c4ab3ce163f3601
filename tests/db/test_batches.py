"""Batches (invariant 4): a parent of many child jobs whose counters always equal
a recount of its children by state, and which reaches its final state exactly once.

The SQL-level tests call the stored functions of sql/functions.sql directly;
the API tests go through pgqueue.Queue; the worker tests run an in-process
worker against the same database. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import pgqueue
from pgqueue import BatchStatus

from ._helpers import (
    BAD_INPUT,
    STALE_LEASE,
    WRONG_STATE,
    Conn,
    age_heartbeat,
    cancel,
    claim,
    complete,
    fail,
    history,
    job,
    new_queue,
    replay,
    rescue,
    rows,
    scalar,
)
from .test_worker_inprocess import WAIT, eventually, running_worker

SHARED_DATABASE = True  # one database per module, emptied before each test (conftest.py)

BATCH_MISSING = "PQ004"
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
def _empty_batches(db_dsn: str) -> None:
    """conftest's reset empties jobs but keeps batch rows: start from nothing."""
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        admin.execute(_EMPTY)


# -- helpers ------------------------------------------------------------------------------


def sql_batch(
    conn: Conn,
    n: int,
    *,
    queue: str = "default",
    task: str = "t",
    args: Sequence[Any] | None = None,
    max_attempts: int = 1,
    owner: str | None = None,
    on_complete: dict[str, Any] | None = None,
) -> int:
    """pgqueue.enqueue_batch with ``n`` children; returns the batch id."""
    items = list(args) if args is not None else [{"i": i} for i in range(n)]
    return int(
        scalar(
            conn,
            "SELECT pgqueue.enqueue_batch(%s::text[], %s::jsonb[], %s::text[], %s::int[],"
            " %s::timestamptz[], %s::int[], %s::interval[], %s::jsonb[], %s::text, %s::jsonb,"
            " %s::jsonb)",
            (
                [task] * len(items),
                [Jsonb(a) for a in items],
                [queue] * len(items),
                [0] * len(items),
                [None] * len(items),
                [max_attempts] * len(items),
                [None] * len(items),
                [Jsonb({})] * len(items),
                owner,
                Jsonb({}),
                None if on_complete is None else Jsonb(on_complete),
            ),
        )
    )


def batch_row(conn: Conn, batch_id: int) -> dict[str, Any]:
    found = rows(conn, "SELECT * FROM pgqueue.batches WHERE id = %s", (batch_id,))
    assert len(found) == 1, f"batch {batch_id} not found"
    return found[0]


def children(conn: Conn, batch_id: int) -> list[int]:
    return [
        int(r[0])
        for r in conn.execute(
            "SELECT id FROM pgqueue.jobs WHERE batch_id = %s ORDER BY id", (batch_id,)
        ).fetchall()
    ]


def recount(conn: Conn, batch_id: int) -> dict[str, int]:
    counts = dict.fromkeys(COUNTERS, 0)
    for status, n in conn.execute(
        "SELECT status::text, count(*) FROM pgqueue.jobs WHERE batch_id = %s GROUP BY status",
        (batch_id,),
    ).fetchall():
        counts[status] = int(n)
    return counts


def assert_counters_equal_recount(conn: Conn, batch_id: int) -> dict[str, Any]:
    row = batch_row(conn, batch_id)
    assert {c: row[c] for c in COUNTERS} == recount(conn, batch_id)
    assert row["total"] == sum(row[c] for c in COUNTERS)
    return row


def on_complete_jobs(conn: Conn, batch_id: int) -> list[dict[str, Any]]:
    """Jobs enqueued by the batch's on_complete (they are not its children)."""
    return rows(
        conn,
        "SELECT * FROM pgqueue.jobs WHERE batch_id IS NULL AND (args ->> 'batch_id')::bigint = %s",
        (batch_id,),
    )


def claim_lease(conn: Conn, queue: str, limit: int = 1) -> list[tuple[int, int]]:
    return [(int(r["id"]), int(r["attempts"])) for r in claim(conn, "w1", [queue], limit)]


def count(conn: Conn, sql: str, params: Sequence[Any] = ()) -> int:
    return int(scalar(conn, sql, params))


def batch_notes(listener: Conn, batch_id: int, wait: float = 0.3) -> list[str]:
    """Statuses announced on pgqueue_batch for ``batch_id`` since the last call."""
    seen = []
    for note in listener.notifies(timeout=wait):
        payload = json.loads(note.payload)
        if payload["id"] == batch_id:
            seen.append(payload["status"])
    return seen


@pytest.fixture
def listener(db_dsn: str) -> Iterator[Conn]:
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute("LISTEN pgqueue_batch")
        yield c


def register(queue: pgqueue.Queue, calls: list[dict[str, Any]] | None = None) -> None:
    @queue.task(max_attempts=2)
    def square(ctx: pgqueue.JobContext, x: int) -> int:
        return x * x

    @queue.task
    def summary(ctx: pgqueue.JobContext, batch_id: int, batch_status: str, label: str) -> None:
        if calls is not None:
            calls.append({"batch_id": batch_id, "batch_status": batch_status, "label": label})

    @queue.task
    def needs_nothing(ctx: pgqueue.JobContext) -> None:
        return None


# -- creation is all or nothing -------------------------------------------------------------


def _bad_signature(i: int) -> dict[str, Any]:
    return {"x": i, "nope": 1}


def _not_json(i: int) -> dict[str, Any]:
    return {"x": object()}


def _oversized(i: int) -> dict[str, Any]:
    return {"x": i, "blob": "a" * (pgqueue._queue.DEFAULT_MAX_PAYLOAD_BYTES + 1)}


@pytest.mark.parametrize("bad_item", [_bad_signature, _not_json, _oversized])
async def test_batch_with_one_invalid_item_writes_nothing_and_names_its_index(
    queue: pgqueue.Queue, conn: Conn, bad_item: Any
) -> None:
    register(queue)
    items = [{"x": i} for i in range(5)]
    items[3] = bad_item(3)
    with pytest.raises(pgqueue.InvalidJobError, match=r"item 3\b"):
        await queue.enqueue_batch(
            "square", items, on_complete="summary", on_complete_args={"label": "l"}
        )
    with pytest.raises(pgqueue.InvalidJobError, match=r"item 3\b"):
        queue.enqueue_batch_sync("square", items)
    assert count(conn, "SELECT count(*) FROM pgqueue.batches") == 0
    assert count(conn, "SELECT count(*) FROM pgqueue.jobs") == 0


@pytest.mark.parametrize("bad_queue", ["", "q" * 129, "nul\x00"])
async def test_batch_with_a_bad_queue_name_writes_nothing(
    queue: pgqueue.Queue, conn: Conn, bad_queue: str
) -> None:
    register(queue)
    # the queue is one option for the whole batch: refused before any item is looked at
    with pytest.raises(pgqueue.InvalidJobError, match=r"queue name.*nothing was enqueued"):
        await queue.enqueue_batch("square", [{"x": 1}, {"x": 2}], queue=bad_queue)
    assert count(conn, "SELECT count(*) FROM pgqueue.batches") == 0
    assert count(conn, "SELECT count(*) FROM pgqueue.jobs") == 0


@pytest.mark.parametrize(
    ("column", "bad", "problem"),
    [
        ("args", "[]", "args must be a JSON object"),
        ("args", "3", "args must be a JSON object"),
        ("task", "", "task must be 1 to 256 characters"),
        ("queue", "", "queue must be 1 to 128 characters"),
        ("max_attempts", 0, "max_attempts must be at least 1"),
    ],
)
def test_sql_enqueue_batch_with_one_invalid_item_raises_22023_naming_it_and_writes_nothing(
    conn: Conn, column: str, bad: Any, problem: str
) -> None:
    n = 4
    cols: dict[str, list[Any]] = {
        "task": ["t"] * n,
        "args": ["{}"] * n,
        "queue": ["default"] * n,
        "max_attempts": [1] * n,
    }
    cols[column][2] = bad
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "SELECT pgqueue.enqueue_batch(%s::text[], %s::jsonb[], %s::text[], %s::int[],"
            " %s::timestamptz[], %s::int[], %s::interval[], %s::jsonb[], 'alice', '{}', NULL)",
            (
                cols["task"],
                cols["args"],
                cols["queue"],
                [0] * n,
                [None] * n,
                cols["max_attempts"],
                [None] * n,
                ["{}"] * n,
            ),
        )
    assert exc.value.sqlstate == BAD_INPUT
    assert f"item 2: {problem}" in str(exc.value)
    assert count(conn, "SELECT count(*) FROM pgqueue.batches") == 0
    assert count(conn, "SELECT count(*) FROM pgqueue.jobs") == 0


async def test_empty_batch_is_refused(queue: pgqueue.Queue, conn: Conn) -> None:
    register(queue)
    with pytest.raises(pgqueue.InvalidJobError, match="at least one item"):
        await queue.enqueue_batch("square", [])
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "SELECT pgqueue.enqueue_batch('{}'::text[], '{}'::jsonb[], '{}'::text[], '{}'::int[],"
            " '{}'::timestamptz[], '{}'::int[], '{}'::interval[], '{}'::jsonb[])"
        )
    assert exc.value.sqlstate == BAD_INPUT
    assert count(conn, "SELECT count(*) FROM pgqueue.batches") == 0


@pytest.mark.parametrize(
    ("on_complete", "args", "error"),
    [
        ("no_such_task", None, pgqueue.UnknownTaskError),
        ("needs_nothing", None, pgqueue.InvalidJobError),  # cannot take batch_id/batch_status
        ("summary", None, pgqueue.InvalidJobError),  # misses its "label"
        ("summary", {"label": object()}, pgqueue.InvalidJobError),
    ],
)
async def test_bad_on_complete_is_refused_and_nothing_is_written(
    queue: pgqueue.Queue, conn: Conn, on_complete: str, args: Any, error: type[Exception]
) -> None:
    register(queue)
    with pytest.raises(error, match="on_complete"):
        await queue.enqueue_batch(
            "square", [{"x": 1}], on_complete=on_complete, on_complete_args=args
        )
    assert count(conn, "SELECT count(*) FROM pgqueue.batches") == 0
    assert count(conn, "SELECT count(*) FROM pgqueue.jobs") == 0


@pytest.mark.parametrize(
    "on_complete",
    [[], {"args": {}}, {"task": 5}, {"task": "s", "args": []}],
    ids=["array", "no-task", "task-not-text", "args-not-object"],
)
def test_sql_enqueue_batch_refuses_a_malformed_on_complete(conn: Conn, on_complete: Any) -> None:
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "SELECT pgqueue.enqueue_batch(ARRAY['t'], ARRAY['{}'::jsonb], ARRAY['default'],"
            " ARRAY[0], ARRAY[NULL::timestamptz], ARRAY[1], ARRAY[NULL::interval],"
            " ARRAY['{}'::jsonb], NULL, '{}', %s::jsonb)",
            (Jsonb(on_complete),),
        )
    assert exc.value.sqlstate == BAD_INPUT
    assert "on_complete" in str(exc.value)
    assert count(conn, "SELECT count(*) FROM pgqueue.batches") == 0


@pytest.mark.parametrize(
    "on_complete",
    [
        {"task": ""},
        {"task": "s", "queue": ""},
        {"task": "s", "max_attempts": 0},
        {"task": "s", "timeout": "soon"},
        {"task": "s", "priority": 1.5},
    ],
    ids=["empty-task", "empty-queue", "max-attempts-0", "timeout-text", "priority-fraction"],
)
def test_sql_enqueue_batch_refuses_an_on_complete_that_could_not_be_enqueued(
    conn: Conn, on_complete: dict[str, Any]
) -> None:
    queue = new_queue()
    try:
        batch_id = sql_batch(conn, 1, queue=queue, on_complete=on_complete)
    except psycopg.Error as exc:
        assert exc.sqlstate == BAD_INPUT
        return
    # accepted: then finishing the batch must still work
    ((job_id, attempt),) = claim_lease(conn, queue)
    complete(conn, job_id, attempt, 1)
    assert batch_row(conn, batch_id)["status"] == "completed"


# -- counters and status ---------------------------------------------------------------------


def test_batch_counters_equal_recount_through_every_child_transition(conn: Conn) -> None:
    queue = new_queue()
    batch_id = sql_batch(conn, 8, queue=queue, max_attempts=2, on_complete={"task": "s"})
    ids = children(conn, batch_id)
    row = assert_counters_equal_recount(conn, batch_id)
    assert (row["status"], row["total"], row["pending"]) == ("pending", 8, 8)
    assert row["started_at"] is None and row["completed_at"] is None

    leases = claim_lease(conn, queue, limit=5)  # children 0..4 running
    assert [i for i, _ in leases] == ids[:5]
    row = assert_counters_equal_recount(conn, batch_id)
    assert row["status"] == "running" and row["running"] == 5
    assert row["started_at"] is not None and row["started_at"] >= row["created_at"]

    (a, att_a), (b, att_b), (c, att_c), (d, _), (e, _) = leases
    complete(conn, a, att_a, {"ok": 1})
    assert_counters_equal_recount(conn, batch_id)
    assert fail(conn, b, att_b, retry_in=timedelta(0)) == "retrying"
    assert_counters_equal_recount(conn, batch_id)
    assert fail(conn, c, att_c, retryable=False) == "failed"
    assert_counters_equal_recount(conn, batch_id)
    assert cancel(conn, d) == "cancelled"  # a running child
    assert_counters_equal_recount(conn, batch_id)
    assert cancel(conn, ids[7]) == "cancelled"  # a pending child
    assert_counters_equal_recount(conn, batch_id)
    age_heartbeat(conn, e)
    assert rescue(conn) == {e: "retrying"}
    assert_counters_equal_recount(conn, batch_id)
    assert replay(conn, c) == "pending"
    assert replay(conn, d) == "pending"
    row = assert_counters_equal_recount(conn, batch_id)
    assert row["status"] == "running"
    assert row["completed_at"] is None

    # drain: everything still pending or retrying is claimed and completed,
    # except one child that fails for good
    assert on_complete_jobs(conn, batch_id) == []
    leases = claim_lease(conn, queue, limit=10)
    assert sorted(i for i, _ in leases) == sorted([b, c, d, e, ids[5], ids[6]])
    assert_counters_equal_recount(conn, batch_id)
    for job_id, attempt in leases:
        if job_id == ids[6]:
            assert fail(conn, job_id, attempt, retryable=False) == "failed"
        else:
            complete(conn, job_id, attempt, job_id)
        assert_counters_equal_recount(conn, batch_id)
    row = assert_counters_equal_recount(conn, batch_id)
    assert row["status"] == "completed_with_errors"
    assert (row["completed"], row["failed"], row["cancelled"]) == (6, 1, 1)
    assert row["completed_at"] >= row["started_at"] >= row["created_at"]
    assert len(on_complete_jobs(conn, batch_id)) == 1


def test_batch_of_completed_children_completes_once_and_enqueues_on_complete_once(
    conn: Conn, listener: Conn
) -> None:
    queue = new_queue()
    batch_id = sql_batch(
        conn,
        3,
        queue=queue,
        owner="alice",
        on_complete={"task": "summary", "args": {"label": "L"}, "max_attempts": 3, "timeout": 9},
    )
    assert batch_notes(listener, batch_id, 0.05) == []  # creation is not a status change
    leases = claim_lease(conn, queue, limit=3)
    assert batch_notes(listener, batch_id) == ["running"]
    for job_id, attempt in leases[:2]:
        complete(conn, job_id, attempt, job_id)
    assert batch_row(conn, batch_id)["status"] == "running"
    assert on_complete_jobs(conn, batch_id) == []
    complete(conn, *leases[2], "last")

    row = assert_counters_equal_recount(conn, batch_id)
    assert row["status"] == "completed" and row["completed"] == 3
    assert batch_notes(listener, batch_id) == ["completed"]  # announced exactly once
    (follow_up,) = on_complete_jobs(conn, batch_id)
    assert row["on_complete_job_id"] == follow_up["id"]
    assert follow_up["task"] == "summary"
    assert follow_up["args"] == {"label": "L", "batch_id": batch_id, "batch_status": "completed"}
    assert follow_up["owner"] == "alice"  # inherited from the batch
    assert follow_up["queue"] == queue  # the batch's queue by default
    assert (follow_up["max_attempts"], follow_up["timeout"]) == (3, timedelta(seconds=9))
    assert follow_up["status"] == "pending"
    for child in children(conn, batch_id):
        assert job(conn, child)["owner"] == "alice"

    # nothing that happens afterwards finishes it a second time
    completed_at = row["completed_at"]
    for child in children(conn, batch_id):
        with pytest.raises(psycopg.Error) as exc:
            cancel(conn, child)
        assert exc.value.sqlstate == WRONG_STATE
    row = assert_counters_equal_recount(conn, batch_id)
    assert (row["status"], row["completed_at"]) == ("completed", completed_at)
    assert len(on_complete_jobs(conn, batch_id)) == 1
    assert batch_notes(listener, batch_id, 0.05) == []


def test_batch_with_an_unsuccessful_child_ends_completed_with_errors_and_says_so(
    conn: Conn, listener: Conn
) -> None:
    queue = new_queue()
    batch_id = sql_batch(conn, 2, queue=queue, on_complete={"task": "summary", "queue": "other"})
    (a, att_a), (b, att_b) = claim_lease(conn, queue, limit=2)
    assert fail(conn, a, att_a, "bad input", retryable=False) == "failed"
    assert batch_row(conn, batch_id)["status"] == "running"
    complete(conn, b, att_b)
    row = assert_counters_equal_recount(conn, batch_id)
    assert row["status"] == "completed_with_errors"
    assert row["completed_at"] is not None
    assert batch_notes(listener, batch_id) == ["running", "completed_with_errors"]
    (follow_up,) = on_complete_jobs(conn, batch_id)
    assert follow_up["args"] == {"batch_id": batch_id, "batch_status": "completed_with_errors"}
    assert follow_up["queue"] == "other"
    assert follow_up["owner"] is None


def test_batch_whose_last_child_is_cancelled_finishes_by_itself_with_errors(conn: Conn) -> None:
    queue = new_queue()
    batch_id = sql_batch(conn, 2, queue=queue, on_complete={"task": "s"})
    ((a, att_a),) = claim_lease(conn, queue)
    complete(conn, a, att_a)
    cancel(conn, children(conn, batch_id)[1])
    row = assert_counters_equal_recount(conn, batch_id)
    assert row["status"] == "completed_with_errors"
    assert len(on_complete_jobs(conn, batch_id)) == 1


def test_cancelled_batch_enqueues_no_on_complete(conn: Conn, listener: Conn) -> None:
    queue = new_queue()
    batch_id = sql_batch(conn, 3, queue=queue, on_complete={"task": "summary"})
    ((a, att_a),) = claim_lease(conn, queue)
    complete(conn, a, att_a)
    assert scalar(conn, "SELECT pgqueue.cancel_batch(%s)", (batch_id,)) == "cancelled"
    row = assert_counters_equal_recount(conn, batch_id)
    assert (row["status"], row["completed"], row["cancelled"]) == ("cancelled", 1, 2)
    assert row["completed_at"] is not None and row["on_complete_job_id"] is None
    assert on_complete_jobs(conn, batch_id) == []
    assert batch_notes(listener, batch_id).count("cancelled") == 1


def test_batch_status_stays_pending_until_a_child_is_claimed(conn: Conn) -> None:
    queue = new_queue()
    batch_id = sql_batch(conn, 2, queue=queue)
    assert claim_lease(conn, new_queue()) == []
    assert batch_row(conn, batch_id)["status"] == "pending"
    claim_lease(conn, queue)
    assert batch_row(conn, batch_id)["status"] == "running"


async def test_api_reads_batch_counters_and_children_in_order(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    register(queue)
    batch = await queue.enqueue_batch(
        "square", [{"x": i} for i in range(5)], owner="bob", metadata={"k": "v"}
    )
    assert batch.status is BatchStatus.PENDING and batch.total == 5
    assert batch.counts["pending"] == 5 and batch.owner == "bob"
    assert batch.metadata == {"k": "v"} and not batch.is_final
    kids = await queue.batch_jobs(batch.id)
    assert [k.args["x"] for k in kids] == [0, 1, 2, 3, 4]
    assert all(k.batch_id == batch.id and k.owner == "bob" for k in kids)
    assert all(k.max_attempts == 2 for k in kids)  # the task's default
    page = await queue.batch_jobs(batch.id, after_id=kids[1].id, limit=2)
    assert [k.id for k in page] == [kids[2].id, kids[3].id]
    assert [b.id for b in await queue.list_batches(owner="bob")] == [batch.id]
    assert await queue.list_batches(status="completed") == []
    assert await queue.get_batch(987_654) is None


# -- pause and resume --------------------------------------------------------------------------


def test_paused_batch_children_are_not_claimed_until_resumed_and_running_ones_finish(
    conn: Conn,
) -> None:
    queue = new_queue()
    batch_id = sql_batch(conn, 4, queue=queue, max_attempts=3)
    (a, att_a), (b, att_b) = claim_lease(conn, queue, limit=2)
    assert scalar(conn, "SELECT pgqueue.pause_batch(%s)", (batch_id,)) == "paused"
    row = assert_counters_equal_recount(conn, batch_id)
    assert (row["status"], row["paused"]) == ("paused", True)
    assert claim_lease(conn, queue, limit=10) == []

    # a running child fails into retrying during the pause: still not claimable
    assert fail(conn, a, att_a, retry_in=timedelta(0)) == "retrying"
    assert job(conn, a)["paused"] is True
    assert claim_lease(conn, queue, limit=10) == []
    # the other running child finishes normally
    complete(conn, b, att_b, "done")
    row = assert_counters_equal_recount(conn, batch_id)
    assert (row["status"], row["completed"], row["retrying"], row["pending"]) == (
        "paused",
        1,
        1,
        2,
    )
    assert claim_lease(conn, queue, limit=10) == []

    assert scalar(conn, "SELECT pgqueue.resume_batch(%s)", (batch_id,)) == "running"
    assert count(conn, "SELECT count(*) FROM pgqueue.jobs WHERE paused") == 0
    leases = claim_lease(conn, queue, limit=10)
    assert sorted(i for i, _ in leases) == sorted([a, *children(conn, batch_id)[2:]])
    for job_id, attempt in leases:
        complete(conn, job_id, attempt)
    row = assert_counters_equal_recount(conn, batch_id)
    assert row["status"] == "completed"


def test_pausing_a_batch_that_never_started_resumes_to_pending(conn: Conn) -> None:
    queue = new_queue()
    batch_id = sql_batch(conn, 2, queue=queue)
    assert scalar(conn, "SELECT pgqueue.pause_batch(%s)", (batch_id,)) == "paused"
    assert scalar(conn, "SELECT pgqueue.pause_batch(%s)", (batch_id,)) == "paused"  # idempotent
    assert claim_lease(conn, queue) == []
    assert scalar(conn, "SELECT pgqueue.resume_batch(%s)", (batch_id,)) == "pending"
    assert len(claim_lease(conn, queue, limit=2)) == 2


def test_replayed_child_of_a_paused_batch_stays_unclaimable_until_resume(conn: Conn) -> None:
    queue = new_queue()
    batch_id = sql_batch(conn, 2, queue=queue)
    ((a, att_a),) = claim_lease(conn, queue)
    assert fail(conn, a, att_a, retryable=False) == "failed"
    scalar(conn, "SELECT pgqueue.pause_batch(%s)", (batch_id,))
    assert replay(conn, a) == "pending"
    assert claim_lease(conn, queue, limit=5) == []
    scalar(conn, "SELECT pgqueue.resume_batch(%s)", (batch_id,))
    assert len(claim_lease(conn, queue, limit=5)) == 2
    assert_counters_equal_recount(conn, batch_id)


def test_rescued_and_released_children_of_a_paused_batch_stay_unclaimable(conn: Conn) -> None:
    queue = new_queue()
    batch_id = sql_batch(conn, 2, queue=queue, max_attempts=3)
    (a, _), (b, att_b) = claim_lease(conn, queue, limit=2)
    scalar(conn, "SELECT pgqueue.pause_batch(%s)", (batch_id,))
    age_heartbeat(conn, a)
    assert rescue(conn) == {a: "retrying"}
    conn.execute("SELECT pgqueue.release(%s, %s)", (b, att_b))
    assert job(conn, b)["status"] == "pending"
    assert claim_lease(conn, queue, limit=5) == []
    assert_counters_equal_recount(conn, batch_id)
    scalar(conn, "SELECT pgqueue.resume_batch(%s)", (batch_id,))
    assert sorted(i for i, _ in claim_lease(conn, queue, limit=5)) == [a, b]


def test_child_failing_while_its_batch_is_resumed_is_claimable_after_the_resume(
    conn: Conn, db_dsn: str
) -> None:
    queue = new_queue()
    batch_id = sql_batch(conn, 2, queue=queue, max_attempts=2)
    ((a, att_a),) = claim_lease(conn, queue)
    scalar(conn, "SELECT pgqueue.pause_batch(%s)", (batch_id,))
    outcome: list[Any] = []

    def worker_fails() -> None:
        with psycopg.connect(db_dsn, autocommit=True) as w:
            outcome.append(fail(w, a, att_a, retry_in=timedelta(0)))

    with psycopg.connect(db_dsn) as resumer:  # one transaction, committed below
        resumer.execute("SELECT pgqueue.resume_batch(%s)", (batch_id,))
        thread = threading.Thread(target=worker_fails)
        thread.start()
        wait_until_blocked(conn, "pgqueue.fail")
        resumer.commit()
    thread.join(10)
    assert outcome == ["retrying"]
    row = assert_counters_equal_recount(conn, batch_id)
    assert (row["status"], row["paused"]) == ("running", False)
    assert sorted(i for i, _ in claim_lease(conn, queue, limit=5)) == sorted(
        children(conn, batch_id)
    )


def wait_until_blocked(conn: Conn, query_fragment: str, timeout: float = 5.0) -> None:
    """Wait until another session running ``query_fragment`` waits on a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        blocked = count(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE %s",
            (f"%{query_fragment}%",),
        )
        if blocked:
            return
        time.sleep(0.02)
    raise AssertionError(f"no session running {query_fragment} got blocked")


def test_pause_and_cancel_of_the_same_batch_never_deadlock(conn: Conn, db_dsn: str) -> None:
    queue = new_queue()
    batch_id = sql_batch(conn, 2, queue=queue, max_attempts=2)
    first, _ = children(conn, batch_id)
    ((a, att_a),) = claim_lease(conn, queue)
    assert a == first
    # the first child comes back as retrying: its row version now lies after the second's
    assert fail(conn, a, att_a, retry_in=timedelta(hours=1)) == "retrying"
    errors: list[BaseException] = []

    def call(sql: str) -> None:
        try:
            with psycopg.connect(db_dsn, autocommit=True) as c:
                c.execute(sql, (batch_id,))
        except psycopg.Error as exc:
            errors.append(exc)

    with psycopg.connect(db_dsn) as holder:  # e.g. a worker statement on the first child
        holder.execute("SELECT 1 FROM pgqueue.jobs WHERE id = %s FOR UPDATE", (first,))
        canceller = threading.Thread(target=call, args=("SELECT pgqueue.cancel_batch(%s)",))
        canceller.start()
        wait_until_blocked(conn, "cancel_batch")
        pauser = threading.Thread(target=call, args=("SELECT pgqueue.pause_batch(%s)",))
        pauser.start()
        wait_until_blocked(conn, "pause_batch")
        holder.commit()
    canceller.join(10)
    pauser.join(10)
    # Both lock the children in id order, so one waits for the other: no
    # deadlock. The pause that comes second finds the batch cancelled.
    assert all(getattr(e, "sqlstate", None) == "PQ002" for e in errors), errors
    assert len(errors) <= 1
    assert_counters_equal_recount(conn, batch_id)


async def test_pause_resume_cancel_of_a_finished_batch_raise_invalid_transition(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    register(queue)
    done = await queue.enqueue_batch("square", [{"x": 1}], queue=new_queue())
    ((job_id, attempt),) = claim_lease(conn, done.queue)
    complete(conn, job_id, attempt, 1)
    cancelled = await queue.enqueue_batch("square", [{"x": 1}])
    assert await queue.cancel_batch(cancelled.id) is BatchStatus.CANCELLED
    for batch_id in (done.id, cancelled.id):
        before = batch_row(conn, batch_id)
        for action in (queue.pause_batch, queue.resume_batch, queue.cancel_batch):
            with pytest.raises(pgqueue.InvalidTransition, match="finished"):
                await action(batch_id)
        assert batch_row(conn, batch_id) == before


async def test_unknown_batch_raises_batch_not_found(queue: pgqueue.Queue, conn: Conn) -> None:
    for action in (queue.pause_batch, queue.resume_batch, queue.cancel_batch):
        with pytest.raises(pgqueue.BatchNotFound, match="987654"):
            await action(987654)
    with pytest.raises(pgqueue.BatchNotFound):
        await queue.wait_batch(987654, timeout=1)
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT pgqueue.pause_batch(987654)")
    assert exc.value.sqlstate == BATCH_MISSING


async def test_api_pause_and_resume_report_the_batch_status(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    register(queue)
    batch = await queue.enqueue_batch("square", [{"x": 1}, {"x": 2}], queue=new_queue())
    claim_lease(conn, batch.queue)
    assert await queue.pause_batch(batch.id) is BatchStatus.PAUSED
    paused = await queue.get_batch(batch.id)
    assert paused is not None and paused.paused and paused.status is BatchStatus.PAUSED
    assert await queue.resume_batch(batch.id) is BatchStatus.RUNNING


# -- cancel -----------------------------------------------------------------------------------


async def test_cancel_batch_cancels_pending_and_running_children_and_refuses_late_results(
    queue: pgqueue.Queue, conn: Conn, db_dsn: str
) -> None:
    register(queue)
    batch = await queue.enqueue_batch("square", [{"x": i} for i in range(5)], queue=new_queue())
    leases = claim_lease(conn, batch.queue, limit=2)
    with psycopg.connect(db_dsn, autocommit=True) as cancels:
        cancels.execute("LISTEN pgqueue_cancel")
        assert await queue.cancel_batch(batch.id) is BatchStatus.CANCELLED
        told = {int(n.payload) for n in cancels.notifies(timeout=0.3)}
    assert told == {i for i, _ in leases}  # the running children's workers are told
    row = assert_counters_equal_recount(conn, batch.id)
    assert (row["status"], row["cancelled"], row["total"]) == ("cancelled", 5, 5)
    assert row["completed_at"] is not None and row["paused"] is False
    assert count(conn, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'running'") == 0
    for job_id, attempt in leases:
        with pytest.raises(psycopg.Error) as exc:
            complete(conn, job_id, attempt, "late")
        assert exc.value.sqlstate == STALE_LEASE
        with pytest.raises(psycopg.Error) as exc:
            fail(conn, job_id, attempt)
        assert exc.value.sqlstate == STALE_LEASE
        assert [(h["attempt"], h["outcome"]) for h in history(conn, job_id)] == [
            (attempt, "cancelled")
        ]
        assert job(conn, job_id)["result"] is None
    assert_counters_equal_recount(conn, batch.id)
    with pytest.raises(pgqueue.BatchFailed) as failed:
        await queue.wait_batch(batch.id, timeout=WAIT)
    assert failed.value.status == "cancelled" and failed.value.unsuccessful == 5


async def test_worker_result_for_a_cancelled_batch_is_refused_as_stale_lease(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    release = threading.Event()

    @queue.task
    def slow(ctx: pgqueue.JobContext, x: int) -> int:
        release.wait(WAIT)
        return x

    batch = await queue.enqueue_batch("slow", [{"x": 1}, {"x": 2}])
    async with running_worker(queue, concurrency=2):

        async def both_running() -> bool:
            b = await queue.get_batch(batch.id)
            return b is not None and b.counts["running"] == 2

        await eventually(both_running, what="both children running")
        await queue.cancel_batch(batch.id)
        release.set()
        await asyncio.sleep(0.5)
    row = assert_counters_equal_recount(conn, batch.id)
    assert (row["status"], row["cancelled"]) == ("cancelled", 2)
    assert count(conn, "SELECT count(*) FROM pgqueue.jobs WHERE result IS NOT NULL") == 0
    assert count(conn, "SELECT count(*) FROM pgqueue.attempts WHERE outcome = 'completed'") == 0


# -- replay -------------------------------------------------------------------------------------


async def test_replay_of_a_child_of_a_finished_batch_is_refused(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    queue_name = new_queue()
    batch_id = sql_batch(conn, 2, queue=queue_name, on_complete={"task": "s"})
    (a, att_a), (b, att_b) = claim_lease(conn, queue_name, limit=2)
    fail(conn, a, att_a, retryable=False)
    complete(conn, b, att_b)
    before = assert_counters_equal_recount(conn, batch_id)
    assert before["status"] == "completed_with_errors"
    with pytest.raises(pgqueue.InvalidTransition, match="finished"):
        await queue.retry(a)
    with pytest.raises(psycopg.Error) as exc:
        replay(conn, a)
    assert exc.value.sqlstate == WRONG_STATE
    assert job(conn, a)["status"] == "failed"
    assert batch_row(conn, batch_id) == before
    assert len(on_complete_jobs(conn, batch_id)) == 1

    cancelled = sql_batch(conn, 1, queue=new_queue())
    scalar(conn, "SELECT pgqueue.cancel_batch(%s)", (cancelled,))
    with pytest.raises(pgqueue.InvalidTransition):
        await queue.retry(children(conn, cancelled)[0])


async def test_replay_of_a_dead_child_while_the_batch_runs_is_allowed_and_counted(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    queue_name = new_queue()
    batch_id = sql_batch(conn, 2, queue=queue_name, max_attempts=2)
    (a, att_a), (b, att_b) = claim_lease(conn, queue_name, limit=2)
    assert fail(conn, a, att_a, retry_in=timedelta(0)) == "retrying"
    assert claim_lease(conn, queue_name) == [(a, 2)]
    assert fail(conn, a, 2) == "dead_letter"
    row = assert_counters_equal_recount(conn, batch_id)
    assert (row["status"], row["dead_letter"], row["running"]) == ("running", 1, 1)

    assert await queue.retry(a) is pgqueue.JobStatus.PENDING
    row = assert_counters_equal_recount(conn, batch_id)
    assert (row["dead_letter"], row["pending"], row["running"]) == (0, 1, 1)
    assert job(conn, a)["max_attempts"] == 3
    complete(conn, b, att_b)
    assert batch_row(conn, batch_id)["status"] == "running"
    assert claim_lease(conn, queue_name) == [(a, 3)]
    complete(conn, a, 3)
    row = assert_counters_equal_recount(conn, batch_id)
    assert (row["status"], row["completed"]) == ("completed", 2)


# -- wait_batch ------------------------------------------------------------------------------------


async def test_wait_batch_returns_results_in_child_order(queue: pgqueue.Queue, conn: Conn) -> None:
    register(queue)
    batch = await queue.enqueue_batch("square", [{"x": i} for i in range(4)], queue=new_queue())
    leases = claim_lease(conn, batch.queue, limit=4)
    for job_id, attempt in reversed(leases):  # finish in the opposite order
        complete(conn, job_id, attempt, {"child": job_id})
    assert await queue.wait_batch(batch.id, timeout=WAIT) == [{"child": i} for i, _ in leases]


async def test_wait_batch_raises_batch_failed_naming_the_unsuccessful_children(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    register(queue)
    batch = await queue.enqueue_batch("square", [{"x": i} for i in range(3)], queue=new_queue())
    (a, att_a), (b, att_b), (c, _) = claim_lease(conn, batch.queue, limit=3)
    fail(conn, a, att_a, "bad x", retryable=False)
    complete(conn, b, att_b, 1)
    cancel(conn, c)
    with pytest.raises(pgqueue.BatchFailed) as failed:
        await queue.wait_batch(batch.id, timeout=WAIT)
    assert failed.value.batch_id == batch.id
    assert failed.value.status == "completed_with_errors"
    assert failed.value.unsuccessful == 2
    assert failed.value.errors == {
        a: ("failed", "bad x"),
        c: ("cancelled", None),
    }


async def test_wait_batch_times_out_while_the_batch_is_unfinished(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    register(queue)
    batch = await queue.enqueue_batch("square", [{"x": 1}], queue=new_queue())
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="pending"):
        await queue.wait_batch(batch.id, timeout=0.3)
    assert time.monotonic() - started < 2.0


async def test_wait_batch_is_woken_by_notify_well_before_the_backstop(
    queue: pgqueue.Queue, conn: Conn, db_dsn: str
) -> None:
    register(queue)
    batch = await queue.enqueue_batch("square", [{"x": 1}, {"x": 2}], queue=new_queue())
    leases = claim_lease(conn, batch.queue, limit=2)
    complete(conn, *leases[0], 1)
    waiter = asyncio.create_task(queue.wait_batch(batch.id, timeout=30))
    await asyncio.sleep(0.5)  # the waiter is listening and has checked once
    assert not waiter.done()

    def finish() -> float:
        with psycopg.connect(db_dsn, autocommit=True) as c:
            complete(c, *leases[1], 4)
        return time.monotonic()

    finished_at = await asyncio.to_thread(finish)
    result = await asyncio.wait_for(waiter, timeout=10)
    woke_after = time.monotonic() - finished_at
    assert result == [1, 4]
    assert woke_after < 1.0, f"wait_batch took {woke_after:.2f} s: not woken by NOTIFY"


# -- with a worker ---------------------------------------------------------------------------------


async def test_worker_drains_a_batch_and_runs_its_on_complete_task_once(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    calls: list[dict[str, Any]] = []
    register(queue, calls)
    batch = await queue.enqueue_batch(
        "square",
        [{"x": i} for i in range(20)],
        owner="carol",
        on_complete="summary",
        on_complete_args={"label": "all squared"},
    )
    async with running_worker(queue, concurrency=4):
        assert await queue.wait_batch(batch.id, timeout=WAIT) == [i * i for i in range(20)]

        async def ran() -> bool:
            return len(calls) >= 1

        await eventually(ran, what="the on_complete task to run")
        await asyncio.sleep(0.3)  # and not a second time
    assert calls == [{"batch_id": batch.id, "batch_status": "completed", "label": "all squared"}]
    row = assert_counters_equal_recount(conn, batch.id)
    assert row["status"] == "completed"
    follow_up = job(conn, row["on_complete_job_id"])
    assert (follow_up["status"], follow_up["owner"], follow_up["task"]) == (
        "completed",
        "carol",
        "summary",
    )


async def test_pause_stops_claims_within_one_poll_interval_and_resume_completes_the_batch(
    queue: pgqueue.Queue, conn: Conn
) -> None:
    duration = 0.03

    @queue.task
    async def work(ctx: pgqueue.JobContext, i: int) -> int:
        await asyncio.sleep(duration)
        return i

    poll = 0.2
    batch = await queue.enqueue_batch("work", [{"i": i} for i in range(150)])

    def completed() -> int:
        return count(
            conn,
            "SELECT count(*) FROM pgqueue.jobs WHERE batch_id = %s AND status = 'completed'",
            (batch.id,),
        )

    async with running_worker(queue, concurrency=5, poll_interval=poll):

        async def some_done() -> bool:
            return completed() >= 20

        await eventually(some_done, what="20 children done")
        assert await queue.pause_batch(batch.id) is BatchStatus.PAUSED
        paused_at = scalar(conn, "SELECT clock_timestamp()")

        async def running_drained() -> bool:
            return batch_row(conn, batch.id)["running"] == 0

        # the children already running finish and their results are written...
        await eventually(running_drained, what="the running children to finish")
        stopped_at = completed()
        assert stopped_at < 150, "the batch finished before the pause"
        # ...and after that nothing more is claimed
        await asyncio.sleep(1.0)
        assert completed() == stopped_at, "children were still claimed while paused"
        late = count(
            conn,
            "SELECT count(*) FROM pgqueue.jobs WHERE batch_id = %s"
            " AND leased_at > %s + make_interval(secs => %s)",
            (batch.id, paused_at, poll),
        )
        assert late == 0, f"{late} children were claimed more than one poll after the pause"
        row = assert_counters_equal_recount(conn, batch.id)
        assert (row["status"], row["running"]) == ("paused", 0)

        assert await queue.resume_batch(batch.id) is BatchStatus.RUNNING
        results = await queue.wait_batch(batch.id, timeout=15)
    assert results == list(range(150))
    row = assert_counters_equal_recount(conn, batch.id)
    assert row["status"] == "completed"
