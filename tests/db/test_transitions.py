"""Every job state transition of sql/functions.sql, and every refused one.

Each test calls the stored functions directly, then reads the row (and its
pgqueue.attempts history) back. Refusals are checked by SQLSTATE:
PQ001 job missing, PQ002 wrong state, PQ003 stale lease, 22023 bad input.
"""

from __future__ import annotations

import json
from datetime import timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from ._helpers import (
    BAD_INPUT,
    JOB_MISSING,
    STALE_LEASE,
    TERMINAL,
    WRONG_STATE,
    Conn,
    age_heartbeat,
    age_job,
    cancel,
    claim,
    complete,
    complete_many,
    db_now,
    enqueue,
    enqueue_many,
    fail,
    heartbeat,
    history,
    job,
    job_in_state,
    new_queue,
    progress,
    reclaim,
    release,
    replay,
    rescue,
    scalar,
    start,
    timestamps_in_order,
)

SHARED_DATABASE = True  # one database per module, emptied before each test (conftest.py)

MISSING_ID = 987_654_321


def count_jobs(conn: Conn) -> int:
    return int(scalar(conn, "SELECT count(*) FROM pgqueue.jobs"))


# -- enqueue ------------------------------------------------------------------------------


def test_enqueue_defaults_make_a_due_pending_job(conn: Conn) -> None:
    before = db_now(conn)
    job_id = int(scalar(conn, "SELECT pgqueue.enqueue('t')"))
    after = db_now(conn)
    row = job(conn, job_id)
    assert row["status"] == "pending"
    assert row["task"] == "t"
    assert row["queue"] == "default"
    assert row["args"] == {}
    assert row["metadata"] == {}
    assert row["priority"] == 0
    assert row["attempts"] == 0
    assert row["max_attempts"] == 1
    assert row["timeout"] is None
    assert row["progress"] == 0
    assert row["owner"] is None
    for column in ("started_at", "leased_at", "completed_at", "heartbeat_at", "worker_id"):
        assert row[column] is None, column
    assert before <= row["run_at"] == row["created_at"] <= after
    assert [r["id"] for r in claim(conn)] == [job_id]


def test_enqueue_stores_every_given_field(conn: Conn) -> None:
    run_at = db_now(conn) - timedelta(seconds=5)
    job_id = enqueue(
        conn,
        "resize",
        args={"image_id": 7, "sizes": [1, 2]},
        queue="images",
        priority=-3,
        run_at=run_at,
        max_attempts=4,
        timeout=timedelta(seconds=30),
        owner="alice",
        metadata={"trace": "abc"},
    )
    row = job(conn, job_id)
    assert (row["task"], row["queue"], row["priority"], row["max_attempts"]) == (
        "resize",
        "images",
        -3,
        4,
    )
    assert row["args"] == {"image_id": 7, "sizes": [1, 2]}
    assert row["run_at"] == run_at
    assert row["timeout"] == timedelta(seconds=30)
    assert row["owner"] == "alice"
    assert row["metadata"] == {"trace": "abc"}


def test_enqueue_with_future_run_at_is_not_claimable_until_due(conn: Conn) -> None:
    later = enqueue(conn, run_at=db_now(conn) + timedelta(hours=1))
    assert claim(conn, limit=10) == []
    assert job(conn, later)["status"] == "pending"
    conn.execute("UPDATE pgqueue.jobs SET run_at = created_at WHERE id = %s", (later,))
    assert [r["id"] for r in claim(conn, limit=10)] == [later]


def test_enqueue_refuses_a_row_the_constraints_reject_and_writes_nothing(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as exc:
        conn.execute("SELECT pgqueue.enqueue('t', '[1]'::jsonb)")
    assert exc.value.diag.constraint_name == "jobs_args_object"
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("SELECT pgqueue.enqueue('')")
    assert count_jobs(conn) == 0


def test_enqueue_is_visible_only_if_the_transaction_commits(conn: Conn, db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as other:
        enqueue(other)
        assert count_jobs(conn) == 0  # not committed yet
        other.rollback()
        assert count_jobs(conn) == 0
        enqueue(other)
        other.commit()
    assert count_jobs(conn) == 1


def test_enqueue_notifies_idle_workers_of_the_queue(conn: Conn, db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_enqueue")
        enqueue(conn, queue="mail")
        enqueue(conn, queue="later", run_at=db_now(conn) + timedelta(hours=1))
        enqueue(conn, queue="sentinel")
        payloads = [n.payload for n in listener.notifies(timeout=5.0, stop_after=2)]
    assert payloads == ["mail", "sentinel"]


# -- enqueue_many -------------------------------------------------------------------------


def test_enqueue_many_returns_ids_in_item_order(conn: Conn) -> None:
    items = [{"args": {"i": i}, "queue": f"q{i % 3}", "priority": (i * 7) % 5} for i in range(60)]
    ids = enqueue_many(conn, items)
    assert len(ids) == len(set(ids)) == 60
    for index, job_id in enumerate(ids):
        row = job(conn, job_id)
        assert row["args"] == {"i": index}
        assert row["queue"] == f"q{index % 3}"
        assert row["priority"] == (index * 7) % 5


def test_enqueue_many_fills_defaults_for_null_priority_and_run_at(conn: Conn) -> None:
    before = db_now(conn)
    (job_id,) = enqueue_many(conn, [{"priority": None, "run_at": None}])
    after = db_now(conn)
    row = job(conn, job_id)
    assert row["priority"] == 0
    assert before <= row["run_at"] <= after
    assert row["status"] == "pending"


def test_enqueue_many_with_no_items_writes_nothing(conn: Conn) -> None:
    assert enqueue_many(conn, []) == []
    assert count_jobs(conn) == 0


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"task": ""}, "task must be 1 to 256 characters"),
        ({"task": "x" * 257}, "task must be 1 to 256 characters"),
        ({"task": None}, "task must be 1 to 256 characters"),
        ({"args": [1, 2]}, "args must be a JSON object"),
        ({"args": None}, "args must be a JSON object"),
        ({"queue": ""}, "queue must be 1 to 128 characters"),
        ({"queue": "q" * 129}, "queue must be 1 to 128 characters"),
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"max_attempts": None}, "max_attempts must be at least 1"),
        ({"timeout": timedelta(0)}, "timeout must be positive"),
        ({"timeout": timedelta(seconds=-1)}, "timeout must be positive"),
        ({"metadata": "text"}, "metadata must be a JSON object"),
    ],
)
def test_enqueue_many_refuses_an_invalid_item_by_index_and_writes_nothing(
    conn: Conn, bad: dict[str, object], problem: str
) -> None:
    items: list[dict[str, object]] = [{"args": {"i": i}} for i in range(5)]
    items[3] = {**items[3], **bad}
    with pytest.raises(psycopg.Error) as exc:
        enqueue_many(conn, items)
    assert exc.value.sqlstate == BAD_INPUT
    assert f"item 3: {problem}" in str(exc.value)
    assert count_jobs(conn) == 0


