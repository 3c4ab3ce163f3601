"""Invariant 4 under concurrency and under random sequences of operations.

1. Threads with their own connections claim and finish children of the same
   batches at once (complete_many, fail with retries, cancel of single
   children, rescue of abandoned leases); afterwards every batch's counters
   equal a recount, every batch announced its final state exactly once and
   got exactly one on_complete job, and no statement died of a deadlock or a
   CHECK violation.
2. A hypothesis state machine drives every batch-related transition in random
   order against the real database and checks the invariants after each step.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, ClassVar

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg.types.json import Jsonb

from ._helpers import Conn, rows, scalar

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
ACTIVE = ("pending", "retrying", "running")
UNSUCCESSFUL = ("failed", "timeout", "zombie", "dead_letter", "cancelled")
FINISHED_BY_ITSELF = ("completed", "completed_with_errors")
REFUSALS = {"PQ001", "PQ002", "PQ003"}  # losing a race is fine; anything else is a failure
_EMPTY = (
    "TRUNCATE pgqueue.jobs, pgqueue.batches, pgqueue.attempts, pgqueue.progress_history,"
    " pgqueue.queues RESTART IDENTITY CASCADE"
)


@pytest.fixture(autouse=True)
def _empty_batches(db_dsn: str) -> None:
    """conftest's reset empties jobs but keeps batch rows: start from nothing."""
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        admin.execute(_EMPTY)


def connect(dsn: str) -> Conn:
    return psycopg.connect(dsn, autocommit=True)


def sql_batch(
    conn: Conn,
    n: int,
    *,
    queue: str,
    max_attempts: int,
    on_complete: dict[str, Any] | None,
) -> int:
    return int(
        scalar(
            conn,
            "SELECT pgqueue.enqueue_batch(%s::text[], %s::jsonb[], %s::text[], %s::int[],"
            " %s::timestamptz[], %s::int[], %s::interval[], %s::jsonb[], %s::text, %s::jsonb,"
            " %s::jsonb)",
            (
                ["t"] * n,
                [Jsonb({"i": i}) for i in range(n)],
                [queue] * n,
                [0] * n,
                [None] * n,
                [max_attempts] * n,
                [None] * n,
                [Jsonb({})] * n,
                "owner-1",
                Jsonb({}),
                None if on_complete is None else Jsonb(on_complete),
            ),
        )
    )


def counters_and_recounts(conn: Conn) -> dict[int, tuple[dict[str, int], dict[str, int]]]:
    """For every batch: (its counters, a recount of its children by state)."""
    out: dict[int, tuple[dict[str, int], dict[str, int]]] = {}
    for b in rows(conn, "SELECT * FROM pgqueue.batches ORDER BY id"):
        out[b["id"]] = ({c: b[c] for c in COUNTERS}, dict.fromkeys(COUNTERS, 0))
        assert b["total"] == sum(b[c] for c in COUNTERS)
    for batch_id, status, n in conn.execute(
        "SELECT batch_id, status::text, count(*) FROM pgqueue.jobs"
        " WHERE batch_id IS NOT NULL GROUP BY batch_id, status"
    ).fetchall():
        out[batch_id][1][status] = int(n)
    return out


def on_complete_counts(conn: Conn) -> Counter[int]:
    return Counter(
        int(r[0])
        for r in conn.execute(
            "SELECT (args ->> 'batch_id')::bigint FROM pgqueue.jobs"
            " WHERE batch_id IS NULL AND args ? 'batch_status'"
        ).fetchall()
    )


# -- threads --------------------------------------------------------------------------------------


