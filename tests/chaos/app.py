"""Tasks for the chaos tests' worker processes (DSN from PGQUEUE_DSN)."""

import asyncio

import pgqueue

queue = pgqueue.Queue()


@queue.task(queue="chaos", max_attempts=5, retry_delay=0.1)
async def tick(ctx: pgqueue.JobContext, n: int, pause: float = 0.0) -> int:
    if pause:
        await asyncio.sleep(pause)
    return n


@queue.task(queue="chaos", max_attempts=10, retry_delay=0.05)
def recorded(ctx: pgqueue.JobContext, n: int, pause: float = 0.0) -> int:
    """Records its body's start and end in chaos_runs (own connection), so the
    test can check from the database that no two bodies of a job overlapped."""
    import os
    import time

    import psycopg

    with psycopg.connect(os.environ["PGQUEUE_DSN"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO chaos_runs (job_id, attempt, pid, started_at)"
            " VALUES (%s, %s, %s, clock_timestamp())",
            (ctx.job_id, ctx.attempt, os.getpid()),
        )
        if pause:
            time.sleep(pause)
        conn.execute(
            "UPDATE chaos_runs SET ended_at = clock_timestamp() WHERE job_id = %s AND attempt = %s",
            (ctx.job_id, ctx.attempt),
        )
    return n


@queue.task(queue="chaos", max_attempts=2, retry_delay=0)
async def churn(ctx: pgqueue.JobContext, n: int) -> int:
    """Reports progress in bursts; odd jobs fail their first attempt. Many at
    once make every outcome, retry and progress write compete for the worker's
    few pool connections."""
    for pct in range(0, 101, 20):
        ctx.progress(pct)
        await asyncio.sleep(0.001)
    if n % 2 and ctx.attempt == 1:
        raise RuntimeError(f"transient failure of {n}")
    return n
