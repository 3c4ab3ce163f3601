"""Concurrency: the seed race reproduced and shown impossible, and claim exclusivity.

The seed race: a job's "started" and "completed" timestamps are written by
different transactions, so with a late, out-of-order or old-snapshot report
completed_at could land before started_at and the CHECK constraint would fail
the worker's call (or, without the constraint, corrupt the row). The stored
functions take their clock inside the statement and clamp with GREATEST, so
no interleaving may raise CheckViolation. Threads with their own psycopg
connections drive the real functions here; nothing is mocked.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from ._helpers import (
    STALE_LEASE,
    TERMINAL,
    Conn,
    claim,
    complete,
    complete_many,
    enqueue,
    enqueue_many,
    fail,
    heartbeat,
    history,
    job,
    progress,
    release,
    rows,
    scalar,
    start,
    timestamps_in_order,
)

SHARED_DATABASE = True  # one database per module, emptied before each test (conftest.py)

# SQLSTATEs a worker or operator is expected to meet when it loses a race.
REFUSALS = {"PQ001", "PQ002", "PQ003"}


def connect(db_dsn: str) -> Conn:
    return psycopg.connect(db_dsn, autocommit=True)


def assert_all_rows_consistent(conn: Conn) -> None:
    """Every job's timestamps are ordered, and every ended attempt is recorded once."""
    bad = rows(
        conn,
        """SELECT id, status, created_at, started_at, leased_at, completed_at
             FROM pgqueue.jobs
            WHERE started_at < created_at
               OR leased_at < started_at
               OR completed_at < COALESCE(started_at, created_at)
               OR completed_at < leased_at
               OR (completed_at IS NOT NULL) <> (status IN
                   ('completed', 'failed', 'timeout', 'zombie', 'dead_letter', 'cancelled'))""",
    )
    assert bad == []
    twice = rows(
        conn,
        """SELECT job_id, count(*) AS n FROM pgqueue.attempts
            WHERE outcome = 'completed' GROUP BY job_id HAVING count(*) > 1""",
    )
    assert twice == []