def test_enqueue_many_names_the_first_invalid_item(conn: Conn) -> None:
    items: list[dict[str, object]] = [{"args": {}} for _ in range(6)]
    items[4]["queue"] = ""
    items[1]["max_attempts"] = 0
    with pytest.raises(psycopg.Error, match="item 1: max_attempts") as exc:
        enqueue_many(conn, items)
    assert exc.value.sqlstate == BAD_INPUT
    assert count_jobs(conn) == 0


def test_enqueue_many_refuses_mismatched_array_lengths(conn: Conn) -> None:
    with pytest.raises(psycopg.Error, match="all argument arrays must have 2 items") as exc:
        conn.execute(
            "SELECT pgqueue.enqueue_many(%s::text[], %s::jsonb[], %s::text[], %s::int[],"
            " %s::timestamptz[], %s::int[], %s::interval[], %s::text[], %s::jsonb[])",
            (
                ["a", "b"],
                [Jsonb({}), Jsonb({})],
                ["default"],  # one item short
                [0, 0],
                [None, None],
                [1, 1],
                [None, None],
                [None, None],
                [Jsonb({}), Jsonb({})],
            ),
        )
    assert exc.value.sqlstate == BAD_INPUT
    assert count_jobs(conn) == 0


def test_enqueue_many_refuses_null_task_array(conn: Conn) -> None:
    with pytest.raises(psycopg.Error, match="tasks must not be null") as exc:
        conn.execute(
            "SELECT pgqueue.enqueue_many(NULL, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}')"
        )
    assert exc.value.sqlstate == BAD_INPUT


# -- claim --------------------------------------------------------------------------------


def test_claim_orders_by_priority_desc_then_run_at_then_id(conn: Conn) -> None:
    now = db_now(conn)
    ago = lambda s: now - timedelta(seconds=s)  # noqa: E731
    low_old = enqueue(conn, priority=0, run_at=ago(100))
    high_newer = enqueue(conn, priority=5, run_at=ago(1))
    high_older_a = enqueue(conn, priority=5, run_at=ago(5))
    high_older_b = enqueue(conn, priority=5, run_at=ago(5))  # same run_at: id decides
    negative_oldest = enqueue(conn, priority=-1, run_at=ago(1000))
    order = [r["id"] for _ in range(5) for r in claim(conn, limit=1)]
    assert order == [high_older_a, high_older_b, high_newer, low_old, negative_oldest]


def test_claim_with_a_limit_takes_the_best_jobs(conn: Conn) -> None:
    ids = [enqueue(conn, priority=p) for p in (1, 9, 3, 7, 5)]
    claimed = {r["id"] for r in claim(conn, limit=3)}
    assert claimed == {ids[1], ids[3], ids[4]}


def test_claim_merges_several_queues_by_priority(conn: Conn) -> None:
    enqueue(conn, queue="a", priority=1)
    urgent = enqueue(conn, queue="b", priority=9)
    enqueue(conn, queue="c", priority=100)  # not asked for
    assert [r["id"] for r in claim(conn, queues=["a", "b"], limit=1)] == [urgent]


def test_claim_takes_only_due_jobs(conn: Conn) -> None:
    now = db_now(conn)
    due = enqueue(conn, run_at=now - timedelta(seconds=1))
    enqueue(conn, run_at=now + timedelta(minutes=5), priority=10)
    assert [r["id"] for r in claim(conn, limit=10)] == [due]


@pytest.mark.parametrize("queues", [["default"], ["a", "b", "c"]])
def test_claim_never_returns_more_than_the_limit(conn: Conn, queues: list[str]) -> None:
    for name in queues:
        for _ in range(6):
            enqueue(conn, queue=name)
    claimed = claim(conn, queues=queues, limit=4)
    assert len(claimed) == 4
    running = scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'running'")
    assert running == 4
    # the rows looked at but not taken were left pending and unlocked
    assert len(claim(conn, queues=queues, limit=100)) == 6 * len(queues) - 4


def test_claim_marks_the_job_running_under_a_new_lease(conn: Conn) -> None:
    job_id = enqueue(conn, max_attempts=3)
    before = db_now(conn)
    (claimed,) = claim(conn, worker="worker-7")
    after = db_now(conn)
    row = job(conn, job_id)
    assert claimed == row
    assert row["status"] == "running"
    assert row["attempts"] == 1
    assert row["worker_id"] == "worker-7"
    assert before <= row["started_at"] <= after
    assert row["leased_at"] == row["heartbeat_at"] == row["started_at"]
    assert row["created_at"] <= row["started_at"]
    assert row["completed_at"] is None


def test_claim_of_a_later_attempt_keeps_started_at_and_moves_leased_at(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=3)
    first = job(conn, job_id)
    fail(conn, job_id, attempt, retry_in=timedelta(0))
    assert reclaim(conn, job_id, "w2") == 2
    second = job(conn, job_id)
    assert second["started_at"] == first["started_at"]
    assert second["leased_at"] >= first["leased_at"]
    assert second["worker_id"] == "w2"
    assert second["attempts"] == 2


