"""The pruner: retention. Finished jobs older than their retention age are
deleted with their attempts and progress history, in chunks of
:data:`CHUNK`, each its own short transaction (``pgqueue.prune``; one worker
at a time runs a pass)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from .._database import WorkerDatabase
from . import Tally, jitter, log

DUTY = "prune"

CHUNK = 1000
"""Finished jobs deleted per retention statement (each a short transaction)."""


async def run(
    db: WorkerDatabase,
    tally: Tally,
    *,
    interval: float,
    retain_completed: float,
    retain_failed: float,
    stopping: Callable[[], bool],
) -> None:
    """A pass about every ``interval`` seconds, until cancelled; a pass ends
    early once the worker is stopping."""
    completed_after = timedelta(seconds=retain_completed)
    failed_after = timedelta(seconds=retain_failed)
    while True:
        await asyncio.sleep(jitter(interval))
        deleted = CHUNK
        total = 0
        tally.passes[DUTY] += 1
        try:
            while deleted == CHUNK and not stopping():
                deleted = await db.prune(completed_after, failed_after, CHUNK)
                total += deleted
        except Exception as exc:
            tally.failed(DUTY, exc)
        if total:
            log.info("pruned %d finished jobs", total)
