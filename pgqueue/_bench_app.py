"""The pgqueue app the bench workers run (``--app pgqueue._bench_app:queue``).

Its one task is a no-op apart from the timing probe every queue's bench
worker calls (see :mod:`pgqueue._bench_probe`).
"""

from __future__ import annotations

from . import _bench_probe
from ._context import JobContext
from ._queue import Queue

BENCH_QUEUE = "bench"

queue = Queue()


@queue.task(queue=BENCH_QUEUE)
async def noop(ctx: JobContext, sample: int | None = None) -> None:
    """Does nothing but record its start for the bench."""
    _bench_probe.job(sample)