def test_claim_takes_due_retrying_jobs_but_not_scheduled_ones(conn: Conn) -> None:
    queue = new_queue()
    soon = enqueue(conn, queue=queue, max_attempts=2)
    later = enqueue(conn, queue=queue, max_attempts=2)
    leases = {r["id"]: r["attempts"] for r in claim(conn, queues=[queue], limit=2)}
    fail(conn, soon, leases[soon], retry_in=timedelta(0))
    fail(conn, later, leases[later], retry_in=timedelta(hours=1))
    assert [r["id"] for r in claim(conn, queues=[queue], limit=10)] == [soon]


@pytest.mark.parametrize("status", ["running", *TERMINAL])
def test_claim_never_takes_running_or_terminal_jobs(conn: Conn, status: str) -> None:
    job_id = job_in_state(conn, status)
    assert claim(conn, queues=[job(conn, job_id)["queue"]], limit=10) == []
    assert job(conn, job_id)["status"] == status


def test_claim_skips_a_paused_queue(conn: Conn) -> None:
    paused = enqueue(conn, queue="paused", priority=10)
    open_job = enqueue(conn, queue="open")
    conn.execute("SELECT pgqueue.pause_queue('paused')")
    assert [r["id"] for r in claim(conn, queues=["paused", "open"], limit=10)] == [open_job]
    assert job(conn, paused)["status"] == "pending"


def test_resume_makes_a_paused_queue_claimable(conn: Conn) -> None:
    job_id = enqueue(conn, queue="mail")
    conn.execute("SELECT pgqueue.pause_queue('mail')")
    conn.execute("SELECT pgqueue.pause_queue('mail')")  # pausing twice is harmless
    assert claim(conn, queues=["mail"]) == []
    conn.execute("SELECT pgqueue.resume_queue('mail')")
    assert [r["id"] for r in claim(conn, queues=["mail"])] == [job_id]


def test_claim_skips_rows_locked_by_another_transaction(conn: Conn, db_dsn: str) -> None:
    first = enqueue(conn, priority=1)
    second = enqueue(conn)
    conn.execute("SET statement_timeout = '5s'")  # a claim that waits fails, not hangs
    with psycopg.connect(db_dsn) as other:
        other.execute("SELECT 1 FROM pgqueue.jobs WHERE id = %s FOR UPDATE", (first,))
        assert [r["id"] for r in claim(conn, limit=2)] == [second]
        other.rollback()
    assert [r["id"] for r in claim(conn, limit=2)] == [first]


@pytest.mark.parametrize("limit", [0, -1, None])
def test_claim_refuses_a_limit_below_one(conn: Conn, limit: int | None) -> None:
    job_id = enqueue(conn)
    with pytest.raises(psycopg.Error, match="limit must be at least 1") as exc:
        conn.execute("SELECT * FROM pgqueue.claim('w', ARRAY['default'], %s::int)", (limit,))
    assert exc.value.sqlstate == BAD_INPUT
    assert job(conn, job_id)["status"] == "pending"


@pytest.mark.parametrize("queues", [[], None])
def test_claim_refuses_an_empty_queue_list(conn: Conn, queues: list[str] | None) -> None:
    with pytest.raises(psycopg.Error, match="name at least one queue") as exc:
        conn.execute("SELECT * FROM pgqueue.claim('w', %s::text[], 1)", (queues,))
    assert exc.value.sqlstate == BAD_INPUT


@pytest.mark.parametrize("worker", ["", None])
def test_claim_refuses_an_empty_worker_id(conn: Conn, worker: str | None) -> None:
    enqueue(conn)
    with pytest.raises(psycopg.Error, match="worker_id must not be empty") as exc:
        conn.execute("SELECT * FROM pgqueue.claim(%s::text, ARRAY['default'], 1)", (worker,))
    assert exc.value.sqlstate == BAD_INPUT


# -- heartbeat ----------------------------------------------------------------------------


def test_heartbeat_returns_only_leases_still_held(conn: Conn) -> None:
    queue = new_queue()
    ids = [enqueue(conn, queue=queue) for _ in range(3)]
    claim(conn, "w1", [queue], limit=3)
    other_worker_job, other_attempt = start(conn, "w2")
    done_id, done_attempt = start(conn, "w1")
    complete(conn, done_id, done_attempt)
    asked = [
        *[(i, 1) for i in ids],
        (ids[0], 2),  # wrong attempt
        (other_worker_job, other_attempt),  # someone else's lease
        (done_id, done_attempt),  # finished
        (MISSING_ID, 1),
    ]
    assert heartbeat(conn, "w1", asked) == {(i, 1) for i in ids}


def test_heartbeat_with_the_wrong_worker_id_returns_nothing(conn: Conn) -> None:
    job_id, attempt = start(conn, "w1")
    age_heartbeat(conn, job_id)
    stale = job(conn, job_id)["heartbeat_at"]
    assert heartbeat(conn, "w2", [(job_id, attempt)]) == set()
    assert job(conn, job_id)["heartbeat_at"] == stale


def test_heartbeat_with_the_wrong_attempt_returns_nothing(conn: Conn) -> None:
    job_id, attempt = start(conn, "w1")
    assert heartbeat(conn, "w1", [(job_id, attempt + 1), (job_id, attempt - 1)]) == set()


def test_heartbeat_refreshes_heartbeat_at_and_saves_the_lease_from_rescue(conn: Conn) -> None:
    job_id, attempt = start(conn, "w1")
    age_heartbeat(conn, job_id)
    stale = job(conn, job_id)["heartbeat_at"]
    before = db_now(conn)
    assert heartbeat(conn, "w1", [(job_id, attempt)]) == {(job_id, attempt)}
    row = job(conn, job_id)
    assert row["heartbeat_at"] >= before > stale
    assert row["status"] == "running"
    assert rescue(conn, "1 minute") == {}


