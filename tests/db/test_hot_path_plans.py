"""complete_many and heartbeat find a worker's leases by primary key, however
many jobs the whole fleet is running.

With statistics taken while few jobs ran (the usual case: ANALYZE sees a
queue between bursts), the planner once preferred the indexes on status and
scanned every running job of every worker for each call: 45 ms per 100
completions at 5,000 running jobs, 190 ms at 20,000. The functions now test
status in a form no index serves. This is checked from the statistics
collector: over a call, neither index on status may start a scan, and the
primary key must.

The same must hold for plans a session made while the table was empty, or
analyzed while empty: PL/pgSQL kept such a plan, which reads the table
whole, for the session, and after a burst of jobs every claim, completion and
heartbeat read every job until the next ANALYZE.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

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


def _reads(conn: psycopg.Connection[Any]) -> tuple[int, int, dict[str, int]]:
    """Of ``pgqueue.jobs`` as seen by ``conn``'s own session (its counts are
    flushed first): sequential scans, index entries read, scans per index."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT seq_scan, (SELECT sum(idx_tup_read) FROM pg_stat_user_indexes"
        "                   WHERE relid = 'pgqueue.jobs'::regclass)"
        "  FROM pg_stat_user_tables WHERE relid = 'pgqueue.jobs'::regclass"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), _scans(conn)


@pytest.mark.parametrize("emptied", ["never-analyzed", "analyzed-empty", "vacuumed-empty"])
def test_plans_made_on_an_empty_table_do_not_read_a_later_backlog_whole(
    conn: psycopg.Connection[Any], db_dsn: str, emptied: str
) -> None:
    """A worker's session plans its calls while the queue is empty; then a
    burst of 20,000 jobs arrives, before any ANALYZE. Its claims, completions
    and heartbeats must still go by index, one entry per job: no sequential
    scan of the jobs, no index read whole, no index on status."""
    conn.execute("ALTER TABLE pgqueue.jobs SET (autovacuum_enabled = false)")
    if emptied == "analyzed-empty":
        conn.execute("ANALYZE pgqueue.jobs")
    elif emptied == "vacuumed-empty":  # as after a prune, then a worker's VACUUM
        conn.execute(
            "INSERT INTO pgqueue.jobs (task, queue) SELECT 'noop', 'old'"
            " FROM generate_series(1, 20000)"
        )
        conn.execute("DELETE FROM pgqueue.jobs")
        conn.execute("VACUUM (TRUNCATE false) pgqueue.jobs")
    with psycopg.connect(db_dsn, autocommit=True) as worker:
        for _ in range(8):  # past the 5 calls after which plpgsql may go generic
            claimed = worker.execute("SELECT id FROM pgqueue.claim('w', '{burst}', 100)")
            assert claimed.fetchall() == []
            worker.execute("SELECT * FROM pgqueue.complete_many('{}', '{}', '{}')")
            worker.execute("SELECT * FROM pgqueue.heartbeat('w', '{}', '{}')")
        conn.execute(
            "INSERT INTO pgqueue.jobs (task, queue) SELECT 'noop', 'burst'"
            " FROM generate_series(1, 20000)"
        )
        seq_before, read_before, scans_before = _reads(worker)
        for _ in range(3):
            rows = worker.execute(
                "SELECT id, attempts FROM pgqueue.claim('w', '{burst}', 100)"
            ).fetchall()
            assert len(rows) == 100
            ids, attempts = [int(r[0]) for r in rows], [int(r[1]) for r in rows]
            beats = worker.execute(
                "SELECT id FROM pgqueue.heartbeat('w', %s::bigint[], %s::int[])", (ids, attempts)
            ).fetchall()
            assert len(beats) == 100
            done = worker.execute(
                "SELECT id FROM pgqueue.complete_many(%s::bigint[], %s::int[], %s::jsonb[])",
                (ids, attempts, ["1"] * 100),
            ).fetchall()
            assert len(done) == 100
        seq_after, read_after, scans_after = _reads(worker)
    assert seq_after == seq_before, "a plan made on the empty table read the jobs whole"
    # 300 jobs claimed, beaten and completed: a few entries each, not the 20,000
    assert read_after - read_before < 5_000, (read_before, read_after)
    _assert_by_primary_key(scans_before, scans_after)
