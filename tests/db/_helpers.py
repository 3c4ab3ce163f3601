"""Small helpers for the database tests: call the stored functions with psycopg
and read rows back as dicts. They add no logic of their own, so a test reads as
the SQL calls it makes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

import pgqueue

Conn = psycopg.Connection[Any]

TERMINAL = ("completed", "failed", "timeout", "zombie", "dead_letter", "cancelled")

# The custom SQLSTATEs of sql/functions.sql.
JOB_MISSING = "PQ001"
WRONG_STATE = "PQ002"
STALE_LEASE = "PQ003"
BAD_INPUT = "22023"


def rows(conn: Conn, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def scalar(conn: Conn, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
    row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def db_now(conn: Conn) -> datetime:
    """The server's clock (not the transaction start)."""
    return scalar(conn, "SELECT clock_timestamp()")


def new_queue() -> str:
    """A queue name no other job of the test uses."""
    return f"q_{uuid.uuid4().hex[:12]}"


def enqueue(
    conn: Conn,
    task: str = "t",
    *,
    args: dict[str, Any] | None = None,
    queue: str = "default",
    priority: int | None = None,
    run_at: datetime | None = None,
    max_attempts: int | None = None,
    timeout: timedelta | None = None,
    owner: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> int:
    return int(
        scalar(
            conn,
            "SELECT pgqueue.enqueue(%s::text, %s::jsonb, %s::text, %s::int, %s::timestamptz,"
            " %s::int, %s::interval, %s::text, %s::jsonb)",
            (
                task,
                Jsonb(args if args is not None else {}),
                queue,
                priority,
                run_at,
                max_attempts,
                timeout,
                owner,
                Jsonb(metadata if metadata is not None else {}),
            ),
        )
    )


def enqueue_many(conn: Conn, items: Sequence[dict[str, Any]]) -> list[int]:
    """pgqueue.enqueue_many with one dict per job (keys as in :func:`enqueue`)."""

    def col(key: str, default: Any = None) -> list[Any]:
        return [item.get(key, default) for item in items]

    found = conn.execute(
        "SELECT id FROM pgqueue.enqueue_many(%s::text[], %s::jsonb[], %s::text[], %s::int[],"
        " %s::timestamptz[], %s::int[], %s::interval[], %s::text[], %s::jsonb[]) AS id",
        (
            col("task", "t"),
            [Jsonb(a) if a is not None else None for a in col("args", {})],
            col("queue", "default"),
            col("priority", 0),
            col("run_at"),
            col("max_attempts", 1),
            col("timeout"),
            col("owner"),
            [Jsonb(m) if m is not None else None for m in col("metadata", {})],
        ),
    ).fetchall()
    return [int(r[0]) for r in found]


def claim(
    conn: Conn,
    worker: str = "w1",
    queues: Sequence[str] = ("default",),
    limit: int = 1,
) -> list[dict[str, Any]]:
    return rows(
        conn,
        "SELECT * FROM pgqueue.claim(%s::text, %s::text[], %s::int)",
        (worker, list(queues), limit),
    )


def start(conn: Conn, worker: str = "w1", **enqueue_kwargs: Any) -> tuple[int, int]:
    """Enqueue one job on a queue of its own and claim it: returns its lease."""
    queue = new_queue()
    job_id = enqueue(conn, queue=queue, **enqueue_kwargs)
    claimed = claim(conn, worker, [queue])
    assert [r["id"] for r in claimed] == [job_id]
    return job_id, int(claimed[0]["attempts"])


def reclaim(conn: Conn, job_id: int, worker: str = "w1") -> int:
    """Claim ``job_id`` again from its own queue (it must be due); returns the attempt."""
    queue = job(conn, job_id)["queue"]
    claimed = claim(conn, worker, [queue])
    assert [r["id"] for r in claimed] == [job_id]
    return int(claimed[0]["attempts"])


def job(conn: Conn, job_id: int) -> dict[str, Any]:
    found = rows(conn, "SELECT * FROM pgqueue.jobs WHERE id = %s", (job_id,))
    assert len(found) == 1, f"job {job_id} not found"
    return found[0]


def history(conn: Conn, job_id: int) -> list[dict[str, Any]]:
    return rows(
        conn,
        "SELECT * FROM pgqueue.attempts WHERE job_id = %s ORDER BY attempt",
        (job_id,),
    )


def heartbeat(conn: Conn, worker: str, leases: Sequence[tuple[int, int]]) -> set[tuple[int, int]]:
    found = conn.execute(
        "SELECT id, attempt FROM pgqueue.heartbeat(%s::text, %s::bigint[], %s::int[])",
        (worker, [i for i, _ in leases], [a for _, a in leases]),
    ).fetchall()
    return {(int(i), int(a)) for i, a in found}


def progress(conn: Conn, job_id: int, attempt: int, pct: Any, message: str | None = None) -> int:
    return int(
        scalar(
            conn,
            "SELECT pgqueue.progress(%s::bigint, %s::int, %s::numeric, %s::text)",
            (job_id, attempt, pct, message),
        )
    )


def complete(conn: Conn, job_id: int, attempt: int, result: Any = None) -> None:
    conn.execute(
        "SELECT pgqueue.complete(%s::bigint, %s::int, %s::jsonb)",
        (job_id, attempt, None if result is None else Jsonb(result)),
    )


def complete_many(conn: Conn, leases: Sequence[tuple[int, int, Any]]) -> set[tuple[int, int]]:
    found = conn.execute(
        "SELECT id, attempt FROM pgqueue.complete_many(%s::bigint[], %s::int[], %s::jsonb[])",
        (
            [i for i, _, _ in leases],
            [a for _, a, _ in leases],
            [Jsonb(r) for _, _, r in leases],
        ),
    ).fetchall()
    return {(int(i), int(a)) for i, a in found}


def fail(
    conn: Conn,
    job_id: int,
    attempt: int,
    error: str = "boom",
    *,
    retryable: bool = True,
    timed_out: bool = False,
    retry_in: timedelta | None = None,
) -> str:
    return str(
        scalar(
            conn,
            "SELECT pgqueue.fail(%s::bigint, %s::int, %s::text, %s::boolean, %s::boolean,"
            " %s::interval)",
            (job_id, attempt, error, retryable, timed_out, retry_in),
        )
    )


def release(conn: Conn, job_id: int, attempt: int) -> None:
    conn.execute("SELECT pgqueue.release(%s::bigint, %s::int)", (job_id, attempt))


def cancel(conn: Conn, job_id: int) -> str:
    return str(scalar(conn, "SELECT pgqueue.cancel(%s::bigint)", (job_id,)))


def rescue(conn: Conn, stale_after: str = "1 minute", limit: int = 1000) -> dict[int, str]:
    found = conn.execute(
        "SELECT id, status FROM pgqueue.rescue(%s::interval, %s::int)", (stale_after, limit)
    ).fetchall()
    return {int(i): str(s) for i, s in found}


def replay(conn: Conn, job_id: int, extra_attempts: int = 1) -> str:
    return str(scalar(conn, "SELECT pgqueue.replay(%s::bigint, %s::int)", (job_id, extra_attempts)))


def age_heartbeat(conn: Conn, job_id: int, by: str = "1 hour") -> None:
    """Make a running job's heartbeat stale without sleeping."""
    conn.execute(
        "UPDATE pgqueue.jobs SET heartbeat_at = heartbeat_at - %s::interval WHERE id = %s",
        (by, job_id),
    )


def age_job(conn: Conn, job_id: int, by: str = "1 hour") -> None:
    """Move every timestamp of a job into the past (keeps the CHECKs true):
    the job looks as if it was enqueued and leased ``by`` ago."""
    conn.execute(
        """UPDATE pgqueue.jobs
              SET created_at = created_at - %(by)s::interval,
                  run_at = run_at - %(by)s::interval,
                  started_at = started_at - %(by)s::interval,
                  leased_at = leased_at - %(by)s::interval,
                  heartbeat_at = heartbeat_at - %(by)s::interval
            WHERE id = %(id)s""",
        {"by": by, "id": job_id},
    )


def timestamps_in_order(row: dict[str, Any]) -> bool:
    """created_at <= started_at <= leased_at and completed_at after all of them."""
    created, started, leased, done = (
        row["created_at"],
        row["started_at"],
        row["leased_at"],
        row["completed_at"],
    )
    if started is not None and not created <= started:
        return False
    if leased is not None and started is not None and not started <= leased:
        return False
    if done is None:
        return True
    return done >= (started if started is not None else created) and (
        leased is None or done >= leased
    )


def job_in_state(conn: Conn, status: str, worker: str = "w1") -> int:
    """A job brought into ``status`` through the transition functions only."""
    if status == "pending":
        return enqueue(conn, queue=new_queue())
    if status == "cancelled":
        job_id = enqueue(conn, queue=new_queue())
        assert cancel(conn, job_id) == "cancelled"
        return job_id
    max_attempts = 2 if status in ("retrying", "dead_letter") else 1
    job_id, attempt = start(conn, worker, max_attempts=max_attempts)
    if status == "running":
        pass
    elif status == "retrying":
        assert fail(conn, job_id, attempt, retry_in=timedelta(hours=1)) == "retrying"
    elif status == "completed":
        complete(conn, job_id, attempt, {"ok": True})
    elif status == "failed":
        assert fail(conn, job_id, attempt, retryable=False) == "failed"
    elif status == "timeout":
        assert fail(conn, job_id, attempt, "too slow", timed_out=True) == "timeout"
    elif status == "zombie":
        age_heartbeat(conn, job_id)
        assert rescue(conn) == {job_id: "zombie"}
    elif status == "dead_letter":
        assert fail(conn, job_id, attempt, retry_in=timedelta(0)) == "retrying"
        attempt = reclaim(conn, job_id, worker)
        assert fail(conn, job_id, attempt) == "dead_letter"
    else:
        raise AssertionError(f"unknown status {status}")
    assert job(conn, job_id)["status"] == status
    return job_id


def noop_task(q: pgqueue.Queue) -> pgqueue.Task[None]:
    """Register a task ``t(ctx)`` that does nothing on ``q``."""

    async def t(ctx: pgqueue.JobContext) -> None:
        return None

    return q.task(t)
