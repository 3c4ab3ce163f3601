"""A silent partition: the worker's network path to PostgreSQL drops every
packet (no RST, no FIN). The worker notices within its lease bound, stops the
task before another worker could run it again, and, once the path is back,
reconnects by itself and finishes the job (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import time

import pgqueue

from .helpers import Processes, TcpProxy, rows, scalar, silent_port, wait_until

HEARTBEAT = 1.0
STALE_AFTER = 4.0


def test_a_worker_whose_database_path_goes_silent_stops_its_task_and_recovers(
    runs_dsn: str, client: pgqueue.Queue, procs: Processes, db_proxy: TcpProxy
) -> None:
    job_id = client.enqueue_sync("slow", {"seconds": 120, "then_seconds": 0.2}, max_attempts=3)
    worker = procs.worker(
        db_proxy.dsn(runs_dsn),
        "--heartbeat-interval", str(HEARTBEAT),
        "--stale-after", str(STALE_AFTER),
        "--rescue-interval", "1",
        concurrency=1,
    )  # fmt: skip
    wait_until(
        lambda: scalar(
            runs_dsn, "SELECT count(*) FROM acceptance_runs WHERE job_id = %s", [job_id]
        ),
        timeout=30,
        what="the first attempt to start",
    )
    with silent_port(db_proxy.port):
        cut = time.monotonic()
        # Self-fencing: no heartbeat got through for stale_after - heartbeat_interval.
        worker.wait_for_log("no heartbeat for", timeout=STALE_AFTER + 10)
        noticed = time.monotonic() - cut
        # The lease goes stale on the server; a rescuer on another path takes it.
        wait_until(
            lambda: client_rescue(client, job_id),
            timeout=STALE_AFTER + 10,
            what="the stale lease to be rescued",
        )
    healed = time.monotonic()
    wait_until(
        lambda: (
            scalar(runs_dsn, "SELECT status::text FROM pgqueue.jobs WHERE id = %s", [job_id])
            == "completed"
        ),
        timeout=45,
        what="the same worker to reconnect and complete the job",
    )
    recovered = time.monotonic() - healed
    assert worker.poll() is None, "the worker exited instead of riding out the partition"
    assert noticed <= STALE_AFTER - HEARTBEAT + 3, f"noticed after {noticed:.1f} s"
    runs = rows(
        runs_dsn,
        "SELECT attempt, ended IS NOT NULL FROM acceptance_runs WHERE job_id = %s ORDER BY attempt",
        [job_id],
    )
    # attempt 1 was stopped before its end; attempt 2 ran whole, on the same worker
    assert runs == [(1, False), (2, True)], runs
    print(f"partition noticed after {noticed:.1f} s; job completed {recovered:.1f} s after healing")


def client_rescue(client: pgqueue.Queue, job_id: int) -> bool:
    """One rescue pass from the test's own, unpartitioned connection."""

    async def rescue() -> bool:
        try:
            rescued = await client.rescue(stale_after=STALE_AFTER)
        finally:
            await client.close()
        return any(found == job_id for found, _ in rescued)

    return asyncio.run(rescue())
