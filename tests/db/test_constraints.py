"""The CHECK constraints on pgqueue.jobs and pgqueue.attempts reject bad direct
writes, whoever makes them; the stored functions rely on them as the last line
of defence, so each one is shown to fire (and a valid row to pass)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from ._helpers import TERMINAL, Conn, job, rows

SHARED_DATABASE = True  # one database per module, emptied before each test (conftest.py)


def insert_job(conn: Conn, **columns: Any) -> int:
    """INSERT a job row directly (no stored function), with the given columns."""
    columns.setdefault("task", "t")
    names = ", ".join(columns)
    marks = ", ".join(f"%({name})s" for name in columns)
    (row,) = rows(
        conn, f"INSERT INTO pgqueue.jobs ({names}) VALUES ({marks}) RETURNING id", columns
    )  # type: ignore[arg-type]
    return int(row["id"])


def valid_completed_job(conn: Conn) -> int:
    """A completed job whose every timestamp is set, one second apart, in order."""
    return int(
        rows(
            conn,
            """INSERT INTO pgqueue.jobs (task, status, attempts, max_attempts, created_at,
                                         started_at, leased_at, heartbeat_at, completed_at,
                                         worker_id, progress, result)
               VALUES ('t', 'completed', 1, 1, now() - interval '4 s', now() - interval '3 s',
                       now() - interval '2 s', now() - interval '2 s', now() - interval '1 s',
                       'w1', 100, '{"ok": true}')
               RETURNING id""",
        )[0]["id"]
    )


def assert_rejected(conn: Conn, constraint: str, sql: str, params: Any = ()) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as exc:
        conn.execute(sql, params)
    assert exc.value.diag.constraint_name == constraint


def test_a_consistent_completed_row_is_accepted(conn: Conn) -> None:
    job_id = valid_completed_job(conn)
    assert job(conn, job_id)["status"] == "completed"


def test_completed_at_before_started_at_is_rejected(conn: Conn) -> None:
    job_id = valid_completed_job(conn)
    before = job(conn, job_id)
    assert_rejected(
        conn,
        "jobs_completed_after_started",
        "UPDATE pgqueue.jobs SET completed_at = started_at - interval '1 ms' WHERE id = %s",
        (job_id,),
    )
    assert job(conn, job_id) == before


def test_completed_at_before_created_at_of_a_never_started_job_is_rejected(
    conn: Conn,
) -> None:
    assert_rejected(
        conn,
        "jobs_completed_after_started",
        "INSERT INTO pgqueue.jobs (task, status, completed_at)"
        " VALUES ('t', 'cancelled', now() - interval '1 s')",
    )


def test_started_at_before_created_at_is_rejected(conn: Conn) -> None:
    job_id = valid_completed_job(conn)
    assert_rejected(
        conn,
        "jobs_started_after_created",
        "UPDATE pgqueue.jobs SET started_at = created_at - interval '1 ms' WHERE id = %s",
        (job_id,),
    )


def test_leased_at_before_started_at_is_rejected(conn: Conn) -> None:
    job_id = valid_completed_job(conn)
    assert_rejected(
        conn,
        "jobs_leased_after_started",
        "UPDATE pgqueue.jobs SET leased_at = started_at - interval '1 ms' WHERE id = %s",
        (job_id,),
    )


@pytest.mark.parametrize("status", TERMINAL)
def test_terminal_job_without_completed_at_is_rejected(conn: Conn, status: str) -> None:
    assert_rejected(
        conn,
        "jobs_terminal_iff_completed_at",
        "INSERT INTO pgqueue.jobs (task, status) VALUES ('t', %s::pgqueue.job_status)",
        (status,),
    )
    job_id = valid_completed_job(conn)
    assert_rejected(
        conn,
        "jobs_terminal_iff_completed_at",
        "UPDATE pgqueue.jobs SET status = %s::pgqueue.job_status, completed_at = NULL"
        " WHERE id = %s",
        (status, job_id),
    )


@pytest.mark.parametrize("status", ["pending", "retrying", "running"])
def test_completed_at_on_a_job_that_is_not_terminal_is_rejected(conn: Conn, status: str) -> None:
    job_id = valid_completed_job(conn)
    assert_rejected(
        conn,
        "jobs_terminal_iff_completed_at",
        "UPDATE pgqueue.jobs SET status = %s::pgqueue.job_status WHERE id = %s",
        (status, job_id),
    )


@pytest.mark.parametrize("value", [101, -1, 32767])
def test_progress_outside_0_100_is_rejected(conn: Conn, value: int) -> None:
    job_id = insert_job(conn)
    assert_rejected(
        conn,
        "jobs_progress_range",
        "UPDATE pgqueue.jobs SET progress = %s WHERE id = %s",
        (value, job_id),
    )
    assert job(conn, job_id)["progress"] == 0


def test_attempts_above_max_attempts_is_rejected(conn: Conn) -> None:
    job_id = insert_job(conn, max_attempts=2)
    conn.execute("UPDATE pgqueue.jobs SET attempts = 2 WHERE id = %s", (job_id,))
    assert_rejected(
        conn,
        "jobs_attempts_range",
        "UPDATE pgqueue.jobs SET attempts = 3 WHERE id = %s",
        (job_id,),
    )
    assert_rejected(
        conn,
        "jobs_attempts_range",
        "UPDATE pgqueue.jobs SET max_attempts = 1 WHERE id = %s",
        (job_id,),
    )
    assert_rejected(
        conn,
        "jobs_attempts_range",
        "UPDATE pgqueue.jobs SET attempts = -1 WHERE id = %s",
        (job_id,),
    )


def test_max_attempts_below_one_is_rejected(conn: Conn) -> None:
    assert_rejected(
        conn,
        "jobs_max_attempts_positive",
        "INSERT INTO pgqueue.jobs (task, max_attempts) VALUES ('t', 0)",
    )


@pytest.mark.parametrize(
    "missing",
    ["worker_id = NULL", "leased_at = NULL", "heartbeat_at = NULL", "attempts = 0"],
)
def test_running_job_without_its_lease_fields_is_rejected(conn: Conn, missing: str) -> None:
    job_id = insert_job(conn)
    lease = (
        "status = 'running', attempts = 1, worker_id = 'w1', started_at = created_at,"
        " leased_at = created_at, heartbeat_at = created_at"
    )
    conn.execute(f"UPDATE pgqueue.jobs SET {lease} WHERE id = %s", (job_id,))  # type: ignore[arg-type]
    assert job(conn, job_id)["status"] == "running"
    assert_rejected(
        conn,
        "jobs_running_has_lease",
        f"UPDATE pgqueue.jobs SET {missing} WHERE id = %s",  # type: ignore[arg-type]
        (job_id,),
    )


@pytest.mark.parametrize(
    ("constraint", "columns"),
    [
        ("jobs_queue_valid", {"queue": ""}),
        ("jobs_queue_valid", {"queue": "q" * 129}),
        ("jobs_task_valid", {"task": ""}),
        ("jobs_task_valid", {"task": "t" * 257}),
        ("jobs_args_object", {"args": "[]"}),
        ("jobs_metadata_object", {"metadata": "1"}),
        ("jobs_timeout_positive", {"timeout": "0 s"}),
        ("jobs_timeout_positive", {"timeout": "-5 s"}),
    ],
)
def test_invalid_job_fields_are_rejected(
    conn: Conn, constraint: str, columns: dict[str, str]
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as exc:
        insert_job(conn, **columns)
    assert exc.value.diag.constraint_name == constraint
    assert rows(conn, "SELECT id FROM pgqueue.jobs") == []


def test_attempt_ending_before_it_started_is_rejected(conn: Conn) -> None:
    job_id = valid_completed_job(conn)
    assert_rejected(
        conn,
        "attempts_ended_after_started",
        "INSERT INTO pgqueue.attempts (job_id, attempt, worker_id, started_at, ended_at, outcome)"
        " VALUES (%s, 1, 'w1', now(), now() - interval '1 ms', 'completed')",
        (job_id,),
    )


def test_attempt_with_an_unknown_outcome_is_rejected(conn: Conn) -> None:
    job_id = valid_completed_job(conn)
    assert_rejected(
        conn,
        "attempts_outcome_valid",
        "INSERT INTO pgqueue.attempts (job_id, attempt, worker_id, started_at, ended_at, outcome)"
        " VALUES (%s, 1, 'w1', now(), now(), 'succeeded')",
        (job_id,),
    )