def test_heartbeat_with_no_leases_returns_nothing(conn: Conn) -> None:
    start(conn, "w1")
    assert heartbeat(conn, "w1", []) == set()


# -- progress -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pct", "stored"),
    [(-5, 0), (150, 100), (0, 0), (100, 100), (42, 42), (42.4, 42), (42.5, 43), (1e12, 100)],
)
def test_progress_is_clamped_to_0_100(conn: Conn, pct: float, stored: int) -> None:
    job_id, attempt = start(conn)
    assert progress(conn, job_id, attempt, pct, "working") == stored
    row = job(conn, job_id)
    assert row["progress"] == stored
    assert row["progress_message"] == "working"


def test_progress_refreshes_the_heartbeat(conn: Conn) -> None:
    job_id, attempt = start(conn)
    age_heartbeat(conn, job_id)
    before = db_now(conn)
    progress(conn, job_id, attempt, 10)
    assert job(conn, job_id)["heartbeat_at"] >= before


@pytest.mark.parametrize("pct", [None, "NaN"])
def test_progress_refuses_a_value_that_is_not_a_number(conn: Conn, pct: object) -> None:
    job_id, attempt = start(conn)
    with pytest.raises(psycopg.Error) as exc:
        progress(conn, job_id, attempt, pct)
    assert exc.value.sqlstate == BAD_INPUT


def test_progress_refuses_a_stale_lease_with_pq003(conn: Conn) -> None:
    job_id, attempt = start(conn)
    progress(conn, job_id, attempt, 30)
    with pytest.raises(psycopg.Error, match="lease is no longer held") as exc:
        progress(conn, job_id, attempt + 1, 60)
    assert exc.value.sqlstate == STALE_LEASE
    assert job(conn, job_id)["progress"] == 30


def test_progress_refuses_a_job_that_is_not_running_with_pq003(conn: Conn) -> None:
    job_id = enqueue(conn)
    with pytest.raises(psycopg.Error) as exc:
        progress(conn, job_id, 0, 10)
    assert exc.value.sqlstate == STALE_LEASE


def test_progress_refuses_a_missing_job_with_pq001(conn: Conn) -> None:
    with pytest.raises(psycopg.Error, match="does not exist") as exc:
        progress(conn, MISSING_ID, 1, 10)
    assert exc.value.sqlstate == JOB_MISSING


# -- complete / complete_many -------------------------------------------------------------


def test_complete_sets_result_progress_and_completed_at(conn: Conn) -> None:
    job_id, attempt = start(conn, "w9")
    progress(conn, job_id, attempt, 40)
    before = db_now(conn)
    complete(conn, job_id, attempt, {"answer": 42})
    after = db_now(conn)
    row = job(conn, job_id)
    assert row["status"] == "completed"
    assert row["result"] == {"answer": 42}
    assert row["progress"] == 100
    assert before <= row["completed_at"] <= after
    assert timestamps_in_order(row)
    (attempt_row,) = history(conn, job_id)
    assert attempt_row["attempt"] == attempt
    assert attempt_row["worker_id"] == "w9"
    assert attempt_row["started_at"] == row["leased_at"]
    assert attempt_row["ended_at"] == row["completed_at"]
    assert attempt_row["outcome"] == "completed"
    assert attempt_row["error"] is None


def test_complete_refuses_a_stale_lease(conn: Conn) -> None:
    job_id, attempt = start(conn)
    with pytest.raises(psycopg.Error, match="lease is no longer held") as exc:
        complete(conn, job_id, attempt + 1, {"late": True})
    assert exc.value.sqlstate == STALE_LEASE
    row = job(conn, job_id)
    assert row["status"] == "running"
    assert row["result"] is None
    assert history(conn, job_id) == []


@pytest.mark.parametrize("status", ["pending", "retrying", *TERMINAL])
def test_complete_refuses_a_job_that_is_not_running(conn: Conn, status: str) -> None:
    job_id = job_in_state(conn, status)
    before = job(conn, job_id)
    with pytest.raises(psycopg.Error) as exc:
        complete(conn, job_id, before["attempts"], {"late": True})
    assert exc.value.sqlstate == STALE_LEASE
    assert job(conn, job_id) == before


def test_complete_refuses_a_missing_job_with_pq001(conn: Conn) -> None:
    with pytest.raises(psycopg.Error) as exc:
        complete(conn, MISSING_ID, 1)
    assert exc.value.sqlstate == JOB_MISSING


def test_complete_twice_is_refused_the_second_time(conn: Conn) -> None:
    job_id, attempt = start(conn)
    complete(conn, job_id, attempt, {"n": 1})
    with pytest.raises(psycopg.Error) as exc:
        complete(conn, job_id, attempt, {"n": 2})
    assert exc.value.sqlstate == STALE_LEASE
    assert job(conn, job_id)["result"] == {"n": 1}
    assert [h["outcome"] for h in history(conn, job_id)] == ["completed"]


def test_complete_many_applies_only_held_leases_and_returns_them(conn: Conn) -> None:
    queue = new_queue()
    ids = [enqueue(conn, queue=queue) for _ in range(4)]
    claim(conn, "w1", [queue], limit=4)
    cancel(conn, ids[2])
    applied = complete_many(
        conn,
        [
            (ids[3], 1, {"for": ids[3]}),  # out of id order on purpose
            (ids[0], 1, {"for": ids[0]}),
            (ids[1], 2, {"for": "wrong attempt"}),
            (ids[2], 1, {"for": "cancelled"}),
            (MISSING_ID, 1, {"for": "missing"}),
        ],
    )
    assert applied == {(ids[0], 1), (ids[3], 1)}
    for job_id in (ids[0], ids[3]):
        row = job(conn, job_id)
        assert row["status"] == "completed"
        assert row["result"] == {"for": job_id}
    assert job(conn, ids[1])["status"] == "running"
    assert job(conn, ids[1])["result"] is None
    assert job(conn, ids[2])["status"] == "cancelled"
    assert job(conn, ids[2])["result"] is None


