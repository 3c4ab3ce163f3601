"""The pgqueue app the bench workers run (``--app pgqueue.bench._app:queue``).

``noop`` is a no-op apart from the timing probe every queue's bench worker
calls (see :mod:`pgqueue.bench._probe`); ``hold`` sleeps and records when it
started and ended, for the keyed and rate-limited drains
(:mod:`pgqueue.bench._constrained`).
"""

from __future__ import annotations

import asyncio
import time

from .._context import JobContext
from .._queue import Queue
from . import _probe

BENCH_QUEUE = "bench"
HOLD_QUEUE = "bench-keyed"
RATED_QUEUE = "bench-rated"

queue = Queue()


@queue.task(queue=BENCH_QUEUE)
async def noop(ctx: JobContext, sample: int | None = None) -> None:
    """Does nothing but record its start for the bench."""
    _probe.job(sample)


@queue.task(queue=HOLD_QUEUE)
async def hold(ctx: JobContext, ms: int) -> None:
    """Holds its slot ``ms`` milliseconds; records its start and end."""
    start = time.time()
    if ms:
        await asyncio.sleep(ms / 1000)
    _probe.held(start, time.time())
