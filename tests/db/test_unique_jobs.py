"""Unique jobs: a duplicate enqueue (same task and dedupe key, while the first
job holds the key) returns the existing job's id instead of creating one, in
single and bulk enqueues, race-free under concurrent enqueuers."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import pgqueue

from ._helpers import BAD_INPUT, WRONG_STATE, Conn, claim, complete, fail, job, rows, scalar

SHARED_DATABASE = True  # one database per module, emptied before each test (conftest.py)


def enqueue_unique(
    conn: Conn, key: str, scope: str = "pending", window: str | None = None, task: str = "t"
) -> int:
    return int(
        scalar(
            conn,
            "SELECT pgqueue.enqueue(%s, p_dedupe_key => %s, p_dedupe_scope => %s,"
            " p_dedupe_window => %s::interval)",
            (task, key, scope, window),
        )
    )


def enqueue_many_unique(
    conn: Conn, keys: list[str | None], scope: str = "pending", window: str | None = None
) -> list[int]:
    n = len(keys)
    found = rows(
        conn,
        "SELECT id FROM pgqueue.enqueue_many(%s::text[], %s::jsonb[], %s::text[], %s::int[],"
        " %s::timestamptz[], %s::int[], %s::interval[], %s::text[], %s::jsonb[],"
        " p_dedupe_keys => %s::text[], p_dedupe_scopes => %s::text[],"
        " p_dedupe_windows => %s::interval[]) AS id",
        (
            ["t"] * n,
            [f'{{"i": {i}}}' for i in range(n)],
            ["default"] * n,
            [0] * n,
            [None] * n,
            [1] * n,
            [None] * n,
            [None] * n,
            ["{}"] * n,
            keys,
            [scope] * n,
            [window] * n,
        ),
    )
    return [r["id"] for r in found]


def count_jobs(conn: Conn) -> int:
    return int(scalar(conn, "SELECT count(*) FROM pgqueue.jobs"))


# -- scopes -----------------------------------------------------------------------------------


def test_pending_scope_returns_the_waiting_job_until_it_starts(conn: Conn) -> None:
    first = enqueue_unique(conn, "k")
    assert enqueue_unique(conn, "k") == first
    assert count_jobs(conn) == 1
    assert (job(conn, first)["dedupe_key"], job(conn, first)["dedupe_scope"]) == ("k", "pending")

    claim(conn)  # started: the key is free again
    second = enqueue_unique(conn, "k")

    assert second != first
    assert enqueue_unique(conn, "k") == second


def test_active_scope_holds_the_key_until_the_job_finishes(conn: Conn) -> None:
    first = enqueue_unique(conn, "k", "active")
    ((job_id, attempt),) = [(r["id"], r["attempts"]) for r in claim(conn)]
    assert job_id == first
    assert enqueue_unique(conn, "k", "active") == first  # running: still held

    complete(conn, job_id, attempt)

    assert enqueue_unique(conn, "k", "active") != first


def test_active_scope_holds_the_key_while_retrying(conn: Conn) -> None:
    first = int(
        scalar(
            conn,
            "SELECT pgqueue.enqueue('t', p_max_attempts => 3, p_dedupe_key => 'k',"
            " p_dedupe_scope => 'active')",
        )
    )
    ((job_id, attempt),) = [(r["id"], r["attempts"]) for r in claim(conn)]
    assert fail(conn, job_id, attempt, "boom") == "retrying"
    assert enqueue_unique(conn, "k", "active") == first


def test_window_scope_returns_any_job_created_within_the_window(conn: Conn) -> None:
    first = enqueue_unique(conn, "k", "window", "1 hour")
    ((job_id, attempt),) = [(r["id"], r["attempts"]) for r in claim(conn)]
    complete(conn, job_id, attempt)

    assert enqueue_unique(conn, "k", "window", "1 hour") == first  # finished, but recent
    short = enqueue_unique(conn, "k", "window", "50 milliseconds")
    assert short == first or count_jobs(conn) == 2
    time.sleep(0.1)
    later = enqueue_unique(conn, "k", "window", "50 milliseconds")
    assert later not in (first, short)


def test_keys_belong_to_their_task(conn: Conn) -> None:
    a = enqueue_unique(conn, "k", task="a")
    b = enqueue_unique(conn, "k", task="b")
    assert a != b
    assert enqueue_unique(conn, "k", task="a") == a


def test_jobs_without_a_key_are_never_deduplicated(conn: Conn) -> None:
    ids = {int(scalar(conn, "SELECT pgqueue.enqueue('t')")) for _ in range(3)}
    assert len(ids) == 3


def test_a_job_that_started_does_not_collide_with_its_successor_when_it_retries(
    conn: Conn,
) -> None:
    """pending scope: the job leaves the index when it starts, and a retry
    (attempts > 0) does not bring it back, so the fail cannot hit the index."""
    first = int(
        scalar(conn, "SELECT pgqueue.enqueue('t', p_max_attempts => 3, p_dedupe_key => 'k')")
    )
    claim(conn)
    successor = enqueue_unique(conn, "k")
    assert fail(conn, first, 1, "boom") == "retrying"
    assert enqueue_unique(conn, "k") == successor


def test_replay_is_refused_while_another_job_holds_the_key(conn: Conn) -> None:
    first = enqueue_unique(conn, "k", "active")
    claim(conn)
    assert fail(conn, first, 1, "fatal", retryable=False) == "failed"
    successor = enqueue_unique(conn, "k", "active")
    assert successor != first

    with pytest.raises(psycopg.Error) as refused:
        conn.execute("SELECT pgqueue.replay(%s)", (first,))
    assert refused.value.sqlstate == WRONG_STATE
    assert "dedupe key" in str(refused.value)

    conn.execute("SELECT pgqueue.cancel(%s)", (successor,))
    assert scalar(conn, "SELECT pgqueue.replay(%s)", (first,)) == "pending"


@pytest.mark.parametrize(
    ("key", "scope", "window", "problem"),
    [
        ("", "pending", None, "dedupe_key must be 1 to 512"),
        ("x" * 513, "pending", None, "dedupe_key must be 1 to 512"),
        ("k", "forever", None, "dedupe_scope must be"),
        ("k", "window", None, "needs a positive window"),
        ("k", "window", "0", "needs a positive window"),
    ],
)
def test_invalid_dedupe_options_are_refused(
    conn: Conn, key: str, scope: str, window: str | None, problem: str
) -> None:
    with pytest.raises(psycopg.Error) as refused:
        enqueue_unique(conn, key, scope, window)
    assert refused.value.sqlstate == BAD_INPUT
    assert problem in str(refused.value)
    assert count_jobs(conn) == 0


def test_window_scope_is_refused_above_read_committed(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as tx:
        tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(psycopg.Error, match="READ COMMITTED"):
            enqueue_unique(tx, "k", "window", "1 hour")


# -- bulk -------------------------------------------------------------------------------------


def test_bulk_duplicates_collapse_to_one_job_with_ids_in_item_order(conn: Conn) -> None:
    held = enqueue_unique(conn, "held")

    ids = enqueue_many_unique(conn, [None, "a", "held", "a", None, "b", "a"])

    assert ids[2] == held
    assert ids[1] == ids[3] == ids[6]
    assert len({ids[0], ids[1], ids[4], ids[5], held}) == 5
    assert count_jobs(conn) == 5
    # each job was made from its first item
    assert job(conn, ids[1])["args"] == {"i": 1}
    assert job(conn, ids[0])["args"] == {"i": 0} and job(conn, ids[4])["args"] == {"i": 4}
    assert enqueue_many_unique(conn, ["b", "a"]) == [ids[5], ids[1]]


def test_bulk_window_scope(conn: Conn) -> None:
    ids = enqueue_many_unique(conn, ["a", "a", "b"], "window", "1 hour")
    assert ids[0] == ids[1] != ids[2]
    assert enqueue_many_unique(conn, ["b", "a"], "window", "1 hour") == [ids[2], ids[0]]


# -- concurrency ------------------------------------------------------------------------------


def _race(db_dsn: str, threads: int, work: Callable[[Conn, int], Any]) -> list[Any]:
    """Run ``work(conn, index)`` in ``threads`` threads released together, each
    on its own connection inside its own transaction; return the results."""
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            with psycopg.connect(db_dsn) as tx:  # one transaction, committed on exit
                barrier.wait(timeout=30)
                results[index] = work(tx, index)
                time.sleep(random.uniform(0, 0.02))  # hold the transaction open a little
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in pool), "a thread hung"
    assert errors == []
    return results


@pytest.mark.parametrize(
    ("scope", "window"), [("pending", None), ("active", None), ("window", "1 hour")]
)
def test_concurrent_duplicate_enqueues_yield_one_job(
    db_dsn: str, conn: Conn, scope: str, window: str | None
) -> None:
    for round_ in range(5):
        key = f"k{round_}"
        ids = _race(db_dsn, 12, lambda tx, _i, key=key: enqueue_unique(tx, key, scope, window))
        assert len(set(ids)) == 1, ids
        assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE dedupe_key = %s", (key,)) == 1


@pytest.mark.parametrize(
    ("scope", "window"), [("pending", None), ("active", None), ("window", "1 hour")]
)
def test_concurrent_bulk_enqueues_with_overlapping_keys_yield_one_job_per_key(
    db_dsn: str, conn: Conn, scope: str, window: str | None
) -> None:
    keys = [f"k{i}" for i in range(30)]

    def bulk(tx: Conn, index: int) -> dict[str, int]:
        mine = [*random.Random(index).sample(keys, 20), None, None]  # any order, overlapping
        ids = enqueue_many_unique(tx, mine, scope, window)
        return {k: i for k, i in zip(mine, ids, strict=True) if k is not None}

    results = _race(db_dsn, 10, bulk)

    by_key: dict[str, set[int]] = {}
    for result in results:
        for key, job_id in result.items():
            by_key.setdefault(key, set()).add(job_id)
    assert all(len(ids) == 1 for ids in by_key.values()), by_key
    counts = rows(
        conn,
        "SELECT dedupe_key, count(*) AS n FROM pgqueue.jobs WHERE dedupe_key IS NOT NULL"
        " GROUP BY dedupe_key",
    )
    assert {r["dedupe_key"]: r["n"] for r in counts} == dict.fromkeys(by_key, 1)
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE dedupe_key IS NULL") == 20


def test_a_duplicate_waits_for_the_first_transaction_and_takes_over_if_it_rolls_back(
    db_dsn: str, conn: Conn
) -> None:
    with psycopg.connect(db_dsn) as first:
        enqueue_unique(first, "k")  # uncommitted
        result: list[int] = []
        waiter = threading.Thread(
            target=lambda: result.append(
                enqueue_unique(psycopg.connect(db_dsn, autocommit=True), "k")
            )
        )
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive(), "the duplicate did not wait for the first insert"
        first.rollback()
        waiter.join(timeout=10)
    assert len(result) == 1
    assert rows(conn, "SELECT id FROM pgqueue.jobs") == [{"id": result[0]}]


# -- through the library ----------------------------------------------------------------------


async def test_library_dedupe_key_single_bulk_and_callable(queue: pgqueue.Queue) -> None:
    @queue.task
    async def resize(ctx: pgqueue.JobContext, image_id: int) -> None: ...

    first = await resize.options(dedupe_key="img-1").enqueue(image_id=1)
    assert await queue.enqueue(resize, {"image_id": 1}, dedupe_key="img-1") == first
    assert resize.options(dedupe_key="img-1").enqueue_sync(image_id=1) == first

    ids = await queue.enqueue_many(
        resize,
        [{"image_id": i} for i in (1, 2, 2, 3)],
        dedupe_key=lambda args: f"img-{args['image_id']}",
        dedupe_scope="active",
    )
    assert ids[0] == first  # the holder, whatever the scope it holds the key for
    assert ids[1] == ids[2] and len(set(ids)) == 3

    windowed = await queue.enqueue(
        resize, {"image_id": 9}, dedupe_key="w", dedupe_scope=timedelta(minutes=5)
    )
    assert await queue.enqueue(resize, {"image_id": 9}, dedupe_key="w", dedupe_scope=300) == (
        windowed
    )
    job_row = await queue.get_job(windowed)
    assert job_row is not None

    none_key = await queue.enqueue_many(resize, [{"image_id": 5}], dedupe_key=lambda a: None)
    assert len(none_key) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dedupe_key": ""}, "dedupe_key must be 1 to 512"),
        ({"dedupe_key": 5}, "dedupe_key must be a string"),
        ({"dedupe_key": "k", "dedupe_scope": "forever"}, "dedupe_scope must be"),
        ({"dedupe_key": "k", "dedupe_scope": 0}, "must be positive"),
    ],
)
async def test_library_refuses_bad_dedupe_options_before_writing(
    queue: pgqueue.Queue, conn: Conn, options: dict[str, Any], message: str
) -> None:
    @queue.task
    async def t(ctx: pgqueue.JobContext) -> None: ...

    with pytest.raises(pgqueue.InvalidJobError, match=message):
        await queue.enqueue(t, {}, **options)
    assert count_jobs(conn) == 0


async def test_batches_refuse_a_dedupe_key(queue: pgqueue.Queue) -> None:
    @queue.task
    async def t(ctx: pgqueue.JobContext, x: int) -> None: ...

    with pytest.raises(pgqueue.InvalidJobError, match="batch"):
        await queue.enqueue_batch(t, [{"x": 1}], dedupe_key="k")
