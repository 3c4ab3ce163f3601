"""The worker's two hot statements on their own: claim 100 + complete_many 100.

    .venv/bin/python scripts/hot_path.py --dsn postgresql://postgres@127.0.0.1:5432/test

Creates a scratch database on that server (dropped at the end), migrates it
(``--revision`` picks an older schema to compare against), fills it with
``--jobs`` no-op jobs and empties it on one connection with
``pgqueue.claim(limit 100)`` followed by ``pgqueue.complete_many`` of the
claimed leases, ``--rounds`` times. It prints the median jobs/s and the
median milliseconds per call of each function, round trip included: the
ceiling of a strictly sequential worker on this server, without Python's
share. Run it on a quiet machine; compare revisions in the same run.

``--idle N`` measures instead what an idle worker woken by NOTIFY pays: N
times, one job is enqueued from a second connection, then after 20 ms (the
spacing of the bench's latency step) it is claimed (limit 100) and completed;
it prints the median milliseconds of the one-job claim, round trip included.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

import pgqueue
from pgqueue import _migrate
from pgqueue.bench._run import _scratch as scratch_database

CLAIM = (
    "SELECT id, attempts FROM pgqueue.claim(%s::text, %s::text[], %s::int,"
    " %s::interval, %s::text[])"
)
COMPLETE = "SELECT id FROM pgqueue.complete_many(%b::bigint[], %b::int[], %b::jsonb[])"


def one_round(conn: psycopg.Connection[Any], jobs: int) -> tuple[float, float, float]:
    conn.execute("TRUNCATE pgqueue.jobs, pgqueue.attempts, pgqueue.progress_history")
    conn.execute(
        "INSERT INTO pgqueue.jobs (task, queue) SELECT 'noop', 'bench' FROM generate_series(1, %s)",
        (jobs,),
    )
    conn.execute("VACUUM ANALYZE pgqueue.jobs")
    conn.execute("CHECKPOINT")
    claiming = completing = 0.0
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        rows = conn.execute(CLAIM, ("hot-path", ["bench"], 100, "20 seconds", ["noop"])).fetchall()
        t1 = time.perf_counter()
        claiming += t1 - t0
        if not rows:
            break
        ids, attempts = [r[0] for r in rows], [r[1] for r in rows]
        conn.execute(COMPLETE, (ids, attempts, [Jsonb(None)] * len(rows))).fetchall()
        completing += time.perf_counter() - t1
    elapsed = time.perf_counter() - started
    done = conn.execute("SELECT count(*) FROM pgqueue.jobs WHERE status = 'completed'").fetchone()
    assert done == (jobs,), f"{done} of {jobs} jobs completed"
    calls = jobs / 100
    return jobs / elapsed, claiming / calls * 1000, completing / calls * 1000


def idle_claims(conn: psycopg.Connection[Any], dsn: str, samples: int) -> float:
    """Median ms of a one-job claim after 20 ms of quiet, as an idle worker sees it."""
    times = []
    with psycopg.connect(dsn, autocommit=True) as producer:
        for _ in range(samples + 10):
            producer.execute("SELECT pgqueue.enqueue('noop', '{}', 'bench')")
            time.sleep(0.02)
            t0 = time.perf_counter()
            rows = conn.execute(CLAIM, ("idle", ["bench"], 100, "20 seconds", ["noop"])).fetchall()
            times.append(time.perf_counter() - t0)
            assert len(rows) == 1, rows
            ids, attempts = [r[0] for r in rows], [r[1] for r in rows]
            conn.execute(COMPLETE, (ids, attempts, [Jsonb(None)])).fetchall()
            time.sleep(0.02)
    return statistics.median(times[10:]) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="a database on the server to use")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--revision", help="schema revision to measure (default: head)")
    parser.add_argument("--idle", type=int, metavar="N", help="instead: N idle one-job claims")
    args = parser.parse_args()
    if args.idle is not None and args.idle < 1:
        parser.error("--idle needs at least 1 sample")
    with scratch_database(args.dsn, "hot") as dsn:
        _migrate.upgrade(dsn, args.revision or "heads")
        with psycopg.connect(dsn, autocommit=True) as conn:
            if args.idle is not None:
                ms = idle_claims(conn, dsn, args.idle)
                print(
                    f"schema {pgqueue.current_revision(dsn)}: one-job claim after 20 ms idle, "
                    f"{ms:.2f} ms (median of {args.idle})"
                )
                return 0
            rounds = [one_round(conn, args.jobs) for _ in range(args.rounds)]
        rate, claim_ms, complete_ms = (statistics.median(r[i] for r in rounds) for i in range(3))
        print(
            f"schema {pgqueue.current_revision(dsn)}, {args.jobs:,} jobs x {args.rounds} rounds: "
            f"{rate:,.0f} jobs/s; claim(100) {claim_ms:.2f} ms, "
            f"complete_many(100) {complete_ms:.2f} ms (medians)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
