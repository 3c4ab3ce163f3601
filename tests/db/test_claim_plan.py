"""The claim's row search uses the partial claim index on a deep backlog.

``pgqueue.claim`` (sql/functions.sql) finds candidates per queue with the
SELECT below (reproduced with its exact WHERE and ORDER BY). On a table of
many pending jobs across queues and priorities its plan must walk
``jobs_claim_idx`` and stop after LIMIT rows: no sequential scan, no sort of
the whole backlog. Checked twice: with the values inlined (a custom plan) and
as a generic plan, which is what PL/pgSQL caches for the function (it runs
with ``plan_cache_mode = force_generic_plan``). The installed function itself
is then called on the same backlog, and the statistics collector must show
it reading the claim index and never the whole table.

Loading 1,000,000 rows takes about 15 s on the 2-core test machine, so the
default run uses 200,000 and the 1M variant is a soak test.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

CLAIM_INDEX = "jobs_claim_idx"
QUEUES = 8
TASKS = 3

# The LATERAL subquery of pgqueue.claim, parameters in the function's order.
# pgqueue.claimable is a one-expression SQL function, inlined into it: the
# plans below are those of its conditions, as the claim's statement gets them.
CLAIM_SELECT = """
SELECT j.id, j.priority, j.run_at
  FROM pgqueue.jobs j
 WHERE j.queue = $1 AND j.concurrency_key IS NULL
   AND pgqueue.claimable(j, $2, $3::text[])
 ORDER BY j.priority DESC, j.run_at, j.id
 LIMIT $4
   FOR UPDATE SKIP LOCKED
