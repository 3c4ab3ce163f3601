"""The rescuer: running jobs whose lease went stale (their worker stopped
heartbeating) go back to ``retrying``, or end ``zombie`` or ``timeout`` when no
attempt is left (``pgqueue.rescue``; one worker at a time runs a pass)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from .._database import WorkerDatabase
from . import Tally, jitter, log

DUTY = "rescue"


async def run(db: WorkerDatabase, tally: Tally, *, interval: float, stale_after: float) -> None:
    """A pass about every ``interval`` seconds, until cancelled."""
    stale = timedelta(seconds=stale_after)
    while True:
        await asyncio.sleep(jitter(interval))
        tally.passes[DUTY] += 1
        try:
            rescued = await db.rescue(stale)
        except Exception as exc:
            tally.failed(DUTY, exc)
            continue
        for job_id, status in rescued:
            log.warning("rescued job %s (lost lease) -> %s", job_id, status)