def test_complete_many_with_a_repeated_lease_completes_it_once(conn: Conn) -> None:
    job_id, attempt = start(conn)
    applied = complete_many(conn, [(job_id, attempt, {"a": 1}), (job_id, attempt, {"a": 1})])
    assert applied == {(job_id, attempt)}
    assert [h["outcome"] for h in history(conn, job_id)] == ["completed"]
    assert complete_many(conn, [(job_id, attempt, {"a": 2})]) == set()
    assert job(conn, job_id)["result"] == {"a": 1}


# -- fail ---------------------------------------------------------------------------------


def test_fail_retryable_with_attempts_left_is_retrying_due_in_the_future(conn: Conn) -> None:
    job_id, attempt = start(conn, "w1", max_attempts=3)
    before = db_now(conn)
    assert fail(conn, job_id, attempt, "ValueError: nope") == "retrying"
    after = db_now(conn)
    row = job(conn, job_id)
    assert row["status"] == "retrying"
    assert row["completed_at"] is None
    assert row["error"] == "ValueError: nope"
    # default backoff for attempt 1: 1 s with +/-25 % jitter
    assert before + timedelta(seconds=0.75) <= row["run_at"] <= after + timedelta(seconds=1.25)
    (attempt_row,) = history(conn, job_id)
    assert (attempt_row["attempt"], attempt_row["outcome"], attempt_row["error"]) == (
        1,
        "error",
        "ValueError: nope",
    )
    assert attempt_row["worker_id"] == "w1"
    assert attempt_row["started_at"] == row["leased_at"] <= attempt_row["ended_at"]
    assert claim(conn, queues=[row["queue"]]) == []  # not due yet


def test_fail_default_backoff_doubles_with_each_attempt(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=4)
    fail(conn, job_id, attempt, retry_in=timedelta(0))
    attempt = reclaim(conn, job_id)
    fail(conn, job_id, attempt, retry_in=timedelta(0))
    attempt = reclaim(conn, job_id)
    assert attempt == 3
    before = db_now(conn)
    assert fail(conn, job_id, attempt) == "retrying"
    after = db_now(conn)
    run_at = job(conn, job_id)["run_at"]
    assert before + timedelta(seconds=3) <= run_at <= after + timedelta(seconds=5)


def test_fail_honours_retry_in(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=2)
    before = db_now(conn)
    fail(conn, job_id, attempt, retry_in=timedelta(minutes=10))
    after = db_now(conn)
    run_at = job(conn, job_id)["run_at"]
    assert before + timedelta(minutes=10) <= run_at <= after + timedelta(minutes=10)


def test_fail_with_retry_in_zero_is_claimable_at_once(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=2)
    fail(conn, job_id, attempt, retry_in=timedelta(0))
    assert reclaim(conn, job_id) == attempt + 1


def test_fail_refuses_a_negative_retry_in(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=2)
    with pytest.raises(psycopg.Error, match="retry_in") as exc:
        fail(conn, job_id, attempt, retry_in=timedelta(seconds=-1))
    assert exc.value.sqlstate == BAD_INPUT
    assert job(conn, job_id)["status"] == "running"


def test_fail_not_retryable_is_failed_even_with_attempts_left(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=5)
    assert fail(conn, job_id, attempt, "bad input", retryable=False) == "failed"
    row = job(conn, job_id)
    assert row["status"] == "failed"
    assert row["completed_at"] is not None
    assert timestamps_in_order(row)
    assert [h["outcome"] for h in history(conn, job_id)] == ["error"]


def test_fail_with_max_attempts_1_is_failed(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=1)
    assert fail(conn, job_id, attempt, "boom", retryable=True) == "failed"
    row = job(conn, job_id)
    assert row["completed_at"] is not None
    assert row["error"] == "boom"


def test_fail_with_attempts_used_up_is_dead_letter(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=2)
    assert fail(conn, job_id, attempt, "first", retry_in=timedelta(0)) == "retrying"
    attempt = reclaim(conn, job_id, "w2")
    assert fail(conn, job_id, attempt, "second") == "dead_letter"
    row = job(conn, job_id)
    assert row["completed_at"] is not None
    assert row["error"] == "second"
    assert [(h["attempt"], h["worker_id"], h["error"]) for h in history(conn, job_id)] == [
        (1, "w1", "first"),
        (2, "w2", "second"),
    ]


def test_fail_timed_out_on_the_final_attempt_is_timeout(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=1, timeout=timedelta(seconds=1))
    assert fail(conn, job_id, attempt, "exceeded 1 s", timed_out=True) == "timeout"
    row = job(conn, job_id)
    assert row["completed_at"] is not None
    (attempt_row,) = history(conn, job_id)
    assert attempt_row["outcome"] == "timeout"
    assert attempt_row["error"] == "exceeded 1 s"


def test_fail_timed_out_with_attempts_left_is_retrying(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=2, timeout=timedelta(seconds=1))
    assert fail(conn, job_id, attempt, "too slow", timed_out=True) == "retrying"
    assert job(conn, job_id)["completed_at"] is None
    assert [h["outcome"] for h in history(conn, job_id)] == ["timeout"]


def test_fail_refuses_a_stale_lease_with_pq003(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=3)
    with pytest.raises(psycopg.Error) as exc:
        fail(conn, job_id, attempt + 1)
    assert exc.value.sqlstate == STALE_LEASE
    complete(conn, job_id, attempt)
    with pytest.raises(psycopg.Error) as exc:
        fail(conn, job_id, attempt)
    assert exc.value.sqlstate == STALE_LEASE
    assert job(conn, job_id)["status"] == "completed"
    assert [h["outcome"] for h in history(conn, job_id)] == ["completed"]


