"""``pgqueue bench --scale 1,2,4,8``: drain throughput against worker processes.

The same backlog of no-op jobs is drained by 1, 2, 4... real ``pgqueue
worker`` processes (concurrency 100 each) on one PostgreSQL, until adding
processes stops adding throughput. While each drain runs, the server's
backends serving the workers are sampled from ``pg_stat_activity``: what they
wait on (CPU when nothing) says where the time goes at saturation. The
server's own CPU count bounds the curve on one machine; docs/scaling.md
reads it.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import threading
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .._connect import resolve_dsn
from ._run import Progress, _drain, _machine, _scratch, _versions
from ._systems import Pgqueue

SAMPLE_EVERY = 0.05


def _sample_waits(server_dsn: str, dbname: str, stop: threading.Event) -> collections.Counter[str]:
    """What the workers' backends are doing, sampled until ``stop``."""
    seen: collections.Counter[str] = collections.Counter()
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT COALESCE(wait_event_type || ':' || wait_event, 'CPU')"
                "  FROM pg_stat_activity"
                " WHERE datname = %s AND state = 'active' AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchall()
            seen.update(r[0] for r in rows)
            if stop.wait(SAMPLE_EVERY):
                return seen


def _one(server: str, jobs: int, processes: int) -> dict[str, Any]:
    system = Pgqueue()
    config = system.configs[0]
    with _scratch(server, f"scale_{processes}") as dsn:
        asyncio.run(system.setup(dsn))

        async def fill() -> None:
            client = await system.client(dsn)
            try:
                await client.enqueue_many(jobs)
            finally:
                await client.close()

        asyncio.run(fill())
        system.analyze(dsn)
        stop = threading.Event()
        waits: collections.Counter[str] = collections.Counter()
        dbname = conninfo_to_dict(dsn)["dbname"]

        def sample() -> None:
            waits.update(_sample_waits(server, str(dbname), stop))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            rate = _drain(system, config, dsn, processes, jobs)
        finally:
            stop.set()
            sampler.join(timeout=10)
    total = sum(waits.values()) or 1
    return {
        "processes": processes,
        "drain": rate,
        "waits": {k: round(v / total, 3) for k, v in waits.most_common(5)},
    }


async def run_scale(
    *, dsn: str | None, processes: list[int], jobs: int | None, as_json: bool
) -> int:
    server = resolve_dsn(dsn)
    n = jobs or 20_000
    progress = Progress(total=len(processes), enabled=True)
    points: list[dict[str, Any]] = []
    for count in processes:
        progress.step(f"pgqueue (concurrency 100): drain {n:,} jobs, {count} processes")
        points.append(await asyncio.to_thread(_one, server, n, count))
    base = points[0]["drain"] / points[0]["processes"] if points else 0.0
    for point in points:
        point["per_process_vs_first"] = (
            round(point["drain"] / point["processes"] / base, 2) if base else None
        )
    machine: dict[str, Any] = await asyncio.to_thread(_machine, server)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        "versions": _versions(),
        "jobs": n,
        "points": points,
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print()
    print(f"pgqueue drain of {n:,} no-op jobs against worker processes (concurrency 100 each)")
    settings = ", ".join(f"{k}={v}" for k, v in machine.get("settings", {}).items())
    print(
        f"PostgreSQL {machine.get('postgresql')}, {machine.get('cpus')} CPUs on the bench's "
        f"machine; {settings}"
    )
    print(f"{'processes':>9}  {'jobs/s':>9}  {'per process':>11}  where the server's time goes")
    for p in points:
        waits = ", ".join(f"{k} {v:.0%}" for k, v in p["waits"].items()) or "(too short to sample)"
        ratio = p["per_process_vs_first"]
        print(f"{p['processes']:>9}  {p['drain']:>9,.0f}  {ratio:>10.2f}x  {waits}")
    return 0