class Recorder:
    """Collects unexpected exceptions from threads (expected refusals are counted)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unexpected: list[BaseException] = []
        self.refused: Counter[str] = Counter()

    def call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except psycopg.Error as exc:
            if exc.sqlstate in REFUSALS:
                with self.lock:
                    self.refused[exc.sqlstate or ""] += 1
                return None
            with self.lock:
                self.unexpected.append(exc)
            return None

    def succeeded(self, fn: Callable[[], Any]) -> bool:
        """Run ``fn``; True if it returned, False if it was refused (or failed)."""
        done = False

        def run() -> None:
            nonlocal done
            fn()
            done = True

        self.call(run)
        return done

    def crashed(self, exc: BaseException) -> None:
        with self.lock:
            self.unexpected.append(exc)

    def assert_clean(self) -> None:
        checks = [e for e in self.unexpected if isinstance(e, psycopg.errors.CheckViolation)]
        assert checks == [], f"CHECK violations: {checks[:3]}"
        assert self.unexpected == [], f"unexpected errors: {self.unexpected[:5]}"


# -- a) thousands of fast jobs, many workers, interference ------------------------------


def test_thousands_of_fast_jobs_under_high_concurrency_never_violate_a_check(
    conn: Conn, db_dsn: str
) -> None:
    jobs_total = 3000
    workers = 8
    deadline = time.monotonic() + 60
    rng = random.Random(20240607)
    items = [
        {"args": {"i": i}, "max_attempts": rng.choice([1, 1, 2, 3])} for i in range(jobs_total)
    ]
    for chunk in range(0, jobs_total, 1000):
        enqueue_many(conn, items[chunk : chunk + 1000])
    ids = [int(r[0]) for r in conn.execute("SELECT id FROM pgqueue.jobs").fetchall()]
    assert len(ids) == jobs_total

    recorder = Recorder()
    applied: list[tuple[int, int]] = []  # every lease a complete_many reported as applied
    applied_lock = threading.Lock()
    stop = threading.Event()

    def unfinished(c: Conn) -> int:
        return int(
            scalar(
                c,
                "SELECT count(*) FROM pgqueue.jobs"
                " WHERE status IN ('pending', 'retrying', 'running')",
            )
        )

    def worker(n: int) -> None:
        wid = f"w{n}"
        r = random.Random(n)
        with connect(db_dsn) as c:
            while time.monotonic() < deadline:
                claimed = recorder.call(lambda: claim(c, wid, ["default"], r.randint(1, 20)))
                if not claimed:
                    if unfinished(c) == 0:
                        return
                    time.sleep(0.002)
                    continue
                done: list[tuple[int, int, Any]] = []
                for row in claimed:
                    lease = (int(row["id"]), int(row["attempts"]))
                    roll = r.random()
                    if roll < 0.10:
                        recorder.call(lambda lease=lease: progress(c, *lease, r.randint(-20, 120)))
                    if roll < 0.70:
                        done.append((*lease, {"i": row["args"]["i"]}))
                    elif roll < 0.85:
                        recorder.call(
                            lambda lease=lease: fail(c, *lease, "err", retry_in=timedelta(0))
                        )
                    elif roll < 0.93:
                        recorder.call(lambda lease=lease: fail(c, *lease, "fatal", retryable=False))
                    elif roll < 0.96:
                        recorder.call(lambda lease=lease: fail(c, *lease, "slow", timed_out=True))
                    elif roll < 0.98:
                        recorder.call(lambda lease=lease: release(c, *lease))
                    else:
                        if recorder.succeeded(
                            lambda lease=lease: complete(c, *lease, {"single": True})
                        ):
                            with applied_lock:
                                applied.append(lease)
                if done:
                    got = recorder.call(lambda done=done: complete_many(c, done))
                    if got:
                        with applied_lock:
                            applied.extend(got)
                    if r.random() < 0.2:  # a duplicate report of the same results
                        again = recorder.call(lambda done=done: complete_many(c, done))
                        assert not again, f"leases completed twice: {again}"

    def heartbeater() -> None:
        r = random.Random(99)
        with connect(db_dsn) as c:
            while not stop.is_set():
                running = rows(
                    c,
                    "SELECT id, attempts, worker_id FROM pgqueue.jobs"
                    " WHERE status = 'running' LIMIT 40",
                )
                by_worker: dict[str, list[tuple[int, int]]] = {}
                for row in running:
                    by_worker.setdefault(row["worker_id"], []).append(
                        (int(row["id"]), int(row["attempts"]))
                    )
                for wid, leases in by_worker.items():
                    recorder.call(lambda wid=wid, leases=leases: heartbeat(c, wid, leases))
                junk = [(r.choice(ids), r.randint(1, 3)) for _ in range(20)]
                recorder.call(lambda junk=junk: heartbeat(c, f"w{r.randrange(workers)}", junk))

    def progress_reporter() -> None:
        r = random.Random(7)
        with connect(db_dsn) as c:
            while not stop.is_set():
                running = rows(
                    c, "SELECT id, attempts FROM pgqueue.jobs WHERE status = 'running' LIMIT 20"
                )
                for row in running:
                    recorder.call(
                        lambda row=row: progress(c, row["id"], row["attempts"], r.uniform(-5, 105))
                    )
                recorder.call(lambda: progress(c, r.choice(ids), r.randint(1, 3), 50))

    def canceller() -> None:
        r = random.Random(3)
        with connect(db_dsn) as c:
            for job_id in r.sample(ids, 60):
                if stop.is_set():
                    return
                recorder.call(
                    lambda job_id=job_id: c.execute("SELECT pgqueue.cancel(%s)", (job_id,))
                )
                time.sleep(0.005)

    def rescuer() -> None:
        with connect(db_dsn) as c:
            while not stop.is_set():
                recorder.call(lambda: c.execute("SELECT * FROM pgqueue.rescue('100 ms', 50)"))
                time.sleep(0.02)

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # surfaced by recorder.assert_clean()
                recorder.crashed(exc)

        return run

    helpers = [heartbeater, progress_reporter, canceller, rescuer]
    with ThreadPoolExecutor(max_workers=workers + len(helpers)) as pool:
        side = [pool.submit(guarded(h)) for h in helpers]
        main = [pool.submit(guarded(lambda n=n: worker(n))) for n in range(workers)]
        for f in main:
            f.result()
        stop.set()
        for f in side:
            f.result()

    recorder.assert_clean()
    assert unfinished(conn) == 0, "workers stopped at the deadline with jobs left"
    statuses = dict(conn.execute("SELECT status, count(*) FROM pgqueue.jobs GROUP BY 1").fetchall())
    assert set(statuses) <= set(TERMINAL)
    assert sum(statuses.values()) == jobs_total
    assert statuses.get("completed", 0) > jobs_total // 4  # the run did real work
    assert recorder.refused["PQ003"] > 0  # and stale leases really were refused

    # each completed job was applied exactly once, under the lease it ended with
    assert len(applied) == len(set(applied))
    assert Counter(i for i, _ in applied).most_common(1)[0][1] == 1
    completed = {
        (int(r["id"]), int(r["attempts"]))
        for r in rows(conn, "SELECT id, attempts FROM pgqueue.jobs WHERE status = 'completed'")
    }
    assert set(applied) == completed
    assert_all_rows_consistent(conn)
    # every attempt that ever started ended and was recorded exactly once
    gaps = rows(
        conn,
        """SELECT j.id, j.attempts, count(a.attempt) AS recorded
             FROM pgqueue.jobs j LEFT JOIN pgqueue.attempts a ON a.job_id = j.id
            GROUP BY j.id, j.attempts
           HAVING count(a.attempt) <> j.attempts
               OR COALESCE(max(a.attempt), 0) <> j.attempts""",
    )
    assert gaps == []
    mismatched = rows(
        conn,
        """SELECT j.id FROM pgqueue.jobs j
             JOIN pgqueue.attempts a ON a.job_id = j.id AND a.attempt = j.attempts
            WHERE (j.status = 'completed') <> (a.outcome = 'completed')""",
    )
    assert mismatched == []


# -- b) started and completed reported in every order ----------------------------------


def test_seed_race_a_naive_completion_from_an_old_transaction_breaks_the_check(
    conn: Conn, db_dsn: str
) -> None:
    """The race itself: a transaction that began before the claim committed and
    stamps completed_at with its own now() writes a time before started_at. The
    CHECK refuses it; the next test shows pgqueue.complete never does this."""
    job_id = enqueue(conn)
    with psycopg.connect(db_dsn) as old:
        old_now = scalar(old, "SELECT now()")
        time.sleep(0.01)
        (claimed,) = claim(conn, "w1")
        assert claimed["started_at"] > old_now
        with pytest.raises(psycopg.errors.CheckViolation) as exc:
            old.execute(
                "UPDATE pgqueue.jobs SET status = 'completed', completed_at = now()"
                " WHERE id = %s AND status = 'running'",
                (job_id,),
            )
        assert exc.value.diag.constraint_name == "jobs_completed_after_started"
        old.rollback()
    assert job(conn, job_id)["status"] == "running"


def test_complete_from_a_transaction_that_began_before_the_claim_keeps_timestamps_ordered(
    conn: Conn, db_dsn: str
) -> None:
    job_id = enqueue(conn)
    with psycopg.connect(db_dsn) as old:  # READ COMMITTED, not autocommit
        old_now = scalar(old, "SELECT now()")
        time.sleep(0.01)  # make the claim's clock visibly later than old_now
        (claimed,) = claim(conn, "w1")
        assert claimed["started_at"] > old_now
        complete(old, job_id, claimed["attempts"], {"from": "old transaction"})
        assert scalar(old, "SELECT now()") == old_now  # still the old transaction
        old.commit()
    row = job(conn, job_id)
    assert row["status"] == "completed"
    assert row["created_at"] <= row["started_at"] <= row["completed_at"]
    assert row["completed_at"] >= row["leased_at"]
    assert row["completed_at"] > old_now
    assert timestamps_in_order(row)


def test_claim_and_complete_inside_a_transaction_older_than_the_job(
    conn: Conn, db_dsn: str
) -> None:
    with psycopg.connect(db_dsn) as old:
        old_now = scalar(old, "SELECT now()")
        time.sleep(0.01)
        job_id = enqueue(conn)  # committed by another session after `old` began
        assert job(conn, job_id)["created_at"] > old_now
        (claimed,) = claim(old, "w1")  # the claim and the result in the old transaction
        assert claimed["id"] == job_id
        progress(old, job_id, claimed["attempts"], 50)
        complete(old, job_id, claimed["attempts"], {"ok": True})
        old.commit()
    row = job(conn, job_id)
    assert row["status"] == "completed"
    assert row["created_at"] <= row["started_at"] <= row["completed_at"]
    assert timestamps_in_order(row)


@pytest.mark.parametrize("call", ["complete", "fail", "cancel"])
def test_ending_from_an_old_transaction_never_writes_a_time_before_the_start(
    conn: Conn, db_dsn: str, call: str
) -> None:
    job_id = enqueue(conn, max_attempts=1)
    with psycopg.connect(db_dsn) as old:
        old_now = scalar(old, "SELECT now()")
        time.sleep(0.01)
        (claimed,) = claim(conn, "w1")
        attempt = int(claimed["attempts"])
        if call == "complete":
            complete(old, job_id, attempt)
        elif call == "fail":
            assert fail(old, job_id, attempt) == "failed"
        else:
            old.execute("SELECT pgqueue.cancel(%s)", (job_id,))
        old.commit()
    row = job(conn, job_id)
    assert row["completed_at"] >= row["started_at"] > old_now
    (attempt_row,) = history(conn, job_id)
    assert attempt_row["ended_at"] >= attempt_row["started_at"]


def test_repeatable_read_complete_after_a_concurrent_claim_is_refused_cleanly(
    conn: Conn, db_dsn: str
) -> None:
    job_id = enqueue(conn)
    with psycopg.connect(db_dsn) as old:
        old.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        old_now = scalar(old, "SELECT now()")  # takes the snapshot: the job is pending
        (claimed,) = claim(conn, "w1")
        with pytest.raises(psycopg.Error) as exc:
            complete(old, job_id, claimed["attempts"], {"from": "old snapshot"})
        assert not isinstance(exc.value, psycopg.errors.CheckViolation)
        assert exc.value.sqlstate in (STALE_LEASE, "40001")
        old.rollback()
    row = job(conn, job_id)
    assert row["status"] == "running"  # untouched: the real worker still holds it
    assert row["started_at"] > old_now
    complete(conn, job_id, claimed["attempts"], {"from": "worker"})
    assert timestamps_in_order(job(conn, job_id))


def test_repeatable_read_complete_after_a_concurrent_heartbeat_is_a_serialization_failure(
    conn: Conn, db_dsn: str
) -> None:
    job_id, attempt = start(conn, "w1")
    with psycopg.connect(db_dsn) as old:
        old.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        scalar(old, "SELECT now()")  # snapshot: the job is running
        assert heartbeat(conn, "w1", [(job_id, attempt)]) == {(job_id, attempt)}
        with pytest.raises(psycopg.errors.SerializationFailure):
            complete(old, job_id, attempt, {"from": "old snapshot"})
        old.rollback()
    assert job(conn, job_id)["status"] == "running"
    complete(conn, job_id, attempt, {"retried": True})
    assert job(conn, job_id)["result"] == {"retried": True}


def test_heartbeat_after_complete_is_refused_quietly(conn: Conn) -> None:
    job_id, attempt = start(conn, "w1")
    complete(conn, job_id, attempt, {"ok": 1})
    before = job(conn, job_id)
    assert heartbeat(conn, "w1", [(job_id, attempt)]) == set()
    assert job(conn, job_id) == before


def test_progress_after_complete_is_refused_with_pq003(conn: Conn) -> None:
    job_id, attempt = start(conn, "w1")
    complete(conn, job_id, attempt)
    with pytest.raises(psycopg.Error) as exc:
        progress(conn, job_id, attempt, 10)
    assert exc.value.sqlstate == STALE_LEASE
    assert job(conn, job_id)["progress"] == 100


def test_complete_before_any_heartbeat_or_progress(conn: Conn) -> None:
    job_id, attempt = start(conn, "w1")
    complete(conn, job_id, attempt, {"fast": True})
    row = job(conn, job_id)
    assert row["heartbeat_at"] == row["leased_at"]  # never heartbeated
    assert row["progress"] == 100
    assert timestamps_in_order(row)


def test_complete_heartbeat_and_progress_racing_on_one_lease(conn: Conn, db_dsn: str) -> None:
    """The three calls a worker makes for one lease, released together by a barrier,
    many times: complete always wins, the others either land before it or are
    refused, never a CHECK violation, and a completed job always shows 100 %."""
    rounds = 150
    ids = enqueue_many(conn, [{"args": {"i": i}} for i in range(rounds)])
    claimed = {int(r["id"]): int(r["attempts"]) for r in claim(conn, "w1", limit=rounds)}
    assert set(claimed) == set(ids)
    barrier = threading.Barrier(3, timeout=30)
    recorder = Recorder()
    outcomes: Counter[str] = Counter()

    def completer() -> None:
        with connect(db_dsn) as c:
            for job_id in ids:
                barrier.wait()
                complete(c, job_id, claimed[job_id], {"i": job_id})

    def heartbeater() -> None:
        with connect(db_dsn) as c:
            for job_id in ids:
                barrier.wait()
                held = recorder.call(
                    lambda job_id=job_id: heartbeat(c, "w1", [(job_id, claimed[job_id])])
                )
                outcomes["heartbeat held" if held else "heartbeat lost"] += 1

    def reporter() -> None:
        with connect(db_dsn) as c:
            for job_id in ids:
                barrier.wait()
                pct = recorder.call(lambda job_id=job_id: progress(c, job_id, claimed[job_id], 50))
                outcomes["progress applied" if pct is not None else "progress refused"] += 1

    with ThreadPoolExecutor(max_workers=3) as pool:
        for f in [pool.submit(fn) for fn in (completer, heartbeater, reporter)]:
            f.result(timeout=60)

    recorder.assert_clean()
    assert set(recorder.refused) <= {STALE_LEASE}
    assert outcomes["progress applied"] + outcomes["progress refused"] == rounds
    assert outcomes["heartbeat held"] + outcomes["heartbeat lost"] == rounds
    not_done = scalar(
        conn,
        "SELECT count(*) FROM pgqueue.jobs WHERE status <> 'completed' OR progress <> 100",
    )
    assert not_done == 0
    assert_all_rows_consistent(conn)


def test_complete_cancel_and_rescue_racing_on_one_job_have_exactly_one_winner(
    conn: Conn, db_dsn: str
) -> None:
    rounds = 100
    ids = enqueue_many(conn, [{"max_attempts": 1} for _ in range(rounds)])
    leases = {int(r["id"]): int(r["attempts"]) for r in claim(conn, "w1", limit=rounds)}
    assert set(leases) == set(ids)
    recorder = Recorder()
    won: dict[str, set[int]] = {"complete": set(), "cancel": set(), "rescue": set()}
    upcoming = iter(ids)

    with connect(db_dsn) as admin:

        def make_next_job_stale() -> None:
            """Runs once per round, before the three threads are let go: only
            this round's job has a stale heartbeat, so only it can be rescued."""
            job_id = next(upcoming)
            admin.execute(
                "UPDATE pgqueue.jobs SET heartbeat_at = heartbeat_at - interval '1 hour'"
                " WHERE id = %s",
                (job_id,),
            )

        barrier = threading.Barrier(3, action=make_next_job_stale, timeout=30)
        _race_complete_cancel_rescue(db_dsn, ids, leases, barrier, recorder, won)

    recorder.assert_clean()
    final = {int(r["id"]): r["status"] for r in rows(conn, "SELECT id, status FROM pgqueue.jobs")}
    assert set(final.values()) <= {"completed", "cancelled", "zombie"}
    expected = {"complete": "completed", "cancel": "cancelled", "rescue": "zombie"}
    outcome = {"completed": "completed", "cancelled": "cancelled", "zombie": "lost"}
    for job_id in ids:
        winners = [name for name, got in won.items() if job_id in got]
        assert len(winners) == 1, (job_id, winners, final[job_id])
        assert final[job_id] == expected[winners[0]]
        (attempt_row,) = history(conn, job_id)
        assert attempt_row["outcome"] == outcome[final[job_id]]
    assert sum(1 for got in won.values() if got) >= 2  # the race had more than one winner
    assert_all_rows_consistent(conn)


