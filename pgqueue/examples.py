"""Example tasks used by ``pgqueue demo`` (and handy to try the CLI with).

PGQUEUE_APP=pgqueue.examples:queue pgqueue enqueue resize_image --args '{"image_id": 7}'
"""

from __future__ import annotations

import asyncio
import random
import time

from ._context import JobContext
from ._queue import Queue

queue = Queue()

DEMO_QUEUE = "demo"


@queue.task(queue=DEMO_QUEUE, timeout=60)
async def resize_image(ctx: JobContext, image_id: int, steps: int = 10) -> dict[str, int]:
    """An async task that reports progress as it goes."""
    for step in range(1, steps + 1):
        await asyncio.sleep(random.uniform(0.05, 0.25))
        ctx.progress(100 * step / steps, f"step {step}/{steps}")
    return {"image_id": image_id, "width": 640, "height": 480}


@queue.task(queue=DEMO_QUEUE)
def send_email(ctx: JobContext, to: str) -> str:
    """A sync task: it runs in one of the worker's threads."""
    time.sleep(random.uniform(0.1, 0.5))
    return f"sent to {to}"


@queue.task(queue=DEMO_QUEUE, max_attempts=3, retry_delay=0.5)
async def flaky(ctx: JobContext, name: str) -> str:
    """Fails on its first attempt, then succeeds: shows retries."""
    await asyncio.sleep(0.1)
    if ctx.attempt == 1:
        raise RuntimeError(f"{name}: transient failure on attempt {ctx.attempt}")
    return f"{name} succeeded on attempt {ctx.attempt}"


@queue.task(queue=DEMO_QUEUE)
async def always_fails(ctx: JobContext, reason: str) -> None:
    """Fails for good: shows a failed job and its error."""
    await asyncio.sleep(0.1)
    raise ValueError(reason)


@queue.task(queue=DEMO_QUEUE)
async def noop(ctx: JobContext) -> None:
    """Does nothing: for throughput measurements."""
