"""pgqueue.JobStatus mirrors the database enum pgqueue.job_status, and
pgqueue.TERMINAL_STATUSES is exactly what the database treats as terminal."""

from __future__ import annotations

import re

import psycopg
import pytest

import pgqueue

from ._helpers import Conn, rows

SHARED_DATABASE = True  # one database per module, emptied before each test (conftest.py)


def database_statuses(conn: Conn) -> list[str]:
    return [
        r["enumlabel"]
        for r in rows(
            conn,
            """SELECT e.enumlabel
                 FROM pg_enum e
                 JOIN pg_type t ON t.oid = e.enumtypid
                 JOIN pg_namespace n ON n.oid = t.typnamespace
                WHERE n.nspname = 'pgqueue' AND t.typname = 'job_status'
                ORDER BY e.enumsortorder""",
        )
    ]


def test_python_job_status_equals_the_database_enum_in_values_and_order(conn: Conn) -> None:
    assert [s.value for s in pgqueue.JobStatus] == database_statuses(conn)


def test_terminal_statuses_equal_those_of_the_terminal_iff_completed_at_constraint(
    conn: Conn,
) -> None:
    definition = rows(
        conn,
        """SELECT pg_get_constraintdef(oid) AS def
             FROM pg_constraint
            WHERE conname = 'jobs_terminal_iff_completed_at'
              AND conrelid = 'pgqueue.jobs'::regclass""",
    )[0]["def"]
    in_constraint = set(re.findall(r"'(\w+)'::pgqueue\.job_status", definition))
    assert in_constraint, definition
    assert {s.value for s in pgqueue.TERMINAL_STATUSES} == in_constraint


@pytest.mark.parametrize("status", list(pgqueue.JobStatus))
def test_is_terminal_matches_what_the_database_accepts(
    conn: Conn, status: pgqueue.JobStatus
) -> None:
    """A row in ``status`` is accepted with completed_at set iff it is terminal,
    and without completed_at iff it is not."""
    lease = "attempts, worker_id, started_at, leased_at, heartbeat_at"
    sql = (
        f"INSERT INTO pgqueue.jobs (task, status, completed_at, {lease})"
        " VALUES ('t', %s::pgqueue.job_status, %s, 1, 'w1', now(), now(), now())"
    )
    with conn.transaction():
        conn.execute(sql, (status.value, None if not status.is_terminal else "now"))
    with pytest.raises(psycopg.errors.CheckViolation) as exc:
        conn.execute(sql, (status.value, "now" if not status.is_terminal else None))
    assert exc.value.diag.constraint_name == "jobs_terminal_iff_completed_at"


def test_python_batch_status_equals_the_database_enum_in_values_and_order(conn: Conn) -> None:
    labels = [
        r["enumlabel"]
        for r in rows(
            conn,
            """SELECT e.enumlabel
                 FROM pg_enum e
                 JOIN pg_type t ON t.oid = e.enumtypid
                 JOIN pg_namespace n ON n.oid = t.typnamespace
                WHERE n.nspname = 'pgqueue' AND t.typname = 'batch_status'
                ORDER BY e.enumsortorder""",
        )
    ]
    assert [s.value for s in pgqueue.BatchStatus] == labels


def test_batch_final_statuses_equal_those_of_the_final_iff_completed_at_constraint(
    conn: Conn,
) -> None:
    definition = rows(
        conn,
        "SELECT pg_get_constraintdef(oid) AS d FROM pg_constraint"
        " WHERE conname = 'batches_final_iff_completed_at'",
    )[0]["d"]
    named = set(re.findall(r"'(\w+)'", definition))
    assert named == {s.value for s in pgqueue.BatchStatus if s.is_final}