"""


def _load(conn: psycopg.Connection[Any], rows: int) -> None:
    """``rows`` pending jobs over 8 queues, 5 priorities, 3 tasks and an hour
    of run_at values, in one statement; then fresh statistics."""
    conn.execute(
        "INSERT INTO pgqueue.jobs (queue, task, priority, run_at)"
        " SELECT 'q' || (i %% %s), 't' || (i %% %s), (i %% 5) - 2,"
        "        now() - (i %% 3600) * interval '1 second'"
        "   FROM generate_series(1, %s) AS i",
        (QUEUES, TASKS, rows),
    )
    conn.execute("ANALYZE pgqueue.jobs")


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


def _explain(conn: psycopg.Connection[Any], query: str) -> list[Any]:
    # EXPLAIN is a utility statement: no bind parameters, values are inlined.
    row = conn.execute(f"EXPLAIN (FORMAT JSON) {query}").fetchone()  # type: ignore[arg-type]
    assert row is not None
    return _nodes(row[0][0]["Plan"])


def _assert_uses_claim_index(nodes: list[dict[str, Any]]) -> None:
    summary = [(n["Node Type"], n.get("Index Name"), n.get("Relation Name")) for n in nodes]
    scans = [n for n in nodes if n.get("Relation Name") == "jobs"]
    assert scans, summary
    assert all(
        n["Node Type"] in ("Index Scan", "Index Only Scan") and n.get("Index Name") == CLAIM_INDEX
        for n in scans
    ), summary
    assert not any(n["Node Type"] in ("Seq Scan", "Sort", "Incremental Sort") for n in nodes), (
        summary
    )
    # inlined: its conditions are in the plan, not a call of it for each row
    assert not any("claimable" in str(n.get("Filter", "")) for n in nodes), summary


def _check_plans(conn: psycopg.Connection[Any]) -> None:
    tasks = "ARRAY[" + ", ".join(f"'t{i}'" for i in range(TASKS)) + "]::text[]"
    # Custom plan: the values inlined, as EXPLAIN of a one-off query sees them.
    custom = (
        CLAIM_SELECT.replace("$1", "'q3'")
        .replace("$2", "now()")
        .replace("$3::text[]", tasks)
        .replace("$4", "100")
    )
    _assert_uses_claim_index(_explain(conn, custom))
    # Generic plan, as PL/pgSQL caches it for pgqueue.claim after a few calls.
    conn.execute("SET plan_cache_mode = force_generic_plan")
    # Simple-query protocol: over the extended one the server would take $1..$4
    # for parameters of the PREPARE statement itself.
    prepare = f"PREPARE claim_select(text, timestamptz, text[], int) AS {CLAIM_SELECT}"
    result = conn.pgconn.exec_(prepare.encode())
    assert result.status == psycopg.pq.ExecStatus.COMMAND_OK, result.error_message
    for task_filter in (tasks, "NULL::text[]"):  # the worker always names its tasks
        generic = _explain(
            conn, f"EXECUTE claim_select('q3', clock_timestamp(), {task_filter}, 100)"
        )
        _assert_uses_claim_index(generic)
    conn.execute("DEALLOCATE claim_select")
    conn.execute("RESET plan_cache_mode")


def test_claim_select_matches_the_function(conn: psycopg.Connection[Any]) -> None:
    """The reproduced SELECT is the one in the installed pgqueue.claim."""
    body = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE oid = 'pgqueue.claim'::regproc"
    ).fetchone()
    assert body is not None
    source = " ".join(body[0].split())
    for clause in (
        "WHERE j.queue = active.name AND j.concurrency_key IS NULL"
        " AND pgqueue.claimable(j, v_now, p_tasks)",
        "ORDER BY j.priority DESC, j.run_at, j.id LIMIT p_limit FOR UPDATE SKIP LOCKED",
    ):
        assert clause in source, clause


def test_the_claims_lease_step_is_the_same_in_each_statement(
    conn: psycopg.Connection[Any],
) -> None:
    """What claiming writes is written out in each of the claim's three
    statements (a function there made the claim slower): a change to one
    copy must be made to all."""
    body = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE oid = 'pgqueue.claim'::regproc"
    ).fetchone()
    assert body is not None
    source = " ".join(body[0].split())
    blocks = re.findall(r"UPDATE pgqueue\.jobs j SET (.*?) FROM ts WHERE", source)
    assert len(blocks) == 3, blocks
    assert len(set(blocks)) == 1, blocks
    assert blocks[0].startswith("status = 'running', attempts = j.attempts + 1,"), blocks[0]


def _scans(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(sequential scans of pgqueue.jobs, scans of the claim index) so far."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT t.seq_scan, i.idx_scan FROM pg_stat_user_tables t"
        "  JOIN pg_stat_user_indexes i ON i.relid = t.relid"
        " WHERE t.relid = 'pgqueue.jobs'::regclass AND i.indexrelname = %s",
        (CLAIM_INDEX,),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _check_function(conn: psycopg.Connection[Any]) -> None:
    """The installed pgqueue.claim, with its generic plans, on the loaded backlog."""
    settings = conn.execute(
        "SELECT proconfig FROM pg_proc WHERE oid = 'pgqueue.claim'::regproc"
    ).fetchone()
    assert settings is not None and "plan_cache_mode=force_generic_plan" in settings[0]
    tasks = [f"t{i}" for i in range(TASKS)]
    seq_before, idx_before = _scans(conn)
    claimed: list[tuple[int, int]] = []
    for _ in range(8):  # past the 5 custom plans plpgsql would otherwise make first
        rows = conn.execute(
            "SELECT id, priority FROM pgqueue.claim('w', ARRAY['q3'], 100, '1 hour', %s)",
            (tasks,),
        ).fetchall()
        assert len(rows) == 100
        claimed += [(int(r[0]), int(r[1])) for r in rows]
    seq_after, idx_after = _scans(conn)
    assert seq_after == seq_before, "pgqueue.claim scanned the whole jobs table"
    assert idx_after > idx_before, "pgqueue.claim did not read the claim index"
    # 25,000 jobs of q3 over 5 priorities: the first 800 are all of the highest
    assert {priority for _, priority in claimed} == {2}
    assert len({job for job, _ in claimed}) == 800


def test_claim_uses_the_partial_index_on_200k_pending_jobs(
    conn: psycopg.Connection[Any],
) -> None:
    _load(conn, 200_000)
    _check_plans(conn)
    _check_function(conn)


@pytest.mark.soak
@pytest.mark.timeout(300)
def test_claim_uses_the_partial_index_on_1m_pending_jobs(conn: psycopg.Connection[Any]) -> None:
    _load(conn, 1_000_000)
    _check_plans(conn)
    _check_function(conn)