def test_fail_refuses_a_missing_job_with_pq001(conn: Conn) -> None:
    with pytest.raises(psycopg.Error) as exc:
        fail(conn, MISSING_ID, 1)
    assert exc.value.sqlstate == JOB_MISSING


def test_fail_after_release_of_a_single_attempt_job_is_failed_not_dead_letter(
    conn: Conn,
) -> None:
    job_id, attempt = start(conn, max_attempts=1)
    release(conn, job_id, attempt)
    attempt = reclaim(conn, job_id)
    assert fail(conn, job_id, attempt, "boom") == "failed"


def test_fail_reads_the_released_count_not_the_attempt_history(conn: Conn) -> None:
    """The history is for reading: with the interrupted attempts gone from it,
    a job configured without retries still ends failed."""
    job_id, attempt = start(conn, max_attempts=1)
    release(conn, job_id, attempt)
    attempt = reclaim(conn, job_id)
    release(conn, job_id, attempt)
    attempt = reclaim(conn, job_id)
    conn.execute("DELETE FROM pgqueue.attempts WHERE job_id = %s", (job_id,))
    assert (job(conn, job_id)["max_attempts"], job(conn, job_id)["released"]) == (3, 2)
    assert fail(conn, job_id, attempt, "boom") == "failed"


def test_a_job_cannot_be_given_fewer_than_one_attempt_of_its_own(conn: Conn) -> None:
    job_id, attempt = start(conn, max_attempts=1)
    release(conn, job_id, attempt)
    for released in (2, -1):  # max_attempts is 2: at most 1 handed back, never fewer than 0
        with pytest.raises(psycopg.errors.CheckViolation, match="jobs_released_range"):
            conn.execute("UPDATE pgqueue.jobs SET released = %s WHERE id = %s", (released, job_id))


# -- release ------------------------------------------------------------------------------


def test_release_hands_the_job_back_without_charging_the_attempt(conn: Conn) -> None:
    job_id, attempt = start(conn, "w1", max_attempts=1)
    before = db_now(conn)
    release(conn, job_id, attempt)
    row = job(conn, job_id)
    assert row["status"] == "pending"
    assert (row["max_attempts"], row["released"]) == (2, 1)
    assert row["attempts"] == 1
    assert row["completed_at"] is None
    assert row["run_at"] >= before
    (attempt_row,) = history(conn, job_id)
    assert (attempt_row["attempt"], attempt_row["outcome"], attempt_row["error"]) == (
        1,
        "interrupted",
        "worker shut down",
    )
    assert attempt_row["worker_id"] == "w1"
    assert reclaim(conn, job_id, "w2") == 2
    complete(conn, job_id, 2)
    assert [h["outcome"] for h in history(conn, job_id)] == ["interrupted", "completed"]


def test_release_refuses_a_stale_lease_with_pq003(conn: Conn) -> None:
    job_id, attempt = start(conn)
    with pytest.raises(psycopg.Error) as exc:
        release(conn, job_id, attempt + 1)
    assert exc.value.sqlstate == STALE_LEASE
    release(conn, job_id, attempt)
    with pytest.raises(psycopg.Error) as exc:
        release(conn, job_id, attempt)  # already handed back
    assert exc.value.sqlstate == STALE_LEASE
    assert job(conn, job_id)["max_attempts"] == 2


def test_release_refuses_a_missing_job_with_pq001(conn: Conn) -> None:
    with pytest.raises(psycopg.Error) as exc:
        release(conn, MISSING_ID, 1)
    assert exc.value.sqlstate == JOB_MISSING


# -- cancel -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["pending", "retrying", "running"])
def test_cancel_ends_pending_retrying_and_running_jobs(conn: Conn, status: str) -> None:
    job_id = job_in_state(conn, status)
    attempts_before = len(history(conn, job_id))
    before = db_now(conn)
    assert cancel(conn, job_id) == "cancelled"
    row = job(conn, job_id)
    assert row["status"] == "cancelled"
    assert row["completed_at"] >= before
    assert timestamps_in_order(row)
    recorded = history(conn, job_id)
    if status == "running":
        assert len(recorded) == attempts_before + 1
        assert recorded[-1]["outcome"] == "cancelled"
        assert recorded[-1]["attempt"] == row["attempts"]
        assert recorded[-1]["ended_at"] == row["completed_at"]
    else:
        assert len(recorded) == attempts_before
    assert claim(conn, queues=[row["queue"]]) == []


@pytest.mark.parametrize("status", TERMINAL)
def test_cancel_refuses_a_terminal_job_with_pq002(conn: Conn, status: str) -> None:
    job_id = job_in_state(conn, status)
    before = job(conn, job_id)
    with pytest.raises(psycopg.Error, match="only pending, retrying or running") as exc:
        cancel(conn, job_id)
    assert exc.value.sqlstate == WRONG_STATE
    assert job(conn, job_id) == before


def test_cancel_refuses_a_missing_job_with_pq001(conn: Conn) -> None:
    with pytest.raises(psycopg.Error) as exc:
        cancel(conn, MISSING_ID)
    assert exc.value.sqlstate == JOB_MISSING


def test_cancel_of_a_running_job_refuses_the_workers_later_calls(conn: Conn) -> None:
    job_id, attempt = start(conn, "w1", max_attempts=3)
    cancel(conn, job_id)
    after_cancel = job(conn, job_id)
    for call in (
        lambda: complete(conn, job_id, attempt, {"late": True}),
        lambda: fail(conn, job_id, attempt, "late"),
        lambda: progress(conn, job_id, attempt, 50),
        lambda: release(conn, job_id, attempt),
    ):
        with pytest.raises(psycopg.Error) as exc:
            call()
        assert exc.value.sqlstate == STALE_LEASE
    assert heartbeat(conn, "w1", [(job_id, attempt)]) == set()
    assert job(conn, job_id) == after_cancel
    assert [h["outcome"] for h in history(conn, job_id)] == ["cancelled"]