def _race_complete_cancel_rescue(
    db_dsn: str,
    ids: list[int],
    leases: dict[int, int],
    barrier: threading.Barrier,
    recorder: Recorder,
    won: dict[str, set[int]],
) -> None:
    def completer() -> None:
        with connect(db_dsn) as c:
            for job_id in ids:
                barrier.wait()
                if recorder.succeeded(lambda job_id=job_id: complete(c, job_id, leases[job_id])):
                    won["complete"].add(job_id)

    def canceller() -> None:
        with connect(db_dsn) as c:
            for job_id in ids:
                barrier.wait()
                if recorder.succeeded(
                    lambda job_id=job_id: c.execute("SELECT pgqueue.cancel(%s)", (job_id,))
                ):
                    won["cancel"].add(job_id)

    def rescuer() -> None:
        with connect(db_dsn) as c:
            for _ in ids:
                barrier.wait()
                got = recorder.call(
                    lambda: c.execute("SELECT id FROM pgqueue.rescue('1 minute')").fetchall()
                )
                won["rescue"].update(int(r[0]) for r in got or [])

    with ThreadPoolExecutor(max_workers=3) as pool:
        for f in [pool.submit(fn) for fn in (completer, canceller, rescuer)]:
            f.result(timeout=60)


def test_two_reports_of_the_same_lease_complete_it_once(conn: Conn, db_dsn: str) -> None:
    rounds = 100
    ids = enqueue_many(conn, [{} for _ in range(rounds)])
    leases = {int(r["id"]): int(r["attempts"]) for r in claim(conn, "w1", limit=rounds)}
    barrier = threading.Barrier(2, timeout=30)
    recorder = Recorder()
    applied: list[list[int]] = [[], []]

    def reporter(n: int) -> None:
        with connect(db_dsn) as c:
            for job_id in ids:
                barrier.wait()
                got = recorder.call(
                    lambda job_id=job_id: complete_many(c, [(job_id, leases[job_id], {"by": n})])
                )
                applied[n].extend(i for i, _ in got or ())

    with ThreadPoolExecutor(max_workers=2) as pool:
        for f in [pool.submit(reporter, n) for n in (0, 1)]:
            f.result(timeout=60)

    recorder.assert_clean()
    assert sorted(applied[0] + applied[1]) == sorted(ids)
    for n in (0, 1):
        mine = set(applied[n])
        by_me = {
            int(r["id"])
            for r in rows(
                conn, "SELECT id FROM pgqueue.jobs WHERE result = %s::jsonb", (f'{{"by": {n}}}',)
            )
        }
        assert by_me == mine
    assert_all_rows_consistent(conn)


