"""``pgqueue bench``: throughput and latency of this pgqueue on this machine.

It works in a scratch database it creates (and drops) on the chosen server,
so it never touches real jobs. Figures are printed next to a raw-SQL ceiling
measured in the same run, so they read as ratios, not absolute claims.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from . import _migrate
from ._connect import resolve_dsn
from ._queue import Queue

BENCH_QUEUE = "bench"
APP = "pgqueue.examples:queue"


def noop(ctx: object) -> None:
    """Stands for ``pgqueue.examples.noop``, which the bench workers run."""


def _create_scratch(server_dsn: str) -> tuple[str, str]:
    name = f"pgqueue_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, make_conninfo(server_dsn, dbname=name)


def _drop_scratch(server_dsn: str, name: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


async def _single_enqueue(queue: Queue, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await queue.enqueue("noop", {}, queue=BENCH_QUEUE)
    return n / (time.perf_counter() - started)


async def _raw_single_insert(dsn: str, n: int) -> float:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial, payload jsonb)")
        started = time.perf_counter()
        for _ in range(n):
            await conn.execute("INSERT INTO bench_raw (payload) VALUES (%s::jsonb)", ("{}",))
        return n / (time.perf_counter() - started)


async def _bulk_enqueue(queue: Queue, n: int, chunk: int = 1000) -> float:
    started = time.perf_counter()
    for offset in range(0, n, chunk):
        await queue.enqueue_many("noop", [{}] * min(chunk, n - offset), queue=BENCH_QUEUE)
    return n / (time.perf_counter() - started)


def _worker_command(*options: str) -> list[str]:
    """``pgqueue worker`` on the bench queue, run by this Python."""
    app = ["--app", APP, "--queues", BENCH_QUEUE]
    return [sys.executable, "-m", "pgqueue.cli", "worker", *app, *options]


def _drain(dsn: str, processes: int, concurrency: int) -> float:
    """Run worker processes until the bench queue is empty; jobs/s measured from
    the database's own timestamps (first start to last completion)."""
    env = {**os.environ, "PGQUEUE_DSN": dsn}
    command = _worker_command("--concurrency", str(concurrency), "--until-idle")
    workers = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(processes)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        if worker.returncode != 0:
            raise RuntimeError(f"bench worker failed: {err.decode()[-2000:]}")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), EXTRACT(EPOCH FROM max(completed_at) - min(started_at))"
            " FROM pgqueue.jobs WHERE queue = %s AND status = 'completed'",
            (BENCH_QUEUE,),
        ).fetchone()
        conn.execute("DELETE FROM pgqueue.jobs WHERE queue = %s", (BENCH_QUEUE,))
        conn.commit()
    assert row is not None
    count, seconds = row
    return float(count) / float(seconds)


