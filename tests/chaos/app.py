"""Tasks for the chaos tests' worker processes (DSN from PGQUEUE_DSN)."""

import asyncio

import pgqueue

queue = pgqueue.Queue()


@queue.task(queue="chaos", max_attempts=5, retry_delay=0.1)
async def tick(ctx: pgqueue.JobContext, n: int, pause: float = 0.0) -> int:
    if pause:
        await asyncio.sleep(pause)
    return n