def test_cancel_of_a_running_job_tells_its_worker(conn: Conn, db_dsn: str) -> None:
    job_id, _ = start(conn)
    pending_id = enqueue(conn, queue=new_queue())
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_cancel")
        cancel(conn, pending_id)
        cancel(conn, job_id)
        payloads = [n.payload for n in listener.notifies(timeout=5.0, stop_after=1)]
    assert payloads == [str(job_id)]


# -- rescue -------------------------------------------------------------------------------


def test_rescue_retries_a_stale_heartbeat_with_attempts_left(conn: Conn) -> None:
    job_id, attempt = start(conn, "w1", max_attempts=2)
    age_heartbeat(conn, job_id)
    before = db_now(conn)
    assert rescue(conn, "1 minute") == {job_id: "retrying"}
    row = job(conn, job_id)
    assert row["status"] == "retrying"
    assert row["completed_at"] is None
    assert row["run_at"] >= before
    assert "lost" in row["error"]
    assert "w1" in row["error"]
    (attempt_row,) = history(conn, job_id)
    assert (attempt_row["attempt"], attempt_row["outcome"]) == (attempt, "lost")
    assert attempt_row["worker_id"] == "w1"
    assert attempt_row["error"] == row["error"]
    assert reclaim(conn, job_id, "w2") == 2


def test_rescue_makes_a_stale_final_attempt_a_zombie(conn: Conn) -> None:
    job_id, _ = start(conn, "w1", max_attempts=1)
    age_heartbeat(conn, job_id)
    assert rescue(conn, "1 minute") == {job_id: "zombie"}
    row = job(conn, job_id)
    assert row["completed_at"] is not None
    assert timestamps_in_order(row)
    assert [h["outcome"] for h in history(conn, job_id)] == ["lost"]


def test_rescue_times_out_an_overdue_final_attempt_despite_fresh_heartbeats(
    conn: Conn,
) -> None:
    job_id, _ = start(conn, "w1", max_attempts=1, timeout=timedelta(minutes=1))
    age_job(conn, job_id, "1 hour")
    conn.execute(
        "UPDATE pgqueue.jobs SET heartbeat_at = clock_timestamp() WHERE id = %s", (job_id,)
    )
    assert rescue(conn, "1 minute") == {job_id: "timeout"}
    row = job(conn, job_id)
    assert row["completed_at"] is not None
    assert "exceeded its timeout" in row["error"]
    (attempt_row,) = history(conn, job_id)
    assert attempt_row["outcome"] == "timeout"


def test_rescue_retries_an_overdue_attempt_with_attempts_left(conn: Conn) -> None:
    job_id, _ = start(conn, max_attempts=2, timeout=timedelta(minutes=1))
    age_job(conn, job_id, "1 hour")
    assert rescue(conn, "1 minute") == {job_id: "retrying"}
    assert [h["outcome"] for h in history(conn, job_id)] == ["timeout"]


def test_rescue_leaves_fresh_heartbeats_and_jobs_within_their_timeout_alone(
    conn: Conn,
) -> None:
    fresh, _ = start(conn)
    within, _ = start(conn, timeout=timedelta(hours=2))
    age_job(conn, within, "1 hour")
    conn.execute(
        "UPDATE pgqueue.jobs SET heartbeat_at = clock_timestamp() WHERE id = %s", (within,)
    )
    stale, _ = start(conn)
    age_heartbeat(conn, stale)
    pending = enqueue(conn)
    assert rescue(conn, "1 minute") == {stale: "zombie"}
    for job_id in (fresh, within):
        assert job(conn, job_id)["status"] == "running"
        assert history(conn, job_id) == []
    assert job(conn, pending)["status"] == "pending"


def test_rescue_takes_at_most_the_limit(conn: Conn) -> None:
    ids = [start(conn)[0] for _ in range(5)]
    for job_id in ids:
        age_heartbeat(conn, job_id)
    first = rescue(conn, "1 minute", limit=2)
    assert len(first) == 2
    second = rescue(conn, "1 minute")
    assert len(second) == 3
    assert set(first) | set(second) == set(ids)


def test_rescue_does_nothing_while_another_rescuer_runs(conn: Conn, db_dsn: str) -> None:
    job_id, _ = start(conn)
    age_heartbeat(conn, job_id)
    conn.execute("SET statement_timeout = '5s'")  # a rescue that waits fails, not hangs
    with psycopg.connect(db_dsn) as other:
        other.execute("SELECT pg_advisory_xact_lock(hashtext('pgqueue.rescue'))")
        assert rescue(conn, "1 minute") == {}
        assert job(conn, job_id)["status"] == "running"
        other.rollback()
    assert rescue(conn, "1 minute") == {job_id: "zombie"}


@pytest.mark.parametrize("stale_after", ["0 seconds", "-1 minute", None])
def test_rescue_refuses_a_stale_after_that_is_not_positive(
    conn: Conn, stale_after: str | None
) -> None:
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT * FROM pgqueue.rescue(%s::interval)", (stale_after,))
    assert exc.value.sqlstate == BAD_INPUT


def test_rescued_workers_late_calls_are_refused(conn: Conn) -> None:
    job_id, attempt = start(conn, "w1", max_attempts=2)
    age_heartbeat(conn, job_id)
    rescue(conn, "1 minute")
    new_attempt = reclaim(conn, job_id, "w2")
    with pytest.raises(psycopg.Error) as exc:
        complete(conn, job_id, attempt, {"from": "w1"})
    assert exc.value.sqlstate == STALE_LEASE
    assert heartbeat(conn, "w1", [(job_id, attempt)]) == set()
    complete(conn, job_id, new_attempt, {"from": "w2"})
    assert job(conn, job_id)["result"] == {"from": "w2"}
    assert [(h["worker_id"], h["outcome"]) for h in history(conn, job_id)] == [
        ("w1", "lost"),
        ("w2", "completed"),
    ]