# -- c) claim exclusivity --------------------------------------------------------------


def test_concurrent_claimers_never_get_the_same_job(conn: Conn, db_dsn: str) -> None:
    jobs_total = 2000
    claimers = 8
    enqueue_many(conn, [{"priority": i % 7} for i in range(jobs_total)])
    got: list[list[tuple[int, str]]] = [[] for _ in range(claimers)]
    start_line = threading.Barrier(claimers, timeout=30)

    def claimer(n: int) -> None:
        r = random.Random(n)
        with connect(db_dsn) as c:
            start_line.wait()
            while True:
                limit = r.randint(1, 25)
                claimed = claim(c, f"c{n}", ["default"], limit)
                assert len(claimed) <= limit
                if not claimed:
                    return
                got[n].extend((int(row["id"]), row["worker_id"]) for row in claimed)

    with ThreadPoolExecutor(max_workers=claimers) as pool:
        for f in [pool.submit(claimer, n) for n in range(claimers)]:
            f.result(timeout=60)

    claimed_ids = [job_id for per in got for job_id, _ in per]
    assert len(claimed_ids) == len(set(claimed_ids)) == jobs_total
    assert all(wid == f"c{n}" for n, per in enumerate(got) for _, wid in per)
    owners = dict(
        conn.execute("SELECT id, worker_id FROM pgqueue.jobs WHERE status = 'running'").fetchall()
    )
    assert len(owners) == jobs_total
    assert all(owners[job_id] == wid for per in got for job_id, wid in per)
    assert scalar(conn, "SELECT max(attempts) FROM pgqueue.jobs") == 1
    assert sum(1 for per in got if per) > 1  # the claimers really competed
