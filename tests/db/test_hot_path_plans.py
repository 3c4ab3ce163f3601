"""complete_many and heartbeat find a worker's leases by primary key, however
many jobs the whole fleet is running.

With statistics taken while few jobs ran (the usual case: ANALYZE sees a
queue between bursts), the planner once preferred the indexes on status and
scanned every running job of every worker for each call: 45 ms per 100
completions at 5,000 running jobs, 190 ms at 20,000. The functions now test
status in a form no index serves. This is checked from the statistics
collector: over a call, neither index on status may start a scan, and the
primary key must.
"""

from __future__ import annotations

from typing import Any

import psycopg

STATUS_INDEXES = ("jobs_status_idx", "jobs_running_idx")


def _scans(conn: psycopg.Connection[Any]) -> dict[str, int]:
    conn.execute("SELECT pg_stat_force_next_flush()")  # this session's counts so far
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(
        "SELECT indexrelname::text, idx_scan FROM pg_stat_user_indexes"
        " WHERE schemaname = 'pgqueue' AND relname = 'jobs'"
    ).fetchall()
    return {name: int(n) for name, n in rows}


def _fleet(conn: psycopg.Connection[Any]) -> list[tuple[int, int]]:
    """20,000 jobs running for other workers, analyzed before they ran, and
    100 leases of our own."""
    conn.execute(
        "TRUNCATE pgqueue.jobs, pgqueue.attempts, pgqueue.progress_history, pgqueue.batches"
    )
    conn.execute(
        "INSERT INTO pgqueue.jobs (task, queue) SELECT 'noop', 'fleet'"
        " FROM generate_series(1, 30000)"
    )
    conn.execute("ANALYZE pgqueue.jobs")
    conn.execute("SELECT count(*) FROM pgqueue.claim('others', '{fleet}', 20000)")
    rows = conn.execute("SELECT id, attempts FROM pgqueue.claim('me', '{fleet}', 100)").fetchall()
    assert len(rows) == 100
    return [(int(r[0]), int(r[1])) for r in rows]


def _assert_by_primary_key(before: dict[str, int], after: dict[str, int]) -> None:
    for index in STATUS_INDEXES:
        assert after[index] == before[index], f"{index} was scanned: {before} -> {after}"
    assert after["jobs_pkey"] > before["jobs_pkey"], (before, after)


def test_complete_many_finds_leases_by_primary_key_among_20000_running(
    conn: psycopg.Connection[Any],
) -> None:
    leases = _fleet(conn)
    ids, attempts = [i for i, _ in leases], [a for _, a in leases]
    for chunk in range(0, 100, 10):  # past the 5 calls after which plpgsql may go generic
        before = _scans(conn)
        done = conn.execute(
            "SELECT id FROM pgqueue.complete_many(%s::bigint[], %s::int[], %s::jsonb[])",
            (ids[chunk : chunk + 10], attempts[chunk : chunk + 10], ["1"] * 10),
        ).fetchall()
        assert len(done) == 10
        _assert_by_primary_key(before, _scans(conn))


def test_heartbeat_finds_leases_by_primary_key_among_20000_running(
    conn: psycopg.Connection[Any],
) -> None:
    leases = _fleet(conn)
    ids, attempts = [i for i, _ in leases], [a for _, a in leases]
    for _ in range(10):
        before = _scans(conn)
        beats = conn.execute(
            "SELECT id FROM pgqueue.heartbeat('me', %s::bigint[], %s::int[])", (ids, attempts)
        ).fetchall()
        assert len(beats) == 100
        _assert_by_primary_key(before, _scans(conn))