# -- replay -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["failed", "timeout", "zombie", "dead_letter", "cancelled"])
def test_replay_makes_an_unsuccessful_job_pending_with_extra_attempts(
    conn: Conn, status: str
) -> None:
    job_id = job_in_state(conn, status)
    before = job(conn, job_id)
    recorded = history(conn, job_id)
    assert replay(conn, job_id, 2) == "pending"
    row = job(conn, job_id)
    assert row["status"] == "pending"
    assert row["completed_at"] is None
    assert row["max_attempts"] == before["attempts"] + 2
    assert row["attempts"] == before["attempts"]
    assert row["result"] is None
    assert row["progress"] == 0
    assert row["error"] == before["error"]  # kept for the operator
    assert history(conn, job_id) == recorded
    assert reclaim(conn, job_id) == before["attempts"] + 1


@pytest.mark.parametrize("status", ["completed", "pending", "running", "retrying"])
def test_replay_refuses_a_job_that_did_not_end_unsuccessfully_with_pq002(
    conn: Conn, status: str
) -> None:
    job_id = job_in_state(conn, status)
    before = job(conn, job_id)
    with pytest.raises(psycopg.Error, match="cannot replay") as exc:
        replay(conn, job_id)
    assert exc.value.sqlstate == WRONG_STATE
    assert job(conn, job_id) == before


def test_replay_refuses_a_missing_job_with_pq001(conn: Conn) -> None:
    with pytest.raises(psycopg.Error) as exc:
        replay(conn, MISSING_ID)
    assert exc.value.sqlstate == JOB_MISSING


@pytest.mark.parametrize("extra", [0, -1])
def test_replay_refuses_fewer_than_one_extra_attempt(conn: Conn, extra: int) -> None:
    job_id = job_in_state(conn, "failed")
    with pytest.raises(psycopg.Error) as exc:
        replay(conn, job_id, extra)
    assert exc.value.sqlstate == BAD_INPUT
    assert job(conn, job_id)["status"] == "failed"


def test_replay_keeps_counting_attempts_so_an_old_lease_stays_stale(conn: Conn) -> None:
    job_id, old_attempt = start(conn, "w1")
    cancel(conn, job_id)
    replay(conn, job_id)
    with pytest.raises(psycopg.Error) as exc:
        complete(conn, job_id, old_attempt, {"from": "old"})
    assert exc.value.sqlstate == STALE_LEASE
    new_attempt = reclaim(conn, job_id, "w2")
    assert new_attempt == old_attempt + 1
    for call in (
        lambda: complete(conn, job_id, old_attempt, {"from": "old"}),
        lambda: progress(conn, job_id, old_attempt, 10),
        lambda: fail(conn, job_id, old_attempt),
    ):
        with pytest.raises(psycopg.Error) as exc:
            call()
        assert exc.value.sqlstate == STALE_LEASE
    assert heartbeat(conn, "w1", [(job_id, old_attempt)]) == set()
    complete(conn, job_id, new_attempt, {"from": "new"})
    row = job(conn, job_id)
    assert row["result"] == {"from": "new"}
    assert timestamps_in_order(row)
    assert [(h["attempt"], h["worker_id"], h["outcome"]) for h in history(conn, job_id)] == [
        (1, "w1", "cancelled"),
        (2, "w2", "completed"),
    ]


def test_replayed_job_keeps_its_first_started_at(conn: Conn) -> None:
    job_id = job_in_state(conn, "failed")
    first_started = job(conn, job_id)["started_at"]
    replay(conn, job_id)
    attempt = reclaim(conn, job_id)
    complete(conn, job_id, attempt)
    row = job(conn, job_id)
    assert row["started_at"] == first_started
    assert timestamps_in_order(row)


# -- announcements ------------------------------------------------------------------------


def test_state_and_progress_changes_are_announced(conn: Conn, db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_job")
        job_id, attempt = start(conn)
        progress(conn, job_id, attempt, 50)
        progress(conn, job_id, attempt, 50)  # unchanged: not announced again
        complete(conn, job_id, attempt)
        payloads = [n.payload for n in listener.notifies(timeout=5.0, stop_after=3)]
    notes = [json.loads(p) for p in payloads]  # parsed outside the generator: a bad one fails
    assert [(n["id"], n["status"], n["progress"]) for n in notes] == [
        (job_id, "running", 0),
        (job_id, "running", 50),
        (job_id, "completed", 100),
    ]


def test_announcements_are_exact_json_whatever_the_text_holds(conn: Conn, db_dsn: str) -> None:
    """The payload is assembled as text: quotes, backslashes, control and
    non-ASCII characters in the queue, owner and message must come out as the
    same strings, NULLs as null, and the message cut to 200 characters."""
    queue = new_queue() + ' "q"\\ \t✓'
    owner = 'o"w\\n\ner é'
    message = 'say "hi"\\ \x01 ñ\n' + "x" * 300
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_job")
        job_id = enqueue(conn, queue=queue, owner=owner)
        (claimed,) = claim(conn, "w1", [queue])
        attempt = int(claimed["attempts"])
        progress(conn, job_id, attempt, 40, message)
        complete(conn, job_id, attempt)
        plain_id, plain_attempt = start(conn)
        complete(conn, plain_id, plain_attempt)
        payloads = [n.payload for n in listener.notifies(timeout=5.0, stop_after=5)]
    notes = [json.loads(p) for p in payloads]  # parsed outside the generator: a bad one fails
    common = {"id": job_id, "queue": queue, "owner": owner, "batch_id": None}
    assert notes[:3] == [
        {**common, "status": "running", "progress": 0, "message": None},
        {**common, "status": "running", "progress": 40, "message": message[:200]},
        {**common, "status": "completed", "progress": 100, "message": message[:200]},
    ]
    assert notes[4]["id"] == plain_id
    assert (notes[4]["owner"], notes[4]["message"], notes[4]["status"]) == (None, None, "completed")