class Outcomes:
    """Thread-safe tally of what the threads did, and of unexpected errors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: Counter[str] = Counter()
        self.errors: list[BaseException] = []

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.done[what] += n

    def error(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(exc)


def run_call(out: Outcomes, what: str, fn: Any, *args: Any) -> Any:
    try:
        result = fn(*args)
    except psycopg.Error as exc:
        if exc.sqlstate in REFUSALS:
            out.count(f"refused:{exc.sqlstate}")
            return None
        out.error(exc)  # deadlocks (40P01) and CHECK violations (23514) land here
        return None
    out.count(what)
    return result


def worker_loop(dsn: str, queue: str, seed: int, stop: threading.Event, out: Outcomes) -> None:
    rnd = random.Random(seed)
    try:
        with connect(dsn) as c:
            while not stop.is_set():
                leases = c.execute(
                    "SELECT id, attempts FROM pgqueue.claim(%s, %s, %s)",
                    (f"w{seed}", [queue], rnd.randint(1, 6)),
                ).fetchall()
                if not leases:
                    time.sleep(0.005)
                    continue
                to_complete = []
                for job_id, attempt in leases:
                    r = rnd.random()
                    if r < 0.55:
                        to_complete.append((job_id, attempt))
                    elif r < 0.75:
                        run_call(
                            out,
                            "fail-retryable",
                            c.execute,
                            "SELECT pgqueue.fail(%s, %s, 'transient', true, false, '0')",
                            (job_id, attempt),
                        )
                    elif r < 0.83:
                        run_call(
                            out,
                            "fail-final",
                            c.execute,
                            "SELECT pgqueue.fail(%s, %s, 'bad input', false)",
                            (job_id, attempt),
                        )
                    elif r < 0.90:
                        run_call(out, "cancel", c.execute, "SELECT pgqueue.cancel(%s)", (job_id,))
                    else:  # the worker "dies": its heartbeat goes stale, a rescuer takes over
                        c.execute(
                            "UPDATE pgqueue.jobs"
                            " SET heartbeat_at = heartbeat_at - interval '1 hour'"
                            " WHERE id = %s AND attempts = %s AND status = 'running'",
                            (job_id, attempt),
                        )
                        out.count("abandoned")
                if to_complete:
                    rnd.shuffle(to_complete)
                    done = run_call(
                        out,
                        "complete_many",
                        c.execute,
                        "SELECT id FROM pgqueue.complete_many(%s::bigint[], %s::int[],"
                        " %s::jsonb[])",
                        (
                            [i for i, _ in to_complete],
                            [a for _, a in to_complete],
                            [Jsonb({"by": seed}) for _ in to_complete],
                        ),
                    )
                    if done is not None:
                        out.count("completed", len(done.fetchall()))
    except BaseException as exc:
        out.error(exc)


def rescuer_loop(dsn: str, stop: threading.Event, out: Outcomes) -> None:
    try:
        with connect(dsn) as c:
            while not stop.is_set():
                found = run_call(
                    out, "rescue-pass", c.execute, "SELECT * FROM pgqueue.rescue('1 minute')"
                )
                if found is not None:
                    out.count("rescued", len(found.fetchall()))
                time.sleep(0.01)
    except BaseException as exc:
        out.error(exc)


def operator_loop(dsn: str, seed: int, stop: threading.Event, out: Outcomes) -> None:
    """Cancels random unfinished children now and then (racing the workers)."""
    rnd = random.Random(seed)
    try:
        with connect(dsn) as c:
            while not stop.is_set():
                ids = [
                    r[0]
                    for r in c.execute(
                        "SELECT id FROM pgqueue.jobs WHERE batch_id IS NOT NULL"
                        " AND status IN ('pending', 'retrying', 'running')"
                    ).fetchall()
                ]
                if ids:
                    victim = rnd.choice(ids)
                    run_call(
                        out, "operator-cancel", c.execute, "SELECT pgqueue.cancel(%s)", (victim,)
                    )
                time.sleep(0.02)
    except BaseException as exc:
        out.error(exc)


@pytest.fixture
def batch_listener(db_dsn: str) -> Iterator[Conn]:
    with connect(db_dsn) as c:
        c.execute("LISTEN pgqueue_batch")
        yield c


def drain_notes(listener: Conn) -> list[dict[str, Any]]:
    return [json.loads(n.payload) for n in listener.notifies(timeout=0.3)]


def run_threads(
    db_dsn: str,
    conn: Conn,
    queue: str,
    batch_ids: list[int],
    *,
    threads: int = 8,
    cancel_batch_after: float | None = None,
) -> Outcomes:
    out = Outcomes()
    stop = threading.Event()
    pool = [
        threading.Thread(target=worker_loop, args=(db_dsn, queue, seed, stop, out))
        for seed in range(threads)
    ]
    pool.append(threading.Thread(target=rescuer_loop, args=(db_dsn, stop, out)))
    pool.append(threading.Thread(target=operator_loop, args=(db_dsn, 99, stop, out)))
    for t in pool:
        t.start()
    deadline = time.monotonic() + 30
    cancelled = False
    started = time.monotonic()
    try:
        while time.monotonic() < deadline and not out.errors:
            if (
                cancel_batch_after is not None
                and not cancelled
                and time.monotonic() - started > cancel_batch_after
            ):
                run_call(
                    out,
                    "cancel-batch",
                    conn.execute,
                    "SELECT pgqueue.cancel_batch(%s)",
                    (batch_ids[0],),
                )
                cancelled = True
            unfinished = scalar(
                conn,
                "SELECT count(*) FROM pgqueue.batches WHERE completed_at IS NULL AND id = ANY(%s)",
                (batch_ids,),
            )
            if unfinished == 0:
                break
            time.sleep(0.02)
    finally:
        stop.set()
        for t in pool:
            t.join(10)
    assert out.errors == [], out.errors[:3]
    return out


def test_batch_counters_equal_recount_after_eight_threads_finish_three_batches(
    db_dsn: str, conn: Conn, batch_listener: Conn
) -> None:
    queue = "busy"
    batch_ids = [
        sql_batch(
            conn, 80, queue=queue, max_attempts=3, on_complete={"task": "done", "args": {"n": n}}
        )
        for n in range(3)
    ]
    out = run_threads(db_dsn, conn, queue, batch_ids)

    for batch_id, (counters, recount) in counters_and_recounts(conn).items():
        assert counters == recount, f"batch {batch_id}"
    batches = {b["id"]: b for b in rows(conn, "SELECT * FROM pgqueue.batches")}
    assert all(batches[b]["status"] in FINISHED_BY_ITSELF for b in batch_ids), batches
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM pgqueue.jobs"
            " WHERE status IN ('pending', 'retrying', 'running') AND batch_id IS NOT NULL",
        )
        == 0
    )

    # each batch announced a final status exactly once, and got one on_complete job
    notes = drain_notes(batch_listener)
    for batch_id in batch_ids:
        finals = [
            n["status"] for n in notes if n["id"] == batch_id and n["status"] in FINISHED_BY_ITSELF
        ]
        assert finals == [batches[batch_id]["status"]], (batch_id, finals)
    assert on_complete_counts(conn) == dict.fromkeys(batch_ids, 1)
    for batch_id in batch_ids:
        follow_up = rows(
            conn,
            "SELECT * FROM pgqueue.jobs WHERE id = %s",
            (batches[batch_id]["on_complete_job_id"],),
        )[0]
        assert follow_up["args"]["batch_id"] == batch_id
        assert follow_up["args"]["batch_status"] == batches[batch_id]["status"]
        assert follow_up["owner"] == "owner-1"

    # no child completed twice, and the mix of operations really happened
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM (SELECT job_id FROM pgqueue.attempts"
            " WHERE outcome = 'completed' GROUP BY job_id HAVING count(*) > 1) d",
        )
        == 0
    )
    for what in ("complete_many", "fail-retryable", "fail-final", "cancel", "abandoned", "rescued"):
        assert out.done[what] > 0, (what, out.done)


def test_cancel_batch_during_a_concurrent_drain_ends_it_cancelled_once_without_on_complete(
    db_dsn: str, conn: Conn, batch_listener: Conn
) -> None:
    queue = "busy"
    batch_ids = [
        sql_batch(conn, 150, queue=queue, max_attempts=3, on_complete={"task": "done"})
        for _ in range(2)
    ]
    run_threads(db_dsn, conn, queue, batch_ids, cancel_batch_after=0.1)

    for batch_id, (counters, recount) in counters_and_recounts(conn).items():
        assert counters == recount, f"batch {batch_id}"
    victim, other = (
        rows(conn, "SELECT * FROM pgqueue.batches WHERE id = %s", (b,))[0] for b in batch_ids
    )
    assert victim["status"] == "cancelled", "the batch finished before it was cancelled"
    assert other["status"] in FINISHED_BY_ITSELF
    assert victim["on_complete_job_id"] is None
    assert on_complete_counts(conn) == {other["id"]: 1}
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM pgqueue.jobs"
            " WHERE batch_id = %s AND status IN ('pending', 'retrying', 'running')",
            (victim["id"],),
        )
        == 0
    )
    notes = drain_notes(batch_listener)
    finals = [
        n["status"]
        for n in notes
        if n["id"] == victim["id"] and n["status"] in ("cancelled", *FINISHED_BY_ITSELF)
    ]
    assert finals == ["cancelled"]


# -- hypothesis state machine ---------------------------------------------------------------------


class BatchMachine(RuleBasedStateMachine):
    """Random sequences of batch operations on one database; invariant 4 after every step."""

    dsn: ClassVar[str] = ""
    queue = "hq"

    def __init__(self) -> None:
        super().__init__()
        self.conn = connect(self.dsn)
        self.conn.execute(_EMPTY)
        self.on_complete: dict[int, bool] = {}  # batch id -> has an on_complete
        self.final: dict[int, tuple[str, datetime]] = {}  # batch id -> (status, completed_at)
        self.leases: list[tuple[int, int]] = []

    def teardown(self) -> None:
        self.conn.close()

    # helpers

    def job_state(self, job_id: int) -> dict[str, Any]:
        return rows(
            self.conn,
            "SELECT j.status::text, j.attempts, j.max_attempts, j.batch_id,"
            " b.completed_at IS NOT NULL AS batch_final"
            " FROM pgqueue.jobs j JOIN pgqueue.batches b ON b.id = j.batch_id WHERE j.id = %s",
            (job_id,),
        )[0]

    def batch_final(self, batch_id: int) -> bool:
        return bool(
            scalar(
                self.conn,
                "SELECT completed_at IS NOT NULL FROM pgqueue.batches WHERE id = %s",
                (batch_id,),
            )
        )

    def children(self) -> list[int]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM pgqueue.jobs WHERE batch_id IS NOT NULL ORDER BY id"
            ).fetchall()
        ]

    def call(self, sql: str, params: tuple[Any, ...], *, allowed: bool) -> Any:
        """Run a transition that must succeed iff ``allowed``; a refusal must be PQ002/PQ003.
        CheckViolation (or any other error) propagates and fails the example."""
        try:
            result = scalar(self.conn, sql, params)
        except psycopg.Error as exc:
            if exc.sqlstate not in ("PQ002", "PQ003"):
                raise
            assert not allowed, f"{sql} {params} refused: {exc}"
            return None
        assert allowed, f"{sql} {params} was applied but should have been refused"
        return result

    # rules

    @rule(n=st.integers(1, 5), max_attempts=st.integers(1, 3), with_on_complete=st.booleans())
    def enqueue_batch(self, n: int, max_attempts: int, with_on_complete: bool) -> None:
        on_complete = {"task": "after", "args": {"k": 1}} if with_on_complete else None
        batch_id = sql_batch(
            self.conn, n, queue=self.queue, max_attempts=max_attempts, on_complete=on_complete
        )
        self.on_complete[batch_id] = with_on_complete

    @precondition(lambda self: self.on_complete)
    @rule(limit=st.integers(1, 4), tiny_lease=st.booleans())
    def claim(self, limit: int, tiny_lease: bool) -> None:
        claimed = rows(
            self.conn,
            "SELECT c.id, c.attempts, b.paused, b.completed_at"
            "  FROM pgqueue.claim('hw', ARRAY[%s], %s, %s::interval) c"
            "  JOIN pgqueue.batches b ON b.id = c.batch_id",
            (self.queue, limit, "1 millisecond" if tiny_lease else "1 hour"),
        )
        assert len(claimed) <= limit
        for r in claimed:
            assert not r["paused"], "a child of a paused batch was claimed"
            assert r["completed_at"] is None, "a child of a finished batch was claimed"
            self.leases.append((r["id"], r["attempts"]))

    @precondition(lambda self: self.leases)
    @rule()
    def complete_many_held(self) -> None:
        """A worker flushing all its results at once: stale leases are left out, not applied."""
        leases, self.leases = self.leases, []
        held = {
            (i, a)
            for i, a in leases
            if (s := self.job_state(i))["status"] == "running" and s["attempts"] == a
        }
        done = self.conn.execute(
            "SELECT id, attempt FROM pgqueue.complete_many(%s::bigint[], %s::int[], %s::jsonb[])",
            ([i for i, _ in leases], [a for _, a in leases], [Jsonb(i) for i, _ in leases]),
        ).fetchall()
        assert set(done) == held

    def _take_lease(self, data: st.DataObject) -> tuple[int, int, bool]:
        lease = data.draw(st.sampled_from(self.leases))
        self.leases.remove(lease)
        s = self.job_state(lease[0])
        return lease[0], lease[1], s["status"] == "running" and s["attempts"] == lease[1]

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        job_id, attempt, held = self._take_lease(data)
        self.call("SELECT pgqueue.complete(%s, %s, '1')", (job_id, attempt), allowed=held)

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), retryable=st.booleans())
    def fail(self, data: st.DataObject, retryable: bool) -> None:
        job_id, attempt, held = self._take_lease(data)
        status = self.call(
            "SELECT pgqueue.fail(%s, %s, 'err', %s, false, '0')",
            (job_id, attempt, retryable),
            allowed=held,
        )
        if status is not None:
            assert status in ("retrying", "failed", "dead_letter")

    @precondition(lambda self: self.on_complete)
    @rule(data=st.data())
    def cancel_child(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.children()))
        allowed = self.job_state(job_id)["status"] in ACTIVE
        self.call("SELECT pgqueue.cancel(%s)", (job_id,), allowed=allowed)

    @precondition(lambda self: self.on_complete)
    @rule(data=st.data())
    def replay_child(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.children()))
        s = self.job_state(job_id)
        allowed = s["status"] in UNSUCCESSFUL and not s["batch_final"]
        self.call("SELECT pgqueue.replay(%s)", (job_id,), allowed=allowed)

    @precondition(lambda self: self.on_complete)
    @rule(data=st.data(), action=st.sampled_from(["pause_batch", "resume_batch", "cancel_batch"]))
    def batch_action(self, data: st.DataObject, action: str) -> None:
        batch_id = data.draw(st.sampled_from(sorted(self.on_complete)))
        allowed = not self.batch_final(batch_id)
        status = self.call(f"SELECT pgqueue.{action}(%s)", (batch_id,), allowed=allowed)
        if action == "pause_batch" and status is not None:
            assert status == "paused"

    @rule()
    def rescue(self) -> None:
        rescued = self.conn.execute(
            "SELECT id, status FROM pgqueue.rescue('1 millisecond')"
        ).fetchall()
        for job_id, status in rescued:
            assert status in ("retrying", "zombie", "timeout")
            assert scalar(
                self.conn, "SELECT lease_timeout FROM pgqueue.jobs WHERE id = %s", (job_id,)
            ) == timedelta(milliseconds=1)

    # invariants

    @invariant()
    def counters_equal_recount(self) -> None:
        for batch_id, (counters, recount) in counters_and_recounts(self.conn).items():
            assert counters == recount, f"batch {batch_id}"

    @invariant()
    def final_batches_stay_final_and_hold_no_active_child(self) -> None:
        active = Counter(
            r[0]
            for r in self.conn.execute(
                "SELECT batch_id FROM pgqueue.jobs"
                " WHERE batch_id IS NOT NULL AND status IN ('pending', 'retrying', 'running')"
            ).fetchall()
        )
        for b in rows(self.conn, "SELECT * FROM pgqueue.batches"):
            if b["id"] in self.final:
                assert (b["status"], b["completed_at"]) == self.final[b["id"]], (
                    "a final batch changed"
                )
            elif b["completed_at"] is not None:
                self.final[b["id"]] = (b["status"], b["completed_at"])
            if b["completed_at"] is not None:
                assert active[b["id"]] == 0, f"final batch {b['id']} has unfinished children"
            else:
                assert b["status"] in ("pending", "running", "paused")
                assert (b["status"] == "paused") == b["paused"]

    @invariant()
    def on_complete_enqueued_once_iff_finished_by_itself(self) -> None:
        counts = on_complete_counts(self.conn)
        for b in rows(
            self.conn, "SELECT id, status::text, on_complete_job_id FROM pgqueue.batches"
        ):
            expected = 1 if self.on_complete[b["id"]] and b["status"] in FINISHED_BY_ITSELF else 0
            assert counts.get(b["id"], 0) == expected, (b, counts)
            if expected:
                assert (
                    scalar(
                        self.conn,
                        "SELECT (args ->> 'batch_id')::bigint FROM pgqueue.jobs WHERE id = %s",
                        (b["on_complete_job_id"],),
                    )
                    == b["id"]
                )
            else:
                assert b["on_complete_job_id"] is None

    @invariant()
    def pause_flags_follow_their_batch(self) -> None:
        wrong = rows(
            self.conn,
            "SELECT j.id, j.status::text, j.paused, b.paused AS batch_paused"
            "  FROM pgqueue.jobs j JOIN pgqueue.batches b ON b.id = j.batch_id"
            " WHERE j.status IN ('pending', 'retrying') AND j.paused <> b.paused",
        )
        assert wrong == [], "a waiting child's paused flag differs from its batch's"


def test_batch_invariants_hold_for_random_operation_sequences(db_dsn: str) -> None:
    BatchMachine.dsn = db_dsn
    run_state_machine_as_test(
        BatchMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            database=None,  # no .hypothesis directory in the working tree
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