def _raw_drain(dsn: str, n: int, batch: int = 100) -> float:
    """The ceiling for the same shape without pgqueue: claim a batch with
    SKIP LOCKED, mark it done, on one connection."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench_raw_jobs (id bigserial PRIMARY KEY, status text NOT NULL,"
            " created_at timestamptz DEFAULT now(), done_at timestamptz)"
        )
        conn.execute("CREATE INDEX ON bench_raw_jobs (id) WHERE status = 'pending'")
        conn.execute(
            "INSERT INTO bench_raw_jobs (status) SELECT 'pending' FROM generate_series(1, %s)",
            (n,),
        )
        started = time.perf_counter()
        while True:
            cur = conn.execute(
                "WITH c AS (SELECT id FROM bench_raw_jobs WHERE status = 'pending' ORDER BY id"
                " LIMIT %s FOR UPDATE SKIP LOCKED)"
                " UPDATE bench_raw_jobs j SET status = 'running' FROM c WHERE j.id = c.id"
                " RETURNING j.id",
                (batch,),
            )
            ids = [r[0] for r in cur.fetchall()]
            if not ids:
                break
            conn.execute(
                "UPDATE bench_raw_jobs SET status = 'done', done_at = now() WHERE id = ANY(%s)",
                (ids,),
            )
        return n / (time.perf_counter() - started)


async def _latency(queue: Queue, dsn: str, samples: int) -> dict[str, float]:
    """enqueue -> start latency with an idle worker woken by NOTIFY, in ms."""
    worker = await asyncio.create_subprocess_exec(
        *_worker_command("--poll-interval", "5"),
        env={**os.environ, "PGQUEUE_DSN": dsn},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(2.0)  # let the worker connect and LISTEN
        ids = []
        for _ in range(samples):
            ids.append(await queue.enqueue("noop", {}, queue=BENCH_QUEUE))
            await asyncio.sleep(0.02)
        await queue.wait(ids[-1], timeout=30)
        pool = await queue.pool()
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT EXTRACT(EPOCH FROM started_at - created_at) * 1000"
                " FROM pgqueue.jobs WHERE id = ANY(%s)",
                (ids,),
            )
            values = sorted(float(r[0]) for r in await cur.fetchall())
    finally:
        worker.terminate()
        await worker.wait()
    return {
        "p50": statistics.median(values),
        "p95": values[int(0.95 * (len(values) - 1))],
        "p99": values[int(0.99 * (len(values) - 1))],
    }


async def run_bench(*, dsn: str | None, jobs: int, as_json: bool) -> int:
    server = resolve_dsn(dsn)
    name, scratch = _create_scratch(server)
    results: dict[str, Any] = {}
    try:
        await asyncio.to_thread(_migrate.upgrade, scratch)
        queue = Queue(scratch)
        queue.task(noop)  # registered by name, like the examples' noop the workers run
        with psycopg.connect(scratch) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            sync_commit = conn.execute("SHOW synchronous_commit").fetchone()
        results["machine"] = {
            "postgresql": version[0] if version else None,
            "synchronous_commit": sync_commit[0] if sync_commit else None,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "psycopg": psycopg.__version__,
        }
        steps: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("single enqueue (jobs/s)", lambda: _single_enqueue(queue, 2000)),
            ("raw single INSERT (rows/s)", lambda: _raw_single_insert(scratch, 2000)),
            ("bulk enqueue (jobs/s)", lambda: _bulk_enqueue(queue, jobs)),
        ]
        for label, step in steps:
            _progress(label, as_json)
            results[label] = await step()
        for processes in (1, 2):
            if processes > 1:  # the first drain consumed the enqueue steps' jobs
                await _bulk_enqueue(queue, jobs)
            label = f"drain {jobs} no-op jobs, {processes} worker process(es) (jobs/s)"
            _progress(label, as_json)
            results[label] = await asyncio.to_thread(_drain, scratch, processes, 100)
        label = "raw SQL claim 100 + mark done, 1 connection (jobs/s)"
        _progress(label, as_json)
        results[label] = await asyncio.to_thread(_raw_drain, scratch, jobs)
        _progress("enqueue -> start latency", as_json)
        results["enqueue->start latency (ms)"] = await _latency(queue, scratch, 200)
        await queue.close()
    finally:
        await asyncio.to_thread(_drop_scratch, server, name)
    if as_json:
        print(json.dumps(results, indent=2))
        return 0
    _print_results(results)
    return 0


def _progress(label: str, as_json: bool) -> None:
    if not as_json:
        print(f"  ... {label}", file=sys.stderr, flush=True)


def _print_results(results: dict[str, Any]) -> None:
    machine = results.pop("machine")
    print(
        f"pgqueue bench: PostgreSQL {machine['postgresql']} "
        f"(synchronous_commit={machine['synchronous_commit']}), {machine['cpus']} CPUs, "
        f"Python {machine['python']}, psycopg {machine['psycopg']}"
    )
    latency = results.pop("enqueue->start latency (ms)")
    single = results["single enqueue (jobs/s)"]
    raw_single = results["raw single INSERT (rows/s)"]
    drain1 = next(v for k, v in results.items() if "1 worker" in k)
    raw_drain = next(v for k, v in results.items() if k.startswith("raw SQL claim"))
    for label, value in results.items():
        print(f"  {label:<62} {value:>10,.0f}")
    print(
        f"  {'enqueue->start latency p50 / p95 / p99 (ms)':<62} "
        f"{latency['p50']:.1f} / {latency['p95']:.1f} / {latency['p99']:.1f}"
    )
    print(f"  single enqueue vs raw INSERT: {single / raw_single:.2f}x")
    print(f"  drain (1 process) vs raw SQL ceiling: {drain1 / raw_drain:.2f}x")
