"""Latency of ``GET /api/v1/jobs/active`` with 100,000 jobs in the table.

    .venv/bin/python scripts/api_latency.py --dsn postgresql://postgres@127.0.0.1:5432/postgres

Creates a scratch database on that server (dropped at the end), migrates it,
writes ``--jobs`` jobs of mixed owners and states (100 owners plus ownerless
jobs; mostly completed over the last day, some failed, cancelled, pending,
retrying and running), runs the API in this process on 127.0.0.1 and times
``--requests`` sequential calls for one owner and for an admin.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import aiohttp
import psycopg

import pgqueue
from pgqueue.bench._run import _scratch as scratch_database
from pgqueue_service import Settings, mint_token, running

SECRET = "latency-" + "x" * 60

# Status mix by i % 100: 0-4 pending, 5-6 running, 7-9 retrying, 10-14 failed,
# 15-19 cancelled, the rest completed. Finished jobs are spread over a day, so
# about 0.35 % of them fall in the 5-minute window. Owners take runs of 100
# consecutive jobs, so each owner has every state; a tenth of the jobs have none.
FILL = """
INSERT INTO pgqueue.jobs (queue, task, args, status, run_at, attempts, max_attempts,
                          created_at, started_at, leased_at, completed_at, heartbeat_at,
                          worker_id, progress, error, owner)
SELECT 'q' || (i %% 4), 'task', '{}'::jsonb, s.status::pgqueue.job_status, c.t,
       CASE WHEN s.status = 'pending' THEN 0 ELSE 1 END, 3,
       c.t,
       CASE WHEN s.status = 'pending' THEN NULL ELSE c.t END,
       CASE WHEN s.status = 'pending' THEN NULL ELSE c.t END,
       CASE WHEN s.status IN ('completed', 'failed', 'cancelled')
            THEN c.t + interval '1 second' END,
       CASE WHEN s.status = 'running' THEN now() END,
       CASE WHEN s.status = 'pending' THEN NULL ELSE 'bench' END,
       CASE WHEN s.status = 'completed' THEN 100 ELSE 0 END,
       CASE WHEN s.status = 'failed' THEN 'ValueError: boom ' || i END,
       CASE WHEN (i / 7) %% 10 = 0 THEN NULL ELSE 'user-' || ((i / 100) %% 100) END
  FROM generate_series(1, %(n)s) AS i,
       LATERAL (SELECT CASE WHEN i %% 100 < 5 THEN 'pending'
                            WHEN i %% 100 < 7 THEN 'running'
                            WHEN i %% 100 < 10 THEN 'retrying'
                            WHEN i %% 100 < 15 THEN 'failed'
                            WHEN i %% 100 < 20 THEN 'cancelled'
                            ELSE 'completed' END AS status) AS s,
       LATERAL (SELECT now() - interval '1 day' * ((%(n)s - i)::float8 / %(n)s)
                       - interval '2 seconds' AS t) AS c
"""


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def measure(url: str, token: str, requests: int) -> tuple[list[float], int]:
    headers = {"Authorization": f"Bearer {token}"}
    timings: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for i in range(requests + 20):
            started = time.perf_counter()
            async with session.get(f"{url}/api/v1/jobs/active?limit=100") as response:
                body = await response.json()
                assert response.status == 200, body
            if i >= 20:  # warm-up: pool connections, plan caches
                timings.append((time.perf_counter() - started) * 1000)
    return timings, len(body["items"])


async def run(dsn: str, jobs: int, requests: int) -> None:
    queue = pgqueue.Queue(dsn)
    async with running(queue, Settings(secret=SECRET), host="127.0.0.1", port=0) as url:
        for who, token in (
            ("one owner (user-99)", mint_token(SECRET, "user-99")),
            ("admin (every owner)", mint_token(SECRET, "ops", admin=True)),
        ):
            timings, items = await measure(url, token, requests)
            print(
                f"  {who:<22} p50 {statistics.median(timings):6.2f} ms   "
                f"p99 {percentile(timings, 99):6.2f} ms   ({items} jobs per answer)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="a database on the server to use")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()

    with scratch_database(args.dsn, "latency") as dsn:
        pgqueue.migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(FILL, {"n": args.jobs})  # type: ignore[arg-type]
            conn.execute("VACUUM ANALYZE pgqueue.jobs")
            counts = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE owner = 'user-99') FROM pgqueue.jobs"
            ).fetchone()
        assert counts is not None
        print(
            f"GET /api/v1/jobs/active, {counts[0]:,} jobs ({counts[1]:,} of user-99), "
            f"{args.requests} sequential requests, schema {pgqueue.current_revision(dsn)}"
        )
        asyncio.run(run(dsn, args.jobs, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
