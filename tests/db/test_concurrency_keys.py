"""Concurrency keys: at most ``concurrency_limit`` running jobs per
``concurrency_key``, exact under concurrent claimers, FIFO within a key, and a
saturated key never blocks other keys or jobs without a key."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

import pgqueue

from ._helpers import (
    BAD_INPUT,
    Conn,
    age_heartbeat,
    cancel,
    claim,
    complete,
    fail,
    release,
    replay,
    rescue,
    rows,
    scalar,
)

SHARED_DATABASE = True  # one database per module, emptied before each test (conftest.py)


def enqueue_keyed(
    conn: Conn,
    key: str | None,
    limit: int = 1,
    *,
    task: str = "t",
    queue: str = "default",
    priority: int = 0,
) -> int:
    return int(
        scalar(
            conn,
            "SELECT pgqueue.enqueue(%s, p_queue => %s, p_priority => %s,"
            " p_concurrency_key => %s, p_concurrency_limit => %s)",
            (task, queue, priority, key, limit),
        )
    )


def enqueue_many_keyed(conn: Conn, keys: list[str | None], limit: int = 1) -> list[int]:
    n = len(keys)
    found = rows(
        conn,
        "SELECT id FROM pgqueue.enqueue_many(%s::text[], %s::jsonb[], %s::text[], %s::int[],"
        " %s::timestamptz[], %s::int[], %s::interval[], %s::text[], %s::jsonb[],"
        " p_concurrency_keys => %s::text[], p_concurrency_limits => %s::int[]) AS id",
        (
            ["t"] * n,
            ["{}"] * n,
            ["default"] * n,
            [0] * n,
            [None] * n,
            [1] * n,
            [None] * n,
            [None] * n,
            ["{}"] * n,
            keys,
            [limit] * n,
        ),
    )
    return [r["id"] for r in found]


def running_per_key(conn: Conn) -> dict[str, int]:
    return dict(
        conn.execute(
            "SELECT concurrency_key, count(*) FROM pgqueue.jobs"
            " WHERE status = 'running' AND concurrency_key IS NOT NULL GROUP BY 1"
        ).fetchall()
    )


def claimed_ids(conn: Conn, limit: int = 10, worker: str = "w1") -> list[int]:
    return [r["id"] for r in claim(conn, worker, limit=limit)]


# -- single claimer ---------------------------------------------------------------------------


def test_limit_one_claims_one_job_per_key_in_fifo_order(conn: Conn) -> None:
    a = [enqueue_keyed(conn, "a") for _ in range(3)]
    b = [enqueue_keyed(conn, "b") for _ in range(2)]
    plain = enqueue_keyed(conn, None)
    assert sorted(claimed_ids(conn)) == sorted([a[0], b[0], plain])
    assert claimed_ids(conn) == []  # both keys are full
    complete(conn, a[0], 1)
    assert claimed_ids(conn) == [a[1]]  # the next of the key, in order
    complete(conn, a[1], 1)
    complete(conn, b[0], 1)
    assert sorted(claimed_ids(conn)) == [a[2], b[1]]


def test_limit_above_one(conn: Conn) -> None:
    ids = enqueue_many_keyed(conn, ["k"] * 7, limit=3)
    assert claimed_ids(conn, limit=2) == ids[:2]
    assert claimed_ids(conn, limit=10) == ids[2:3]
    assert claimed_ids(conn) == []
    complete(conn, ids[0], 1)
    complete(conn, ids[1], 1)
    assert claimed_ids(conn) == ids[3:5]
    assert running_per_key(conn) == {"k": 3}


def test_priority_first_then_fifo_within_a_key(conn: Conn) -> None:
    low = enqueue_keyed(conn, "k", priority=0)
    high = enqueue_keyed(conn, "k", priority=5)
    low2 = enqueue_keyed(conn, "k", priority=0)
    order = []
    for _ in range(3):
        (got,) = claimed_ids(conn)
        order.append(got)
        complete(conn, got, 1)
    assert order == [high, low, low2]


def test_keyed_and_plain_jobs_share_the_claim_order(conn: Conn) -> None:
    plain_low = enqueue_keyed(conn, None, priority=0)
    keyed_high = enqueue_keyed(conn, "k", priority=9)
    plain_high = enqueue_keyed(conn, None, priority=5)
    assert claimed_ids(conn, limit=1) == [keyed_high]
    assert claimed_ids(conn, limit=1) == [plain_high]
    assert claimed_ids(conn, limit=1) == [plain_low]


def test_with_every_key_full_plain_jobs_keep_the_claim_order_across_queues(conn: Conn) -> None:
    """No key has a free slot, so the claim takes its plain-jobs-only statement
    (revision 0008): it must take the same jobs in the same order as the full
    one, across queues and priorities, and keyed jobs come back with a slot."""
    k1, k2 = enqueue_keyed(conn, "k"), enqueue_keyed(conn, "k", priority=9)
    (held,) = [r["id"] for r in claim(conn, queues=["default"], limit=1)]
    assert held == k2  # the key is now full
    p_low = enqueue_keyed(conn, None, queue="q1", priority=0)
    p_high = enqueue_keyed(conn, None, queue="q2", priority=7)
    p_mid = enqueue_keyed(conn, None, queue="q1", priority=3)
    p_mid2 = enqueue_keyed(conn, None, queue="q2", priority=3)
    queues = ["default", "q1", "q2"]
    got = [r["id"] for r in claim(conn, queues=queues, limit=3)]
    assert sorted(got) == sorted([p_high, p_mid, p_mid2])  # the best three; p_low waits
    complete(conn, held, 1)
    # a free slot again: the full statement, keyed and plain jobs together
    assert sorted(r["id"] for r in claim(conn, queues=queues, limit=5)) == sorted([k1, p_low])


def test_key_is_shared_across_queues_and_tasks(conn: Conn) -> None:
    first = enqueue_keyed(conn, "customer-1", queue="q1", task="a")
    enqueue_keyed(conn, "customer-1", queue="q2", task="b")
    other = enqueue_keyed(conn, "customer-2", queue="q2", task="b")
    got = [r["id"] for r in claim(conn, "w", ("q1", "q2"), limit=10)]
    assert sorted(got) == [first, other]


@pytest.mark.parametrize("end", ["complete", "fail", "cancel", "rescue", "release"])
def test_every_way_out_of_running_frees_the_slot(conn: Conn, end: str) -> None:
    first, second = enqueue_many_keyed(conn, ["k", "k"])
    assert claimed_ids(conn) == [first]
    assert claimed_ids(conn) == []
    if end == "complete":
        complete(conn, first, 1)
    elif end == "fail":
        fail(conn, first, 1, retryable=False)
    elif end == "cancel":
        assert cancel(conn, first) == "cancelled"
    elif end == "rescue":
        age_heartbeat(conn, first)
        assert rescue(conn) == {first: "zombie"}
    else:
        release(conn, first, 1)
    got = claimed_ids(conn)
    # the slot is free; a released job is due again at release time, so the
    # older second job comes first
    assert got == [second]


def test_replayed_job_waits_for_a_slot(conn: Conn) -> None:
    first, second = enqueue_many_keyed(conn, ["k", "k"])
    claimed_ids(conn)
    fail(conn, first, 1, retryable=False)
    assert claimed_ids(conn) == [second]
    assert replay(conn, first) == "pending"
    assert claimed_ids(conn) == []  # second holds the only slot
    complete(conn, second, 1)
    assert claimed_ids(conn) == [first]


def test_invalid_keys_and_limits_are_refused(conn: Conn) -> None:
    for key, limit in (("", 1), ("x" * 513, 1), ("k", 0), ("k", None)):
        with pytest.raises(psycopg.Error) as info:
            enqueue_many_keyed(conn, [key], limit=limit)  # type: ignore[arg-type]
        assert info.value.sqlstate == BAD_INPUT
        conn.rollback()
    with pytest.raises(psycopg.errors.CheckViolation):  # a key without a limit
        conn.execute("INSERT INTO pgqueue.jobs (task, concurrency_key) VALUES ('t', 'k')")
    conn.rollback()


def test_keyed_claims_need_read_committed(db_dsn: str, conn: Conn) -> None:
    enqueue_keyed(conn, "k")
    conn.commit()
    with psycopg.connect(db_dsn) as tx:
        tx.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with pytest.raises(psycopg.Error) as info:
            claimed_ids(tx)
        assert info.value.sqlstate == "25000"


def test_saturated_key_backlog_does_not_block_others_and_claim_stays_fast(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO pgqueue.jobs (task, concurrency_key, concurrency_limit, run_at)"
        " SELECT 't', 'big', 1, now() - interval '1 hour' FROM generate_series(1, 50000)"
    )
    conn.execute("ANALYZE pgqueue.jobs")
    (held,) = claimed_ids(conn, limit=1)  # the big key is now full
    later = [enqueue_keyed(conn, f"small-{i}") for i in range(5)]
    plain = [enqueue_keyed(conn, None) for _ in range(5)]
    started = time.perf_counter()
    got = claimed_ids(conn, limit=20)
    elapsed = time.perf_counter() - started
    assert sorted(got) == sorted(later + plain)
    assert held not in got
    assert elapsed < 0.5, f"claim took {elapsed * 1000:.1f} ms"
    # and with nothing claimable left, a claim is still quick
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        assert claimed_ids(conn, limit=10) == []
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.05, timings


def test_claim_plans_use_index_scans_only(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO pgqueue.jobs (task, concurrency_key, concurrency_limit)"
        " SELECT 't', 'k' || (i % 20), 1 FROM generate_series(1, 20000) AS i"
    )
    conn.execute("INSERT INTO pgqueue.jobs (task) SELECT 't' FROM generate_series(1, 20000)")
    conn.execute("ANALYZE pgqueue.jobs")
    conn.execute("LOAD 'auto_explain'")
    conn.execute("SET auto_explain.log_min_duration = 0")
    conn.execute("SET auto_explain.log_nested_statements = on")
    conn.execute("SET client_min_messages = log")
    conn.execute("SET auto_explain.log_level = notice")
    plans: list[str] = []
    conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
    conn.execute("SET client_min_messages = notice")
    assert len(claimed_ids(conn, limit=10)) == 10
    text = "\n".join(plans)
    assert "Seq Scan on jobs" not in text, text
    assert "jobs_claim_keyed_idx" in text, text
    assert "jobs_claim_idx" in text, text


# -- concurrent claimers ----------------------------------------------------------------------


def test_concurrent_claimers_never_exceed_the_limit(db_dsn: str, conn: Conn) -> None:
    limits = {"one": 1, "two": 2, "three": 3}
    for key, limit in limits.items():
        enqueue_many_keyed(conn, [key] * 40, limit=limit)
    enqueue_many_keyed(conn, [None] * 40)
    conn.commit()
    stop = threading.Event()
    errors: list[BaseException] = []
    peaks: dict[str, int] = {}
    done = [0]
    lock = threading.Lock()

    def worker(index: int) -> None:
        try:
            with psycopg.connect(db_dsn, autocommit=True) as tx:
                while not stop.is_set():
                    got = claim(tx, f"w{index}", limit=3)
                    if not got:
                        if (
                            scalar(
                                tx,
                                "SELECT count(*) FROM pgqueue.jobs"
                                " WHERE status IN ('pending', 'running')",
                            )
                            == 0
                        ):
                            return
                        time.sleep(0.002)
                        continue
                    seen = running_per_key(tx)
                    with lock:
                        for key, n in seen.items():
                            peaks[key] = max(peaks.get(key, 0), n)
                    time.sleep(0.003)
                    for j in got:
                        complete(tx, j["id"], j["attempts"])
                    with lock:
                        done[0] += len(got)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stop.set()
    assert not any(t.is_alive() for t in threads), "a claimer hung"
    assert errors == []
    assert done[0] == 160
    for key, limit in limits.items():
        assert 1 <= peaks.get(key, 0) <= limit, (key, peaks)
    # attempt history: per key, no two attempts overlap beyond the limit
    for key, limit in limits.items():
        spans: list[tuple[Any, Any]] = conn.execute(
            "SELECT a.started_at, a.ended_at FROM pgqueue.attempts a"
            " JOIN pgqueue.jobs j ON j.id = a.job_id WHERE j.concurrency_key = %s",
            (key,),
        ).fetchall()
        assert len(spans) == 40
        events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
        running = peak = 0
        for _, delta in events:
            running += delta
            peak = max(peak, running)
        assert peak <= limit, (key, peak)


# -- library ----------------------------------------------------------------------------------


async def test_library_enqueue_options(queue: pgqueue.Queue, conn: Conn) -> None:
    @queue.task(name="per_customer")
    def per_customer(ctx: pgqueue.JobContext, customer: str, n: int) -> None:
        return None

    first = await per_customer.options(
        concurrency_key=lambda args: f"customer:{args['customer']}"
    ).enqueue(customer="c1", n=1)
    ids = await queue.enqueue_many(
        per_customer,
        [{"customer": "c2", "n": i} for i in range(3)],
        concurrency_key=lambda args: f"customer:{args['customer']}",
        concurrency_limit=2,
    )
    plain = await per_customer.enqueue(customer="c3", n=1)
    found = {
        r["id"]: (r["concurrency_key"], r["concurrency_limit"])
        for r in rows(conn, "SELECT id, concurrency_key, concurrency_limit FROM pgqueue.jobs")
    }
    assert found[first] == ("customer:c1", 1)
    assert [found[i] for i in ids] == [("customer:c2", 2)] * 3
    assert found[plain] == (None, None)
    for bad in (
        {"concurrency_key": "k", "concurrency_limit": 0},
        {"concurrency_key": "k", "concurrency_limit": True},
        {"concurrency_key": 3},
        {"concurrency_key": ""},
    ):
        with pytest.raises(pgqueue.InvalidJobError):
            await per_customer.options(**bad).enqueue(customer="c", n=1)


@pytest.mark.parametrize("outcome", ["completes", "fails"])
async def test_a_keyed_job_that_stops_running_wakes_workers_for_its_key(
    queue: pgqueue.Queue, outcome: str
) -> None:
    """Ten jobs on one key at limit 1, one worker with 8 slots that would
    otherwise only look again after a 30 s poll: each end of a keyed job
    (success or failure) announces the freed slot, so the key's backlog
    drains without waiting for a poll."""
    import asyncio

    from tests.db.test_worker_inprocess import running_worker

    ended: list[int] = []

    @queue.task(max_attempts=1)
    async def keyed(ctx: pgqueue.JobContext, n: int) -> int:
        await asyncio.sleep(0.05)
        ended.append(n)
        if outcome == "fails":
            raise ValueError("the key's slot frees all the same")
        return n

    ids = await queue.enqueue_many(
        keyed, [{"n": n} for n in range(10)], concurrency_key="customer-1"
    )
    async with running_worker(queue, concurrency=8, poll_interval=30.0):
        for job_id in ids:
            final = await asyncio.wait_for(_ended(queue, job_id), timeout=15)
            assert final.status.is_terminal
    assert ended == list(range(10))  # FIFO within the key, one at a time


async def _ended(queue: pgqueue.Queue, job_id: int) -> pgqueue.Job:
    import asyncio

    while True:
        job = await queue.get_job(job_id)
        assert job is not None
        if job.status.is_terminal:
            return job
        await asyncio.sleep(0.02)
