"""The pgqueue app the bench workers run (``--app pgqueue.bench._app:queue``).

Its one task is a no-op apart from the timing probe every queue's bench
worker calls (see :mod:`pgqueue.bench._probe`).
"""

from __future__ import annotations

from .._context import JobContext
from .._queue import Queue
from . import _probe

BENCH_QUEUE = "bench"

queue = Queue()


@queue.task(queue=BENCH_QUEUE)
async def noop(ctx: JobContext, sample: int | None = None) -> None:
    """Does nothing but record its start for the bench."""
    _probe.job(sample)
