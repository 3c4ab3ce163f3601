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


def test_a_job_claimed_by_a_claim_retried_through_an_outage_is_not_fenced(
    runs_dsn: str, client: pgqueue.Queue, procs: Processes, db_proxy: TcpProxy
) -> None:
    """An idle worker's claim keeps failing through an outage longer than its
    lease bound and then succeeds: the job it returns is as fresh as the try
    that leased it, so the fence does not stop it (with one attempt, a stopped
    job would end zombie)."""
    # A lease bound of 5 s (stale_after - heartbeat_interval), with room after
    # the outage for the pool to reconnect and the first heartbeat to renew.
    worker = procs.worker(
        db_proxy.dsn(runs_dsn),
        "--heartbeat-interval", "1",
        "--stale-after", "6",
        "--rescue-interval", "1",
        concurrency=1,
    )  # fmt: skip
    db_proxy.down()
    job_id = client.enqueue_sync("slow", {"seconds": 1.0}, max_attempts=1)
    time.sleep(7)  # the claim retries meanwhile, past the lease bound
    db_proxy.up()
    wait_until(
        lambda: (
            scalar(runs_dsn, "SELECT status::text FROM pgqueue.jobs WHERE id = %s", [job_id])
            in ("completed", "zombie", "failed")
        ),
        timeout=60,
        what="the job to end",
    )
    status = scalar(runs_dsn, "SELECT status::text FROM pgqueue.jobs WHERE id = %s", [job_id])
    assert status == "completed", worker.log()[-3000:]
    assert "stopping 1 tasks" not in worker.log()
