"""Tasks that do not stop when told to, for the tests of the worker's exit bound.

``PGQUEUE_TEST_DEAF_LOOP=1`` also makes the worker's retention loop swallow
every cancel, as a background loop stuck in a library might.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from typing import Any

import pgqueue
import pgqueue._maintenance.pruner

queue = pgqueue.Queue()
_never = threading.Event()


@queue.task(queue="stubborn")
async def deaf(ctx: pgqueue.JobContext, seconds: float = 3600) -> None:
    """Swallows every cancel and ignores ``ctx.should_stop``."""
    print("deaf: the body is running", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.2)


@queue.task(queue="stubborn")
def deaf_sync(ctx: pgqueue.JobContext, seconds: float = 60) -> None:
    """A thread that ignores ``ctx.should_stop`` (Python cannot interrupt it)."""
    time.sleep(seconds)


@queue.task(queue="stubborn")
async def offload(ctx: pgqueue.JobContext) -> None:
    """Waits on a thread of the event loop's default executor that never returns
    (and says so in the log once the thread runs, for the test to wait on)."""

    def stuck() -> None:
        print("offload: the thread is running", file=sys.stderr, flush=True)
        _never.wait()

    await asyncio.to_thread(stuck)


async def _deaf_loop(*args: Any, **kwargs: Any) -> None:
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)


if os.environ.get("PGQUEUE_TEST_DEAF_LOOP") == "1":
    pgqueue._maintenance.pruner.run = _deaf_loop
