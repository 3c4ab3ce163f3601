"""A worker's maintenance failures and its ``/metrics`` endpoint, on a real
PostgreSQL; and a cancel reaching a worker that does not LISTEN."""

from __future__ import annotations

import asyncio
import logging
import re

import psycopg
import pytest

import pgqueue
from pgqueue import JobStatus

from .test_worker_inprocess import eventually, running_worker, wait_event


async def scrape(address: tuple[str, int] | None, path: str = "/metrics") -> tuple[str, str]:
    """(status line, body) of a GET of ``path`` on the worker's metrics endpoint."""
    assert address is not None, "the metrics endpoint is not running"
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition("\r\n\r\n")
    return head.splitlines()[0], body


def sample(body: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text format."""
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", body, re.MULTILINE)
    assert match, f"no sample {name}{labels} in:\n{body}"
    return float(match.group(1))


async def test_a_failing_rescue_pass_is_logged_counted_and_exported(
    queue: pgqueue.Queue, db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    @queue.task
    async def noop(ctx: pgqueue.JobContext) -> str:
        return "done"

    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await conn.execute("DROP FUNCTION pgqueue.rescue")
    caplog.set_level(logging.WARNING, logger="pgqueue.worker")
    async with running_worker(queue, queues=["default"], metrics_port=0) as worker:
        await queue.enqueue("noop")
        await eventually(
            lambda: _at_least(worker.maintenance_failures["rescue"], 2), what="failed rescues"
        )
        await eventually(lambda: _at_least(worker.outcomes["completed"], 1), what="a job")
        status, body = await scrape(worker.metrics_address)
        missing, _ = await scrape(worker.metrics_address, "/other")

    assert status == "HTTP/1.1 200 OK"
    assert missing == "HTTP/1.1 404 Not Found"
    failures = sample(body, "pgqueue_worker_maintenance_failures_total", '{duty="rescue"}')
    passes = sample(body, "pgqueue_worker_maintenance_passes_total", '{duty="rescue"}')
    assert failures >= 2 and passes >= failures
    assert sample(body, "pgqueue_worker_maintenance_failures_total", '{duty="prune"}') == 0
    assert sample(body, "pgqueue_worker_jobs_finished_total", '{outcome="completed"}') == 1
    assert sample(body, "pgqueue_worker_claim_retries_total") == 0
    assert sample(body, "pgqueue_worker_leases") == 0
    assert "# TYPE pgqueue_worker_leases gauge" in body
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("rescue pass failed: ") and "migrate" in m for m in warnings), warnings


async def _at_least(value: int, minimum: int) -> bool:
    return value >= minimum


async def test_no_metrics_endpoint_by_default(queue: pgqueue.Queue) -> None:
    async with running_worker(queue, queues=["default"]) as worker:
        assert worker.metrics_address is None


async def test_a_worker_without_listen_stops_a_cancelled_task_within_a_heartbeat(
    queue: pgqueue.Queue,
) -> None:
    started = asyncio.Event()
    stopped = asyncio.Event()

    @queue.task
    async def long(ctx: pgqueue.JobContext) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return "finished"

    async with running_worker(
        queue, queues=["default"], listen=False, heartbeat_interval=0.5, stale_after=5.0
    ) as worker:
        job_id = await long.enqueue()
        await wait_event(started, "the task to start")
        assert await queue.cancel(job_id) is JobStatus.CANCELLED
        # no NOTIFY reaches it: the next heartbeat no longer holds the lease
        await asyncio.wait_for(stopped.wait(), 0.5 * 2 + 1)
        await eventually(lambda: _at_least(worker.outcomes["stopped"], 1), what="the stop")
    job = await queue.get_job(job_id)
    assert job is not None and job.status is JobStatus.CANCELLED
