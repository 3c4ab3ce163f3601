"""``pgqueue bench --sustained N``: N jobs through one worker with retention on.

A producer enqueues N no-op jobs in chunks of 1,000, keeping the backlog near
``BACKLOG`` jobs (as a steady stream of work would), while one
``pgqueue worker --concurrency 100`` process works them and prunes completed
jobs older than ``RETAIN`` seconds every ``PRUNE_EVERY`` seconds. The worker's
probe stamps every tenth of N, so the report gives jobs/s for each tenth of the
run; the table and index sizes of ``pgqueue.jobs`` and ``pgqueue.attempts``
are sampled every ``SAMPLE_EVERY`` seconds. The target of issue 6: the last
tenth's throughput within 20 % of the first's, and sizes that stay bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from .. import _migrate
from ._run import _env, _probe_records, _scratch, _stop
from ._systems import ENQUEUE_CHUNK, Pgqueue

BACKLOG = 20_000
RETAIN = 10.0
PRUNE_EVERY = 2.0
SAMPLE_EVERY = 5.0
GOAL = 0.8  # last tenth's jobs/s over the first tenth's
DEADLINE = 3600.0  # seconds a whole run may take

_SIZES = """
SELECT pg_relation_size('pgqueue.jobs'), pg_indexes_size('pgqueue.jobs'),
       pg_total_relation_size('pgqueue.attempts'),
       (SELECT count(*) FROM pgqueue.jobs),
       (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'pgqueue.jobs'::regclass)
"""
_UNFINISHED = "SELECT count(*) FROM pgqueue.jobs WHERE status IN ('pending', 'retrying', 'running')"


def _sample(conn: psycopg.Connection[Any], started: float) -> dict[str, float]:
    row = conn.execute(_SIZES).fetchone()
    assert row is not None
    mib = 2**20
    return {
        "at_s": round(time.monotonic() - started, 1),
        "jobs_heap_mib": row[0] / mib,
        "jobs_indexes_mib": row[1] / mib,
        "attempts_mib": row[2] / mib,
        "jobs_rows": row[3],
        "jobs_dead_tuples": row[4] or 0,
    }


def _check_alive(worker: subprocess.Popen[bytes], started: float) -> None:
    if worker.poll() is not None:
        raise RuntimeError(f"the sustained worker exited ({worker.returncode})")
    if time.monotonic() - started > DEADLINE:
        raise RuntimeError(f"the sustained run did not finish within {DEADLINE:.0f}s")


async def _produce(
    dsn: str,
    total: int,
    samples: list[dict[str, float]],
    started: float,
    worker: subprocess.Popen[bytes],
) -> None:
    client = await Pgqueue().client(dsn)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            enqueued, next_sample = 0, 0.0
            while True:
                _check_alive(worker, started)
                if time.monotonic() >= next_sample:
                    samples.append(_sample(conn, started))
                    next_sample = time.monotonic() + SAMPLE_EVERY
                row = conn.execute(_UNFINISHED).fetchone()
                unfinished = row[0] if row is not None else 0
                if enqueued == total:  # the worker finishes the backlog
                    if unfinished == 0:
                        break
                    await asyncio.sleep(0.2)
                elif unfinished > BACKLOG:
                    await asyncio.sleep(0.05)
                else:
                    chunk = min(ENQUEUE_CHUNK * 5, total - enqueued)
                    await client.enqueue_many(chunk)
                    enqueued += chunk
            samples.append(_sample(conn, started))
    finally:
        await client.close()


def _start_worker(command: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:  # a file, not a pipe: a chatty worker never blocks on it
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=f)


def _tail(path: str) -> str:
    return Path(path).read_text(errors="replace")[-2000:]


def _tenths(record: dict[str, Any], total: int) -> list[float]:
    """jobs/s in each tenth of the run, from the probe's marks."""
    bounds = [float(record["first"]), *map(float, record["marks"])]
    tenth = total / 10
    return [tenth / max(b - a, 1e-6) for a, b in itertools.pairwise(bounds)]


async def run_sustained(server: str, total: int, *, as_json: bool) -> int:
    if total < 10_000 or total % 10:
        raise ValueError("--sustained needs at least 10,000 jobs, a multiple of 10")
    with _scratch(server, "sustained") as dsn, tempfile.TemporaryDirectory() as out:
        print(f"  pgqueue: schema in a fresh database; {total:,} jobs", file=sys.stderr)
        await asyncio.to_thread(_migrate.upgrade, dsn)
        command = [
            *Pgqueue().worker_command(Pgqueue.configs[0], drain=False),
            "--retain-completed",
            str(RETAIN),
            "--prune-interval",
            str(PRUNE_EVERY),
        ]
        env = {**_env(dsn, out), "PGQUEUE_BENCH_MARK": str(total // 10)}
        log_path = os.path.join(out, "worker.log")
        worker = _start_worker(command, env, log_path)
        samples: list[dict[str, float]] = []
        started = time.monotonic()
        try:
            try:
                await _produce(dsn, total, samples, started, worker)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}: {_tail(log_path)}") from None
        finally:
            _stop(worker)
        elapsed = time.monotonic() - started
        records = _probe_records(out)
        if worker.returncode != 0 or len(records) != 1:
            raise RuntimeError(f"sustained worker failed ({worker.returncode}): {_tail(log_path)}")
    record = records[0]
    if int(record["count"]) != total or len(record["marks"]) != 10:
        raise RuntimeError(f"{total} jobs enqueued, {record['count']} task runs")
    tenths = _tenths(record, total)
    report = {
        "jobs": total,
        "seconds": round(elapsed, 1),
        "settings": {
            "backlog": BACKLOG,
            "retain_completed_s": RETAIN,
            "prune_interval_s": PRUNE_EVERY,
        },
        "jobs_per_s_by_tenth": [round(r) for r in tenths],
        "last_over_first": tenths[-1] / tenths[0],
        "goal": GOAL,
        "met": tenths[-1] / tenths[0] >= GOAL,
        "sizes": samples,
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"sustained: {total:,} jobs in {elapsed:.0f} s, retention on (completed kept {RETAIN:g} s)"
    )
    print("jobs/s by tenth: " + ", ".join(f"{r:,.0f}" for r in tenths))
    verdict = "met" if report["met"] else "**missed**"
    print(f"last tenth / first tenth: {report['last_over_first']:.2f} (goal >= {GOAL}) {verdict}")
    peak = {
        key: max(s[key] for s in samples)
        for key in ("jobs_heap_mib", "jobs_indexes_mib", "attempts_mib", "jobs_rows")
    }
    first, last = samples[0], samples[-1]
    print("sizes          first      peak      last")
    for key, label in (
        ("jobs_heap_mib", "jobs heap MiB"),
        ("jobs_indexes_mib", "jobs idx MiB"),
        ("attempts_mib", "attempts MiB"),
        ("jobs_rows", "jobs rows"),
    ):
        print(f"{label:13s} {first[key]:>7,.1f} {peak[key]:>9,.1f} {last[key]:>9,.1f}")
    return 0
