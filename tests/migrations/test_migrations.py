"""The alembic migrations against the schema files, and their life cycle.

- A database built from ``sql/schema.sql`` + ``sql/functions.sql`` must have the
  same catalog as one built by the frozen alembic revisions.
- Downgrading to the tables-only revision drops the code but keeps every job
  row; upgrading again restores a working queue over the same rows.
- Revision 0003 (batches) upgrades a database holding jobs of every state and
  downgrades cleanly, batches and all.
- Revision 0004 (unique jobs, periodic ticks) does the same.
- Revision 0005 (concurrency keys) does the same.
- Revision 0006 (rate limits per queue) does the same, over a paused queue too.
- Revision 0007 (the cheaper hot path) does the same; its jobs_deleted trigger
  deletes a deleted job's attempts as the foreign key it replaces did.
- Revision 0008 (the lean claim) changes one function; its downgrade restores
  0007's catalog exactly.
- Revision 0015 (the released column) counts the attempts each job was
  handed back from its history, and fail() decides by it either way.
- pgqueue keeps its own version table and never touches an application's own
  ``alembic_version``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest

import pgqueue
from pgqueue import _migrate, _sql

from . import catalog


def _execute_script(dsn: str, script: str) -> None:
    with psycopg.connect(dsn) as conn:  # one transaction
        conn.execute(script)  # type: ignore[arg-type]


# The columns of pgqueue.jobs since revision 0001 (later revisions add columns).
JOB_COLUMNS_0001 = (
    "id, queue, task, args, status, priority, run_at, attempts, max_attempts, timeout,"
    " created_at, started_at, leased_at, completed_at, heartbeat_at, lease_timeout, worker_id,"
    " progress, progress_message, result, error, owner, batch_id, metadata"
)


def _table_rows(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {
            "jobs": conn.execute(
                f"SELECT {JOB_COLUMNS_0001} FROM pgqueue.jobs ORDER BY id"  # type: ignore[arg-type]
            ).fetchall(),
            "attempts": conn.execute(
                "SELECT * FROM pgqueue.attempts ORDER BY job_id, attempt"
            ).fetchall(),
            # the columns of revision 0001 (0006 adds rate limits)
            "queues": conn.execute(
                "SELECT name, paused, updated_at FROM pgqueue.queues ORDER BY name"
            ).fetchall(),
        }


def _regclass(conn: psycopg.Connection[Any], name: str) -> Any:
    row = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
    assert row is not None
    return row[0]


def _pgqueue_function_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'pgqueue'"
    ).fetchone()
    assert row is not None
    return int(row[0])


# -- schema files == migrations -------------------------------------------------------------


def test_migrated_schema_equals_schema_sql(empty_db_dsn: str, second_empty_db_dsn: str) -> None:
    from_files, from_migrations = empty_db_dsn, second_empty_db_dsn
    _execute_script(from_files, _sql.install_script())
    pgqueue.migrate(from_migrations)

    a = catalog.snapshot(from_files)
    b = catalog.snapshot(from_migrations)

    # Non-trivial: the comparison cannot pass on two empty schemas.
    relations = {row[0] for row in a["relations"]}
    assert {"jobs", "attempts", "queues", "batches", "progress_history"} <= relations
    assert len(a["functions"]) >= 10, a["functions"]
    assert len(a["triggers"]) >= 2, a["triggers"]
    assert len(a["constraints"]) >= 10
    job_labels = [row[2] for row in a["enum_labels"] if row[0] == "job_status"]
    assert job_labels == [s.value for s in pgqueue.JobStatus]
    assert catalog.VERSION_TABLE not in {row[0] for row in b["relations"]}

    difference = catalog.diff(a, b, "sql/schema.sql + sql/functions.sql", "alembic migrations")
    assert a == b, "schema files and migrations differ:\n" + difference


def test_the_schema_serves_this_release_built_either_way(
    empty_db_dsn: str, second_empty_db_dsn: str
) -> None:
    """pgqueue.served_revisions is data, which the catalog comparison does not
    see: schema.sql and the migrations must list the same releases, this one
    among them (readiness during a rolling deploy reads it)."""
    _execute_script(empty_db_dsn, _sql.install_script())
    pgqueue.migrate(second_empty_db_dsn)
    served = []
    for dsn in (empty_db_dsn, second_empty_db_dsn):
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT revision FROM pgqueue.served_revisions ORDER BY 1")
            served.append([r[0] for r in rows])
    assert served[0] == served[1]
    assert pgqueue.head_revision() in served[0]


def test_snapshot_detects_a_difference(empty_db_dsn: str, second_empty_db_dsn: str) -> None:
    """The comparison is sensitive: one changed function body shows up in the diff."""
    pgqueue.migrate(empty_db_dsn)
    pgqueue.migrate(second_empty_db_dsn)
    with psycopg.connect(second_empty_db_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION pgqueue.retry_backoff(p_attempt integer)"
            " RETURNS interval LANGUAGE sql VOLATILE AS $$ SELECT interval '1 second' $$"
        )
    a, b = catalog.snapshot(empty_db_dsn), catalog.snapshot(second_empty_db_dsn)
    assert a != b
    assert "retry_backoff" in catalog.diff(a, b)


# -- downgrade and upgrade keep the data ----------------------------------------------------


def _seed_jobs(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """One job in each of several states, made only through the stored functions.
    Each job gets its own queue so each claim picks exactly that job."""

    def enqueue(queue: str, max_attempts: int = 1) -> int:
        row = conn.execute(
            "SELECT pgqueue.enqueue('seed', %s::jsonb, %s, p_max_attempts => %s)",
            (f'{{"queue": "{queue}"}}', queue, max_attempts),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def claim(queue: str) -> tuple[int, int]:
        rows = conn.execute(
            "SELECT id, attempts FROM pgqueue.claim('seed-worker', ARRAY[%s], 1)", (queue,)
        ).fetchall()
        assert len(rows) == 1, f"nothing claimable in {queue}"
        return int(rows[0][0]), int(rows[0][1])

    ids = {
        "pending": enqueue("q-pending"),
        "running": enqueue("q-running", max_attempts=2),
        "completed": enqueue("q-completed"),
        "retrying": enqueue("q-retrying", max_attempts=3),
        "failed": enqueue("q-failed", max_attempts=3),
        "cancelled": enqueue("q-cancelled"),
    }
    claim("q-running")
    job, attempt = claim("q-completed")
    conn.execute("SELECT pgqueue.complete(%s, %s, '{\"ok\": true}')", (job, attempt))
    job, attempt = claim("q-retrying")
    status = conn.execute(
        "SELECT pgqueue.fail(%s, %s, 'boom', true, false, interval '0')", (job, attempt)
    ).fetchone()
    assert status == ("retrying",)
    job, attempt = claim("q-failed")
    status = conn.execute("SELECT pgqueue.fail(%s, %s, 'fatal', false)", (job, attempt)).fetchone()
    assert status == ("failed",)
    conn.execute("SELECT pgqueue.cancel(%s)", (ids["cancelled"],))
    conn.execute("SELECT pgqueue.pause_queue('q-paused')")

    statuses = dict(conn.execute("SELECT id, status::text FROM pgqueue.jobs").fetchall())
    assert {statuses[i] for i in ids.values()} == set(ids)
    return ids


def test_upgrade_downgrade_upgrade_keeps_job_rows(empty_db_dsn: str) -> None:
    dsn = empty_db_dsn
    pgqueue.migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = _seed_jobs(conn)
    before = _table_rows(dsn)
    assert len(before["jobs"]) == 6
    assert len(before["attempts"]) == 3  # completed, retried and failed attempts
    head = pgqueue.head_revision()

    _migrate.downgrade(dsn, "0001")

    assert pgqueue.current_revision(dsn) == "0001"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _pgqueue_function_count(conn) == 0
        triggers = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'pgqueue.jobs'::regclass"
            " AND NOT tgisinternal"
        ).fetchone()
        assert triggers == (0,)
        with pytest.raises(psycopg.errors.UndefinedFunction):
            conn.execute("SELECT pgqueue.enqueue('x')")
    assert _table_rows(dsn) == before, "downgrade -1 changed the job rows"

    pgqueue.migrate(dsn)

    assert pgqueue.current_revision(dsn) == head
    assert _table_rows(dsn) == before, "upgrade changed the job rows"

    # The old rows still move through the (re-created) functions.
    with psycopg.connect(dsn, autocommit=True) as conn:
        # the running job: its lease (attempt 1) is still valid and can complete
        conn.execute("SELECT pgqueue.complete(%s, 1, '\"late but valid\"')", (ids["running"],))
        # the pending and retrying jobs are claimable and completable
        for key in ("pending", "retrying"):
            queue = f"q-{key}"
            rows = conn.execute(
                "SELECT id, attempts FROM pgqueue.claim('w2', ARRAY[%s], 5)", (queue,)
            ).fetchall()
            assert [r[0] for r in rows] == [ids[key]]
            conn.execute("SELECT pgqueue.complete(%s, %s, '1')", (rows[0][0], rows[0][1]))
        # the terminal ones can be replayed
        assert conn.execute("SELECT pgqueue.replay(%s)", (ids["failed"],)).fetchone() == (
            "pending",
        )
        # and new jobs get fresh ids after the old ones
        new_id = conn.execute("SELECT pgqueue.enqueue('new')").fetchone()
        assert new_id is not None and new_id[0] > max(ids.values())
        statuses = dict(conn.execute("SELECT id, status::text FROM pgqueue.jobs").fetchall())
        paused = conn.execute("SELECT paused FROM pgqueue.queues WHERE name = 'q-paused'")
        assert paused.fetchone() == (True,)
    assert statuses[ids["running"]] == "completed"
    assert statuses[ids["pending"]] == "completed"
    assert statuses[ids["retrying"]] == "completed"
    assert statuses[ids["completed"]] == "completed"
    assert statuses[ids["failed"]] == "pending"
    assert statuses[ids["cancelled"]] == "cancelled"


def _seed_other_terminal_states(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """timeout, dead_letter and zombie jobs, made through the stored functions."""

    def enqueue_and_claim(queue: str, max_attempts: int, lease: str = "20 seconds") -> int:
        conn.execute(
            "SELECT pgqueue.enqueue('seed', '{}', %s, p_max_attempts => %s)", (queue, max_attempts)
        )
        row = conn.execute(
            "SELECT id FROM pgqueue.claim('seed-worker', ARRAY[%s], 1, %s::interval)",
            (queue, lease),
        ).fetchone()
        assert row is not None
        return int(row[0])

    timeout = enqueue_and_claim("q-timeout", 1)
    conn.execute("SELECT pgqueue.fail(%s, 1, 'too slow', true, true)", (timeout,))
    dead = enqueue_and_claim("q-dead", 2)
    conn.execute("SELECT pgqueue.fail(%s, 1, 'boom', true, false, interval '0')", (dead,))
    conn.execute("SELECT id FROM pgqueue.claim('seed-worker', ARRAY['q-dead'], 1)")
    conn.execute("SELECT pgqueue.fail(%s, 2, 'boom again', true, false)", (dead,))
    zombie = enqueue_and_claim("q-zombie", 1, lease="1 millisecond")
    time.sleep(0.05)
    conn.execute("SELECT * FROM pgqueue.rescue(interval '1 millisecond')")
    ids = {"timeout": timeout, "dead_letter": dead, "zombie": zombie}
    statuses = dict(conn.execute("SELECT id, status::text FROM pgqueue.jobs").fetchall())
    assert {key: statuses[i] for key, i in ids.items()} == {key: key for key in ids}
    return ids


def test_batches_revision_upgrades_jobs_of_every_state_and_downgrades_cleanly(
    empty_db_dsn: str,
) -> None:
    dsn = empty_db_dsn
    _migrate.upgrade(dsn, "0002")
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = _seed_jobs(conn) | _seed_other_terminal_states(conn)
        statuses = dict(conn.execute("SELECT id, status::text FROM pgqueue.jobs").fetchall())
    assert set(statuses.values()) == {s.value for s in pgqueue.JobStatus}
    before = _table_rows(dsn)

    _migrate.upgrade(dsn, "0003")

    assert _table_rows(dsn) == before, "upgrade to 0003 changed the job rows"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT bool_or(paused) FROM pgqueue.jobs").fetchone() == (False,)
        # the old rows move on under the new functions
        conn.execute("SELECT pgqueue.complete(%s, 1, '1')", (ids["running"],))
        rows = conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['q-pending'], 5)").fetchall()
        assert rows == [(ids["pending"],)]
        assert conn.execute("SELECT pgqueue.replay(%s)", (ids["zombie"],)).fetchone() == (
            "pending",
        )
        # and batches work next to them
        batch = conn.execute(
            "SELECT pgqueue.enqueue_batch(ARRAY['child', 'child'], ARRAY['{}', '{}']::jsonb[],"
            " ARRAY['q-batch', 'q-batch'], ARRAY[0, 0], ARRAY[NULL, NULL]::timestamptz[],"
            " ARRAY[1, 1], ARRAY[NULL, NULL]::interval[], ARRAY['{}', '{}']::jsonb[])"
        ).fetchone()
        assert batch is not None
        claimed = conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['q-batch'], 1)").fetchall()
        assert len(claimed) == 1
        counts = conn.execute(
            "SELECT status::text, pending, running FROM pgqueue.batches WHERE id = %s", batch
        ).fetchone()
        assert counts == ("running", 1, 1)
    upgraded = _table_rows(dsn)

    _migrate.downgrade(dsn, "0002")

    assert pgqueue.current_revision(dsn) == "0002"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("pgqueue.batches", "pgqueue.progress_history"):
            assert _regclass(conn, table) is None, f"{table} survived the downgrade"
        assert conn.execute("SELECT to_regtype('pgqueue.batch_status')").fetchone() == (None,)
        assert conn.execute(
            "SELECT count(*) FROM pgqueue.jobs WHERE batch_id IS NOT NULL"
        ).fetchone() == (0,)
        # 0002's functions are back, with 0002's signatures
        new = conn.execute(
            "SELECT * FROM pgqueue.enqueue_many(ARRAY['x'], ARRAY['{}']::jsonb[], ARRAY['q'],"
            " ARRAY[0], ARRAY[NULL]::timestamptz[], ARRAY[1], ARRAY[NULL]::interval[],"
            " ARRAY[NULL]::text[], ARRAY['{}']::jsonb[])"
        ).fetchall()
        assert len(new) == 1
    downgraded = _table_rows(dsn)
    # every row is kept; children only lose their batch
    assert len(downgraded["jobs"]) == len(upgraded["jobs"]) + 1
    assert downgraded["attempts"] == upgraded["attempts"]

    pgqueue.migrate(dsn)
    assert pgqueue.current_revision(dsn) == pgqueue.head_revision()


def test_scheduling_revision_upgrades_jobs_of_every_state_and_downgrades_cleanly(
    empty_db_dsn: str,
) -> None:
    dsn = empty_db_dsn
    _migrate.upgrade(dsn, "0003")
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = _seed_jobs(conn) | _seed_other_terminal_states(conn)
        statuses = dict(conn.execute("SELECT id, status::text FROM pgqueue.jobs").fetchall())
    assert set(statuses.values()) == {s.value for s in pgqueue.JobStatus}
    before = _table_rows(dsn)

    _migrate.upgrade(dsn, "0004")

    assert _table_rows(dsn) == before, "upgrade to 0004 changed the job rows"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pgqueue.jobs WHERE dedupe_key IS NOT NULL"
        ).fetchone() == (0,)
        # the old rows move on under the new functions
        conn.execute("SELECT pgqueue.complete(%s, 1, '1')", (ids["running"],))
        rows = conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['q-pending'], 5)").fetchall()
        assert rows == [(ids["pending"],)]
        assert conn.execute("SELECT pgqueue.replay(%s)", (ids["dead_letter"],)).fetchone() == (
            "pending",
        )
        # unique jobs and ticks work next to them
        first = conn.execute("SELECT pgqueue.enqueue('u', p_dedupe_key => 'k')").fetchone()
        again = conn.execute("SELECT pgqueue.enqueue('u', p_dedupe_key => 'k')").fetchone()
        assert first is not None and first == again
        tick = conn.execute(
            "SELECT pgqueue.enqueue_tick('every-minute', date_trunc('minute', now()), 'u')"
        ).fetchone()
        assert tick is not None and tick[0] is not None
        assert conn.execute(
            "SELECT pgqueue.enqueue_tick('every-minute', date_trunc('minute', now()), 'u')"
        ).fetchone() == (None,)
    upgraded = _table_rows(dsn)

    _migrate.downgrade(dsn, "0003")

    assert pgqueue.current_revision(dsn) == "0003"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _regclass(conn, "pgqueue.periodic_ticks") is None
        columns = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'pgqueue.jobs'::regclass"
            " AND attname LIKE 'dedupe%%' AND NOT attisdropped"
        ).fetchone()
        assert columns == (0,)
        # 0003's functions are back, with 0003's signatures
        signatures = {
            row[0]
            for row in conn.execute(
                "SELECT p.oid::regprocedure::text FROM pg_proc p"
                " WHERE p.pronamespace = 'pgqueue'::regnamespace"
                " AND p.proname IN ('enqueue', 'enqueue_many', 'prune', 'enqueue_tick')"
            )
        }
        assert signatures == {
            "pgqueue.enqueue(text,jsonb,text,integer,timestamp with time zone,integer,interval,"
            "text,jsonb)",
            "pgqueue.enqueue_many(text[],jsonb[],text[],integer[],timestamp with time zone[],"
            "integer[],interval[],text[],jsonb[],bigint)",
            "pgqueue.prune(interval,interval,integer)",
        }
        new = conn.execute("SELECT pgqueue.enqueue('after-downgrade')").fetchone()
        assert new is not None
    downgraded = _table_rows(dsn)
    # every row is kept (unique jobs only lose their keys)
    assert downgraded["jobs"][: len(upgraded["jobs"])] == upgraded["jobs"]
    assert len(downgraded["jobs"]) == len(upgraded["jobs"]) + 1
    assert downgraded["attempts"] == upgraded["attempts"]
    pgqueue.migrate(dsn)
    assert pgqueue.current_revision(dsn) == pgqueue.head_revision()


def test_downgrade_to_base_removes_everything_then_upgrade_restores(empty_db_dsn: str) -> None:
    dsn = empty_db_dsn
    pgqueue.migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgqueue.enqueue('doomed')")

    _migrate.downgrade(dsn, "base")

    assert pgqueue.current_revision(dsn) is None
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in (
            "pgqueue.jobs",
            "pgqueue.attempts",
            "pgqueue.queues",
            "pgqueue.batches",
            "pgqueue.progress_history",
        ):
            assert _regclass(conn, table) is None, f"{table} survived downgrade to base"
        assert conn.execute("SELECT to_regtype('pgqueue.job_status')").fetchone() == (None,)
        assert _pgqueue_function_count(conn) == 0
        # only the version table may remain in the schema
        leftovers = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'pgqueue' AND c.relkind IN ('r', 'v', 'm', 'S')"
        ).fetchall()
        assert {r[0] for r in leftovers} <= {catalog.VERSION_TABLE}

    pgqueue.migrate(dsn)

    assert pgqueue.current_revision(dsn) == pgqueue.head_revision()
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)
        job = conn.execute("SELECT pgqueue.enqueue('reborn')").fetchone()
        assert job is not None
        claimed = conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['default'], 1)")
        assert claimed.fetchall() == [(job[0],)]


# -- version bookkeeping ----------------------------------------------------------------------


def test_migrate_is_idempotent(empty_db_dsn: str) -> None:
    pgqueue.migrate(empty_db_dsn)
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("SELECT pgqueue.enqueue('kept')")
    first = catalog.snapshot(empty_db_dsn)

    pgqueue.migrate(empty_db_dsn)
    pgqueue.migrate(empty_db_dsn)

    assert catalog.snapshot(empty_db_dsn) == first
    assert pgqueue.current_revision(empty_db_dsn) == pgqueue.head_revision()
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT task FROM pgqueue.jobs").fetchall() == [("kept",)]
        versions = conn.execute("SELECT * FROM pgqueue.pgqueue_alembic_version").fetchall()
    assert versions == [(pgqueue.head_revision(),)]


def test_current_revision_reports_head(empty_db_dsn: str) -> None:
    assert pgqueue.current_revision(empty_db_dsn) is None
    head = pgqueue.head_revision()
    assert head == "0015"  # the latest frozen revision in migrations/versions

    _migrate.upgrade(empty_db_dsn, "0001")
    assert pgqueue.current_revision(empty_db_dsn) == "0001"

    pgqueue.migrate(empty_db_dsn)
    assert pgqueue.current_revision(empty_db_dsn) == head


def test_version_table_is_pgqueue_own_and_app_alembic_is_untouched(empty_db_dsn: str) -> None:
    dsn = empty_db_dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.alembic_version ( version_num varchar(32) NOT NULL PRIMARY KEY)"
        )
        conn.execute("INSERT INTO public.alembic_version VALUES ('app_rev_123abc')")

    pgqueue.migrate(dsn)

    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT version_num FROM public.alembic_version").fetchall() == [
            ("app_rev_123abc",)
        ]
        assert _regclass(conn, "pgqueue.pgqueue_alembic_version") is not None
        assert conn.execute(
            "SELECT version_num FROM pgqueue.pgqueue_alembic_version"
        ).fetchall() == [(pgqueue.head_revision(),)]
        # pgqueue created nothing in public besides what the app had
        public = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm', 'S')"
        ).fetchall()
        assert {r[0] for r in public} == {"alembic_version"}
    assert _migrate.VERSION_SCHEMA == "pgqueue"
    assert _migrate.VERSION_TABLE == "pgqueue_alembic_version"

    # stepping down and back up leaves the application's row alone too
    _migrate.downgrade(dsn, "base")
    pgqueue.migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT version_num FROM public.alembic_version").fetchall() == [
            ("app_rev_123abc",)
        ]


def test_concurrent_migrate_is_safe(empty_db_dsn: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            pgqueue.migrate(empty_db_dsn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a migrate call hung"
    assert errors == []
    _assert_at_head_and_working(empty_db_dsn)


_MIGRATE_AT = """
import sys, time
import pgqueue
start_at, dsn = float(sys.argv[1]), sys.argv[2]
time.sleep(max(0.0, start_at - time.time()))
pgqueue.migrate(dsn)
print(pgqueue.current_revision(dsn))
"""


def test_concurrent_migrate_from_processes_is_safe(empty_db_dsn: str) -> None:
    """Several processes (e.g. workers starting together) migrate at once: the
    advisory lock serialises them, all succeed, the schema is built once."""
    start_at = time.time() + 2.0  # after every interpreter has imported pgqueue
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_AT, str(start_at), empty_db_dsn],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [p.communicate(timeout=60) for p in procs]
    for proc, (out, err) in zip(procs, outcomes, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == pgqueue.head_revision()
    _assert_at_head_and_working(empty_db_dsn)


def _assert_at_head_and_working(dsn: str) -> None:
    assert pgqueue.current_revision(dsn) == pgqueue.head_revision()
    with psycopg.connect(dsn, autocommit=True) as conn:
        versions = conn.execute("SELECT * FROM pgqueue.pgqueue_alembic_version").fetchall()
        assert versions == [(pgqueue.head_revision(),)]
        assert _pgqueue_function_count(conn) >= 10
        job = conn.execute("SELECT pgqueue.enqueue('after-race')").fetchone()
        assert job is not None


def test_concurrency_revision_upgrades_jobs_of_every_state_and_downgrades_cleanly(
    empty_db_dsn: str,
) -> None:
    dsn = empty_db_dsn
    _migrate.upgrade(dsn, "0004")
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = _seed_jobs(conn) | _seed_other_terminal_states(conn)
        statuses = dict(conn.execute("SELECT id, status::text FROM pgqueue.jobs").fetchall())
    assert set(statuses.values()) == {s.value for s in pgqueue.JobStatus}
    before = _table_rows(dsn)

    _migrate.upgrade(dsn, "0005")

    assert _table_rows(dsn) == before, "upgrade to 0005 changed the job rows"
    with psycopg.connect(dsn, autocommit=True) as conn:
        # the old rows move on under the new functions
        conn.execute("SELECT pgqueue.complete(%s, 1, '1')", (ids["running"],))
        rows = conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['q-pending'], 5)").fetchall()
        assert rows == [(ids["pending"],)]
        assert conn.execute("SELECT pgqueue.replay(%s)", (ids["dead_letter"],)).fetchone() == (
            "pending",
        )
        # keyed jobs work next to them
        keyed = [
            conn.execute(
                "SELECT pgqueue.enqueue('k', p_queue => 'keyed', p_concurrency_key => 'c')"
            ).fetchone()
            for _ in range(2)
        ]
        got = conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['keyed'], 5)").fetchall()
        assert got == [keyed[0]]
    upgraded = _table_rows(dsn)

    _migrate.downgrade(dsn, "0004")

    assert pgqueue.current_revision(dsn) == "0004"
    with psycopg.connect(dsn, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'pgqueue.jobs'::regclass"
            " AND attname LIKE 'concurrency%%' AND NOT attisdropped"
        ).fetchone()
        assert columns == (0,)
        # the keyed job left behind is an ordinary job again
        got = conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['keyed'], 5)").fetchall()
        assert got == [keyed[1]]
        new = conn.execute("SELECT pgqueue.enqueue('after-downgrade')").fetchone()
        assert new is not None
    downgraded = _table_rows(dsn)
    assert len(downgraded["jobs"]) == len(upgraded["jobs"]) + 1
    assert downgraded["attempts"] == upgraded["attempts"]
    pgqueue.migrate(dsn)
    assert pgqueue.current_revision(dsn) == pgqueue.head_revision()


def test_rate_limit_revision_upgrades_jobs_of_every_state_and_downgrades_cleanly(
    empty_db_dsn: str,
) -> None:
    dsn = empty_db_dsn
    _migrate.upgrade(dsn, "0005")
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = _seed_jobs(conn) | _seed_other_terminal_states(conn)
        conn.execute("SELECT pgqueue.pause_queue('q-paused')")
        paused_job = conn.execute("SELECT pgqueue.enqueue('p', p_queue => 'q-paused')").fetchone()
        statuses = dict(conn.execute("SELECT id, status::text FROM pgqueue.jobs").fetchall())
    assert set(statuses.values()) == {s.value for s in pgqueue.JobStatus}
    before = _table_rows(dsn)

    _migrate.upgrade(dsn, "0006")

    assert _table_rows(dsn) == before, "upgrade to 0006 changed the job or queue rows"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pgqueue.queues WHERE rate_limit IS NOT NULL"
        ).fetchone() == (0,)
        # the old rows move on under the new functions; the paused queue stays paused
        conn.execute("SELECT pgqueue.complete(%s, 1, '1')", (ids["running"],))
        rows = conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['q-pending'], 5)").fetchall()
        assert rows == [(ids["pending"],)]
        assert (
            conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['q-paused'], 5)").fetchall() == []
        )
        # rate limits work next to them
        conn.execute("SELECT pgqueue.set_rate_limit('limited', 2, interval '1 hour')")
        for _ in range(3):
            conn.execute("SELECT pgqueue.enqueue('r', p_queue => 'limited')")
        got = conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['limited'], 5)").fetchall()
        assert len(got) == 2
    upgraded = _table_rows(dsn)

    _migrate.downgrade(dsn, "0005")

    assert pgqueue.current_revision(dsn) == "0005"
    with psycopg.connect(dsn, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'pgqueue.queues'::regclass"
            " AND attname LIKE 'rate%%' AND NOT attisdropped"
        ).fetchone()
        assert columns == (0,)
        # the paused queue is still paused; the limited queue is an ordinary one again
        assert (
            conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['q-paused'], 5)").fetchall() == []
        )
        got = conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['limited'], 5)").fetchall()
        assert len(got) == 1
        conn.execute("SELECT pgqueue.resume_queue('q-paused')")
        got = conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['q-paused'], 5)").fetchall()
        assert got == [paused_job]
    downgraded = _table_rows(dsn)
    assert len(downgraded["jobs"]) == len(upgraded["jobs"])
    assert downgraded["attempts"] == upgraded["attempts"]
    pgqueue.migrate(dsn)
    assert pgqueue.current_revision(dsn) == pgqueue.head_revision()


def test_hot_path_revision_upgrades_jobs_of_every_state_and_downgrades_cleanly(
    empty_db_dsn: str,
) -> None:
    dsn = empty_db_dsn
    _migrate.upgrade(dsn, "0006")
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = _seed_jobs(conn) | _seed_other_terminal_states(conn)
        statuses = dict(conn.execute("SELECT id, status::text FROM pgqueue.jobs").fetchall())
    assert set(statuses.values()) == {s.value for s in pgqueue.JobStatus}
    before = _table_rows(dsn)

    _migrate.upgrade(dsn, "0007")

    assert _table_rows(dsn) == before, "upgrade to 0007 changed the job rows"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("LISTEN pgqueue_job")
        # the old rows move on under the new functions, and are announced
        done = conn.execute(
            "SELECT id, attempt FROM pgqueue.complete_many(%s::bigint[], '{1}', '{1}')",
            ([ids["running"]],),
        ).fetchall()
        assert done == [(ids["running"], 1)]
        rows = conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['q-pending'], 5)").fetchall()
        assert rows == [(ids["pending"],)]
        announced = [json.loads(n.payload) for n in conn.notifies(timeout=1, stop_after=2)]
        assert {(n["id"], n["status"]) for n in announced} == {
            (ids["running"], "completed"),
            (ids["pending"], "running"),
        }
        # deleting a job deletes its attempts, as ON DELETE CASCADE did
        conn.execute("DELETE FROM pgqueue.jobs WHERE id = %s", (ids["running"],))
        assert conn.execute(
            "SELECT count(*) FROM pgqueue.attempts WHERE job_id = %s", (ids["running"],)
        ).fetchone() == (0,)
        # an attempt whose job went while the triggers were off
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM pgqueue.jobs WHERE id = %s", (ids["dead_letter"],))
        conn.execute("RESET session_replication_role")
        orphans = conn.execute(
            "SELECT count(*) FROM pgqueue.attempts WHERE job_id = %s", (ids["dead_letter"],)
        ).fetchone()
        assert orphans is not None and orphans[0] > 0
    upgraded = _table_rows(dsn)

    _migrate.downgrade(dsn, "0006")

    assert pgqueue.current_revision(dsn) == "0006"
    with psycopg.connect(dsn, autocommit=True) as conn:
        fk = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conname = 'attempts_job_id_fkey'"
        ).fetchone()
        assert fk == (1,)
        new = conn.execute("SELECT pgqueue.enqueue('after-downgrade', p_queue => 'q-d')").fetchone()
        assert new is not None
        got = conn.execute(
            "SELECT id, attempts FROM pgqueue.claim('w', ARRAY['q-d'], 5)"
        ).fetchall()
        assert got == [(new[0], 1)]
        done = conn.execute(
            "SELECT id FROM pgqueue.complete_many(%s::bigint[], '{1}', '{1}')", ([new[0]],)
        ).fetchall()
        assert done == [(new[0],)]
    downgraded = _table_rows(dsn)
    assert len(downgraded["jobs"]) == len(upgraded["jobs"]) + 1
    # the orphaned attempts were dropped so the foreign key could come back
    assert len(downgraded["attempts"]) == len(upgraded["attempts"]) - orphans[0] + 1
    pgqueue.migrate(dsn)
    assert pgqueue.current_revision(dsn) == pgqueue.head_revision()


def _claim_one(conn: psycopg.Connection[Any], queue: str) -> tuple[int, int]:
    row = conn.execute(
        "SELECT id, attempts FROM pgqueue.claim('w', ARRAY[%s], 1)", (queue,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_released_revision_counts_the_attempts_each_job_was_handed_back(
    empty_db_dsn: str,
) -> None:
    dsn = empty_db_dsn
    _migrate.upgrade(dsn, "0014")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for queue in ("once", "twice", "never"):
            conn.execute("SELECT pgqueue.enqueue('t', p_queue => %s)", (queue,))
        once = _claim_one(conn, "once")
        conn.execute("SELECT pgqueue.release(%s, %s)", once)
        twice = _claim_one(conn, "twice")
        conn.execute("SELECT pgqueue.release(%s, %s)", twice)
        conn.execute("SELECT pgqueue.release(%s, %s)", _claim_one(conn, "twice"))
        never = _claim_one(conn, "never")

    _migrate.upgrade(dsn, "0015")

    with psycopg.connect(dsn, autocommit=True) as conn:
        counts = dict(conn.execute("SELECT queue, released FROM pgqueue.jobs").fetchall())
        assert counts == {"once": 1, "twice": 2, "never": 0}
        # configured without retries, each still ends failed, not dead_letter
        for lease in (_claim_one(conn, "once"), _claim_one(conn, "twice"), never):
            status = conn.execute("SELECT pgqueue.fail(%s, %s, 'boom')", lease).fetchone()
            assert status == ("failed",)
        # handed back under 0015, failed under 0014 below
        conn.execute("SELECT pgqueue.enqueue('t', p_queue => 'across')")
        conn.execute("SELECT pgqueue.release(%s, %s)", _claim_one(conn, "across"))

    _migrate.downgrade(dsn, "0014")

    with psycopg.connect(dsn, autocommit=True) as conn:
        # 0014's fail() counts the history, which 0015's release() kept writing
        lease = _claim_one(conn, "across")
        status = conn.execute("SELECT pgqueue.fail(%s, %s, 'boom')", lease).fetchone()
        assert status == ("failed",)


def test_truncating_jobs_empties_attempts_so_reused_ids_can_finish(db_dsn: str) -> None:
    """Without the foreign key, TRUNCATE ... RESTART IDENTITY must not leave
    attempts behind: new jobs get the old ids, and their attempts the old keys."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        first = conn.execute("SELECT pgqueue.enqueue('t', p_queue => 'trunc')").fetchone()
        conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['trunc'], 1)")
        conn.execute("SELECT pgqueue.complete(%s, 1, '1')", first)
        conn.execute(
            "TRUNCATE pgqueue.jobs, pgqueue.progress_history, pgqueue.batches"
            " RESTART IDENTITY CASCADE"
        )
        assert conn.execute("SELECT count(*) FROM pgqueue.attempts").fetchone() == (0,)
        again = conn.execute("SELECT pgqueue.enqueue('t', p_queue => 'trunc')").fetchone()
        assert again == first
        conn.execute("SELECT id FROM pgqueue.claim('w', ARRAY['trunc'], 1)")
        conn.execute("SELECT pgqueue.complete(%s, 1, '1')", again)
        # listing attempts too in the same TRUNCATE works as before
        conn.execute("TRUNCATE pgqueue.attempts, pgqueue.jobs CASCADE")
        assert conn.execute("SELECT count(*) FROM pgqueue.attempts").fetchone() == (0,)


@pytest.mark.parametrize(
    ("revision", "previous"),
    [
        ("0004", "0003"),
        ("0005", "0004"),
        ("0006", "0005"),
        ("0007", "0006"),
        ("0008", "0007"),
        ("0009", "0008"),
        ("0010", "0009"),
        ("0011", "0010"),
        ("0012", "0011"),
        ("0013", "0012"),
        ("0014", "0013"),
        ("0015", "0014"),
    ],
)
def test_downgrade_restores_the_previous_catalog(
    empty_db_dsn: str, second_empty_db_dsn: str, revision: str, previous: str
) -> None:
    """Up to a revision and back down gives exactly the catalog of a plain
    previous one."""
    _migrate.upgrade(empty_db_dsn, revision)
    _migrate.downgrade(empty_db_dsn, previous)
    _migrate.upgrade(second_empty_db_dsn, previous)
    a, b = catalog.snapshot(second_empty_db_dsn), catalog.snapshot(empty_db_dsn)
    assert a == b, f"{revision} downgrade differs from {previous}:\n" + catalog.diff(
        a, b, previous, f"{revision} down"
    )
